"""Image-preference sources become groups of stored images; checking, decoding and the shared group transform."""

import io
import json
import random
import re
import shutil

import numpy as np
import PIL.Image
import PIL.ImageOps
import pytest
import torch
from datasets import Dataset, DatasetDict, Features, Image, List, Value

from mmdpo.data.images import GroupTransform, ImageError, check_images, decode_image, load_image_groups

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def encode(image, fmt="PNG"):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def solid(color, size=(8, 6), fmt="PNG"):
    return encode(PIL.Image.new("RGB", size, color), fmt)


def noise(width, height, seed=0):
    g = torch.Generator().manual_seed(seed)
    array = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8).numpy()
    return PIL.Image.fromarray(array)


def pickapic_rows():
    return {
        "caption": ["a cat", "a dog", "a cow"],
        "jpg_0": [solid(RED, fmt="JPEG"), solid(GREEN, fmt="JPEG"), solid(BLUE, fmt="JPEG")],
        "jpg_1": [solid(BLUE, fmt="JPEG"), solid(RED, fmt="JPEG"), solid(GREEN, fmt="JPEG")],
        "label_0": [1.0, 0.0, 0.5],
        "label_1": [0.0, 1.0, 0.5],
        "model_0": ["sdxl", "sd15", "sdxl"],
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def image_folder(tmp_path, names=("a", "b", "c")):
    folder = tmp_path / "prefs"
    (folder / "images").mkdir(parents=True)
    for name, color in zip(names, (RED, GREEN, BLUE)):
        (folder / "images" / f"{name}.png").write_bytes(solid(color))
    return folder


def colors(groups):
    return [[decode_image(c).getpixel((0, 0)) for c in row["candidates"]] for row in groups.dataset]


# --- Pick-a-Pic -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ties", "ranks", "skipped"),
    [("drop", [[0, 1], [1, 0]], {"tie": 1}), ("keep", [[0, 1], [1, 0], [0, 0]], {})],
)
def test_pickapic_bytes_labels_become_ranks(ties, ranks, skipped):
    rows = pickapic_rows()
    groups = load_image_groups(Dataset.from_dict(rows), ties=ties)
    assert (groups.format, groups.label, groups.skipped) == ("pickapic", "ranks", skipped)
    assert groups.dataset.column_names == ["prompt", "candidates", "ranks"]
    assert groups.dataset.features["candidates"] == List(Image(decode=False))
    assert groups.dataset["ranks"] == ranks
    assert groups.dataset["prompt"] == rows["caption"][: len(ranks)]
    first = groups.dataset[0]["candidates"]
    assert first == [{"bytes": rows["jpg_0"][0], "path": None}, {"bytes": rows["jpg_1"][0], "path": None}]


def test_pickapic_accepts_datasets_image_storage():
    rows = pickapic_rows()
    for column in ("jpg_0", "jpg_1"):
        rows[column] = [{"bytes": data, "path": f"{column}_{i}.jpg"} for i, data in enumerate(rows[column])]
    features = Features(
        {**{c: Value("string") for c in ("caption", "model_0")}, "jpg_0": Image(), "jpg_1": Image()}
        | {"label_0": Value("float64"), "label_1": Value("float64")}
    )
    groups = load_image_groups(Dataset.from_dict(rows, features=features))
    assert groups.dataset["ranks"] == [[0, 1], [1, 0]]
    assert groups.dataset[1]["candidates"][1] == {"bytes": rows["jpg_1"][1]["bytes"], "path": "jpg_1_1.jpg"}
    assert colors(groups)[1][0][1] > 200  # jpg_0 of row 1 is green (JPEG keeps it near 255)


def pickapic_source(kind, tmp_path):
    data = Dataset.from_dict(pickapic_rows())
    train, test = data.select([0, 2]), data.select([1])
    if kind == "parquet_file":
        test.to_parquet(tmp_path / "p.parquet")
        return tmp_path / "p.parquet", "train"
    if kind == "parquet_shards":
        (tmp_path / "data").mkdir()
        train.to_parquet(tmp_path / "data" / "train-00000.parquet")
        test.to_parquet(tmp_path / "data" / "test-00000.parquet")
        return tmp_path / "data", "test"
    if kind == "save_to_disk":
        DatasetDict(train=train, validation=test).save_to_disk(tmp_path / "saved")
        return tmp_path / "saved", "validation"
    if kind == "arrow_shards":
        DatasetDict(train=train, test=test).save_to_disk(tmp_path / "saved")
        (tmp_path / "shards").mkdir()
        for split in ("train", "test"):
            shutil.copy(
                next((tmp_path / "saved" / split).glob("*.arrow")), tmp_path / "shards" / f"{split}-00000.arrow"
            )
        return tmp_path / "shards", "test"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parquet_file", "parquet_shards", "save_to_disk", "arrow_shards"])
def test_pickapic_sources_and_splits(tmp_path, kind):
    source, split = pickapic_source(kind, tmp_path)
    groups = load_image_groups(source, split=split)
    assert groups.dataset["prompt"] == ["a dog"]
    assert groups.dataset["ranks"] == [[1, 0]]
    assert groups.dataset[0]["candidates"][1]["bytes"] == pickapic_rows()["jpg_1"][1]


def test_missing_split_names_the_splits(tmp_path):
    source, _ = pickapic_source("parquet_shards", tmp_path)
    with pytest.raises(ValueError, match=r"The split 'validation' is not in .* which has: (train, test|test, train)"):
        load_image_groups(source, split="validation")


# --- ranked groups and pairs ------------------------------------------------------------------------


def test_ranked_images_expand_to_pairs():
    images = [solid(RED), solid(GREEN), solid(BLUE)]
    data = Dataset.from_dict({"prompt": ["p"], "images": [images], "ranks": [[1, 0, 2]], "id": ["x"]})
    groups = load_image_groups(data, pairs="best_vs_rest")
    assert groups.format == "image_ranked"
    assert colors(groups) == [[GREEN, RED], [GREEN, BLUE]]
    assert groups.dataset["ranks"] == [[0, 1], [0, 1]]
    assert groups.dataset["group_id"] == [0, 0]
    assert groups.dataset["id"] == ["x", "x"]


def test_scored_images_expand_to_all_pairs_with_scores():
    images = [solid(RED), solid(GREEN), solid(BLUE)]
    data = Dataset.from_dict({"caption": ["p"], "images": [images], "scores": [[0.2, 0.9, 0.1]]})
    groups = load_image_groups(data, pairs="all")
    assert colors(groups) == [[GREEN, RED], [GREEN, BLUE], [RED, BLUE]]
    assert groups.dataset["scores"] == [[0.9, 0.2], [0.9, 0.1], [0.2, 0.1]]
    assert load_image_groups(data).dataset["scores"] == [[0.2, 0.9, 0.1]]


def test_unpaired_images_cannot_expand(tmp_path):
    folder = image_folder(tmp_path)
    index = write_jsonl(folder / "kto.jsonl", [{"caption": "p", "file_path": "images/a.png", "label": True}])
    with pytest.raises(ValueError, match="data.pairs=all needs ranked or scored groups"):
        load_image_groups(index, pairs="all")


# --- index files with relative paths ----------------------------------------------------------------

PAIR_INDEX = [
    {"prompt": "red over green", "chosen": "images/a.png", "rejected": "images/b.png"},
    {"caption": None, "prompt": "blue over red", "chosen": "images/c.png", "rejected": "images/a.png"},
]


@pytest.mark.parametrize("read", ["file", "folder"])
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_index_paths_resolve_against_the_index_folder(tmp_path, monkeypatch, read, kind):
    folder = image_folder(tmp_path)
    rows = [{k: v for k, v in row.items() if k != "caption"} for row in PAIR_INDEX]
    if kind == "jsonl":
        index = write_jsonl(folder / "index.jsonl", rows)
    else:
        Dataset.from_list(rows).to_csv(folder / "index.csv", index=False)
        index = folder / "index.csv"
    monkeypatch.chdir(tmp_path)
    groups = load_image_groups(index if read == "file" else folder)
    assert groups.format == "image_pairs"
    assert groups.dataset["ranks"] == [[0, 1], [0, 1]]
    images = folder.absolute() / "images"
    assert groups.dataset["candidates"] == [
        [{"bytes": None, "path": str(images / "a.png")}, {"bytes": None, "path": str(images / "b.png")}],
        [{"bytes": None, "path": str(images / "c.png")}, {"bytes": None, "path": str(images / "a.png")}],
    ]
    assert colors(groups) == [[RED, GREEN], [BLUE, RED]]


@pytest.mark.parametrize(
    ("kind", "labels"),
    [("csv", ["exclusive_win", "exclusive_lose", "exclusive_win"]), ("jsonl", [True, False, True])],
)
def test_unpaired_kto_labels(tmp_path, kind, labels):
    folder = image_folder(tmp_path)
    rows = [
        {"caption": f"c{i}", "file_path": f"images/{name}.png", "label": label}
        for i, (name, label) in enumerate(zip("abc", labels))
    ]
    if kind == "csv":
        Dataset.from_list(rows).to_csv(folder / "train_processed_v3.csv", index=False)
        index = folder / "train_processed_v3.csv"
    else:
        index = write_jsonl(folder / "kto.jsonl", [{**row, "image": row.pop("file_path")} for row in rows])
    groups = load_image_groups(index)
    assert (groups.format, groups.label) == ("image_unpaired", "desirable")
    assert groups.dataset["desirable"] == [[True], [False], [True]]
    assert colors(groups) == [[RED], [GREEN], [BLUE]]


def test_groups_schema_with_image_candidates(tmp_path):
    folder = image_folder(tmp_path)
    rows = [
        {"prompt": "p", "candidates": ["images/a.png", "images/b.png"], "ranks": [1, 0]},
        {"prompt": "q", "candidates": ["images/c.png", "images/a.png"], "ranks": [0, 1]},
    ]
    groups = load_image_groups(write_jsonl(folder / "groups.jsonl", rows))
    assert (groups.format, groups.dataset["ranks"]) == ("groups", [[1, 0], [0, 1]])
    assert colors(groups) == [[RED, GREEN], [BLUE, RED]]


# --- bad input --------------------------------------------------------------------------------------


def test_missing_column_names_it_and_the_fitting_formats():
    rows = pickapic_rows()
    del rows["jpg_1"]
    with pytest.raises(ValueError, match=r"the closest image format is pickapic, which lacks 'jpg_1'; rename"):
        load_image_groups(Dataset.from_dict(rows))
    with pytest.raises(ValueError, match=r"^data.format=pickapic needs column 'jpg_1', but the data has columns"):
        load_image_groups(Dataset.from_dict(rows), format="pickapic")
    pairs = Dataset.from_dict({"prompt": ["p"], "chosen": [solid(RED)], "rejected": [solid(BLUE)]})
    with pytest.raises(ValueError, match=r"needs column 'images', .*; image formats that fit them: image_pairs\.$"):
        load_image_groups(pairs, format="image_ranked")


def test_missing_image_file_fails_or_is_skipped(tmp_path):
    folder = image_folder(tmp_path)
    rows = [PAIR_INDEX[0], {"prompt": "q", "chosen": "images/a.png", "rejected": "images/gone.png"}]
    index = write_jsonl(folder / "index.jsonl", rows)
    gone = folder.absolute() / "images" / "gone.png"
    message = (
        f"Row 1 of {index.absolute()}: field 'rejected' names '{gone}', which does not exist; "
        "fix the row or set data.bad_rows=skip to drop such rows."
    )
    with pytest.raises(ValueError) as err:
        load_image_groups(index)
    assert str(err.value) == message
    groups = load_image_groups(index, bad_rows="skip")
    assert (len(groups), groups.skipped) == (1, {"missing_image": 1})


@pytest.mark.parametrize(
    ("row", "field", "problem", "reason"),
    [
        ({"caption": "", "label_0": 1.0}, "caption", "is empty", "empty_prompt"),
        ({"caption": "c", "label_0": 0.3}, "label_0", "must be 1, 0 or 0.5 (a tie), got 0.3", "bad_label"),
        ({"caption": "c", "label_0": 1.0, "label_1": 1.0}, "label_1", "is 1.0 but 'label_0' is 1.0", "bad_label"),
        ({"caption": "c", "label_0": 1.0, "jpg_1": b""}, "jpg_1", "is empty", "missing_image"),
    ],
)
def test_bad_pickapic_rows(row, field, problem, reason):
    rows = pickapic_rows()
    bad = {"caption": "c", "jpg_0": solid(RED), "jpg_1": solid(BLUE), "label_1": None, "model_0": "m", **row}
    data = Dataset.from_list([{k: v[0] for k, v in rows.items()}, bad])
    with pytest.raises(ValueError, match=rf"^Row 1 of the in-memory dataset: field '{field}' {re.escape(problem)}"):
        load_image_groups(data)
    groups = load_image_groups(data, bad_rows="skip")
    assert (len(groups), groups.skipped) == (1, {reason: 1})


def test_corrupt_image_fails_or_is_skipped_when_checked(tmp_path):
    folder = image_folder(tmp_path)
    (folder / "images" / "bad.png").write_bytes(b"not an image")
    rows = [
        PAIR_INDEX[0],
        {"prompt": "q", "chosen": "images/c.png", "rejected": "images/bad.png"},
        {"prompt": "r", "chosen": "images/a.png", "rejected": "images/c.png"},
    ]
    groups = load_image_groups(write_jsonl(folder / "index.jsonl", rows), bad_rows="skip")
    assert len(groups) == 3  # loading only checks that files exist
    bad = folder.absolute() / "images" / "bad.png"
    with pytest.raises(ValueError) as err:
        check_images(groups, "error")
    text = str(err.value)
    assert text.startswith(f"Row 1 of the groups, candidate 1: Image '{bad}' is not a readable image (")
    assert text.endswith("Replace the image or set data.bad_rows=skip to drop such groups.")
    checked = check_images(groups, "skip")
    assert checked.skipped == {"bad_image": 1}
    assert checked.dataset["prompt"] == ["red over green", "r"]
    assert check_images(checked, "error") is checked


def test_check_images_adds_to_earlier_skips():
    rows = pickapic_rows()
    rows["jpg_1"][1] = rows["jpg_1"][1][: len(rows["jpg_1"][1]) // 2]  # a truncated JPEG
    groups = check_images(load_image_groups(Dataset.from_dict(rows)), "skip")
    assert groups.skipped == {"tie": 1, "bad_image": 1}
    assert groups.dataset["prompt"] == ["a cat"]


# --- decoding ---------------------------------------------------------------------------------------


def test_decode_image_gives_loaded_rgb(tmp_path):
    gray = encode(PIL.Image.new("L", (3, 2), 77))
    image = decode_image({"bytes": gray, "path": "ignored.png"})
    assert (image.mode, image.size, image.getpixel((2, 1))) == ("RGB", (3, 2), (77, 77, 77))
    path = tmp_path / "rgba.png"
    PIL.Image.new("RGBA", (2, 2), (10, 20, 30, 128)).save(path)
    assert decode_image({"bytes": None, "path": str(path)}).getpixel((0, 0)) == (10, 20, 30)


def test_decode_image_errors_name_the_image(tmp_path):
    with pytest.raises(ImageError, match=r"^Image file '.*nope\.png' is missing\.$"):
        decode_image({"bytes": None, "path": str(tmp_path / "nope.png")})
    with pytest.raises(ImageError, match=r"^Image bytes is not a readable image \("):
        decode_image({"bytes": solid(RED, fmt="JPEG")[:100], "path": None})
    with pytest.raises(ImageError, match="neither bytes nor a path"):
        decode_image({"bytes": None, "path": None})


# --- the group transform ----------------------------------------------------------------------------


def bands(width=96, height=64):
    """Red columns [0, 12), green [12, 84), blue [84, width)."""
    image = PIL.Image.new("RGB", (width, height), GREEN)
    image.paste(RED, (0, 0, 12 * width // 96, height))
    image.paste(BLUE, (84 * width // 96, 0, width, height))
    return image


def test_center_crop_of_a_hand_checked_example():
    out = GroupTransform(32)([bands()], random.Random(0))
    # 64x96 -> shorter side 32 -> 32x48; center crop left = (48 - 32) / 2 = 8, i.e. source columns 16..79.
    assert (out.original_size, out.crop_top_left) == ((64, 96), (0, 8))
    assert out.pixels.shape == (1, 3, 32, 32) and out.pixels.dtype == torch.float32
    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    torch.testing.assert_close(out.pixels, green, atol=1e-6, rtol=0)


def test_random_crop_matches_a_reference_resize():
    image = noise(96, 64)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 255
    reference = torch.nn.functional.interpolate(x, size=(32, 48), mode="bilinear", antialias=True) * 2 - 1
    offsets = set()
    for seed in range(6):
        out = GroupTransform(32, crop="random")([image], random.Random(seed))
        top, left = out.crop_top_left
        assert top == 0 and 0 <= left <= 16
        offsets.add(left)
        torch.testing.assert_close(out.pixels[0], reference[0, :, :, left : left + 32], atol=1e-5, rtol=0)
    assert len(offsets) > 1


def test_pixel_range_and_extremes():
    black_white = PIL.Image.new("RGB", (40, 40), (0, 0, 0))
    black_white.paste((255, 255, 255), (20, 0, 40, 40))
    out = GroupTransform(40)([noise(40, 40), black_white], random.Random(0))
    assert out.pixels.shape == (2, 3, 40, 40)
    assert out.pixels.min() >= -1 and out.pixels.max() <= 1
    assert out.pixels[1, :, :, 0].eq(-1).all() and out.pixels[1, :, :, -1].eq(1).all()


def test_identical_candidates_get_identical_pixels():
    image = noise(70, 50)
    transform = GroupTransform(32, crop="random", flip=0.5)
    for seed in range(8):
        out = transform([image, image.copy(), image], random.Random(seed))
        assert torch.equal(out.pixels[0], out.pixels[1]) and torch.equal(out.pixels[0], out.pixels[2])
        again = transform([image], random.Random(seed))
        assert torch.equal(again.pixels[0], out.pixels[0]) and again.crop_top_left == out.crop_top_left


def test_random_crop_offset_is_shared():
    image = noise(96, 64, seed=1)
    inverted = PIL.ImageOps.invert(image)  # pixel v -> 255 - v, so its transform is the negative
    for seed in range(6):
        out = GroupTransform(32, crop="random", flip=0.5)([image, inverted], random.Random(seed))
        torch.testing.assert_close(out.pixels[1], -out.pixels[0], atol=1e-5, rtol=0)


def test_mirrors_flipped_together_stay_mirrors():
    image = noise(64, 48, seed=2)
    mirror = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
    plain = GroupTransform(32)([image], random.Random(0))
    out = GroupTransform(32, flip=1.0)([image, mirror], random.Random(0))
    assert out.crop_top_left == plain.crop_top_left == (0, 5)  # 48x64 -> 32x42, (42 - 32) / 2 = 5
    torch.testing.assert_close(out.pixels[0], plain.pixels[0].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pixels[1], out.pixels[0].flip(-1), atol=1e-5, rtol=0)


def test_candidates_are_resized_to_the_first_ones_size():
    out = GroupTransform(32)([bands(), bands(48, 32), bands(192, 128)], random.Random(0))
    assert (out.original_size, out.crop_top_left) == ((64, 96), (0, 8))
    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1).expand(3, 3, 32, 32)
    torch.testing.assert_close(out.pixels, green, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 0}, "data.resolution=0 must be a positive whole number"),
        ({"resolution": 32, "crop": "corner"}, "data.crop='corner' is unknown; use one of center, random"),
        ({"resolution": 32, "flip": 1.5}, r"data.flip=1.5 is a probability; give a value in \[0, 1\]"),
    ],
)
def test_transform_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GroupTransform(**kwargs)
