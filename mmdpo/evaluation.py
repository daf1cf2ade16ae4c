"""``mmdpo eval``: a trained text-to-image run against its base model, on the same prompts and seeds.

    mmdpo eval outputs/sdxl_diffusion_dpo_lora prompts=/data/eval_prompts.txt rewards=[pickscore,hpsv2] seeds=4

The run's saved output is loaded the way a user loads it (``pipe.load_lora_weights(final)``, or the saved UNet);
base and policy generate every prompt from the same seeds, each image from its own generator; every reward scores
every image. Reported per reward: the mean before and after and the policy's win rate over the base on matched
(prompt, seed) pairs, a tie counting half. Writes ``<run>/eval/comparison.json`` and a before/after image grid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mmdpo.rewards import Reward


@dataclass
class Comparison:
    """Reward scores ``[P, S]`` of the base's and the policy's images of P prompts by S seeds, per reward."""

    prompts: list[str]
    seeds: list[int]
    base: dict[str, list[list[float]]]
    policy: dict[str, list[list[float]]]

    def mean(self, which: str, reward: str) -> float:
        return torch.tensor(getattr(self, which)[reward]).mean().item()

    def win_rate(self, reward: str) -> float:
        """How often the policy's image scores above the base's for the same prompt and seed (ties count half)."""
        base, policy = torch.tensor(self.base[reward]), torch.tensor(self.policy[reward])
        return ((policy > base).float() + 0.5 * (policy == base).float()).mean().item()

    def table(self) -> str:
        """A plain-text table: per reward, mean before and after and the win rate over the base."""
        lines = [f"{'reward':<24}{'base':>10}{'policy':>10}{'win rate':>11}"]
        for reward in self.base:
            base, policy, wins = self.mean("base", reward), self.mean("policy", reward), self.win_rate(reward)
            lines.append(f"{reward:<24}{base:>10.4f}{policy:>10.4f}{wins:>10.1%}")
        lines.append(f"({len(self.prompts)} prompts x {len(self.seeds)} seeds, the same for both)")
        return "\n".join(lines)

    def save(self, path: str | Path) -> None:
        summary = {r: {"base": self.mean("base", r), "policy": self.mean("policy", r), "win_rate": self.win_rate(r)}
                   for r in self.base}  # fmt: skip
        Path(path).write_text(json.dumps({"summary": summary, **asdict(self)}, indent=1))


def score_grid(images: Tensor, prompts: Sequence[str], rewards: Sequence) -> dict[str, list[list[float]]]:
    """Every reward on images ``[P, S, 3, H, W]`` in [0, 1]: ``{name: [P][S] scores}``."""
    p, s = images.shape[:2]
    flat_prompts = [prompt for prompt in prompts for _ in range(s)]
    return {reward.name: reward(flat_prompts, images.flatten(0, 1)).view(p, s).tolist() for reward in rewards}


def compare_run(
    run_dir: str | Path,
    prompts: Sequence[str],
    rewards: Sequence[Reward | str],
    *,
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 25,
    guidance_scale: float = 5.0,
    grid: bool = True,
    device: torch.device | None = None,
) -> tuple[Comparison, Tensor, Tensor]:
    """Base against trained policy of a finished text-to-image run (see the module docstring).

    Returns the comparison and the base's and the policy's images ``[P, S, 3, R, R]``. ``rewards``: rewards, or
    names (registered, installed or ``module:attribute``) loaded with their default weights
    (:func:`~mmdpo.rewards.load_reward`). ``device``: where the models run, by default the GPU when there is one.
    """
    from diffusers.utils import logging as diffusers_logging

    from mmdpo.adapters.text_to_image import ImageMedia, TextToImageAdapter, load_text_to_image
    from mmdpo.config import load_config
    from mmdpo.figures import image_grid
    from mmdpo.rewards import load_reward

    rewards = [load_reward(r) if isinstance(r, str) else r for r in rewards]
    run_dir = Path(run_dir)
    config = load_config(run_dir / "config.yaml")
    final = run_dir / "final"
    if not final.is_dir():
        raise FileNotFoundError(f"{run_dir} has no final/ output; evaluate a finished run.")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_text_to_image(config.model.path, vae_path=config.model.vae_path)
    adapter = TextToImageAdapter(model, reference="none", media=ImageMedia(config.data.resolution))
    for module in (model.denoiser, model.vae, *model.text_encoders):
        module.to(device)
    options = {"steps": steps, "guidance_scale": guidance_scale}
    base = adapter.generate(prompts, seeds, **options)
    if (final / "pytorch_lora_weights.safetensors").is_file():
        verbosity = diffusers_logging.get_verbosity()  # quiet its note that the text encoders get no LoRA
        diffusers_logging.set_verbosity_error()
        try:
            adapter.pipeline().load_lora_weights(final)  # into the adapter's UNet, as a user loads it
        finally:
            diffusers_logging.set_verbosity(verbosity)
    else:
        family = model.family
        model.denoiser = family.denoiser_class.from_pretrained(final, subfolder=family.denoiser_name).to(device)
    policy = adapter.generate(prompts, seeds, **options)
    comparison = Comparison(list(prompts), list(seeds), score_grid(base, prompts, rewards),
                            score_grid(policy, prompts, rewards))  # fmt: skip
    out = run_dir / "eval"
    out.mkdir(exist_ok=True)
    comparison.save(out / "comparison.json")
    if grid:
        columns = [f"base {s}" for s in seeds] + [f"trained {s}" for s in seeds]
        image_grid(torch.cat([base, policy], dim=1), list(prompts), columns).save(out / "before_after.png")
    return comparison, base, policy
