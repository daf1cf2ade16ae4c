"""The adapter contract: what every modality gives the training loop.

An adapter turns batches of preference groups into log-likelihood estimates of the policy and the reference,
with the same randomness for both (diffusion: one timestep and one noise draw per group, shared by every
candidate; tokens draw none). The loop calls, per micro-batch::

    inputs = adapter.inputs(batch)                                   # encodings and randomness, no gradients
    reference = adapter.reference(batch, inputs)                     # ReferencePass: values, no gradients
    policy = adapter.policy_loglik(scorer, batch, inputs, reference) # through the prepared scorer

The reference runs first and hands the policy pass what it needs (a token-level KL's reference states) as values
in :class:`ReferencePass`, never by writing into ``inputs``. A new modality is a module with a class that
satisfies :class:`Adapter` plus one entry in :data:`mmdpo.modalities.MODALITIES` (or a call to
:func:`mmdpo.modalities.register_modality` from the user's own code).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from mmdpo.objectives import LogLik, Objective, Preferences

if TYPE_CHECKING:
    from accelerate import Accelerator
    from datasets import Dataset

    from mmdpo.config import Config


@runtime_checkable
class Batch(Protocol):
    """A collated micro-batch: the groups' labels (kept on the host) and tensors that move to the device."""

    prefs: Preferences

    def to(self, device: torch.device | str) -> Batch: ...


@dataclass(frozen=True)
class BuildContext:
    """What an adapter is built with beside the config: the objective (whose :attr:`~Objective.extras` say what to
    compute), the resolved reference strategy, the mixed-precision dtype (frozen parts run in it) and the
    accelerator (for work done once on the main process, such as precomputed references)."""

    objective: Objective
    reference: str
    half: torch.dtype | None
    accelerator: Accelerator


@dataclass
class AdapterData:
    """An adapter's training and held-out groups and how to batch them.

    ``collate(rows, epoch)`` builds a :class:`Batch` (the epoch seeds per-group randomness where there is any);
    ``eval_collate`` defaults to ``collate``. ``skipped`` counts rows dropped on loading by reason.
    """

    train: Dataset
    eval: Dataset | None
    skipped: dict[str, int]
    collate: Callable[[list[dict], int], Batch]
    eval_collate: Callable[[list[dict], int], Batch] | None = None

    def __post_init__(self) -> None:
        self.eval_collate = self.eval_collate or self.collate


@dataclass(frozen=True)
class ReferencePass:
    """The reference's estimate (None when reference-free) and what the policy pass reads from it (e.g. TDPO's
    reference hidden states and output layer)."""

    loglik: LogLik | None
    for_policy: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Adapter(Protocol):
    """What every modality implements (see the module docstring for the order of calls).

    Attributes:
        scorer: the trained module; the loop prepares it (DDP, autocast) and optimises its trainable parameters.
        frozen_modules: modules the loop moves to the device but never optimises (encoders, a reference copy).
    """

    scorer: nn.Module

    @property
    def frozen_modules(self) -> Sequence[nn.Module]: ...

    @classmethod
    def from_config(cls, config: Config, context: BuildContext) -> Adapter:
        """Load the model the config's ``model`` section names (local path, hub id or ``tiny:<arch>``)."""
        ...

    def data(self, config: Config, accelerator: Accelerator) -> AdapterData:
        """The config's ``data`` section as training and held-out groups."""
        ...

    def inputs(self, batch: Batch) -> dict[str, Any]:
        """Everything the reference and the policy passes share, drawn once, without gradients."""
        ...

    def reference(self, batch: Batch, inputs: dict[str, Any]) -> ReferencePass:
        """The reference's estimate on ``inputs``, without gradients."""
        ...

    def policy_loglik(
        self, scorer: nn.Module, batch: Batch, inputs: dict[str, Any], reference: ReferencePass
    ) -> LogLik:
        """The policy's estimate through ``scorer`` (the prepared, possibly wrapped, :attr:`scorer`)."""
        ...

    def save(self, scorer: nn.Module, directory: str | Path) -> None:
        """The trained model in its ecosystem's format (a peft/diffusers LoRA, a transformers or diffusers model)."""
        ...


@runtime_checkable
class Generator(Protocol):
    """An adapter that also samples (validation grids, online rounds, comparisons with the base)."""

    def generate(self, prompts: Sequence[str], seeds: Sequence[int], **options: Any) -> Any: ...
