"""Public preference formats -> preference groups."""

import json

import pytest
from datasets import Dataset, DatasetDict

from mmdpo.data.loaders import expand_pairs, load_groups, train_eval_split

PAIRS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]
CONVERSATIONS = [
    {
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello!"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go away"}],
    }
]
RANKED = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [0.1, 0.9, 0.5, 0.5]}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "csv", "saved", "saved_dict", "folder", "memory"])
def test_pairs_load_from_every_source(tmp_path, kind):
    data = Dataset.from_list(PAIRS)
    source = {
        "jsonl": lambda: write_jsonl(tmp_path / "d.jsonl", PAIRS),
        "parquet": lambda: data.to_parquet(tmp_path / "d.parquet") and tmp_path / "d.parquet",
        "csv": lambda: data.to_csv(tmp_path / "d.csv", index=False) and tmp_path / "d.csv",
        "saved": lambda: data.save_to_disk(tmp_path / "s") or tmp_path / "s",
        "saved_dict": lambda: (
            DatasetDict(train=data, test=data.select([0])).save_to_disk(tmp_path / "dd") or tmp_path / "dd"
        ),
        "folder": lambda: (
            (tmp_path / "f").mkdir() or data.to_parquet(tmp_path / "f" / "part-0.parquet") and tmp_path / "f"
        ),
        "memory": lambda: data,
    }[kind]()
    groups = load_groups(source)
    assert groups.format == "pairs" and groups.label == "ranks" and not groups.conversational
    assert groups.dataset[1] == {"prompt": "Capital of France?", "candidates": ["Paris", "Lyon"], "ranks": [0, 1]}


def test_split_of_a_saved_dataset_dict(tmp_path):
    DatasetDict(train=Dataset.from_list(PAIRS), test=Dataset.from_list(PAIRS[:1])).save_to_disk(tmp_path / "dd")
    assert len(load_groups(tmp_path / "dd", split="test")) == 1
    with pytest.raises(ValueError, match="data.split='dev'"):
        load_groups(tmp_path / "dd", split="dev")


def test_implicit_prompt_conversations_split_at_the_shared_turns():
    groups = load_groups(Dataset.from_list(CONVERSATIONS))
    row = groups.dataset[0]
    assert groups.conversational
    assert row["prompt"] == [{"role": "user", "content": "hi"}]
    assert row["candidates"] == [
        [{"role": "assistant", "content": "hello!"}],
        [{"role": "assistant", "content": "go away"}],
    ]


def test_ranked_lists_keep_scores_and_drop_full_ties():
    rows = RANKED + [{"prompt": "q", "responses": ["x", "y"], "scores": [0.3, 0.3]}]
    groups = load_groups(Dataset.from_list(rows))
    assert groups.format == "ranked" and groups.label == "scores"
    assert len(groups) == 1 and groups.skipped == {"tie": 1}
    assert len(load_groups(Dataset.from_list(rows), ties="keep")) == 2


def test_unpaired_rows_become_single_candidates():
    rows = [{"prompt": "p", "completion": "good", "label": True}, {"prompt": "q", "completion": "bad", "label": False}]
    groups = load_groups(Dataset.from_list(rows))
    assert groups.label == "desirable"
    assert groups.dataset[1] == {"prompt": "q", "candidates": ["bad"], "desirable": [False]}


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("all", [(1, 0), (1, 2), (1, 3), (2, 0), (3, 0)]),
        ("best_vs_rest", [(1, 2), (1, 3), (1, 0)]),
        ("best_vs_worst", [(1, 0)]),
        ("adjacent", [(1, 2), (1, 3), (2, 0), (3, 0)]),
    ],
)
def test_pair_expansion_of_a_ranked_list(mode, expected):
    # scores [0.1, 0.9, 0.5, 0.5] rank b first, c and d tied second, a last
    assert sorted(expand_pairs({"scores": RANKED[0]["scores"]}, mode)) == sorted(expected)
    groups = load_groups(Dataset.from_list(RANKED), pairs=mode)
    letters = "abcd"
    assert sorted(tuple(letters.index(c) for c in row["candidates"]) for row in groups.dataset) == sorted(expected)
    assert all(row["ranks"] == [0, 1] and row["group_id"] == 0 for row in groups.dataset)


def test_split_is_seeded_and_keeps_expanded_pairs_together():
    rows = [{"prompt": f"p{i}", "responses": ["a", "b", "c"], "ranks": [0, 1, 2]} for i in range(20)]
    groups = load_groups(Dataset.from_list(rows), pairs="all")
    train, held = train_eval_split(groups, 0.25, seed=3)
    again, _ = train_eval_split(groups, 0.25, seed=3)
    assert train.dataset["prompt"] == again.dataset["prompt"]
    assert not set(train.dataset["group_id"]) & set(held.dataset["group_id"])
    assert len(set(held.dataset["group_id"])) == 5 and len(train) + len(held) == 60
    assert train_eval_split(groups, 0.0, seed=0)[1] is None


def test_missing_path_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_groups(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="data.format='pairz'"):
        load_groups(Dataset.from_list(PAIRS), format="pairz")


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match=r"columns \['prompt', 'answer'\].*prompt \+ chosen \+ rejected"):
        load_groups(Dataset.from_list([{"prompt": "p", "answer": "a"}]))
    with pytest.raises(ValueError, match="needs columns prompt \\+ responses"):
        load_groups(Dataset.from_list(PAIRS), format="ranked")


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"prompt": "p", "chosen": "", "rejected": "r"}, "empty_response"),
        ({"prompt": "p", "chosen": "c", "rejected": None}, "empty_response"),
    ],
)
def test_bad_rows_fail_naming_the_row_or_are_skipped_and_counted(row, reason):
    rows = PAIRS + [row]
    with pytest.raises(ValueError, match="Row 2: .*data.bad_rows=skip"):
        load_groups(Dataset.from_list(rows))
    groups = load_groups(Dataset.from_list(rows), bad_rows="skip")
    assert len(groups) == 2 and groups.skipped == {reason: 1}


def test_ranked_length_mismatch_and_bad_labels():
    bad = [{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1, 2]}]
    with pytest.raises(ValueError, match="2 responses but 3 ranks"):
        load_groups(Dataset.from_list(bad))
    unpaired = [{"prompt": "p", "completion": "c", "label": "yes"}]
    assert load_groups(Dataset.from_list(unpaired), bad_rows="skip").skipped == {"bad_label": 1}


def test_a_malformed_file_names_the_path(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "cho\n')
    with pytest.raises(ValueError, match="broken.jsonl.*is not valid json"):
        load_groups(path)
