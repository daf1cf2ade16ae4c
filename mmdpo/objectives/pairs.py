"""Pairs of a ranked list: the one rule multi-pair objectives (curry_dpo) and pair-expanding loaders share.

    pair_mask(torch.tensor([[1, 0, 1, 2]]), "adjacent")   # [1, 4, 4] bool: (b, a), (b, c), (a, d), (c, d)
    ranked_pairs(torch.tensor([1, 0, 1, 2]), "adjacent")  # [(1, 0), (1, 2), (0, 3), (2, 3)]

Modes, after Curry-DPO's multi-pair expansion (Pattnaik et al. 2024, arXiv 2403.07230, Sec. 3): ``all`` pairs of
different ranks; ``best_vs_rest``, each best candidate against each worse one; ``adjacent``, each candidate against
each one a rank level below; ``best_vs_worst``, each best against each worst. Levels are the dense ranks (ties share
a level, no gaps), so tied candidates are never paired with each other and every candidate of a level takes part.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

PairMode = Literal["all", "best_vs_rest", "adjacent", "best_vs_worst"]

# Each rule decides from the better candidate's level, the worse one's and the list's last level.
PAIR_RULES: dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]] = {
    "all": lambda better, worse, last: better < worse,
    "best_vs_rest": lambda better, worse, last: (better == 0) & (worse > 0),
    "adjacent": lambda better, worse, last: better + 1 == worse,
    "best_vs_worst": lambda better, worse, last: (better == 0) & (worse == last) & (worse > 0),
}
PAIR_MODES: tuple[str, ...] = tuple(PAIR_RULES)


def dense_ranks(ranks: Tensor) -> Tensor:
    """``[..., K]`` levels 0, 1, 2, ... without gaps, ties kept: per candidate, the number of distinct better ranks.

    ``ranks`` may be any ordered values where lower is better (ranks, or negated scores).
    """
    index = torch.arange(ranks.shape[-1], device=ranks.device)
    same = ranks.unsqueeze(-1) == ranks.unsqueeze(-2)  # [..., j, k]
    first = ~(same & (index.unsqueeze(-1) > index)).any(-1)  # [..., j]: no earlier candidate has j's rank
    better = ranks.unsqueeze(-2) < ranks.unsqueeze(-1)  # [..., i, j]: j is ranked better than i
    return (better & first.unsqueeze(-2)).sum(-1)


def pair_mask(ranks: Tensor, mode: str, option: str = "pairs") -> Tensor:
    """``[..., K, K]`` bool: entry ``[i, j]`` pairs candidate i (better) with j (worse) under ``mode``.

    ``option`` names the setting in the error for an unknown mode (``objective.pairs``, ``data.pairs``).
    """
    if mode not in PAIR_RULES:
        raise ValueError(f"{option}={mode!r} is unknown; use one of {', '.join(PAIR_MODES)}.")
    level = dense_ranks(ranks)
    last = level.amax(-1)[..., None, None]
    return PAIR_RULES[mode](level.unsqueeze(-1), level.unsqueeze(-2), last)


def ranked_pairs(ranks: Tensor, mode: str, option: str = "pairs") -> list[tuple[int, int]]:
    """(better, worse) indices of one ``[K]`` list under ``mode``, ordered by the better candidate's level, the worse
    one's level, then their positions."""
    level = dense_ranks(ranks).tolist()
    pairs = [(i, j) for i, j in pair_mask(ranks, mode, option).nonzero().tolist()]
    return sorted(pairs, key=lambda pair: (level[pair[0]], level[pair[1]], *pair))
