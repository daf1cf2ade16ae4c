"""The reward interface: ``reward(prompts, media) -> Tensor [N]``, one float per item, higher is better."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmdpo.rewards.media import to_pil_images


class Reward(nn.Module, ABC):
    """A scorer of (prompt, media) items.

    Subclasses set ``name`` and implement :meth:`score_batch`; :meth:`prepare` turns the caller's media into a list
    of items (RGB PIL images by default, see :mod:`mmdpo.rewards.media`). Calling a reward scores the items in
    batches of ``batch_size`` under inference mode, on the device and in the dtype it was moved to with
    ``.to(device, dtype)``, and returns float32 scores on the CPU. A single prompt string applies to every item.

    Model rewards also have ``from_pretrained(path_or_id, ..., device=None, dtype=None)`` (a local path, or a hub id
    that downloads only when the network allows; float32 unless ``dtype`` says otherwise, whatever the checkpoint's
    dtype) and ``tiny()`` (random weights from a tiny config, for tests).
    """

    name: str

    def __init__(self, batch_size: int = 16):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        self.batch_size = batch_size

    def prepare(self, media: Any) -> list:
        """The caller's media as a list of items, one per prompt."""
        return to_pil_images(media)

    @abstractmethod
    def score_batch(self, prompts: list[str], items: list) -> Tensor:
        """Scores [n] of one batch of n <= ``batch_size`` prepared items."""

    def forward(self, prompts: str | Sequence[str], media: Any) -> Tensor:
        """Scores [N] (float32, CPU) of N items of media, each with its prompt."""
        return self.score_items(prompts, self.prepare(media))

    @torch.inference_mode()
    def score_items(self, prompts: str | Sequence[str], items: list) -> Tensor:
        """Scores [N] (float32, CPU) of N prepared items, in batches of ``batch_size``."""
        prompts = [prompts] * len(items) if isinstance(prompts, str) else list(prompts)
        if len(prompts) != len(items):
            raise ValueError(f"{self.name}: got {len(prompts)} prompts for {len(items)} media items; give one each.")
        size = self.batch_size
        scores = [self.score_batch(prompts[i : i + size], items[i : i + size]) for i in range(0, len(items), size)]
        return torch.cat([s.float().cpu() for s in scores]) if scores else torch.zeros(0)

    @property
    def device(self) -> torch.device:
        """Where the weights live (the CPU for rewards without weights)."""
        return next(self.parameters(), torch.zeros(())).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the floating-point weights (float32 for rewards without weights)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), torch.float32)


class CallableReward(Reward):
    """Any function ``fn(prompts, items) -> one score per item`` as a reward, e.g. for a rule or an API judge.

    Args:
        fn: takes a batch of prompts and of items as ``prepare`` makes them and returns a sequence or tensor of
            floats, one per item.
        name: the reward's name in ensembles and tables.
        batch_size: items per call of ``fn``.
        prepare: turns the caller's media into items; RGB PIL images by default. For audio, e.g.
            ``functools.partial(to_waveforms, sampling_rate=16000)``.
    """

    def __init__(
        self,
        fn: Callable[[list[str], list], Sequence[float] | Tensor],
        name: str,
        batch_size: int = 16,
        prepare: Callable[[Any], list] = to_pil_images,
    ):
        super().__init__(batch_size)
        self.fn, self.name, self.prepare_fn = fn, name, prepare

    def prepare(self, media: Any) -> list:
        return self.prepare_fn(media)

    def score_batch(self, prompts: list[str], items: list) -> Tensor:
        scores = torch.as_tensor(self.fn(prompts, items), dtype=torch.float32)
        if scores.shape != (len(items),):
            raise ValueError(
                f"{self.name}: the function returned scores of shape {list(scores.shape)} for {len(items)} items; "
                "return one float per item."
            )
        return scores
