"""The preference-objective core: pure functions of (policy LogLik, reference LogLik, Preferences).

    from mmdpo.objectives import get_objective, LogLik, Preferences
    out = get_objective("dpo", beta=0.1)(LogLik(values=pw), LogLik(values=rw), Preferences(ranks=r))
    out.loss, out.losses, out.metrics

:data:`OBJECTIVES` maps every name ``objective.name`` takes to its :class:`~mmdpo.objectives.spec.ObjectiveSpec`
(the function, whether it reads a reference, the extras and labels it reads, presets); :class:`Objective` binds one
to its hyperparameters, and :func:`check_labels` checks it against the label columns a dataset provides.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from mmdpo.objectives import diffusion, listwise, pairwise, token, unpaired
from mmdpo.objectives.core import LogLik, ObjectiveOutput, Preferences
from mmdpo.objectives.spec import DESIRABLE, MARGIN_REWARDS, RANKING, SCORES, STEPS, Label, ObjectiveSpec


def _wpo(params: Mapping[str, Any]) -> frozenset[str]:
    return frozenset({"wpo_logp"} if params["wpo"] else ())


def _lifted(kernel, **spec: Any) -> ObjectiveSpec:
    """A pairwise kernel with the shared options (:func:`~mmdpo.objectives.pairwise.pairwise`), WPO among them."""
    return ObjectiveSpec(pairwise.pairwise(kernel), extras=_wpo, **spec)


def _kto(params: Mapping[str, Any]) -> frozenset[str]:
    return frozenset({"mismatched"} if params["kl"] else ())


def _sparsepo(params: Mapping[str, Any]) -> frozenset[str]:
    return frozenset({"token_kl"}) | token.mask_extras(params["mask"], params["independent"])


def _adpo(params: Mapping[str, Any]) -> tuple[Label, ...]:
    return (SCORES,) if params["target"] == "soft" else (RANKING,)


_KERNELS = (
    "dpo", "cdpo", "rdpo", "ipo", "ipo_sum", "hinge", "sigmoid_norm", "exo", "nca", "bco", "apo_zero", "apo_down",
    "sppo_hard", "discopop",
)  # fmt: skip
_REFERENCE_FREE_KERNELS = ("simpo", "orpo", "triple_po", "asft")

OBJECTIVES: dict[str, ObjectiveSpec] = {
    **{name: _lifted(getattr(pairwise, name)) for name in _KERNELS},
    **{name: _lifted(getattr(pairwise, name), needs_reference=False) for name in _REFERENCE_FREE_KERNELS},
    "aot": _lifted(pairwise.aot, batch_sorted=True),
    "aot_unpaired": _lifted(pairwise.aot_unpaired, batch_sorted=True),
    "rpo": _lifted(pairwise.dpo, presets={"sft_weight": 1.0}),
    "madpo": ObjectiveSpec(pairwise.madpo, labels=(SCORES,)),
    "modpo": ObjectiveSpec(pairwise.modpo, labels=(RANKING, MARGIN_REWARDS)),
    "beta_dpo": ObjectiveSpec(pairwise.beta_dpo),
    "plackett_luce": ObjectiveSpec(listwise.plackett_luce),
    "lipo_lambda": ObjectiveSpec(listwise.lipo_lambda),
    "rankdpo": ObjectiveSpec(listwise.rankdpo),
    "curry_dpo": ObjectiveSpec(listwise.curry_dpo),
    "adpo": ObjectiveSpec(listwise.adpo, labels=_adpo),
    "kto": ObjectiveSpec(unpaired.kto, extras=_kto, labels=(DESIRABLE,)),
    "apo_zero_unpaired": ObjectiveSpec(unpaired.kto, extras=_kto, labels=(DESIRABLE,), presets={"kl": False}),
    "smpo": ObjectiveSpec(diffusion.smpo, labels=(SCORES,)),
    "mapo": ObjectiveSpec(diffusion.mapo, needs_reference=False),
    "dro_hinge": ObjectiveSpec(diffusion.dro_hinge),
    "diffusion_kto": ObjectiveSpec(diffusion.diffusion_kto, labels=(DESIRABLE,)),
    "tdpo": ObjectiveSpec(token.tdpo, extras=frozenset({"token_kl"})),
    "sparsepo": ObjectiveSpec(token.sparsepo, extras=_sparsepo),
    "tgdpo": ObjectiveSpec(token.tgdpo, extras=frozenset({"guidance"})),
    "step_dpo": ObjectiveSpec(token.step_dpo, extras=frozenset({"step_index"}), labels=(RANKING, STEPS)),
}
"""Every objective by the name ``objective.name`` gives."""


def hyperparameters(name: str) -> dict[str, Any]:
    """Default hyperparameters of a registered objective."""
    spec = OBJECTIVES[name]
    params = inspect.signature(spec.function).parameters.values()
    defaults = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "state"}
    return {**defaults, **spec.presets}


@dataclass(frozen=True)
class Objective:
    """A registered objective bound to its hyperparameters; call it like the function."""

    name: str
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> ObjectiveSpec:
        return OBJECTIVES[self.name]

    @property
    def needs_reference(self) -> bool:
        return self.spec.needs_reference

    @property
    def extras(self) -> frozenset[str]:
        """The extras the adapter must attach to the LogLiks (see :class:`LogLik`); empty for plain DPO, so the
        adapter does no work an objective does not ask for."""
        return self.spec.extras_for({**hyperparameters(self.name), **self.hparams})

    @property
    def labels(self) -> tuple[Label, ...]:
        """The label requirements it reads from the data (see :func:`check_labels`)."""
        return self.spec.labels_for({**hyperparameters(self.name), **self.hparams})

    @property
    def stateful(self) -> bool:
        """True when the objective carries running statistics from call to call (``state=``)."""
        return "state" in inspect.signature(self.spec.function).parameters

    def __call__(
        self, policy: LogLik, reference: LogLik | None, prefs: Preferences, state: dict | None = None
    ) -> ObjectiveOutput:
        if self.needs_reference and reference is None:
            raise ValueError(f"objective {self.name!r} needs reference log-likelihoods; got reference=None.")
        extra = {"state": state} if self.stateful else {}
        out = self.spec.function(policy, reference, prefs, **self.hparams, **extra)
        if prefs.weights is not None:
            if self.spec.batch_sorted:
                raise ValueError(
                    f"objective {self.name!r} sorts margins over the batch, so per-group weights cannot apply."
                )
            out.losses = out.losses * prefs.weights.to(out.losses)
        return out


def check_labels(objective: Objective, provided: Collection[str]) -> None:
    """Fail, in one sentence naming what is missing and what to give, when the label columns ``provided`` by the data
    (``ranks``, ``scores``, ``desirable``, ``margin_rewards``, ``steps``, ...) do not meet what ``objective`` reads."""
    missing = [label for label in objective.labels if not label.columns & set(provided)]
    if missing:
        raise ValueError(
            f"objective.name={objective.name} needs {' and '.join(label.what for label in missing)}, which data.path "
            f"does not have; {'; '.join(label.fix for label in missing)}."
        )


HPARAM_RULES = {
    "beta": (lambda value: value > 0, "must be positive"),
    "label_smoothing": (lambda value: 0 <= value < 0.5, "must lie in [0, 0.5)"),
}
"""Checks (and the rule in words) of hyperparameters that mean the same in every objective that has them."""


def get_objective(name: str, **hparams: Any) -> Objective:
    """Look up an objective by name and bind its hyperparameters, failing on unknown names."""
    if name not in OBJECTIVES:
        raise ValueError(
            f"Unknown objective {name!r}{_suggest(name, OBJECTIVES)}; known: {', '.join(sorted(OBJECTIVES))}."
        )
    known = hyperparameters(name)
    for key, value in hparams.items():
        if key not in known:
            raise ValueError(f"objective {name!r} has no hyperparameter {key!r}{_suggest(key, known)}.")
        holds, rule = HPARAM_RULES.get(key, (None, ""))
        if holds is not None and isinstance(value, (int, float)) and not holds(value):
            raise ValueError(f"objective.{key}={value} {rule}.")
    return Objective(name, {**OBJECTIVES[name].presets, **hparams})



def _suggest(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


__all__ = [
    "OBJECTIVES",
    "LogLik",
    "Objective",
    "ObjectiveOutput",
    "ObjectiveSpec",
    "Preferences",
    "check_labels",
    "get_objective",
    "hyperparameters",
]
