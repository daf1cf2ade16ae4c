"""End-to-end text-to-audio training on a tiny Tango and WAV files listed in JSONL: equality at the start, saving
and loading into the Tango pipeline, resuming, the encode cache and the shipped recipes."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml

from mmdpo.adapters.latent_diffusion.tango_pipeline import TangoPipeline
from mmdpo.adapters.text_to_audio import load_text_to_audio
from mmdpo.cli import main
from mmdpo.config import ConfigError, load_config
from mmdpo.training.callbacks import OnLog
from mmdpo.training.logs import read_metrics
from mmdpo.training.trainer import train

RECIPES = sorted((Path(__file__).parents[2] / "configs" / "tango").glob("*.yaml"))
TINY = ["model.path=tiny:tango", "data.duration=0.625", "data.num_workers=0"]


@pytest.fixture(scope="module")
def audio_pairs(tmp_path_factory):
    """Audio-Alpaca-style pairs as JSONL beside WAV files: a clean tone (16 kHz) beats noise (22.05 kHz); prompts of
    different lengths."""
    folder = tmp_path_factory.mktemp("audio_pairs")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        t = np.arange(int(0.7 * 16000)) / 16000
        soundfile.write(folder / f"chosen_{i}.wav", 0.5 * np.sin(2 * np.pi * (300 + 50 * i) * t), 16000)
        soundfile.write(folder / f"reject_{i}.wav", 0.3 * rng.standard_normal(int(0.7 * 22050)), 22050)
        prompt = f"a tone number {i}" + " rising" * (i % 3)
        rows.append({"prompt": prompt, "chosen": f"chosen_{i}.wav", "rejected": f"reject_{i}.wav"})
    path = folder / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(tmp_path, data, *overrides, name="run", on_step=None):
    config = load_config(
        None,
        [
            *TINY, f"data.path={data}", "data.eval_fraction=0.25", "objective.name=dpo", "objective.beta=2000",
            "train.batch_size=2", "train.lr=1e-3", "train.log_every=1", "train.tensorboard=false",
            "train.progress=false", "train.plots=false", f"train.output_dir={tmp_path / name}", *overrides,
        ],
    )  # fmt: skip
    return train(config, callbacks=[OnLog(on_step)] if on_step else [])


def losses(result):
    return [r["loss"] for r in read_metrics(result.output_dir / "metrics.jsonl") if "loss" in r]


def sample(pipe):
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    return pipe("a tone number 1", num_inference_steps=2, generator=generator, audio_length_in_s=0.625).audios


def test_lora_training_starts_at_ln2_and_its_lora_loads_into_the_tango_pipeline(tmp_path, audio_pairs):
    result = run(tmp_path, audio_pairs, "model.lora.r=4", "train.max_steps=3", "train.lr=5e-2")
    assert math.isclose(result.eval_before["eval/loss"], math.log(2), abs_tol=1e-6)
    assert result.eval_before["eval/rewards/accuracies"] == 0.5
    assert result.eval_after["eval/loss"] != result.eval_before["eval/loss"]
    pipe = load_text_to_audio("tiny:tango").pipeline()  # the same random base weights
    before = sample(pipe)
    pipe.load_lora_weights(result.final_dir)
    assert np.abs(sample(pipe) - before).max() > 1e-4


def test_full_fine_tune_with_a_frozen_copy_and_prompt_dropout_saves_a_tango_pipeline(tmp_path, audio_pairs):
    result = run(tmp_path, audio_pairs, "train.max_steps=2", "model.prompt_dropout=0.5")
    assert math.isclose(result.eval_before["eval/loss"], math.log(2), abs_tol=1e-3)  # an eval-mode copy: rounding
    pipe = TangoPipeline.from_pretrained(result.final_dir)
    base = load_text_to_audio("tiny:tango")
    assert not torch.equal(pipe.unet.conv_in.weight, base.denoiser.conv_in.weight)
    assert sample(pipe).shape == (1, 64 * 160)


def test_resume_continues_with_the_same_numbers(tmp_path, audio_pairs):
    settings = ["model.lora.r=4", "train.max_steps=6", "model.prompt_dropout=0.3"]
    full = run(tmp_path, audio_pairs, *settings, name="full")

    def crash(step, metrics):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, audio_pairs, *settings, "train.save_every=3", name="resumed", on_step=crash)
    resumed = run(tmp_path, audio_pairs, *settings, "train.save_every=3", name="resumed")
    assert len(losses(resumed)) == 6
    torch.testing.assert_close(torch.tensor(losses(resumed)), torch.tensor(losses(full)), rtol=1e-6, atol=1e-7)


def test_training_from_the_encode_cache_equals_training_from_audio(tmp_path, audio_pairs, monkeypatch):
    """The cache stores every prompt's T5 states padded (mask off) to the longest prompt of the source."""
    settings = ["model.lora.r=4", "train.max_steps=3", "model.prompt_dropout=0.5", f"data.cache_dir={tmp_path / 'c'}"]
    audio = run(tmp_path, audio_pairs, *settings, "data.encode_cache=off", name="audio")
    recipe = tmp_path / "recipe.yaml"  # `mmdpo cache` with the same config and overrides as training
    recipe.write_text(yaml.safe_dump({"data": {"path": str(audio_pairs), "eval_fraction": 0.25}}))
    main(["cache", str(recipe), "train.batch_size=2", "train.progress=false", *TINY, *settings])

    def no_encoders(*args, **kwargs):
        raise AssertionError("training from the cache loaded the VAE or the text encoder")

    monkeypatch.setattr("mmdpo.adapters.latent_diffusion.model.load_encoders", no_encoders)
    cached = run(tmp_path, audio_pairs, *settings, "data.encode_cache=require", name="cached")
    torch.testing.assert_close(torch.tensor(losses(cached)), torch.tensor(losses(audio)), rtol=2e-4, atol=1e-6)
    assert cached.eval_before == pytest.approx(audio.eval_before, rel=1e-5, abs=1e-6)


def test_sample_grids_are_refused_for_audio(tmp_path, audio_pairs):
    with pytest.raises(ConfigError, match="train.samples"):
        run(tmp_path, audio_pairs, "train.samples.every=1")


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_on_the_tiny_model(recipe, tmp_path, audio_pairs):
    """Only the model, the data, the clip length and the run's length change."""
    overrides = [
        *TINY, f"data.path={audio_pairs}", "data.eval_fraction=0.25", f"train.output_dir={tmp_path}",
        "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.progress=false",
    ]  # fmt: skip
    result = train(load_config(recipe, overrides))
    assert result.eval_after["eval/loss"] == result.eval_after["eval/loss"]  # finite, not NaN
    assert result.final_dir.is_dir()
