"""The order groups are trained in: seeded shuffles per epoch, shared out over processes, resumable at any step.

An order is ``order(n, batch_size, world, rank, seed, epoch) -> this process's batches of row indices`` for one
epoch; :func:`epoch_batches` is the default, and a curriculum is another order with the same signature."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch.utils.data import DataLoader


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's share of each global batch of one epoch, in a seeded order; the tail is dropped."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    global_batch = batch_size * world
    return [
        order[start + rank * batch_size : start + (rank + 1) * batch_size]
        for start in range(0, n - global_batch + 1, global_batch)
    ]


Order = Callable[[int, int, int, int, int, int], list[list[int]]]


def micro_batches(
    dataset, collate_fn: Callable, tc, *, world: int, rank: int, per_epoch: int, start_step: int, num_workers: int,
    order: Order = epoch_batches,
) -> Iterator:  # fmt: skip
    """This process's micro-batches from optimizer step ``start_step`` on, epoch after epoch, in ``order``."""
    epoch, offset = divmod(start_step * tc.grad_accum, per_epoch * tc.grad_accum)
    while True:
        batches = order(len(dataset), tc.batch_size, world, rank, tc.seed, epoch)[: per_epoch * tc.grad_accum]
        collate = partial(collate_fn, epoch=epoch)
        yield from DataLoader(dataset, batch_sampler=batches[offset:], collate_fn=collate, num_workers=num_workers)
        epoch, offset = epoch + 1, 0
