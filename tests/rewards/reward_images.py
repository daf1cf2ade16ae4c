"""Images with known pixel statistics for the reward tests."""

import PIL.Image


def solid(rgb: tuple[int, int, int], size: tuple[int, int] = (24, 16)) -> PIL.Image.Image:
    """A single-colour RGB image (non-square by default, so resizing and cropping take part)."""
    return PIL.Image.new("RGB", size, rgb)
