"""Rewards computed from the pixels alone, for toy tasks and tests: no weights, no downloads. Text is ignored except
by :class:`ColourMatch`."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping

import PIL.Image
import torch
from PIL import ImageColor
from torch import Tensor

from mmdpo.rewards.base import Reward
from mmdpo.rewards.media import pixels

BT601_LUMA = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights of R, G and B (they sum to 1, so white has luma 1)."""

COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "grey", "gray")
"""The default palette of :class:`ColourMatch`: CSS named colours, with their sRGB values from ``PIL.ImageColor``."""


class Brightness(Reward):
    """Mean luma in [0, 1]: the BT.601 weighted sum of the gamma-encoded R, G, B values, averaged over pixels."""

    name = "brightness"

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        weights = torch.tensor(BT601_LUMA)
        return torch.stack([torch.einsum("chw,c->hw", pixels(image), weights).mean() for image in items])


def colourfulness(image: Tensor) -> Tensor:
    """Hasler & Süsstrunk (2003), "Measuring colourfulness in natural images", on RGB in 0-255:
    ``M = sqrt(std(rg)^2 + std(yb)^2) + 0.3 * sqrt(mean(rg)^2 + mean(yb)^2)`` with ``rg = R - G``,
    ``yb = (R + G) / 2 - B`` and population standard deviations over the pixels."""
    r, g, b = image.double() * 255
    rg, yb = r - g, (r + g) / 2 - b
    spread = torch.sqrt(rg.var(correction=0) + yb.var(correction=0))
    return spread + 0.3 * torch.sqrt(rg.mean() ** 2 + yb.mean() ** 2)


class Colourfulness(Reward):
    """The Hasler & Süsstrunk (2003) colourfulness of an image (:func:`colourfulness`).

    On their scale 0 is grey, about 15 slightly, 33 moderately, 45 averagely, 59 quite, 82 highly and 109 extremely
    colourful.
    """

    name = "colourfulness"

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        return torch.stack([colourfulness(pixels(image)) for image in items])


class JpegCompressibility(Reward):
    """DDPO's compressibility reward (Black et al. 2023, arXiv 2305.13301): minus the size of the image saved as JPEG
    at ``quality`` (95, as ddpo-pytorch's ``jpeg_compressibility``), in kB of 1000 bytes."""

    name = "jpeg_compressibility"

    def __init__(self, quality: int = 95, batch_size: int = 16):
        super().__init__(batch_size)
        if not 0 <= quality <= 100:
            raise ValueError(f"JPEG quality must be in [0, 100], got {quality}.")
        self.quality = quality

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        sizes = []
        for image in items:
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=self.quality)
            sizes.append(buffer.tell() / 1000)
        return -torch.tensor(sizes)


class ColourMatch(Reward):
    """How close an image's mean colour is to the colours its prompt names, a toy prompt-following reward.

    The prompt's words (lower-cased runs of letters) that are palette names pick the target colours, each counted
    once; the target ``c`` is their mean, in sRGB [0, 1]. With ``m`` the image's mean RGB in [0, 1], the score is
    ``1 - ||m - c||_2 / sqrt(3)``, in [0, 1] (1 = exact match), and 0 when the prompt names no colour.

    Args:
        palette: colour names to sRGB 0-255 triplets; by default the CSS colours of :data:`COLOUR_NAMES` (e.g.
            green is (0, 128, 0), orange (255, 165, 0)).
    """

    name = "colour_match"

    def __init__(self, palette: Mapping[str, tuple[int, int, int]] | None = None, batch_size: int = 16):
        super().__init__(batch_size)
        palette = {name: ImageColor.getrgb(name) for name in COLOUR_NAMES} if palette is None else palette
        self.palette = {name.lower(): torch.tensor(rgb, dtype=torch.float64) / 255 for name, rgb in palette.items()}

    def target(self, prompt: str) -> Tensor | None:
        """The mean of the palette colours the prompt names, or None when it names none."""
        named = dict.fromkeys(word for word in re.findall(r"[a-z]+", prompt.lower()) if word in self.palette)
        return torch.stack([self.palette[word] for word in named]).mean(0) if named else None

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        scores = []
        for prompt, image in zip(prompts, items):
            target = self.target(prompt)
            mean = pixels(image).double().mean(dim=(1, 2))
            scores.append(0.0 if target is None else 1 - torch.linalg.vector_norm(mean - target).item() / math.sqrt(3))
        return torch.tensor(scores)
