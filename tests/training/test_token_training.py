"""Token-level objectives end to end on the toy task: learning, every reference strategy they allow, step data."""

import math

import pytest
from test_trainer import losses, run

from mmdpo.config import ConfigError
from mmdpo.data.toy import toy_step_pairs


def test_tdpo_learns_the_toy_preference(tmp_path):
    settings = ["objective.beta=0.5", "train.lr=3e-3", "train.max_steps=6", "train.batch_size=16"]
    result = run(tmp_path, "objective.name=tdpo", *settings, "train.warmup_ratio=0", "data.eval_fraction=0.06")
    before, after = result.eval_before, result.eval_after
    assert before["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference: KL exactly 0
    assert before["eval/rewards/accuracies"] == 0.5 and before["eval/kl/rejected"] == 0
    assert after["eval/rewards/accuracies"] >= 0.9
    assert after["eval/kl/chosen"] > 0 and after["eval/kl/rejected"] > 0


@pytest.mark.parametrize(
    "settings",
    [
        ["objective.name=tdpo", "model.lora.r=4"],  # reference: the adapter switched off, with the base head
        ["objective.name=sparsepo", "model.layout=concat"],  # learned masks
        ["objective.name=sparsepo", "objective.mask=reference"],
    ],
    ids=["tdpo-lora", "sparsepo-learned", "sparsepo-reference"],
)
def test_token_level_runs_start_at_ln2(tmp_path, settings):
    result = run(tmp_path, *settings, "train.max_steps=2", "train.log_every=1", "train.lr=1e-3", "data.eval_fraction=0")
    assert losses(result)[0] == pytest.approx(math.log(2), abs=1e-6)


def test_tgdpo_with_precomputed_values_matches_live_models(tmp_path):
    from mmdpo.adapters.tiny import tiny_causal_lm, tiny_tokenizer
    from mmdpo.data.toy import toy_groups

    guidance, data = tmp_path / "guidance", tmp_path / "toy.jsonl"
    tokenizer = tiny_tokenizer()
    tiny_causal_lm("llama", tokenizer).save_pretrained(guidance)
    tokenizer.save_pretrained(guidance)
    toy_groups(24).to_json(data)  # precomputing covers the whole data set: keep it small
    settings = ["objective.name=tgdpo", f"model.guidance_path={guidance}", f"data.path={data}", "train.max_steps=3"]
    settings += ["train.log_every=1", "train.lr=1e-3", "train.batch_size=8", "data.eval_fraction=0"]
    live = losses(run(tmp_path, *settings, name="live"))
    stored = losses(run(tmp_path, *settings, "model.reference=precomputed", name="precomputed"))
    assert live == pytest.approx(stored, rel=1e-5) and live[0] == pytest.approx(math.log(2), abs=1e-6)
    assert live[-1] != live[0]


def test_step_dpo_trains_on_step_data_and_refuses_data_without_steps(tmp_path):
    path = tmp_path / "steps.jsonl"
    toy_step_pairs(32).to_json(path)
    result = run(tmp_path, "objective.name=step_dpo", f"data.path={path}", "train.max_steps=2", "train.batch_size=4")
    assert result.eval_after["eval/loss"] < math.log(2)
    with pytest.raises(ConfigError, match="objective.name=step_dpo needs step data"):
        run(tmp_path, "objective.name=step_dpo", "train.max_steps=1", name="toy")
