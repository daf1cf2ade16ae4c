"""Pictures of images: labelled grids for training samples, ranked-set previews and before/after comparisons."""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import PIL.ImageDraw
import torch
import torch.nn.functional as F
from torch import Tensor


def image_grid(
    images: Tensor, row_labels: Sequence[str], column_labels: Sequence[str] | None = None, min_tile: int = 96
) -> PIL.Image.Image:
    """A PIL grid of ``images [R, C, 3, H, W]`` in [0, 1], each row labelled (e.g. its prompt), tiles enlarged to at
    least ``min_tile`` pixels (nearest neighbour, so small images stay sharp)."""
    rows, cols, _, height, width = images.shape
    scale = max(1, -(-min_tile // max(height, width)))
    tiles = F.interpolate(images.flatten(0, 1).float(), scale_factor=scale, mode="nearest").clamp(0, 1)
    tile_h, tile_w, pad, label_w = height * scale, width * scale, 4, 150
    top = 18 if column_labels else 0
    canvas = PIL.Image.new("RGB", (label_w + cols * (tile_w + pad), top + rows * (tile_h + pad)), "white")
    draw = PIL.ImageDraw.Draw(canvas)
    pixels = (tiles * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    for index, tile in enumerate(pixels):
        r, c = divmod(index, cols)
        canvas.paste(PIL.Image.fromarray(tile), (label_w + c * (tile_w + pad), top + r * (tile_h + pad)))
    for r, label in enumerate(row_labels):
        draw.text((4, top + r * (tile_h + pad) + tile_h // 2 - 6), label[:24], fill="black")
    for c, label in enumerate(column_labels or []):
        draw.text((label_w + c * (tile_w + pad) + 2, 3), label[: tile_w // 6], fill="black")
    return canvas
