"""Image-preference formats -> preference groups whose candidates are images (:mod:`mmdpo.data.schema`).

    groups = check_images(load_image_groups("/data/pickapic_v2/data"), bad_rows="skip")
    transform = GroupTransform(1024, crop="random", flip=0.5)
    group = transform([decode_image(c) for c in groups.dataset[0]["candidates"]], random.Random(0))

Formats (detected from the columns, or forced with ``format=``):

- ``pickapic``: Pick-a-Pic v2 (Kirstain et al., arXiv 2305.01569) ``caption``, ``jpg_0``, ``jpg_1``, ``label_0``
  (1, 0, or 0.5 for a tie; ``label_1`` optional) -> K = 2, ``ranks`` [0, 1], [1, 0] or [0, 0].
- ``image_pairs``: ``prompt`` (or ``caption``), ``chosen``, ``rejected`` -> K = 2, ``ranks`` [0, 1].
- ``image_ranked``: ``prompt`` (or ``caption``), ``images`` and ``ranks`` and/or ``scores``.
- ``image_unpaired``: Diffusion-KTO data (Li et al., arXiv 2404.04465): ``caption`` (or ``prompt``), ``file_path``
  (or ``image``), ``label`` (true/false or ``exclusive_win``/``exclusive_lose``) -> K = 1, ``desirable``.
- ``groups``: our own schema with image candidates, validated.

An image is a path, raw bytes or a ``datasets.Image`` storage dict ``{"bytes", "path"}``; every candidate is stored
in that dict form (``datasets.Image(decode=False)``) and never decoded while loading. Relative paths are resolved
against the folder of the index file (the current directory for an in-memory dataset) and must exist.

Sources: everything :func:`~mmdpo.data.loaders.read_table` reads (a file, a directory of Parquet/JSONL/CSV files
split by file name, a ``save_to_disk`` directory, an in-memory dataset), a directory of Arrow shards, and an image
folder holding its index file.
"""

from __future__ import annotations

import io
import random
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import PIL.Image
import torch
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    Image,
    List,
    Value,
    concatenate_datasets,
    load_dataset,
)
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mmdpo.data.loaders import (
    PAIRINGS,
    BadRow,
    BadRows,
    GroupSet,
    Pairing,
    Ties,
    check_choice,
    check_columns,
    convert_rows,
    data_files,
    detect_format,
    expand_groups,
    group_labels,
    label_of,
    pick_split,
    rank_labels,
    read_table,
)
from mmdpo.data.schema import CANDIDATES, DESIRABLE, GROUP_ID, ID, PROMPT, RANKS, SCORES

IMAGE_FORMAT_COLUMNS: dict[str, list[tuple[str, ...]]] = {
    # Each tuple is one requirement: at least one of its columns must be present.
    "groups": [(PROMPT,), (CANDIDATES,), (RANKS, SCORES, DESIRABLE)],
    "pickapic": [("caption",), ("jpg_0",), ("jpg_1",), ("label_0",)],
    "image_pairs": [(PROMPT, "caption"), ("chosen",), ("rejected",)],
    "image_ranked": [(PROMPT, "caption"), ("images",), (RANKS, SCORES)],
    "image_unpaired": [(PROMPT, "caption"), ("file_path", "image"), ("label",)],
}
IMAGE_LIST_COLUMNS = (CANDIDATES, "images", RANKS, SCORES, DESIRABLE)
PICKAPIC_RANKS = {1: [0, 1], 0: [1, 0], 0.5: [0, 0]}
KTO_LABELS = {"exclusive_win": True, "exclusive_lose": False}
STORED_IMAGE = Image(decode=False)
COLUMN_TYPES = {
    PROMPT: Value("string"),
    CANDIDATES: List(STORED_IMAGE),
    RANKS: List(Value("int64")),
    SCORES: List(Value("float64")),
    DESIRABLE: List(Value("bool")),
}


class ImageError(ValueError):
    """An image that is missing or cannot be decoded."""


# --- reading ---------------------------------------------------------------------------------------


def _is_saved(path: Path) -> bool:
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def _index_folder(path: Path, split: str) -> Path | None:
    """The folder relative image paths start from: the index file's, or None when the split's files sit in several."""
    if path.is_file():
        return path.parent
    if _is_saved(path):
        return path
    folders = {Path(f).parent for f in pick_split(data_files(path), split, str(path))}
    return folders.pop() if len(folders) == 1 else None


def read_image_table(source: str | Path | Dataset | DatasetDict, split: str) -> tuple[Dataset, str, Path | None]:
    """The split ``split`` of ``source`` (any source of :func:`load_image_groups`), a name for messages, and the folder
    relative image paths start from (None when the split's index files sit in several folders)."""
    if isinstance(source, (Dataset, DatasetDict)):
        return read_table(source, split), "the in-memory dataset", Path.cwd()
    path = Path(source).absolute()
    if path.is_dir() and not _is_saved(path) and any(path.rglob("*.arrow")):
        return pick_split(load_dataset("arrow", data_dir=str(path)), split, str(path)), str(path), path
    return read_table(path, split), str(path), _index_folder(path, split)


def undecoded_rows(table: Dataset, batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """The rows of ``table`` as dicts, images in storage form: ``datasets.Image`` columns are read as Arrow, so
    nothing is decoded."""
    for batch in table.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


# --- row conversion --------------------------------------------------------------------------------


def _prompt(row: dict[str, Any]) -> str:
    field = PROMPT if PROMPT in row else "caption"
    value = row.get(field)
    if value is not None and not isinstance(value, str):
        raise BadRow("wrong_type", field, f"must be text, got {str(value)[:40]}")
    if not value:
        raise BadRow("empty_prompt", field, "is empty")
    return value


def stored_image(value: Any, field: str, base: Path | None) -> dict[str, Any]:
    """An image (a path, bytes or a ``{"bytes", "path"}`` dict) in ``datasets.Image`` storage form; a relative path is
    resolved against ``base`` and must name an existing file. An empty, mistyped or missing image raises
    :class:`~mmdpo.data.loaders.BadRow` naming ``field``."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return {"bytes": value["bytes"], "path": value.get("path")}
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return {"bytes": bytes(value), "path": None}
    if not value:
        raise BadRow("missing_image", field, "is empty")
    if not isinstance(value, str):
        raise BadRow("wrong_type", field, f"must be an image path, image bytes or {{bytes, path}}, got {value!r:.40}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        if base is None:
            raise ValueError(
                f"Field {field!r} holds the relative image path {value!r}, but the index files sit in several "
                "folders, so it has no single base; write absolute paths or keep the index files in one folder."
            )
        path = base / path
    if not path.is_file():
        raise BadRow("missing_image", field, f"names {str(path)!r}, which does not exist")
    return {"bytes": None, "path": str(path)}


def _group(row: dict[str, Any], images: list[Any], fields: list[str], labels: dict, base: Path | None) -> dict:
    prompt = _prompt(row)
    return {PROMPT: prompt, CANDIDATES: [stored_image(v, f, base) for v, f in zip(images, fields)], **labels}


def _image_list(row: dict[str, Any], field: str) -> list[Any]:
    values = row.get(field)
    if not values:
        raise BadRow("missing_image", field, "is empty")
    if not isinstance(values, list):
        raise BadRow("wrong_type", field, f"must be a list of images, got {str(values)[:40]}")
    return values


def _from_pickapic(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    label = row.get("label_0")
    valid = isinstance(label, (int, float)) and not isinstance(label, bool) and label in PICKAPIC_RANKS
    if not valid:
        raise BadRow("bad_label", "label_0", f"must be 1, 0 or 0.5 (a tie), got {label!r}")
    other = row.get("label_1")
    if other is not None and other != 1 - label:
        raise BadRow("bad_label", "label_1", f"is {other!r} but 'label_0' is {label!r}; the two must sum to 1")
    return _group(row, [row.get("jpg_0"), row.get("jpg_1")], ["jpg_0", "jpg_1"], {RANKS: PICKAPIC_RANKS[label]}, base)


def _from_image_pairs(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    return _group(row, [row.get("chosen"), row.get("rejected")], ["chosen", "rejected"], {RANKS: [0, 1]}, base)


def _from_image_ranked(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    images = _image_list(row, "images")
    labels = rank_labels(row, len(images), "images")
    return _group(row, images, [f"images[{i}]" for i in range(len(images))], labels, base)


def _from_image_unpaired(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    label = row.get("label")
    desirable = label if isinstance(label, bool) else KTO_LABELS.get(label) if isinstance(label, str) else None
    if desirable is None:
        raise BadRow("bad_label", "label", f"must be true, false, 'exclusive_win' or 'exclusive_lose', got {label!r}")
    field = "file_path" if "file_path" in row else "image"
    return _group(row, [row.get(field)], [field], {DESIRABLE: [desirable]}, base)


def _from_image_groups(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    images = _image_list(row, CANDIDATES)
    fields = [f"{CANDIDATES}[{i}]" for i in range(len(images))]
    return _group(row, images, fields, group_labels(row, len(images)), base)


IMAGE_CONVERTERS = {
    "groups": _from_image_groups,
    "pickapic": _from_pickapic,
    "image_pairs": _from_image_pairs,
    "image_ranked": _from_image_ranked,
    "image_unpaired": _from_image_unpaired,
}


# --- the entry point -------------------------------------------------------------------------------


def _to_dataset(groups: list[dict], sources: list[int], table: Dataset, pairs: Pairing) -> Dataset:
    label = label_of(groups[0])
    columns = [PROMPT, CANDIDATES, label]
    if label == RANKS and all(group.get(SCORES) is not None for group in groups):
        columns.append(SCORES)
    data = {name: [group[name] for group in groups] for name in columns}
    dataset = Dataset.from_dict(data, features=Features({name: COLUMN_TYPES[name] for name in columns}))
    passthrough = [c for c in (ID, GROUP_ID) if c in table.column_names]
    if passthrough:
        dataset = concatenate_datasets([dataset, table.select_columns(passthrough).select(sources)], axis=1)
    if pairs != "none" and GROUP_ID not in passthrough:
        dataset = dataset.add_column(GROUP_ID, sources)
    return dataset


def load_image_groups(
    source: str | Path | Dataset | DatasetDict,
    *,
    format: str = "auto",
    split: str = "train",
    ties: Ties = "drop",
    bad_rows: BadRows = "error",
    pairs: Pairing = "none",
) -> GroupSet:
    """Read ``source`` and convert it to groups of image candidates (see the module docstring).

    Args:
        source: a file, a directory or an in-memory dataset.
        format: ``auto`` (from the columns) or one of ``pickapic``, ``image_pairs``, ``image_ranked``,
            ``image_unpaired``, ``groups``.
        split: the split of a saved ``DatasetDict`` or of a directory whose file names name splits.
        ties: ``drop`` removes groups whose candidates all tie (a Pick-a-Pic 0.5 label included) and counts them
            under ``skipped["tie"]``; ``keep`` keeps them.
        bad_rows: ``error`` stops at the first unusable row (missing image, empty caption, bad label), naming it
            and the field; ``skip`` drops such rows and counts them by reason (``missing_image``, ...).
        pairs: ``none``, or expand each ranked group into K = 2 pairs, as
            :func:`~mmdpo.data.loaders.load_groups` does.
    """
    check_choice("data.format", format, ("auto", *IMAGE_CONVERTERS))
    check_choice("data.ties", ties, ("drop", "keep"))
    check_choice("data.bad_rows", bad_rows, ("error", "skip"))
    check_choice("data.pairs", pairs, PAIRINGS)
    table, name, base = read_image_table(source, split)
    format = detect_format(table.column_names, IMAGE_FORMAT_COLUMNS, "image format") if format == "auto" else format
    check_columns(table, format, IMAGE_FORMAT_COLUMNS, IMAGE_LIST_COLUMNS, "image format")

    convert = partial(IMAGE_CONVERTERS[format], base=base)
    groups, sources, skipped = convert_rows(undecoded_rows(table), convert, name, ties=ties, bad_rows=bad_rows)

    if pairs != "none" and groups:
        groups, sources = expand_groups(groups, sources, pairs, name, skipped)
    if not groups:
        raise ValueError(
            f"No usable groups in {name}: {len(table)} rows read, skipped {dict(skipped) or 'none'}; "
            "check the data, data.ties and data.bad_rows."
        )
    dataset = _to_dataset(groups, sources, table, pairs)
    return GroupSet(dataset, format, False, label_of(groups[0]), {k: v for k, v in skipped.items() if v})


# --- decoding and checking -------------------------------------------------------------------------


def decode_image(image: Mapping[str, Any], reduce: int = 1) -> PIL.Image.Image:
    """Decode one stored image (``{"bytes", "path"}``, bytes first) to a fully loaded RGB image.

    ``reduce`` > 1 decodes JPEGs at that fraction of their size (PIL's draft mode, which still reads every byte, so a
    truncated or corrupt file still fails): a check at a fraction of a full decode's cost.
    """
    data, path = image.get("bytes"), image.get("path")
    if not data and not path:
        raise ImageError("An image has neither bytes nor a path; give one of them.")
    if not data and not Path(path).is_file():
        raise ImageError(f"Image file {path!r} is missing.")
    where = "bytes" if data else repr(path)
    try:
        with PIL.Image.open(io.BytesIO(data) if data else path) as opened:
            if reduce > 1:
                opened.draft("RGB", (max(1, opened.width // reduce), max(1, opened.height // reduce)))
            return opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
        raise ImageError(f"Image {where} is not a readable image ({err}).") from None


def _first_bad(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The index and problem of a group's first unreadable candidate, or -1 and ''."""
    for index, image in enumerate(candidates):
        try:
            decode_image(image, reduce=8)
        except ImageError as err:
            return {"bad_candidate": index, "problem": str(err)}
    return {"bad_candidate": -1, "problem": ""}


def check_images(groups: GroupSet, bad_rows: BadRows, num_proc: int | None = None) -> GroupSet:
    """Read every candidate once (JPEGs at 1/8 scale, :func:`decode_image`); a group with an unreadable image is fatal
    or dropped and counted under ``bad_image``."""
    check_choice("data.bad_rows", bad_rows, ("error", "skip"))
    data = groups.dataset
    report = data.map(
        _first_bad,
        input_columns=CANDIDATES,
        remove_columns=data.column_names,
        num_proc=num_proc,
        load_from_cache_file=False,
        keep_in_memory=True,
        desc="Checking images",
    )
    bad = [i for i, candidate in enumerate(report["bad_candidate"]) if candidate >= 0]
    if not bad:
        return groups
    if bad_rows == "error":
        first = report[bad[0]]
        raise ValueError(
            f"Row {bad[0]} of the groups, candidate {first['bad_candidate']}: {first['problem']} "
            "Replace the image or set data.bad_rows=skip to drop such groups."
        )
    if len(bad) == len(data):
        raise ValueError(f"No usable groups: all {len(data)} hold an unreadable image; check the image files.")
    dropped = set(bad)
    skipped = Counter(groups.skipped) + Counter({"bad_image": len(bad)})
    return replace(
        groups, dataset=data.select([i for i in range(len(data)) if i not in dropped]), skipped=dict(skipped)
    )


# --- the group transform ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TransformedGroup:
    """A group's pixels ``[K, 3, R, R]`` in [-1, 1] plus SDXL's size and crop conditioning (arXiv 2307.01952 §2.2).

    ``original_size`` is the first candidate's (h, w) before resizing; ``crop_top_left`` the crop offset
    (top, left) in the resized image.
    """

    pixels: Tensor
    original_size: tuple[int, int]
    crop_top_left: tuple[int, int]


@dataclass(frozen=True)
class GroupTransform:
    """One resize/crop/flip shared by every candidate of a group, so pairs differ only in content.

    Candidates are resized to the first candidate's size (as diffusers' SDXL Diffusion-DPO script does, arXiv
    2311.12908), the shorter side is resized to ``resolution`` (bilinear, antialiased), then one R x R crop
    (``center`` or one ``random`` offset) and, with probability ``flip``, one horizontal flip apply to all.
    """

    resolution: int
    crop: Literal["center", "random"] = "center"
    flip: float = 0.0

    def __post_init__(self):
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or self.resolution < 1:
            raise ValueError(f"data.resolution={self.resolution!r} must be a positive whole number of pixels.")
        check_choice("data.crop", self.crop, ("center", "random"))
        if not 0 <= self.flip <= 1:
            raise ValueError(f"data.flip={self.flip!r} is a probability; give a value in [0, 1].")

    def _offset(self, height: int, width: int, rng: random.Random) -> tuple[int, int]:
        r = self.resolution
        if self.crop == "center":
            return int(round((height - r) / 2)), int(round((width - r) / 2))
        return rng.randint(0, height - r), rng.randint(0, width - r)

    def __call__(self, images: list[PIL.Image.Image], rng: random.Random) -> TransformedGroup:
        if not images:
            raise ValueError("A group needs at least one image to transform.")
        size = (images[0].height, images[0].width)
        pixels = torch.stack([_to_tensor(image, size) for image in images])
        pixels = F.resize(pixels, [self.resolution], interpolation=InterpolationMode.BILINEAR, antialias=True)
        top, left = self._offset(pixels.shape[-2], pixels.shape[-1], rng)
        pixels = F.crop(pixels, top, left, self.resolution, self.resolution)
        if self.flip > 0 and rng.random() < self.flip:
            pixels = F.horizontal_flip(pixels)
        return TransformedGroup(pixels.mul(2).sub(1).clamp(-1, 1).contiguous(), size, (top, left))


def _to_tensor(image: PIL.Image.Image, size: tuple[int, int]) -> Tensor:
    """``[3, h, w]`` float32 in [0, 1], resized (bilinear, antialiased) to ``size`` when it differs."""
    pixels = F.to_dtype(F.pil_to_tensor(image.convert("RGB") if image.mode != "RGB" else image), torch.float32, True)
    if tuple(pixels.shape[-2:]) != size:
        pixels = F.resize(pixels, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    return pixels
