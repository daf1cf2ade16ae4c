"""What token-level objectives need from a causal LM beyond per-token log-probs.

- :func:`layer_outputs`: every decoder layer's output at the scored positions, picked by forward hooks while
  the (reference) forward runs, so only ``[M, H]`` per layer (or its mean, ``[M]``) outlives the layer.
- :class:`TokenMask`: SparsePO's mask network over those states, trained with the policy.
- :func:`base_head`: the output layer with any peft adapter left out, the reference head of ``reference=adapter``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


@contextlib.contextmanager
def layer_outputs(decoder: nn.Module, positions: Tensor, reduce: bool) -> Iterator[list[Tensor]]:
    """Collect each decoder layer's output at ``positions`` (flat indices into ``[rows * length]``) as it runs.

    Yields a list that fills with one ``[M, H]`` tensor per layer, or its fp32 mean over H (``[M]``) with
    ``reduce``; stack it after the forward.
    """
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"{type(decoder).__name__} keeps no decoder layers at .layers, which token masks read.")
    captured: list[Tensor] = []

    def keep(module: nn.Module, args: tuple, output: Tensor | tuple) -> None:
        hidden = output[0] if isinstance(output, tuple) else output
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        captured.append(picked.float().mean(-1) if reduce else picked)

    handles = [layer.register_forward_hook(keep) for layer in layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


class _MaskNetwork(nn.Module):
    """One SparsePO mask: a shared LayerNorm, per layer Linear(H, 1) and ReLU, a bias-free Linear(L, 1), a ReLU."""

    def __init__(self, hidden_size: int, num_layers: int, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.per_layer = nn.ModuleList(nn.Linear(hidden_size, 1) for _ in range(num_layers))
        self.mixer = nn.Linear(num_layers, 1, bias=False)

    def forward(self, states: Tensor) -> Tensor:
        normed = self.norm(states.to(self.norm.weight.dtype))
        scores = torch.cat([torch.relu(linear(normed[:, i])) for i, linear in enumerate(self.per_layer)], -1)
        return torch.relu(self.mixer(scores)).squeeze(-1)


class TokenMask(nn.Module):
    """SparsePO's learned token masks (Christopoulou et al. 2024, arXiv 2410.05102; the official ``simple_all``).

    Every decoder layer's reference hidden state at a token goes through one LayerNorm, its own Linear(H, 1)
    and a ReLU; a bias-free Linear(L, 1) mixes the layers and a ReLU gives a mask >= 0 (not capped at 1).
    ``names`` is ``("mask",)`` (one network for reward and KL) or ``("mask_u", "mask_d")`` (independent ones).
    Initialised as ``nn.Linear`` is, as the official code; no dropout (the official trainer disables its 0.01).
    Runs ``chunk_size`` tokens at a time, recomputed in backward, so the fp32 LayerNorm output is never held for
    the whole batch.
    """

    def __init__(self, hidden_size: int, num_layers: int, names: Sequence[str], eps: float, chunk_size: int = 1024):
        super().__init__()
        self.names = tuple(names)
        self.chunk_size = chunk_size
        self.networks = nn.ModuleList(_MaskNetwork(hidden_size, num_layers, eps) for _ in self.names)

    def forward(self, layers: Tensor) -> dict[str, Tensor]:
        """``[M, L, H]`` reference layer states -> one ``[M]`` fp32 mask per name."""
        grad = torch.is_grad_enabled()
        masks = {}
        for name, network in zip(self.names, self.networks):
            parts = layers.split(self.chunk_size)
            masks[name] = torch.cat(
                [checkpoint(network, part, use_reentrant=False) if grad else network(part) for part in parts]
            ).float()
        return masks


def base_head(head: nn.Module) -> nn.Module:
    """The output layer without its peft adapter: a LoRA layer's ``base_layer``, a trained copy's original."""
    for name in ("base_layer", "original_module"):
        if isinstance(getattr(head, name, None), nn.Module):
            return getattr(head, name)
    return head
