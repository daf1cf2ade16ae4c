"""Tie handling and Curry-DPO style expansion of ranked lists into pairs."""

import pytest
from datasets import Dataset

from mmdpo.data.loaders import expand_pairs, load_groups

# b is best; c and d tie second; a is fourth; e is last.
RANKED = {"prompt": "p", "responses": ["a", "b", "c", "d", "e"], "scores": [0.2, 0.9, 0.5, 0.5, 0.1]}
EXPECTED_PAIRS = {
    "all": ["bc", "bd", "ba", "be", "ca", "da", "ce", "de", "ae"],
    "best_vs_rest": ["bc", "bd", "ba", "be"],
    "adjacent": ["bc", "bd", "ca", "da", "ae"],
    "best_vs_worst": ["be"],
}
SCORE = dict(zip("abcde", RANKED["scores"]))


@pytest.mark.parametrize("mode", list(EXPECTED_PAIRS))
def test_expand_pairs_of_a_hand_made_ranked_list(mode):
    letters = "abcde"
    expected = [(letters.index(x), letters.index(y)) for x, y in EXPECTED_PAIRS[mode]]
    assert expand_pairs({"scores": RANKED["scores"]}, mode) == expected
    assert expand_pairs({"ranks": [3, 0, 1, 1, 4]}, mode) == expected  # same order given as ranks


@pytest.mark.parametrize("mode", list(EXPECTED_PAIRS))
def test_load_groups_expands_into_pairs_with_scores_and_group_id(mode):
    other = {"prompt": "q", "responses": ["x", "y"], "scores": [0.0, 1.0]}
    groups = load_groups(Dataset.from_list([RANKED, other]), pairs=mode)
    assert (groups.format, groups.label) == ("ranked", "ranks")
    expected = [
        {"prompt": "p", "candidates": [x, y], "ranks": [0, 1], "scores": [SCORE[x], SCORE[y]], "group_id": 0}
        for x, y in EXPECTED_PAIRS[mode]
    ]
    expected.append({"prompt": "q", "candidates": ["y", "x"], "ranks": [0, 1], "scores": [1.0, 0.0], "group_id": 1})
    assert groups.dataset.to_list() == expected


def test_pairs_from_ranks_carry_no_scores_and_tied_extremes_all_take_part():
    rows = [{"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 0, 1]}]
    groups = load_groups(Dataset.from_list(rows), pairs="best_vs_worst")
    assert groups.dataset.to_dict() == {
        "prompt": ["p", "p"],
        "candidates": [["a", "c"], ["b", "c"]],
        "ranks": [[0, 1], [0, 1]],
        "group_id": [0, 0],
    }


def test_ties_drop_removes_full_ties_only():
    rows = [
        {"prompt": "tied pair", "responses": ["a", "b"], "ranks": [0, 0]},
        {"prompt": "tied three", "responses": ["a", "b", "c"], "ranks": [1, 1, 1]},
        {"prompt": "partly tied", "responses": ["a", "b", "c"], "ranks": [0, 1, 1]},
        {"prompt": "clear", "responses": ["a", "b"], "ranks": [1, 0]},
    ]
    dropped = load_groups(Dataset.from_list(rows))
    assert dropped.dataset["prompt"] == ["partly tied", "clear"]
    assert dropped.skipped == {"tie": 2}
    kept = load_groups(Dataset.from_list(rows), ties="keep")
    assert kept.dataset["ranks"] == [[0, 0], [1, 1, 1], [0, 1, 1], [1, 0]]
    assert kept.skipped == {}


def test_tied_scores_are_ties_too():
    rows = [
        {"prompt": "tied", "responses": ["a", "b"], "scores": [0.3, 0.3]},
        {"prompt": "clear", "responses": ["a", "b"], "scores": [0.3, 0.31]},
    ]
    assert load_groups(Dataset.from_list(rows)).dataset["prompt"] == ["clear"]
    assert load_groups(Dataset.from_list(rows), ties="keep").dataset["scores"] == [[0.3, 0.3], [0.3, 0.31]]


def test_group_id_is_the_source_row_even_after_dropped_rows():
    rows = [
        {"prompt": "tied", "responses": ["a", "b"], "ranks": [0, 0]},
        {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1, 2]},
    ]
    groups = load_groups(Dataset.from_list(rows), pairs="adjacent")
    assert groups.dataset.to_dict() == {
        "prompt": ["p", "p"],
        "candidates": [["a", "b"], ["b", "c"]],
        "ranks": [[0, 1], [0, 1]],
        "group_id": [1, 1],
    }
    assert groups.skipped == {"tie": 1}
    # Kept ties have no pair to give; they are counted as ties, not lost silently.
    kept = load_groups(Dataset.from_list(rows), pairs="adjacent", ties="keep")
    assert len(kept) == 2 and kept.skipped == {"tie": 1}


def test_pair_expansion_needs_ranked_groups():
    rows = [{"prompt": "p", "completion": "c", "label": True}]
    with pytest.raises(ValueError, match="data.pairs=all needs ranked or scored groups, but .* is unpaired"):
        load_groups(Dataset.from_list(rows), pairs="all")
