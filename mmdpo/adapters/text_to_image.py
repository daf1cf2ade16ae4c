"""Text-to-image: SD1.5- and SDXL-style latent diffusion models from diffusers, trained on image preference groups.

    model = load_text_to_image("stabilityai/stable-diffusion-xl-base-1.0")   # or a local dir, tiny:sd15, tiny:sdxl
    adapter = TextToImageAdapter(model, reference="copy", media=ImageMedia(resolution=1024))
    inputs = adapter.inputs(batch)                  # latents, conditions, one (t, noise) per group, no gradients
    policy = adapter.policy_loglik(adapter.scorer, batch, inputs, adapter.reference(batch, inputs))

The latent-diffusion core (:mod:`mmdpo.adapters.latent_diffusion`) does the scoring, sampling and saving, the
families (:mod:`~mmdpo.adapters.latent_diffusion.families`) what differs between SD1.5 and SDXL; this module adds
the images: their data section, loading and checking them, and one resize/crop/flip per group
(:class:`~mmdpo.data.images.GroupTransform`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from mmdpo.adapters.latent_diffusion.adapter import LatentDiffusionAdapter
from mmdpo.adapters.latent_diffusion.families.sd15 import SD15
from mmdpo.adapters.latent_diffusion.families.sdxl import SDXL
from mmdpo.adapters.latent_diffusion.media import load_checked_source
from mmdpo.adapters.latent_diffusion.model import LatentDiffusionModel, load_model
from mmdpo.adapters.latent_diffusion.sections import LatentDataSection, LatentModelSection, NoisingSection
from mmdpo.data.images import GroupTransform, TransformedGroup, check_images, decode_image, load_image_groups
from mmdpo.data.loaders import GroupSet

__all__ = [
    "FAMILIES", "ImageDataSection", "ImageMedia", "LatentModelSection", "NoisingSection", "TextToImageAdapter",
    "load_image_source", "load_text_to_image",
]  # fmt: skip

FAMILIES = (SD15(), SDXL())


@dataclass
class ImageDataSection(LatentDataSection):
    """The ``data`` section of text-to-image models: ``resolution``, ``crop`` and ``flip`` (probability of a
    horizontal flip) are the image transform, applied identically to every candidate of a group."""

    resolution: int = 512
    crop: Literal["center", "random"] = "center"
    flip: float = 0.0


def load_image_source(path: str, split: str, config) -> GroupSet:
    """Image groups of one source of a config's ``data`` section, every image checked once (unreadable ones fatal or
    skipped, by ``data.bad_rows``)."""
    return load_checked_source(path, split, config, load_image_groups, check_images, "text-to-image")


@dataclass
class ImageMedia:
    """Square images of ``resolution`` pixels, one resize/crop/flip per group (:class:`GroupTransform`)."""

    resolution: int = 512
    crop: Literal["center", "random"] = "center"
    flip: float = 0.0
    transform: GroupTransform = field(init=False)

    def __post_init__(self) -> None:
        self.transform = GroupTransform(self.resolution, crop=self.crop, flip=self.flip)  # checks the settings

    @classmethod
    def from_section(cls, data: ImageDataSection) -> ImageMedia:
        return cls(data.resolution, data.crop, data.flip)

    def load_source(self, path: str, split: str, config) -> GroupSet:
        return load_image_source(path, split, config)

    def collate(
        self, rows: Sequence[dict[str, Any]], *, seed: int, epoch: int
    ) -> tuple[Tensor, list[TransformedGroup]]:
        """Each group's images decoded and transformed identically, seeded by (seed, epoch, the row's ``row_index``):
        pixels ``[B, K, 3, R, R]`` in [-1, 1] and the transform of each group (size and crop)."""

        def transformed(row: dict[str, Any]) -> TransformedGroup:
            images = [decode_image(image) for image in row["candidates"]]
            return self.transform(images, random.Random(f"{seed}/{epoch}/{row['row_index']}"))

        groups = [transformed(row) for row in rows]
        return torch.stack([group.pixels for group in groups]), groups

    def settings(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "crop": self.crop, "flip": self.flip}

    def sample(self, pipe, prompts: list[str], generators: list[torch.Generator], **options: Any) -> Tensor:
        """Images ``[P, 3, R, R]`` in [0, 1]."""
        size = self.resolution
        return pipe(prompts, generator=generators, height=size, width=size, output_type="pt", **options).images


class TextToImageAdapter(LatentDiffusionAdapter):
    """The latent-diffusion adapter over SD1.5 and SDXL on image preference groups (see the module docstring)."""

    data_section = ImageDataSection
    families = FAMILIES
    media_class = ImageMedia


def load_text_to_image(
    path: str, dtype: torch.dtype = torch.float32, *, encoders: bool = True, vae_path: str | None = None
) -> LatentDiffusionModel:
    """The parts of an SD1.5- or SDXL-style pipeline (:func:`~mmdpo.adapters.latent_diffusion.model.load_model`)."""
    return load_model(path, FAMILIES, dtype, encoders=encoders, vae_path=vae_path)
