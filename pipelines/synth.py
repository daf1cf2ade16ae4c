"""``mmdpo synth``: prompts -> candidates from several generators -> every reward on every candidate -> aggregated
scores and ranks -> Parquet shards (:mod:`mmdpo.pipelines.ranked_set`), as RankDPO builds Syn-Pic (Karthik et al.
2024, arXiv 2410.18013, Alg. 1).

    mmdpo synth configs/synth/sdxl_ranked.yaml prompts=/data/prompts.txt out=/data/synpic
    accelerate launch --num_processes 8 -m mmdpo synth configs/synth/sdxl_ranked.yaml prompts=... out=...

The prompts are cut into blocks of ``shard_size``; block i belongs to process i mod N and becomes one shard, written
under a temporary name and renamed once complete. A shard's file is the record that its prompts are done: a rerun
of the same command skips them, so a killed run resumes where it stopped and every prompt lands exactly once. A
candidate's noise seed is a hash of (base seed, generator, seed index, prompt) (:func:`candidate_seed`) and blocks
are generated in the same batches whoever runs them, so one process, N processes and a resumed run write the same
shards. While the main thread generates the next batch, a background thread scores, encodes and writes the last.
"""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
import pyarrow as pa
import torch
from tqdm.auto import tqdm

from mmdpo.config import ConfigError
from mmdpo.pipelines.config import SynthConfig, first_difference, identity
from mmdpo.pipelines.generators import Generator, candidate_seed, load_generator
from mmdpo.pipelines.prompts import Prompts, read_prompts
from mmdpo.pipelines.ranked_set import (
    FORMAT_VERSION,
    encode_image,
    load_rewards,
    ranked_columns,
    ranking_meta,
    read_meta,
    score_images,
    shard_path,
    synth_features,
    write_card,
    write_meta,
    write_table,
)
from mmdpo.rewards import Reward


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of a run, where it computes, and how they wait for each other."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    barrier: Callable[[], None] = lambda: None

    @classmethod
    def from_accelerate(cls, device: str = "auto") -> Processes:
        """The processes of ``accelerate launch`` / ``torchrun`` (or this one alone); ``device`` ``auto`` is this
        process's accelerator, else a torch device name."""
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available() or device == "cpu")
        where = state.device if device == "auto" else torch.device(device)
        return cls(state.process_index, state.num_processes, where, state.wait_for_everyone)


@dataclass
class SynthResult:
    """What this process did: the set's directory, the images it generated and how long that took."""

    out: Path
    prompts: int
    images: int
    shards: int
    seconds: float


class Background:
    """Runs tasks in submission order on one thread while the caller goes on; at most ``depth`` wait to start.

    A task's exception re-raises in the caller at its next :meth:`submit` or at :meth:`join`. Leaving the context
    waits for the tasks already submitted (at most ``depth + 1``), so a shard whose candidates are all in is still
    written when the run stops on an error or an interrupt.
    """

    def __init__(self, depth: int):
        self.depth = depth
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="synth-writer")
        self.pending: deque[Future] = deque()

    def submit(self, fn: Callable, *args: Any) -> None:
        self.pending.append(self.pool.submit(fn, *args))
        while len(self.pending) > self.depth:
            self.pending.popleft().result()

    def join(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.pool.shutdown(wait=True)


class Shard:
    """One block of prompts [first, end) and its K = generators x seeds candidates per prompt, candidate
    ``g * seeds + s`` from generator g and seed index s. Batches are encoded as they come and scored in batches of
    the rewards' largest ``batch_size`` (:meth:`add`); :meth:`write` ranks and writes the shard once every candidate
    is in."""

    def __init__(self, first: int, prompts: list[str], config: SynthConfig, rewards: list[Reward]):
        self.first, self.prompts, self.config, self.rewards = first, prompts, config, rewards
        self.names = [g.name for g in config.generators]
        self.seeds = [
            [candidate_seed(config.seed, prompt, name, s) for name in self.names for s in range(config.seeds)]
            for prompt in prompts
        ]
        k = len(self.names) * config.seeds
        self.raw = torch.full((len(prompts), k, len(rewards)), float("nan"))
        self.images: list[list[bytes | None]] = [[None] * k for _ in prompts]
        self.unscored: list[tuple[int, int, PIL.Image.Image]] = []
        self.score_batch = max((reward.batch_size for reward in rewards), default=1)

    def batches(self, generator: int, batch_size: int) -> Iterator[tuple[int, list[str], list[int]]]:
        """Generator ``generator``'s calls: (first row, prompts, seeds), ``batch_size`` prompts x ``seeds`` each."""
        s = self.config.seeds
        for lo in range(0, len(self.prompts), batch_size):
            rows = range(lo, min(lo + batch_size, len(self.prompts)))
            prompts = [self.prompts[row] for row in rows for _ in range(s)]
            seeds = [self.seeds[row][generator * s + i] for row in rows for i in range(s)]
            yield lo, prompts, seeds

    def add(self, generator: int, first_row: int, images: list[PIL.Image.Image]) -> None:
        """Encode one batch of generator ``generator`` starting at row ``first_row``; score what waits once it fills
        a reward batch."""
        s = self.config.seeds
        for i, image in enumerate(images):
            row, column = first_row + i // s, generator * s + i % s
            self.images[row][column] = encode_image(image, self.config.image_format, self.config.jpeg_quality)
            self.unscored.append((row, column, image))
        if len(self.unscored) >= self.score_batch:
            self.score()

    def score(self) -> None:
        """Every reward on the candidates not scored yet."""
        if self.unscored:
            rows, columns, images = zip(*self.unscored)
            prompts = [self.prompts[row] for row in rows]
            self.raw[list(rows), list(columns)] = score_images(self.rewards, prompts, list(images))
            self.unscored = []

    def write(self, path: Path) -> None:
        self.score()
        if any(image is None for row in self.images for image in row) or self.raw.isnan().any():
            raise RuntimeError(f"Shard {path.name} is missing candidates; an earlier batch failed.")
        reward_names = [section.name for section in self.config.rewards]
        weights = [section.weight for section in self.config.rewards]
        columns = {
            "prompt": self.prompts,
            "prompt_index": list(range(self.first, self.first + len(self.prompts))),
            "images": [[{"bytes": image, "path": None} for image in row] for row in self.images],
            "generators": [[name for name in self.names for _ in range(self.config.seeds)]] * len(self.prompts),
            "seeds": self.seeds,
            **ranked_columns(list(self.raw), reward_names, self.config.aggregation, weights),
        }
        schema = synth_features(reward_names).arrow_schema
        write_table(pa.Table.from_pydict(columns, schema=schema), path)


# --- the run ---------------------------------------------------------------------------------------


def blocks(n: int, size: int) -> list[tuple[int, int]]:
    """The prompt blocks [first, end) of ``size`` prompts (the last may be shorter)."""
    return [(first, min(first + size, n)) for first in range(0, n, size)]


def new_meta(config: SynthConfig, prompts: Prompts) -> dict[str, Any]:
    """The ``synth.yaml`` of a run that has not finished."""
    return {
        "format_version": FORMAT_VERSION,
        "complete": False,
        "config": dataclasses.asdict(config),
        "prompts": {
            "source": prompts.source,
            "count": len(prompts),
            "sha256": prompts.digest,
            "skipped": prompts.skipped,
        },
        "ranking": ranking_meta(config.rewards, config.aggregation),
    }


def check_resumable(out: Path, meta: dict[str, Any]) -> None:
    """Fail when ``out`` holds a run whose output depends on other settings or prompts than this one's."""
    old = read_meta(out)
    if old is None:
        if any((out / "data").glob("train-*.parquet")):
            raise ConfigError(f"out={str(out)!r} holds shards but no synth.yaml; give another out.")
        return

    def key(m: dict[str, Any]) -> dict[str, Any]:
        return {**identity(m["config"]), "prompts": {k: m["prompts"][k] for k in ("count", "sha256")}}

    difference = first_difference(key(old), key(meta))
    if difference is not None:
        where, before, now = difference
        raise ConfigError(
            f"out={str(out)!r} holds a run with {where}={before!r}, not {now!r}; resume with the same settings and "
            "prompts, or give another out."
        )


def _finish(out: Path, meta: dict[str, Any], paths: list[Path]) -> None:
    """Mark the set complete and write its card, once every shard is there."""
    missing = [path.name for path in paths if not path.exists()]
    if missing:
        raise RuntimeError(f"{len(missing)} shards are missing (first {missing[0]}); rerun the command to finish them.")
    config, count = meta["config"], meta["prompts"]["count"]
    k = len(config["generators"]) * config["seeds"]
    counts = {"prompts": count, "candidates": k, "images": count * k, "shards": len(paths)}
    meta = {**meta, "complete": True, "counts": counts}
    write_meta(out, meta)
    write_card(out, meta)


def synth(config: SynthConfig, processes: Processes | None = None) -> SynthResult:
    """Generate, score, rank and write this process's missing shards of ``config.out``; the first process marks the
    set complete and writes its card once every process is done."""
    processes = processes or Processes.from_accelerate(config.device)
    prompts = read_prompts(config.prompts, max_prompts=config.max_prompts, unique=config.unique_prompts)
    out = Path(config.out)
    meta = new_meta(config, prompts)
    check_resumable(out, meta)
    if processes.rank == 0 and read_meta(out) is None:
        out.mkdir(parents=True, exist_ok=True)
        write_meta(out, meta)
    processes.barrier()

    width = max(8, len(str(len(prompts))))
    paths = {block: shard_path(out, *block, width) for block in blocks(len(prompts), config.shard_size)}
    mine = list(paths.items())[processes.rank :: processes.world]
    todo = [(block, path) for block, path in mine if not path.exists()]
    seconds = 0.0
    if todo:
        generators = [load_generator(section, processes.device) for section in config.generators]
        rewards = load_rewards(config.rewards, processes.device)
        start = time.perf_counter()
        write_shards(config, prompts, todo, generators, rewards, progress=config.progress and processes.rank == 0)
        seconds = time.perf_counter() - start
    processes.barrier()
    if processes.rank == 0:
        _finish(out, meta, list(paths.values()))
    k = len(config.generators) * config.seeds
    return SynthResult(out, len(prompts), sum(end - first for (first, end), _ in todo) * k, len(todo), seconds)


def write_shards(
    config: SynthConfig,
    prompts: Prompts,
    todo: list[tuple[tuple[int, int], Path]],
    generators: list[Generator],
    rewards: list[Reward],
    progress: bool = True,
) -> None:
    """Generate the candidates of each block [first, end) on this thread while a background thread scores, encodes
    and writes what came before; each block's shard goes to its path."""
    total = sum(end - first for (first, end), _ in todo) * len(generators) * config.seeds
    with (
        Background(config.pending_batches) as background,
        tqdm(total=total, desc="synth", unit="img", disable=not progress) as bar,
    ):
        for (first, end), path in todo:
            shard = Shard(first, prompts.texts[first:end], config, rewards)
            for index, generator in enumerate(generators):
                for row, batch_prompts, seeds in shard.batches(index, generator.section.batch_size):
                    background.submit(shard.add, index, row, generator(batch_prompts, seeds))
                    bar.update(len(seeds))
            background.submit(shard.write, path)
        background.join()
