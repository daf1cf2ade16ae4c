"""Rewards by name, as configs name them: a registered name, a name an installed package registers, or an import path.

    rewards: [pickscore, hpsv2]                                   # registered here (REWARDS)
    rewards: [sharpness]                                          # an installed package's entry point
    rewards: [my_pkg.rewards:Sharpness]                           # module:attribute
    rewards: [{name: my_pkg.rewards:Sharpness, weight: 0.5, options: {threshold: 3}}]

:func:`resolve_reward` looks a name up in :data:`REWARDS`, then reads ``module:attribute`` as an import path, then
looks it up in the ``mmdpo.rewards`` entry-point group, where a package registers its rewards by name::

    [project.entry-points."mmdpo.rewards"]                        # the package's pyproject.toml
    sharpness = "my_pkg.rewards:Sharpness"

The attribute is a :class:`~mmdpo.rewards.base.Reward` subclass (built as the registered ones are: its options as
keyword arguments, ``path`` through its ``from_pretrained`` or ``tiny``) or a factory that returns a Reward (called
with the options, and with ``path`` first when one is given).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from collections.abc import Callable
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

ENTRY_POINT_GROUP = "mmdpo.rewards"

RewardLoader = Callable[..., Reward]
"""A :class:`Reward` subclass or a factory returning a Reward."""


class UnknownReward(ValueError):
    """A reward name that is neither registered, an import path nor an installed entry point; ``known`` holds the
    names that are."""

    def __init__(self, name: str, known: list[str]):
        self.known = known
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(
            f"Unknown reward {name!r}; {hint}known rewards: {', '.join(known)}, or an import path module:attribute."
        )


def installed_rewards() -> dict[str, importlib.metadata.EntryPoint]:
    """The rewards installed packages register in the ``mmdpo.rewards`` entry-point group, by name."""
    return {entry.name: entry for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _imported(module_name: str, attribute: str, label: str) -> Any:
    """The (dotted) ``attribute`` of module ``module_name``; ``label`` names the reward in errors."""
    try:
        target = importlib.import_module(module_name)
    except Exception as err:  # a module may raise anything on import
        raise ValueError(
            f"Reward {label}: module {module_name!r} does not import ({type(err).__name__}: {err})."
        ) from err
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"Reward {label}: module {module_name!r} has no attribute {attribute!r}.")
        target = getattr(target, part)
    return target


def _checked(target: Any, label: str) -> RewardLoader:
    """``target`` if it is a Reward subclass or another callable (a factory, checked when called)."""
    if isinstance(target, type) and not issubclass(target, Reward):
        raise ValueError(f"Reward {label}: {target.__qualname__} is not a subclass of mmdpo.rewards.Reward.")
    if not callable(target):
        raise ValueError(
            f"Reward {label} is of type {type(target).__name__}, not a Reward subclass or a factory of one."
        )
    return target


def resolve_reward(name: str) -> RewardLoader:
    """What builds the reward ``name`` (see the module docstring); a ``ValueError`` in one sentence when nothing
    does, :class:`UnknownReward` for a name that is neither registered, installed nor an import path."""
    if name in REWARDS:
        return REWARDS[name]
    if ":" in name:
        module_name, _, attribute = name.partition(":")
        if not module_name or not attribute:
            raise ValueError(
                f"Reward {name!r} is not an import path; write module:attribute, e.g. my_pkg.mod:Sharpness."
            )
        return _checked(_imported(module_name, attribute, repr(name)), repr(name))
    installed = installed_rewards()
    if name in installed:
        entry = installed[name]
        label = f"{name!r} (entry point {entry.value})"
        return _checked(_imported(entry.module, entry.attr, label), label)
    raise UnknownReward(name, [*REWARDS, *(n for n in installed if n not in REWARDS)])


def load_reward(name: str, path: str | None = None, **kwargs: Any) -> Reward:
    """A reward by name (see the module docstring).

    Args:
        name: a key of :data:`REWARDS`, an import path ``module:attribute`` or an installed reward's name.
        path: for model rewards, a local path or hub id passed to ``from_pretrained`` (None: the default weights;
            ``"tiny"``: random weights from a tiny config); for a factory, its first argument. Rewards without
            weights take none.
        kwargs: the reward's options (``batch_size``, ``device``, ``dtype``, ...).
    """
    loader = resolve_reward(name)
    if not isinstance(loader, type):
        reward = loader(**kwargs) if path is None else loader(path, **kwargs)
        if not isinstance(reward, Reward):
            raise ValueError(f"Reward {name!r} returned a {type(reward).__name__}, not a mmdpo.rewards.Reward.")
        return reward
    if not hasattr(loader, "from_pretrained"):
        if path is not None:
            raise ValueError(f"Reward {name!r} has no weights to load; drop path={path!r}.")
        return loader(**kwargs)
    if path == "tiny":
        return loader.tiny(**kwargs)
    return loader.from_pretrained(**kwargs) if path is None else loader.from_pretrained(path, **kwargs)
