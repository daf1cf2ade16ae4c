"""``mmdpo score``: score an image-ranked Parquet set with more or other rewards and recompute its scores and ranks.

    mmdpo score /data/synpic rewards=[pickscore,hpsv2]                          # in place
    mmdpo score /data/synpic rewards=[aesthetic] aggregate=listed out=/data/synpic-aesthetic
    mmdpo score /data/synpic aggregation=zscore                                 # re-rank from the stored raw scores
    accelerate launch --num_processes 8 -m mmdpo score /data/synpic rewards=[hpsv2]   # files split over processes

A set is a Parquet file or a directory of them (a ``mmdpo synth`` output, or any table with ``prompt`` or
``caption`` and ``images``: a list of image bytes, paths or ``{bytes, path}``). Each listed reward scores every
candidate into ``reward_<name>`` (a new column, or the old one recomputed); the raw scores of every other reward are
kept. ``scores`` and ``ranks`` are then recomputed from the rewards ``aggregate`` picks, with each reward's weight
from the command, else from the set's ``synth.yaml``, else 1. Each file is rewritten whole under a temporary name and
renamed over the old one (or written to ``out`` at the same relative path), so a killed run leaves every file old or
new, never broken; rerunning the command finishes the job.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets import Features, Image, List, Value
from tqdm.auto import tqdm

from mmdpo.config import ConfigError
from mmdpo.data.images import decode_image, stored_image
from mmdpo.data.loaders import BadRow, data_files
from mmdpo.pipelines.config import RewardSection, ScoreConfig
from mmdpo.pipelines.ranked_set import (
    RANKS,
    REWARD_PREFIX,
    SCORES,
    load_rewards,
    ranked_columns,
    ranking_meta,
    read_meta,
    replacing,
    score_images,
    write_card,
    write_meta,
)
from mmdpo.pipelines.synth import Processes
from mmdpo.rewards import Reward


@dataclass
class ScoreResult:
    """The rescored set: where it is, the files and rows this process rescored, and the rewards and aggregation
    behind its ranks."""

    out: Path
    files: int
    rows: int
    rewards: list[str]
    aggregation: str


def parquet_files(source: Path) -> tuple[Path, list[Path]]:
    """The folder of a set and its Parquet files (every split)."""
    if source.is_file():
        return source.parent, [source]
    files = sorted({Path(f) for split in data_files(source).values() for f in split})
    others = [f.name for f in files if f.suffix != ".parquet"]
    if others:
        raise ConfigError(f"{source} holds {others[0]}; mmdpo score rewrites Parquet sets, so convert it first.")
    return source, files


def reward_names(schema: pa.Schema) -> list[str]:
    """The rewards a table has raw scores of (its ``reward_<name>`` columns)."""
    return [name.removeprefix(REWARD_PREFIX) for name in schema.names if name.startswith(REWARD_PREFIX)]


def ranking_sections(config: ScoreConfig, stored: list[str], old: dict[str, Any]) -> list[RewardSection]:
    """Every reward the rescored set has raw scores of, the stored ones first, each with its weight in the ranks:
    from the command for a listed reward; else 0 with ``aggregate=listed``, or the set's old weight (1 without one).
    A weight of 0 leaves a reward out of every aggregation, so ``listed`` ranks by the listed rewards alone."""
    old_rewards = {r["name"]: r for r in old["rewards"]}
    listed = {section.name: section for section in config.rewards}
    sections = []
    for name in [*stored, *(name for name in listed if name not in stored)]:
        previous = old_rewards.get(name, {})
        weight = previous.get("weight", 1.0) if config.aggregate == "all" else 0.0
        sections.append(listed.get(name) or RewardSection(name, previous.get("path"), weight))
    return sections


def _candidates(batch: pa.RecordBatch, base: Path, where: str) -> tuple[list[str], list[list[dict[str, Any]]]]:
    """The prompts of a batch of rows and their candidate images as ``{bytes, path}`` with absolute paths."""
    prompt_column = next((c for c in ("prompt", "caption") if c in batch.schema.names), None)
    if prompt_column is None or "images" not in batch.schema.names:
        raise ConfigError(
            f"{where} has columns {batch.schema.names}; mmdpo score needs 'prompt' (or 'caption') and 'images'."
        )
    groups = []
    for images in batch.column("images").to_pylist():
        try:
            groups.append([stored_image(image, f"images[{i}]", base) for i, image in enumerate(images or [])])
        except BadRow as err:
            raise ValueError(f"{where}: {err}; fix or remove the row.") from None
        if len(groups[-1]) < 2:
            raise ValueError(f"{where} holds a row of {len(groups[-1])} images; ranking needs at least 2.")
    return batch.column(prompt_column).to_pylist(), groups


def rescore_batch(
    batch: pa.RecordBatch,
    rewards: list[Reward],
    sections: list[RewardSection],
    aggregation: str,
    base: Path,
    where: str,
) -> dict[str, list]:
    """The listed rewards' ``reward_<name>`` columns, the new ``scores`` and ``ranks``, and ``images`` with absolute
    paths, of one batch of rows."""
    prompts, groups = _candidates(batch, base, where)
    sizes = [len(group) for group in groups]
    listed = [reward.name for reward in rewards]
    if rewards:
        flat_prompts = [prompt for prompt, k in zip(prompts, sizes) for _ in range(k)]
        images = [decode_image(image) for group in groups for image in group]
        new = score_images(rewards, flat_prompts, images).double().split(sizes)
    stored = {s.name: batch.column(f"{REWARD_PREFIX}{s.name}").to_pylist() for s in sections if s.name not in listed}
    raw = []
    for row, k in enumerate(sizes):
        columns = []
        for section in sections:
            if section.name in listed:
                columns.append(new[row][:, listed.index(section.name)])
                continue
            values = stored[section.name][row]
            if values is None or len(values) != k:
                raise ValueError(f"{where} holds a row of {k} images with {REWARD_PREFIX}{section.name}={values}.")
            columns.append(torch.tensor(values, dtype=torch.float64))
        raw.append(torch.stack(columns, dim=-1))
    computed = ranked_columns(raw, [s.name for s in sections], aggregation, [s.weight for s in sections])
    keep = {f"{REWARD_PREFIX}{name}" for name in listed} | {SCORES, RANKS}
    return {name: values for name, values in computed.items() if name in keep} | {"images": groups}


def rescore_file(
    path: Path,
    target: Path,
    rewards: list[Reward],
    sections: list[RewardSection],
    aggregation: str,
    batch_size: int,
    bar: tqdm,
) -> None:
    """Rewrite one Parquet file to ``target`` with the listed rewards' raw scores and new scores and ranks, a batch
    of rows at a time. Written elsewhere, images stored as relative paths are stored as absolute ones."""
    parquet = pq.ParquetFile(path)
    features = Features.from_arrow_schema(parquet.schema_arrow)
    computed = {f"{REWARD_PREFIX}{reward.name}": List(Value("float64")) for reward in rewards}
    computed |= {SCORES: List(Value("float64")), RANKS: List(Value("int64"))}
    if target.parent.resolve() != path.parent.resolve():
        computed["images"] = List(Image())
    kept = [name for name in features if name not in computed]
    schema = Features({**{name: features[name] for name in kept}, **computed}).arrow_schema
    first = 0
    with replacing(target) as temporary, pq.ParquetWriter(temporary, schema) as writer:
        for batch in parquet.iter_batches(batch_size=batch_size):
            where = f"{path}, rows {first}-{first + batch.num_rows - 1},"
            columns = rescore_batch(batch, rewards, sections, aggregation, path.parent, where)
            arrays = [batch.column(name).cast(schema.field(name).type) for name in kept]
            arrays += [pa.array(columns[name], schema.field(name).type) for name in computed]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            bar.update(batch.num_rows)
            first += batch.num_rows


def score(config: ScoreConfig, processes: Processes | None = None) -> ScoreResult:
    """Rescore and re-rank every file of ``config.source`` (see the module docstring). Under ``accelerate launch``
    or ``torchrun`` each process takes every ``world``-th file; the first writes the card when all are done."""
    processes = processes or Processes.from_accelerate(config.device)
    folder, files = parquet_files(Path(config.source).absolute())
    meta = read_meta(folder)
    if meta is not None and not meta["complete"]:
        raise ConfigError(f"{folder} is an unfinished mmdpo synth run; rerun mmdpo synth to finish it first.")
    old = meta["ranking"] if meta is not None else {"aggregation": "borda", "rewards": []}
    aggregation = config.aggregation or old["aggregation"]
    stored = reward_names(pq.read_schema(files[0]))
    for path in files[1:]:
        if reward_names(pq.read_schema(path)) != stored:
            raise ValueError(f"{path} and {files[0]} hold raw scores of different rewards; score them separately.")
    sections = ranking_sections(config, stored, old)
    if not sections:
        raise ConfigError(f"{config.source} holds no reward_<name> columns to rank by; give rewards=[...].")
    rewards = load_rewards(config.rewards, processes.device)
    out = Path(config.out) if config.out is not None else folder
    mine = files[processes.rank :: processes.world]
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in mine)
    progress = config.progress and processes.rank == 0
    with tqdm(total=rows, desc="score", unit="row", disable=not progress) as bar:
        for path in mine:
            rescore_file(path, out / path.relative_to(folder), rewards, sections, aggregation, config.batch_size, bar)
    processes.barrier()
    if meta is not None and processes.rank == 0:
        meta = {**meta, "ranking": ranking_meta(sections, aggregation)}
        write_meta(out, meta)
        write_card(out, meta)
    return ScoreResult(out, len(mine), rows, [s.name for s in sections if s.weight > 0], aggregation)
