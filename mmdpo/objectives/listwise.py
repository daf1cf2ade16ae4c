"""Listwise losses over K ranked candidates; every one reduces to DPO (or a multiple of it) at K = 2.

All score a candidate by its implicit reward s_i = beta * (logp_i - logp_ref_i) and read the labels
through ``Preferences.ranking()`` (ranks, or dense ranks from scores; 0 = best).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdpo.objectives.core import LogLik, ObjectiveOutput, Preferences
from mmdpo.objectives.pairs import PairMode, dense_ranks, pair_mask


def _implicit_reward(policy: LogLik, reference: LogLik | None) -> Tensor:
    """``[B, K]`` log-ratio r = logp - logp_ref (logp when reference-free)."""
    return policy.total() if reference is None else policy.total() - reference.total().to(policy.values.dtype)


def _pair_logistic(s: Tensor, weight: Tensor) -> Tensor:
    """``[B]`` sum over ordered pairs of ``weight_ij * -logsigmoid(s_i - s_j)`` (``weight`` is 0 off the pairs)."""
    return (weight * -F.logsigmoid(s.unsqueeze(-1) - s.unsqueeze(-2))).sum((-1, -2))


def _positions(s: Tensor, ranks: Tensor) -> Tensor:
    """``[B, K]`` 1-based positions when sorted by s (descending); ties go to the better label, then the index.

    Breaking ties by label makes the positions at policy = reference (all s equal) the labelled order,
    whatever order the candidates come in.
    """
    index = torch.arange(s.shape[1], device=s.device)
    s_i, s_j, r_i, r_j = s.unsqueeze(-1), s.unsqueeze(-2), ranks.unsqueeze(-1), ranks.unsqueeze(-2)
    ahead = (s_j > s_i) | ((s_j == s_i) & ((r_j < r_i) | ((r_j == r_i) & (index < index[:, None]))))
    return 1 + ahead.sum(-1)  # ahead[b, i, j]: candidate j sorts before candidate i


def listwise_metrics(rewards: Tensor, logps: Tensor, ranks: Tensor) -> dict[str, Tensor]:
    """TRL-named metrics for a list: chosen = the best candidate(s), rejected = the worst.

    Accuracy is over ordered pairs, a tie in reward counting half.
    """
    rewards, logps = rewards.detach(), logps.detach()
    best = ranks == ranks.min(-1, keepdim=True).values
    worst = ranks == ranks.max(-1, keepdim=True).values

    def mean_of(x: Tensor, mask: Tensor) -> Tensor:
        return ((x * mask).sum(-1) / mask.sum(-1)).mean()

    ordered = pair_mask(ranks, "all")
    diff = rewards.unsqueeze(-1) - rewards.unsqueeze(-2)
    correct = (diff > 0).float() + 0.5 * (diff == 0).float()
    chosen, rejected = mean_of(rewards, best), mean_of(rewards, worst)
    return {
        "rewards/chosen": chosen,
        "rewards/rejected": rejected,
        "rewards/margins": chosen - rejected,
        "rewards/accuracies": (correct * ordered).sum() / ordered.sum().clamp_min(1),
        "logps/chosen": mean_of(logps, best),
        "logps/rejected": mean_of(logps, worst),
    }


def plackett_luce(
    policy: LogLik, reference: LogLik | None, prefs: Preferences, *, beta: float = 0.1, top_k: int | None = None
) -> ObjectiveOutput:
    """Plackett-Luce DPO (Rafailov et al. 2023, arXiv 2305.18290, App. A.3, Eq. 20).

    -sum_{k=1}^{K'} [s_tau(k) - log sum_{j>=k} exp s_tau(j)], tau the labelled order (ties broken by
    index), K' = ``top_k`` or K - 1 (the last term is zero). K = 2 gives DPO.
    """
    ranks = prefs.ranking().to(policy.values.device)
    s = beta * _implicit_reward(policy, reference)
    k = s.shape[1]
    order = torch.argsort(ranks * k + torch.arange(k, device=s.device), dim=-1)
    ordered = s.gather(-1, order)
    tail_lse = torch.logcumsumexp(ordered.flip(-1), dim=-1).flip(-1)  # log sum_{j >= k} exp s_j
    terms = ordered - tail_lse
    if top_k is not None and not 1 <= top_k <= k:
        raise ValueError(f"objective.top_k={top_k} must lie in [1, K={k}].")
    losses = -terms[:, : (k - 1 if top_k is None else top_k)].sum(-1)
    return ObjectiveOutput(losses=losses, metrics=listwise_metrics(s, policy.total(), ranks))


Weighting = Literal["lambda", "gain", "uniform"]


def _lambda_rank(
    policy: LogLik, reference: LogLik | None, prefs: Preferences, beta: float, weighting: Weighting
) -> ObjectiveOutput:
    """-sum_{i better than j} Delta_ij logsig(s_i - s_j) with LambdaLoss weights; see :func:`lipo_lambda`."""
    ranks = prefs.ranking().to(policy.values.device)
    s = beta * _implicit_reward(policy, reference)
    label = prefs.scores.to(s) if prefs.scores is not None else (ranks.shape[1] - 1 - dense_ranks(ranks)).to(s)
    with torch.no_grad():
        pairs = pair_mask(ranks, "all").to(s)
        gain = 2**label  # G = 2^psi - 1; the -1 cancels in |G_i - G_j|
        if weighting == "uniform":
            weight = pairs
        elif weighting in ("gain", "lambda"):
            weight = pairs * (gain.unsqueeze(-1) - gain.unsqueeze(-2)).abs()
        else:
            raise ValueError(f"objective.weighting={weighting!r} is unknown; use lambda, gain or uniform.")
        if weighting == "lambda":
            inv_discount = 1 / torch.log2(1 + _positions(s, ranks).to(s))
            weight = weight * (inv_discount.unsqueeze(-1) - inv_discount.unsqueeze(-2)).abs()
    return ObjectiveOutput(losses=_pair_logistic(s, weight), metrics=listwise_metrics(s, policy.total(), ranks))


def lipo_lambda(policy: LogLik, reference: LogLik | None, prefs: Preferences, *, beta: float = 0.1) -> ObjectiveOutput:
    """LiPO-lambda (Liu et al. 2024, arXiv 2402.01878, Eq. 6): -sum_{psi_i > psi_j} Delta_ij logsig(s_i - s_j).

    Delta_ij = |G_i - G_j| |1/D(tau_i) - 1/D(tau_j)|, gains G = 2^psi - 1, discount D(tau) = log2(1 + tau),
    tau the 1-based position under the current scores (detached; ties go to the better label). The
    paper writes log(1 + tau); base 2 is the DCG convention of LambdaLoss / TF-Ranking, which LiPO
    builds on, and a change of base only rescales every weight by the same constant. Labels psi are
    ``Preferences.scores`` when given, else K-1-level (the dense rank, ties sharing a level). Summed over pairs,
    not normalised: at K = 2 it is DPO times 1 - 1/log2(3) = 0.369.
    """
    return _lambda_rank(policy, reference, prefs, beta, "lambda")


def rankdpo(
    policy: LogLik,
    reference: LogLik | None,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    weighting: Weighting = "lambda",
) -> ObjectiveOutput:
    """RankDPO (Karthik et al. 2024, arXiv 2410.18013, Alg. 2): DCG-weighted pairwise DPO over a ranked list.

    -sum_{i better than j} Delta_ij logsig(s_i - s_j) with gains 2^phi from the soft scores phi
    (``Preferences.scores``, Syn-Pic's preference fractions in [0, 1]; K-1-level without them) and the
    positions tau under the current model scores, as :func:`lipo_lambda`. ``weighting``: ``lambda``
    (Delta_ij, the paper), ``gain`` (|G_i - G_j| only) or ``uniform`` (every pair 1: summed all-pairs DPO),
    the paper's ablation.
    """
    return _lambda_rank(policy, reference, prefs, beta, weighting)


def curry_dpo(
    policy: LogLik, reference: LogLik | None, prefs: Preferences, *, beta: float = 0.1, pairs: PairMode = "all"
) -> ObjectiveOutput:
    """Curry-DPO's multi-pair expansion (Pattnaik et al. 2024, arXiv 2403.07230, Sec. 3) in one forward.

    The mean DPO loss over the pairs of each ranked list: ``all`` ordered pairs, ``best_vs_rest``, ``adjacent``
    rank levels or ``best_vs_worst`` (:mod:`mmdpo.objectives.pairs`, the rule ``data.pairs`` expands lists by).
    Each candidate is scored once however many pairs it joins; the curriculum (easy pairs first) is a data order.
    """
    ranks = prefs.ranking().to(policy.values.device)
    s = beta * _implicit_reward(policy, reference)
    mask = pair_mask(ranks, pairs, "objective.pairs")
    weight = mask / mask.sum((-1, -2), keepdim=True).clamp_min(1)
    return ObjectiveOutput(losses=_pair_logistic(s, weight), metrics=listwise_metrics(s, policy.total(), ranks))


def adpo(
    policy: LogLik,
    reference: LogLik | None,
    prefs: Preferences,
    *,
    tau: float = 10.0,
    target: Literal["hard", "soft", "listwise"] = "hard",
    target_temperature: float = 1.0,
) -> ObjectiveOutput:
    """Anchored DPO (Wang 2025, arXiv 2510.18913, Eq. 3): KL(q || softmax(r / tau)) over the K candidates.

    Targets q: ``hard`` one-hot on the best candidate(s); ``soft`` softmax(scores / target_temperature);
    ``listwise`` softmax(-rank / target_temperature). With K = 2 and a hard target this is DPO with
    beta = 1/tau (so the default tau = 10 matches DPO's beta = 0.1).
    """
    ranks = prefs.ranking().to(policy.values.device)
    r = _implicit_reward(policy, reference)
    if target == "hard":
        best = (ranks == ranks.min(-1, keepdim=True).values).to(r)
        q = best / best.sum(-1, keepdim=True)
    elif target == "soft":
        if prefs.scores is None:
            raise ValueError("objective.target=soft needs Preferences(scores=...); use target=hard or listwise.")
        q = torch.softmax(prefs.scores.to(r) / target_temperature, dim=-1)
    elif target == "listwise":
        q = torch.softmax(-ranks.to(r) / target_temperature, dim=-1)
    else:
        raise ValueError(f"objective.target={target!r} is unknown; use hard, soft or listwise.")
    log_p = torch.log_softmax(r / tau, dim=-1)
    losses = (torch.xlogy(q, q) - q * log_p).sum(-1)
    return ObjectiveOutput(losses=losses, metrics=listwise_metrics(r / tau, policy.total(), ranks))
