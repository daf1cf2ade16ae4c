"""Synth and score configs fail early in one sentence; prompt files of every kind read the same way."""

import pytest
from datasets import Dataset
from synth_sets import TINY, write_prompts

from mmdpo.cli import main
from mmdpo.config import ConfigError
from mmdpo.pipelines.config import load_eval_config, load_score_config, load_synth_config
from mmdpo.pipelines.prompts import read_prompts

REQUIRED = ["prompts=/data/prompts.txt", "out=/data/set"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["shard_sise=3"], "Unknown config key shard_sise; did you mean 'shard_size'?"),
        (["generators=[{path: 'tiny:sd15', stpes: 2}]"], "Unknown config key generators.stpes; did you mean 'steps'?"),
        (["rewards=[{name: pickscore, wieght: 2}]"], "Unknown config key rewards.wieght; did you mean 'weight'?"),
        (["generators=['tiny:sd15']", "seeds=1"], "gives one candidate per prompt, nothing to rank"),
        (["generators=['tiny:sd15', 'tiny:sd15']"], "repeat one; give each generator a distinct name"),
        (["generators.0.resolution=100"], "must be a multiple of 8"),
        (["generators.0.scheduler=NotAScheduler"], "is not a diffusers scheduler class"),
        (["generators.5.steps=1"], "5 is not an index of a list of 2"),
        (["rewards=[clap]"], "rewards[0].name=clap does not score images"),
        (["rewards=[colorfulness]"], "rewards[0].name='colorfulness' is not a reward; did you mean 'colourfulness'?"),
        (["rewards=[xyz]"], "rewards[0].name='xyz' is not a reward; known rewards: pickscore, hpsv2"),
        (["rewards=[nowhere:Foo]"], "rewards[0].name: Reward 'nowhere:Foo': module 'nowhere' does not import"),
        (["rewards=[custom_reward:Sharp]"], "module 'custom_reward' has no attribute 'Sharp'."),
        (["rewards=[custom_reward:np]"], "Reward 'custom_reward:np' is of type module, not a Reward subclass"),
        (["rewards=[brightness, brightness]"], "list each reward once"),
        (["rewards=[{name: brightness, weight: 0}]"], "give at least one a positive weight"),
        (["rewards=[]"], "rewards is empty"),
        (["jpeg_quality=80"], "jpeg_quality applies to image_format=jpeg, not image_format=png"),
        (["aggregation=median"], "aggregation='median' is not one of 'borda', 'zscore', 'mean'"),
        (["pending_batches=-1"], "must not be negative"),
    ],
)
def test_a_bad_synth_config_fails_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("?", r"\?")):
        load_synth_config(TINY, [*REQUIRED, *overrides])


def test_prompts_and_out_are_required_and_shorthand_lists_expand():
    with pytest.raises(ConfigError, match="prompts is not set; give it on the command line"):
        load_synth_config(TINY, ["out=/data/set"])
    config = load_synth_config(TINY, [*REQUIRED, "generators=[tiny:sd15, tiny:sdxl]", "rewards=[brightness]"])
    assert [g.name for g in config.generators] == ["tiny-sd15", "tiny-sdxl"]
    assert [(r.name, r.weight) for r in config.rewards] == [("brightness", 1.0)]
    config = load_synth_config(TINY, [*REQUIRED, "generators.1.steps=7", "generators.0.name=small"])
    assert [(g.name, g.steps) for g in config.generators] == [("small", 2), ("tiny-sdxl", 7)]


def test_a_bad_score_config_fails(tmp_path):
    with pytest.raises(ConfigError, match="Nothing to do"):
        load_score_config(str(tmp_path))
    with pytest.raises(ConfigError, match="aggregate=listed ranks by the listed rewards, but rewards is empty"):
        load_score_config(str(tmp_path), ["aggregate=listed", "aggregation=borda"])
    with pytest.raises(ConfigError, match="first argument of `mmdpo score`"):
        load_score_config(str(tmp_path), ["source=/x", "rewards=[brightness]"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_score_config(str(tmp_path / "missing"), ["rewards=[brightness]"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "prompts is empty"),
        (["prompts=p.txt", "seed=2"], "did you mean 'seeds'"),
        (["prompts=p.txt", "seeds=0"], "seeds=0 must be at least 1"),
        (["prompts=p.txt", "rewards=[brightnes]"], "did you mean 'brightness'"),
        (["prompts=p.txt", "run=/x"], "first argument of `mmdpo eval`"),
    ],
)
def test_a_bad_eval_config_fails_naming_the_setting(tmp_path, overrides, message):
    with pytest.raises(FileNotFoundError, match="not a finished mmdpo run"):
        load_eval_config(str(tmp_path), ["prompts=p.txt"])
    (tmp_path / "final").mkdir()
    (tmp_path / "config.yaml").write_text("{}")
    assert load_eval_config(str(tmp_path), ["prompts=p.txt"]).rewards[0].name == "pickscore"
    with pytest.raises(ConfigError, match=message):
        load_eval_config(str(tmp_path), overrides)


def test_the_command_line_reports_config_errors_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(TINY), *REQUIRED, "seeds=0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "mmdpo: error: seeds=0 must be at least 1."


def test_prompts_from_text_jsonl_and_parquet(tmp_path):
    text = read_prompts(write_prompts(tmp_path / "p.txt", ["  a cat ", "", "a dog", "a cat", "a cow"]), max_prompts=2)
    assert text.texts == ["a cat", "a dog"]
    assert text.skipped == {"blank": 1, "repeated": 1, "over_max_prompts": 1}
    assert read_prompts(tmp_path / "p.txt", unique=False).texts == ["a cat", "a dog", "a cat", "a cow"]
    Dataset.from_dict({"caption": ["x", None, "y"], "id": [1, 2, 3]}).to_json(tmp_path / "c.jsonl")
    assert read_prompts(tmp_path / "c.jsonl").texts == ["x", "y"]
    Dataset.from_dict({"prompt": ["x", "y"]}).to_parquet(tmp_path / "p.parquet")
    assert read_prompts(tmp_path / "p.parquet").digest == read_prompts(tmp_path / "c.jsonl").digest
    Dataset.from_dict({"text": ["x"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ValueError, match=r"has columns \['text'\] but no 'prompt' or 'caption'"):
        read_prompts(tmp_path / "t.parquet")
    with pytest.raises(FileNotFoundError, match="does not exist; give a .txt file"):
        read_prompts(tmp_path / "missing.txt")
