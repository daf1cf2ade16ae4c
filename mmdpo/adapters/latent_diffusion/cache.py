"""The encode cache of a latent-diffusion config (:mod:`mmdpo.data.encode_cache`): its key, finding it, writing it
(``mmdpo cache``) and the training batches read from it.

The key holds the VAE's and text encoders' files (path, size and time; a hub id by name), the data files and loader
options, the media transform and seed, the latent kind and the dtypes, so a cache is never used for another setting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from mmdpo.adapters.latent_diffusion.batch import LatentBatch
from mmdpo.adapters.latent_diffusion.family import Family
from mmdpo.adapters.latent_diffusion.latents import encode_moments
from mmdpo.adapters.latent_diffusion.model import encode_prompts, freeze, load_encoders
from mmdpo.adapters.latent_diffusion.randomness import group_seeds
from mmdpo.data.encode_cache import EncodeCache, Encoders, cache_directory, identity, write_cache
from mmdpo.data.loaders import GroupSet
from mmdpo.data.schema import PROMPT, preferences
from mmdpo.precision import DTYPES, half_name

ENCODER_FOLDERS = ("vae", "text_encoder", "tokenizer")
"""A pipeline's folders that the encodings depend on (``text_encoder_2``, ``tokenizer_3`` ... included)."""


def encoder_folders(path: str) -> list[str]:
    """The folders of a local pipeline directory that :data:`ENCODER_FOLDERS` name."""
    local = Path(path).expanduser()
    return sorted(p.name for p in local.iterdir() if p.name.startswith(ENCODER_FOLDERS)) if local.is_dir() else []


def cache_key(config, source: tuple[str, str], transform: dict[str, Any]) -> dict[str, Any]:
    """Everything the encodings of ``source`` (path, split) depend on under ``config``, ``transform`` being the
    media transform's settings."""
    model, data = config.model, config.data
    path, split = source
    return {
        "encoders": identity(model.path, encoder_folders(model.path)),
        "vae_path": None if model.vae_path is None else identity(model.vae_path),
        "data": identity(path),
        "loader": {"split": split, **{k: getattr(data, k) for k in ("format", "ties", "bad_rows", "pairs")}},
        "transform": {**transform, "seed": config.train.seed},
        "latents": model.latents,
        "dtypes": {"vae": model.vae_dtype, "text": text_dtype_name(config), "cache": data.cache_dtype},
    }


def text_dtype_name(config) -> str:
    """The text encoders run in the mixed-precision dtype, if any."""
    return half_name(config.train.mixed_precision)


def cache_path(config, source: tuple[str, str], transform: dict[str, Any]) -> Path:
    """Where the cache of ``source`` under ``config`` lives (``data.cache_dir``, else ``<train.output_dir>/cache``)."""
    root = config.data.cache_dir or Path(config.train.output_dir) / "cache"
    return cache_directory(root, cache_key(config, source, transform))


def open_caches(config, transform: dict[str, Any]) -> list[EncodeCache] | None:
    """The complete caches of every source of ``config``, or None when training encodes on the fly.

    ``data.encode_cache=require`` turns a missing cache into an error naming the command that writes it.
    """
    if config.data.encode_cache == "off":
        return None
    directories = [cache_path(config, source, transform) for source in config.data.sources]
    missing = [d for d in directories if not (d / "complete").exists()]
    if missing:
        if config.data.encode_cache == "require":
            raise FileNotFoundError(
                f"data.encode_cache=require but there is no complete encode cache at {missing[0]} for this config; "
                "run `mmdpo cache` with the same config and overrides first."
            )
        return None
    return [EncodeCache(d) for d in directories]


def write_caches(
    config,
    family: Family,
    transform: dict[str, Any],
    load_source: Callable[[str, str], GroupSet],
    collate: Callable[[list[dict]], tuple[Tensor, dict[str, Tensor]]],
    accelerator,
) -> list[Path]:
    """Write the cache of every source of ``config`` (complete caches are kept as they are); ``collate`` turns rows
    into candidates and their conditions as training's first epoch does."""
    model, data = config.model, config.data
    vae, text_encoders, tokenizers, _ = load_encoders(model.path, family, model.vae_path)
    device = accelerator.device
    vae = freeze(vae, DTYPES[model.vae_dtype], device)
    text_encoders = [freeze(encoder, DTYPES[text_dtype_name(config)], device) for encoder in text_encoders]
    normalisation = family.normalisation(vae)

    def encoders(length: int) -> Encoders:
        return Encoders(
            encode_prompts=lambda prompts: {
                k: v.cpu()
                for k, v in family.pad(encode_prompts(family, text_encoders, tokenizers, prompts), length).items()
            },
            encode_media=lambda media: encode_moments(vae, media.to(device), model.vae_batch_size, normalisation),
            collate=collate,
            sample=model.latents == "sample",
            dtype=DTYPES[data.cache_dtype],
        )

    written = []
    for source in data.sources:
        directory = cache_path(config, source, transform)
        if not (directory / "complete").exists():
            groups = load_source(*source)
            write_cache(
                groups,
                directory,
                cache_key(config, source, transform),
                encoders(prompt_length(family, tokenizers, groups.dataset[PROMPT])),
                batch_size=config.train.batch_size,
                rank=accelerator.process_index,
                world=accelerator.num_processes,
                progress=config.train.progress and accelerator.is_main_process,
                barrier=accelerator.wait_for_everyone,
            )
        written.append(directory)
    return written


def prompt_length(family: Family, tokenizers: Sequence[Any], prompts: Sequence[str]) -> int:
    """The length every prompt's :attr:`~Family.variable_length` conditions are padded to in a cache of ``prompts``:
    the longest token sequence among them and the empty prompt (such conditions hold one position per token), so
    the cache's shards stack; 0 for a family without variable-length conditions (nothing is padded)."""
    if not family.variable_length:
        return 0
    return max(ids.shape[1] for ids in family.tokenize(tokenizers, ["", *dict.fromkeys(prompts)]))


@dataclass
class CachedBatches:
    """``collate(rows, epoch)`` of rows of a cache's :meth:`~mmdpo.data.encode_cache.EncodeCache.group_set`."""

    cache: EncodeCache
    seed: int

    def __call__(self, rows: Sequence[dict[str, Any]], epoch: int = 0) -> LatentBatch:
        latents = self.cache.rows("latents", [row["row_index"] for row in rows])
        return LatentBatch(
            prefs=preferences(rows),
            latent_mean=latents.pop("latent_mean"),
            latent_std=latents.pop("latent_std", None),
            embeddings=self.cache.rows("prompts", [row["prompt_index"] for row in rows]),
            extra=latents,
            group_seeds=group_seeds(rows, self.seed, epoch),
        )
