"""Seeded train/eval splits that keep pairs expanded from one group on one side."""

from collections import Counter

import pytest
from datasets import Dataset

from mmdpo.data.loaders import load_groups, train_eval_split


def ranked(n):
    return Dataset.from_list([{"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranks": [0, 1, 2]} for i in range(n)])


def test_split_is_seeded_and_keeps_expanded_pairs_together():
    groups = load_groups(ranked(20), pairs="all")  # 3 pairs per group
    train, held = train_eval_split(groups, 0.25, seed=3)
    again_train, again_held = train_eval_split(groups, 0.25, seed=3)
    assert train.dataset.to_dict() == again_train.dataset.to_dict()
    assert held.dataset.to_dict() == again_held.dataset.to_dict()
    assert (len(train), len(held)) == (45, 15)
    train_ids, held_ids = set(train.dataset["group_id"]), set(held.dataset["group_id"])
    assert len(held_ids) == 5 and not train_ids & held_ids and train_ids | held_ids == set(range(20))
    for side in (train, held):  # each side keeps whole groups (3 pairs each), in source order
        ids = list(side.dataset["group_id"])
        assert ids == sorted(ids) and set(Counter(ids).values()) == {3}
        assert (side.format, side.label, side.conversational) == ("ranked", "ranks", False)
    other, _ = train_eval_split(groups, 0.25, seed=4)
    assert other.dataset["group_id"] != train.dataset["group_id"]


def test_split_without_group_id_is_by_row_and_counts_skips_once():
    rows = ranked(10).to_list() + [{"prompt": "tied", "responses": ["a", "b", "c"], "ranks": [0, 0, 0]}]
    groups = load_groups(Dataset.from_list(rows))
    train, held = train_eval_split(groups, 0.3, seed=0)
    assert (len(train), len(held)) == (7, 3)
    assert sorted(list(train.dataset["prompt"]) + list(held.dataset["prompt"])) == sorted(f"p{i}" for i in range(10))
    assert train.skipped == {"tie": 1} and held.skipped == {}


def test_no_eval_fraction_means_no_eval_set_and_bad_fractions_fail():
    groups = load_groups(ranked(4))
    train, held = train_eval_split(groups, 0.0, seed=0)
    assert held is None and train is groups
    assert len(train_eval_split(groups, 0.01, seed=0)[1]) == 1  # at least one eval group
    with pytest.raises(ValueError, match=r"data.eval_fraction=1.0 must lie in \[0, 1\)"):
        train_eval_split(groups, 1.0, seed=0)
    with pytest.raises(ValueError, match="data.eval_fraction=0.9 of 4 groups leaves none to train on"):
        train_eval_split(groups, 0.9, seed=0)
