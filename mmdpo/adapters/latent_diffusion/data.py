"""Training and held-out groups of a latent-diffusion run, each row indexed in its source."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

from datasets import Dataset

from mmdpo.data.loaders import GroupSet, train_eval_split


def indexed(groups: GroupSet) -> GroupSet:
    """``groups`` with each row's ``row_index`` in its source (which seeds its randomness and indexes the encode
    cache), unless they carry one."""
    if "row_index" in groups.dataset.column_names:
        return groups
    return replace(groups, dataset=groups.dataset.add_column("row_index", list(range(len(groups)))))


def split_groups(
    groups: GroupSet, eval_groups: GroupSet | None, eval_fraction: float, seed: int
) -> tuple[Dataset, Dataset | None, dict[str, int]]:
    """Train and held-out groups (:func:`indexed`) and the rows skipped on loading both, by reason: the held-out
    groups are ``eval_groups`` when given, else a seeded ``eval_fraction`` of ``groups``."""
    groups = indexed(groups)
    if eval_groups is not None:
        train_set, eval_set = groups, indexed(eval_groups)
    else:
        train_set, eval_set = train_eval_split(groups, eval_fraction, seed=seed)
    skipped = Counter(train_set.skipped) + Counter({} if eval_set is None else eval_set.skipped)
    return train_set.dataset, None if eval_set is None else eval_set.dataset, dict(skipped)
