"""The demo's improvement is real, on shortened runs: the trained policy's samples beat the base's on held-out
prompts with the same seeds, for RankDPO (the demo's default) and for Diffusion-DPO, InPO and SmPO on the same
synthetic set."""

import pytest
import yaml

from mmdpo.config import ConfigError
from mmdpo.demo import DEMO_CONFIG, demo_tree, run_demo, run_llm_demo

SHORT = [
    "train.train.max_steps=60", "train.train.progress=false", "train.train.eval_every=null",
    "train.train.samples.every=null", "synth.progress=false", "eval.seeds=6",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """One output directory for the module: the synthetic sets are made once and reused (synth resumes)."""
    return tmp_path_factory.mktemp("demo")


def test_demo_policy_beats_the_base_on_held_out_prompts(demo_dir, capsys):
    result, comparison = run_demo(None, SHORT, output_dir=str(demo_dir))
    assert comparison.win_rate("brightness") >= 0.7  # 36 matched samples; 0.78 in our runs, 0.9 in the full demo
    assert comparison.mean("policy", "brightness") > comparison.mean("base", "brightness") + 0.05
    assert result.eval_after["eval/rewards/accuracies"] > result.eval_before["eval/rewards/accuracies"] == 0.5
    printed = capsys.readouterr().out
    assert "win rate" in printed and "before/after images" in printed
    assert (result.output_dir / "eval" / "before_after.png").is_file()
    assert (result.output_dir / "training_curves.png").is_file()


# Diffusion-DPO on forward-noised latents; InPO and SmPO on latents inverted through the policy (5 steps here).
# SmPO's ReNoise inversion is deterministic: on 96 toy images it maps each image to one x_t per t, and learns more
# slowly than with InPO's stochastic term, which it gets here.
METHODS = {
    "diffusion_dpo": (["train.objective.name=dpo"], 0.8, 0.1),
    "inpo": (
        ["train.objective.name=dpo", "train.model.noising={kind: ddim_inversion, steps: 5, eta: 0.1}"],
        0.6,  # 0.69 in our runs
        0.02,
    ),
    "smpo": (
        [
            "train.objective={name: smpo, beta: 5000, score_min: 0, score_max: 1}",  # Borda scores lie in [0, 1]
            "train.model.noising={kind: renoise_inversion, steps: 5, eta: 0.1}",
        ],
        0.6,
        0.02,
    ),
}


@pytest.mark.parametrize("method", METHODS)
def test_pairwise_diffusion_objectives_raise_the_reward_of_samples(demo_dir, method):
    overrides, win_rate, gain = METHODS[method]
    pairs = ["train.data.pairs=best_vs_rest", "train.train.batch_size=8"]  # each list's best against the others
    _, comparison = run_demo(None, [*SHORT, *pairs, *overrides], output_dir=str(demo_dir))
    assert comparison.win_rate("brightness") >= win_rate
    assert comparison.mean("policy", "brightness") > comparison.mean("base", "brightness") + gain


def test_llm_demo_policy_beats_the_base_on_held_out_prompts(tmp_path, capsys):
    overrides = ["train.epochs=4", "data.num_workers=0", "train.progress=false", "train.eval_every=null"]
    result, samples = run_llm_demo(overrides, output_dir=str(tmp_path))
    assert result.eval_after["eval/rewards/accuracies"] >= 0.9
    assert samples["policy"] > samples["base"] + 0.2
    assert samples["win_rate"] >= 0.75
    printed = capsys.readouterr().out
    assert "policy win rate over base" in printed and (tmp_path / "training_curves.png").exists()


def test_a_users_demo_config_is_read_with_its_placeholders_and_its_sections_checked(tmp_path):
    tree = yaml.safe_load(DEMO_CONFIG.read_text())
    mine = tmp_path / "my_demo.yaml"
    mine.write_text(yaml.safe_dump({**tree, "train_prompts": ["a red circle"]}))
    filled = demo_tree(mine, ["eval.seeds=2"], tmp_path / "out")
    assert filled["train_prompts"] == ["a red circle"] and filled["eval"]["seeds"] == 2
    assert filled["synth"]["generators"][0]["path"] == str(DEMO_CONFIG.parent / "toy-t2i")
    del tree["eval"]
    mine.write_text(yaml.safe_dump({**tree, "extra": 1}))
    with pytest.raises(ConfigError, match="adds extra"):
        demo_tree(mine, [], tmp_path / "out")
    mine.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="lacks eval"):
        demo_tree(mine, [], tmp_path / "out")
