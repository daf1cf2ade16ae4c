"""What a latent-diffusion modality's candidates are (images, audio clips, videos): how a source loads, how a group's
candidates are transformed together, how a pipeline's samples come out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from mmdpo.adapters.latent_diffusion.family import Family
from mmdpo.data.loaders import GroupSet


class Media(Protocol):
    """A modality's candidates: how they load, how a group's are transformed and stacked, how they are sampled."""

    @classmethod
    def from_section(cls, data) -> Media:
        """The media settings of a ``data`` section."""
        ...

    def load_source(self, path: str, split: str, config) -> GroupSet:
        """The groups of one source, every candidate checked once."""
        ...

    def collate(self, rows: Sequence[dict[str, Any]], *, seed: int, epoch: int) -> tuple[Tensor, list[Any]]:
        """The rows' candidates ``[B, K, ...]`` as the VAE encodes them, transformed per group by a generator seeded
        with (seed, epoch, row), and each group's transform record (what a family reads its conditions from)."""
        ...

    def settings(self) -> dict[str, Any]:
        """The transform's settings (part of the encode cache's key)."""
        ...

    def sample(self, pipe, prompts: list[str], generators: list[torch.Generator], **options: Any) -> Tensor:
        """``pipe``'s samples ``[P, ...]`` in [0, 1] of ``prompts``, one generator each."""
        ...


def collate_media(
    media: Media, family: Family, rows: Sequence[dict[str, Any]], *, seed: int, epoch: int
) -> tuple[Tensor, dict[str, Tensor]]:
    """The rows' candidates ``[B, K, ...]`` (:meth:`Media.collate`) and the conditions ``[B, ...]`` by name that
    ``family`` reads from each group's transform."""
    candidates, groups = media.collate(rows, seed=seed, epoch=epoch)
    conditions = [family.group_conditions(group) for group in groups]
    return candidates, {name: torch.tensor([group[name] for group in conditions]) for name in conditions[0]}


def load_checked_source(
    path: str, split: str, config, load: Callable[..., GroupSet], check: Callable[[GroupSet, str], GroupSet], task: str
) -> GroupSet:
    """The groups of one source of a config's ``data`` section, read by ``load`` (a media loader of
    :mod:`mmdpo.data`, with the section's format, ties, bad-row and pairing options) and every candidate checked once
    by ``check`` (unusable ones fatal or skipped, by ``data.bad_rows``); ``task`` names the modality in messages."""
    data = config.data
    if path == "toy":
        raise ValueError(f"data.path=toy is the text task; give {task} training a dataset path.")
    groups = load(path, format=data.format, split=split, ties=data.ties, bad_rows=data.bad_rows, pairs=data.pairs)
    return check(groups, data.bad_rows)
