"""A toy image domain with a known reward: one coloured shape on a plain background, 32 x 32 pixels.

Captions name the shape and its colour but not the background, so images of one prompt vary in brightness:
a preference for brighter images (higher mean luminance) is learnable and visible. The toy text-to-image model in
``assets/`` is trained on these scenes (``assets/train_toy_t2i.py``); the demo and the learning tests prompt it
with :func:`prompts`.
"""

from __future__ import annotations

import random

import PIL.Image
import PIL.ImageDraw

SHAPE_COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {**SHAPE_COLOURS, "white": (245, 245, 245), "grey": (128, 128, 128), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle")


def prompts() -> list[str]:
    """Every caption of the domain, ``a <colour> <shape>``, in a fixed order."""
    return [f"a {colour} {shape}" for shape in SHAPES for colour in SHAPE_COLOURS]


def render(shape: str, colour: str, background: str, rng: random.Random, size: int = 32) -> PIL.Image.Image:
    """One scene: the shape at a random position and scale on a plain background."""
    image = PIL.Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = PIL.ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.34) * size
    cx, cy = (rng.uniform(radius + 1, size - radius - 1) for _ in range(2))
    fill = SHAPE_COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=fill)
    else:
        raise ValueError(f"Unknown shape {shape!r}; choose one of {', '.join(SHAPES)}.")
    return image


def scene(rng: random.Random, size: int = 32) -> tuple[str, PIL.Image.Image]:
    """A random caption and an image that fits it (the background is any other colour)."""
    shape, colour = rng.choice(SHAPES), rng.choice(list(SHAPE_COLOURS))
    background = rng.choice([name for name in BACKGROUNDS if name != colour])
    return f"a {colour} {shape}", render(shape, colour, background, rng, size)
