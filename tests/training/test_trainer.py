"""End-to-end training on the toy task: learning, resume, saving, reference strategies."""

import json
from dataclasses import replace

import pytest
import torch

from mmdpo.config import load_config
from mmdpo.training.callbacks import OnLog
from mmdpo.training.logs import read_metrics
from mmdpo.training.trainer import train

FAST = [
    "model.path=tiny:llama",
    "data.path=toy",
    "data.num_workers=0",
    "train.tensorboard=false",
    "train.progress=false",
    "train.plots=false",
]


def run(tmp_path, *overrides, name="run", on_step=None):
    config = load_config(None, [*FAST, f"train.output_dir={tmp_path / name}", *overrides])
    return train(config, callbacks=[OnLog(on_step)] if on_step else [])


def losses(result):
    return [r["loss"] for r in read_metrics(result.output_dir / "metrics.jsonl") if "loss" in r]


def test_dpo_learns_the_toy_preference(tmp_path):
    result = run(tmp_path, "objective.beta=0.5", "train.lr=3e-3", "train.epochs=3", "train.batch_size=16")
    before, after = result.eval_before, result.eval_after
    assert before["eval/rewards/accuracies"] == pytest.approx(0.5)  # policy = reference at step 0
    assert before["eval/loss"] == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)
    assert after["eval/rewards/accuracies"] >= 0.9
    margin_before = before["eval/logps/chosen"] - before["eval/logps/rejected"]
    margin_after = after["eval/logps/chosen"] - after["eval/logps/rejected"]
    assert margin_after > margin_before + 5.0


def test_resume_continues_with_the_same_numbers(tmp_path, capsys):
    settings = ["train.max_steps=8", "train.batch_size=8", "train.grad_accum=2", "train.lr=1e-3", "train.log_every=1"]
    full = run(tmp_path, *settings, name="full")

    def crash(step, metrics):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, *settings, "train.save_every=4", name="resumed", on_step=crash)
    capsys.readouterr()
    resumed = run(tmp_path, *settings, "train.save_every=4", name="resumed")
    assert "resuming from step 4" in capsys.readouterr().out
    assert len(losses(resumed)) == 8
    torch.testing.assert_close(torch.tensor(losses(resumed)), torch.tensor(losses(full)), rtol=1e-6, atol=1e-7)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["eval_before"] == full.eval_before != {}  # the first run's metrics before training are kept


def test_lora_adapter_is_saved_for_peft_and_changes_the_model(tmp_path):
    from peft import PeftModel

    from mmdpo.adapters.tiny import tiny_causal_lm, tiny_tokenizer

    result = run(tmp_path, "model.lora.r=4", "train.max_steps=3", "train.lr=1e-2")
    assert (result.final_dir / "adapter_config.json").exists()
    torch.manual_seed(0)  # the trainer's seed rebuilds the same tiny base
    base = tiny_causal_lm("llama", tiny_tokenizer())
    ids = torch.tensor([[10, 20, 30]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, result.final_dir)
    assert not torch.allclose(tuned(ids).logits, before)
    with tuned.disable_adapter():
        torch.testing.assert_close(tuned(ids).logits, before)


def test_a_lora_of_an_on_disk_base_names_it_so_auto_peft_loads_it(tmp_path):
    from peft import AutoPeftModelForCausalLM

    from mmdpo.adapters.tiny import tiny_causal_lm, tiny_tokenizer

    torch.manual_seed(0)
    tokenizer = tiny_tokenizer()
    tiny_causal_lm("llama", tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    result = run(tmp_path, f"model.path={tmp_path / 'base'}", "model.lora.r=4", "train.max_steps=2", "train.lr=1e-2")
    saved = json.loads((result.final_dir / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(tmp_path / "base")
    tuned = AutoPeftModelForCausalLM.from_pretrained(result.final_dir)
    assert any("lora_A" in name for name, _ in tuned.named_parameters())


def test_full_model_is_saved_for_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = run(tmp_path, "train.max_steps=2")
    model = AutoModelForCausalLM.from_pretrained(result.final_dir)
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert model(torch.tensor([tokenizer("hi")["input_ids"]])).logits.shape[-1] == len(tokenizer)
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["eval_after"]["eval/loss"] == pytest.approx(result.eval_after["eval/loss"])


@pytest.mark.parametrize("lora", [False, True])
def test_every_reference_strategy_gives_the_same_run(tmp_path, lora):
    settings = ["train.max_steps=3", "train.lr=1e-3", "train.log_every=1", "data.eval_fraction=0"]
    if lora:
        settings.append("model.lora.r=4")
    strategies = ["adapter" if lora else "copy", "precomputed"]
    runs = [losses(run(tmp_path, *settings, f"model.reference={s}", name=f"{s}{lora}")) for s in strategies]
    torch.testing.assert_close(torch.tensor(runs[0]), torch.tensor(runs[1]), rtol=1e-5, atol=1e-6)
    assert runs[0][0] == pytest.approx(0.693147, abs=1e-5)


def test_precomputed_reference_is_cached_across_runs(tmp_path):
    cache = tmp_path / "cache"
    settings = ["train.max_steps=1", "model.reference=precomputed", f"data.cache_dir={cache}"]
    run(tmp_path, *settings, name="a")
    entries = sorted(p.name for p in cache.iterdir())
    run(tmp_path, *settings, name="b")
    assert sorted(p.name for p in cache.iterdir()) == entries
    run(tmp_path, *settings, "data.eval_fraction=0.2", name="c")  # other data, other key
    assert len(list(cache.iterdir())) > len(entries)


def test_reference_free_objective_skips_the_reference(tmp_path):
    result = run(tmp_path, "objective.name=simpo", "train.max_steps=2")
    assert result.eval_after["eval/loss"] > 0


def test_a_nan_loss_stops_with_advice_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    from mmdpo.objectives import pairwise

    def poisoned(pair, *, beta=0.1):
        return pair.margin * float("nan")

    objectives = __import__("mmdpo.objectives", fromlist=["OBJECTIVES"]).OBJECTIVES
    monkeypatch.setitem(objectives, "dpo", replace(objectives["dpo"], function=pairwise.pairwise(poisoned)))
    with pytest.raises(FloatingPointError, match="train.lr"):
        run(tmp_path, "train.max_steps=2", "data.eval_fraction=0")


def test_held_out_groups_can_come_from_their_own_split(tmp_path):
    folder = tmp_path / "prefs"
    folder.mkdir()
    for split, n in (("train", 24), ("test", 5)):
        rows = [{"prompt": f"q{i}", "chosen": "aeiou", "rejected": "xyz"} for i in range(n)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run(tmp_path, f"data.path={folder}", "data.eval_split=test", "train.max_steps=1", "train.batch_size=4")
    assert (tmp_path / "run" / "summary.json").exists()
    records = [r for r in read_metrics(result.output_dir / "metrics.jsonl") if "eval/loss" in r]
    assert records and result.eval_before["eval/rewards/accuracies"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="The split 'valid' is not in"):
        run(tmp_path, f"data.path={folder}", "data.eval_split=valid", "train.max_steps=1", name="bad")
