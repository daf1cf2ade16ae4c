"""A synthetic ranked preference set on disk, as ``mmdpo synth`` writes it and ``mmdpo score`` rewrites it.

    out/
      data/train-<first>-<end>.parquet   one shard per block of prompts [first, end), written atomically
      synth.yaml                         the config, the prompts' digest, the ranking's rewards and aggregation
      README.md                          the dataset card (``load_dataset(out)`` reads its ``configs``)
      preview.png                        the first prompts' candidates, best first

A row is one prompt with its K candidates, in the ``image_ranked`` format that ``mmdpo train`` reads:

- ``prompt`` (str) and ``prompt_index`` (its position in the prompt list);
- ``images``: K images (``datasets.Image``: PNG or JPEG bytes);
- ``generators``, ``seeds``: per candidate, the generator's name and its noise seed;
- ``reward_<name>``: per candidate, the raw score of each reward;
- ``scores``: per candidate, the aggregate of the raw scores (borda: RankDPO's Syn-Pic preference fraction in
  [0, 1]); ``ranks``: their dense ranks, 0 = best, ties share a rank.

``load_dataset("parquet", data_dir=out)`` gives the rows with decoded images; files whose names start with a dot
(shards being written) are never read.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml
from datasets import Features, Image, List, Value
from datasets.arrow_writer import get_writer_batch_size_from_data_size
from torch import Tensor

from mmdpo.data.images import decode_image
from mmdpo.figures import image_grid
from mmdpo.pipelines.config import RewardSection
from mmdpo.precision import DTYPES
from mmdpo.rewards import Reward, aggregate, dense_ranks, load_reward

DATA_DIR = "data"
META_FILE = "synth.yaml"
CARD_FILE = "README.md"
PREVIEW_FILE = "preview.png"
PREVIEW_PROMPTS, PREVIEW_SIDE = 6, 128
"""The card's preview: the first prompts' candidates, best first, each at most this many pixels a side."""
REWARD_PREFIX = "reward_"
SCORES, RANKS = "scores", "ranks"
FORMAT_VERSION = 1
AGGREGATION_TEXT = {
    "borda": "the fraction of pairwise wins over the prompt's other candidates (ties half), averaged over the "
    "rewards with their weights: RankDPO's Syn-Pic score (Karthik et al. 2024, arXiv 2410.18013), in [0, 1]",
    "zscore": "the weighted mean of each reward's z-scores over the prompt's candidates",
    "mean": "the weighted mean of the raw scores",
}


# --- rewards and ranks -----------------------------------------------------------------------------


def device_of(name: str) -> torch.device:
    """A torch device by name; ``auto`` is the GPU when there is one, else the CPU."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def load_rewards(sections: Sequence[RewardSection], device: torch.device) -> list[Reward]:
    """The configured rewards (:func:`~mmdpo.rewards.load_reward`), each on ``device`` in its dtype and named as its
    section names it (``my_pkg.rewards:Sharpness`` scores into ``reward_my_pkg.rewards:Sharpness``)."""
    rewards = []
    for section in sections:
        reward = load_reward(section.name, section.path, batch_size=section.batch_size, **section.options)
        reward.name = section.name
        rewards.append(reward.to(device=device, dtype=DTYPES[section.dtype]))
    return rewards


def score_images(rewards: Sequence[Reward], prompts: list[str], images: list[PIL.Image.Image]) -> Tensor:
    """[N, R] raw scores: every reward on every (prompt, image)."""
    return torch.stack([reward(prompts, images) for reward in rewards], dim=-1)


def ranked_columns(
    raw: Sequence[Tensor], names: Sequence[str], aggregation: str, weights: Sequence[float]
) -> dict[str, list]:
    """The ``reward_<name>``, ``scores`` and ``ranks`` columns of rows whose raw scores are ``raw[row]``, [K, R]
    (rows may differ in K): each row aggregated in float64 (:func:`~mmdpo.rewards.aggregate`) and densely ranked."""
    columns: dict[str, list] = {f"{REWARD_PREFIX}{name}": [] for name in names} | {SCORES: [], RANKS: []}
    for row in raw:
        scores = aggregate(row.double().unsqueeze(0), aggregation, weights)
        for index, name in enumerate(names):
            columns[f"{REWARD_PREFIX}{name}"].append(row[:, index].tolist())
        columns[SCORES].append(scores[0].tolist())
        columns[RANKS].append(dense_ranks(scores)[0].tolist())
    return columns


# --- shards ----------------------------------------------------------------------------------------


def synth_features(reward_names: Sequence[str]) -> Features:
    """The columns of a shard (see the module docstring)."""
    per_candidate = List(Value("float64"))
    return Features(
        {
            "prompt": Value("string"),
            "prompt_index": Value("int64"),
            "images": List(Image()),
            "generators": List(Value("string")),
            "seeds": List(Value("int64")),
            **{f"{REWARD_PREFIX}{name}": per_candidate for name in reward_names},
            SCORES: per_candidate,
            RANKS: List(Value("int64")),
        }
    )


def encode_image(image: PIL.Image.Image, image_format: str, quality: int) -> bytes:
    """PNG (lossless) or JPEG bytes of an RGB image."""
    buffer = io.BytesIO()
    if image_format == "jpeg":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def shard_path(out: Path, first: int, end: int, width: int) -> Path:
    """Where the shard of prompts [first, end) goes; the digits keep file order equal to prompt order."""
    return out / DATA_DIR / f"train-{first:0{width}d}-{end:0{width}d}.parquet"


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A hidden temporary path to write ``path``'s content to, renamed to ``path`` when the block succeeds (and
    removed when it fails): readers see the whole file or none of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically (:func:`replacing`), in row groups of at most ``datasets``' 100 MB."""
    with replacing(path) as temporary:
        pq.write_table(table, temporary, row_group_size=get_writer_batch_size_from_data_size(len(table), table.nbytes))


def write_text(path: Path, text: str) -> None:
    """Write a text file atomically (:func:`replacing`)."""
    with replacing(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


# --- metadata and card -----------------------------------------------------------------------------


def read_meta(directory: Path) -> dict[str, Any] | None:
    """The ``synth.yaml`` of a set, or None for a set that ``mmdpo synth`` did not write."""
    path = directory / META_FILE
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    write_text(directory / META_FILE, yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))


def ranking_meta(sections: Sequence[RewardSection], aggregation: str) -> dict[str, Any]:
    """How the scores and ranks of a set are computed: the rewards (name, path, weight) and the aggregation."""
    rewards = [{"name": s.name, "path": s.path, "weight": s.weight} for s in sections]
    return {"aggregation": aggregation, "rewards": rewards}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def ranked_tiles(rows: Sequence[dict[str, Any]], side: int) -> Tensor:
    """``[P, K, 3, S, S]`` in [0, 1]: each row's candidate images ordered by its ``scores``, best first, resized to
    ``S = min(side, the first image's width)``."""
    first = decode_image(rows[0]["images"][0])
    size = min(side, first.width)
    grid = []
    for row in rows:
        order = sorted(range(len(row["scores"])), key=lambda i: -row["scores"][i])
        images = [decode_image(row["images"][i]).resize((size, size), PIL.Image.Resampling.LANCZOS) for i in order]
        grid.append(torch.stack([torch.from_numpy(np.asarray(image)).permute(2, 0, 1) for image in images]))
    return torch.stack(grid).float() / 255


def write_preview(directory: Path) -> None:
    """``preview.png``: the candidates of the set's first prompts from best to worst, to look at before training."""
    shard = min((directory / DATA_DIR).glob("*.parquet"))
    rows = pq.read_table(shard, columns=["prompt", "images", "scores"]).slice(0, PREVIEW_PROMPTS).to_pylist()
    tiles = ranked_tiles(rows, PREVIEW_SIDE)
    labels = ["best", *(f"#{i}" for i in range(2, tiles.shape[1])), "worst"][: tiles.shape[1]]
    with replacing(directory / PREVIEW_FILE) as temporary:
        image_grid(tiles, [row["prompt"] for row in rows], labels).save(temporary, format="PNG")


def write_card(directory: Path, meta: dict[str, Any]) -> None:
    """The dataset card (counts, generators, rewards and aggregation, columns, how to load and train, the config)
    and its preview image."""
    write_preview(directory)
    config, counts, ranking, prompts = meta["config"], meta["counts"], meta["ranking"], meta["prompts"]
    generators = _table(
        ["name", "path", "steps", "guidance scale", "resolution", "dtype", "scheduler"],
        [[g["name"], f"`{g['path']}`", g["steps"], g["guidance_scale"], g["resolution"] or "default", g["dtype"],
          g["scheduler"] or "the pipeline's"] for g in config["generators"]],
    )  # fmt: skip
    rewards = _table(
        ["name", "column", "weights", "weight"],
        [[r["name"], f"`{REWARD_PREFIX}{r['name']}`", r["path"] or "default", r["weight"]] for r in ranking["rewards"]],
    )
    skipped = ", ".join(f"{count} {reason}" for reason, count in prompts["skipped"].items()) or "none"
    reward_columns = ", ".join(f"`{REWARD_PREFIX}{r['name']}`" for r in ranking["rewards"])
    text = f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: {DATA_DIR}/train-*.parquet
tags: [mmdpo, synthetic, preference, text-to-image]
---

# Synthetic ranked image preferences

Made by `mmdpo synth` after RankDPO's Syn-Pic recipe (Karthik et al. 2024, arXiv 2410.18013): every prompt goes
to every generator with {config["seeds"]} seed(s) each, every reward scores every candidate, and the raw scores are
aggregated into one score and a rank per candidate.

{_table(["prompts", "candidates per prompt", "images", "shards"],
        [[counts["prompts"], counts["candidates"], counts["images"], counts["shards"]]])}

Prompts: `{prompts["source"]}`, skipped: {skipped}. Base seed {config["seed"]}; images stored as
{config["image_format"].upper()}.

![the candidates of the first prompts, best first]({PREVIEW_FILE})

## Generators

{generators}

## Rewards

{rewards}

`scores` are `{ranking["aggregation"]}`: {AGGREGATION_TEXT[ranking["aggregation"]]}. `ranks` are their dense
ranks, 0 = best, ties share a rank.

## Columns

{_table(["column", "per row"], [
    ["`prompt`, `prompt_index`", "the prompt and its position in the prompt list"],
    ["`images`", "K candidate images"],
    ["`generators`, `seeds`", "per candidate: the generator and its noise seed (`torch.Generator().manual_seed`)"],
    [reward_columns, "per candidate: each reward's raw score"],
    ["`scores`, `ranks`", "per candidate: the aggregated score and its dense rank"],
])}

## Use

```python
from datasets import load_dataset
rows = load_dataset("parquet", data_dir="{directory}", split="train")
```

```bash
mmdpo train configs/sdxl/rankdpo_lora.yaml data.path={directory}
mmdpo score {directory} rewards=[clipscore]     # add a reward; scores and ranks are recomputed
```

## Config

```yaml
{yaml.safe_dump(config, sort_keys=False, allow_unicode=True).strip()}
```
"""  # fmt: skip
    write_text(directory / CARD_FILE, text)
