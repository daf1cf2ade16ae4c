"""What the rest of the package needs to know about an objective, in one frozen record per registered name.

    ObjectiveSpec(pairwise.modpo, labels=(RANKING, MARGIN_REWARDS))

A spec says whether the objective reads a reference, which extras the adapter must attach to the LogLiks, which
label columns of the data it reads, the hyperparameter defaults that differ from the function's own, and whether its
per-group losses come back in the batch's order. Extras and labels may depend on the hyperparameters: give a function
of the resolved hyperparameters instead of a fixed value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmdpo.objectives.core import ObjectiveOutput


@dataclass(frozen=True)
class Label:
    """One label requirement of an objective: any of ``columns`` meets it; ``what`` and ``fix`` word the error."""

    columns: frozenset[str]
    what: str
    fix: str


RANKING = Label(
    frozenset({"ranks", "scores"}),
    "a ranking (ranks, or scores to rank by)",
    "give ranks (0 = best) or scores per candidate, as TRL-style prompt/chosen/rejected pairs do",
)
SCORES = Label(
    frozenset({"scores"}),
    "scores (a reward value per candidate)",
    "add a scores column (one number per candidate; score_chosen and score_rejected for pairs)",
)
DESIRABLE = Label(
    frozenset({"desirable", "ranks", "scores"}),
    "desirable labels (or a ranking, whose best candidates count as desirable)",
    "give unpaired rows (prompt, completion, label) or ranked groups",
)
MARGIN_REWARDS = Label(
    frozenset({"margin_rewards"}),
    "margin_rewards (the other objectives' rewards of each candidate)",
    "add a margin_rewards column (one list of M rewards per candidate; chosen_margin_rewards and "
    "rejected_margin_rewards for pairs)",
)
STEPS = Label(
    frozenset({"steps"}),
    "step data (each candidate's reasoning steps after the correct ones both share)",
    "give data in the step_dpo or steps format (see mmdpo.data.loaders)",
)

Extras = frozenset[str] | Callable[[Mapping[str, Any]], frozenset[str]]
Labels = tuple[Label, ...] | Callable[[Mapping[str, Any]], tuple[Label, ...]]


@dataclass(frozen=True)
class ObjectiveSpec:
    """One registered objective.

    Args:
        function: ``(policy, reference, prefs, **hparams) -> ObjectiveOutput``; its keyword defaults are the
            hyperparameters.
        needs_reference: False when it never reads the reference (the trainer then skips the reference pass).
        extras: names (as in :class:`~mmdpo.objectives.core.LogLik`) the adapter must attach, or a function of the
            hyperparameters giving them.
        labels: the label requirements it reads, or a function of the hyperparameters giving them.
        presets: hyperparameter defaults that differ from ``function``'s own.
        batch_sorted: its per-group losses come back sorted over the batch, not in the groups' order.
    """

    function: Callable[..., ObjectiveOutput]
    needs_reference: bool = True
    extras: Extras = frozenset()
    labels: Labels = (RANKING,)
    presets: Mapping[str, Any] = field(default_factory=dict)
    batch_sorted: bool = False

    def extras_for(self, hparams: Mapping[str, Any]) -> frozenset[str]:
        return frozenset(self.extras(hparams) if callable(self.extras) else self.extras)

    def labels_for(self, hparams: Mapping[str, Any]) -> tuple[Label, ...]:
        return self.labels(hparams) if callable(self.labels) else self.labels
