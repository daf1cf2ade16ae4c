"""Per-group randomness: every draw of a group (posterior sample, prompt dropout, timestep, noise) comes from the
group's own generator, seeded by (seed, epoch, row), so it does not depend on the batch, the process or a restart.

The draws are made in one order whatever the source of the batch (media or the encode cache): the latents'
posterior samples, the prompt dropout, then the timesteps and noise (:mod:`mmdpo.adapters.latent_diffusion.noising`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None
"""The randomness of a batch of B groups: one generator for the whole batch, one per group (the trainer's choice:
group b's draws come from generator b alone, so they do not depend on the batch or the process it lands in), or
None for the global generator."""


def group_seeds(rows: Sequence[dict[str, Any]], seed: int, epoch: int) -> Tensor:
    """``[B]`` seeds of the groups' randomness, a hash of (seed, epoch, the row's ``row_index``): a group draws the
    same noise whatever batch, process or resumed run it lands in, and new noise every epoch."""
    digests = [hashlib.blake2b(f"{seed}/{epoch}/{row['row_index']}".encode(), digest_size=8).digest() for row in rows]
    return torch.tensor([int.from_bytes(digest, "little") >> 1 for digest in digests], dtype=torch.long)


def group_generators(seeds: Tensor, device: torch.device) -> list[torch.Generator]:
    """One generator on ``device`` per group seed."""
    return [torch.Generator(device).manual_seed(seed) for seed in seeds.tolist()]


def draw_per_group(
    sample: Callable[..., Tensor], size: tuple[int, ...], generator: Generators, device: torch.device
) -> Tensor:
    """``sample(size, generator=, device=)`` (``torch.randn``, ``torch.rand``, ...) for a ``[B, ...]`` batch: from one
    generator, or row b from the b-th of B generators. Drawn on the generators' device, returned there."""
    if isinstance(generator, Sequence):
        return torch.cat([sample((1, *size[1:]), generator=g, device=device) for g in generator])
    return sample(size, generator=generator, device=device)


def generator_device(generator: Generators, fallback: torch.device) -> torch.device:
    """Where ``generator`` draws (the first one's device for a list), else ``fallback``."""
    if isinstance(generator, Sequence):
        return generator[0].device
    return generator.device if generator is not None else fallback


def drop_conditions(
    conditions: dict[str, Tensor],
    empty: dict[str, Tensor],
    probability: float,
    generator: Generators = None,
) -> dict[str, Tensor]:
    """Replace each group's conditions (all of them together) by the ``empty`` ones with ``probability``.

    ``conditions`` are ``[B, ...]`` tensors; ``empty`` holds one ``[1, ...]`` or ``[...]`` tensor per name
    (classifier-free guidance dropout, decided once per group).
    """
    if probability <= 0:
        return conditions
    first = next(iter(conditions.values()))
    device = generator_device(generator, first.device)
    drop = (draw_per_group(torch.rand, (first.shape[0],), generator, device) < probability).to(first.device)
    return {
        name: torch.where(drop.view(-1, *[1] * (value.dim() - 1)), empty[name].to(value).expand_as(value), value)
        for name, value in conditions.items()
    }
