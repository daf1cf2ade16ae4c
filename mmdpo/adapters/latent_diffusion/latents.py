"""Candidates as latents: the VAE posterior of each, normalised, and a posterior sample drawn per group."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmdpo.adapters.latent_diffusion.randomness import Generators, draw_per_group, generator_device

Normalisation = tuple[float | Tensor, float | Tensor]
"""(shift, scale) of a latent space: a model sees ``(z - shift) * scale`` for a VAE latent z."""


def vae_normalisation(vae: nn.Module) -> Normalisation:
    """The (shift, scale) a VAE's config names (``shift_factor``, default 0, and ``scaling_factor``)."""
    return getattr(vae.config, "shift_factor", None) or 0.0, vae.config.scaling_factor


@torch.no_grad()
def encode_moments(
    vae: nn.Module, media: Tensor, chunk: int = 8, normalisation: Normalisation | None = None
) -> tuple[Tensor, Tensor]:
    """Mean and std of the VAE posterior of ``media [N, ...]`` (images: ``[N, 3, H, W]`` in [-1, 1]), normalised
    (shifted and scaled by ``normalisation``, by default :func:`vae_normalisation`) as latents.

    Encodes ``chunk`` candidates at a time in the VAE's own dtype, whatever autocast is active (SDXL's VAE overflows
    in fp16, so a float32 VAE must stay float32); float32 out. A latent is ``mean + std * z``
    (:func:`sample_latents`).
    """
    means, stds = [], []
    first = next(vae.parameters())
    with torch.autocast(first.device.type, enabled=False):
        for part in media.split(chunk):
            dist = vae.encode(part.to(first.device, first.dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    shift, scale = normalisation or vae_normalisation(vae)
    return (torch.cat(means) - shift) * scale, torch.cat(stds) * scale


def sample_latents(mean: Tensor, std: Tensor | None, generator: Generators = None) -> Tensor:
    """A posterior sample ``mean + std * z`` of ``[B, K, ...]`` moments (z from ``generator``, or group b's from the
    b-th of B generators), or the mean when ``std`` is None."""
    if std is None:
        return mean
    z = draw_per_group(torch.randn, mean.shape, generator, generator_device(generator, mean.device))
    return mean + std * z.to(mean)
