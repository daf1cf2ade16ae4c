"""Image + question preference formats: RLAIF-V, VLFeedback, TRL conversational rows with images, ranked lists."""

import io
import json

import pytest
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from mmdpo.data.images import decode_image
from mmdpo.data.shapes import SHAPE_COLOURS
from mmdpo.data.vlm import colour_pairs, load_vlm_groups


def png(colour="red"):
    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rlaif_v_parquet_with_image_bytes(tmp_path):
    rows = [
        {
            "ds_name": "x",
            "image": {"bytes": png(), "path": None},
            "question": f"q{i}",
            "chosen": "yes",
            "rejected": "no",
        }
        for i in range(3)
    ]
    features = Features(
        {
            "ds_name": Value("string"),
            "image": Image(),
            **{c: Value("string") for c in ("question", "chosen", "rejected")},
        }
    )
    Dataset.from_list(rows, features=features).to_parquet(tmp_path / "train.parquet")
    groups = load_vlm_groups(tmp_path / "train.parquet")
    row = groups.dataset[1]
    assert (groups.format, groups.label, groups.conversational) == ("pairs", "ranks", False)
    assert row["prompt"] == "q1" and row["candidates"] == ["yes", "no"] and row["ranks"] == [0, 1]
    assert row["images"] == [{"bytes": png(), "path": None}]  # stored, not decoded
    assert "ds_name" not in groups.dataset.column_names


def test_relative_image_paths_resolve_and_missing_images_fail_or_are_counted(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png())
    rows = [{"image": "img/a.png", "question": "q", "chosen": "a", "rejected": "b"}] * 2
    rows.append({"image": "img/missing.png", "question": "q", "chosen": "a", "rejected": "b"})
    path = write_jsonl(tmp_path / "index.jsonl", rows)
    with pytest.raises(ValueError, match=r"Row 2 of .*index.jsonl: field 'image' names .*missing.png.*bad_rows=skip"):
        load_vlm_groups(path)
    groups = load_vlm_groups(path, bad_rows="skip")
    assert len(groups) == 2 and groups.skipped == {"missing_image": 1}
    assert groups.dataset[0]["images"] == [{"bytes": None, "path": str(tmp_path / "img" / "a.png")}]


def test_vlfeedback_ratings_rank_the_answers_and_expand_into_pairs(tmp_path):
    (tmp_path / "a.png").write_bytes(png())

    def answer(text, *ratings):
        aspects = ("Helpfulness", "Ethical Considerations", "Visual Faithfulness")
        return {
            "model": "m",
            "response": text,
            "annotations": {a: {"Rating": r, "Rationale": ""} for a, r in zip(aspects, ratings)},
        }

    rows = [
        {
            "id": "0", "prompt": "Describe.", "models": ["m"] * 3, "img_path": "a.png",
            "completions": [answer("good", "5", "5", "4"), answer("bad", "1", "N/A", "2"), answer("ok", "3", "3", "3")],
        }
    ]  # fmt: skip
    path = write_jsonl(tmp_path / "vlf.jsonl", rows)
    groups = load_vlm_groups(path)
    assert groups.format == "ranked" and groups.dataset[0]["candidates"] == ["good", "bad", "ok"]
    assert groups.dataset[0]["scores"] == pytest.approx([14 / 3, 1.5, 3.0])
    pairs = load_vlm_groups(path, pairs="best_vs_rest")
    assert [row["candidates"] for row in pairs.dataset] == [["good", "ok"], ["good", "bad"]]
    assert all(len(row["images"]) == 1 for row in pairs.dataset) and pairs.dataset["group_id"] == [0, 0]


def test_trl_conversational_rows_keep_their_image_parts():
    prompt = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]}]
    rows = {
        "images": [[{"bytes": png(), "path": None}, {"bytes": png("blue"), "path": None}]],
        "prompt": [prompt],
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": "Red."}]}]],
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": "Green."}]}]],
    }
    groups = load_vlm_groups(Dataset.from_dict(rows))
    parts = groups.dataset[0]["prompt"][0]["content"]  # Arrow gives every part both keys
    assert groups.conversational
    assert [(part["type"], part["text"]) for part in parts] == [("image", None), ("text", "What colour?")]
    assert len(groups.dataset[0]["images"]) == 2


def test_ranked_lists_with_images():
    rows = [
        {"images": [{"bytes": png(), "path": None}], "prompt": "q", "responses": ["a", "b", "c"], "ranks": [1, 0, 2]}
    ]
    groups = load_vlm_groups(Dataset.from_list(rows))
    assert groups.format == "ranked" and groups.dataset[0]["ranks"] == [1, 0, 2]


def test_colour_pairs_prefer_the_colour_that_fills_the_image():
    groups = load_vlm_groups(colour_pairs(4))
    for row in groups.dataset:
        pixels = decode_image(row["images"][0]).getdata()
        mean = [sum(p[c] for p in pixels) / len(pixels) for c in range(3)]
        chosen = row["candidates"][0].removeprefix("It is ").removesuffix(".")
        nearest = min(SHAPE_COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(SHAPE_COLOURS[name], mean)))
        assert nearest == chosen != row["candidates"][1]
