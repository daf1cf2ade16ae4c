"""The preference-objective core: pure functions of (policy LogLik, reference LogLik, Preferences).

from mmdpo.objectives import get_objective, LogLik, Preferences
out = get_objective("dpo", beta=0.1)(policy=LogLik(values=pw), reference=LogLik(values=rw), prefs=Preferences(ranks=r))
out.loss, out.losses, out.metrics
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mmdpo.objectives import diffusion, listwise, pairwise, token, unpaired
from mmdpo.objectives.core import LogLik, ObjectiveOutput, Preferences

_KERNELS = [
    "dpo", "cdpo", "rdpo", "ipo", "ipo_sum", "hinge", "sigmoid_norm", "simpo", "orpo", "exo", "nca", "bco",
    "apo_zero", "apo_down", "sppo_hard", "aot", "aot_unpaired", "discopop", "triple_po", "asft",
]  # fmt: skip

OBJECTIVES: dict[str, Callable[..., ObjectiveOutput]] = {
    **{name: pairwise.pairwise(getattr(pairwise, name)) for name in _KERNELS},
    "rpo": pairwise.pairwise(pairwise.dpo),
    "madpo": pairwise.madpo,
    "modpo": pairwise.modpo,
    "beta_dpo": pairwise.beta_dpo,
    "plackett_luce": listwise.plackett_luce,
    "lipo_lambda": listwise.lipo_lambda,
    "rankdpo": listwise.rankdpo,
    "curry_dpo": listwise.curry_dpo,
    "adpo": listwise.adpo,
    "kto": unpaired.kto,
    "apo_zero_unpaired": unpaired.kto,
    "smpo": diffusion.smpo,
    "mapo": diffusion.mapo,
    "dro_hinge": diffusion.dro_hinge,
    "diffusion_kto": diffusion.diffusion_kto,
    "tdpo": token.tdpo,
    "sparsepo": token.sparsepo,
    "tgdpo": token.tgdpo,
    "step_dpo": token.step_dpo,
}

REFERENCE_FREE = frozenset({"simpo", "orpo", "triple_po", "asft", "mapo"})
"""Objectives that never read the reference: the trainer skips the reference pass for them."""

BATCH_SORTED = frozenset({"aot", "aot_unpaired"})
"""Objectives whose per-group losses come back in sorted order, not the batch's."""

TOKEN_LEVEL = frozenset({"tdpo", "sparsepo", "tgdpo", "step_dpo"})
"""Objectives that read per-token extras only a causal-LM adapter gives (see :attr:`Objective.extras`)."""

EXTRAS: dict[str, frozenset[str]] = {
    "tdpo": frozenset({"token_kl"}),
    "sparsepo": frozenset({"token_kl"}),
    "tgdpo": frozenset({"guidance"}),
    "step_dpo": frozenset({"step_index"}),
}
"""Extras (named as in :class:`LogLik`) an objective always needs beyond log-likelihoods."""

# Hyperparameter defaults that differ from the kernel's own, per registered name.
PRESETS: dict[str, dict[str, Any]] = {"rpo": {"sft_weight": 1.0}, "apo_zero_unpaired": {"kl": False}}


def hyperparameters(name: str) -> dict[str, Any]:
    """Default hyperparameters of a registered objective."""
    params = inspect.signature(OBJECTIVES[name]).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "state"}
    return {**defaults, **PRESETS.get(name, {})}


@dataclass(frozen=True)
class Objective:
    """A registered objective bound to its hyperparameters; call it like the function."""

    name: str
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def needs_reference(self) -> bool:
        return self.name not in REFERENCE_FREE

    @property
    def extras(self) -> frozenset[str]:
        """The extras the adapter must attach to the LogLiks (see :class:`LogLik`); empty for plain DPO, so the
        adapter does no work an objective does not ask for."""
        params = {**hyperparameters(self.name), **self.hparams}
        needs = set(EXTRAS.get(self.name, ()))
        if params.get("wpo"):
            needs.add("wpo_logp")
        if self.name == "kto" and params["kl"]:
            needs.add("mismatched")
        if self.name == "sparsepo":
            needs |= token.mask_extras(params["mask"], params["independent"])
        return frozenset(needs)

    @property
    def stateful(self) -> bool:
        """True when the objective carries running statistics from call to call (``state=``)."""
        return "state" in inspect.signature(OBJECTIVES[self.name]).parameters

    def __call__(
        self, policy: LogLik, reference: LogLik | None, prefs: Preferences, state: dict | None = None
    ) -> ObjectiveOutput:
        if self.needs_reference and reference is None:
            raise ValueError(f"objective {self.name!r} needs reference log-likelihoods; got reference=None.")
        extra = {"state": state} if self.stateful else {}
        out = OBJECTIVES[self.name](policy, reference, prefs, **self.hparams, **extra)
        if prefs.weights is not None:
            if self.name in BATCH_SORTED:
                raise ValueError(
                    f"objective {self.name!r} sorts margins over the batch, so per-group weights cannot apply."
                )
            out.losses = out.losses * prefs.weights.to(out.losses)
        return out


def get_objective(name: str, **hparams: Any) -> Objective:
    """Look up an objective by name and bind its hyperparameters, failing on unknown names."""
    if name not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {name!r}{_suggest(name, OBJECTIVES)}; known: {', '.join(sorted(OBJECTIVES))}."
        )
    known = hyperparameters(name)
    for key in hparams:
        if key not in known:
            raise ValueError(f"objective {name!r} has no hyperparameter {key!r}{_suggest(key, known)}.")
    return Objective(name, {**PRESETS.get(name, {}), **hparams})


def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


__all__ = [
    "OBJECTIVES",
    "REFERENCE_FREE",
    "TOKEN_LEVEL",
    "LogLik",
    "Objective",
    "ObjectiveOutput",
    "Preferences",
    "get_objective",
    "hyperparameters",
]
