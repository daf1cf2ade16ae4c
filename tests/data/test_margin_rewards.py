"""MODPO's margin rewards in the data: read from each format, validated, carried through pair expansion."""

import pytest
from datasets import Dataset

from mmdpo.data.loaders import load_groups
from mmdpo.data.toy import early_letter_reward, toy_margin_pairs


def load(rows, **options):
    """Rows as one table; a column a row lacks is None there, as in a JSONL file."""
    columns = {name: [row.get(name) for row in rows] for row in rows for name in row}
    return load_groups(Dataset.from_dict(columns), name="margins", **options)


def test_own_schema_groups_keep_margin_rewards():
    rows = [
        {"prompt": "p", "candidates": ["a", "b", "c"], "ranks": [1, 0, 2], "margin_rewards": [[1, 2], [3, 4], [5, 6]]},
        {"prompt": "q", "candidates": ["x", "y"], "scores": [0.5, 0.1], "margin_rewards": [[0.5, 0], [-1, 2.5]]},
    ]
    groups = load(rows[:1])
    assert groups.label == "ranks"
    assert groups.dataset[0]["margin_rewards"] == [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
    assert load(rows[1:]).dataset[0]["margin_rewards"] == [[0.5, 0.0], [-1.0, 2.5]]


def test_trl_pairs_take_chosen_and_rejected_margin_rewards():
    groups = load_groups(toy_margin_pairs(3))
    assert (groups.format, groups.label) == ("pairs", "ranks")
    for row in groups.dataset:
        chosen, rejected = row["candidates"]
        assert row["margin_rewards"] == [[early_letter_reward(chosen)], [early_letter_reward(rejected)]]


def test_pair_expansion_carries_each_pairs_margin_rewards():
    row = {"prompt": "p", "responses": ["a", "b", "c"], "scores": [0.2, 0.9, 0.5], "margin_rewards": [[0], [1], [2]]}
    groups = load([row], pairs="all")
    assert groups.dataset["candidates"] == [["b", "c"], ["b", "a"], ["c", "a"]]
    assert groups.dataset["margin_rewards"] == [[[1.0], [2.0]], [[1.0], [0.0]], [[2.0], [0.0]]]
    assert groups.dataset["scores"] == [[0.9, 0.5], [0.9, 0.2], [0.5, 0.2]]


PAIR = {"prompt": "p", "chosen": "a", "rejected": "b"}
GROUP = {"prompt": "p", "candidates": ["a", "b"], "ranks": [0, 1]}
BAD_ROWS = [
    (
        {**PAIR, "chosen_margin_rewards": [0.1]},
        "bad_label",
        "Row 0 of margins: field 'rejected_margin_rewards' is empty while 'chosen_margin_rewards' is set; give both",
    ),
    (
        {**PAIR, "chosen_margin_rewards": [0.1, 0.2], "rejected_margin_rewards": [0.3]},
        "length_mismatch",
        "Row 0 of margins: field 'rejected_margin_rewards' has 1 rewards but 'chosen_margin_rewards' has 2; give every",
    ),
    (
        {**GROUP, "margin_rewards": [[0.1]]},
        "length_mismatch",
        "Row 0 of margins: field 'margin_rewards' has 1 entries for 2 candidates",
    ),
    (
        {**GROUP, "margin_rewards": [[0.1], [float("nan")]]},
        "bad_label",
        "Row 0 of margins: field 'margin_rewards[1]' must hold finite numbers, got nan",
    ),
    (
        {**GROUP, "margin_rewards": [[0.1], []]},
        "bad_label",
        "Row 0 of margins: field 'margin_rewards[1]' must be a non-empty list of rewards",
    ),
    (
        {"prompt": "p", "candidates": ["a"], "desirable": [True], "margin_rewards": [[0.1]]},
        "bad_label",
        "Row 0 of margins: field 'margin_rewards' is set beside 'desirable'",
    ),
]


@pytest.mark.parametrize(("row", "reason", "message"), BAD_ROWS, ids=[b[1] + str(i) for i, b in enumerate(BAD_ROWS)])
def test_bad_margin_rewards_fail_naming_row_and_field_or_are_skipped(row, reason, message):
    with pytest.raises(ValueError) as caught:
        load([row])
    assert str(caught.value).startswith(message)
    good = {**row, "chosen_margin_rewards": [0.0], "rejected_margin_rewards": [1.0]} if "chosen" in row else None
    good = good or {**GROUP, "margin_rewards": [[0.0], [1.0]]}
    skipped = load([good, row], bad_rows="skip")
    assert len(skipped) == 1 and skipped.skipped == {reason: 1}


def test_margin_rewards_are_all_or_nothing_with_one_m():
    with pytest.raises(ValueError, match="Row 1 of margins has no margin_rewards but earlier rows do; give them"):
        load([{**GROUP, "margin_rewards": [[0.1], [0.2]]}, GROUP])
    with pytest.raises(ValueError, match="Row 1 of margins has margin_rewards but earlier rows do not"):
        load([GROUP, {**GROUP, "margin_rewards": [[0.1], [0.2]]}])
    with pytest.raises(ValueError, match="Row 1 of margins has 2 margin rewards per candidate but earlier rows have 1"):
        load([{**GROUP, "margin_rewards": [[0.1], [0.2]]}, {**GROUP, "margin_rewards": [[0.1, 1], [0.2, 1]]}])


def test_margin_rewards_from_a_jsonl_file(tmp_path):
    path = tmp_path / "margins.jsonl"
    toy_margin_pairs(4).to_json(path)
    groups = load_groups(path)
    assert len(groups) == 4 and all(len(m) == 2 and len(m[0]) == 1 for m in groups.dataset["margin_rewards"])
