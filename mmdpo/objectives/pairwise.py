"""Pairwise preference losses (K = 2) as small kernels over a :class:`Pair`.

Every kernel is lifted by :func:`pairwise`, which extracts chosen/rejected from the labels and
applies the options shared by all pairwise losses:

- ``ld_alpha`` LD-DPO (Liu et al. 2024, arXiv 2409.06411, Eq. 9): tokens past the shorter
  response's length count with weight alpha. ``ld_reference=True`` (default, as TRL >= 0.29)
  applies it to the reference too; ``False`` reproduces TRL <= 0.28 and LLaMA-Factory (policy only).
- ``f_divergence`` f-DPO (Wang et al. 2023, arXiv 2309.16240, Thm. 1): the log-ratio r becomes
  the score s = f'(pi/pi_ref): ``reverse_kl`` s = r (DPO), ``forward_kl`` s = 1 - exp(-r),
  ``js_divergence`` s = log 2 + logsigmoid(r), ``alpha_divergence`` s = (exp((alpha-1) r) - 1)/(alpha-1)
  with ``f_alpha`` in TRL >= 0.29's convention (default 0.5; the paper's and TRL <= 0.28's alpha is
  1 - f_alpha). The constants cancel in s_w - s_l but not in the length-normalised losses (ipo,
  sigmoid_norm), so they are kept, as in TRL.
- ``wpo`` WPO (Zhou et al. 2024, arXiv 2406.11827, Eq. 6): each pair's loss is weighted by
  w(y_w) w(y_l), w(y) = exp(mean_t [log p_t - log sum_v p_v^2]), detached, unclamped (TRL >= 0.29).
- ``sft_weight`` RPO (Pang et al. 2024, arXiv 2404.19733, Eq. 3): adds weight * (-log p(y_w)/|y_w|),
  the length-normalised NLL of the chosen response per pair.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdpo.objectives.core import LogLik, ObjectiveOutput, Preferences

FDivergence = Literal["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]


@dataclass(frozen=True)
class Pair:
    """Chosen (w) and rejected (l) quantities of B pairs, each ``[B]``.

    ``logp_*`` are the policy's summed log-likelihoods, ``ref_*`` the reference's (zeros when
    the objective is reference-free), ``len_*`` the unit counts, and ``s_*`` the f-divergence
    scores of the log-ratios (equal to ``r_*`` for the default reverse KL).
    """

    logp_w: Tensor
    logp_l: Tensor
    ref_w: Tensor
    ref_l: Tensor
    len_w: Tensor
    len_l: Tensor
    s_w: Tensor
    s_l: Tensor

    @property
    def r_w(self) -> Tensor:
        return self.logp_w - self.ref_w

    @property
    def r_l(self) -> Tensor:
        return self.logp_l - self.ref_l

    @property
    def margin(self) -> Tensor:
        """Delta s = s_w - s_l, the quantity most losses push up."""
        return self.s_w - self.s_l

    @property
    def avg_w(self) -> Tensor:
        return self.logp_w / self.len_w

    @property
    def avg_l(self) -> Tensor:
        return self.logp_l / self.len_l


Kernel = Callable[..., "Tensor | tuple[Tensor, Tensor, Tensor]"]


def chosen_rejected(prefs: Preferences, k: int) -> tuple[Tensor, Tensor]:
    """Indices ``[B]`` of the chosen and rejected candidate of each pair."""
    if k != 2:
        raise ValueError(
            f"A pairwise objective needs K = 2 candidates per group, got K = {k}; "
            "use a listwise objective (plackett_luce, lipo_lambda, rankdpo, curry_dpo) or expand pairs in data."
        )
    ranks = prefs.ranking()
    if bool((ranks[:, 0] == ranks[:, 1]).any()):
        raise ValueError("A pairwise objective got a tied pair (equal ranks); drop ties in data (data.ties=drop).")
    chosen = ranks.argmin(-1)
    return chosen, 1 - chosen


def take(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b]]`` for a ``[B, K, ...]`` tensor (``index`` may live on the host)."""
    return x[torch.arange(x.shape[0], device=x.device), index.to(x.device)]


def length_desensitized(values: Tensor, mask: Tensor, public_len: Tensor, alpha: float) -> Tensor:
    """LD-DPO Eq. 9: ``[B, K]`` sums where units past ``public_len`` (``[B]``) weigh ``alpha``."""
    position = mask.long().cumsum(-1)  # 1-based index among real units
    weight = torch.where(position <= public_len[:, None, None], 1.0, alpha).to(values.dtype)
    return (values * mask * weight).sum(-1)


def f_score(r: Tensor, divergence: FDivergence, alpha: float) -> Tensor:
    """f'(pi/pi_ref) expressed through the log-ratio r (f-DPO Thm. 1), constants kept as TRL does."""
    if divergence == "reverse_kl":
        return r
    if divergence == "forward_kl":
        return -torch.expm1(-r)
    if divergence == "js_divergence":
        return math.log(2) + F.logsigmoid(r)
    if divergence == "alpha_divergence":
        if abs(alpha - 1.0) < 1e-6:
            return r
        limit = 11.0 if r.dtype == torch.float16 else 80.0
        return torch.expm1(((alpha - 1.0) * r).float().clamp(max=limit)).to(r.dtype) / (alpha - 1.0)
    raise ValueError(
        f"objective.f_divergence={divergence!r} is unknown; "
        "use reverse_kl, forward_kl, js_divergence or alpha_divergence."
    )


def wpo_weight(loglik: LogLik) -> Tensor:
    """WPO Eq. 6: ``[B, K]`` exp of the mean aligned token log-prob, detached."""
    if "wpo_logp" not in loglik.extras:
        raise ValueError(
            "objective.wpo=true needs per-token 'wpo_logp' from the adapter; this adapter did not provide it."
        )
    aligned = loglik.extras["wpo_logp"]
    return torch.exp((aligned * loglik.mask).sum(-1) / loglik.length()).detach()


def reward_metrics(chosen: Tensor, rejected: Tensor, logp_w: Tensor, logp_l: Tensor) -> dict[str, Tensor]:
    """TRL's metric names from per-pair implicit rewards and policy log-likelihoods.

    A tie counts as half a correct pair, so accuracy is 0.5 when policy = reference.
    """
    chosen, rejected = chosen.detach(), rejected.detach()
    return {
        "rewards/chosen": chosen.mean(),
        "rewards/rejected": rejected.mean(),
        "rewards/margins": (chosen - rejected).mean(),
        "rewards/accuracies": ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).mean(),
        "logps/chosen": logp_w.detach().mean(),
        "logps/rejected": logp_l.detach().mean(),
    }


def pair_metrics(pair: Pair, beta: float) -> dict[str, Tensor]:
    """:func:`reward_metrics` with the implicit reward beta * r."""
    return reward_metrics(beta * pair.r_w, beta * pair.r_l, pair.logp_w, pair.logp_l)


def build_pair(
    policy: LogLik,
    reference: LogLik | None,
    prefs: Preferences,
    *,
    ld_alpha: float | None = None,
    ld_reference: bool = True,
    f_divergence: FDivergence = "reverse_kl",
    f_alpha: float = 0.5,
) -> tuple[Pair, Tensor, Tensor]:
    """Extract a :class:`Pair` and the chosen/rejected indices from K = 2 log-likelihoods."""
    w, l = chosen_rejected(prefs, policy.values.shape[1])
    lengths = policy.length()
    len_w, len_l = take(lengths, w), take(lengths, l)

    def totals(loglik: LogLik, desensitize: bool) -> Tensor:
        if ld_alpha is None or not desensitize:
            return loglik.total()
        if not loglik.per_unit:
            raise ValueError(
                "objective.ld_alpha needs per-token log-likelihoods; this adapter gives one value per candidate."
            )
        return length_desensitized(loglik.values, loglik.mask, torch.minimum(len_w, len_l), ld_alpha)

    pol = totals(policy, True)
    ref = torch.zeros_like(pol) if reference is None else totals(reference, ld_reference).to(pol.dtype)
    logp_w, logp_l, ref_w, ref_l = take(pol, w), take(pol, l), take(ref, w), take(ref, l)
    pair = Pair(
        logp_w=logp_w,
        logp_l=logp_l,
        ref_w=ref_w,
        ref_l=ref_l,
        len_w=len_w,
        len_l=len_l,
        s_w=f_score(logp_w - ref_w, f_divergence, f_alpha),
        s_l=f_score(logp_l - ref_l, f_divergence, f_alpha),
    )
    return pair, w, l


PAIR_OPTIONS = [p for p in inspect.signature(build_pair).parameters.values() if p.kind is p.KEYWORD_ONLY]
"""The options of :func:`build_pair` every lifted kernel takes (LD-DPO, f-DPO)."""


def pairwise(kernel: Kernel) -> Callable[..., ObjectiveOutput]:
    """Lift ``kernel(pair, *, beta, ...) -> losses [B]`` into an objective with the shared options.

    A kernel may also return ``(losses, chosen_rewards, rejected_rewards)`` when its implicit
    reward is not ``beta * r`` (reference-free losses).
    """

    @functools.wraps(kernel)
    def objective(
        policy: LogLik,
        reference: LogLik | None,
        prefs: Preferences,
        *,
        wpo: bool = False,
        sft_weight: float = 0.0,
        **hparams,
    ) -> ObjectiveOutput:
        options = {p.name: hparams.pop(p.name) for p in PAIR_OPTIONS if p.name in hparams}
        pair, w, l = build_pair(policy, reference, prefs, **options)
        out = kernel(pair, **hparams)
        beta = hparams.get("beta", kernel_defaults.get("beta", 1.0))
        if isinstance(out, tuple):
            losses, chosen_rewards, rejected_rewards = out
        else:
            losses, chosen_rewards, rejected_rewards = out, beta * pair.r_w, beta * pair.r_l
        if wpo:
            weight = wpo_weight(policy)
            losses = losses * take(weight, w) * take(weight, l)
        if sft_weight:
            losses = losses + sft_weight * (-pair.avg_w)
        metrics = reward_metrics(chosen_rewards, rejected_rewards, pair.logp_w, pair.logp_l)
        if sft_weight:
            metrics["nll_loss"] = (-pair.avg_w).detach().mean()
        return ObjectiveOutput(losses=losses, metrics=metrics)

    kernel_params = list(inspect.signature(kernel).parameters.values())[1:]
    kernel_defaults = {p.name: p.default for p in kernel_params}
    own = inspect.signature(objective, follow_wrapped=False).parameters.values()
    positional = [p for p in own if p.kind is p.POSITIONAL_OR_KEYWORD]
    flags = [p for p in own if p.kind is p.KEYWORD_ONLY]
    objective.__signature__ = inspect.Signature(positional + PAIR_OPTIONS + flags + kernel_params)
    return objective


# --- kernels -----------------------------------------------------------------------------------


def smoothed_logistic(z: Tensor, eps: float) -> Tensor:
    """-(1 - eps) logsig(z) - eps logsig(-z): the logistic loss with a label flipped at rate eps (cDPO)."""
    return -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)


def dpo(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """DPO (Rafailov et al. 2023, arXiv 2305.18290, Eq. 7): -logsigmoid(beta * Delta)."""
    return -F.logsigmoid(beta * pair.margin)


def cdpo(pair: Pair, *, beta: float = 0.1, label_smoothing: float = 0.1) -> Tensor:
    """Conservative DPO (Mitchell 2023, cDPO note): -(1-eps) logsig(beta Delta) - eps logsig(-beta Delta).

    Biased towards the finite margin (1/beta) log((1-eps)/eps); this is TRL <= 0.28's
    ``sigmoid`` with label smoothing, OpenRLHF's and torchtune's ``label_smoothing``.
    """
    return smoothed_logistic(beta * pair.margin, label_smoothing)


def rdpo(pair: Pair, *, beta: float = 0.1, label_smoothing: float = 0.1) -> Tensor:
    """Robust DPO (Chowdhury et al. 2024, arXiv 2403.00409, Eq. 8): unbiased under flip rate eps.

    [-(1-eps) logsig(beta Delta) + eps logsig(-beta Delta)] / (1 - 2 eps); TRL's ``robust``.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"objective.label_smoothing={label_smoothing} must lie in [0, 0.5) for rdpo.")
    z = beta * pair.margin
    return (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)


def ipo(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17), length-normalised as in TRL (default form).

    (s_w/|y_w| - s_l/|y_l| - 1/(2 beta))^2; beta is the paper's tau.
    """
    return (pair.s_w / pair.len_w - pair.s_l / pair.len_l - 1 / (2 * beta)) ** 2


def ipo_sum(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """IPO with summed log-ratios, as the DPO reference code and OpenRLHF: (Delta - 1/(2 beta))^2."""
    return (pair.margin - 1 / (2 * beta)) ** 2


def hinge(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """SLiC / RSO hinge (Zhao et al. 2023, arXiv 2305.10425; Liu et al. 2023, arXiv 2309.06657).

    max(0, 1 - beta Delta).
    """
    return torch.relu(1 - beta * pair.margin)


def sigmoid_norm(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """Length-normalised DPO (Tulu 3, Lambert et al. 2024, arXiv 2411.15124, Sec. 4.3).

    -logsig(beta (s_w/|y_w| - s_l/|y_l|)).
    """
    return -F.logsigmoid(beta * (pair.s_w / pair.len_w - pair.s_l / pair.len_l))


def simpo(pair: Pair, *, beta: float = 2.0, gamma_beta_ratio: float = 0.25, label_smoothing: float = 0.0):
    """SimPO (Meng et al. 2024, arXiv 2405.14734, Eq. 6), reference-free.

    -logsig(beta (avg_w - avg_l) - gamma) with gamma = gamma_beta_ratio * beta; the official code's
    cDPO-style ``label_smoothing`` is kept. Implicit reward: beta * average log-likelihood.
    """
    losses = smoothed_logistic(beta * (pair.avg_w - pair.avg_l - gamma_beta_ratio), label_smoothing)
    return losses, beta * pair.avg_w, beta * pair.avg_l


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo(pair: Pair, *, beta: float = 0.1):
    """ORPO (Hong et al. 2024, arXiv 2403.07691, Eq. 6-7), reference-free; beta is the paper's lambda.

    NLL(y_w)/|y_w| - beta * logsig(log odds(y_w) - log odds(y_l)), odds on average token probability,
    computed in fp32. Implicit reward: beta * average log-likelihood (as TRL).
    """
    avg_w, avg_l = pair.avg_w.float(), pair.avg_l.float()
    log_odds = (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))
    losses = -avg_w - beta * F.logsigmoid(log_odds)
    return losses, beta * avg_w, beta * avg_l


def exo(pair: Pair, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> Tensor:
    """EXO (Ji et al. 2024, arXiv 2402.00856, Eq. 16): KL(softmax(beta s) || [1-eps, eps]) over the pair.

    Needs eps = ``label_smoothing`` > 0 (TRL <= 0.28 silently used 1e-3; that is the default here).
    """
    if label_smoothing <= 0:
        raise ValueError("objective.label_smoothing must be > 0 for exo (it is the target's epsilon).")
    z = beta * pair.margin
    eps = torch.tensor(label_smoothing, dtype=z.dtype, device=z.device)
    return torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps)) + torch.sigmoid(-z) * (
        F.logsigmoid(-z) - torch.log(eps)
    )


def nca(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """NCA pair (Chen et al. 2024, arXiv 2402.05369, Eq. 11).

    -logsig(beta r_w) - 1/2 logsig(-beta r_w) - 1/2 logsig(-beta r_l).
    """
    w, l = beta * pair.r_w, beta * pair.r_l
    return -F.logsigmoid(w) - 0.5 * F.logsigmoid(-w) - 0.5 * F.logsigmoid(-l)


def bco(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """BCO pair (Jung et al. 2024, arXiv 2404.04656, Eq. 9, TRL >= 0.29 without the running shift).

    -logsig(beta r_w) - logsig(-beta r_l).
    """
    return -F.logsigmoid(beta * pair.r_w) - F.logsigmoid(-beta * pair.r_l)


def apo_zero(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """APO-zero (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 7): (1 - sig(beta r_w)) + sig(beta r_l)."""
    return 1 - torch.sigmoid(beta * pair.r_w) + torch.sigmoid(beta * pair.r_l)


def apo_down(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """APO-down (D'Oosterlinck et al. 2024, arXiv 2408.06266, Eq. 8): sig(beta r_w) + (1 - sig(beta Delta))."""
    return torch.sigmoid(beta * pair.r_w) + 1 - torch.sigmoid(beta * pair.margin)


def sppo_hard(pair: Pair, *, beta: float = 0.1) -> Tensor:
    """SPPO, hard labels (Wu et al. 2024, arXiv 2405.00675, Eq. 4.7 with P = 1/0).

    (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2.
    """
    return (pair.r_w - 0.5 / beta) ** 2 + (pair.r_l + 0.5 / beta) ** 2


def aot(pair: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """AOT, paired (Melnyk et al. 2024, arXiv 2406.05882, Eq. 11), TRL's ``aot``.

    smoothed logistic of beta d, d = sort_B(logp_w - logp_l) - sort_B(ref_w - ref_l). The losses come
    in sorted order, not the groups' order: only their mean (or sum) is meaningful.
    """
    d = torch.sort(pair.logp_w - pair.logp_l).values - torch.sort(pair.ref_w - pair.ref_l).values
    return smoothed_logistic(beta * d, label_smoothing)


def aot_unpaired(pair: Pair, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Tensor:
    """AOT, unpaired (Melnyk et al. 2024, arXiv 2406.05882, Eq. 10), TRL's ``aot_unpaired``.

    smoothed logistic of beta d, d = sort_B(r_w) - sort_B(r_l); losses in sorted order, as for :func:`aot`.
    """
    d = torch.sort(pair.r_w).values - torch.sort(pair.r_l).values
    return smoothed_logistic(beta * d, label_smoothing)


def discopop(pair: Pair, *, beta: float = 0.1, tau: float = 0.05) -> Tensor:
    """DiscoPOP (Chris Lu et al. 2024, arXiv 2406.08414, Eq. 5).

    (1 - m)(-logsig z) + m exp(-z), with z = beta Delta and the mix m = sig(z / tau).
    """
    z = beta * pair.margin
    mix = torch.sigmoid(z / tau)
    return (1 - mix) * -F.logsigmoid(z) + mix * torch.exp(-z)


def triple_po(pair: Pair, *, beta: float = 0.01, alpha: float = 1.0):
    """Triple Preference Optimization (Saeidi et al. 2024, arXiv 2405.16681, Eq. 5), reference-free.

    -logsig(beta (logp_w - logp_l)) + alpha * NLL(gold)/|gold|, with the chosen response as the gold one.
    Defaults are TRL's port (the official config uses beta = 0.1); TRL averages the NLL over all gold
    tokens of the batch, this per pair (equal when the gold responses have equal lengths).
    """
    losses = -F.logsigmoid(beta * (pair.logp_w - pair.logp_l)) - alpha * pair.avg_w
    return losses, beta * pair.logp_w, beta * pair.logp_l


def asft(pair: Pair, *, beta: float = 0.1):
    """ASFT (Wang et al. 2024, arXiv 2409.10571, Eq. 8), reference-free and pointwise.

    NLL(y_w)/|y_w| - beta [logsig(log odds(y_w)) + logsig(-log odds(y_l))], odds on average token probability,
    beta the paper's lambda; computed in fp32 as ORPO. Implicit reward: beta * average log-likelihood.
    """
    avg_w, avg_l = pair.avg_w.float(), pair.avg_l.float()
    odds_w, odds_l = avg_w - log1mexp(avg_w), avg_l - log1mexp(avg_l)
    losses = -avg_w - beta * (F.logsigmoid(odds_w) + F.logsigmoid(-odds_l))
    return losses, beta * avg_w, beta * avg_l


# --- pairwise objectives that read more than the Pair ----------------------------------------------


def madpo_weight(h: Tensor, c_max: float, c_min: float, lam: float, tau: float) -> Tensor:
    """MADPO's instance weight w(h) of a reward-model margin h (official ``MADPOLoss.coef`` and weights).

    c(|h|) = c_min + (c_max - c_min) / (1 + (c_max - 1)/(1 - c_min) exp(lam (|h| - tau))) runs from
    about c_max (small |h|) through 1 (|h| = tau) to c_min (large |h|); w = sig(c h) / sig(h) for
    h > -tau, else 1.
    """
    if not c_min < 1 < c_max:
        raise ValueError(f"objective.c_min={c_min} and objective.c_max={c_max} must satisfy c_min < 1 < c_max.")
    c = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * torch.exp(lam * (h.abs() - tau)))
    return torch.where(h > -tau, torch.sigmoid(c * h) / torch.sigmoid(h), torch.ones_like(h))


def madpo(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    c_max: float = 2.0,
    c_min: float = 0.5,
    lam: float = 1.0,
    tau: float = 2.0,
) -> ObjectiveOutput:
    """Margin-adaptive DPO (Rho 2025, arXiv 2510.05342, Sec. 3): -w(h) logsig(beta Delta).

    h = score(y_w) - score(y_l) is a reward model's margin from ``Preferences.scores``; the weight
    :func:`madpo_weight` is the official code's (sirano1004/Margin-Apative-Direct-Preference-Optimization,
    ``utils/loss_functions.py``, whose constructor defaults are used here; its notebooks set
    tau = ln 999). w(0) = 1; it amplifies low-margin pairs (0 < h < tau, w > 1) and dampens easy ones
    (h > tau, w < 1).
    """
    if prefs.scores is None:
        raise ValueError("objective madpo needs reward-model scores: Preferences(scores=...) / a scores column.")
    pair, w, l = build_pair(policy, reference, prefs)
    scores = prefs.scores.to(pair.logp_w)
    weight = madpo_weight(take(scores, w) - take(scores, l), c_max, c_min, lam, tau)
    return ObjectiveOutput(losses=weight * dpo(pair, beta=beta), metrics=pair_metrics(pair, beta))


def modpo(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    weights: tuple[float, ...] = (0.5, 0.5),
) -> ObjectiveOutput:
    """MODPO (Zhou et al. 2023, arXiv 2310.03708, Eq. 6): -logsig((1/w0)[beta Delta - w_rest . (m_w - m_l)]).

    ``weights`` = (w0, w_1..w_M); the M margin rewards of each candidate come from
    ``Preferences.margin_rewards [B, K, M]``.
    """
    if prefs.margin_rewards is None:
        raise ValueError(
            "objective modpo needs Preferences(margin_rewards=[B, K, M]) from the other objectives' rewards."
        )
    pair, w, l = build_pair(policy, reference, prefs)
    margins = prefs.margin_rewards.to(pair.logp_w)
    if margins.shape[-1] != len(weights) - 1:
        raise ValueError(
            f"objective.weights has {len(weights)} entries; it needs 1 + {margins.shape[-1]} (w0 and one per margin)."
        )
    w_rest = torch.tensor(weights[1:], dtype=margins.dtype, device=margins.device)
    margin = (take(margins, w) - take(margins, l)) @ w_rest
    losses = -F.logsigmoid((beta * pair.margin - margin) / weights[0])
    return ObjectiveOutput(losses=losses, metrics=pair_metrics(pair, beta))


def beta_dpo(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    alpha: float = 0.6,
    rho: float = 0.2,
    momentum: float = 0.9,
    state: dict | None = None,
) -> ObjectiveOutput:
    """beta-DPO (Wu et al. 2024, arXiv 2407.08639, Eq. 7-9): batch-adaptive beta and data filtering.

    As the official code (junkangwu/beta-DPO ``preference_loss``): the gaps M_i = Delta_i update EMA
    statistics (mean M0, unbiased std sigma; ``momentum``; zero at the start) before use; pairs are kept
    by weight exp(-((M_i - M0)/sigma)^2 / 2), here deterministically the top (1 - rho) fraction (the
    paper samples them without replacement); beta_batch = beta (1 + alpha (mean kept M - M0)), detached,
    at least 1e-3; the loss is -logsig(beta_batch Delta) averaged over the kept pairs (dropped pairs get
    0, kept ones are scaled by B / kept so the batch mean is that average). Pass the returned ``state``
    to the next call; ``gap_mean`` / ``gap_std`` are logged as the official code does.
    """
    pair, _, _ = build_pair(policy, reference, prefs)
    gap = pair.margin.detach()
    previous = state or {"mean": torch.zeros_like(gap[0]), "std": torch.zeros_like(gap[0])}
    batch_std = gap.std() if gap.numel() > 1 else torch.zeros_like(gap[0])
    mean = momentum * previous["mean"].to(gap) + (1 - momentum) * gap.mean()
    std = momentum * previous["std"].to(gap) + (1 - momentum) * batch_std
    keep_n = max(1, round((1 - rho) * gap.numel()))
    keep = torch.zeros_like(gap, dtype=torch.bool)
    # the largest weights exp(-((M - M0)/sigma)^2 / 2) are the smallest |M - M0| for any sigma > 0, without underflow
    keep[torch.topk(-(gap - mean).abs(), keep_n).indices] = True
    beta_batch = (beta * (1 + alpha * (gap[keep].mean() - mean))).clamp_min(1e-3)
    losses = -F.logsigmoid(beta_batch * pair.margin) * keep * (gap.numel() / keep_n)
    metrics = {**pair_metrics(pair, beta), "beta": beta_batch, "gap_mean": mean, "gap_std": std}
    return ObjectiveOutput(losses=losses, metrics=metrics, state={"mean": mean, "std": std})
