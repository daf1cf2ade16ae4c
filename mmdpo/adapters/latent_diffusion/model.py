"""The diffusers parts of a latent-diffusion pipeline that training touches, loaded for the model's family.

model = load_model("stabilityai/stable-diffusion-xl-base-1.0", [SD15, SDXL])   # or a local dir, tiny:sdxl
add_lora(model.denoiser, LoraSection(r=8, alpha=8), model.family.lora_targets)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import DDIMScheduler, DDPMScheduler, SchedulerMixin
from torch import Tensor, nn

from mmdpo.adapters.latent_diffusion.family import Family


@dataclass
class LatentDiffusionModel:
    """A family's denoiser, training scheduler, VAE and text encoders.

    ``vae``, ``text_encoders`` and ``tokenizers`` are None / empty when training from the encode cache; the
    pipeline's ``path`` loads them when sampling or saving a whole pipeline needs them (:meth:`load_encoders`).
    """

    path: str
    family: Family
    denoiser: nn.Module
    scheduler: DDPMScheduler
    vae: nn.Module | None = None
    text_encoders: list[nn.Module] = field(default_factory=list)
    tokenizers: list[Any] = field(default_factory=list)
    sampling_scheduler: SchedulerMixin | None = None
    """The pipeline's own scheduler (what sampling and saved pipelines use); DDIM from ``scheduler`` if None."""
    sampling_parts: dict[str, nn.Module] = field(default_factory=dict)
    """The family's :attr:`~Family.sampling_parts` by name (Tango's vocoder), loaded with the encoders."""

    @property
    def has_encoders(self) -> bool:
        return self.vae is not None and bool(self.text_encoders)

    def load_encoders(self, vae_path: str | None = None) -> None:
        """Load the VAE (from ``vae_path`` when given), text encoders, tokenizers and sampling parts of :attr:`path`
        if missing."""
        if not self.has_encoders:
            self.vae, self.text_encoders, self.tokenizers, self.sampling_parts = load_encoders(
                self.path, self.family, vae_path
            )

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, Tensor]:
        """The family's conditions of ``prompts`` (the text encoders must be loaded)."""
        return encode_prompts(self.family, self.text_encoders, self.tokenizers, prompts)

    def pipeline(self, denoiser: nn.Module | None = None):
        """The family's diffusers pipeline over these parts (this denoiser unless another is given)."""
        scheduler = self.sampling_scheduler or DDIMScheduler.from_config(self.scheduler.config)
        parts = {"vae": self.vae, self.family.denoiser_name: denoiser or self.denoiser, "scheduler": scheduler}
        parts.update(self.sampling_parts)
        return self.family.pipeline_class(**parts, **self.family.pipeline_parts(self.text_encoders, self.tokenizers))


def load_model(
    path: str,
    families: Sequence[Family],
    dtype: torch.dtype = torch.float32,
    *,
    encoders: bool = True,
    vae_path: str | None = None,
) -> LatentDiffusionModel:
    """The denoiser, VAE, text encoder(s), tokenizer(s) and a DDPM training scheduler of a pipeline.

    ``path`` is a local diffusers pipeline directory, a hub id (downloaded only when the network allows it), or
    ``tiny:<family>`` (a random model built in memory, the same weights every time); the family is the one of
    ``families`` that :func:`family_of` names. Only these parts load (no safety checker). ``encoders=False``
    leaves out the VAE and the text encoders (training from the encode cache); ``vae_path`` names another VAE.
    """
    family = family_of(path, families)
    if path.startswith("tiny:"):
        tiny = family.tiny()
        model = LatentDiffusionModel(path, family, cast(tiny.denoiser, dtype), tiny.scheduler)
    else:
        model = LatentDiffusionModel(
            path,
            family,
            load_part(family.denoiser_class, path, family.denoiser_name, "model.path", dtype=dtype),
            load_part(DDPMScheduler, path, "scheduler", "model.path"),
        )
        sampling_config = DDPMScheduler.load_config(path, subfolder="scheduler")
        model.sampling_scheduler = getattr(diffusers, sampling_config["_class_name"]).from_config(sampling_config)
    if encoders:
        model.load_encoders(vae_path)
    return model


def load_encoders(
    path: str, family: Family, vae_path: str | None = None
) -> tuple[nn.Module, list, list, dict[str, nn.Module]]:
    """The VAE (from ``vae_path`` when given), text encoders, tokenizers and sampling parts of the pipeline at
    ``path``."""
    if path.startswith("tiny:"):
        tiny = family.tiny()
        vae, text_encoders, tokenizers, parts = tiny.vae, tiny.text_encoders, tiny.tokenizers, tiny.sampling_parts
    else:
        vae = load_part(family.vae_class, path, "vae", "model.path")
        text_encoders, tokenizers = family.load_text_encoders(path)
        parts = {name: load_part(cls, path, name, "model.path") for name, cls in family.sampling_parts}
    if vae_path is not None:
        vae = load_part(family.vae_class, vae_path, None, "model.vae_path")
    return vae, text_encoders, tokenizers, parts


@torch.no_grad()
def encode_prompts(
    family: Family, text_encoders: Sequence[nn.Module], tokenizers: Sequence[Any], prompts: Sequence[str]
) -> dict[str, Tensor]:
    """The conditions of ``prompts`` as ``family`` encodes them."""
    return family.encode(text_encoders, family.tokenize(tokenizers, prompts))


def family_of(path: str, families: Sequence[Family]) -> Family:
    """The family of ``tiny:<name>``; else the one whose pipelines include the ``_class_name`` of the path's
    ``model_index.json``; else the first that accepts the path's denoiser config."""
    if path.startswith("tiny:"):
        name = path.removeprefix("tiny:")
        for family in families:
            if family.name == name:
                return family
        known = " or ".join(f"tiny:{family.name}" for family in families)
        raise ValueError(f"model.path={path!r} names no tiny model of this modality; choose {known}.")
    pipeline = model_index(path).get("_class_name")
    for family in families:
        if pipeline in family.pipelines:
            return family
    for family in families:
        try:
            config = family.denoiser_class.load_config(path, subfolder=family.denoiser_name)
        except (OSError, ValueError):
            continue
        if family.accepts(config):
            return family
    known = ", ".join(name for family in families for name in family.pipelines)
    raise ValueError(f"model.path={path!r} is a {pipeline} pipeline, which no model family here loads; use {known}.")


def model_index(path: str) -> dict[str, Any]:
    """The ``model_index.json`` of a local pipeline directory or a hub id."""
    local = Path(path) / "model_index.json"
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(path, "model_index.json")).read_text())
    except (OSError, ValueError) as err:  # ValueError: not even a valid hub id
        raise FileNotFoundError(
            f"model.path={path!r} is neither a local diffusers pipeline directory nor a reachable hub id ({err})."
        ) from err


def load_part(cls, path: str, subfolder: str | None, field_name: str, **kwargs):
    """``cls.from_pretrained`` with the failure stated in terms of the config field that named the path."""
    try:
        return cls.from_pretrained(path, **({"subfolder": subfolder} if subfolder else {}), **kwargs)
    except (OSError, ValueError) as err:  # ValueError: not even a valid hub id
        where = f"{subfolder}/ of " if subfolder else ""
        raise FileNotFoundError(
            f"{field_name}={path!r}: cannot load {where}it from a local directory or a reachable hub id ({err})."
        ) from err


def cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` in ``dtype``, cast only when it differs (diffusers models warn on every cast)."""
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


def freeze(module: nn.Module, dtype: torch.dtype, device: torch.device | None = None) -> nn.Module:
    """A frozen part (VAE, text encoder): eval mode, no gradients, in ``dtype``, on ``device`` when given."""
    cast(module.requires_grad_(False).eval(), dtype)
    return module if device is None else module.to(device)


def use_xformers(denoiser: nn.Module) -> None:
    """xformers' memory-efficient attention in every attention layer (PyTorch SDPA is the default)."""
    try:
        denoiser.enable_xformers_memory_efficient_attention()
    except (ModuleNotFoundError, ValueError) as err:
        raise ValueError(
            f"model.attn_implementation=xformers needs the xformers extra (pip install 'mmdpo[xformers]') and a CUDA "
            f"device ({err}); or keep the default sdpa."
        ) from err


def add_lora(denoiser: nn.Module, section, targets: Sequence[str]) -> None:
    """Inject a peft LoRA adapter into the denoiser (``section.target_modules``, else ``targets``), as the diffusers
    LoRA scripts do.

    The base weights freeze; the LoRA weights train in float32 whatever the denoiser's dtype. Gaussian init keeps
    the output unchanged at the start (B = 0), so the disabled adapter is an exact reference.
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    denoiser.requires_grad_(False)
    denoiser.add_adapter(
        LoraConfig(
            r=section.r,
            lora_alpha=section.alpha,
            lora_dropout=section.dropout,
            init_lora_weights="gaussian",
            target_modules=section.target_modules or list(targets),
        )
    )
    cast_training_params(denoiser, dtype=torch.float32)
