"""``mmdpo demo``: the whole story on this machine, nothing downloaded.

    mmdpo demo                              # the embedded config, mmdpo/assets/demo.yaml
    mmdpo demo --config my_demo.yaml        # your own synth + train + eval config, same layout
    mmdpo demo --llm                        # the causal-LM toy task instead

1. ``synth``: the toy text-to-image model shipped in :mod:`mmdpo.assets` draws candidates for the training prompts,
   a programmatic reward (brightness) scores them, and they become a ranked preference set (:mod:`mmdpo.pipelines`).
2. ``train``: RankDPO trains a LoRA on the ranked lists (:func:`mmdpo.training.trainer.train`).
3. ``eval``: the saved LoRA, loaded as users load it, and the base model draw the held-out prompts from the same
   seeds; the reward before and after and the policy's win rate are printed (:mod:`mmdpo.evaluation`), with a
   before/after image grid and the training curves as PNG.

The ``--llm`` demo trains a tiny causal LM built in memory with DPO on the synthetic vowel task
(:mod:`mmdpo.data.toy`) and compares the reward of samples from the base and the trained policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate.utils import set_seed

from mmdpo.adapters.llm import load_causal_lm
from mmdpo.assets import TOY_T2I
from mmdpo.config import ConfigError, load_config, read_tree
from mmdpo.data.toy import toy_groups, vowel_reward
from mmdpo.precision import DTYPES
from mmdpo.training.trainer import RunResult, train

DEMO_CONFIG = TOY_T2I.parent / "demo.yaml"
SECTIONS = ("train_prompts", "eval_prompts", "synth", "train", "eval")


def _filled(tree: Any, values: dict[str, str]) -> Any:
    """``tree`` with ``{assets}`` and ``{out}`` replaced in every string."""
    if isinstance(tree, dict):
        return {k: _filled(v, values) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_filled(v, values) for v in tree]
    if isinstance(tree, str):
        for name, value in values.items():
            tree = tree.replace("{" + name + "}", value)
    return tree


def demo_tree(config_path: str | Path | None, overrides: list[str], output_dir: Path) -> dict[str, Any]:
    """The demo config: its sections checked, placeholders filled, overrides applied."""
    path = Path(config_path) if config_path else DEMO_CONFIG
    tree = read_tree(path, overrides)
    unknown = set(tree) - set(SECTIONS)
    missing = set(SECTIONS) - set(tree)
    if unknown or missing:
        raise ConfigError(
            f"A demo config has the sections {', '.join(SECTIONS)}; {path} "
            + (f"adds {', '.join(sorted(unknown))}" if unknown else f"lacks {', '.join(sorted(missing))}")
            + "."
        )
    return _filled(tree, {"assets": str(TOY_T2I.parent), "out": str(output_dir)})


def run_demo(config_path: str | None = None, overrides: list[str] | None = None, output_dir: str = "outputs/demo"):
    """Synthesise, train and compare (see the module docstring); returns the run result and the comparison."""
    from mmdpo.evaluation import compare_run
    from mmdpo.pipelines.config import load_synth_config, reward_sections
    from mmdpo.pipelines.ranked_set import device_of, load_rewards
    from mmdpo.pipelines.synth import synth

    out = Path(output_dir)
    tree = demo_tree(config_path, overrides or [], out)
    out.mkdir(parents=True, exist_ok=True)
    sets = {}
    for split in ("train", "eval"):  # a ranked set of each split's prompts, the held-out one from other seeds
        prompts = out / f"{split}_prompts.txt"
        prompts.write_text("".join(f"{p}\n" for p in tree[f"{split}_prompts"]))
        settings = {**tree["synth"], "prompts": str(prompts), "out": str(out / f"synth-{split}")}
        settings["seed"] = settings.get("seed", 0) + (split == "eval")
        sets[split] = out / f"synth-{split}.yaml"
        sets[split].write_text(yaml.safe_dump(settings, sort_keys=False))
    run_tree, train_file = tree["train"], out / "train.yaml"
    run_tree["data"] = {
        **run_tree.get("data", {}),
        "path": str(out / "synth-train"),
        "eval_path": str(out / "synth-eval"),
    }
    run_tree["train"] = {**run_tree.get("train", {}), "output_dir": str(out / "run")}
    train_file.write_text(yaml.safe_dump(run_tree, sort_keys=False))
    synth_configs, config = [load_synth_config(path) for path in sets.values()], load_config(train_file)
    settings = tree["eval"]
    eval_rewards = reward_sections(settings["rewards"], "eval.rewards")

    print(f"mmdpo demo 1/3: synthesise ranked candidates ({', '.join(map(str, sets.values()))})")
    for synth_config in synth_configs:
        synth(synth_config)
    print(f"mmdpo demo 2/3: train {config.objective.name} on {config.model.path} ({train_file})")
    result = train(config)
    print("mmdpo demo 3/3: compare the trained model with its base on held-out prompts and seeds")
    comparison, _, _ = compare_run(
        result.output_dir, tree["eval_prompts"], load_rewards(eval_rewards, device_of("auto")),
        seeds=list(range(settings["seeds"])),
        steps=settings["steps"], guidance_scale=settings["guidance_scale"],
    )  # fmt: skip
    print()
    print(comparison.table())
    before, after = result.eval_before, result.eval_after
    if "eval/rewards/accuracies" in before:
        print(
            f"implicit-reward accuracy on held-out candidates {before['eval/rewards/accuracies']:.3f} -> "
            f"{after['eval/rewards/accuracies']:.3f}"
        )
    print(f"\nbefore/after images: {result.output_dir / 'eval' / 'before_after.png'}")
    print(f"training curves:     {result.output_dir / 'training_curves.png'}")
    print(f"LoRA (pipe.load_lora_weights): {result.final_dir}")
    return result, comparison


# --- the causal-LM demo ----------------------------------------------------------------------------

LLM_SETTINGS = [
    "model.path=tiny:llama",
    "data.path=toy",
    "data.eval_fraction=0.125",
    "objective.name=dpo",
    "objective.beta=0.5",
    "train.epochs=8",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.warmup_ratio=0.05",
    "train.log_every=5",
    "train.eval_every=20",
    "train.tensorboard=false",
]


@torch.no_grad()
def sample_rewards(model, tokenizer, prompts: list[str], seed: int, max_new_tokens: int = 12) -> list[float]:
    """Vowel reward of one sampled completion per prompt, with a fixed seed per prompt."""
    model.eval()
    rewards = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"].to(model.device)
        out = model.generate(
            ids, do_sample=True, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, top_k=0
        )
        rewards.append(vowel_reward(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)))
    return rewards


def compare_samples(result: RunResult, config, prompts: list[str], seed: int = 1234) -> dict[str, float]:
    """Mean reward of the base and of the policy on the same prompts and seeds, and the policy's win rate."""
    from transformers import AutoModelForCausalLM

    set_seed(config.train.seed)  # rebuilds the same initial weights for tiny models
    base, tokenizer = load_causal_lm(config.model.path, dtype=DTYPES[config.model.dtype])
    if config.model.lora is not None:
        from peft import PeftModel

        policy = PeftModel.from_pretrained(base, result.final_dir)
        with policy.disable_adapter():
            base_rewards = sample_rewards(policy, tokenizer, prompts, seed)
    else:
        policy = AutoModelForCausalLM.from_pretrained(result.final_dir)
        base_rewards = sample_rewards(base, tokenizer, prompts, seed)
    policy_rewards = sample_rewards(policy, tokenizer, prompts, seed)
    wins = [(p > b) + 0.5 * (p == b) for p, b in zip(policy_rewards, base_rewards)]
    return {
        "base": sum(base_rewards) / len(prompts),
        "policy": sum(policy_rewards) / len(prompts),
        "win_rate": sum(wins) / len(prompts),
    }


def run_llm_demo(overrides: list[str] | None = None, output_dir: str = "outputs/demo-llm"):
    """Train DPO on the vowel task, then print a before/after table; returns (run result, sample comparison)."""
    config = load_config(None, [*LLM_SETTINGS, f"train.output_dir={output_dir}", *(overrides or [])])
    print(f"mmdpo demo --llm: {config.objective.name} on {config.model.path}, data={config.data.path}")
    result = train(config)
    before, after = result.eval_before, result.eval_after
    samples = compare_samples(result, config, toy_groups(64, seed=config.train.seed + 10_000)["prompt"])
    rows = [
        ("held-out implicit-reward accuracy", before["eval/rewards/accuracies"], after["eval/rewards/accuracies"]),
        ("held-out loss", before["eval/loss"], after["eval/loss"]),
        ("sampled vowel reward (held-out prompts)", samples["base"], samples["policy"]),
    ]
    print(f"\n{'':42s}{'before':>10s}{'after':>10s}")
    for name, b, a in rows:
        print(f"{name:42s}{b:10.3f}{a:10.3f}")
    print(f"{'policy win rate over base (same seeds)':42s}{'':>10s}{samples['win_rate']:10.1%}")
    print(f"\ntraining curves: {Path(output_dir) / 'training_curves.png'}\nmodel: {result.final_dir}")
    return result, samples
