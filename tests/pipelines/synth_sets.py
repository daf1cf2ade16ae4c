"""Helpers for the synth and score tests: the tiny config with overrides, prompt files, a set's shards."""

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mmdpo.pipelines.config import SynthConfig, load_synth_config

TINY = Path(__file__).parents[2] / "configs" / "synth" / "tiny.yaml"
PROMPTS = ["a red cat", "a blue dog on green grass", "", "a white house", "a red cat", "night sky", "an orange"]
"""Five distinct prompts once the blank line and the repeat are dropped: shards of 2, 2 and 1 prompts."""
UNIQUE = ["a red cat", "a blue dog on green grass", "a white house", "night sky", "an orange"]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch on one thread inside the block, as many threads as before after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("\n".join(prompts) + "\n")
    return path


def tiny_config(out: Path, prompts: Path, *overrides: str) -> SynthConfig:
    return load_synth_config(TINY, [f"prompts={prompts}", f"out={out}", "progress=false", *overrides])


def read_set(out: Path) -> dict[str, pa.Table]:
    """Every shard of a set, by file name."""
    return {path.name: pq.read_table(path) for path in sorted((out / "data").glob("train-*.parquet"))}


def borda_by_hand(columns: list[list[float]], weights: list[float] | None = None) -> list[float]:
    """Syn-Pic's preference fraction: per reward, wins over the other candidates (ties half), weighted and summed,
    over (K - 1) times the weights' sum."""
    weights = weights or [1.0] * len(columns)
    k = len(columns[0])
    wins = [
        sum(w * ((s[i] > s[j]) + 0.5 * (s[i] == s[j])) for s, w in zip(columns, weights) for j in range(k) if j != i)
        for i in range(k)
    ]
    return [win / ((k - 1) * sum(weights)) for win in wins]


def dense_ranks_by_hand(scores: list[float]) -> list[int]:
    levels = sorted(set(scores), reverse=True)
    return [levels.index(score) for score in scores]
