"""Stable Diffusion XL (Podell et al. 2023, arXiv 2307.01952): two CLIP text encoders, whose penultimate hidden
states are concatenated for cross-attention, the second's pooled projection (``text_embeds``), and the size and crop
micro-conditioning (``time_ids``) of each group's images (§2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline
from torch import Tensor, nn
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from mmdpo.adapters.latent_diffusion.family import Family
from mmdpo.adapters.latent_diffusion.model import LatentDiffusionModel
from mmdpo.adapters.tiny import tiny_clip_config, tiny_clip_tokenizer, tiny_ddpm_scheduler, tiny_unet, tiny_vae


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> list:
    """SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)."""
    return [float(value) for value in (*original_size, *crop_top_left, *target_size)]


class SDXL(Family):
    name = "sdxl"
    pipelines = ("StableDiffusionXLPipeline",)
    pipeline_class = StableDiffusionXLPipeline
    text_parts = (
        ("text_encoder", CLIPTextModel, "tokenizer"),
        ("text_encoder_2", CLIPTextModelWithProjection, "tokenizer_2"),
    )

    def tiny(self) -> LatentDiffusionModel:
        torch.manual_seed(0)
        tokenizer = tiny_clip_tokenizer()
        config = tiny_clip_config(tokenizer, 32)
        encoders = [CLIPTextModel(config), CLIPTextModelWithProjection(config)]
        unet = tiny_unet(
            cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 time ids x 8 + the pooled projection
        )  # fmt: skip
        tokenizers = [tokenizer] * 2
        return LatentDiffusionModel("tiny:sdxl", self, unet, tiny_ddpm_scheduler(), tiny_vae(), encoders, tokenizers)

    def encode(self, text_encoders: Sequence[nn.Module], input_ids: Sequence[Tensor]) -> dict[str, Tensor]:
        """Both encoders' penultimate hidden states concatenated, and the second's projected pooled output."""
        states, pooled = [], None
        for encoder, ids in zip(text_encoders, input_ids):
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]
        return {"encoder_hidden_states": torch.cat(states, dim=-1), "text_embeds": pooled}

    def group_conditions(self, group: Any) -> dict[str, list[float]]:
        """``time_ids`` of a :class:`~mmdpo.data.images.TransformedGroup`."""
        return {"time_ids": time_ids(group.original_size, group.crop_top_left, tuple(group.pixels.shape[-2:]))}

    def denoise(
        self, denoiser: nn.Module, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor, text_embeds: Tensor,
        time_ids: Tensor,
    ) -> Tensor:  # fmt: skip
        states = encoder_hidden_states.to(x_t.dtype)
        added = {"text_embeds": text_embeds.to(x_t.dtype), "time_ids": time_ids}
        return denoiser(x_t, t, encoder_hidden_states=states, added_cond_kwargs=added).sample

    def accepts(self, denoiser_config: dict[str, Any]) -> bool:
        return denoiser_config.get("addition_embed_type") == "text_time"
