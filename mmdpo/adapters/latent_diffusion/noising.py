"""How a clean latent x0 becomes the noised latent x_t and the regression target y the denoiser is scored on.

One timestep and one noise draw per group are shared by all K candidates, as the Diffusion-DPO derivation requires
(arXiv 2311.12908, Eq. 14). The strategies (:class:`Noising`):

- ``forward``: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Diffusion-DPO);
- ``ddim_inversion``: x_t is x0 DDIM-inverted to t, with InPO's stochastic ``eta`` (arXiv 2503.18454);
- ``renoise_inversion``: ReNoise-averaged DDIM inversion, as SmPO (arXiv 2506.02698).

The target is eps for epsilon prediction and the velocity for v prediction; for the inversions eps is the implied
eps* = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t). The inversions run without gradients through the current policy,
before the reference and policy passes, so both see the same (x_t, y).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from diffusers import SchedulerMixin
from torch import Tensor

from mmdpo.adapters.latent_diffusion.inversion import ddim_invert, implied_noise
from mmdpo.adapters.latent_diffusion.randomness import Generators, draw_per_group, generator_device

Denoiser = Callable[..., Tensor]
"""``denoiser(x_t [N, C, ...], t [N], **conditions) -> prediction [N, C, ...]``."""

NoisingKind = Literal["forward", "ddim_inversion", "renoise_inversion"]


@dataclass(frozen=True)
class Noising:
    """How x_t and the target are drawn; ``steps`` and ``eta`` apply to the inversions only.

    InPO's official setting is ``ddim_inversion`` with steps 10 and eta 0.1; SmPO's is
    ``renoise_inversion`` with steps 10 (SDXL) or 5 (SD1.5).
    """

    kind: NoisingKind = "forward"
    steps: int = 10
    eta: float = 0.0


@dataclass(frozen=True)
class NoiseDraw:
    """The randomness of one estimate, one draw per group.

    Args:
        timesteps: ``[B]`` long.
        noise: ``[B, C, ...]``.
        step_noise: ``[steps, B, C, ...]`` for InPO's stochastic inversion term, or None.
    """

    timesteps: Tensor
    noise: Tensor
    step_noise: Tensor | None = None


@dataclass(frozen=True)
class Noised:
    """What the denoiser is scored on: ``x_t``, ``timesteps`` and ``target`` for all ``B * K`` candidates."""

    x_t: Tensor
    timesteps: Tensor
    target: Tensor
    groups: int


def draw_noise(
    latents: Tensor,
    num_train_timesteps: int,
    generator: Generators = None,
    noising: Noising | None = None,
) -> NoiseDraw:
    """One timestep and one noise tensor per group of ``latents [B, K, C, ...]`` (plus InPO's step noise)."""
    b = latents.shape[0]
    device = generator_device(generator, latents.device)
    timesteps = draw_per_group(partial(torch.randint, 0, num_train_timesteps), (b,), generator, device)
    shape = latents[:, 0].shape
    noise = draw_per_group(torch.randn, shape, generator, device)
    step_noise = None
    if noising is not None and noising.kind != "forward" and noising.eta > 0:
        step_noise = draw_per_group(torch.randn, (b, noising.steps, *shape[1:]), generator, device).transpose(0, 1)
        step_noise = step_noise.to(latents.device, latents.dtype)
    return NoiseDraw(timesteps.to(latents.device), noise.to(latents.device, latents.dtype), step_noise)


def regression_target(scheduler: SchedulerMixin, x0: Tensor, noise: Tensor, timesteps: Tensor) -> Tensor:
    """eps for epsilon prediction, sqrt(a_t) eps - sqrt(1 - a_t) x0 for v prediction."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(x0, noise, timesteps)
    raise ValueError(f"prediction_type={prediction_type!r} is not supported; use epsilon or v_prediction.")


def noise_latents(
    latents: Tensor,
    scheduler: SchedulerMixin,
    draw: NoiseDraw,
    noising: Noising | None = None,
    denoiser: Denoiser | None = None,
    **conditions: Tensor,
) -> Noised:
    """``x_t`` and the target of every candidate of ``latents [B, K, C, ...]``, the draw shared per group.

    The inversions need the ``denoiser`` (the current policy) and its per-group ``conditions``; they run
    without gradients.
    """
    noising = noising or Noising()
    b, k = latents.shape[:2]
    x0 = latents.flatten(0, 1)
    noise = draw.noise.repeat_interleave(k, dim=0)
    t = draw.timesteps.repeat_interleave(k, dim=0)
    if noising.kind == "forward":
        return Noised(scheduler.add_noise(x0, noise, t), t, regression_target(scheduler, x0, noise, t), b)
    if denoiser is None:
        raise ValueError(f"noising.kind={noising.kind} inverts through the model; pass the denoiser.")
    repeated = {name: value.repeat_interleave(k, dim=0) for name, value in conditions.items()}
    step_noise = None if draw.step_noise is None else draw.step_noise.repeat_interleave(k, dim=1)
    x_t = ddim_invert(
        denoiser, x0, t, scheduler, steps=noising.steps, eta=noising.eta, step_noise=step_noise,
        renoise=noising.kind == "renoise_inversion", **repeated,
    )  # fmt: skip
    return Noised(x_t, t, regression_target(scheduler, x0, implied_noise(x_t, x0, t, scheduler), t), b)
