"""A reward defined outside mmdpo, named in configs by its import path (``custom_reward:Sharpness``)."""

import numpy as np
import torch

from mmdpo.rewards import Reward


def sharpness_by_hand(image, scale: float = 1.0) -> float:
    """``scale`` times the mean absolute difference of horizontally adjacent pixel values in [0, 1]."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255
    return scale * float(np.abs(np.diff(pixels, axis=1)).mean())


class Sharpness(Reward):
    """:func:`sharpness_by_hand` of each image, the prompt ignored."""

    name = "sharpness"

    def __init__(self, scale: float = 1.0, batch_size: int = 16):
        super().__init__(batch_size)
        self.scale = scale

    def score_batch(self, prompts: list[str], items: list) -> torch.Tensor:
        return torch.tensor([sharpness_by_hand(image, self.scale) for image in items])


def sharpness_x10(batch_size: int = 16) -> Sharpness:
    """A factory: sharpness at scale 10."""
    return Sharpness(scale=10.0, batch_size=batch_size)
