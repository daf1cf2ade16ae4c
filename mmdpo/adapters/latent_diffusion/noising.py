"""How a clean latent x0 becomes the noised latent x_t and the regression target y the denoiser is scored on.

One timestep and one noise draw per group are shared by all K candidates, as the Diffusion-DPO derivation requires
(arXiv 2311.12908, Eq. 14). The strategies (:class:`Noising`):

- ``forward``: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Diffusion-DPO);
- ``ddim_inversion``: x_t is x0 DDIM-inverted to t, with InPO's stochastic ``eta`` (arXiv 2503.18454);
- ``renoise_inversion``: ReNoise-averaged DDIM inversion, as SmPO (arXiv 2506.02698).

The inversions walk up the schedule in one of two ways (``walk``, :mod:`~mmdpo.adapters.latent_diffusion.inversion`):
``landing`` on t (x_t at t's own noise level, the default) or the ``official`` InPO/SmPO loop, which stops on the
grid level at or above t and draws InPO's step noise per image instead of per group.

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

from mmdpo.adapters.latent_diffusion.inversion import Walk, ddim_invert, implied_noise, most_moves
from mmdpo.adapters.latent_diffusion.randomness import Generators, draw_per_group, generator_device

Denoiser = Callable[..., Tensor]
"""``denoiser(x_t [N, C, ...], t [N], **conditions) -> prediction [N, C, ...]``."""

NoisingKind = Literal["forward", "ddim_inversion", "renoise_inversion"]


@dataclass(frozen=True)
class Noising:
    """How x_t and the target are drawn; ``steps``, ``eta`` and ``walk`` apply to the inversions only.

    InPO's official setting is ``ddim_inversion`` with steps 10 and eta 0.1; SmPO's is
    ``renoise_inversion`` with steps 10 (SDXL) or 5 (SD1.5). ``walk``: ``landing`` on t or the ``official`` loop.
    """

    kind: NoisingKind = "forward"
    steps: int = 10
    eta: float = 0.0
    walk: Walk = "landing"


@dataclass(frozen=True)
class NoiseDraw:
    """The randomness of one estimate, one draw per group.

    Args:
        timesteps: ``[B]`` long.
        noise: ``[B, C, ...]``.
        step_noise: for InPO's stochastic inversion term, ``[M, B, C, ...]`` shared by a group's candidates or
            ``[M, B, K, C, ...]`` one per candidate, a row per move (M: the walk's
            :func:`~mmdpo.adapters.latent_diffusion.inversion.most_moves`); or None.
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
    """One timestep and one noise tensor per group of ``latents [B, K, C, ...]``, plus InPO's step noise: one per group,
    or one per candidate under the ``official`` walk (the official code draws it per image). Each group's draws come
    from its own generator, in that order."""
    b = latents.shape[0]
    device = generator_device(generator, latents.device)
    timesteps = draw_per_group(partial(torch.randint, 0, num_train_timesteps), (b,), generator, device)
    shape = latents[:, 0].shape
    noise = draw_per_group(torch.randn, shape, generator, device)
    step_noise = None
    if noising is not None and noising.kind != "forward" and noising.eta > 0:
        candidates = (latents.shape[1],) if noising.walk == "official" else ()
        size = (b, *candidates, most_moves(num_train_timesteps, noising.steps), *shape[1:])
        step_noise = draw_per_group(torch.randn, size, generator, device).movedim(len(candidates) + 1, 0)
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
    step_noise = draw.step_noise
    if step_noise is not None:  # [M, B * K, C, ...]
        per_candidate = step_noise.dim() == latents.dim() + 1
        step_noise = step_noise.flatten(1, 2) if per_candidate else step_noise.repeat_interleave(k, dim=1)
    x_t = ddim_invert(
        denoiser, x0, t, scheduler, steps=noising.steps, eta=noising.eta, step_noise=step_noise,
        renoise=noising.kind == "renoise_inversion", walk=noising.walk, **repeated,
    )  # fmt: skip
    return Noised(x_t, t, regression_target(scheduler, x0, implied_noise(x_t, x0, t, scheduler), t), b)
