"""What rewards score: images (PIL, or tensors in [0, 1] or uint8) and audio (waveforms with their sample rate).

Every image is turned into an RGB PIL image, the form the reward models were trained and evaluated on, and then goes
through the model's own preprocessing. Float tensors are quantised to 8 bits on the way, as saving them would
(``round(x * 255)``, the rounding of diffusers' ``numpy_to_pil``), so a float tensor and the PIL image made from it
score the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as F

Images = PIL.Image.Image | Tensor | Sequence[PIL.Image.Image | Tensor]
"""A PIL image, a sequence of them, a tensor [N, 3, H, W] or [3, H, W], or a sequence of [3, H, W] tensors."""


@dataclass(frozen=True)
class Audio:
    """Waveforms and their sample rate.

    Args:
        waveforms: a float tensor [N, T] or [N, C, T], or a sequence of [T] or [C, T] tensors or arrays, in [-1, 1];
            several channels are averaged to mono.
        sampling_rate: samples per second of every waveform.
    """

    waveforms: Tensor | Sequence[Tensor | np.ndarray]
    sampling_rate: int


def _tensor_to_pil(image: Tensor) -> PIL.Image.Image:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"An image tensor must be [3, H, W] (or a batch [N, 3, H, W]); got {list(image.shape)}.")
    if image.is_floating_point():
        low, high = image.min().item(), image.max().item()
        if low < 0 or high > 1:
            raise ValueError(
                f"Float images must lie in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                "map [-1, 1] decoder outputs with (x + 1) / 2."
            )
        image = image.mul(255).round().to(torch.uint8)
    elif image.dtype != torch.uint8:
        raise ValueError(f"Image tensors must be float in [0, 1] or uint8, got {image.dtype}.")
    return F.to_pil_image(image.cpu())


def _to_pil(image: PIL.Image.Image | Tensor) -> PIL.Image.Image:
    if isinstance(image, PIL.Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, Tensor):
        return _tensor_to_pil(image)
    raise TypeError(f"Expected a PIL image or an image tensor, got {type(image).__name__}.")


def to_pil_images(media: Images) -> list[PIL.Image.Image]:
    """RGB PIL images from any of the accepted image forms (see :data:`Images`)."""
    if isinstance(media, PIL.Image.Image) or (isinstance(media, Tensor) and media.ndim == 3):
        return [_to_pil(media)]
    if isinstance(media, Tensor) and media.ndim != 4:
        raise ValueError(f"An image batch must be [N, 3, H, W]; got a tensor of shape {list(media.shape)}.")
    if isinstance(media, (str, bytes)) or not isinstance(media, (Tensor, Sequence)):
        raise TypeError(f"Expected images (PIL images or tensors), got {type(media).__name__}.")
    return [_to_pil(image) for image in media]


def pixels(image: PIL.Image.Image) -> Tensor:
    """An RGB PIL image as a float tensor [3, H, W] in [0, 1]."""
    return F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)


def resample(waveform: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a mono waveform with libsoxr's high-quality band-limited resampler (``soxr.resample``, "HQ")."""
    if from_rate == to_rate:
        return waveform
    import soxr  # only audio at another rate needs it, so image rewards import without it

    return soxr.resample(waveform, from_rate, to_rate, quality="HQ")


def to_waveforms(media: Audio, sampling_rate: int) -> list[np.ndarray]:
    """Mono float32 waveforms at ``sampling_rate``, one per item of ``media``."""
    if not isinstance(media, Audio):
        raise TypeError(
            f"Audio rewards take Audio(waveforms, sampling_rate=...), got {type(media).__name__}; "
            "wrap the waveforms so their sample rate is known."
        )
    waveforms = []
    for wave in media.waveforms:
        wave = wave.detach().float().cpu().numpy() if isinstance(wave, Tensor) else np.asarray(wave, np.float32)
        if wave.ndim == 2:
            wave = wave.mean(axis=0)
        if wave.ndim != 1:
            raise ValueError(f"A waveform must be [T] or [channels, T]; got shape {list(wave.shape)}.")
        waveforms.append(resample(wave.astype(np.float32), media.sampling_rate, sampling_rate))
    return waveforms
