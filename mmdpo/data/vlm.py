"""Image + question preference formats -> preference groups with their images (:mod:`mmdpo.data.schema`).

    groups = load_vlm_groups("/data/RLAIF-V-Dataset/data")                  # image bytes, question, chosen, rejected
    groups = load_vlm_groups("/data/vlfeedback.jsonl", pairs="best_vs_rest")  # rated answers -> pairs

Every text format of :func:`~mmdpo.data.loaders.load_groups` (``pairs``, ``ranked``, ``unpaired``, ``groups``,
``steps``, ``step_dpo``; plain or conversational) takes images beside the prompt, after these renames:

- ``question`` is the prompt (RLAIF-V, Yu et al. 2024, arXiv 2405.17220: ``image``, ``question``, ``chosen``,
  ``rejected``);
- ``image`` (or VLFeedback's ``img_path``) is a one-image ``images`` list;
- VLFeedback's ``completions`` (Li et al. 2024, arXiv 2410.09421: ``response`` plus ``annotations``, a ``Rating``
  per aspect) become ``responses`` with ``scores``, the mean of each answer's numeric ratings (Silkie's ranking);
  ``data.pairs`` expands the ranked answers into pairs;
- TRL's conversational rows (``images`` plus ``prompt`` messages whose content holds ``{"type": "image"}`` parts,
  ``chosen`` and ``rejected`` assistant turns) pass as they are.

Images are paths (relative ones against the index file's folder), bytes or ``{"bytes", "path"}`` dicts, stored as
``datasets.Image(decode=False)`` and never decoded here: the adapter decodes them when it tokenises (an unreadable
image is fatal, or skipped and counted under ``bad_image``, by ``data.bad_rows``) and again when it collates. A
missing file is ``missing_image`` here. A plain prompt gets one image placeholder per image before its text; a
conversation places them itself.

:func:`colour_pairs` is the toy task of the learning tests: which colour fills the picture.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import PIL.Image
from datasets import Dataset, DatasetDict, Features, Image, Json, List, Value

from mmdpo.data.images import read_image_table, stored_image, undecoded_rows
from mmdpo.data.loaders import FORMAT_COLUMNS, BadRow, BadRows, GroupSet, check_choice, load_groups
from mmdpo.data.schema import GROUP_ID, ID, IMAGES, PROMPT, SCORES
from mmdpo.data.shapes import SHAPE_COLOURS

READ_COLUMNS = {c for requirements in FORMAT_COLUMNS.values() for options in requirements for c in options} | {
    "score_chosen", "score_rejected", "first_error", ID, GROUP_ID,
}  # fmt: skip
"""The text columns some format reads; others (RLAIF-V's ``ds_name``, VLFeedback's ``models``, ...) are dropped."""


def _rating(value: Any) -> float | None:
    try:
        return float(value["Rating"] if isinstance(value, dict) else value)
    except (KeyError, TypeError, ValueError):  # "N/A" and missing ratings do not count
        return None


def _vlfeedback(completions: Any) -> tuple[list[Any], list[float]]:
    """VLFeedback answers and their mean ratings (a list of answers, or ``datasets``' dict of lists)."""
    if isinstance(completions, dict):
        completions = [dict(zip(completions, values)) for values in zip(*completions.values())]
    responses, scores = [], []
    for i, completion in enumerate(completions):
        ratings = [r for r in map(_rating, (completion.get("annotations") or {}).values()) if r is not None]
        if not ratings:
            raise BadRow("bad_label", f"completions[{i}].annotations", "holds no numeric Rating")
        responses.append(completion.get("response"))
        scores.append(sum(ratings) / len(ratings))
    return responses, scores


def _is_vlfeedback(completions: Any) -> bool:
    first = completions[0] if isinstance(completions, list) and completions else completions
    return isinstance(first, dict) and "response" in first


def _normalise(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """A row in a text format of :mod:`mmdpo.data.loaders`, with an ``images`` list in storage form."""
    out = {name: value for name, value in row.items() if name in READ_COLUMNS}
    if PROMPT not in row and "question" in row:
        out[PROMPT] = row["question"]
    field = next((name for name in (IMAGES, "image", "img_path") if name in row), None)
    images = row.get(field) if field == IMAGES else [row.get(field)] if field else []
    if not isinstance(images, list):
        raise BadRow("wrong_type", field, f"must be a list of images, got {str(images)[:40]}")
    names = [f"{field}[{i}]" if field == IMAGES else field for i in range(len(images))]
    out[IMAGES] = [stored_image(image, name, base) for image, name in zip(images, names)]
    if _is_vlfeedback(row.get("completions")):
        out["responses"], out[SCORES] = _vlfeedback(row["completions"])
        del out["completions"]
    return out


def load_vlm_groups(
    source: str | Path | Dataset | DatasetDict, *, split: str = "train", bad_rows: BadRows = "error", **options: Any
) -> GroupSet:
    """Read ``source`` and convert it to preference groups with an ``images`` column (see the module docstring).

    Sources, ``split`` and ``options`` (``format``, a text format; ``ties``; ``pairs``): as
    :func:`~mmdpo.data.loaders.load_groups`. Rows whose image is missing are fatal or skipped and counted under
    ``missing_image``, by ``bad_rows``.
    """
    check_choice("data.bad_rows", bad_rows, ("error", "skip"))
    table, name, base = read_image_table(source, split)
    rows, skipped = [], Counter()
    for index, row in enumerate(undecoded_rows(table)):
        try:
            rows.append(_normalise(row, base))
        except BadRow as err:
            if bad_rows == "error":
                raise ValueError(
                    f"Row {index} of {name}: {err}; fix the row or set data.bad_rows=skip to drop such rows."
                ) from None
            skipped[err.reason] += 1
    if not rows:
        raise ValueError(f"No usable groups in {name}: all {len(table)} rows lack an image; check the image paths.")
    columns = list(dict.fromkeys(column for row in rows for column in row))
    features = Features({column: List(Image(decode=False)) if column == IMAGES else Json() for column in columns})
    normalised = Dataset.from_dict({column: [row.get(column) for row in rows] for column in columns}, features=features)
    groups = load_groups(normalised, bad_rows=bad_rows, name=name, **options)
    return replace(groups, skipped=dict(Counter(groups.skipped) + skipped))


def image_digest(dataset: Dataset) -> str:
    """A hash of the content of every image in ``dataset``'s ``images`` column (bytes, or the file a path names),
    so values computed from the images are recomputed when one changes behind an unchanged path."""
    digest = hashlib.sha256()
    for row in dataset.select_columns([IMAGES]):
        for image in row[IMAGES]:
            digest.update(image["bytes"] or Path(image["path"]).read_bytes())
        digest.update(b"|")
    return digest.hexdigest()[:16]


# --- the toy task ----------------------------------------------------------------------------------


def colour_image(colour: str, rng: random.Random, size: int = 56) -> bytes:
    """PNG bytes of a picture filled with ``colour`` (per-pixel noise) and a small square in another colour."""
    base = SHAPE_COLOURS[colour]
    image = PIL.Image.new("RGB", (size, size))
    image.putdata([tuple(min(255, max(0, c + rng.randint(-24, 24))) for c in base) for _ in range(size * size)])
    side = size // 4
    left, top = rng.randint(0, size - side), rng.randint(0, size - side)
    other = SHAPE_COLOURS[rng.choice([name for name in SHAPE_COLOURS if name != colour])]
    image.paste(other, (left, top, left + side, top + side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def colour_pairs(num_groups: int, seed: int = 0, size: int = 56) -> Dataset:
    """RLAIF-V-style rows (``image``, ``question``, ``chosen``, ``rejected``): the preferred answer names the colour
    that fills the picture, the rejected one another colour. Every row asks the same question, so only the image
    tells the answers apart."""
    rng = random.Random(seed)
    rows = []
    for _ in range(num_groups):
        colour, wrong = rng.sample(list(SHAPE_COLOURS), 2)
        rows.append(
            {
                "image": {"bytes": colour_image(colour, rng, size), "path": None},
                "question": "Which colour fills this picture?",
                "chosen": f"It is {colour}.",
                "rejected": f"It is {wrong}.",
            }
        )
    text = {name: Value("string") for name in ("question", "chosen", "rejected")}
    return Dataset.from_list(rows, features=Features({"image": Image(decode=False), **text}))
