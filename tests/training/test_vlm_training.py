"""Vision-language training end to end on tiny models: learning the colour task, token-level objectives, reference
strategies, the shipped recipes, unreadable images and the config checks."""

import math
from pathlib import Path

import pytest
from datasets import Dataset
from test_trainer import losses, run

from mmdpo.config import ConfigError, load_config
from mmdpo.data.vlm import colour_pairs
from mmdpo.modalities import resolve_modality

RECIPES = sorted((Path(__file__).parents[2] / "configs" / "vlm").glob("*.yaml"))
TINY = {"qwen2vl": "tiny:qwen2_vl", "llava": "tiny:llava"}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """24 colour pairs in a Parquet file: small enough to precompute and to tokenise quickly."""
    path = tmp_path_factory.mktemp("colours") / "train.parquet"
    colour_pairs(24, seed=1).to_parquet(path)
    return path


def test_dpo_learns_which_colour_fills_the_picture(tmp_path):
    """Every row asks the same question, so only the image can tell the preferred colour from the other."""
    settings = ["objective.beta=0.5", "train.lr=3e-3", "train.epochs=3", "train.batch_size=16"]
    result = run(tmp_path, "model.path=tiny:llava", "data.path=toy", *settings)
    before, after = result.eval_before, result.eval_after
    assert before["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at step 0
    assert before["eval/rewards/accuracies"] == pytest.approx(0.5)
    assert after["eval/rewards/accuracies"] >= 0.9


def test_tdpo_trains_a_vlm_through_its_lora_adapter(tmp_path, colours):
    """The reference is the model with its adapter off (and its base output layer); Qwen2-VL's M-RoPE positions."""
    result = run(
        tmp_path, "model.path=tiny:qwen2_vl", "model.lora.r=4", "objective.name=tdpo", f"data.path={colours}",
        "objective.beta=0.5", "train.lr=3e-3", "train.max_steps=4", "train.batch_size=4", "train.log_every=1",
        "data.eval_fraction=0.25",
    )  # fmt: skip
    assert losses(result)[0] == pytest.approx(math.log(2), abs=1e-6)  # per-token KL exactly 0 at the start
    assert result.eval_before["eval/kl/chosen"] == 0
    assert result.eval_after["eval/kl/chosen"] > 0 and result.eval_after["eval/loss"] < math.log(2)


def test_sparsepo_with_learned_masks_runs_on_a_vlm(tmp_path, colours):
    settings = ["model.path=tiny:idefics3", "model.layout=concat", "objective.name=sparsepo", f"data.path={colours}"]
    result = run(tmp_path, *settings, "train.max_steps=2", "train.batch_size=4", "train.log_every=1")
    assert losses(result)[0] == pytest.approx(math.log(2), abs=1e-6)


def test_a_precomputed_reference_gives_the_live_run(tmp_path, colours):
    settings = [f"data.path={colours}", "train.max_steps=3", "train.batch_size=8", "train.log_every=1"]
    settings += ["model.path=tiny:qwen2_vl", "train.lr=1e-3", "data.eval_fraction=0"]
    live = losses(run(tmp_path, *settings, "model.reference=copy", name="live"))
    stored = losses(run(tmp_path, *settings, "model.reference=precomputed", name="stored"))
    assert live == pytest.approx(stored, rel=1e-5) and live[0] == pytest.approx(math.log(2), abs=1e-6)
    assert live[-1] != live[0]


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs(recipe, tmp_path, colours):
    tiny = TINY[recipe.stem.split("_")[0]]
    overrides = [
        f"model.path={tiny}", "model.processor={}", "model.dtype=float32", "model.gradient_checkpointing=false",
        f"data.path={colours}", "data.eval_fraction=0.25", "data.num_workers=0", "train.max_steps=1",
        "train.batch_size=2", "train.grad_accum=1", "train.mixed_precision=no", "train.tensorboard=false",
        "train.plots=false", "train.progress=false", f"train.output_dir={tmp_path}",
    ]  # fmt: skip
    from mmdpo.training.trainer import train

    result = train(load_config(recipe, overrides))
    assert result.eval_after["eval/loss"] == result.eval_after["eval/loss"]  # finite, not NaN
    assert (result.final_dir / "processor_config.json").exists()


def test_unreadable_images_are_skipped_and_counted_or_fatal(tmp_path):
    rows = colour_pairs(12).to_list()
    rows[3]["image"] = {"bytes": b"not an image", "path": None}
    path = tmp_path / "prefs.parquet"
    Dataset.from_list(rows, features=colour_pairs(1).features).to_parquet(path)
    settings = ["model.path=tiny:llava", f"data.path={path}", "train.max_steps=1", "train.batch_size=4"]
    result = run(tmp_path, *settings, "data.bad_rows=skip", "data.eval_fraction=0")
    assert result.skipped == {"bad_image": 1}
    with pytest.raises(ValueError, match="Row 3: Image bytes is not a readable image"):
        run(tmp_path, *settings, name="fatal")


def test_vlm_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="model.train_vision applies to vision-language models only"):
        load_config(None, ["model.path=tiny:llama", "model.train_vision=true"])
    with pytest.raises(ConfigError, match="data.resolution applies to text-to-image .* is a vision-language model"):
        load_config(None, ["model.path=tiny:llava", "data.resolution=256"])
    with pytest.raises(ConfigError, match="model.processor configures a processor loaded from a path"):
        load_config(None, ["model.path=tiny:qwen2_vl", "model.processor={max_pixels: 784}"])
    with pytest.raises(ConfigError, match="did you mean 'train_vision'"):
        load_config(None, ["model.path=tiny:llava", "model.train_visoin=true"])
    with pytest.raises(ConfigError, match="model.layout=shared needs a 4-D attention mask"):
        load_config(None, ["model.path=tiny:llava", "model.attn_implementation=flash_attention_2"])


def test_the_modality_is_read_from_a_saved_checkpoint(tmp_path):
    from mmdpo.adapters.tiny import tiny_causal_lm, tiny_tokenizer
    from mmdpo.adapters.tiny_vlm import tiny_vlm

    tiny_vlm("idefics3")[0].save_pretrained(tmp_path / "vlm")
    tiny_causal_lm("qwen2", tiny_tokenizer()).save_pretrained(tmp_path / "llm")
    assert resolve_modality(str(tmp_path / "vlm")).name == "vlm"
    assert resolve_modality(str(tmp_path / "llm")).name == "llm"
    assert resolve_modality("tiny:paligemma").name == "vlm"


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, colours):
    """Under DDP the frozen tower's features are encoded outside the wrapped scorer; the LoRA policy trains inside."""
    import subprocess
    import sys

    from mmdpo.training.logs import read_metrics

    settings = [f"data.path={colours}", "data.eval_fraction=0", "train.max_steps=3", "train.log_every=1"]
    settings += ["model.lora.r=4", "train.lr=1e-2", "train.tensorboard=false"]
    settings += ["train.progress=false", "train.plots=false", "data.num_workers=0"]
    (tmp_path / "run.yaml").write_text("model: {path: tiny:qwen2_vl}\n")
    mmdpo = [sys.executable, "-m", "mmdpo", "train", str(tmp_path / "run.yaml"), *settings]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29519"]
    subprocess.run([*mmdpo, f"train.output_dir={tmp_path / 'one'}", "train.batch_size=8"], check=True)
    subprocess.run([*launcher, *mmdpo[1:], f"train.output_dir={tmp_path / 'two'}", "train.batch_size=4"], check=True)
    single, double = ([r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl")] for run in ("one", "two"))
    assert len(single) == 3 and single == pytest.approx(double, rel=1e-5)
    assert single[-1] != single[0]
