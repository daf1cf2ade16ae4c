"""Every shipped recipe loads and runs two steps on the tiny model."""

from pathlib import Path

import pytest

from mmdpo.config import load_config
from mmdpo.data.toy import toy_margin_pairs, toy_step_pairs
from mmdpo.objectives import get_objective
from mmdpo.training.trainer import train

RECIPES = sorted((Path(__file__).parents[2] / "configs" / "llm").glob("*.yaml"))
TINY = [
    "model.path=tiny:llama", "model.dtype=float32", "data.path=toy", "data.num_workers=0", "data.eval_fraction=0.05",
    "train.max_steps=2", "train.batch_size=4", "train.grad_accum=1", "train.mixed_precision=no",
    "train.tensorboard=false", "train.plots=false", "train.progress=false",
]  # fmt: skip


def data_for(recipe: Path, tmp_path: Path) -> str:
    """The toy task, or toy step pairs / toy pairs with margin rewards where the recipe's objective reads them."""
    objective = load_config(recipe).objective
    labels = get_objective(objective.name, **objective.hparams).labels
    reads = set().union(*(label.columns for label in labels))
    for column, make in (("steps", toy_step_pairs), ("margin_rewards", toy_margin_pairs)):
        if column in reads:
            make(64).to_json(tmp_path / f"{column}.jsonl")
            return str(tmp_path / f"{column}.jsonl")
    return "toy"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs(recipe, tmp_path):
    overrides = [*TINY, f"data.path={data_for(recipe, tmp_path)}", f"train.output_dir={tmp_path}"]
    result = train(load_config(recipe, overrides))
    assert result.eval_after["eval/loss"] == result.eval_after["eval/loss"]  # finite, not NaN
    assert (result.final_dir / "tokenizer_config.json").exists()
