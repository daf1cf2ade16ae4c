"""Media conversion, resampling, the interface's batching and bad input."""

import numpy as np
import PIL.Image
import pytest
import torch
from reward_images import solid
from torchvision.transforms.v2 import functional as F

from mmdpo.rewards import Audio, Brightness, CallableReward, Colourfulness, to_pil_images, to_waveforms
from mmdpo.rewards.media import resample


def test_tensors_and_pil_images_convert_alike(images):
    uint8 = [F.pil_to_tensor(image) for image in images]
    floats = [t.float() / 255 for t in uint8]
    for media in (uint8, floats, torch.stack([uint8[0], uint8[0]])):
        converted = to_pil_images(media)
        expected = images if len(media) == len(images) else [images[0]] * 2
        assert [np.array(c).tolist() for c in converted] == [np.array(e).tolist() for e in expected]
    assert len(to_pil_images(uint8[0])) == 1 and len(to_pil_images(images[0])) == 1


def test_float_images_round_to_the_nearest_8_bit_value():
    image = torch.full((3, 2, 2), 0.5)  # 127.5 rounds to 128 (to_pil_image would truncate to 127)
    assert np.array(to_pil_images(image)[0]).max() == 128


def test_non_rgb_pil_images_are_converted():
    grey = PIL.Image.new("L", (4, 4), 200)
    assert to_pil_images([grey])[0].mode == "RGB"


@pytest.mark.parametrize(
    ("media", "message"),
    [
        (torch.full((1, 3, 4, 4), 1.5), r"Float images must lie in \[0, 1\]"),
        (torch.zeros(1, 4, 4, 4), r"must be \[3, H, W\]"),
        (torch.zeros(3, 4, 4, dtype=torch.int32), "float in"),
        (torch.zeros(4, 4), r"must be \[N, 3, H, W\]"),
        ("image.png", "Expected images"),
        ([np.zeros((4, 4, 3))], "Expected a PIL image or an image tensor"),
    ],
)
def test_bad_images_fail_with_the_fix(media, message):
    with pytest.raises((ValueError, TypeError), match=message):
        Brightness()("p", media)


def test_resampling_a_sine_matches_the_sine_at_the_new_rate():
    tone = 440.0
    at_16k = np.sin(2 * np.pi * tone * np.arange(8000) / 16000).astype(np.float32)
    at_48k = np.sin(2 * np.pi * tone * np.arange(24000) / 48000)
    resampled = resample(at_16k, 16000, 48000)
    assert resampled.shape == (24000,)
    interior = slice(2000, -2000)  # away from the edges, where the band-limited filter sees zeros
    assert np.abs(resampled[interior] - at_48k[interior]).max() < 1e-3


def test_waveforms_are_mixed_to_mono_and_resampled():
    stereo = torch.stack([torch.ones(1600), torch.zeros(1600)])
    (mono,) = to_waveforms(Audio([stereo], 16000), 16000)
    assert mono.shape == (1600,) and np.allclose(mono, 0.5)
    (up,) = to_waveforms(Audio(torch.zeros(1, 1600), 16000), 48000)
    assert up.shape == (4800,) and up.dtype == np.float32
    with pytest.raises(TypeError, match=r"Audio\(waveforms, sampling_rate=...\)"):
        to_waveforms([np.zeros(100)], 48000)
    with pytest.raises(ValueError, match=r"must be \[T\] or \[channels, T\]"):
        to_waveforms(Audio(torch.zeros(1, 2, 2, 100), 16000), 16000)


def test_batch_size_does_not_change_scores_and_one_prompt_applies_to_all(images):
    reward = Colourfulness(batch_size=1)
    one_by_one = reward("p", images)
    reward.batch_size = 3
    assert torch.equal(one_by_one, reward(["p"] * 3, images))
    assert one_by_one.dtype == torch.float32 and one_by_one.shape == (3,)


def test_prompt_count_must_match_the_items(images):
    with pytest.raises(ValueError, match="got 2 prompts for 3 media items"):
        Brightness()(["a", "b"], images)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        Brightness(batch_size=0)


def test_callable_reward_scores_in_batches_and_checks_its_output(images):
    calls = []

    def prompt_length(prompts, items):
        calls.append(len(items))
        assert all(isinstance(item, PIL.Image.Image) for item in items)
        return [float(len(p)) for p in prompts]

    reward = CallableReward(prompt_length, name="length", batch_size=2)
    assert reward(["a", "bb", "ccc"], images).tolist() == [1.0, 2.0, 3.0]
    assert calls == [2, 1] and reward.name == "length"
    broken = CallableReward(lambda prompts, items: [0.0], name="broken")
    with pytest.raises(ValueError, match="broken: the function returned scores of shape"):
        broken(["a", "b"], [solid((0, 0, 0))] * 2)
