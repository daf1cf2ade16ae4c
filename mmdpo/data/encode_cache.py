"""The encode cache: each image's VAE posterior and each prompt's text embeddings, computed once.

    mmdpo cache configs/sdxl/diffusion_dpo_lora.yaml     # writes <data.cache_dir>/encodings-<key>/
    mmdpo train configs/sdxl/diffusion_dpo_lora.yaml     # finds it and never loads the VAE or the text encoders

A cache is self-contained training data for one source (``data.path``, and the held-out source when there is one,
see :attr:`~mmdpo.config.DataSection.sources`):

    meta.json                  the key (what the encodings depend on), counts, label kind, rows skipped on loading
    groups.parquet             the groups without their images: prompt, labels, row_index, prompt_index
    prompts-NNNNN.safetensors  encoder_hidden_states [n, L, D] (SDXL: + text_embeds [n, P]) of each unique prompt
    latents-NNNNN.safetensors  latent_mean [n, K, C, h, w] (+ latent_std when latents are sampled), time_ids [n, 6]
    empty_prompt.safetensors   the encoded empty prompt, for prompt dropout
    complete                   written last

Every prompt is encoded once however many groups share it. Latents are stored as posterior moments so training
still draws a fresh posterior sample per step (``model.latents=sample``), from the same generator draws as
training from images; a group's crop and flip are those of the first epoch. Shards are written under a temporary
name and renamed, so a killed run restarts at the first missing shard; under ``accelerate launch`` each process
writes every N-th shard.

The key holds the VAE and text encoders' files (path, size and time; a hub id by name), the data files and loader
options, the transform, the latent kind and the dtypes, so a cache is never used for another setting.
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
from mmdpo.precision import half_name

VERSION = 1
ENCODER_PARTS = ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")


# --- keys ------------------------------------------------------------------------------------------


def _files_identity(path: Path, parts: Sequence[str] = ()) -> list[tuple[str, int, int]]:
    roots = [path / part for part in parts] if parts else [path]
    files = [f for root in roots if root.exists() for f in ([root] if root.is_file() else sorted(root.rglob("*")))]
    return [(str(f.relative_to(path) if f != path else f.name), f.stat().st_size, f.stat().st_mtime_ns) for f in files]


def identity(path: str, parts: Sequence[str] = ()) -> Any:
    """What a local file or directory is (relative names, sizes and modification times), or a hub id's name."""
    local = Path(path).expanduser()
    if path.startswith("tiny:") or not local.exists():
        return path
    return [str(local.resolve()), _files_identity(local.resolve(), parts)]


def cache_key(config, source: tuple[str, str]) -> dict[str, Any]:
    """Everything the encodings of ``source`` (path, split) depend on under ``config`` (a ``Config``)."""
    model, data = config.model, config.data
    path, split = source
    return {
        "version": VERSION,
        "encoders": identity(model.path, ENCODER_PARTS),
        "vae_path": None if model.vae_path is None else identity(model.vae_path),
        "data": identity(path),
        "loader": {"split": split, **{k: getattr(data, k) for k in ("format", "ties", "bad_rows", "pairs")}},
        "transform": {"resolution": data.resolution, "crop": data.crop, "flip": data.flip, "seed": config.train.seed},
        "latents": model.latents,
        "dtypes": {"vae": model.vae_dtype, "text": text_dtype_name(config), "cache": data.cache_dtype},
    }


def text_dtype_name(config) -> str:
    """The text encoders run in the mixed-precision dtype, if any."""
    return half_name(config.train.mixed_precision)


def cache_root(config) -> Path:
    return Path(config.data.cache_dir or Path(config.train.output_dir) / "cache")


def cache_path(config, source: tuple[str, str]) -> Path:
    digest = hashlib.sha256(json.dumps(cache_key(config, source), sort_keys=True).encode()).hexdigest()[:16]
    return cache_root(config) / f"encodings-{digest}"


# --- writing ---------------------------------------------------------------------------------------


def _shards(n: int, size: int) -> list[tuple[int, int]]:
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def _write_atomically(tensors: dict[str, Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.rename(path)


@dataclass
class Encoders:
    """What writing a cache needs: encode prompts, encode images (moments), and collate rows to pixels."""

    encode_prompts: Callable[[list[str]], dict[str, Tensor]]
    encode_images: Callable[[Tensor], tuple[Tensor, Tensor]]
    collate: Callable[[list[dict]], Any]
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
    batch = encoders.collate([{**row, "row_index": first_index + i} for i, row in enumerate(rows)])
    b, k = batch.pixels.shape[:2]
    mean, std = encoders.encode_images(batch.pixels.flatten(0, 1))
    out = {"latent_mean": mean.view(b, k, *mean.shape[1:]).cpu(), "time_ids": batch.time_ids}
    if encoders.sample:
        out["latent_std"] = std.view(b, k, *std.shape[1:]).cpu()
    return out


# --- reading ---------------------------------------------------------------------------------------


class EncodeCache:
    """A complete cache directory: its groups (labels and indices, no images) and batches of its encodings.

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
        return self._load_all(self.directory / "empty_prompt.safetensors")

    def _handle(self, path: Path):
        if path not in self._files:
            self._files[path] = safe_open(str(path), framework="pt")
        return self._files[path]

    def _load_all(self, path: Path) -> dict[str, Tensor]:
        handle = self._handle(path)
        return {name: handle.get_tensor(name).float() for name in handle.keys()}  # noqa: SIM118

    def _rows(self, kind: str, indices: Sequence[int]) -> dict[str, Tensor]:
        size = self.meta["shard_size"]
        out: dict[str, list[Tensor]] = {}
        for index in indices:
            handle = self._handle(self.directory / f"{kind}-{index // size:05d}.safetensors")
            for name in handle.keys():  # noqa: SIM118
                offset = index % size
                out.setdefault(name, []).append(handle.get_slice(name)[offset : offset + 1])
        return {name: torch.cat(parts).float() for name, parts in out.items()}

    def collate(self, rows: Sequence[dict[str, Any]], *, seed: int = 0, epoch: int = 0):
        """An :class:`~mmdpo.adapters.text_to_image.ImageBatch` of cached encodings for rows of :meth:`group_set`."""
        from mmdpo.adapters.text_to_image import ImageBatch, group_seeds, preferences

        latents = self._rows("latents", [row["row_index"] for row in rows])
        embeddings = self._rows("prompts", [row["prompt_index"] for row in rows])
        return ImageBatch(
            prefs=preferences(rows),
            latent_mean=latents["latent_mean"],
            latent_std=latents.get("latent_std"),
            embeddings=embeddings,
            time_ids=latents["time_ids"],
            group_seeds=group_seeds(rows, seed, epoch),
        )
