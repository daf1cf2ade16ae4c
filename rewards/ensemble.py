"""Several rewards on groups of candidates: raw scores [P, K, R], normalisation within each prompt's candidates,
aggregation into one score per candidate, dense ranks and the pairs training needs.

    ensemble = Ensemble(["pickscore", "hpsv2"], aggregation="borda")
    ranked = ensemble(prompts, candidates)    # candidates[p]: the K images (or Audio) of prompts[p]
    ranked.raw                                # [P, K, R] raw scores; ranked.names says which reward is which
    ranked.scores, ranked.ranks               # [P, K] aggregated scores; dense ranks, 0 = best, ties share
    ranked.pairs("best_vs_worst")             # per prompt, (better, worse) candidate indices
    ranked.reaggregate("zscore")              # new scores and ranks from the same raw scores

Aggregations (``R`` rewards, ``K`` candidates per prompt, optional per-reward weights ``w``):

- ``borda``: the weighted fraction of pairwise wins, ``sum_r w_r C_ri / ((K - 1) sum_r w_r)`` with
  ``C_ri = #{j != i: s_rj < s_ri} + #{j != i: s_rj = s_ri} / 2``. Unweighted it is RankDPO's Syn-Pic score
  ``phi_i = C_i / (R (K - 1))`` (Karthik et al. 2024, arXiv 2410.18013, Alg. 1, with ties counted as half a win),
  which is also the mean over rewards of the ``rank`` normalisation: mean Borda count and mean rank agree.
- ``zscore``: the weighted mean of per-reward z-scores over the prompt's candidates (population standard deviation;
  a reward that scores all candidates alike contributes 0).
- ``mean``: the weighted mean of the raw scores, for rewards on a shared scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mmdpo.data.loaders import PAIRINGS, Pairing, expand_pairs
from mmdpo.data.schema import RANKS
from mmdpo.rewards.base import Reward
from mmdpo.rewards.registry import load_reward

Aggregation = Literal["borda", "zscore", "mean"]
AGGREGATIONS = ("borda", "zscore", "mean")
PAIR_MODES = tuple(mode for mode in PAIRINGS if mode != "none")


def _check_scores(scores: Tensor) -> None:
    if scores.ndim != 3:
        raise ValueError(f"Scores must be [prompts, candidates, rewards]; got shape {list(scores.shape)}.")
    if not torch.isfinite(scores).all():
        raise ValueError("Scores hold NaN or infinite values; check the rewards' outputs.")


def _reward_weights(weights: Sequence[float] | None, scores: Tensor) -> Tensor:
    """[R] weights, ones by default."""
    count = scores.shape[-1]
    w = torch.ones(count, dtype=scores.dtype) if weights is None else torch.tensor(weights, dtype=scores.dtype)
    if w.shape != (count,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be {count} non-negative numbers, not all 0; got {weights}.")
    return w


def win_counts(scores: Tensor) -> Tensor:
    """``C[p, i, r]``: how many of prompt p's other candidates reward r scores below candidate i, ties counting half.

    Args:
        scores: [P, K, R] raw scores.

    Returns:
        [P, K, R] half-integer counts in [0, K - 1].
    """
    _check_scores(scores)
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # [P, K (i), K (j), R]: s_i - s_j
    wins = (diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)
    return wins.sum(2) - 0.5  # each candidate ties with itself once


def normalise(scores: Tensor, method: Literal["zscore", "rank"]) -> Tensor:
    """Per-reward scores made comparable within each prompt's candidates.

    ``zscore``: ``(s - mean) / std`` over the K candidates (population std; 0 where all are equal). ``rank``: the
    fraction of other candidates beaten, ties half, in [0, 1] (1 = best); the fractional rank turned upside down.

    Args:
        scores: [P, K, R] raw scores.

    Returns:
        [P, K, R] normalised scores.
    """
    _check_scores(scores)
    if method == "rank":
        if scores.shape[1] < 2:
            raise ValueError("Rank normalisation needs at least 2 candidates per prompt.")
        return win_counts(scores) / (scores.shape[1] - 1)
    if method == "zscore":
        std = scores.std(dim=1, correction=0, keepdim=True)  # exactly 0 for equal values, unlike their centring
        constant = std == 0
        return ((scores - scores.mean(dim=1, keepdim=True)) / std.masked_fill(constant, 1.0)).masked_fill(constant, 0.0)
    raise ValueError(f"Normalisation {method!r} is unknown; use 'zscore' or 'rank'.")


def aggregate(scores: Tensor, method: Aggregation = "borda", weights: Sequence[float] | None = None) -> Tensor:
    """One score per candidate from R rewards (see the module docstring for the formulas).

    Args:
        scores: [P, K, R] raw scores.
        method: ``borda``, ``zscore`` or ``mean``.
        weights: R non-negative reward weights; equal by default.

    Returns:
        [P, K] aggregated scores, higher is better. Borda sums the half-integer win counts before dividing, so
        candidates with equal unweighted counts tie exactly.
    """
    _check_scores(scores)
    w = _reward_weights(weights, scores)
    if method == "borda":
        if scores.shape[1] < 2:
            raise ValueError("Borda aggregation needs at least 2 candidates per prompt.")
        return (win_counts(scores) * w).sum(-1) / ((scores.shape[1] - 1) * w.sum())
    if method == "zscore":
        return (normalise(scores, "zscore") * w).sum(-1) / w.sum()
    if method == "mean":
        return (scores * w).sum(-1) / w.sum()
    raise ValueError(f"Aggregation {method!r} is unknown; use one of {', '.join(AGGREGATIONS)}.")


def dense_ranks(values: Tensor) -> Tensor:
    """Dense ranks of each row, 0 = highest value, equal values sharing a rank (the convention of
    :mod:`mmdpo.data.schema`): [P, K] -> [P, K] int64."""
    order = values.argsort(dim=-1, descending=True, stable=True)
    ordered = values.gather(-1, order)
    steps = (ordered[..., 1:] != ordered[..., :-1]).long()
    levels = torch.cat([torch.zeros_like(steps[..., :1]), steps], dim=-1).cumsum(-1)
    return torch.empty_like(levels).scatter_(-1, order, levels)


def pairs(ranks: Tensor, mode: Pairing) -> list[list[tuple[int, int]]]:
    """Per prompt, the (better, worse) candidate indices of :func:`mmdpo.data.loaders.expand_pairs`: ``all``,
    ``best_vs_rest``, ``adjacent`` or ``best_vs_worst``; tied candidates are never paired.

    Args:
        ranks: [P, K] dense ranks, 0 = best.
    """
    if mode not in PAIR_MODES:
        raise ValueError(f"Pair mode {mode!r} is unknown; use one of {', '.join(PAIR_MODES)}.")
    return [expand_pairs({RANKS: row}, mode) for row in ranks.tolist()]


@dataclass(frozen=True)
class RankedGroups:
    """Raw scores of every reward and the scores and ranks aggregated from them.

    Attributes:
        names: the rewards' names, in the order of the last axis of ``raw``.
        raw: [P, K, R] raw scores, kept so rankings can be recomputed.
        aggregation: how ``scores`` were computed (``borda``, ``zscore`` or ``mean``).
        weights: the per-reward weights, None for equal weights.
        scores: [P, K] aggregated scores, higher is better.
        ranks: [P, K] dense ranks of ``scores``, 0 = best, ties share a rank.
    """

    names: list[str]
    raw: Tensor
    aggregation: Aggregation
    weights: list[float] | None
    scores: Tensor
    ranks: Tensor

    @classmethod
    def from_raw(
        cls,
        raw: Tensor,
        names: Sequence[str],
        aggregation: Aggregation = "borda",
        weights: Sequence[float] | None = None,
    ) -> RankedGroups:
        if raw.ndim != 3 or raw.shape[-1] != len(names):
            raise ValueError(f"Raw scores of shape {list(raw.shape)} do not fit {len(names)} reward names.")
        scores = aggregate(raw.double(), aggregation, weights)
        weights = None if weights is None else [float(w) for w in weights]
        return cls(list(names), raw, aggregation, weights, scores.float(), dense_ranks(scores))

    def reaggregate(self, aggregation: Aggregation, weights: Sequence[float] | None = None) -> RankedGroups:
        """Scores and ranks recomputed from the raw scores with another aggregation or other weights."""
        return RankedGroups.from_raw(self.raw, self.names, aggregation, weights)

    def pairs(self, mode: Pairing) -> list[list[tuple[int, int]]]:
        """Per prompt, (better, worse) candidate indices by ``ranks`` (see :func:`pairs`)."""
        return pairs(self.ranks, mode)


class Ensemble:
    """Several rewards scored on groups of candidates and aggregated into ranks.

    Args:
        rewards: rewards, or names (registered, installed or ``module:attribute``) loaded with their default weights
            (:func:`~mmdpo.rewards.load_reward`).
        aggregation: ``borda`` (default, RankDPO's Syn-Pic score), ``zscore`` or ``mean``.
        weights: one non-negative weight per reward; equal by default.
    """

    def __init__(
        self,
        rewards: Sequence[Reward | str],
        aggregation: Aggregation = "borda",
        weights: Sequence[float] | None = None,
    ):
        self.rewards = [load_reward(r) if isinstance(r, str) else r for r in rewards]
        names = [r.name for r in self.rewards]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"An ensemble needs rewards with distinct names; got {names}.")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"Aggregation {aggregation!r} is unknown; use one of {', '.join(AGGREGATIONS)}.")
        if weights is not None and len(weights) != len(names):
            raise ValueError(f"Got {len(weights)} weights for {len(names)} rewards ({', '.join(names)}).")
        self.aggregation, self.weights = aggregation, weights

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    def raw_scores(self, prompts: Sequence[str], candidates: Sequence[Any]) -> Tensor:
        """[P, K, R] raw scores: every reward on every candidate of every prompt, batched across prompts.

        Args:
            prompts: P prompts.
            candidates: per prompt, its K candidates in any form the rewards take (see ``Reward.prepare``).
        """
        if len(prompts) != len(candidates):
            raise ValueError(f"Got {len(prompts)} prompts for {len(candidates)} candidate groups; give one each.")
        columns = []
        for reward in self.rewards:
            groups = [reward.prepare(group) for group in candidates]
            sizes = {len(group) for group in groups}
            if len(sizes) > 1:
                raise ValueError(f"Every prompt needs the same number of candidates; got sizes {sorted(sizes)}.")
            k = sizes.pop() if sizes else 0
            items = [item for group in groups for item in group]
            flat_prompts = [prompt for prompt in prompts for _ in range(k)]
            columns.append(reward.score_items(flat_prompts, items).view(len(prompts), k))
        return torch.stack(columns, dim=-1)

    def __call__(self, prompts: Sequence[str], candidates: Sequence[Any]) -> RankedGroups:
        """Raw scores of every reward (:meth:`raw_scores`), aggregated and ranked."""
        return RankedGroups.from_raw(self.raw_scores(prompts, candidates), self.names, self.aggregation, self.weights)
