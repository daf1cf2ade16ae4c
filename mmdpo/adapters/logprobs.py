"""Per-token log-probabilities of selected positions, in fp32, one chunk of the vocabulary projection at a time.

Only the positions that predict a scored token go through the output layer, and each chunk's
``[chunk, V]`` logits are recomputed in backward instead of stored, so peak memory holds one chunk of
fp32 logits rather than the whole ``[rows, length, V]`` tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def _logits(hidden: Tensor, head: nn.Module, scale: float, softcap: float | None) -> Tensor:
    logits = head(hidden).float() * scale
    return logits if softcap is None else softcap * torch.tanh(logits / softcap)


def _chunk_logprobs(hidden: Tensor, targets: Tensor, head: nn.Module, scale: float, softcap: float | None) -> Tensor:
    logits = _logits(hidden, head, scale, softcap)
    picked = logits.gather(-1, targets[:, None]).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


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
) -> Tensor | tuple[Tensor, Tensor]:
    """``log p(targets[i] | hidden[i])`` for ``M`` selected positions.

    Args:
        hidden: ``[M, H]`` final hidden states at the positions that predict ``targets``.
        targets: ``[M]`` token ids.
        head: the output layer (``model.get_output_embeddings()``; a LoRA-wrapped head works).
        chunk_size: rows per chunk; peak extra memory is ``chunk_size * V * 4`` bytes.
        scale: logit multiplier (Cohere's ``logit_scale``), applied before soft-capping.
        softcap: final logit soft-capping (Gemma 2), when the model uses it.
        aligned: also return WPO's aligned log-probs (detached).

    Returns:
        ``[M]`` fp32 log-probs, and the ``[M]`` aligned log-probs when ``aligned``.
    """
    grad = torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters()))
    outs, aligned_outs = [], []
    for start in range(0, hidden.shape[0], chunk_size):
        h, t = hidden[start : start + chunk_size], targets[start : start + chunk_size]
        if grad:
            outs.append(checkpoint(_chunk_logprobs, h, t, head, scale, softcap, use_reentrant=False))
        else:
            outs.append(_chunk_logprobs(h, t, head, scale, softcap))
        if aligned:
            with torch.no_grad():
                aligned_outs.append(_chunk_aligned(h, t, head, scale, softcap))
    empty = hidden.new_zeros(0, dtype=torch.float32)
    logp = torch.cat(outs) if outs else empty
    if aligned:
        return logp, (torch.cat(aligned_outs) if aligned_outs else empty)
    return logp
