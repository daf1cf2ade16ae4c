"""``mmdpo cache`` and the text-to-image data a run trains on: from the encode cache, or images encoded per step.

caches = build_encode_caches(load_config("configs/sdxl/diffusion_dpo_lora.yaml"))   # `mmdpo cache`
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator

from mmdpo.config import Config
from mmdpo.data.encode_cache import (
    EncodeCache,
    Encoders,
    cache_key,
    cache_path,
    text_dtype_name,
    write_cache,
)
from mmdpo.precision import DTYPES


def build_encode_caches(config: Config, accelerator: Accelerator | None = None) -> list[Path]:
    """Write the encode cache of every source of ``config`` (complete caches are kept as they are)."""
    from mmdpo.adapters.text_to_image import (
        collate_images,
        encode_moments,
        encode_prompts,
        freeze,
        load_encoders,
        tokenize_prompts,
    )
    from mmdpo.data.images import GroupTransform
    from mmdpo.training.data import load_image_source

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    data, model = config.data, config.model
    vae, text_encoders, tokenizers = load_encoders(model.path)
    if model.vae_path is not None:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(model.vae_path)
    device = accelerator.device
    vae = freeze(vae, DTYPES[model.vae_dtype], device)
    text_encoders = [freeze(encoder, DTYPES[text_dtype_name(config)], device) for encoder in text_encoders]
    transform = GroupTransform(data.resolution, crop=data.crop, flip=data.flip)
    encoders = Encoders(
        encode_prompts=lambda prompts: {
            k: v.cpu() for k, v in encode_prompts(text_encoders, tokenize_prompts(tokenizers, prompts)).items()
        },
        encode_images=lambda pixels: encode_moments(vae, pixels.to(device), model.vae_batch_size),
        collate=lambda rows: collate_images(
            rows, transform, tokenizers, data.resolution, seed=config.train.seed, epoch=0
        ),
        sample=model.latents == "sample",
        dtype=DTYPES[data.cache_dtype],
    )
    written = []
    for source in data.sources:
        directory = cache_path(config, source)
        if not (directory / "complete").exists():
            write_cache(
                load_image_source(*source, config),
                directory,
                cache_key(config, source),
                encoders,
                batch_size=config.train.batch_size,
                rank=accelerator.process_index,
                world=accelerator.num_processes,
                progress=config.train.progress and accelerator.is_main_process,
                barrier=accelerator.wait_for_everyone,
            )
        written.append(directory)
    return written


def open_encode_caches(config: Config) -> list[EncodeCache] | None:
    """The complete caches of every source of ``config``, or None when training encodes on the fly.

    ``data.encode_cache=require`` turns a missing cache into an error naming the command that writes it.
    """
    if config.data.encode_cache == "off":
        return None
    directories = [cache_path(config, source) for source in config.data.sources]
    missing = [d for d in directories if not (d / "complete").exists()]
    if missing:
        if config.data.encode_cache == "require":
            raise FileNotFoundError(
                f"data.encode_cache=require but there is no complete encode cache at {missing[0]} for this config; "
                "run `mmdpo cache` with the same config and overrides first."
            )
        return None
    return [EncodeCache(d) for d in directories]
