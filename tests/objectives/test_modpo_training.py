"""MODPO end to end: the shipped recipe trains on pairs whose margin rewards come from the data file."""

import math
from pathlib import Path

import pytest

from mmdpo.config import ConfigError, load_config
from mmdpo.data.toy import toy_margin_pairs
from mmdpo.training.trainer import train

RECIPE = Path(__file__).parents[2] / "configs" / "llm" / "modpo.yaml"
TINY = [
    "model.path=tiny:llama", "model.dtype=float32", "data.num_workers=0", "train.batch_size=8", "train.grad_accum=1",
    "train.mixed_precision=no", "train.tensorboard=false", "train.plots=false", "train.progress=false",
]  # fmt: skip


def softplus(x):
    return math.log1p(math.exp(x))


def test_modpo_trains_from_the_recipe_with_margin_rewards_from_the_data(tmp_path):
    data = tmp_path / "margins.jsonl"
    pairs = toy_margin_pairs(16)
    pairs.to_json(data)
    overrides = [*TINY, f"data.path={data}", f"data.eval_path={data}", "train.max_steps=3", "train.lr=1e-2"]
    result = train(load_config(RECIPE, [*overrides, f"train.output_dir={tmp_path / 'run'}"]))
    # At step 0 the policy is the reference, so the loss is the margins' alone: with weights (0.5, 0.5),
    # -logsig((0 - 0.5 (m_w - m_l)) / 0.5) = softplus(m_w - m_l), averaged over the held-out pairs.
    margins = zip(pairs["chosen_margin_rewards"], pairs["rejected_margin_rewards"])
    expected = sum(softplus(w[0] - l[0]) for w, l in margins) / len(pairs)
    assert expected != pytest.approx(math.log(2), abs=1e-3)  # the margins are not all equal
    assert result.eval_before["eval/loss"] == pytest.approx(expected, rel=1e-5)
    assert result.eval_before["eval/rewards/accuracies"] == 0.5
    assert result.eval_after["eval/loss"] < result.eval_before["eval/loss"]


def test_modpo_refuses_data_without_margin_rewards(tmp_path):
    config = load_config(RECIPE, [*TINY, "data.path=toy", "train.max_steps=1", f"train.output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="objective.name=modpo needs margin_rewards .* add a margin_rewards column"):
        train(config)
