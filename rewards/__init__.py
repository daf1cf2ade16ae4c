"""Reward scorers behind one interface, ensembles and rank aggregation.

from mmdpo.rewards import PickScore, Ensemble, load_reward
pickscore = PickScore.from_pretrained(device="cuda", dtype=torch.float16)
scores = pickscore(prompts, images)                # Tensor [N], float32 on the CPU
ranked = Ensemble([pickscore, load_reward("hpsv2")])(prompts, candidates)

Your own reward: subclass :class:`Reward` (set ``name``, implement ``score_batch``) or wrap a function in
:class:`CallableReward`, then name it wherever a reward is named (``mmdpo synth``, ``score`` and ``eval`` configs,
``mmdpo demo --config``, :func:`load_reward`, :class:`Ensemble`) by its import path, ``my_pkg.rewards:Sharpness``
(a Reward subclass or a factory returning one, options as ``{name: ..., options: {...}}``), or register it from an
installed package under the ``mmdpo.rewards`` entry-point group and name it by its entry point's name
(:mod:`mmdpo.rewards.registry`).
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
from mmdpo.rewards.registry import ENTRY_POINT_GROUP, REWARDS, UnknownReward, load_reward, resolve_reward

__all__ = [
    "AGGREGATIONS", "ENTRY_POINT_GROUP", "REWARDS", "Aesthetic", "Audio", "Brightness", "CallableReward", "CLAPScore",
    "CLIPScore", "ColourMatch", "Colourfulness", "Ensemble", "HPSv2", "JpegCompressibility", "PickScore",
    "RankedGroups", "Reward", "UnknownReward", "VLMJudge", "aggregate", "dense_ranks", "load_reward", "normalise",
    "pairs", "resolve_reward", "to_pil_images", "to_waveforms", "win_counts",
]  # fmt: skip
