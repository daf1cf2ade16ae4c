"""A reward defined outside mmdpo (tests/pipelines/custom_reward.py), named by its import path or an installed entry
point, in `mmdpo synth`, `mmdpo score` and `mmdpo eval` on tiny models."""

import json
import shutil

import pytest
import torch
import yaml
from custom_reward import sharpness_by_hand
from datasets import load_dataset
from synth_sets import borda_by_hand, dense_ranks_by_hand, read_set, tiny_config, write_prompts

from mmdpo.adapters.text_to_image import load_text_to_image
from mmdpo.cli import main
from mmdpo.pipelines.config import load_score_config
from mmdpo.pipelines.score import score
from mmdpo.pipelines.synth import Processes, synth


def rows_of(folder, tmp_path):
    return load_dataset("parquet", data_dir=str(folder), split="train", cache_dir=str(tmp_path / "cache"))


def test_synth_scores_and_ranks_with_an_imported_reward_and_its_options(tmp_path):
    prompts = write_prompts(tmp_path / "prompts.txt", ["a red cat", "night sky"])
    rewards = "rewards=[brightness, {name: custom_reward:Sharpness, weight: 0.5, options: {scale: 2.0}}]"
    synth(tiny_config(tmp_path / "set", prompts, rewards), Processes())
    rows = rows_of(tmp_path / "set", tmp_path)
    assert rows["prompt"] == ["a red cat", "night sky"]
    for row in rows:
        sharpness = row["reward_custom_reward:Sharpness"]
        assert sharpness == pytest.approx([sharpness_by_hand(image, scale=2.0) for image in row["images"]], abs=1e-6)
        assert min(sharpness) > 0
        expected = borda_by_hand([row["reward_brightness"], sharpness], weights=[1.0, 0.5])
        assert row["scores"] == pytest.approx(expected, abs=1e-12)
        assert row["ranks"] == dense_ranks_by_hand(expected)
    meta = yaml.safe_load((tmp_path / "set" / "synth.yaml").read_text())
    assert meta["ranking"]["rewards"][1] == {"name": "custom_reward:Sharpness", "path": None, "weight": 0.5}


def test_score_adds_a_factorys_reward_to_a_synth_set(reference_set, tmp_path):
    out = shutil.copytree(reference_set, tmp_path / "set")
    score(load_score_config(str(out), ["rewards=[custom_reward:sharpness_x10]", "progress=false", "device=cpu"]))
    old = {row["prompt"]: row for table in read_set(reference_set).values() for row in table.to_pylist()}
    for row in rows_of(out, tmp_path):
        x10 = row["reward_custom_reward:sharpness_x10"]
        assert x10 == pytest.approx([sharpness_by_hand(image, scale=10.0) for image in row["images"]], abs=1e-6)
        previous = old[row["prompt"]]
        expected = borda_by_hand([previous["reward_pickscore"], previous["reward_brightness"], x10])
        assert row["scores"] == pytest.approx(expected, abs=1e-12)


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """A distribution on sys.path whose entry points register custom_reward's rewards as `sharpness` and
    `sharpness_x10`."""
    info = tmp_path / "site" / "custom_reward_pkg-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: custom-reward-pkg\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[mmdpo.rewards]\nsharpness = custom_reward:Sharpness\nsharpness_x10 = custom_reward:sharpness_x10\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def test_score_finds_an_installed_reward_by_its_entry_point_name(installed, reference_set, tmp_path):
    out = tmp_path / "scored"
    settings = ["rewards=[sharpness]", "aggregate=listed", f"out={out}", "progress=false", "device=cpu"]
    result = score(load_score_config(str(reference_set), settings))
    assert result.rewards == ["sharpness"]
    for row in rows_of(out, tmp_path):
        assert row["reward_sharpness"] == pytest.approx([sharpness_by_hand(image) for image in row["images"]])
        assert row["ranks"] == dense_ranks_by_hand(row["reward_sharpness"])


@pytest.fixture
def finished_run(tmp_path):
    """A finished full fine-tuning run of the tiny SD1.5 model: its config and a perturbed UNet in final/."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump({"model": {"path": "tiny:sd15"}, "data": {"path": "x", "resolution": 16}})
    )
    unet = load_text_to_image("tiny:sd15", encoders=False).denoiser
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    unet.save_pretrained(run / "final" / "unet")
    return run


def test_eval_compares_base_and_policy_with_imported_and_installed_rewards(installed, finished_run, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "prompts.txt", ["a red cat", "night sky"])
    rewards = "rewards=[custom_reward:Sharpness, sharpness_x10]"
    main(["eval", str(finished_run), f"prompts={prompts}", rewards, "seeds=2", "steps=2", "device=cpu"])
    assert "custom_reward:Sharpness" in capsys.readouterr().out
    saved = json.loads((finished_run / "eval" / "comparison.json").read_text())
    for which in ("base", "policy"):
        sharpness = torch.tensor(saved[which]["custom_reward:Sharpness"])
        assert sharpness.shape == (2, 2) and sharpness.min() > 0
        torch.testing.assert_close(torch.tensor(saved[which]["sharpness_x10"]), 10 * sharpness)
    assert saved["base"]["custom_reward:Sharpness"] != saved["policy"]["custom_reward:Sharpness"]
