"""Rewards by name, as configs give them: registered, imported or installed."""

import PIL.Image
import pytest

from mmdpo.rewards import REWARDS, Brightness, ColourMatch, JpegCompressibility, PickScore, load_reward


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


PLUGIN = """
import torch
from mmdpo.rewards import Reward


class Constant(Reward):
    name = "constant"

    def __init__(self, value=1.0, batch_size=16):
        super().__init__(batch_size)
        self.value = value

    def score_batch(self, prompts, items):
        return torch.full((len(items),), float(self.value))


class Family:
    @staticmethod
    def doubled(value=1.0, batch_size=16):
        return Constant(2 * value, batch_size)


def not_a_reward(batch_size=16):
    return 3.0


class Plain:
    pass


NUMBER = 3
"""

ENTRY_POINTS = """[mmdpo.rewards]
constant = mmdpo_test_plugin:Constant
doubled = mmdpo_test_plugin:Family.doubled
brightness = mmdpo_test_plugin:Constant
broken = mmdpo_test_broken:Anything
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A module of rewards and a failing one on sys.path, and a distribution registering entry points to them."""
    (tmp_path / "mmdpo_test_plugin.py").write_text(PLUGIN)
    (tmp_path / "mmdpo_test_broken.py").write_text("raise RuntimeError('no GPU here')\n")
    info = tmp_path / "mmdpo_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmdpo-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))


def scores(reward):
    return reward(["a", "b", "c"], [PIL.Image.new("RGB", (4, 4))] * 3).tolist()


def test_an_import_path_names_a_reward_class_or_a_factory_with_its_options(plugin):
    assert scores(load_reward("mmdpo_test_plugin:Constant", value=2.5)) == [2.5] * 3
    doubled = load_reward("mmdpo_test_plugin:Family.doubled", value=2.5, batch_size=2)
    assert scores(doubled) == [5.0] * 3 and doubled.batch_size == 2


def test_an_installed_reward_is_found_by_its_entry_point_name_after_the_registered_ones(plugin):
    assert scores(load_reward("constant", value=4.0)) == [4.0] * 3
    assert scores(load_reward("doubled")) == [2.0] * 3
    assert isinstance(load_reward("brightness"), Brightness)  # the registered name wins
    with pytest.raises(ValueError, match="Unknown reward 'constnat'; did you mean 'constant'\\?"):
        load_reward("constnat")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("mmdpo_test_missing:Foo", "Reward 'mmdpo_test_missing:Foo': module 'mmdpo_test_missing' does not import "
         "(ModuleNotFoundError: No module named 'mmdpo_test_missing')."),
        ("mmdpo_test_broken:Foo", "Reward 'mmdpo_test_broken:Foo': module 'mmdpo_test_broken' does not import "
         "(RuntimeError: no GPU here)."),
        ("broken", "Reward 'broken' (entry point mmdpo_test_broken:Anything): module 'mmdpo_test_broken' does not "
         "import (RuntimeError: no GPU here)."),
        ("mmdpo_test_plugin:Missing", "Reward 'mmdpo_test_plugin:Missing': module 'mmdpo_test_plugin' has no "
         "attribute 'Missing'."),
        ("mmdpo_test_plugin:Plain", "Reward 'mmdpo_test_plugin:Plain': Plain is not a subclass of "
         "mmdpo.rewards.Reward."),
        ("mmdpo_test_plugin:NUMBER", "Reward 'mmdpo_test_plugin:NUMBER' is of type int, not a Reward subclass or a "
         "factory of one."),
        ("mmdpo_test_plugin:not_a_reward", "Reward 'mmdpo_test_plugin:not_a_reward' returned a float, not a "
         "mmdpo.rewards.Reward."),
        (":Constant", "Reward ':Constant' is not an import path; write module:attribute, e.g. my_pkg.mod:Sharpness."),
    ],
)  # fmt: skip
def test_a_reward_that_cannot_be_built_is_named_in_one_sentence(plugin, name, message):
    with pytest.raises(ValueError) as caught:
        load_reward(name)
    assert str(caught.value) == message
