"""DDIM inversion of clean latents to a training timestep: the x_t of InPO and SmPO.

InPO (Lu et al. 2025, arXiv 2503.18454) and SmPO (Lu et al. 2025, arXiv 2506.02698) score the pair not on a
forward-noised x_t but on the latent that DDIM inversion through the current model reaches, which stays
correlated with the image. Inversion walks up a grid of ``steps`` levels spaced ``T // steps`` apart,

    x0 (clean) -> tau_1 -> tau_2 -> ... -> t,

where every grid level below t is visited and the last move lands on t itself (the official code stops at the
last grid level below t and reads the result as x_t; landing on t makes x_t a latent of t's noise level). One
move from level c to level d evaluates the model at (x_c, d), the convention of diffusers'
``DDIMInverseScheduler`` and of null-text inversion, and takes the deterministic DDIM step

    x0_hat = (x_c - sqrt(1 - a_c) eps) / sqrt(a_c),    x_d = sqrt(a_d) x0_hat + sqrt(1 - a_d) eps.

- ``renoise`` (SmPO, after ReNoise, Garibi et al. 2024, arXiv 2403.14602): the model is evaluated again at the
  proposal (x_d, d) and the step is retaken with the mean of both predictions.
- ``eta`` (InPO): after each move, ``eta * sqrt(var(c, d)) * z`` is added, with var the DDPM posterior variance
  between the two levels, ``(1 - a_c) / (1 - a_d) * (1 - a_d / a_c)``, and z drawn once per group.

Every latent inverts to its own timestep, so one call serves a batch of groups with different t.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from diffusers import SchedulerMixin
from torch import Tensor

Denoise = Callable[..., Tensor]
"""``denoise(x [N, ...], t [N], **conditions [N, ...]) -> model output [N, ...]``."""


def _column(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *[1] * (like.dim() - 1))


def predicted_noise(output: Tensor, x: Tensor, alpha: Tensor, prediction_type: str) -> Tensor:
    """The noise a model output implies at ``x``, whose level has cumulative alpha ``alpha`` (``[N]``)."""
    if prediction_type == "epsilon":
        return output.float()
    if prediction_type == "v_prediction":
        a = _column(alpha, x)
        return a.sqrt() * output.float() + (1 - a).sqrt() * x
    raise ValueError(f"prediction_type={prediction_type!r} cannot be inverted; use epsilon or v_prediction.")


def ddim_move(x: Tensor, eps: Tensor, alpha_from: Tensor, alpha_to: Tensor) -> Tensor:
    """One deterministic DDIM step of ``x`` from the level of ``alpha_from`` to that of ``alpha_to`` (both ``[N]``)."""
    a_from, a_to = _column(alpha_from, x), _column(alpha_to, x)
    x0 = (x - (1 - a_from).sqrt() * eps) / a_from.sqrt()
    return a_to.sqrt() * x0 + (1 - a_to).sqrt() * eps


def posterior_std(alpha_from: Tensor, alpha_to: Tensor) -> Tensor:
    """sqrt of the DDPM posterior variance between two levels (zero when starting from the clean latent)."""
    return ((1 - alpha_from) / (1 - alpha_to) * (1 - alpha_to / alpha_from)).clamp_min(0).sqrt()


@torch.no_grad()
def ddim_invert(
    denoise: Denoise,
    x0: Tensor,
    timesteps: Tensor,
    scheduler: SchedulerMixin,
    *,
    steps: int,
    eta: float = 0.0,
    step_noise: Tensor | None = None,
    renoise: bool = False,
    **conditions: Tensor,
) -> Tensor:
    """DDIM-invert clean latents ``x0 [N, ...]`` to their ``timesteps [N]`` (see the module docstring).

    Args:
        denoise: the model, called on the subset of latents still moving, with the matching ``conditions``.
        steps: grid levels across the schedule (InPO and SmPO use 10; SmPO's SD1.5 setting is 5).
        eta: scale of InPO's stochastic term; needs ``step_noise [steps, N, ...]``.
        renoise: SmPO's ReNoise averaging (two model evaluations per move).

    Returns:
        ``[N, ...]`` float32 latents at the noise level of each one's timestep.
    """
    if steps < 1:
        raise ValueError(f"model.noising.steps={steps} must be at least 1.")
    if eta > 0 and step_noise is None:
        raise ValueError("Stochastic inversion (eta > 0) needs step_noise [steps, N, ...].")
    total = scheduler.config.num_train_timesteps
    stride = max(total // steps, 1)
    prediction_type = scheduler.config.prediction_type
    alphas = scheduler.alphas_cumprod.to(x0.device, torch.float32)
    x = x0.float().clone()
    targets = timesteps.to(x0.device).long()
    level = torch.full_like(targets, -1)  # -1: the clean latent, alpha = 1
    moves = [max(1, math.ceil(t / stride)) for t in timesteps.tolist()]
    for move in range(1, max(moves) + 1):
        active = torch.tensor([m >= move for m in moves], device=x.device).nonzero().squeeze(1)
        src, dst = level[active], torch.clamp(targets[active], max=move * stride)
        a_src = torch.where(src >= 0, alphas[src.clamp_min(0)], torch.ones_like(src, dtype=torch.float32))
        a_dst = alphas[dst]
        x_src = x[active]
        picked = {name: value[active] for name, value in conditions.items()}

        def noise_at(point: Tensor) -> Tensor:
            return predicted_noise(denoise(point, dst, **picked), point, a_dst, prediction_type)  # noqa: B023

        eps = noise_at(x_src)
        x_dst = ddim_move(x_src, eps, a_src, a_dst)
        if renoise:
            x_dst = ddim_move(x_src, (eps + noise_at(x_dst)) / 2, a_src, a_dst)
        if eta > 0:
            noise = step_noise[move - 1][active].float()
            x_dst = x_dst + eta * _column(posterior_std(a_src, a_dst), x_dst) * noise
        x[active] = x_dst
        level[active] = dst
    return x


def implied_noise(x_t: Tensor, x0: Tensor, timesteps: Tensor, scheduler: SchedulerMixin) -> Tensor:
    """eps* = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t): the noise that forward-noises ``x0`` to ``x_t`` at t."""
    a = _column(scheduler.alphas_cumprod.to(x0.device, torch.float32)[timesteps.to(x0.device)], x0)
    return (x_t.float() - a.sqrt() * x0.float()) / (1 - a).sqrt()
