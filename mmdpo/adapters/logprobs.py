"""Per-token log-probabilities of selected positions, in fp32, one chunk of the vocabulary projection at a time.

Only the positions that predict a scored token go through the output layer, and each chunk's
``[chunk, V]`` logits are recomputed in backward instead of stored, so peak memory holds one chunk of
fp32 logits rather than the whole ``[rows, length, V]`` tensor. The per-token KL to a reference (TDPO,
SparsePO) works the same way: the reference's final hidden states at the scored positions (``[M, H]``,
kept from its pass) go through its output layer one chunk at a time, beside the policy's chunk.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _logits(hidden: Tensor, head: nn.Module, scale: float, softcap: float | None) -> Tensor:
    logits = head(hidden).float() * scale
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def _chunk_logprobs(
    hidden: Tensor,
    targets: Tensor,
    head: nn.Module,
    scale: float,
    softcap: float | None,
    ref_hidden: Tensor | None,
    ref_head: nn.Module | None,
) -> tuple[Tensor, ...]:
    """Log-probs of ``targets``, and KL(reference || policy) over the vocabulary when ``ref_hidden`` is given.

    The KL is E_ref[logits_ref] - logZ_ref - (E_ref[logits] - logZ): no ``[chunk, V]`` log-softmax is kept, and
    identical models give exactly 0. The reference's side is done first, so at most three ``[chunk, V]``
    tensors live at once.
    """
    if ref_hidden is not None:
        with torch.no_grad():
            ref_logits = _logits(ref_hidden, ref_head, scale, softcap)
            ref_log_z = torch.logsumexp(ref_logits, dim=-1)
            ref_p = (ref_logits - ref_log_z[:, None]).exp_()
            ref_expected = (ref_p * ref_logits).sum(-1) - ref_log_z
            del ref_logits
    logits = _logits(hidden, head, scale, softcap)
    log_z = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets[:, None]).squeeze(-1) - log_z
    if ref_hidden is None:
        return (logp,)
    return logp, ref_expected - ((ref_p * logits).sum(-1) - log_z)


def _chunk_aligned(hidden: Tensor, targets: Tensor, head: nn.Module, scale: float, softcap: float | None) -> Tensor:
    """WPO's aligned log-prob ``log p_t - log sum_v p_v^2`` (WPO Eq. 6), no gradient."""
    logits = _logits(hidden, head, scale, softcap)
    log_z = torch.logsumexp(logits, dim=-1)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1) - log_z
    return picked - (torch.logsumexp(2 * logits, dim=-1) - 2 * log_z)


def selected_logprobs(
    hidden: Tensor,
    targets: Tensor,
    head: nn.Module,
    *,
    chunk_size: int = 1024,
    scale: float = 1.0,
    softcap: float | None = None,
    aligned: bool = False,
    reference: tuple[Tensor, nn.Module] | None = None,
) -> dict[str, Tensor]:
    """``log p(targets[i] | hidden[i])`` for ``M`` selected positions, and what else is asked for.

    Args:
        hidden: ``[M, H]`` final hidden states at the positions that predict ``targets``.
        targets: ``[M]`` token ids.
        head: the output layer (``model.get_output_embeddings()``; a LoRA-wrapped head works).
        chunk_size: rows per chunk; peak extra memory is about ``chunk_size * V * 4`` bytes, three times that
            with ``reference``.
        scale: logit multiplier (Cohere's ``logit_scale``), applied before soft-capping.
        softcap: final logit soft-capping (Gemma 2), when the model uses it.
        aligned: also return WPO's aligned log-probs (detached).
        reference: the reference's ``[M, H]`` final hidden states at the same positions and its output layer;
            adds the per-token KL(reference || policy) over the whole vocabulary. The reference's logits are
            computed chunk by chunk beside the policy's (and again in backward), never for the whole batch.

    Returns:
        fp32 ``[M]`` tensors: ``values`` (log-probs), ``wpo_logp`` with ``aligned``, ``token_kl`` with ``reference``.
    """
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    ref_hidden, ref_head = reference if reference is not None else (None, None)
    names = ("values", "token_kl") if reference is not None else ("values",)
    outs: dict[str, list[Tensor]] = {name: [] for name in names + (("wpo_logp",) if aligned else ())}
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        ref_h = None if ref_hidden is None else ref_hidden[start : start + chunk_size]
        args = (h, t, head, scale, softcap, ref_h, ref_head)
        chunk = checkpoint(_chunk_logprobs, *args, use_reentrant=False) if grad else _chunk_logprobs(*args)
        for name, value in zip(names, chunk):
            outs[name].append(value)
        if aligned:
            with torch.no_grad():
                outs["wpo_logp"].append(_chunk_aligned(h, t, head, scale, softcap))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    return {name: torch.cat(parts) if parts else empty for name, parts in outs.items()}
