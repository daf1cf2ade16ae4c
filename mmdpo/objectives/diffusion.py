"""Objectives defined on diffusion log-likelihoods (or written for them): SmPO, MaPO, Diffusion-KTO, DRO.

A diffusion adapter's estimate of a candidate is the ELBO surrogate ``-0.5 * mean((pred - target)^2)``
(:mod:`mmdpo.adapters.latent_diffusion.estimator`), so the per-candidate denoising error is ``mse = -2 * loglik`` and a
Diffusion-DPO margin of the official code equals ``-2 * Delta`` here. Each docstring says how its beta maps
onto the official code's. Diffusion-DPO itself (arXiv 2311.12908, Eq. 14) is ``dpo`` with beta = 5000, and its
hinge and IPO forms of the diffusers scripts are ``hinge`` and ``ipo_sum`` with beta twice the script's.
InPO (arXiv 2503.18454) is ``dpo`` with ``model.noising.kind=ddim_inversion``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdpo.objectives.core import LogLik, ObjectiveOutput, Preferences
from mmdpo.objectives.pairwise import build_pair, pair_metrics, reward_metrics, take
from mmdpo.objectives.unpaired import desirable_labels, kto_losses, unpaired_metrics

PICKSCORE_RANGE = (0.11543526500463486, 0.28201571106910706)
"""The official SmPO code's min and max of raw PickScore cosines over Pick-a-Pic v2 (``train.py``)."""


def smpo(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 5000.0,
    gamma: float = 10.0,
    score_min: float = PICKSCORE_RANGE[0],
    score_max: float = PICKSCORE_RANGE[1],
) -> ObjectiveOutput:
    """SmPO (Lu et al. 2025, arXiv 2506.02698, Eq. 9), as the official code: DPO with a soft label.

    -logsig(beta * gamma * (2p - 1) * Delta), p = sigmoid(n_0 - n_1) from the reward scores min-max normalised
    with ``[score_min, score_max]`` (``Preferences.scores``; the defaults are the official code's PickScore
    range — set your reward's). The loss is symmetric in the two candidates, so equally good images give no
    gradient. beta maps 1:1 onto the official ``beta_dpo`` (2000 for SD1.5, 5000 for SDXL); gamma = 10.
    Chosen and rejected, for the metrics, follow the scores.
    """
    if prefs.scores is None:
        raise ValueError("objective smpo needs reward scores per candidate: Preferences(scores=...) / a scores column.")
    if policy.values.shape[1] != 2:
        raise ValueError(f"objective smpo compares pairs (K = 2), got K = {policy.values.shape[1]}.")
    if not score_max > score_min:
        raise ValueError(f"objective.score_max={score_max} must exceed objective.score_min={score_min}.")
    logp = policy.total()
    r = logp - reference.total().to(logp.dtype)
    normalised = (prefs.scores.to(r) - score_min) / (score_max - score_min)
    p = torch.sigmoid(normalised[:, 0] - normalised[:, 1])
    losses = -F.logsigmoid(beta * gamma * (2 * p - 1) * (r[:, 0] - r[:, 1]))
    w = prefs.scores.argmax(-1)
    l = 1 - w
    metrics = reward_metrics(beta * take(r, w), beta * take(r, l), take(logp, w), take(logp, l))
    metrics["soft_label"] = p.detach().mean()
    return ObjectiveOutput(losses=losses, metrics=metrics)


def mapo(
    policy: LogLik,
    reference: LogLik | None,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    snr_value: float = 0.5,
    timesteps: int = 1000,
) -> ObjectiveOutput:
    """MaPO (Hong et al. 2024, arXiv 2406.06424, Eq. 9), reference-free, as the official ``compute_loss``.

    mse_w - beta * logsig(T * (f(mse_w) - f(mse_l))), f(e) = s e / (exp(s e) - 1), with s = ``snr_value`` and
    T = ``timesteps`` (the scheduler's ``num_train_timesteps``); mse = -2 * loglik. Implicit reward, for the
    metrics: f(mse), the log-odds term.
    """
    pair, _, _ = build_pair(policy, None, prefs)
    dtype = torch.promote_types(pair.logp_w.dtype, torch.float32)  # half precision upcast, float64 kept
    mse_w, mse_l = -2 * pair.logp_w.to(dtype), -2 * pair.logp_l.to(dtype)

    def f(mse: Tensor) -> Tensor:
        x = snr_value * mse
        return torch.where(x.abs() < 1e-6, 1 - x / 2, x / torch.expm1(x))

    odds_w, odds_l = f(mse_w), f(mse_l)
    losses = mse_w - beta * F.logsigmoid(timesteps * (odds_w - odds_l))
    metrics = reward_metrics(odds_w, odds_l, pair.logp_w, pair.logp_l)
    metrics["mse/chosen"] = mse_w.detach().mean()
    return ObjectiveOutput(losses=losses, metrics=metrics)


def dro_hinge(
    policy: LogLik, reference: LogLik, prefs: Preferences, *, margin: float = 1e-3, beta: float = 1.0
) -> ObjectiveOutput:
    """Diffusion-DRO's hinge (Wu et al. 2025, arXiv 2510.18353; official ``train.py``): max(0, margin - 2 Delta).

    ``2 Delta`` is the official (mse_exp - mse_exp_ref) - (mse_pol - mse_pol_ref) with its sign flipped: the
    chosen candidate is the expert image, the rejected one a sample of the (lagged) policy. ``beta`` only
    scales the logged rewards.
    """
    pair, _, _ = build_pair(policy, reference, prefs)
    return ObjectiveOutput(losses=torch.relu(margin - 2 * pair.margin), metrics=pair_metrics(pair, beta))


def diffusion_kto(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 2000.0,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> ObjectiveOutput:
    """Diffusion-KTO (Li et al. 2024, arXiv 2404.04465, Eq. 9), as the official ``train_kto_sd_v1.5.py``.

    KTO's sigmoid value function on r = log pi/pi_ref with the reference point z = max(0, mean of r over the
    batch's own images), detached (the official code averages over all processes; this, over the process's
    batch). beta = 2000 here is the official 1000 (its r is the denoising-error difference without the 0.5).
    """
    good = desirable_labels(prefs).to(policy.values.device)
    r = policy.total() - reference.total()
    z = r.mean().clamp_min(0).detach()
    losses = kto_losses(r, z, good, beta, desirable_weight, undesirable_weight)
    metrics = unpaired_metrics(beta * r, policy.total(), good)
    metrics["kl"] = z
    return ObjectiveOutput(losses=losses.mean(-1), metrics=metrics)
