"""DDIM inversion of clean latents to a training timestep: the x_t of InPO and SmPO.

InPO (Lu et al. 2025, arXiv 2503.18454) and SmPO (Lu et al. 2025, arXiv 2506.02698) score the pair not on a
forward-noised x_t but on the latent that DDIM inversion through the current model reaches, which stays
correlated with the image. One move from level c to level d takes the deterministic DDIM step

    x0_hat = (x_c - sqrt(1 - a_c) eps) / sqrt(a_c),    x_d = sqrt(a_d) x0_hat + sqrt(1 - a_d) eps,

with eps the model's prediction at x_c. Two walks up the schedule (``walk``):

- ``landing`` (the default): a grid of ``steps`` levels spaced ``T // steps`` apart, x0 (alpha 1) -> stride ->
  2 stride -> ... -> t, every grid level below t visited and the last move landing on t itself, the model evaluated
  at (x_c, d) as diffusers' current ``DDIMInverseScheduler`` and null-text inversion do. x_t then has t's own noise
  level, which the target eps* = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t) assumes.
- ``official``: the official InPO and SmPO loop step for step, under the diffusers they pin (0.20), whose
  ``DDIMInverseScheduler`` steps from its timestep s to s + T // steps, evaluating the model at (x_s, s). Its
  timesteps are the scheduler's spacing shifted one step down (-99, 1, 101, ..., 801 for 10 leading steps with
  ``steps_offset`` 1), so the walk is x0 -> 1 -> 101 -> ..., its first move from alpha ``alphas_cumprod[0]`` when the
  scheduler config has ``set_alpha_to_one: false`` (SD1.5, SDXL) and the model's first timestep -99. Every step
  from s < t is taken, so x_t ends on the first grid level at or above t (the top level, 901, for t > 901), up to
  ``T // steps - 1`` levels away from the t that eps* and the loss assume. Under current diffusers the same code
  reads the inverse scheduler the other way (it would walk 1, 101, ... evaluating at the level reached, stop below
  t, take the noise variance of the next interval, and fail for t > 901); this walk is what the pinned version
  runs.

- ``renoise`` (SmPO, after ReNoise, Garibi et al. 2024, arXiv 2403.14602): the model is evaluated again at the
  proposal x_d, at the same timestep, and the step is retaken with the mean of both noise predictions (the official
  code averages the model outputs, the same thing under epsilon prediction, the only one it supports).
- ``eta`` (InPO): after each move, ``eta * sqrt(var(c, d)) * z`` is added, with var the DDPM posterior variance
  of the interval just taken, ``(1 - a_c) / (1 - a_d) * (1 - a_d / a_c)``, and z a draw per move of ``step_noise``
  (one per group under ``landing``; one per image, as the official code, under ``official``: see
  :func:`~mmdpo.adapters.latent_diffusion.noising.draw_noise`).

Every latent inverts to its own timestep, so one call serves a batch of groups with different t.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from diffusers import SchedulerMixin
from torch import Tensor

Walk = Literal["landing", "official"]
"""How the inversion walks up the schedule (see the module docstring)."""

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


Move = tuple[int, int, int]
"""(from level, to level, the timestep the model is told); level -1 and below is the clean latent."""


def landing_moves(t: int, stride: int) -> list[Move]:
    """The ``landing`` walk to t: clean -> stride -> 2 stride -> ... -> t, the model told each move's end level."""
    levels = [-1, *range(stride, t, stride), t]
    return [(c, d, d) for c, d in zip(levels[:-1], levels[1:])]


def official_timesteps(config, steps: int) -> list[int]:
    """The timesteps of diffusers 0.20's ``DDIMInverseScheduler`` for a scheduler ``config``: its spacing's levels
    with the first set one step below the second (-99, 1, 101, ..., 801 for 10 leading steps from 1)."""
    total = config.num_train_timesteps
    spacing = config.get("timestep_spacing", "leading")
    if spacing == "leading":
        ratio = total // steps
        levels = [k * ratio + config.get("steps_offset", 0) for k in range(steps)]
    elif spacing == "trailing":
        ratio = total / steps
        levels = (np.round(np.arange(total, 0, -ratio)[::-1]).astype(np.int64) - 1).tolist()
    else:
        raise ValueError(
            f"model.noising.walk=official follows DDIMInverseScheduler, which has no timestep_spacing={spacing!r}; "
            "use walk=landing."
        )
    return [int(levels[0] - ratio), *levels[:-1]]


def official_moves(t: int, timesteps: list[int], stride: int) -> list[Move]:
    """The ``official`` walk to t: a step from every timestep s < t, from level s to s + stride, the model told s."""
    return [(s, s + stride, s) for s in timesteps if s < t]


def most_moves(total: int, steps: int) -> int:
    """Rows of step noise a walk over a ``total``-level schedule may use: ``steps``, or one more when the ``landing``
    grid's stride does not divide ``total`` (steps 7: stride 142, and t = 999 takes 8 moves)."""
    return max(steps, math.ceil((total - 1) / max(total // steps, 1)))


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
    walk: Walk = "landing",
    **conditions: Tensor,
) -> Tensor:
    """DDIM-invert clean latents ``x0 [N, ...]`` towards their ``timesteps [N]`` (see the module docstring).

    Args:
        denoise: the model, called on the subset of latents still moving, with the matching ``conditions``.
        steps: grid levels across the schedule (InPO and SmPO use 10; SmPO's SD1.5 setting is 5).
        eta: scale of InPO's stochastic term; needs ``step_noise [M, N, ...]`` (M: :func:`most_moves`), its row
            [m, n] added after move m of latent n.
        renoise: SmPO's ReNoise averaging (two model evaluations per move).
        walk: ``landing`` on each timestep, or the ``official`` loop's grid and stopping level.

    Returns:
        ``[N, ...]`` float32 latents at the noise level of each one's timestep (``landing``) or of the grid level the
        official loop stops at.
    """
    if steps < 1:
        raise ValueError(f"model.noising.steps={steps} must be at least 1.")
    if eta > 0 and step_noise is None:
        raise ValueError("Stochastic inversion (eta > 0) needs step_noise [most_moves(T, steps), N, ...].")
    config = scheduler.config
    stride = max(config.num_train_timesteps // steps, 1)
    alphas = scheduler.alphas_cumprod.to(x0.device, torch.float32)
    initial = 1.0  # alpha of the clean latent
    if walk == "landing":
        paths = [landing_moves(t, stride) for t in timesteps.tolist()]
    elif walk == "official":
        grid = official_timesteps(config, steps)
        paths = [official_moves(t, grid, stride) for t in timesteps.tolist()]
        initial = 1.0 if config.get("set_alpha_to_one", True) else alphas[0].item()
    else:
        raise ValueError(f"model.noising.walk={walk!r} is not a walk; use landing or official.")

    def alpha(levels: Tensor) -> Tensor:
        return torch.where(levels >= 0, alphas[levels.clamp_min(0)], initial)

    x = x0.float().clone()
    for move in range(max(map(len, paths), default=0)):
        moving = [n for n, path in enumerate(paths) if len(path) > move]
        active = torch.tensor(moving, device=x.device)
        src, dst, at = torch.tensor([paths[n][move] for n in moving], device=x.device).unbind(1)
        a_src, a_dst, a_at = alpha(src), alpha(dst), alpha(at)
        x_src = x[active]
        picked = {name: value[active] for name, value in conditions.items()}

        def noise_at(point: Tensor) -> Tensor:
            return predicted_noise(denoise(point, at, **picked), point, a_at, config.prediction_type)  # noqa: B023

        eps = noise_at(x_src)
        x_dst = ddim_move(x_src, eps, a_src, a_dst)
        if renoise:
            x_dst = ddim_move(x_src, (eps + noise_at(x_dst)) / 2, a_src, a_dst)
        if eta > 0:
            noise = step_noise[move][active].float()
            x_dst = x_dst + eta * _column(posterior_std(a_src, a_dst), x_dst) * noise
        x[active] = x_dst
    return x


def implied_noise(x_t: Tensor, x0: Tensor, timesteps: Tensor, scheduler: SchedulerMixin) -> Tensor:
    """eps* = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t): the noise that forward-noises ``x0`` to ``x_t`` at t."""
    a = _column(scheduler.alphas_cumprod.to(x0.device, torch.float32)[timesteps.to(x0.device)], x0)
    return (x_t.float() - a.sqrt() * x0.float()) / (1 - a).sqrt()
