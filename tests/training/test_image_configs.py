"""Every shipped text-to-image recipe loads and runs a step on the tiny model of its family, on data of its kind."""

import json
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


def user_jsonl(folder: Path, objective: str) -> Path:
    """A user's own data as plain JSONL beside its PNG files: pairs, scored lists (SmPO) or likes (Diffusion-KTO)."""
    from PIL import Image

    folder.mkdir()
    rows = []
    for i in range(6):
        bright, dark = folder / f"{i}-bright.png", folder / f"{i}-dark.png"
        Image.new("RGB", (20, 24), (200 + 5 * i, 220, 230)).save(bright)
        Image.new("RGB", (20, 24), (10 * i, 20, 30)).save(dark)
        if objective == "smpo":
            rows.append({"prompt": f"a picture {i}", "images": [bright.name, dark.name], "scores": [0.9, 0.2]})
        elif objective == "diffusion_kto":
            rows += [{"prompt": f"a picture {i}", "image": p.name, "label": p is bright} for p in (bright, dark)]
        else:
            rows.append({"prompt": f"a picture {i}", "chosen": bright.name, "rejected": dark.name})
    path = folder / "prefs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.parametrize("recipe", RECIPES, ids=[f"{p.parent.name}/{p.stem}" for p in RECIPES])
def test_recipe_runs_as_shipped_on_a_users_jsonl_with_samples(recipe, tmp_path):
    """Only the model (a hub VAE replaced by the tiny model's own), the data and the run's length change: dtypes,
    precision, held-out settings, sampling and the recipe's own options stay as shipped."""
    objective = load_config(recipe).objective.name
    overrides = [
        f"model.path=tiny:{recipe.parent.name}", f"data.path={user_jsonl(tmp_path / 'data', objective)}",
        "data.resolution=16", "data.num_workers=0", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2",
        "train.batch_size=2", "train.grad_accum=1", "train.samples.every=1", "train.samples.steps=2",
        "train.samples.seeds=1", "train.progress=false", "model.vae_path=null",
    ]  # fmt: skip
    result = train(load_config(recipe, overrides))
    assert result.final_dir.is_dir()
    assert sorted(p.name for p in (tmp_path / "run" / "samples").glob("*.png")) == [
        "step-000000.png", "step-000001.png", "step-000002.png"
    ]
