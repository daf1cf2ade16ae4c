"""Unpaired preference losses: each candidate is labelled desirable or not, no pairing needed."""

from __future__ import annotations

import torch
from torch import Tensor

from mmdpo.objectives.core import LogLik, ObjectiveOutput, Preferences


def desirable_labels(prefs: Preferences) -> Tensor:
    """``[B, K]`` bool labels; ranked groups count their best candidate(s) desirable and the rest not."""
    if prefs.desirable is not None:
        return prefs.desirable.bool()
    return prefs.ranking() == 0


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    return (x * mask).sum() / mask.sum().clamp_min(1)


def unpaired_metrics(rewards: Tensor, logps: Tensor, good: Tensor) -> dict[str, Tensor]:
    rewards, logps = rewards.detach(), logps.detach()
    return {
        "rewards/chosen": _masked_mean(rewards, good),
        "rewards/rejected": _masked_mean(rewards, ~good),
        "rewards/margins": _masked_mean(rewards, good) - _masked_mean(rewards, ~good),
        "logps/chosen": _masked_mean(logps, good),
        "logps/rejected": _masked_mean(logps, ~good),
    }


def kto_losses(
    r: Tensor, z: Tensor, good: Tensor, beta: float, desirable_weight: float, undesirable_weight: float
) -> Tensor:
    """Per candidate: lambda_D (1 - sig(beta (r - z))) if desirable, else lambda_U (1 - sig(beta (z - r)))."""
    return torch.where(
        good,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z - r))),
    )


def kto(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl: bool = True,
) -> ObjectiveOutput:
    """KTO (Ethayarajh et al. 2024, arXiv 2402.01306, Eq. 8).

    desirable: lambda_D (1 - sigmoid(beta (r - z))), undesirable: lambda_U (1 - sigmoid(beta (z - r))),
    r = log pi/pi_ref, z = max(0, mean over the batch of r on mismatched (prompt, response) pairs),
    detached. The mismatched values come in ``extras["mismatched"]`` of both LogLiks. With
    ``kl=False`` (or no mismatched values) z = 0, which is APO-zero-unpaired (D'Oosterlinck et al.
    2024, arXiv 2408.06266, Eq. 7). Per-group loss is the mean over the group's K candidates.
    """
    good = desirable_labels(prefs).to(policy.values.device)
    r = policy.total() - reference.total()
    z = torch.zeros((), device=r.device)
    if kl and "mismatched" in policy.extras and "mismatched" in reference.extras:
        z = (policy.extras["mismatched"] - reference.extras["mismatched"]).mean().clamp_min(0).detach()
    losses = kto_losses(r, z, good, beta, desirable_weight, undesirable_weight)
    metrics = unpaired_metrics(beta * r, policy.total(), good)
    metrics["kl"] = z
    return ObjectiveOutput(losses=losses.mean(-1), metrics=metrics)
