"""End-to-end text-to-image training on tiny models: equality at the start, resume, saving."""

import json
import math

import pytest
import torch
from PIL import Image

from mmdpo.cli import main
from mmdpo.config import load_config
from mmdpo.training.callbacks import OnLog
from mmdpo.training.logs import read_metrics
from mmdpo.training.trainer import train


def run(tmp_path, data, *overrides, name="run", on_step=None):
    config = load_config(
        None,
        [
            f"data.path={data}",
            "data.resolution=16",
            "data.num_workers=0",
            "data.eval_fraction=0.25",
            "objective.name=dpo",
            "objective.beta=5000",
            "train.batch_size=2",
            "train.lr=1e-3",
            "train.log_every=1",
            "train.tensorboard=false",
            "train.progress=false",
            "train.plots=false",
            f"train.output_dir={tmp_path / name}",
            *overrides,
        ],
    )
    return train(config, callbacks=[OnLog(on_step)] if on_step else [])


def losses(result):
    return [r["loss"] for r in read_metrics(result.output_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_lora_training_starts_at_ln2_and_saves_a_diffusers_lora(tmp_path, pickapic, kind):
    result = run(tmp_path, pickapic, f"model.path=tiny:{kind}", "model.lora.r=4", "train.max_steps=3")
    assert math.isclose(result.eval_before["eval/loss"], math.log(2), abs_tol=1e-6)
    assert result.eval_before["eval/rewards/accuracies"] == 0.5
    assert (result.final_dir / "pytorch_lora_weights.safetensors").is_file()
    assert result.eval_after["eval/loss"] != result.eval_before["eval/loss"]


def test_full_fine_tune_with_a_frozen_copy_saves_a_pipeline_and_sample_grids(tmp_path, pickapic):
    from diffusers import StableDiffusionPipeline

    result = run(
        tmp_path, pickapic, "model.path=tiny:sd15", "train.max_steps=3", "model.prompt_dropout=0.2",
        "train.samples.every=2", "train.samples.steps=2", "train.samples.seeds=3",
    )  # fmt: skip
    pipe = StableDiffusionPipeline.from_pretrained(result.final_dir)
    assert pipe.unet.config.cross_attention_dim == 8
    grids = sorted(p.name for p in (result.output_dir / "samples").iterdir())
    assert grids == ["step-000000.png", "step-000002.png", "step-000003.png"]  # before, every 2 steps, at the end
    with Image.open(result.output_dir / "samples" / grids[0]) as grid:
        assert grid.width > 3 * 96 and grid.height >= 4 * 96  # 3 seeds by the 4 held-out prompts, tiles enlarged


def test_resume_continues_with_the_same_numbers(tmp_path, pickapic):
    settings = ["model.path=tiny:sdxl", "model.lora.r=4", "train.max_steps=6", "model.prompt_dropout=0.3"]
    full = run(tmp_path, pickapic, *settings, name="full")

    def crash(step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, pickapic, *settings, "train.save_every=3", name="resumed", on_step=crash)
    resumed = run(tmp_path, pickapic, *settings, "train.save_every=3", name="resumed")
    assert len(losses(resumed)) == 6
    torch.testing.assert_close(torch.tensor(losses(resumed)), torch.tensor(losses(full)), rtol=1e-6, atol=1e-7)


def test_training_from_the_encode_cache_equals_training_from_images(tmp_path, pickapic, monkeypatch):
    import yaml

    from mmdpo.cli import main

    settings = [
        "model.path=tiny:sdxl", "model.lora.r=4", "train.max_steps=4", "model.prompt_dropout=0.3",
        "data.crop=random", "data.flip=0.5", f"data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip
    images = run(tmp_path, pickapic, *settings, "data.encode_cache=off", name="images")
    recipe = tmp_path / "recipe.yaml"  # `mmdpo cache` with the same config and overrides as training
    recipe.write_text(yaml.safe_dump({"data": {"path": str(pickapic), "resolution": 16, "eval_fraction": 0.25}}))
    main(["cache", str(recipe), "train.batch_size=2", "train.progress=false", *settings])

    def no_encoders(*args, **kwargs):
        raise AssertionError("training from the cache loaded the VAE or a text encoder")

    monkeypatch.setattr("mmdpo.adapters.latent_diffusion.model.load_encoders", no_encoders)
    cached = run(tmp_path, pickapic, *settings, "data.encode_cache=require", name="cached")
    # the cache encodes images in other batches than training does: equal up to float rounding, which four
    # steps at lr 1e-3 and beta 5000 grow to ~1e-5
    torch.testing.assert_close(torch.tensor(losses(cached)), torch.tensor(losses(images)), rtol=2e-4, atol=1e-6)
    assert cached.eval_before == pytest.approx(images.eval_before, rel=1e-5, abs=1e-6)
    assert cached.eval_after == pytest.approx(images.eval_after, rel=2e-4, abs=1e-6)
    assert (cached.final_dir / "pytorch_lora_weights.safetensors").is_file()


def test_a_required_cache_that_is_missing_names_the_command(tmp_path, pickapic):
    with pytest.raises(FileNotFoundError, match="run `mmdpo cache`"):
        run(tmp_path, pickapic, "model.path=tiny:sd15", "data.encode_cache=require", "train.max_steps=1")


def test_a_finished_run_is_compared_with_its_base_as_saved(tmp_path, pickapic, capsys):
    from mmdpo.evaluation import compare_run
    from mmdpo.rewards import Brightness

    result = run(tmp_path, pickapic, "model.path=tiny:sd15", "model.lora.r=4", "train.max_steps=2", "train.lr=5e-2")
    prompts = ["a picture number 1", "a picture number 2"]
    comparison, base, policy = compare_run(result.output_dir, prompts, [Brightness()], seeds=[0, 1], steps=2)
    assert base.shape == policy.shape == (2, 2, 3, 16, 16)
    assert (policy - base).abs().max() > 1e-4  # the saved LoRA loaded and changed the images
    brightness = Brightness()(["x"] * 4, base.flatten(0, 1)).view(2, 2)
    torch.testing.assert_close(torch.tensor(comparison.base["brightness"]), brightness)
    assert 0 <= comparison.win_rate("brightness") <= 1 and "win rate" in comparison.table()
    assert (result.output_dir / "eval" / "before_after.png").is_file()
    assert (result.output_dir / "eval" / "comparison.json").is_file()

    (tmp_path / "prompts.txt").write_text("\n".join(prompts))  # the same comparison from the command line
    settings = [f"prompts={tmp_path / 'prompts.txt'}", "rewards=[brightness]", "seeds=2", "steps=2", "device=cpu"]
    main(["eval", str(result.output_dir), *settings])
    assert comparison.table() in capsys.readouterr().out
    saved = json.loads((result.output_dir / "eval" / "comparison.json").read_text())
    assert saved["base"] == comparison.base and saved["policy"] == comparison.policy
