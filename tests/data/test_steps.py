"""Step-level preference data: Step-DPO's own columns and whole solutions as step lists."""

import pytest
from datasets import Dataset

from mmdpo.data.loaders import load_groups

STEP_DPO = [
    {"prompt": "2+3*4?", "initial_reason_steps": "3*4=12.\n", "chosen": "2+12=14.", "rejected": "2+12=15."},
    {"prompt": "1+1?", "initial_reason_steps": "", "chosen": "2.", "rejected": "3."},
]
SOLUTIONS = [
    {
        "prompt": "2+3*4?",
        "chosen_steps": ["3*4=12.\n", "2+12=14.\n", "So 14."],
        "rejected_steps": [
            "3*4=12.\n",
            "2+12=15.\n",
            "So 15.",
        ],
    },  # fmt: skip
]


def test_step_dpo_columns_make_a_prefix_and_one_step_per_candidate():
    groups = load_groups(Dataset.from_list(STEP_DPO))
    assert groups.format == "step_dpo"
    first, second = groups.dataset[0], groups.dataset[1]
    assert first["prefix"] == "3*4=12.\n" and second["prefix"] == ""
    assert first["steps"] == [["2+12=14."], ["2+12=15."]]
    assert first["candidates"] == ["2+12=14.", "2+12=15."] and first["ranks"] == [0, 1]


def test_step_dpo_pipeline_name_for_the_prefix():
    row = {"prefix" if k == "initial_reason_steps" else k: v for k, v in STEP_DPO[0].items()}
    groups = load_groups(Dataset.from_list([row]))
    assert groups.format == "step_dpo" and groups.dataset[0]["prefix"] == "3*4=12.\n"


@pytest.mark.parametrize("first_error", [None, 1])
def test_solutions_part_at_the_first_error(first_error):
    row = {**SOLUTIONS[0], "first_error": first_error}
    group = load_groups(Dataset.from_list([row])).dataset[0]
    assert group["prefix"] == "3*4=12.\n"
    assert group["steps"] == [["2+12=14.\n", "So 14."], ["2+12=15.\n", "So 15."]]
    assert group["candidates"] == ["2+12=14.\nSo 14.", "2+12=15.\nSo 15."]


def test_conversational_prompts_take_text_steps():
    row = {**SOLUTIONS[0], "prompt": [{"role": "user", "content": "2+3*4?"}]}
    groups = load_groups(Dataset.from_list([row]))
    assert groups.conversational and groups.dataset[0]["prefix"] == "3*4=12.\n"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"first_error": 2},
            "Row 0 of .*field 'first_error' is 2 but 'chosen_steps' and 'rejected_steps' part at step 1",
        ),
        ({"first_error": -1}, "field 'first_error' must be a step index >= 0"),
        ({"rejected_steps": ["3*4=12.\n"]}, "field 'rejected_steps' has no step after the steps it shares"),
        ({"chosen_steps": ["3*4=12.\n", ""]}, r"field 'chosen_steps\[1\]' is empty"),
        ({"chosen_steps": []}, "field 'chosen_steps' is empty"),
    ],
)
def test_bad_step_rows_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        load_groups(Dataset.from_list([{**SOLUTIONS[0], **change}]))


def test_bad_step_rows_can_be_skipped_and_counted():
    rows = [*STEP_DPO, {**STEP_DPO[0], "rejected": None}, {**STEP_DPO[0], "initial_reason_steps": 3}]
    groups = load_groups(Dataset.from_list(rows[:3]), bad_rows="skip")
    assert len(groups) == 2 and groups.skipped == {"empty_response": 1}
    with pytest.raises(ValueError, match="field 'initial_reason_steps' must be the text of the correct steps"):
        load_groups(Dataset.from_list([rows[3]]))


def test_a_step_must_be_text():
    with pytest.raises(ValueError, match="field 'chosen' must be the text of a step"):
        load_groups(Dataset.from_list([{**STEP_DPO[0], "chosen": ["2+12=14."]}]))


def test_step_pairs_refuse_pair_expansion():
    with pytest.raises(ValueError, match="holds step pairs; set data.pairs=none"):
        load_groups(Dataset.from_list(STEP_DPO), pairs="all")


def test_trl_pairs_are_still_pairs():
    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    groups = load_groups(Dataset.from_list(rows))
    assert groups.format == "pairs" and "steps" not in groups.dataset.column_names


def test_step_lists_in_csv_name_the_fix(tmp_path):
    path = tmp_path / "steps.csv"
    path.write_text("prompt,chosen_steps,rejected_steps\nq,a,b\n")
    with pytest.raises(ValueError, match="CSV cannot store lists"):
        load_groups(path)
