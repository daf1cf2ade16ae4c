"""One micro-batch's objective output, and held-out evaluation with the same arithmetic."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from mmdpo.adapters.base import Adapter
from mmdpo.objectives import Objective, ObjectiveOutput


class Step:
    """The objective on one micro-batch: the adapter draws the shared inputs once (for diffusion: encodings and one
    noise draw per group, from the group's own seed, so a group's draw does not depend on its batch, its process or
    a restart), the reference runs first without gradients and hands its values to the policy pass.

    ``objective`` may be replaced between steps (a schedule's next stage).
    """

    def __init__(self, objective: Objective, adapter: Adapter, scorer: nn.Module, autocast: Callable):
        self.objective, self.adapter, self.scorer, self.autocast = objective, adapter, scorer, autocast

    def __call__(self, batch, state: dict | None) -> ObjectiveOutput:
        with self.autocast():  # the adapter's frozen parts are not prepared modules, so they get no autocast
            inputs = self.adapter.inputs(batch)
            reference = self.adapter.reference(batch, inputs)
        policy = self.adapter.policy_loglik(self.scorer, batch, inputs, reference)
        return self.objective(policy, reference.loglik, batch.prefs, state)


def mean_metrics(records: list[dict[str, torch.Tensor]], accelerator: Accelerator) -> dict[str, float]:
    """Each metric averaged over micro-batches and processes (one host sync for all of them)."""
    keys = records[0].keys()
    stacked = torch.stack([torch.stack([r[k].float() for k in keys]) for r in records]).mean(0)
    stacked = accelerator.reduce(stacked.to(accelerator.device), reduction="mean")
    return {k: float(v) for k, v in zip(keys, stacked)}


def evaluate(step: Step, loader: DataLoader, accelerator: Accelerator, state: dict | None) -> dict[str, float]:
    """Objective metrics averaged over held-out groups, without gradients, with the same noise every time."""
    records = []
    with torch.no_grad():
        for batch in loader:
            out = step(batch.to(accelerator.device), state)
            records.append({"loss": out.loss.detach(), **out.metrics})
    return {f"eval/{k}": v for k, v in mean_metrics(records, accelerator).items()} if records else {}
