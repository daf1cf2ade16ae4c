"""The diffusion log-likelihood estimator every diffusion objective reads.

For candidate latents x0 of a group the estimate is the ELBO surrogate

    loglik = -0.5 * mean over (C, H, W) of (f(x_t, t, c) - y)^2,

with y the regression target of the noised latent x_t (eps for epsilon prediction, the velocity for v
prediction). One timestep and one noise draw per group are shared by all K candidates, as the
Diffusion-DPO derivation requires (arXiv 2311.12908, Eq. 14); prompt dropout is decided per group. With
this convention DPO's beta = 5000 reproduces both the official Diffusion-DPO setting (beta 5000 with the
0.5) and the diffusers SD1.5 script's default (beta 2500 without the 0.5).

How x_t and y are drawn is a :class:`Noising` strategy:

- ``forward``: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Diffusion-DPO);
- ``ddim_inversion``: x_t is x0 DDIM-inverted to t, with InPO's stochastic ``eta`` (arXiv 2503.18454);
- ``renoise_inversion``: ReNoise-averaged DDIM inversion, as SmPO (arXiv 2506.02698).

For the inversions the target is eps* = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t). They run without gradients
through the current policy, before the reference and policy passes, so both see the same (x_t, y).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from diffusers import SchedulerMixin
from torch import Tensor

from mmdpo.objectives import LogLik

Denoiser = Callable[..., Tensor]
"""``denoiser(x_t [N, C, H, W], t [N], **conditions) -> prediction [N, C, H, W]``."""

NoisingKind = Literal["forward", "ddim_inversion", "renoise_inversion"]

Generators = torch.Generator | Sequence[torch.Generator] | None
"""The randomness of a batch of B groups: one generator for the whole batch, one per group (the trainer's choice:
group b's draws come from generator b alone, so they do not depend on the batch or the process it lands in), or
None for the global generator."""


def draw_per_group(
    sample: Callable[..., Tensor], size: tuple[int, ...], generator: Generators, device: torch.device
) -> Tensor:
    """``sample(size, generator=, device=)`` (``torch.randn``, ``torch.rand``, ...) for a ``[B, ...]`` batch: from one
    generator, or row b from the b-th of B generators. Drawn on the generators' device, returned there."""
    if isinstance(generator, Sequence):
        return torch.cat([sample((1, *size[1:]), generator=g, device=device) for g in generator])
    return sample(size, generator=generator, device=device)


def generator_device(generator: Generators, fallback: torch.device) -> torch.device:
    """Where ``generator`` draws (the first one's device for a list), else ``fallback``."""
    if isinstance(generator, Sequence):
        return generator[0].device
    return generator.device if generator is not None else fallback


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
        noise: ``[B, C, H, W]``.
        step_noise: ``[steps, B, C, H, W]`` for InPO's stochastic inversion term, or None.
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
    """One timestep and one noise tensor per group of ``latents [B, K, C, H, W]`` (plus InPO's step noise)."""
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


def drop_conditions(
    conditions: dict[str, Tensor],
    empty: dict[str, Tensor],
    probability: float,
    generator: Generators = None,
) -> dict[str, Tensor]:
    """Replace each group's conditions (all of them together) by the ``empty`` ones with ``probability``.

    ``conditions`` are ``[B, ...]`` tensors; ``empty`` holds one ``[1, ...]`` or ``[...]`` tensor per name
    (classifier-free guidance dropout, decided once per group).
    """
    if probability <= 0:
        return conditions
    first = next(iter(conditions.values()))
    device = generator_device(generator, first.device)
    drop = (draw_per_group(torch.rand, (first.shape[0],), generator, device) < probability).to(first.device)
    return {
        name: torch.where(drop.view(-1, *[1] * (value.dim() - 1)), empty[name].to(value).expand_as(value), value)
        for name, value in conditions.items()
    }


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
    """``x_t`` and the target of every candidate of ``latents [B, K, C, H, W]``, the draw shared per group.

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

    from mmdpo.adapters.inversion import ddim_invert, implied_noise

    if denoiser is None:
        raise ValueError(f"noising.kind={noising.kind} inverts through the model; pass the denoiser.")
    repeated = {name: value.repeat_interleave(k, dim=0) for name, value in conditions.items()}
    step_noise = None if draw.step_noise is None else draw.step_noise.repeat_interleave(k, dim=1)
    x_t = ddim_invert(
        denoiser, x0, t, scheduler, steps=noising.steps, eta=noising.eta, step_noise=step_noise,
        renoise=noising.kind == "renoise_inversion", **repeated,
    )  # fmt: skip
    return Noised(x_t, t, regression_target(scheduler, x0, implied_noise(x_t, x0, t, scheduler), t), b)


def denoising_loglik(denoiser: Denoiser, noised: Noised, **conditions: Tensor) -> LogLik:
    """``LogLik [B, K]``: -0.5 * the per-candidate mean squared error of ``denoiser`` on ``noised``.

    ``conditions`` are per group (``[B, ...]``, e.g. ``encoder_hidden_states``) and are repeated for
    every candidate; the denoiser runs once on all ``B * K`` noised latents.
    """
    k = noised.x_t.shape[0] // noised.groups
    repeated = {name: value.repeat_interleave(k, dim=0) for name, value in conditions.items()}
    prediction = denoiser(noised.x_t, noised.timesteps, **repeated)
    error = (prediction.float() - noised.target.float()).square().mean(dim=tuple(range(1, prediction.dim())))
    return LogLik(values=-0.5 * error.view(noised.groups, k))
