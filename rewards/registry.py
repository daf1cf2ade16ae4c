"""Rewards by name, as configs name them (``rewards: [pickscore, hpsv2]``)."""

from __future__ import annotations

import difflib
from typing import Any

from mmdpo.rewards.base import Reward
from mmdpo.rewards.clap import CLAPScore
from mmdpo.rewards.judge import VLMJudge
from mmdpo.rewards.open_clip_rewards import Aesthetic, CLIPScore, HPSv2
from mmdpo.rewards.pickscore import PickScore
from mmdpo.rewards.programmatic import Brightness, Colourfulness, ColourMatch, JpegCompressibility

REWARDS: dict[str, type[Reward]] = {
    cls.name: cls
    for cls in (
        PickScore, HPSv2, Aesthetic, CLIPScore, CLAPScore, VLMJudge,
        Brightness, Colourfulness, JpegCompressibility, ColourMatch,
    )
}  # fmt: skip


def load_reward(name: str, path: str | None = None, **kwargs: Any) -> Reward:
    """A registered reward.

    Args:
        name: a key of :data:`REWARDS`.
        path: for model rewards, a local path or hub id passed to ``from_pretrained`` (None: the default weights;
            ``"tiny"``: random weights from a tiny config). Rewards without weights take none.
        kwargs: the reward's options (``batch_size``, ``device``, ``dtype``, ...).
    """
    if name not in REWARDS:
        close = difflib.get_close_matches(name, REWARDS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"Unknown reward {name!r}; {hint}known rewards: {', '.join(REWARDS)}.")
    cls = REWARDS[name]
    if not hasattr(cls, "from_pretrained"):
        if path is not None:
            raise ValueError(f"Reward {name!r} has no weights to load; drop path={path!r}.")
        return cls(**kwargs)
    if path == "tiny":
        return cls.tiny(**kwargs)
    return cls.from_pretrained(**kwargs) if path is None else cls.from_pretrained(path, **kwargs)
