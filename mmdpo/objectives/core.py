"""The types every objective speaks: log-likelihood estimates in, per-group losses and metrics out.

A batch holds B groups (one condition each) of K candidates. A pair is K = 2.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class LogLik:
    """Log-likelihood estimates of K candidates per group; higher is better.

    Args:
        values: ``[B, K]`` one estimate per candidate, or ``[B, K, U]`` one per unit
            (tokens for LLM/VLM, temporal segments for video, timesteps for diffusion).
        mask: ``[B, K, U]`` bool, which units are real; required with per-unit values.
        lengths: ``[B, K]`` number of units per candidate, for length-normalised losses.
            Defaults to ``mask.sum(-1)``, or 1 for per-candidate values.
        extras: named tensors some objectives need beyond ``values``:
            ``"wpo_logp"`` ``[B, K, U]`` per-token ``log p_t - log sum_v p_v^2`` (WPO weights);
            ``"mismatched"`` ``[B, K]`` log-likelihood of each candidate under a mismatched
            condition (the KTO reference point); the token-level ones of :mod:`mmdpo.objectives.token`
            (``"token_kl"``, ``"mask"``, ``"mask_u"``, ``"mask_d"``, ``"layer_means"``, ``"guidance"``,
            ``"step_index"``). An adapter attaches only those the objective asks for
            (:attr:`mmdpo.objectives.Objective.extras`).

    For diffusion the estimate is the ELBO surrogate ``-0.5 * mean((pred - target)^2)``, so
    ``beta = 5000`` reproduces the official SDXL Diffusion-DPO setting.
    """

    values: Tensor
    mask: Tensor | None = None
    lengths: Tensor | None = None
    extras: Mapping[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.dim() not in (2, 3):
            raise ValueError(f"LogLik.values must be [B, K] or [B, K, U], got shape {tuple(self.values.shape)}.")
        if self.values.dim() == 3 and self.mask is None:
            raise ValueError("LogLik.values is per unit ([B, K, U]); pass mask=[B, K, U] too.")

    @property
    def per_unit(self) -> bool:
        return self.values.dim() == 3

    def total(self) -> Tensor:
        """``[B, K]`` summed over real units."""
        if not self.per_unit:
            return self.values
        return (self.values * self.mask).sum(-1)

    def length(self) -> Tensor:
        """``[B, K]`` number of units (float), at least 1."""
        if self.lengths is not None:
            return self.lengths.to(self.values.dtype).clamp_min(1)
        if self.per_unit:
            return self.mask.sum(-1).to(self.values.dtype).clamp_min(1)
        return torch.ones_like(self.values)

    def average(self) -> Tensor:
        """``[B, K]`` mean over real units (length-normalised log-likelihood)."""
        return self.total() / self.length()


@dataclass(frozen=True)
class Preferences:
    """Labels of a batch of groups; one kind is enough, the objective says which it reads.

    Args:
        ranks: ``[B, K]`` long, 0 = best; ties share a rank.
        scores: ``[B, K]`` float reward values, higher is better (soft labels, reward margins).
        desirable: ``[B, K]`` bool, unpaired labels (KTO; usually K = 1).
        segment_labels: ``[B, K, U]`` in {+1, -1, 0} per temporal segment (dense video preferences).
        margin_rewards: ``[B, K, M]`` rewards from M other objectives (MODPO margins).
        weights: ``[B]`` per-group loss weights.
    """

    ranks: Tensor | None = None
    scores: Tensor | None = None
    desirable: Tensor | None = None
    segment_labels: Tensor | None = None
    margin_rewards: Tensor | None = None
    weights: Tensor | None = None

    def ranking(self) -> Tensor:
        """``[B, K]`` ranks, derived from scores when not given (ties share a rank and the next rank skips)."""
        if self.ranks is not None:
            return self.ranks
        if self.scores is None:
            raise ValueError("This objective needs ranked labels: give Preferences(ranks=...) or scores=....")
        # rank = number of candidates with a better score, so equal scores share a rank.
        better = self.scores.unsqueeze(-1) < self.scores.unsqueeze(-2)  # [B, K, K]: j beats i
        return better.sum(-1)


@dataclass
class ObjectiveOutput:
    """What an objective returns; the trainer reduces.

    Args:
        losses: ``[B]`` per-group loss.
        metrics: detached scalars named as TRL names them (``rewards/chosen``, ...).
        state: running statistics to carry to the next call (beta-DPO); None when stateless.
    """

    losses: Tensor
    metrics: dict[str, Tensor]
    state: dict[str, Tensor] | None = None

    @property
    def loss(self) -> Tensor:
        return self.losses.mean()
