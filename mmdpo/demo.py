"""``mmdpo demo``: align a small model end to end on this machine, nothing downloaded.

A tiny causal LM built in memory is trained with DPO on the synthetic vowel task
(:mod:`mmdpo.data.toy`). The demo prints held-out implicit-reward accuracy and, because the toy
task has a known reward, samples from the base and the trained policy on held-out prompts with
the same seeds and compares their rewards. It writes the training curves as a PNG.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate.utils import set_seed

from mmdpo.adapters.llm import DTYPES, load_causal_lm
from mmdpo.config import load_config
from mmdpo.data.toy import toy_groups, vowel_reward
from mmdpo.training.trainer import RunResult, train

DEMO_SETTINGS = [
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


def run_demo(config_path: str | None = None, overrides: list[str] | None = None, output_dir: str = "outputs/demo"):
    """Train, then print a before/after table; returns (run result, sample comparison or None)."""
    settings = [] if config_path else DEMO_SETTINGS
    config = load_config(config_path, [*settings, f"train.output_dir={output_dir}", *(overrides or [])])
    print(f"mmdpo demo: {config.objective.name} on {config.model.path}, data={config.data.path}")
    result = train(config)

    before, after = result.eval_before, result.eval_after
    rows = [
        (
            "held-out implicit-reward accuracy",
            before.get("eval/rewards/accuracies"),
            after.get("eval/rewards/accuracies"),
        ),
        ("held-out loss", before.get("eval/loss"), after.get("eval/loss")),
    ]
    samples = None
    if config.data.path == "toy":
        prompts = toy_groups(64, seed=config.train.seed + 10_000)["prompt"]
        samples = compare_samples(result, config, prompts)
        rows.append(("sampled vowel reward (held-out prompts)", samples["base"], samples["policy"]))
    print(f"\n{'':42s}{'before':>10s}{'after':>10s}")
    for name, b, a in rows:
        fmt = lambda v: f"{v:10.3f}" if v is not None else f"{'-':>10s}"  # noqa: E731
        print(f"{name:42s}{fmt(b)}{fmt(a)}")
    if samples is not None:
        print(f"{'policy win rate over base (same seeds)':42s}{'':>10s}{samples['win_rate']:10.1%}")
    curves = Path(output_dir) / "training_curves.png"
    if curves.exists():
        print(f"\ntraining curves: {curves}")
    print(f"model: {result.final_dir}")
    return result, samples
