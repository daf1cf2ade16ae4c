"""Token-level pairwise losses (K = 2): the log-ratio is weighed token by token, or restricted to one step.

All read per-token LogLiks (``[B, K, U]`` values with a mask) plus extras the adapter attaches when the
objective asks for them (:attr:`mmdpo.objectives.Objective.extras`):

- ``token_kl`` (policy, differentiable): KL(pi_ref(.|x, y<t) || pi_theta(.|x, y<t)) over the whole vocabulary at
  every completion token; its sum over a response is TDPO's sequential KL D(x, y);
- ``mask``, or ``mask_u`` and ``mask_d`` (policy): SparsePO's learned token masks;
- ``layer_means`` (reference): ``[B, K, U, L]`` the reference's mean activation of every decoder layer at every
  token, from which SparsePO's non-learned masks are derived;
- ``guidance`` (reference): per-token log-probs of TGDPO's guidance model;
- ``step_index`` (policy): the reasoning step each token belongs to, 0 = the first step after the shared prefix.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from mmdpo.objectives.core import LogLik, ObjectiveOutput, Preferences
from mmdpo.objectives.pairwise import chosen_rejected, dpo, pairwise, reward_metrics, take

MaskKind = Literal["learned", "reference"]


def _extra(loglik: LogLik, name: str, objective: str) -> Tensor:
    if name not in loglik.extras:
        raise ValueError(
            f"objective {objective} needs per-token {name!r} in the LogLik extras; this adapter did not provide it."
        )
    return loglik.extras[name]


def _token_values(policy: LogLik, objective: str) -> Tensor:
    if not policy.per_unit:
        raise ValueError(
            f"objective {objective} needs per-token log-likelihoods ([B, K, U]); this adapter gives one per candidate."
        )
    return policy.values


def _token_kl_pair(
    policy: LogLik, reference: LogLik, prefs: Preferences, objective: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chosen and rejected indices, the ``[B, K, U]`` log-ratios and KLs (zero on padding)."""
    values = _token_values(policy, objective)
    w, l = chosen_rejected(prefs, values.shape[1])
    real = policy.mask.to(values.dtype)
    ratio = (values - reference.values.to(values.dtype)) * real
    kl = _extra(policy, "token_kl", objective).to(values.dtype) * real
    return w, l, ratio, kl


def _kl_metrics(value: Tensor, seq_kl: Tensor, policy: LogLik, w: Tensor, l: Tensor, beta: float) -> dict[str, Tensor]:
    """TRL's names with the reward beta * value, plus ``kl/chosen`` and ``kl/rejected``: the sequential KL D(y)."""
    logp = policy.total()
    metrics = reward_metrics(beta * take(value, w), beta * take(value, l), take(logp, w), take(logp, l))
    metrics["kl/chosen"] = take(seq_kl, w).detach().mean()
    metrics["kl/rejected"] = take(seq_kl, l).detach().mean()
    return metrics


def tdpo(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    alpha: float = 0.5,
    variant: Literal["tdpo1", "tdpo2"] = "tdpo2",
) -> ObjectiveOutput:
    """TDPO (Zeng et al., ICML 2024, arXiv 2404.11999; its TDPO1 and TDPO2 losses), as the official ``tdpo_loss``.

    With u = r(y_w) - r(y_l) and the sequential KL D(y) = sum_t KL(pi_ref(.|x, y<t) || pi_theta(.|x, y<t)):
    ``tdpo1`` -logsig(beta (u - (D(y_l) - D(y_w)))); ``tdpo2`` -logsig(beta (u - alpha (D(y_l) - sg D(y_w)))).
    The default is TDPO2, the paper's main method and the official function's default (its
    ``config/loss/tdpo.yaml`` says ``if_tdpo2: false``; the README recommends TDPO1 for low learning rates
    only). The reward logged is beta (r + D), as the official code logs it; ``kl/*`` is D.
    """
    w, l, ratio, kl = _token_kl_pair(policy, reference, prefs, "tdpo")
    r, seq_kl = ratio.sum(-1), kl.sum(-1)
    d_w, d_l = take(seq_kl, w), take(seq_kl, l)
    u = take(r, w) - take(r, l)
    if variant == "tdpo1":
        logits = u - (d_l - d_w)
    elif variant == "tdpo2":
        logits = u - alpha * (d_l - d_w.detach())
    else:
        raise ValueError(f"objective.variant={variant!r} is unknown; use tdpo1 or tdpo2.")
    losses = -F.logsigmoid(beta * logits)
    return ObjectiveOutput(losses=losses, metrics=_kl_metrics(r + seq_kl, seq_kl, policy, w, l, beta))


def mask_extras(mask: MaskKind, independent: bool) -> frozenset[str]:
    """The extras SparsePO asks of the adapter beyond ``token_kl``, by mask kind."""
    if mask == "reference":
        if independent:
            raise ValueError("objective.independent=true needs objective.mask=learned (two mask networks).")
        return frozenset({"layer_means"})
    if mask == "learned":
        return frozenset({"mask_u", "mask_d"} if independent else {"mask"})
    raise ValueError(f"objective.mask={mask!r} is unknown; use learned or reference.")


def rescaled_activations(layer_means: Tensor, real: Tensor) -> Tensor:
    """``[B, K, U]`` non-learned token masks from ``[B, K, U, L]`` per-layer mean activations.

    Per layer and response, the activation is z-normalised and min-max rescaled to [0, 1] over the real
    tokens (the official ``zn_rescale``; the z-score cancels, leaving min-max), then the layers are averaged. A
    response whose activation is constant over its tokens gets mask 1 (the official code divides by zero).
    """
    x = layer_means.float()
    keep = real.unsqueeze(-1)
    low = x.masked_fill(~keep, torch.inf).amin(-2, keepdim=True)
    high = x.masked_fill(~keep, -torch.inf).amax(-2, keepdim=True)
    span = high - low
    scaled = torch.where(span > 0, (x - low) / span.clamp_min(torch.finfo(x.dtype).tiny), torch.ones_like(x))
    return (scaled * keep).mean(-1)


def sparsepo(
    policy: LogLik,
    reference: LogLik,
    prefs: Preferences,
    *,
    beta: float = 0.1,
    mask: MaskKind = "learned",
    independent: bool = False,
    l1_u: float = 0.0,
    l1_d: float = 0.0,
) -> ObjectiveOutput:
    """SparsePO (Christopoulou et al. 2024, arXiv 2410.05102; its masked TDPO loss), as the official ``SparseTrainer``.

    -logsig(beta (u - d)) with u = sum_t m^u_t r_t(y_w) - sum_t m^u_t r_t(y_l) and d the same sums of
    m^d_t k_t, k_t = -KL_t (the per-token KL of TDPO). With every mask 1 this is TDPO1.

    ``mask``: ``learned`` (default; the paper's masks) reads ``mask`` (one network for u and d,
    "sparse-common", the official default) or ``mask_u`` and ``mask_d`` (``independent=true``,
    "sparse-indp") from the policy's extras: ReLU outputs of a small network on the reference's hidden
    states, trained with the policy. The loss adds l1_u (||m^u_w||_1 + ||m^u_l||_1) + l1_d (||m^d_w||_1 +
    ||m^d_l||_1), with both coefficients halved for a shared mask as the official code does. ``reference``:
    one non-learned mask for u and d from the reference's activations (:func:`rescaled_activations`, the
    paper's "MaPO", unrelated to the diffusion objective ``mapo``; the official code hooks MLP and attention
    internals through patched model files, this reads every decoder layer's output, which any transformers
    model gives), no L1 term.
    beta = 0.1 as the official config (its IMDB and TL;DR recipes: 0.8). The reward logged is
    beta (sum_t m^u_t r_t + sum_t m^d_t KL_t), the value the loss compares (the official code logs it with the
    KL's sign flipped); ``kl/*`` is the unmasked D; ``mask/mean`` and ``mask/sparsity`` (the share of real
    tokens at 0) describe the learned reward mask.
    """
    mask_extras(mask, independent)
    w, l, ratio, kl = _token_kl_pair(policy, reference, prefs, "sparsepo")
    real = policy.mask

    def learned(name: str) -> Tensor:
        return _extra(policy, name, "sparsepo").to(ratio.dtype) * real

    if mask == "reference":
        m_u = m_d = rescaled_activations(_extra(reference, "layer_means", "sparsepo"), real).to(ratio.dtype)
    elif independent:
        m_u, m_d = learned("mask_u"), learned("mask_d")
    else:
        m_u = m_d = learned("mask")
    value = (m_u * ratio).sum(-1) + (m_d * kl).sum(-1)
    losses = -F.logsigmoid(beta * (take(value, w) - take(value, l)))
    metrics = _kl_metrics(value, kl.sum(-1), policy, w, l, beta)
    if mask == "learned":
        scale = 1.0 if independent else 0.5
        losses = losses + scale * (l1_u * m_u.abs().sum((-1, -2)) + l1_d * m_d.abs().sum((-1, -2)))
        metrics["mask/mean"] = ((m_u * real).sum() / real.sum()).detach()
        metrics["mask/sparsity"] = ((m_u == 0) & real).sum() / real.sum()
    return ObjectiveOutput(losses=losses, metrics=metrics)


def tgdpo(
    policy: LogLik, reference: LogLik, prefs: Preferences, *, beta: float = 0.1, alpha: float = 0.5
) -> ObjectiveOutput:
    """TGDPO (Zhu et al., ICML 2025, arXiv 2506.14574; its practical loss), as the official ``dpo_loss``.

    -logsig( sum_t beta (1 + alpha beta rhat_t) r_t(y_w) - sum_t beta (1 - alpha beta rhat_t) r_t(y_l) ) with
    the token reward rhat_t = log pi_guide(y_t) - log pi_ref(y_t) of a guidance model (any DPO/SimPO-trained
    model with the policy's tokenizer; ``extras["guidance"]`` of the reference), detached. Defaults as the
    official recipe; the reward logged is beta r, as the official code logs it.
    """
    values = _token_values(policy, "tgdpo")
    w, l = chosen_rejected(prefs, values.shape[1])
    ref = reference.values.to(values.dtype)
    token_reward = (_extra(reference, "guidance", "tgdpo").to(values.dtype) - ref).detach()
    ratio = (values - ref) * policy.mask
    chosen = (take(ratio, w) * beta * (1 + alpha * beta * take(token_reward, w))).sum(-1)
    rejected = (take(ratio, l) * beta * (1 - alpha * beta * take(token_reward, l))).sum(-1)
    losses = -F.logsigmoid(chosen - rejected)
    r, logp = ratio.sum(-1), policy.total()
    metrics = reward_metrics(beta * take(r, w), beta * take(r, l), take(logp, w), take(logp, l))
    return ObjectiveOutput(losses=losses, metrics=metrics)


_DPO = pairwise(dpo)


def step_dpo(policy: LogLik, reference: LogLik, prefs: Preferences, *, beta: float = 0.5) -> ObjectiveOutput:
    """Step-DPO (Lai et al. 2024, arXiv 2406.18629; its step-wise DPO loss): DPO on the first erroneous step only.

    The correct steps both candidates share are part of the condition (the prompt), so the chosen step
    and the rejected (first wrong) step are scored in the same context; tokens of later steps
    (``step_index`` > 0, e.g. the rest of a full solution) are left out. beta = 0.5 as the official 7B
    script (0.4 for 72B; its ``config_full.yaml`` says 0.05). For SCDPO (Lu et al. 2024, arXiv 2407.00782),
    DPO on whole solutions that part at the first error, use ``dpo`` on the same data: the shared prefix's
    log-ratios cancel, so it equals DPO on the continuations.
    """
    steps = _extra(policy, "step_index", "step_dpo").to(policy.mask.device)
    first = policy.mask & (steps == 0)
    return _DPO(LogLik(policy.values, first), LogLik(reference.values, first), prefs, beta=beta)
