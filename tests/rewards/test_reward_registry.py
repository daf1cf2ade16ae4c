"""Rewards by name, as configs give them."""

import pytest

from mmdpo.rewards import REWARDS, ColourMatch, JpegCompressibility, PickScore, load_reward


def test_every_registered_name_is_its_rewards_name():
    assert list(REWARDS) == [
        "pickscore", "hpsv2", "aesthetic", "clipscore", "clap", "vlm_judge",
        "brightness", "colourfulness", "jpeg_compressibility", "colour_match",
    ]  # fmt: skip
    assert all(cls.name == name for name, cls in REWARDS.items())


def test_load_reward_builds_weightless_rewards_with_options_and_tiny_model_rewards():
    assert isinstance(load_reward("colour_match"), ColourMatch)
    assert load_reward("jpeg_compressibility", quality=50).quality == 50
    assert isinstance(load_reward("jpeg_compressibility"), JpegCompressibility)
    tiny = load_reward("pickscore", "tiny", batch_size=4)
    assert isinstance(tiny, PickScore) and tiny.batch_size == 4


def test_unknown_names_suggest_the_closest_known_one():
    with pytest.raises(ValueError, match="Unknown reward 'pickscor'; did you mean 'pickscore'\\? known rewards: pick"):
        load_reward("pickscor")
    with pytest.raises(ValueError, match="Unknown reward 'colorfulness'; did you mean 'colourfulness'"):
        load_reward("colorfulness")
    with pytest.raises(ValueError, match="Unknown reward 'zzz'; known rewards"):
        load_reward("zzz")


def test_weightless_rewards_refuse_a_path():
    with pytest.raises(ValueError, match="Reward 'brightness' has no weights to load; drop path='x.pt'"):
        load_reward("brightness", "x.pt")
