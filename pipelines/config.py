"""The configs of ``mmdpo synth`` and ``mmdpo score``: dataclass schemas read like training configs (a YAML file,
then ``key=value`` overrides), strict about unknown keys and about options that cannot work together.

    config = load_synth_config("configs/synth/sdxl_ranked.yaml", ["prompts=/data/prompts.txt", "out=/data/synpic"])
    config = load_score_config("/data/synpic", ["rewards=[pickscore,hpsv2]"])

A generator or a reward may be given by its path or name alone: ``generators: [tiny:sd15]``,
``rewards=[pickscore,hpsv2]``. A reward's name is a registered one, an installed package's entry point or an import
path, ``rewards=[my_pkg.rewards:Sharpness]`` (:mod:`mmdpo.rewards.registry`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import diffusers

from mmdpo.config import ConfigError, build_section, closest_hint, read_tree
from mmdpo.rewards import Reward, UnknownReward, resolve_reward

Dtype = Literal["float32", "bfloat16", "float16"]
Aggregation = Literal["borda", "zscore", "mean"]


@dataclass
class GeneratorSection:
    """One text-to-image generator: a diffusers pipeline (a local directory, a hub id, ``tiny:sd15`` or ``tiny:sdxl``)
    and how it samples. ``resolution`` None keeps the pipeline's default size; ``scheduler`` names a diffusers
    scheduler class built from the pipeline's scheduler config (None keeps the pipeline's own); ``batch_size`` is
    prompts per pipeline call (each with ``seeds`` images); ``cpu_offload`` moves each part to the GPU only while it
    runs (diffusers' ``enable_model_cpu_offload``)."""

    path: str = ""
    name: str | None = None
    steps: int = 30
    guidance_scale: float = 7.5
    resolution: int | None = None
    dtype: Dtype = "float32"
    scheduler: str | None = None
    batch_size: int = 4
    cpu_offload: bool = False


@dataclass
class RewardSection:
    """One reward of the ensemble: its name (a key of :data:`mmdpo.rewards.REWARDS`, an installed reward's entry
    point name or an import path ``module:attribute``; also the name of its ``reward_<name>`` column), its weights
    (``path``: None for the default weights, ``tiny`` for a random tiny model, or a local path or hub id), its weight
    in the aggregate, and the keyword ``options`` of its loader (e.g. ``{version: "2.0"}`` for HPSv2,
    ``{threshold: 3}`` for your own)."""

    name: str = ""
    path: str | None = None
    weight: float = 1.0
    dtype: Dtype = "float32"
    batch_size: int = 16
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SynthConfig:
    """``mmdpo synth``: every prompt x every generator x ``seeds`` seeds, scored by every reward and ranked.

    ``prompts``: a .txt file (one prompt a line), or a .jsonl/.json/.parquet file or directory with a ``prompt`` or
    ``caption`` column; blank prompts are skipped and, with ``unique_prompts``, repeats too (both counted in the
    dataset card); ``max_prompts`` keeps the first N. ``seed`` is the base of every candidate's noise seed.
    ``shard_size`` is prompts per Parquet shard, the unit of resuming; ``pending_batches`` is how many generated
    batches may wait for scoring and writing on the background thread (0 scores each batch before the next).
    """

    prompts: str = ""
    out: str = ""
    generators: list[GeneratorSection] = field(default_factory=list)
    seeds: int = 1
    seed: int = 0
    rewards: list[RewardSection] = field(default_factory=list)
    aggregation: Aggregation = "borda"
    image_format: Literal["png", "jpeg"] = "png"
    jpeg_quality: int = 95
    shard_size: int = 64
    max_prompts: int | None = None
    unique_prompts: bool = True
    device: str = "auto"
    pending_batches: int = 2
    progress: bool = True


@dataclass
class ScoreConfig:
    """``mmdpo score``: ``rewards`` scored on every candidate of an image-ranked Parquet set, then scores and ranks
    recomputed. ``aggregate``: ``all`` ranks by every reward the set has raw scores of (earlier ones and these) or
    ``listed`` by these only; ``aggregation`` None keeps the set's own (borda for a set without one). ``out`` None
    rewrites the set in place, file by file; ``batch_size`` is rows read at a time."""

    source: str = ""
    out: str | None = None
    rewards: list[RewardSection] = field(default_factory=list)
    aggregate: Literal["all", "listed"] = "all"
    aggregation: Aggregation | None = None
    device: str = "auto"
    batch_size: int = 32
    progress: bool = True


@dataclass
class EvalConfig:
    """``mmdpo eval``: a finished text-to-image run in ``run`` against its base: every prompt of ``prompts`` drawn
    from seeds ``0 .. seeds-1`` by both, scored by ``rewards``, with the sampler's ``steps`` and
    ``guidance_scale``."""

    run: str = ""
    prompts: str = ""
    rewards: list[RewardSection] = field(default_factory=lambda: [RewardSection(name="pickscore")])
    seeds: int = 4
    steps: int = 25
    guidance_scale: float = 5.0
    max_prompts: int | None = None
    device: str = "auto"


SYNTH_RUN_OPTIONS = {"out", "device", "pending_batches", "progress"}
GENERATOR_RUN_OPTIONS = {"batch_size", "cpu_offload"}
REWARD_RUN_OPTIONS = {"batch_size"}
"""Options that change how a run goes but not what it writes, so a resumed run may change them."""


# --- reading ---------------------------------------------------------------------------------------


def _expand_shorthand(tree: dict[str, Any], key: str, field_name: str) -> None:
    """``[a, b]`` -> ``[{field_name: a}, {field_name: b}]`` for the list ``tree[key]``."""
    items = tree.get(key)
    if isinstance(items, list):
        tree[key] = [{field_name: item} if isinstance(item, str) else item for item in items]


def load_synth_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SynthConfig:
    """Read a synth config, apply ``key=value`` overrides, fill in generator names and validate the whole."""
    tree = read_tree(path, overrides)
    _expand_shorthand(tree, "generators", "path")
    _expand_shorthand(tree, "rewards", "name")
    config = build_section(SynthConfig, tree, "")
    validate_synth(config)
    return config


def _argument_config(cls: type, key: str, value: str, command: str, what: str, overrides: list[str] | None):
    """A ``cls`` config from ``key=value`` overrides, with ``key`` taken from the command's first argument."""
    tree = read_tree(None, overrides)
    if key in tree:
        raise ConfigError(f"The {what} is the first argument of `mmdpo {command}`; drop {key}=.")
    _expand_shorthand(tree, "rewards", "name")
    return build_section(cls, {**tree, key: value}, "")


def load_score_config(source: str, overrides: list[str] | None = None) -> ScoreConfig:
    """The score config of ``source`` from ``key=value`` overrides, validated."""
    config = _argument_config(ScoreConfig, "source", source, "score", "set to score", overrides)
    validate_score(config)
    return config


def load_eval_config(run: str, overrides: list[str] | None = None) -> EvalConfig:
    """The eval config of the run directory ``run`` from ``key=value`` overrides, validated."""
    config = _argument_config(EvalConfig, "run", run, "eval", "run to evaluate", overrides)
    validate_eval(config)
    return config


# --- validation ------------------------------------------------------------------------------------


def generator_name(path: str) -> str:
    """A generator's default name: ``tiny-sd15`` for ``tiny:sd15``, else the last part of its directory or hub id."""
    return path.replace(":", "-") if path.startswith("tiny:") else Path(path.rstrip("/")).name


def _positive(value: int | None, where: str) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{where}={value} must be at least 1.")


def _check_generator(section: GeneratorSection, where: str) -> None:
    if not section.path:
        raise ConfigError(f"{where}.path is empty; give a diffusers pipeline directory, a hub id or tiny:sd15.")
    for key in ("steps", "batch_size", "resolution"):
        _positive(getattr(section, key), f"{where}.{key}")
    if section.resolution is not None and section.resolution % 8:
        raise ConfigError(f"{where}.resolution={section.resolution} must be a multiple of 8 (the VAE's downscaling).")
    if section.scheduler is not None:
        scheduler = getattr(diffusers, section.scheduler, None)
        if not (isinstance(scheduler, type) and issubclass(scheduler, diffusers.SchedulerMixin)):
            raise ConfigError(
                f"{where}.scheduler={section.scheduler!r} is not a diffusers scheduler class; "
                "give one such as DPMSolverMultistepScheduler or EulerDiscreteScheduler."
            )
    section.name = section.name or generator_name(section.path)


def reward_sections(items: list[Any], where: str) -> list[RewardSection]:
    """The checked reward sections of a list of names and mappings at ``where`` (``[pickscore, {name: ...}]``)."""
    tree = {"rewards": items}
    _expand_shorthand(tree, "rewards", "name")
    if not isinstance(tree["rewards"], list):
        raise ConfigError(f"{where} must be a list of rewards, got {items!r}.")
    sections = [build_section(RewardSection, item, f"{where}[{i}]") for i, item in enumerate(tree["rewards"])]
    check_rewards(sections, where)
    return sections


def check_rewards(rewards: list[RewardSection], where: str = "rewards") -> None:
    """Image rewards that resolve (:func:`~mmdpo.rewards.resolve_reward`: registered, installed or importable), with
    distinct names and usable weights. What a factory builds is known only when it runs: that it is a Reward is
    checked then, that it scores images is trusted."""
    for index, section in enumerate(rewards):
        at = f"{where}[{index}]"
        try:
            loader = resolve_reward(section.name)
        except UnknownReward as err:
            known = f"; known rewards: {', '.join(err.known)}, or an import path module:attribute."
            raise ConfigError(
                f"{at}.name={section.name!r} is not a reward{closest_hint(section.name, err.known) or known}"
            ) from None
        except ValueError as err:
            raise ConfigError(f"{at}.name: {err}") from None
        if isinstance(loader, type) and loader.prepare is not Reward.prepare:  # the default prepare takes images
            raise ConfigError(f"{at}.name={section.name} does not score images; pick an image reward.")
        if section.weight < 0:
            raise ConfigError(f"{at}.weight={section.weight} must not be negative.")
        _positive(section.batch_size, f"{at}.batch_size")
    names = [section.name for section in rewards]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where} names {names} repeat one; list each reward once.")


def validate_synth(config: SynthConfig) -> None:
    """Fail on a missing setting or options that cannot work together, naming them."""
    for key, example in (("prompts", "/data/prompts.txt"), ("out", "/data/synpic")):
        if not getattr(config, key):
            raise ConfigError(f"{key} is not set; give it on the command line, e.g. {key}={example}.")
    if not config.generators:
        raise ConfigError("generators is empty; list at least one, e.g. generators=[tiny:sd15].")
    for index, section in enumerate(config.generators):
        _check_generator(section, f"generators[{index}]")
    names = [section.name for section in config.generators]
    if len(set(names)) != len(names):
        raise ConfigError(f"generators names {names} repeat one; give each generator a distinct name.")
    for key in ("seeds", "shard_size", "max_prompts"):
        _positive(getattr(config, key), key)
    if len(config.generators) * config.seeds < 2:
        raise ConfigError(
            f"{len(config.generators)} generator x seeds={config.seeds} gives one candidate per prompt, nothing to "
            "rank; raise seeds or add a generator."
        )
    if not config.rewards:
        raise ConfigError("rewards is empty; list at least one, e.g. rewards=[pickscore,hpsv2].")
    check_rewards(config.rewards)
    if not any(section.weight > 0 for section in config.rewards):
        raise ConfigError("Every reward has weight 0; give at least one a positive weight.")
    if config.image_format != "jpeg" and config.jpeg_quality != SynthConfig.jpeg_quality:
        raise ConfigError(f"jpeg_quality applies to image_format=jpeg, not image_format={config.image_format}.")
    if not 0 <= config.jpeg_quality <= 100:
        raise ConfigError(f"jpeg_quality={config.jpeg_quality} must lie in [0, 100].")
    if config.pending_batches < 0:
        raise ConfigError(f"pending_batches={config.pending_batches} must not be negative.")


def validate_score(config: ScoreConfig) -> None:
    """Fail on a missing set or on a run that would change nothing."""
    if not Path(config.source).exists():
        raise FileNotFoundError(f"{config.source!r} does not exist; give a Parquet file or directory to score.")
    if not config.rewards and config.aggregation is None:
        raise ConfigError("Nothing to do; give rewards=[...] to score, aggregation=... to re-rank, or both.")
    if config.aggregate == "listed" and not config.rewards:
        raise ConfigError("aggregate=listed ranks by the listed rewards, but rewards is empty; list some.")
    check_rewards(config.rewards)
    _positive(config.batch_size, "batch_size")


def validate_eval(config: EvalConfig) -> None:
    """Fail on a run without a finished output, missing prompts or no rewards, naming the setting."""
    if not (Path(config.run) / "final").is_dir() or not (Path(config.run) / "config.yaml").is_file():
        raise FileNotFoundError(f"{config.run!r} is not a finished mmdpo run (no config.yaml and final/ there).")
    if not config.prompts:
        raise ConfigError("prompts is empty; give prompts=<.txt, .jsonl or .parquet file> to draw from.")
    if not config.rewards:
        raise ConfigError("rewards is empty; list the rewards to compare with, e.g. rewards=[pickscore,hpsv2].")
    check_rewards(config.rewards)
    for key in ("seeds", "steps", "max_prompts"):
        _positive(getattr(config, key), key)


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """What a synth run's output depends on: its config (as a dict) without the options a resumed run may change
    (:data:`SYNTH_RUN_OPTIONS` and the like) and without the prompts' path (the prompts themselves are compared)."""
    tree = copy.deepcopy(config)
    for key in SYNTH_RUN_OPTIONS | {"prompts"}:
        tree.pop(key)
    for section in tree["generators"]:
        for key in GENERATOR_RUN_OPTIONS:
            section.pop(key)
    for section in tree["rewards"]:
        for key in REWARD_RUN_OPTIONS:
            section.pop(key)
    return tree


def first_difference(old: Any, new: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The dotted key and both values of the first difference between two config trees; None when they are equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in [*old, *(k for k in new if k not in old)]:
            found = first_difference(old.get(key), new.get(key), f"{where}.{key}".lstrip("."))
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return next(
            (d for i, (a, b) in enumerate(zip(old, new)) if (d := first_difference(a, b, f"{where}[{i}]"))), None
        )
    return None if old == new else (where, old, new)
