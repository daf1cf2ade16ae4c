"""A collated micro-batch of B preference groups of K candidates, as media or as cached encodings."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from mmdpo.objectives import Preferences


@dataclass
class LatentBatch:
    """B groups of K candidates, either as media plus token ids (encoded on the device) or as cached encodings.

    Args:
        prefs: the groups' labels.
        media: ``[B, K, ...]`` candidates as the VAE encodes them (images: ``[B, K, 3, H, W]`` in [-1, 1]), or None
            with ``latent_mean``.
        input_ids: per tokenizer ``[B, L]``, or None with ``embeddings``.
        latent_mean, latent_std: ``[B, K, C, ...]`` cached VAE posterior moments
            (:func:`~mmdpo.adapters.latent_diffusion.latents.encode_moments`); the std is None when the cache holds
            means only.
        embeddings: cached prompt conditions by name (``encoder_hidden_states [B, L, D]``, SDXL's ``text_embeds``).
        extra: ``[B, ...]`` conditions read from each group's media by its family (SDXL's ``time_ids [B, 6]``).
        group_seeds: ``[B]`` seeds of each group's randomness
            (:func:`~mmdpo.adapters.latent_diffusion.randomness.group_seeds`); they stay on the host.
    """

    prefs: Preferences
    media: Tensor | None = None
    input_ids: list[Tensor] | None = None
    latent_mean: Tensor | None = None
    latent_std: Tensor | None = None
    embeddings: dict[str, Tensor] | None = None
    extra: dict[str, Tensor] = field(default_factory=dict)
    group_seeds: Tensor | None = None

    def to(self, device: torch.device | str) -> LatentBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device, non_blocking=True)
            elif isinstance(value, list):
                value = [v.to(device, non_blocking=True) for v in value]
            elif isinstance(value, dict):
                value = {k: v.to(device, non_blocking=True) for k, v in value.items()}
            moved[f.name] = value
        moved["prefs"], moved["group_seeds"] = self.prefs, self.group_seeds  # labels and seeds stay on the host
        return LatentBatch(**moved)
