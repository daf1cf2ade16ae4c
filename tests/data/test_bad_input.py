"""Bad input fails early in one sentence naming the row, field or column and the fix, or is skipped and counted."""

import json
import math

import pytest
from datasets import Dataset

from mmdpo.data.loaders import load_groups

PAIRS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]
RANKED = [
    {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]},
    {"prompt": "q", "responses": ["c", "d"], "ranks": [1, 0]},
]
UNPAIRED = [{"prompt": "p", "completion": "a", "label": True}, {"prompt": "q", "completion": "b", "label": False}]
HI = {"role": "user", "content": "hi"}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize(
    ("good", "bad", "field", "problem", "reason"),
    [
        (PAIRS, {"prompt": "p", "chosen": "", "rejected": "r"}, "chosen", "is empty", "empty_response"),
        (PAIRS, {"prompt": "p", "chosen": "c", "rejected": None}, "rejected", "is empty", "empty_response"),
        (PAIRS, {"prompt": None, "chosen": "c", "rejected": "r"}, "prompt", "is empty", "empty_prompt"),
        (UNPAIRED, {"prompt": "p", "completion": None, "label": True}, "completion", "is empty", "empty_response"),
        (UNPAIRED, {"prompt": "p", "completion": "c", "label": "yes"}, "label", "must be true or false", "bad_label"),
        (UNPAIRED, {"prompt": "p", "completion": "c", "label": None}, "label", "must be true or false", "bad_label"),
        (
            RANKED,
            {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1, 2]},
            "ranks",
            "has 3 entries for 2 responses",
            "length_mismatch",
        ),
        (
            RANKED,
            {"prompt": "p", "responses": ["a", None], "ranks": [0, 1]},
            "responses[1]",
            "is empty",
            "empty_response",
        ),
        (RANKED, {"prompt": "p", "responses": [], "ranks": []}, "responses", "is empty", "empty_response"),
        (
            RANKED,
            {"prompt": "p", "responses": ["a", "b"], "ranks": [0, -1]},
            "ranks",
            "must hold whole numbers >= 0 (0 = best), got -1",
            "bad_label",
        ),
        (
            RANKED,
            {"prompt": "p", "responses": ["a", "b"], "ranks": None},
            "ranks",
            "is empty and so is 'scores'",
            "bad_label",
        ),
        (
            RANKED,
            {"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1], "scores": [0.5]},
            "scores",
            "has 1 entries for 2 responses",
            "length_mismatch",
        ),
        (
            RANKED,
            {"prompt": "p", "responses": ["a", 7], "ranks": [0, 1]},
            "responses[1]",
            "must be text or a list of",
            "wrong_type",
        ),
    ],
)
def test_a_bad_row_names_row_field_and_fix_or_is_skipped_and_counted(tmp_path, good, bad, field, problem, reason):
    path = write_jsonl(tmp_path / "d.jsonl", good + [bad])
    with pytest.raises(ValueError) as err:
        load_groups(path)
    message = str(err.value)
    assert message.startswith(f"Row 2 of {path}: field '{field}' {problem}")
    assert message.endswith("; fix the row or set data.bad_rows=skip to drop such rows.")
    groups = load_groups(path, bad_rows="skip")
    assert len(groups) == 2 and groups.skipped == {reason: 1}


def test_nan_scores_are_bad_labels():
    rows = [
        {"prompt": "p", "responses": ["a", "b"], "scores": [0.5, math.nan]},
        {"prompt": "q", "responses": ["a", "b"], "scores": [1.0, 0.0]},
    ]
    with pytest.raises(
        ValueError, match="Row 0 of the in-memory dataset: field 'scores' must hold finite numbers, got nan"
    ):
        load_groups(Dataset.from_list(rows))
    assert load_groups(Dataset.from_list(rows), bad_rows="skip").skipped == {"bad_label": 1}


def test_skips_are_counted_by_reason(tmp_path):
    rows = RANKED + [
        {"prompt": "", "responses": ["a", "b"], "ranks": [0, 1]},
        {"prompt": "p", "responses": ["a", ""], "ranks": [0, 1]},
        {"prompt": "p", "responses": ["a", "b"], "ranks": [0]},
        {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [0, 1]},
        {"prompt": "p", "responses": ["a", "b"], "ranks": [1, 1]},
    ]
    groups = load_groups(write_jsonl(tmp_path / "d.jsonl", rows), bad_rows="skip")
    assert groups.dataset["prompt"] == ["p", "q"]
    assert groups.skipped == {"empty_prompt": 1, "empty_response": 1, "length_mismatch": 2, "tie": 1}


def test_implicit_prompts_need_shared_turns_and_a_reply_after_them(tmp_path):
    reply = {"role": "assistant", "content": "hello"}
    rows = [
        {"chosen": [HI, reply], "rejected": [HI, {"role": "assistant", "content": "bye"}]},
        {"chosen": [{"role": "user", "content": "yo"}, reply], "rejected": [HI, reply]},
        {"chosen": [HI, reply], "rejected": [HI, reply]},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    with pytest.raises(ValueError, match="Row 1 of .*: field 'prompt' is missing and 'chosen' and 'rejected' share no"):
        load_groups(path)
    groups = load_groups(path, bad_rows="skip")
    assert len(groups) == 1 and groups.skipped == {"empty_prompt": 1, "empty_response": 1}


def test_mixed_plain_and_conversational_rows_fail_whatever_bad_rows_says(tmp_path):
    conversation = {
        "prompt": [HI],
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    # (texts that are not themselves JSON: datasets' Json feature for mixed columns decodes "4" as 4)
    path = write_jsonl(tmp_path / "mixed.jsonl", PAIRS[1:] * 2 + [conversation])
    for bad_rows in ("error", "skip"):
        with pytest.raises(
            ValueError,
            match="Row 2 of .*mixed.jsonl is a conversation but earlier rows are text; a dataset must be all plain",
        ):
            load_groups(path, bad_rows=bad_rows)
    within = [{"prompt": [HI], "chosen": "a", "rejected": "b"}]
    with pytest.raises(ValueError, match="Row 0 .*: field 'prompt' is a conversation but field 'chosen' is text"):
        load_groups(Dataset.from_list(within), bad_rows="skip")
    unpaired = [{"prompt": "hi", "completion": [{"role": "assistant", "content": "a"}], "label": True}]
    with pytest.raises(ValueError, match="field 'prompt' is text but field 'completion' is a conversation"):
        load_groups(Dataset.from_list(unpaired))


def test_mixed_label_kinds_fail(tmp_path):
    rows = [RANKED[0], {"prompt": "q", "responses": ["c", "d"], "scores": [0.1, 0.2]}]
    with pytest.raises(ValueError, match="Row 1 of .* is labelled by 'scores' but earlier rows by 'ranks'"):
        load_groups(write_jsonl(tmp_path / "d.jsonl", rows))


def test_malformed_groups_are_caught():
    two = [{"prompt": "p", "candidates": ["a", "b"], "desirable": [True]}]
    with pytest.raises(ValueError, match="Row 0 .*: field 'candidates' has 2 entries; unpaired groups have one"):
        load_groups(Dataset.from_list(two))
    long_label = [{"prompt": "p", "candidates": ["a"], "desirable": [True, False]}]
    with pytest.raises(
        ValueError, match=r"field 'desirable' has 2 entries for 1 candidate \(unpaired groups have one\)"
    ):
        load_groups(Dataset.from_list(long_label))
    both = [{"prompt": "p", "candidates": ["a"], "desirable": [True], "ranks": [0]}]
    with pytest.raises(ValueError, match="field 'desirable' is set beside 'ranks' or 'scores'"):
        load_groups(Dataset.from_list(both))
    none = [{"prompt": "p", "candidates": ["a"], "desirable": None, "ranks": None}]
    with pytest.raises(ValueError, match="field 'ranks' is empty and so are 'scores' and 'desirable'"):
        load_groups(Dataset.from_list(none))
    messages = [{"prompt": "p", "candidates": [["not", "messages"]], "scores": [1.0]}]
    with pytest.raises(
        ValueError, match=r"field 'candidates\[0\]' must be text or a list of \{role, content\} messages"
    ):
        load_groups(Dataset.from_list(messages))


def test_unknown_options_list_the_valid_ones():
    data = Dataset.from_list(PAIRS)
    with pytest.raises(
        ValueError,
        match="data.format='pairz' is unknown; use one of auto, groups, step_dpo, steps, pairs, ranked, unpaired.",
    ):
        load_groups(data, format="pairz")
    with pytest.raises(ValueError, match="data.ties='maybe' is unknown; use one of drop, keep."):
        load_groups(data, ties="maybe")
    with pytest.raises(ValueError, match="data.bad_rows='ignore' is unknown; use one of error, skip."):
        load_groups(data, bad_rows="ignore")
    with pytest.raises(
        ValueError, match="data.pairs='some' is unknown; use one of none, all, best_vs_rest, adjacent, best_vs_worst."
    ):
        load_groups(data, pairs="some")


def test_no_format_fits_names_the_closest_format_and_its_missing_column_first():
    with pytest.raises(ValueError) as err:
        load_groups(Dataset.from_list([{"prompt": "p", "answer": "a", "rejected": "r"}]))
    assert str(err.value) == (
        "The data has columns ['prompt', 'answer', 'rejected']: the closest format is pairs, which lacks 'chosen'; "
        "rename the columns (other formats: groups, step_dpo, steps, ranked, unpaired)."
    )


def test_a_forced_format_names_the_missing_column_and_the_formats_that_fit():
    with pytest.raises(ValueError) as err:
        load_groups(Dataset.from_list(PAIRS), format="ranked")
    assert str(err.value) == (
        "data.format=ranked needs column 'responses' (or 'completions'), 'ranks' (or 'scores'), but the data has "
        "columns ['prompt', 'chosen', 'rejected']; formats that fit them: pairs."
    )
    rows = [{"prompt": "p", "responses": ["a", "b"]}]
    with pytest.raises(ValueError, match=r"the closest format is ranked, which lacks 'ranks' \(or 'scores'\)"):
        load_groups(Dataset.from_list(rows))
    with pytest.raises(ValueError, match=r"needs column 'ranks' \(or 'scores'\), .*; no format fits them\."):
        load_groups(Dataset.from_list(rows), format="ranked")


def test_text_pairs_without_a_prompt_column_fail_by_column():
    rows = [{"chosen": "Human: hi Assistant: hello", "rejected": "Human: hi Assistant: bye"}]
    with pytest.raises(
        ValueError, match=r"data.format=pairs needs column 'prompt' \(only conversations carry their own prompt\)"
    ):
        load_groups(Dataset.from_list(rows))


def test_nothing_usable_left_is_an_error():
    rows = [{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 0]}]
    with pytest.raises(
        ValueError, match=r"No usable groups in the in-memory dataset: 1 rows read, skipped \{'tie': 1\}"
    ):
        load_groups(Dataset.from_list(rows))


def test_rows_dropped_at_tokenisation_are_counted(tmp_path):
    from mmdpo.config import load_config
    from mmdpo.training.trainer import train

    rows = [{"prompt": "q" * (200 if i == 3 else 5), "chosen": "a", "rejected": "b"} for i in range(10)]
    config = load_config(
        None,
        [
            f"data.path={write_jsonl(tmp_path / 'long.jsonl', rows)}", "data.bad_rows=skip", "data.eval_fraction=0",
            "data.num_workers=0", "model.max_length=100", "train.max_steps=1", "train.batch_size=2",
            f"train.output_dir={tmp_path / 'run'}", "train.tensorboard=false", "train.plots=false",
            "train.progress=false",
        ],
    )  # fmt: skip
    assert train(config).skipped == {"prompt_too_long": 1}
