"""Typed run configuration: YAML file < ``key=value`` overrides, strict about names and combinations.

    cfg = load_config("configs/llm/dpo.yaml", ["objective.beta=0.2", "train.max_steps=100"])

Every section is a dataclass; an unknown key fails with the closest valid key named, and
incompatible options fail at start-up naming both. ``objective`` takes ``name`` plus the
objective's own hyperparameters, checked against the objective's signature.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from mmdpo.objectives import get_objective


class ConfigError(ValueError):
    """A configuration mistake, stated in one sentence with the fix."""


@dataclass(frozen=True)
class Bound:
    """The range a numeric field must lie in (None: unbounded on that side); checked when a section is built."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def holds(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self) -> str:
        if self.high is None:
            return "must be positive" if self.low == 0 and self.low_open else f"must be at least {self.low:g}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"must lie in {left}{self.low:g}, {self.high:g}{right}"


def bounded(default: Any, low: float | None = None, high: float | None = None, **open_: bool) -> Any:
    """A dataclass field whose value (when not None) must lie in the :class:`Bound` of ``low``, ``high``."""
    return field(default=default, metadata={"bound": Bound(low, high, **open_)})


POSITIVE = {"low": 0, "low_open": True}
FRACTION = {"low": 0, "high": 1, "high_open": True}


@dataclass
class LoraSection:
    """LoRA through peft. ``target_modules`` defaults per modality: every linear layer but the output head
    (``all-linear``) for LLMs, the attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) for UNets."""

    r: int = bounded(16, 1)
    alpha: int = bounded(32, **POSITIVE)
    dropout: float = bounded(0.0, **FRACTION)
    target_modules: str | list[str] | None = None


@dataclass
class ModelSection:
    """What to train; a modality's adapter adds its own fields (its ``model_section``, see :mod:`mmdpo.modalities`).

    ``path`` is a local directory, a hub id, or ``tiny:<arch>`` (a random model built in memory:
    ``tiny:llama``, ``tiny:qwen2``, ``tiny:mistral``, ``tiny:sd15``, ``tiny:sdxl``, and the vision-language
    ``tiny:llava``, ``tiny:qwen2_vl``, ``tiny:qwen2_5_vl``, ``tiny:idefics3``, ``tiny:paligemma``).
    ``modality`` ``auto`` reads it from the path, offline (:func:`mmdpo.modalities.resolve_modality`): a diffusers
    pipeline names its class in ``model_index.json``, a transformers checkpoint its ``model_type`` in
    ``config.json``; a loaded config holds the resolved name. ``reference``: ``auto`` is the disabled LoRA adapter
    with ``lora``, else a frozen copy, else nothing for reference-free objectives."""

    path: str = "tiny:llama"
    modality: str = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"
    lora: LoraSection | None = None
    reference: Literal["auto", "adapter", "copy", "precomputed", "none"] = "auto"
    gradient_checkpointing: bool = False


@dataclass
class DataSection:
    """Preference data: a file, a directory, or ``toy`` (the built-in synthetic task of the modality).

    Held-out groups come from ``eval_path`` / ``eval_split`` when either is set (e.g. Pick-a-Pic's
    ``test_unique``), else they are a seeded ``eval_fraction`` of the data. A modality's adapter adds its own fields
    (its ``data_section``, e.g. the image transform of text-to-image data)."""

    path: str = "toy"
    format: str = "auto"
    split: str = "train"
    eval_path: str | None = None
    eval_split: str | None = None
    eval_fraction: float = bounded(0.1, **FRACTION)
    ties: Literal["drop", "keep"] = "drop"
    bad_rows: Literal["error", "skip"] = "error"
    pairs: Literal["none", "all", "best_vs_rest", "adjacent", "best_vs_worst"] = "none"
    cache_dir: str | None = None
    num_workers: int = bounded(2, 0)

    @property
    def sources(self) -> list[tuple[str, str]]:
        """(path, split) of the training groups, then of the held-out groups when they are a source of their own:
        ``eval_path`` and/or ``eval_split`` set (each defaulting to ``path`` and ``split``); else the held-out groups
        are a seeded ``eval_fraction`` of the training source."""
        held_out = self.eval_path is not None or self.eval_split is not None
        return [(self.path, self.split)] + (
            [(self.eval_path or self.path, self.eval_split or self.split)] if held_out else []
        )


@dataclass
class ObjectiveSection:
    """The loss by name plus its hyperparameters (see ``mmdpo.objectives``)."""

    name: str = "dpo"
    hparams: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplesSection:
    """Text-to-image validation samples: a grid of the policy's images for fixed prompts and seeds, written to
    ``<output_dir>/samples/step-N.png`` (and TensorBoard) before training, every ``every`` steps and at the end.

    ``prompts`` default to the first four held-out prompts; ``seeds`` images per prompt; the pipeline's own scheduler
    with ``steps`` steps and classifier-free ``guidance_scale``."""

    every: int | None = bounded(None, 1)
    prompts: list[str] | None = None
    seeds: int = bounded(2, 1)
    steps: int = bounded(25, 1)
    guidance_scale: float = bounded(5.0, 0)


@dataclass
class TrainSection:
    """The optimisation loop; ``batch_size`` is per process, the global batch is batch_size * grad_accum * processes."""

    output_dir: str = "outputs/run"
    seed: int = 0
    epochs: int = bounded(1, 1)
    max_steps: int | None = bounded(None, 1)
    batch_size: int = bounded(8, 1)
    grad_accum: int = bounded(1, 1)
    lr: float = bounded(5e-6, **POSITIVE)
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    weight_decay: float = bounded(0.0, 0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "cosine"
    warmup_ratio: float = bounded(0.1, 0, 1)
    max_grad_norm: float | None = bounded(1.0, **POSITIVE)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = bounded(10, 1)
    eval_every: int | None = bounded(None, 1)
    save_every: int | None = bounded(None, 1)
    keep_checkpoints: int = bounded(2, 1)
    resume: bool = True
    tensorboard: bool = True
    plots: bool = True
    progress: bool = True
    samples: SamplesSection = field(default_factory=SamplesSection)


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    train: TrainSection = field(default_factory=TrainSection)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["objective"] = {"name": self.objective.name, **self.objective.hparams}
        return out


def closest_hint(key: str, options) -> str:
    match = difflib.get_close_matches(key, list(options), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check and convert one YAML value against a type hint."""
    origin = get_origin(hint)
    args = get_args(hint)
    if value is None:
        if type(None) in args or hint is Any:
            return None
        raise ConfigError(f"{where} cannot be null.")
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads no/off as False and yes/on as True
            value = next((w for w in (("yes", "on", "true") if value else ("no", "off", "false")) if w in args), value)
        if value not in args:
            raise ConfigError(
                f"{where}={value!r} is not one of {', '.join(map(repr, args))}{closest_hint(str(value), args)}."
            )
        return value
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, where)
    if args and type(None) in args:  # Optional[X] / X | None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], where)
        for option in options:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}={value!r} has the wrong type; expected {hint}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where} needs {len(args)} values, got {value!r}.")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where} needs a list, got {value!r}.")
        return [_coerce(v, args[0], where) for v in value]
    if origin is dict or hint is Any:
        return value
    if hint is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "3e-3" (no dot) as a string
        except ValueError:
            pass
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if origin is not None and args:  # a union such as str | list[str]
        for option in args:
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
    raise ConfigError(f"{where}={value!r} has the wrong type; expected {getattr(hint, '__name__', hint)}.")


def build_section(cls: type, values: Any, where: str) -> Any:
    if values is True and cls is LoraSection:  # `lora: true` takes the defaults
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping, got {values!r}.")
    hints = get_type_hints(cls)
    if cls is ObjectiveSection:
        values = dict(values)
        return ObjectiveSection(name=values.pop("name", "dpo"), hparams=values)
    kwargs = {}
    for key, value in values.items():
        name = f"{where}.{key}".lstrip(".")
        if key not in hints:
            raise ConfigError(f"Unknown config key {name}{closest_hint(key, hints)}.")
        kwargs[key] = _coerce(value, hints[key], name)
    section = cls(**kwargs)
    for f in dataclasses.fields(cls):
        bound, value = f.metadata.get("bound"), getattr(section, f.name)
        if bound is not None and value is not None and not bound.holds(value):
            raise ConfigError(f"{where}.{f.name}={value!r} {bound.describe()}.".lstrip("."))
    return section


def _key(node: dict[str, Any] | list, key: str, dotted: str) -> str | int:
    """``key`` as a dict key, or as an index when ``node`` is a list of sections (``generators.0.steps``)."""
    if not isinstance(node, list):
        return key
    if not key.isdigit() or int(key) >= len(node):
        raise ConfigError(f"Override {dotted}: {key} is not an index of a list of {len(node)}.")
    return int(key)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        key = _key(node, key, dotted)
        child = node[key] if isinstance(node, list) else node.get(key)
        if not isinstance(child, (dict, list)):
            child = {} if child in (None, True) else child
            if not isinstance(child, dict):
                raise ConfigError(f"Override {dotted}: {key} is not a section.")
            node[key] = child
        node = child
    node[_key(node, keys[-1], dotted)] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings into (dotted key, YAML-parsed value) pairs."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override {item!r} needs the form key=value (e.g. objective.beta=0.1).")
        key, raw = item.split("=", 1)
        parsed.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return parsed


def read_tree(path: str | Path | None, overrides: list[str] | None) -> dict[str, Any]:
    """A YAML config's mapping with ``key=value`` overrides applied, not yet checked against a schema."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file {str(path)!r} does not exist; pass a path to a YAML file.")
        tree = yaml.safe_load(path.read_text()) or {}
        if not isinstance(tree, dict):
            raise ConfigError(f"Config file {str(path)!r} must hold a mapping of sections.")
    for key, value in parse_overrides(overrides or []):
        _set_dotted(tree, key, value)
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply ``key=value`` overrides and validate the whole."""
    return build_config(read_tree(path, overrides))


def build_config(tree: dict[str, Any]) -> Config:
    """A checked :class:`Config` from a mapping: the modality is resolved once, from ``model.path`` and
    ``model.modality``, and its adapter's sections read the ``model`` and ``data`` mappings."""
    from mmdpo.modalities import ModalityError, resolve_modality

    model_tree = tree.get("model") or {}
    if not isinstance(model_tree, dict):
        raise ConfigError(f"model must be a mapping, got {model_tree!r}.")
    try:
        modality = resolve_modality(str(model_tree.get("path", ModelSection.path)), model_tree.get("modality", "auto"))
    except ModalityError as err:
        raise ConfigError(str(err)) from err
    adapter = modality.adapter_class()
    sections = {"model": adapter.model_section, "data": adapter.data_section, "objective": ObjectiveSection,
                "train": TrainSection}  # fmt: skip
    for name in tree:
        if name not in sections:
            raise ConfigError(f"Unknown config key {name}{closest_hint(name, sections)}.")
    for name in ("model", "data"):
        _refuse_misplaced(name, tree.get(name) or {}, sections[name], modality, model_tree)
    config = Config(**{name: build_section(cls, tree.get(name, {}), name) for name, cls in sections.items()})
    config.model.modality = modality.name
    validate(config, adapter)
    return config


def _refuse_misplaced(where: str, values: Any, section: type, modality, model_tree: dict) -> None:
    """A key the modality's section lacks but another modality's has: say whose it is."""
    from mmdpo.modalities import MODALITIES

    if not isinstance(values, dict):
        return
    for key in values.keys() - get_type_hints(section).keys():
        owners = [
            row.plural for row in MODALITIES.values()
            if key in get_type_hints(getattr(row.adapter_class(), f"{where}_section"))
        ]  # fmt: skip
        if owners:
            raise ConfigError(
                f"{where}.{key} applies to {' and '.join(owners)} only, but model.path="
                f"{model_tree.get('path', ModelSection.path)!r} is {modality.singular}; remove it (or set "
                "model.modality if the path's kind was not recognised)."
            )


def validate(config: Config, adapter: type | None = None) -> None:
    """Fail on option combinations that cannot work, naming both options; the modality's adapter checks its own."""
    from mmdpo.modalities import get_modality

    adapter = adapter or get_modality(config.model.modality).adapter_class()
    try:
        objective = get_objective(config.objective.name, **config.objective.hparams)
        extras = objective.extras  # also checks the options that decide what the adapter computes
    except ValueError as err:
        raise ConfigError(str(err)) from err
    model, train = config.model, config.train
    kind = get_modality(model.modality)
    if model.reference == "adapter" and model.lora is None:
        raise ConfigError("model.reference=adapter needs model.lora (the reference is the model with its adapter off).")
    if model.reference == "none" and objective.needs_reference:
        raise ConfigError(f"model.reference=none but objective.name={objective.name} needs a reference; pick another.")
    if model.reference not in ("auto", *adapter.references):
        raise ConfigError(
            f"model.reference={model.reference} is not available for {kind.plural}; use "
            f"{' or '.join(sorted(adapter.references))}."
        )
    missing = sorted(extras - adapter.provides)
    if missing:
        raise ConfigError(
            f"objective.name={objective.name} needs {', '.join(missing)}, which {kind.plural} do not provide "
            f"(model.path={model.path!r}); pick an objective on whole candidates."
        )
    if train.mixed_precision == "fp16" and model.dtype == "bfloat16":
        raise ConfigError("train.mixed_precision=fp16 with model.dtype=bfloat16 mixes half formats; pick one.")
    if train.samples.every is not None and not hasattr(adapter, "generate"):
        raise ConfigError(
            f"train.samples writes grids of generated samples, which {kind.plural} do not make here; remove it."
        )
    adapter.check_config(config, objective)


def resolved_reference(config: Config) -> str:
    """The reference strategy ``auto`` stands for: none, the disabled adapter, or a frozen copy."""
    if config.model.reference != "auto":
        return config.model.reference
    if not get_objective(config.objective.name, **config.objective.hparams).needs_reference:
        return "none"
    return "adapter" if config.model.lora is not None else "copy"
