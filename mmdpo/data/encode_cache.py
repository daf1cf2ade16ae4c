"""The encode cache: each candidate's VAE posterior and each prompt's text conditions, computed once.

    mmdpo cache configs/sdxl/diffusion_dpo_lora.yaml     # writes <data.cache_dir>/encodings-<key>/
    mmdpo train configs/sdxl/diffusion_dpo_lora.yaml     # finds it and never loads the VAE or the text encoders

A cache is self-contained training data for one source (``data.path``, and the held-out source when there is one,
see :attr:`~mmdpo.config.DataSection.sources`):

    meta.json                  the key (what the encodings depend on), counts, label kind, rows skipped on loading
    groups.parquet             the groups without their media: prompt, labels, row_index, prompt_index
    prompts-NNNNN.safetensors  the conditions of each unique prompt (encoder_hidden_states [n, L, D], SDXL's
                               text_embeds [n, P])
    latents-NNNNN.safetensors  latent_mean [n, K, C, ...] (+ latent_std when latents are sampled) and the conditions
                               read from each group's media (SDXL: time_ids [n, 6])
    empty_prompt.safetensors   the encoded empty prompt, for prompt dropout
    complete                   written last

Every prompt is encoded once however many groups share it. Latents are stored as posterior moments so training
still draws a fresh posterior sample per step, from the same generator draws as training from media; a group's
transform (crop, flip) is that of the first epoch. Shards are written under a temporary name and renamed, so a
killed run restarts at the first missing shard; under ``accelerate launch`` each process writes every N-th shard.

What a cache holds is decided by the adapter that writes and reads it: it gives the :class:`Encoders` and the key
(:func:`cache_directory`), and builds its batches from :meth:`EncodeCache.rows`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from mmdpo.data.loaders import GroupSet
from mmdpo.data.schema import CANDIDATES, PROMPT

VERSION = 2


# --- keys ------------------------------------------------------------------------------------------


def _files_identity(path: Path, parts: Sequence[str] = ()) -> list[tuple[str, int, int]]:
    roots = [path / part for part in parts] if parts else [path]
    files = [f for root in roots if root.exists() for f in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return [(str(f.relative_to(path) if f != path else f.name), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def identity(path: str, parts: Sequence[str] = ()) -> Any:
    """What a local file or directory (or only its ``parts``) is: relative names, sizes and modification times; a
    hub id or a ``tiny:`` name is its name."""
    local = Path(path).expanduser()
    if path.startswith("tiny:") or not local.exists():
        return path
    return [str(local.resolve()), _files_identity(local.resolve(), parts)]


def cache_directory(root: str | Path, key: dict[str, Any]) -> Path:
    """Where the cache of ``key`` (everything its encodings depend on) lives under ``root``."""
    digest = hashlib.sha256(json.dumps({"version": VERSION, **key}, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"encodings-{digest}"


# --- writing ---------------------------------------------------------------------------------------


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _write_atomically(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.rename(path)


@dataclass
class Encoders:
    """What writing a cache needs.

    Args:
        encode_prompts: prompts -> their conditions ``[n, ...]`` by name.
        encode_media: candidates ``[N, ...]`` -> posterior (mean, std) ``[N, C, ...]``.
        collate: rows (with ``row_index``) -> their candidates ``[n, K, ...]`` and conditions ``[n, ...]`` by name
            read from each group's media.
        sample: keep the std (latents are sampled in training).
        dtype: what the cache stores.
    """

    encode_prompts: Callable[[list[str]], dict[str, Tensor]]
    encode_media: Callable[[Tensor], tuple[Tensor, Tensor]]
    collate: Callable[[list[dict]], tuple[Tensor, dict[str, Tensor]]]
    sample: bool
    dtype: torch.dtype


def write_cache(
    groups: GroupSet,
    directory: Path,
    key: dict[str, Any],
    encoders: Encoders,
    *,
    batch_size: int = 32,
    shard_size: int = 1024,
    rank: int = 0,
    world: int = 1,
    progress: bool = True,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Encode ``groups`` into ``directory`` (see the module docstring); shards already there are kept."""
    directory.mkdir(parents=True, exist_ok=True)
    data = groups.dataset
    prompts_of_rows = data[PROMPT]
    unique = list(dict.fromkeys(prompts_of_rows))
    position = {prompt: i for i, prompt in enumerate(unique)}
    if rank == 0:
        labels = data.remove_columns([CANDIDATES])
        labels = labels.add_column("row_index", list(range(len(data))))
        labels = labels.add_column("prompt_index", [position[p] for p in prompts_of_rows])
        labels.to_parquet(str(directory / "groups.parquet"))
        meta = {
            "key": key, "groups": len(data), "prompts": len(unique), "shard_size": shard_size,
            "format": groups.format, "label": groups.label, "skipped": groups.skipped,
        }  # fmt: skip
        (directory / "meta.json").write_text(json.dumps(meta, indent=1))
        _write_atomically(encoders.encode_prompts([""]), directory / "empty_prompt.safetensors")

    def owned(kind: str, n: int) -> Iterator[tuple[int, int, Path]]:
        for index, (start, end) in enumerate(_shards(n, shard_size)):
            path = directory / f"{kind}-{index:05d}.safetensors"
            if index % world == rank and not path.exists():
                yield start, end, path

    to_write = [("prompts", *s) for s in owned("prompts", len(unique))] + [
        ("latents", *s) for s in owned("latents", len(data))
    ]
    rows_left = sum(end - start for _, start, end, _ in to_write)
    with tqdm(total=rows_left, desc=f"encode {directory.name}", unit="row", disable=not progress) as bar:
        for kind, start, end, path in to_write:
            parts: list[dict[str, Tensor]] = []
            for lo in range(start, end, batch_size):
                hi = min(lo + batch_size, end)
                if kind == "prompts":
                    parts.append(encoders.encode_prompts(unique[lo:hi]))
                else:
                    parts.append(_encode_rows(data.select(range(lo, hi)), lo, encoders))
                bar.update(hi - lo)
            merged = {name: torch.cat([p[name] for p in parts]).to(encoders.dtype) for name in parts[0]}
            _write_atomically(merged, path)
    barrier()
    if rank == 0:
        (directory / "complete").write_text("")
    barrier()
    return directory


def _encode_rows(rows: Dataset, first_index: int, encoders: Encoders) -> dict[str, Tensor]:
    media, conditions = encoders.collate([{**row, "row_index": first_index + i} for i, row in enumerate(rows)])
    b, k = media.shape[:2]
    mean, std = encoders.encode_media(media.flatten(0, 1))
    out = {"latent_mean": mean.view(b, k, *mean.shape[1:]).cpu(), **conditions}
    if encoders.sample:
        out["latent_std"] = std.view(b, k, *std.shape[1:]).cpu()
    return out


# --- reading ---------------------------------------------------------------------------------------


class EncodeCache:
    """A complete cache directory: its groups (labels and indices, no media) and rows of its encodings.

    Shard files open lazily in each process (data loader workers included), memory-mapped by safetensors.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not (self.directory / "complete").exists():
            raise FileNotFoundError(
                f"{self.directory} is not a complete encode cache; rerun `mmdpo cache` to finish it."
            )
        self.meta = json.loads((self.directory / "meta.json").read_text())
        self._files: dict[Path, Any] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_files": {}}

    def group_set(self) -> GroupSet:
        """The cached groups as a :class:`~mmdpo.data.loaders.GroupSet` (``row_index`` and ``prompt_index`` added)."""
        dataset = Dataset.from_parquet(str(self.directory / "groups.parquet"), keep_in_memory=True)
        return GroupSet(dataset, self.meta["format"], False, self.meta["label"], self.meta["skipped"])

    def empty_prompt(self) -> dict[str, Tensor]:
        """The conditions of the empty prompt, ``[1, ...]`` by name, in float32."""
        handle = self._handle(self.directory / "empty_prompt.safetensors")
        return {name: handle.get_tensor(name).float() for name in handle.keys()}  # noqa: SIM118

    def _handle(self, path: Path):
        if path not in self._files:
            self._files[path] = safe_open(str(path), framework="pt")
        return self._files[path]

    def rows(self, kind: str, indices: Sequence[int]) -> dict[str, Tensor]:
        """The ``latents`` rows (by ``row_index``) or ``prompts`` rows (by ``prompt_index``) at ``indices``, in that
        order: each stored tensor by name, ``[len(indices), ...]`` in float32."""
        size = self.meta["shard_size"]
        out: dict[str, list[Tensor]] = {}
        for index in indices:
            handle = self._handle(self.directory / f"{kind}-{index // size:05d}.safetensors")
            for name in handle.keys():  # noqa: SIM118
                offset = index % size
                out.setdefault(name, []).append(handle.get_slice(name)[offset : offset + 1])
        return {name: torch.cat(parts).float() for name, parts in out.items()}
