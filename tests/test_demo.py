"""The demo's improvement is real: the trained policy's samples beat the base's on held-out prompts."""

from mmdpo.demo import run_demo


def test_demo_policy_beats_the_base_on_held_out_prompts(tmp_path, capsys):
    overrides = ["train.epochs=4", "data.num_workers=0", "train.progress=false", "train.eval_every=null"]
    result, samples = run_demo(None, overrides, output_dir=str(tmp_path))
    assert result.eval_after["eval/rewards/accuracies"] >= 0.9
    assert samples["policy"] > samples["base"] + 0.2
    assert samples["win_rate"] >= 0.75
    printed = capsys.readouterr().out
    assert "policy win rate over base" in printed and (tmp_path / "training_curves.png").exists()
