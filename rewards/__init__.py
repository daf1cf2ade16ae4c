"""Reward scorers behind one interface, ensembles and rank aggregation.

from mmdpo.rewards import PickScore, Ensemble, load_reward
pickscore = PickScore.from_pretrained(device="cuda", dtype=torch.float16)
scores = pickscore(prompts, images)                # Tensor [N], float32 on the CPU
ranked = Ensemble([pickscore, load_reward("hpsv2")])(prompts, candidates)
"""

from mmdpo.rewards.base import CallableReward, Reward
from mmdpo.rewards.clap import CLAPScore
from mmdpo.rewards.ensemble import (
    AGGREGATIONS,
    Ensemble,
    RankedGroups,
    aggregate,
    dense_ranks,
    normalise,
    pairs,
    win_counts,
)
from mmdpo.rewards.judge import VLMJudge
from mmdpo.rewards.media import Audio, to_pil_images, to_waveforms
from mmdpo.rewards.open_clip_rewards import Aesthetic, CLIPScore, HPSv2
from mmdpo.rewards.pickscore import PickScore
from mmdpo.rewards.programmatic import Brightness, Colourfulness, ColourMatch, JpegCompressibility
from mmdpo.rewards.registry import REWARDS, load_reward

__all__ = [
    "AGGREGATIONS", "REWARDS", "Aesthetic", "Audio", "Brightness", "CallableReward", "CLAPScore", "CLIPScore",
    "ColourMatch", "Colourfulness", "Ensemble", "HPSv2", "JpegCompressibility", "PickScore", "RankedGroups", "Reward",
    "VLMJudge", "aggregate", "dense_ranks", "load_reward", "normalise", "pairs", "to_pil_images", "to_waveforms",
    "win_counts",
]  # fmt: skip
