"""`mmdpo synth` on tiny generators and rewards: the set's contents, seeds, kill-and-resume, several processes."""

import io
import os
import shutil
import subprocess
import sys

import PIL.Image
import pytest
import torch
import yaml
from datasets import load_dataset
from synth_sets import TINY, UNIQUE, borda_by_hand, dense_ranks_by_hand, read_set, tiny_config, write_prompts

from mmdpo.config import ConfigError
from mmdpo.data.images import load_image_groups
from mmdpo.pipelines import synth as synth_module
from mmdpo.pipelines.generators import Generator, candidate_seed
from mmdpo.pipelines.ranked_set import ranked_tiles
from mmdpo.pipelines.synth import Processes, synth
from mmdpo.rewards import Brightness

NAMES = ["tiny-sd15", "tiny-sdxl"]


def test_the_set_holds_every_prompt_once_with_raw_scores_scores_and_ranks(reference_set, tmp_path):
    rows = load_dataset("parquet", data_dir=str(reference_set), split="train", cache_dir=str(tmp_path / "cache"))
    assert rows["prompt"] == UNIQUE
    assert rows["prompt_index"] == list(range(5))
    brightness = Brightness()
    for row in rows:
        assert [image.size for image in row["images"]] == [(16, 16)] * 4
        assert row["generators"] == [NAMES[0]] * 2 + [NAMES[1]] * 2
        assert row["seeds"] == [candidate_seed(0, row["prompt"], name, s) for name in NAMES for s in (0, 1)]
        # the stored PNGs are lossless: the raw brightness recomputed from them is the stored one
        assert row["reward_brightness"] == brightness(row["prompt"], row["images"]).tolist()
        expected = borda_by_hand([row["reward_pickscore"], row["reward_brightness"]])
        assert row["scores"] == pytest.approx(expected, abs=1e-12)
        assert row["ranks"] == dense_ranks_by_hand(expected)
    assert len({image.tobytes() for row in rows for image in row["images"]}) == 20  # 20 different candidates

    assert (
        load_dataset(str(reference_set), split="train", cache_dir=str(tmp_path / "cache"))["prompt"] == UNIQUE
    )  # card
    groups = load_image_groups(reference_set)
    assert (groups.format, groups.label, len(groups)) == ("image_ranked", "ranks", 5)
    meta = yaml.safe_load((reference_set / "synth.yaml").read_text())
    assert meta["complete"] and meta["counts"] == {"prompts": 5, "candidates": 4, "images": 20, "shards": 3}
    assert meta["prompts"]["skipped"] == {"blank": 1, "repeated": 1}
    card = (reference_set / "README.md").read_text()
    assert "| 5 | 4 | 20 | 3 |" in card and "`reward_pickscore`" in card and "tiny-sdxl" in card
    assert "![the candidates of the first prompts, best first](preview.png)" in card
    assert PIL.Image.open(reference_set / "preview.png").size[1] > 5 * 16  # a row per prompt
    assert sorted(p.name for p in (reference_set / "data").iterdir()) == [
        "train-00000000-00000002.parquet", "train-00000002-00000004.parquet", "train-00000004-00000005.parquet",
    ]  # fmt: skip


def test_the_preview_orders_each_prompts_candidates_best_first():
    def stored(level):  # as a set stores an image: PNG bytes
        buffer = io.BytesIO()
        PIL.Image.new("RGB", (32, 32), (level,) * 3).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    rows = [
        {"images": [stored(5), stored(250), stored(128)], "scores": [0.0, 1.0, 0.5]},
        {"images": [stored(128), stored(5), stored(250)], "scores": [2.0, 1.0, 3.0]},
    ]
    tiles = ranked_tiles(rows, side=16)
    assert tiles.shape == (2, 3, 3, 16, 16)
    means = tiles.mean(dim=(2, 3, 4))
    assert torch.all(means[:, :-1] > means[:, 1:])  # the brightest (best scored) first in both rows


def test_candidate_seeds_depend_on_each_input_and_nothing_else():
    seed = candidate_seed(0, "a red cat", "sdxl", 1)
    assert seed == candidate_seed(0, "a red cat", "sdxl", 1) and 0 <= seed < 2**63
    others = [candidate_seed(1, "a red cat", "sdxl", 1), candidate_seed(0, "a red dog", "sdxl", 1),
              candidate_seed(0, "a red cat", "sd15", 1), candidate_seed(0, "a red cat", "sdxl", 0)]  # fmt: skip
    assert seed not in others and len(set(others)) == 4


def test_a_candidate_does_not_depend_on_batching_sharding_or_prompt_order(reference_set, tmp_path):
    prompts = write_prompts(tmp_path / "other.txt", ["an orange", "a new prompt", "a red cat"])
    one_at_a_time = [
        "generators=[{path: 'tiny:sd15', steps: 2, guidance_scale: 5.0, batch_size: 1},"
        " {path: 'tiny:sdxl', steps: 2, guidance_scale: 5.0, batch_size: 3}]",
        "shard_size=3",
        "pending_batches=0",
    ]
    synth(tiny_config(tmp_path / "set", prompts, *one_at_a_time), Processes())
    reference = {row["prompt"]: row for table in read_set(reference_set).values() for row in table.to_pylist()}
    rows = [row for table in read_set(tmp_path / "set").values() for row in table.to_pylist()]
    assert [row["prompt"] for row in rows] == ["an orange", "a new prompt", "a red cat"]
    for row in (rows[0], rows[2]):
        same = reference[row["prompt"]]
        assert row["seeds"] == same["seeds"]
        assert [i["bytes"] for i in row["images"]] == [i["bytes"] for i in same["images"]]
        # text padding follows the batch, so a reward model's scores agree up to float rounding
        assert row["reward_pickscore"] == pytest.approx(same["reward_pickscore"], rel=1e-5)
        assert row["reward_brightness"] == same["reward_brightness"]


def test_a_killed_run_resumes_to_the_identical_set(reference_set, prompts_file, tmp_path, monkeypatch):
    out = tmp_path / "set"
    calls = []
    generate = Generator.__call__

    def dies_on_the_fourth_call(self, prompts, seeds):
        calls.append(len(prompts))
        if len(calls) == 4:  # shard 0 took calls 1 and 2; shard 1 dies half-generated
            raise KeyboardInterrupt
        return generate(self, prompts, seeds)

    monkeypatch.setattr(Generator, "__call__", dies_on_the_fourth_call)
    with pytest.raises(KeyboardInterrupt):
        synth(tiny_config(out, prompts_file), Processes())
    monkeypatch.undo()
    assert list(read_set(out)) == ["train-00000000-00000002.parquet"]
    assert not yaml.safe_load((out / "synth.yaml").read_text())["complete"]
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]  # no half-written file is left
    # a hard kill in the middle of a write leaves a hidden temporary file: readers skip it, the rerun replaces it
    (out / "data" / ".train-00000004-00000005.parquet.tmp").write_bytes(b"half a parquet file")
    assert len(load_dataset("parquet", data_dir=str(out), split="train", cache_dir=str(tmp_path / "cache"))) == 2

    result = synth(tiny_config(out, prompts_file, "pending_batches=1"), Processes())
    assert (result.shards, result.images) == (2, 12)  # only the missing shards were generated
    resumed, reference = read_set(out), read_set(reference_set)
    assert list(resumed) == list(reference)
    for name, table in reference.items():
        assert resumed[name].equals(table), name
    assert not [p for p in (out / "data").iterdir() if p.name.startswith(".")]
    assert yaml.safe_load((out / "synth.yaml").read_text())["complete"]


def test_a_failure_while_scoring_stops_the_run_and_writes_no_partial_shard(
    reference_set, prompts_file, tmp_path, monkeypatch
):
    calls = []
    score = synth_module.score_images

    def fails_on_the_second_call(rewards, prompts, images):  # the rewards score a shard's 8 candidates at once
        calls.append(len(images))
        if len(calls) == 2:
            raise RuntimeError("reward server went away")
        return score(rewards, prompts, images)

    monkeypatch.setattr(synth_module, "score_images", fails_on_the_second_call)
    with pytest.raises(RuntimeError, match="reward server went away"):
        synth(tiny_config(tmp_path / "set", prompts_file, "pending_batches=4"), Processes())
    written, reference = read_set(tmp_path / "set"), read_set(reference_set)
    assert "train-00000000-00000002.parquet" in written and "train-00000002-00000004.parquet" not in written
    for name, table in written.items():  # shards submitted before the failure was seen are whole
        assert table.equals(reference[name]), name
    assert not [p for p in (tmp_path / "set" / "data").iterdir() if p.name.startswith(".")]


def test_resuming_with_other_settings_or_prompts_fails(reference_set, prompts_file, tmp_path):
    with pytest.raises(ConfigError, match=r"seeds=2, not 3"):
        synth(tiny_config(reference_set, prompts_file, "seeds=3"), Processes())
    with pytest.raises(ConfigError, match=r"prompts.count=5, not 2"):
        synth(tiny_config(reference_set, write_prompts(tmp_path / "p.txt", ["a", "b"])), Processes())
    # options that do not change what is written may differ: the complete set is left as it is
    out = shutil.copytree(reference_set, tmp_path / "copy")
    result = synth(tiny_config(out, prompts_file, "pending_batches=0", "generators.0.batch_size=1"), Processes())
    assert result.shards == 0 and read_set(out).keys() == read_set(reference_set).keys()


def test_jpeg_images_are_written_as_jpeg(tmp_path):
    prompts = write_prompts(tmp_path / "p.txt", ["a red cat"])
    synth(tiny_config(tmp_path / "set", prompts, "image_format=jpeg", "jpeg_quality=80"), Processes())
    (table,) = read_set(tmp_path / "set").values()
    images = table.column("images").to_pylist()[0]
    assert [PIL.Image.open(io.BytesIO(image["bytes"])).format for image in images] == ["JPEG"] * 4


@pytest.mark.slow
def test_two_processes_write_the_same_set_as_one(reference_set, prompts_file, tmp_path):
    """Two torchrun processes (gloo on the CPU) share the shards: 0 and 2 on rank 0, 1 on rank 1."""
    out = tmp_path / "set"
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    command = [*launcher, "-m", "mmdpo", "synth", str(TINY), f"prompts={prompts_file}", f"out={out}", "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, check=True, env=env, capture_output=True)
    two, one = read_set(out), read_set(reference_set)
    assert list(two) == list(one)
    for name, table in one.items():
        assert two[name].equals(table), name
    assert (out / "README.md").read_text() == (reference_set / "README.md").read_text().replace(
        str(reference_set), str(out)
    )


SYNTH_RECIPES = ("rankdpo_lora", "plackett_luce_lora", "dpo_pairs_lora")
TRAINING_RECIPES = [TINY.parents[1] / folder / f"{name}.yaml" for folder in ("sd15", "sdxl") for name in SYNTH_RECIPES]


@pytest.mark.parametrize("recipe", TRAINING_RECIPES, ids=[f"{p.parent.name}/{p.stem}" for p in TRAINING_RECIPES])
def test_the_training_recipes_train_on_a_synth_set(recipe, reference_set, tmp_path):
    """RankDPO, Plackett-Luce and Diffusion-DPO on expanded pairs, each recipe on its tiny model for two steps."""
    from mmdpo.config import load_config
    from mmdpo.training.trainer import train

    config = load_config(
        recipe,
        [
            f"model.path=tiny:{recipe.parent.name}", "model.dtype=float32", "model.gradient_checkpointing=false",
            "model.lora.r=4", f"data.path={reference_set}", "data.resolution=16", "data.num_workers=0",
            "data.eval_fraction=0.2", "train.mixed_precision=no", "train.max_steps=2", "train.batch_size=2",
            "train.grad_accum=1", "train.log_every=1", "train.tensorboard=false", "train.plots=false",
            "train.progress=false", "train.samples.every=null", f"train.output_dir={tmp_path / 'run'}",
        ],
    )  # fmt: skip
    result = train(config)
    assert len(result.history) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.history)
    assert result.eval_after["eval/loss"] != result.eval_before["eval/loss"]  # the LoRA moved
    assert (result.final_dir / "pytorch_lora_weights.safetensors").is_file()
