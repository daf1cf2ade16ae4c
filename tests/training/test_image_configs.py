"""Every shipped text-to-image recipe loads and runs a step on the tiny model of its family, on data of its kind."""

from pathlib import Path

import pytest

from mmdpo.config import load_config
from mmdpo.training.trainer import train

CONFIGS = Path(__file__).parents[2] / "configs"
RECIPES = sorted([*(CONFIGS / "sd15").glob("*.yaml"), *(CONFIGS / "sdxl").glob("*.yaml")])
TINY = [
    "model.dtype=float32", "model.vae_path=null", "model.vae_dtype=float32", "model.gradient_checkpointing=false",
    "data.format=auto", "data.split=train", "data.eval_split=null", "data.eval_fraction=0.25", "data.resolution=16",
    "data.num_workers=0", "train.max_steps=1", "train.batch_size=2", "train.grad_accum=1", "train.mixed_precision=no",
    "train.samples.every=null", "train.tensorboard=false", "train.plots=false", "train.progress=false",
]  # fmt: skip


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{p.parent.name}/{p.stem}" for p in RECIPES])
def test_recipe_runs(recipe, tmp_path, request):
    objective = load_config(recipe).objective.name
    data = {"smpo": "scored_pairs", "diffusion_kto": "unpaired"}.get(objective, "pickapic")
    overrides = [
        f"model.path=tiny:{recipe.parent.name}", f"data.path={request.getfixturevalue(data)}",
        f"train.output_dir={tmp_path}", *TINY,
    ]  # fmt: skip
    if objective == "smpo":
        overrides += ["objective.score_min=0", "objective.score_max=1"]
    result = train(load_config(recipe, overrides))
    assert result.eval_after["eval/loss"] == result.eval_after["eval/loss"]  # finite, not NaN
    assert result.final_dir.is_dir()
