"""The diffusion log-likelihood estimator every diffusion objective reads.

For candidate latents x0 of a group the estimate is the ELBO surrogate

    loglik = -0.5 * mean over (C, H, W) of (f(x_t, t, c) - y)^2,   x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps,

with y = eps (epsilon prediction) or the velocity (v prediction). One timestep and one noise draw per
group are shared by all K candidates, as the Diffusion-DPO derivation requires (arXiv 2311.12908,
Eq. 14); prompt dropout is decided per group. With this convention DPO's beta = 5000 reproduces both
the official Diffusion-DPO setting (beta 5000 with the 0.5) and the diffusers SD1.5 script's default
(beta 2500 without the 0.5).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import SchedulerMixin
from torch import Tensor

from mmdpo.objectives import LogLik

Denoiser = Callable[..., Tensor]
"""``denoiser(x_t [N, C, H, W], t [N], **conditions) -> prediction [N, C, H, W]``."""


@dataclass(frozen=True)
class NoiseDraw:
    """The randomness of one estimate: ``timesteps [B]`` and ``noise [B, C, H, W]``, one per group."""

    timesteps: Tensor
    noise: Tensor


def draw_noise(latents: Tensor, num_train_timesteps: int, generator: torch.Generator | None = None) -> NoiseDraw:
    """One timestep and one noise tensor per group of ``latents [B, K, C, H, W]``."""
    b = latents.shape[0]
    device = generator.device if generator is not None else "cpu"
    timesteps = torch.randint(0, num_train_timesteps, (b,), generator=generator, device=device)
    noise = torch.randn(latents[:, 0].shape, generator=generator, device=timesteps.device, dtype=torch.float32)
    return NoiseDraw(timesteps.to(latents.device), noise.to(latents.device, latents.dtype))


def drop_conditions(
    condition: Tensor, empty: Tensor, probability: float, generator: torch.Generator | None = None
) -> Tensor:
    """Replace the ``[B, ...]`` condition of each group by ``empty`` with ``probability`` (classifier-free dropout)."""
    if probability <= 0:
        return condition
    device = generator.device if generator is not None else "cpu"
    drop = (torch.rand(condition.shape[0], generator=generator, device=device) < probability).to(condition.device)
    return torch.where(drop.view(-1, *[1] * (condition.dim() - 1)), empty.to(condition).expand_as(condition), condition)


def denoising_loglik(
    denoiser: Denoiser,
    latents: Tensor,
    scheduler: SchedulerMixin,
    draw: NoiseDraw,
    **conditions: Tensor,
) -> LogLik:
    """``LogLik [B, K]`` of candidate ``latents [B, K, C, H, W]`` under ``denoiser``, with the draw shared per group.

    ``conditions`` are per group (``[B, ...]``, e.g. ``encoder_hidden_states``) and are repeated for
    every candidate; the denoiser runs once on all ``B * K`` noised latents.
    """
    b, k = latents.shape[:2]
    x0 = latents.flatten(0, 1)
    noise = draw.noise.repeat_interleave(k, dim=0)
    t = draw.timesteps.repeat_interleave(k, dim=0)
    x_t = scheduler.add_noise(x0, noise, t)
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    else:
        raise ValueError(f"prediction_type={prediction_type!r} is not supported; use epsilon or v_prediction.")
    repeated = {name: value.repeat_interleave(k, dim=0) for name, value in conditions.items()}
    prediction = denoiser(x_t, t, **repeated)
    error = (prediction.float() - target.float()).square().mean(dim=tuple(range(1, x0.dim())))
    return LogLik(values=-0.5 * error.view(b, k))
