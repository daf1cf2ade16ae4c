"""Tango's released checkpoints (declare-lab/tango, tango2, tango-full, ...) as a diffusers :class:`TangoPipeline`.

A release is a directory of ``main_config.json`` (``text_encoder_name``: the FLAN-T5 whose config and tokenizer are
used, ``scheduler_name``, ``unet_model_config_path``), ``vae_config.json`` (AudioLDM's VAE and its learnt
``scale_factor``), ``stft_config.json`` (the mel settings) and pickled weights: ``pytorch_model_main.bin``
(``unet.*``, ``text_encoder.*``), ``pytorch_model_vae.bin`` (the VAE in latent-diffusion names, its HiFi-GAN under
``vocoder.*``) and ``pytorch_model_stft.bin`` (mel filters, which mmdpo recomputes from ``stft_config.json``).

Unpickling can run code, so a release converts only when the user opts in (``model.allow_pickle``): the weights
load with ``torch.load(weights_only=True)`` and are written once as a safetensors pipeline (beside the release, in
its ``diffusers/`` folder, or where ``model.converted_path`` says), which every later run loads without the option.

    pipeline_directory("/models/tango2", allow_pickle=True)      # "/models/tango2/diffusers", converted once
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor, nn
from transformers import AutoConfig, AutoTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5EncoderModel

from mmdpo.adapters.latent_diffusion.families.tango import AUDIOLDM_HIFIGAN, TANGO_SCHEDULER
from mmdpo.adapters.latent_diffusion.model import load_part
from mmdpo.adapters.latent_diffusion.tango_pipeline import TangoPipeline

MARKERS = ("main_config.json", "vae_config.json", "stft_config.json")
"""The files that mark a directory as a Tango release (the modality table's markers too)."""
SD21 = "stabilityai/stable-diffusion-2-1"
"""The ``scheduler_name`` of every Tango release, whose scheduler config is :data:`TANGO_SCHEDULER`."""
TANGO_UNET = {
    "in_channels": 8, "out_channels": 8, "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True, "upcast_attention": True,
    "flip_sin_to_cos": True, "freq_shift": 0, "norm_num_groups": 32, "norm_eps": 1e-5, "sample_size": [32, 2],
}  # fmt: skip
"""Tango's UNet (its ``configs/diffusion_model_config.json``, which releases name but do not hold); the
cross-attention width is the text encoder's (1024 for FLAN-T5-large, 2048 for -XL)."""
LDM_GROUPS = 32
"""Latent-diffusion VAEs normalise in 32 groups."""


def release_directory(path: str) -> Path | None:
    """The local directory of the Tango release at ``path`` (a local directory, or a hub id whose
    ``main_config.json`` is in the local hub cache: its snapshot), None when ``path`` is no release."""
    local = Path(path).expanduser()
    if local.is_dir() or path.startswith("tiny:"):
        return local if local.is_dir() and all((local / marker).is_file() for marker in MARKERS) else None
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, MARKERS[0])
    except ValueError:  # not even a valid hub id
        return None
    return Path(snapshot_download(path)) if isinstance(cached, str) else None


def pipeline_directory(path: str, *, allow_pickle: bool = False, converted_path: str | None = None) -> str:
    """The diffusers pipeline ``model.path`` names: ``path`` itself unless it is a Tango release, then the release's
    safetensors conversion (``converted_path``, else its ``diffusers/`` folder), written now if it is missing and
    ``allow_pickle`` allows reading the release's pickled weights."""
    release = release_directory(path)
    if release is None:
        return path
    out = Path(converted_path).expanduser() if converted_path else release / "diffusers"
    if (out / "model_index.json").is_file():
        return str(out)
    if not allow_pickle:
        raise ValueError(
            f"model.path={path!r} is a Tango release whose weights are pickled .bin files, and unpickling a file can "
            f"run code; if you trust its source, set model.allow_pickle=true once to convert it to safetensors in "
            f"{out} (later runs load that without the option)."
        )
    convert_release(release, out)
    return str(out)


def convert_release(release: Path, out: Path) -> None:
    """Write the release's :class:`TangoPipeline` to ``out`` in safetensors (whole or not at all)."""
    main, vae_config, stft = (json.loads((release / name).read_text()) for name in MARKERS)
    main_state = load_pickled(release / "pytorch_model_main.bin")
    vae_state = load_pickled(release / "pytorch_model_vae.bin")
    name = main["text_encoder_name"]
    text_encoder = t5_encoder(name, prefixed(main_state, "text_encoder."), release)
    unet = UNet2DConditionModel.from_config(unet_config(main, release, text_encoder.config.d_model))
    load_weights(unet, prefixed(main_state, "unet."), release / "pytorch_model_main.bin")
    vae_weights = {k: v for k, v in vae_state.items() if not k.startswith("vocoder.")}
    pipe = TangoPipeline(
        vae=ldm_vae(vae_config, vae_weights, release),
        text_encoder=text_encoder,
        tokenizer=load_part(AutoTokenizer, name, None, "main_config.json's text_encoder_name"),
        unet=unet,
        scheduler=scheduler(main["scheduler_name"]),
        vocoder=hifigan(prefixed(vae_state, "vocoder."), stft, release),
    )
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging, safe_serialization=True)
    staging.rename(out)


def load_pickled(path: Path) -> dict[str, Tensor]:
    """A pickled state dict, unpickled with ``weights_only`` (tensors and containers only)."""
    if not path.is_file():
        raise FileNotFoundError(f"The Tango release at {path.parent} lacks {path.name}.")
    return torch.load(path, map_location="cpu", weights_only=True)


def prefixed(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of ``state`` under ``prefix``, without it."""
    return {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}


def load_weights(module: nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """``module.load_state_dict(state)``, every key matched, a mismatch named with its file."""
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{source} does not hold the {type(module).__name__} its configs describe ({err}).") from err


def t5_encoder(name: str, state: dict[str, Tensor], release: Path) -> T5EncoderModel:
    """The T5 encoder of ``text_encoder_name``'s config with the release's weights."""
    config = load_part(AutoConfig, name, None, "main_config.json's text_encoder_name")
    if config.model_type != "t5":
        raise ValueError(
            f"main_config.json's text_encoder_name={name!r} is a {config.model_type} model; Tango releases use FLAN-T5."
        )
    encoder = T5EncoderModel(config)
    load_weights(encoder, state, release / "pytorch_model_main.bin")
    return encoder


def unet_config(main: dict[str, Any], release: Path, cross_attention_dim: int) -> dict[str, Any]:
    """The UNet's config: the file ``unet_model_config_path`` names (absolute, or relative to the release) when it is
    there, else :data:`TANGO_UNET` at the text encoder's width."""
    if main.get("unet_model_name"):
        raise ValueError(
            "main_config.json names unet_model_name, a Stable Diffusion UNet behind 8-to-4-channel adapters; mmdpo "
            "loads Tango's own UNet (unet_model_config_path) only."
        )
    path = release / main.get("unet_model_config_path", "")
    if path.is_file():
        return json.loads(path.read_text())
    return {**TANGO_UNET, "cross_attention_dim": cross_attention_dim}


def ldm_vae(vae_config: dict[str, Any], state: dict[str, Tensor], release: Path) -> AutoencoderKL:
    """AudioLDM's VAE (``vae_config.json``, latent-diffusion weight names) as a diffusers ``AutoencoderKL`` whose
    ``scaling_factor`` is the learnt ``scale_factor``."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    dd = vae_config["ddconfig"]
    if vae_config.get("subband", 1) != 1 or dd.get("attn_resolutions") or vae_config["embed_dim"] != dd["z_channels"]:
        raise ValueError(
            f"{release / 'vae_config.json'} describes a VAE with sub-bands, attention in its levels or an embed_dim "
            "other than z_channels, which diffusers' AutoencoderKL cannot hold."
        )
    levels = len(dd["ch_mult"])
    config = {
        "in_channels": dd["in_channels"], "out_channels": dd["out_ch"], "latent_channels": dd["z_channels"],
        "block_out_channels": [dd["ch"] * m for m in dd["ch_mult"]], "layers_per_block": dd["num_res_blocks"],
        "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
        "norm_num_groups": LDM_GROUPS, "scaling_factor": float(vae_config["scale_factor"]),
    }  # fmt: skip
    vae = AutoencoderKL(**config)
    load_weights(vae, convert_ldm_vae_checkpoint(state, config), release / "pytorch_model_vae.bin")
    return vae


def hifigan(state: dict[str, Tensor], stft: dict[str, Any], release: Path) -> SpeechT5HifiGan:
    """The VAE's HiFi-GAN as a ``SpeechT5HifiGan``: its widths from its weights, its upsampling AudioLDM's
    (:data:`AUDIOLDM_HIFIGAN`), its config carrying the release's STFT settings."""
    if "conv_pre.weight" not in state:
        raise ValueError(f"{release / 'pytorch_model_vae.bin'} holds no HiFi-GAN vocoder (vocoder.* weights).")
    channels, n_mels, _ = state["conv_pre.weight"].shape
    config = SpeechT5HifiGanConfig(
        model_in_dim=n_mels, upsample_initial_channel=channels, normalize_before=False, stft_config=stft,
        **{**AUDIOLDM_HIFIGAN, "sampling_rate": stft["sampling_rate"]},
    )  # fmt: skip
    renamed = {key.replace("ups.", "upsampler.", 1) if key.startswith("ups.") else key: v for key, v in state.items()}
    renamed.update(mean=torch.zeros(n_mels), scale=torch.ones(n_mels))  # unused without normalize_before
    vocoder = SpeechT5HifiGan(config)
    load_weights(vocoder, renamed, release / "pytorch_model_vae.bin")
    return vocoder


def scheduler(name: str) -> DDPMScheduler:
    """The DDPM scheduler Tango trains and samples with: :data:`TANGO_SCHEDULER` for Stable Diffusion 2.1's, else
    the ``scheduler/`` folder of ``scheduler_name``."""
    if name == SD21:
        return DDPMScheduler.from_config(TANGO_SCHEDULER)
    return load_part(DDPMScheduler, name, "scheduler", "main_config.json's scheduler_name")
