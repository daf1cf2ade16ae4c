"""Pixel rewards against hand-computed values."""

import io
import math

import numpy as np
import PIL.Image
import pytest
import torch
from reward_images import solid

from mmdpo.rewards import Brightness, Colourfulness, ColourMatch, JpegCompressibility


def test_brightness_of_solid_colours_is_their_bt601_luma():
    colours = [(255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
    expected = [1.0, 0.0, 0.299, 0.587, 0.114, (0.299 * 10 + 0.587 * 20 + 0.114 * 30) / 255]
    scores = Brightness()("", [solid(c) for c in colours])
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-6, rtol=0)


def test_brightness_averages_over_pixels():
    half = np.zeros((8, 8, 3), dtype=np.uint8)
    half[:, :4] = 255
    assert Brightness()("", PIL.Image.fromarray(half)).item() == pytest.approx(0.5, abs=1e-6)


def test_colourfulness_of_a_half_red_half_blue_image():
    image = np.zeros((6, 10, 3), dtype=np.uint8)
    image[:, :5, 0] = 255  # left half red: rg = 255, yb = 127.5
    image[:, 5:, 2] = 255  # right half blue: rg = 0, yb = -255
    mean_rg, std_rg = 127.5, 127.5
    mean_yb, std_yb = (127.5 - 255) / 2, (127.5 + 255) / 2
    expected = math.hypot(std_rg, std_yb) + 0.3 * math.hypot(mean_rg, mean_yb)
    assert Colourfulness()("", PIL.Image.fromarray(image)).item() == pytest.approx(expected, rel=1e-6)


def test_colourfulness_is_zero_for_grey_and_mean_only_for_a_solid_colour():
    scores = Colourfulness()("", [solid((90, 90, 90)), solid((255, 0, 0))])
    torch.testing.assert_close(scores, torch.tensor([0.0, 0.3 * math.hypot(255, 127.5)]))


def test_jpeg_compressibility_is_minus_the_kilobytes_at_quality_95(images):
    def kilobytes(image, quality):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return len(buffer.getvalue()) / 1000

    scores = JpegCompressibility()("", images)
    torch.testing.assert_close(scores, torch.tensor([-kilobytes(image, 95) for image in images]))
    assert scores[0] > scores[1]  # a flat colour compresses far better than noise
    assert JpegCompressibility(quality=10)("", images[1]) > scores[1]
    with pytest.raises(ValueError, match=r"quality must be in \[0, 100\]"):
        JpegCompressibility(quality=101)


def test_colour_match_scores_the_distance_to_the_named_colours():
    reward = ColourMatch()
    red, blue, purple = solid((255, 0, 0)), solid((0, 0, 255)), solid((128, 0, 128))
    scores = reward(
        ["a RED car", "a red car", "red and blue, blue again", "a reddish car", "a car", "grey"],
        [red, blue, purple, red, red, solid((128, 128, 128))],
    )
    half = 128 / 255 - 0.5  # purple against the mean of red and blue, (0.5, 0, 0.5)
    expected = [1.0, 1 - math.sqrt(2 / 3), 1 - math.hypot(half, half) / math.sqrt(3), 0.0, 0.0, 1.0]
    torch.testing.assert_close(scores, torch.tensor(expected))


def test_colour_match_with_a_custom_palette():
    reward = ColourMatch(palette={"Teal": (0, 128, 128)})
    assert reward("teal", solid((0, 128, 128))).item() == pytest.approx(1.0)
    assert reward("red", solid((255, 0, 0))).item() == 0.0
