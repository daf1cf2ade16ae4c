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
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import PIL.Image
import torch
from datasets import Dataset, DatasetDict, Image
from torch import Tensor
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

from mmdpo.data import media_groups
from mmdpo.data.loaders import BadRow, BadRows, GroupSet, check_choice
from mmdpo.data.media_groups import undecoded_rows as undecoded_rows  # mmdpo.data.vlm reads it from here
from mmdpo.data.schema import CANDIDATES, DESIRABLE, PROMPT, RANKS, SCORES

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


class ImageError(ValueError):
    """An image that is missing or cannot be decoded."""


# --- reading ---------------------------------------------------------------------------------------


def read_image_table(source: str | Path | Dataset | DatasetDict, split: str) -> tuple[Dataset, str, Path | None]:
    """The split ``split`` of ``source`` (any source of :func:`load_image_groups`), a name for messages, and the folder
    relative image paths start from (None when the split's index files sit in several folders)."""
    return media_groups.read_media_table(source, split)


# --- row conversion --------------------------------------------------------------------------------


def stored_image(value: Any, field: str, base: Path | None) -> dict[str, Any]:
    """An image (a path, bytes or a ``{"bytes", "path"}`` dict) in ``datasets.Image`` storage form; a relative path is
    resolved against ``base`` and must name an existing file. An empty, mistyped or missing image raises
    :class:`~mmdpo.data.loaders.BadRow` naming ``field``."""
    return media_groups.stored_reference(value, field, base, "image")


def _from_pickapic(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    label = row.get("label_0")
    valid = isinstance(label, (int, float)) and not isinstance(label, bool) and label in PICKAPIC_RANKS
    if not valid:
        raise BadRow("bad_label", "label_0", f"must be 1, 0 or 0.5 (a tie), got {label!r}")
    other = row.get("label_1")
    if other is not None and other != 1 - label:
        raise BadRow("bad_label", "label_1", f"is {other!r} but 'label_0' is {label!r}; the two must sum to 1")
    images, fields = [row.get("jpg_0"), row.get("jpg_1")], ["jpg_0", "jpg_1"]
    return media_groups.media_group(row, images, fields, {RANKS: PICKAPIC_RANKS[label]}, base, stored_image)


def _from_image_unpaired(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    label = row.get("label")
    desirable = label if isinstance(label, bool) else KTO_LABELS.get(label) if isinstance(label, str) else None
    if desirable is None:
        raise BadRow("bad_label", "label", f"must be true, false, 'exclusive_win' or 'exclusive_lose', got {label!r}")
    field = "file_path" if "file_path" in row else "image"
    return media_groups.media_group(row, [row.get(field)], [field], {DESIRABLE: [desirable]}, base, stored_image)


IMAGE_CONVERTERS = {
    "groups": partial(media_groups.schema_group, store=stored_image, noun="image"),
    "pickapic": _from_pickapic,
    "image_pairs": partial(media_groups.chosen_rejected_group, store=stored_image),
    "image_ranked": partial(media_groups.ranked_group, store=stored_image, field="images", noun="image"),
    "image_unpaired": _from_image_unpaired,
}
IMAGES = media_groups.MediaKind("image", STORED_IMAGE, IMAGE_CONVERTERS, IMAGE_FORMAT_COLUMNS, IMAGE_LIST_COLUMNS)


# --- the entry point -------------------------------------------------------------------------------


def load_image_groups(source: str | Path | Dataset | DatasetDict, **options: str) -> GroupSet:
    """Read ``source`` and convert it to groups of image candidates (see the module docstring).

    Args:
        source: a file, a directory or an in-memory dataset.
        options: the keywords below (:func:`~mmdpo.data.media_groups.load_media_groups`).
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
    return media_groups.load_media_groups(IMAGES, source, **options)


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


def _unreadable(image: dict[str, Any]) -> tuple[str, str] | None:
    """``("bad_image", problem)`` when ``image`` does not decode (JPEGs at 1/8 scale), else None."""
    try:
        decode_image(image, reduce=8)
    except ImageError as err:
        return "bad_image", str(err)
    return None


def check_images(groups: GroupSet, bad_rows: BadRows, num_proc: int | None = None) -> GroupSet:
    """Read every candidate once (JPEGs at 1/8 scale, :func:`decode_image`); a group with an unreadable image is fatal
    or dropped and counted under ``bad_image``."""
    return media_groups.check_candidates(
        groups,
        bad_rows,
        _unreadable,
        noun="image",
        what="an unreadable image",
        fix="Replace the image or set data.bad_rows=skip to drop such groups.",
        num_proc=num_proc,
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
