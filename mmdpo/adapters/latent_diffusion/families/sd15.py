"""Stable Diffusion 1.x / 2.x: one CLIP text encoder, whose last hidden state the UNet cross-attends to."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import StableDiffusionPipeline
from torch import Tensor, nn
from transformers import CLIPTextModel

from mmdpo.adapters.latent_diffusion.family import Family
from mmdpo.adapters.latent_diffusion.model import LatentDiffusionModel
from mmdpo.adapters.tiny import tiny_clip_config, tiny_clip_tokenizer, tiny_ddpm_scheduler, tiny_unet, tiny_vae


class SD15(Family):
    name = "sd15"
    pipelines = ("StableDiffusionPipeline",)
    pipeline_class = StableDiffusionPipeline
    pipeline_options = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
    text_parts = (("text_encoder", CLIPTextModel, "tokenizer"),)

    def tiny(self) -> LatentDiffusionModel:
        torch.manual_seed(0)
        tokenizer = tiny_clip_tokenizer()
        encoder = CLIPTextModel(tiny_clip_config(tokenizer, 8))
        unet = tiny_unet(cross_attention_dim=8, attention_head_dim=2)
        return LatentDiffusionModel("tiny:sd15", self, unet, tiny_ddpm_scheduler(), tiny_vae(), [encoder], [tokenizer])

    def encode(self, text_encoders: Sequence[nn.Module], input_ids: Sequence[Tensor]) -> dict[str, Tensor]:
        encoder = text_encoders[0]
        return {"encoder_hidden_states": encoder(input_ids[0].to(encoder.device))[0]}

    def denoise(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return denoiser(x_t, t, encoder_hidden_states=encoder_hidden_states.to(x_t.dtype)).sample

    def accepts(self, denoiser_config: dict[str, Any]) -> bool:
        return denoiser_config.get("addition_embed_type") is None
