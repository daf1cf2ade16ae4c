"""Every source kind reads into the same groups; splits, passthrough columns and unreadable sources."""

import json

import PIL.Image
import pytest
from datasets import Dataset, DatasetDict, Image, List, Value

from mmdpo.data.loaders import load_groups, read_table

PAIRS = [
    {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"},
]
EXPECTED = {
    "prompt": ["2+2?", "Capital of France?"],
    "candidates": [["4", "5"], ["Paris", "Lyon"]],
    "ranks": [[0, 1], [0, 1]],
}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def make_source(kind, tmp_path):
    data = Dataset.from_list(PAIRS)
    if kind == "jsonl":
        return write_jsonl(tmp_path / "d.jsonl", PAIRS)
    if kind == "json_array":
        (tmp_path / "d.json").write_text(json.dumps(PAIRS))
        return tmp_path / "d.json"
    if kind == "parquet":
        data.to_parquet(tmp_path / "d.parquet")
        return tmp_path / "d.parquet"
    if kind == "csv":
        data.to_csv(tmp_path / "d.csv", index=False)
        return tmp_path / "d.csv"
    if kind == "save_to_disk":
        data.save_to_disk(tmp_path / "saved")
        return str(tmp_path / "saved")
    if kind == "dataset_dict_dir":
        DatasetDict(train=data, test=data.select([0])).save_to_disk(tmp_path / "dd")
        return tmp_path / "dd"
    if kind == "parquet_dir":
        (tmp_path / "f").mkdir()
        data.select([0]).to_parquet(tmp_path / "f" / "part-0.parquet")
        data.select([1]).to_parquet(tmp_path / "f" / "part-1.parquet")
        return tmp_path / "f"
    if kind == "jsonl_dir":
        (tmp_path / "j").mkdir()
        write_jsonl(tmp_path / "j" / "a.jsonl", PAIRS[:1])
        write_jsonl(tmp_path / "j" / "b.jsonl", PAIRS[1:])
        (tmp_path / "j" / "README.md").write_text("# not data\n")
        return tmp_path / "j"
    if kind == "memory":
        return data
    if kind == "memory_dict":
        return DatasetDict(train=data)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "jsonl",
        "json_array",
        "parquet",
        "csv",
        "save_to_disk",
        "dataset_dict_dir",
        "parquet_dir",
        "jsonl_dir",
        "memory",
        "memory_dict",
    ],
)
def test_every_source_gives_the_same_groups(tmp_path, kind):
    groups = load_groups(make_source(kind, tmp_path))
    assert (groups.format, groups.label, groups.conversational, groups.skipped) == ("pairs", "ranks", False, {})
    assert groups.dataset.to_dict() == EXPECTED
    assert len(groups) == 2


def test_the_split_of_a_saved_dataset_dict(tmp_path):
    DatasetDict(train=Dataset.from_list(PAIRS), test=Dataset.from_list(PAIRS[1:])).save_to_disk(tmp_path / "dd")
    groups = load_groups(tmp_path / "dd", split="test")
    assert groups.dataset.to_dict() == {
        "prompt": ["Capital of France?"],
        "candidates": [["Paris", "Lyon"]],
        "ranks": [[0, 1]],
    }
    with pytest.raises(ValueError, match=r"The split 'dev' is not in .*dd, which has: train, test; set data.split"):
        load_groups(tmp_path / "dd", split="dev")


def test_a_directory_splits_by_file_name(tmp_path):
    (tmp_path / "data").mkdir()
    Dataset.from_list(PAIRS[:1]).to_parquet(tmp_path / "data" / "train-00000-of-00001.parquet")
    Dataset.from_list(PAIRS[1:]).to_parquet(tmp_path / "data" / "test-00000-of-00001.parquet")
    assert load_groups(tmp_path).dataset["prompt"] == ["2+2?"]
    assert load_groups(tmp_path, split="test").dataset["prompt"] == ["Capital of France?"]


def test_a_single_table_has_only_a_train_split(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", PAIRS)
    with pytest.raises(ValueError, match=r"The split 'test' is not in .*d.jsonl, which has: train; set data.split"):
        load_groups(path, split="test")
    with pytest.raises(ValueError, match="The split 'test' is not in the in-memory dataset"):
        load_groups(Dataset.from_list(PAIRS), split="test")


def test_unreadable_sources_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.path='.*nope\.jsonl' does not exist"):
        load_groups(tmp_path / "nope.jsonl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt' is not a \.jsonl/\.json, \.parquet or \.csv file"):
        load_groups(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty' holds no \.jsonl/\.json, \.parquet or \.csv files"):
        load_groups(tmp_path / "empty")
    (tmp_path / "mixed").mkdir()
    write_jsonl(tmp_path / "mixed" / "a.jsonl", PAIRS)
    Dataset.from_list(PAIRS).to_parquet(tmp_path / "mixed" / "b.parquet")
    with pytest.raises(ValueError, match=r"mixed' mixes json and parquet files"):
        load_groups(tmp_path / "mixed")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "cho\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl' is not valid json: .*fix or remove the broken file"):
        load_groups(broken)


def test_csv_carries_unpaired_booleans_but_not_lists(tmp_path):
    (tmp_path / "kto.csv").write_text("prompt,completion,label\nhi,hello,True\nhi,go away,False\n")
    groups = load_groups(tmp_path / "kto.csv")
    assert groups.format == "unpaired"
    assert groups.dataset.to_dict() == {
        "prompt": ["hi", "hi"],
        "candidates": [["hello"], ["go away"]],
        "desirable": [[True], [False]],
    }
    Dataset.from_list([{"prompt": "p", "responses": ["a", "b"], "ranks": [0, 1]}]).to_csv(
        tmp_path / "r.csv", index=False
    )
    with pytest.raises(
        ValueError, match="Column 'responses' holds single .* values where lists are needed; .*JSONL or Parquet"
    ):
        load_groups(tmp_path / "r.csv")


def test_images_and_ids_pass_through_undecoded_and_follow_expanded_pairs():
    red, blue = PIL.Image.new("RGB", (2, 2), (255, 0, 0)), PIL.Image.new("RGB", (2, 2), (0, 0, 255))
    data = Dataset.from_dict(
        {
            "prompt": ["what colour?", "which shade?"],
            "responses": [["red", "pink", "grey"], ["navy", "sky"]],
            "ranks": [[0, 1, 2], [1, 0]],
            "images": [[red], [blue]],
            "id": ["r", "b"],
            "source": ["x", "y"],
        }
    )
    assert read_table(data) is data
    groups = load_groups(data, pairs="best_vs_rest")
    assert groups.dataset.features["images"] == List(Image())
    assert groups.dataset.features["id"] == Value("string")
    assert groups.dataset.column_names == ["prompt", "candidates", "ranks", "images", "id", "group_id"]
    assert groups.dataset["id"] == ["r", "r", "b"]
    assert groups.dataset["group_id"] == [0, 0, 1]
    assert [row["images"][0].getpixel((0, 0)) for row in groups.dataset] == [(255, 0, 0), (255, 0, 0), (0, 0, 255)]
    assert groups.dataset["candidates"] == [["red", "pink"], ["red", "grey"], ["sky", "navy"]]
