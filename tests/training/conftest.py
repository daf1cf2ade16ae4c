"""Small image-preference datasets for the text-to-image training tests: the brighter image wins."""

import io

import pytest
import torch
from datasets import Dataset
from PIL import Image


def png(color, size=(20, 24)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def bright_and_dark(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        dark, bright = torch.randint(0, 100, (3,), generator=g), torch.randint(156, 256, (3,), generator=g)
        yield i, tuple(bright.tolist()), tuple(dark.tolist())


@pytest.fixture(scope="session")
def pickapic(tmp_path_factory):
    """Pick-a-Pic-style pairs (caption, jpg_0, jpg_1, label_0)."""
    rows = []
    for i, bright, dark in bright_and_dark(24):
        first_wins = i % 2 == 0
        a, b = (bright, dark) if first_wins else (dark, bright)
        rows.append(
            {"caption": f"a picture number {i}", "jpg_0": png(a), "jpg_1": png(b), "label_0": float(first_wins)}
        )
    path = tmp_path_factory.mktemp("pickapic") / "train.parquet"
    Dataset.from_list(rows).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def scored_pairs(tmp_path_factory):
    """Image pairs with a reward score per image (prompt, images, scores), for soft-label objectives."""
    rows = [
        {
            "prompt": f"a picture number {i}",
            "images": [png(bright), png(dark)],
            "scores": [sum(bright) / 765, sum(dark) / 765],
        }
        for i, bright, dark in bright_and_dark(24, seed=1)
    ]
    path = tmp_path_factory.mktemp("scored") / "train.parquet"
    Dataset.from_list(rows).to_parquet(path)
    return path


@pytest.fixture(scope="session")
def unpaired(tmp_path_factory):
    """One image per row with a like / dislike label (caption, image, label)."""
    rows = []
    for i, bright, dark in bright_and_dark(12, seed=2):
        rows.append({"caption": f"a picture number {i}", "image": png(bright), "label": True})
        rows.append({"caption": f"a picture number {i}", "image": png(dark), "label": False})
    path = tmp_path_factory.mktemp("unpaired") / "train.parquet"
    Dataset.from_list(rows).to_parquet(path)
    return path
