"""Typed run configuration: YAML file < ``key=value`` overrides, strict about names and combinations.

    cfg = load_config("configs/llm/dpo.yaml", ["objective.beta=0.2", "train.max_steps=100"])

Every section is a dataclass; an unknown key fails with the closest valid key named, and
incompatible options fail at start-up naming both. ``objective`` takes ``name`` plus the
objective's own hyperparameters, checked against the objective's signature.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from mmdpo.objectives import TOKEN_LEVEL, get_objective


class ConfigError(ValueError):
    """A configuration mistake, stated in one sentence with the fix."""


@dataclass
class LoraSection:
    """LoRA through peft. ``target_modules`` defaults per modality: every linear layer but the output head
    (``all-linear``) for LLMs, the attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``) for UNets."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: str | list[str] | None = None


@dataclass
class NoisingSection:
    """Text-to-image: how x_t and the target are drawn (see :mod:`mmdpo.adapters.diffusion`).

    ``forward`` (Diffusion-DPO), ``ddim_inversion`` (InPO: steps 10, eta 0.1) or ``renoise_inversion``
    (SmPO: steps 10 for SDXL, 5 for SD1.5)."""

    kind: Literal["forward", "ddim_inversion", "renoise_inversion"] = "forward"
    steps: int = 10
    eta: float = 0.0


@dataclass
class ModelSection:
    """What to train. ``path`` is a local directory, a hub id, or ``tiny:<arch>`` (a random model built in memory:
    ``tiny:llama``, ``tiny:qwen2``, ``tiny:mistral``, ``tiny:sd15``, ``tiny:sdxl``, and the vision-language
    ``tiny:llava``, ``tiny:qwen2_vl``, ``tiny:qwen2_5_vl``, ``tiny:idefics3``, ``tiny:paligemma``).

    ``modality`` ``auto`` reads it from the path: a diffusers pipeline (``model_index.json``) is text-to-image, a
    checkpoint whose ``config.json`` names an image-text-to-text architecture a vision-language model (``vlm``),
    anything else a causal LM. ``attn_implementation``: any transformers attention for LLMs and VLMs; ``sdpa``
    (PyTorch's scaled-dot-product attention, the default) or ``xformers`` (the optional extra) for text-to-image
    UNets. ``guidance_path`` is TGDPO's guidance model (a path like ``path``, same tokenizer), run frozen in the
    reference's dtype; with ``reference=precomputed`` its values are precomputed too. ``max_length`` to
    ``guidance_path`` apply to causal LMs, vision-language ones included, only. ``train_vision`` (VLMs only) trains
    the vision tower and the projector too; by default they are frozen and LoRA adapts the language model only.
    ``processor`` (VLMs only) holds keyword arguments for ``AutoProcessor.from_pretrained``, e.g.
    ``{max_pixels: 802816}`` to bound Qwen2-VL's image tokens. The fields after them apply to text-to-image models
    only (``vae_batch_size``: images per VAE encode; ``channels_last``: the UNet and VAE in channels-last memory
    format)."""

    path: str = "tiny:llama"
    modality: Literal["auto", "llm", "vlm", "text_to_image"] = "auto"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attn_implementation: str = "sdpa"
    lora: LoraSection | None = None
    reference: Literal["auto", "adapter", "copy", "precomputed", "none"] = "auto"
    max_length: int = 1024
    layout: Literal["shared", "concat"] = "shared"
    logprob_chunk: int = 1024
    gradient_checkpointing: bool = False
    trust_remote_code: bool = False
    guidance_path: str | None = None
    train_vision: bool = False
    processor: dict[str, Any] = field(default_factory=dict)
    noising: NoisingSection = field(default_factory=NoisingSection)
    prompt_dropout: float = 0.0
    latents: Literal["sample", "mean"] = "sample"
    vae_path: str | None = None
    vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    vae_batch_size: int = 8
    channels_last: bool = False


@dataclass
class DataSection:
    """Preference data: a file, a directory, or ``toy`` (the built-in synthetic task).

    ``resolution``, ``crop`` and ``flip`` (probability of a horizontal flip) are the image transform of
    text-to-image data, applied identically to every candidate of a group. Held-out groups come from
    ``eval_path`` / ``eval_split`` when either is set (e.g. Pick-a-Pic's ``test_unique``), else they are a seeded
    ``eval_fraction`` of the data. ``encode_cache``: ``auto`` trains from
    the cache that ``mmdpo cache`` wrote for this config when there is one (and encodes on the fly otherwise),
    ``require`` fails without it, ``off`` never reads it; ``cache_dtype`` is what the cache stores."""

    path: str = "toy"
    format: str = "auto"
    split: str = "train"
    eval_path: str | None = None
    eval_split: str | None = None
    eval_fraction: float = 0.1
    ties: Literal["drop", "keep"] = "drop"
    bad_rows: Literal["error", "skip"] = "error"
    pairs: Literal["none", "all", "best_vs_rest", "adjacent", "best_vs_worst"] = "none"
    cache_dir: str | None = None
    num_workers: int = 2
    resolution: int = 512
    crop: Literal["center", "random"] = "center"
    flip: float = 0.0
    encode_cache: Literal["auto", "require", "off"] = "auto"
    cache_dtype: Literal["float32", "bfloat16", "float16"] = "float32"

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

    every: int | None = None
    prompts: list[str] | None = None
    seeds: int = 2
    steps: int = 25
    guidance_scale: float = 5.0


@dataclass
class TrainSection:
    """The optimisation loop; ``batch_size`` is per process, the global batch is batch_size * grad_accum * processes."""

    output_dir: str = "outputs/run"
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-6
    optimizer: Literal["adamw", "adafactor"] = "adamw"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    log_every: int = 10
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 2
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
    return cls(**kwargs)


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
    config = build_section(Config, read_tree(path, overrides), "")
    validate(config)
    return config


def validate(config: Config) -> None:
    """Fail on option combinations that cannot work, naming both options."""
    try:
        objective = get_objective(config.objective.name, **config.objective.hparams)
        extras = objective.extras  # also checks the options that decide what the adapter computes
    except ValueError as err:
        raise ConfigError(str(err)) from err
    model, train = config.model, config.train
    if model.reference == "adapter" and model.lora is None:
        raise ConfigError("model.reference=adapter needs model.lora (the reference is the model with its adapter off).")
    if model.reference == "none" and objective.needs_reference:
        raise ConfigError(f"model.reference=none but objective.name={objective.name} needs a reference; pick another.")
    if train.mixed_precision == "fp16" and model.dtype == "bfloat16":
        raise ConfigError("train.mixed_precision=fp16 with model.dtype=bfloat16 mixes half formats; pick one.")
    if not 0 <= config.data.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction={config.data.eval_fraction} must lie in [0, 1).")
    kind = modality(model)
    if kind == "text_to_image":
        _validate_text_to_image(config, objective.name)
    else:
        _validate_llm(config, objective.name, extras, kind)


def _validate_llm(config: Config, objective: str, extras: frozenset[str], kind: str) -> None:
    """Causal LMs and vision-language models."""
    model = config.model
    if model.reference == "precomputed" and objective == "kto":
        raise ConfigError(
            "model.reference=precomputed cannot serve objective.name=kto (its KL point uses batch-dependent pairs)."
        )
    if model.reference == "precomputed" and "token_kl" in extras:
        raise ConfigError(
            f"model.reference=precomputed cannot serve objective.name={objective}: its per-token KL needs the "
            "reference's whole distribution at every token, which is not stored; use copy or adapter (with model.lora)."
        )
    if "guidance" in extras and model.guidance_path is None:
        raise ConfigError(
            f"objective.name={objective} needs model.guidance_path: the guidance model whose per-token log-probs "
            "weigh each token (e.g. a DPO- or SimPO-trained model with the policy's tokenizer)."
        )
    if model.guidance_path is not None and "guidance" not in extras:
        raise ConfigError(
            f"model.guidance_path is read by objective tgdpo only, but objective.name={objective}; remove it."
        )
    if model.layout == "shared" and model.attn_implementation not in {"sdpa", "eager"}:
        raise ConfigError(
            f"model.layout=shared needs a 4-D attention mask, which model.attn_implementation="
            f"{model.attn_implementation} does not take; use model.layout=concat."
        )
    fields_ = (("model", IMAGE_MODEL_FIELDS), ("data", IMAGE_DATA_FIELDS), ("train", ("samples",)))
    _refuse_changed(config, fields_, "text-to-image models", KINDS[kind])
    if kind == "llm":
        _refuse_changed(config, (("model", VLM_MODEL_FIELDS),), "vision-language models", KINDS[kind])
    elif model.processor and model.path.startswith("tiny:"):
        raise ConfigError(
            f"model.processor configures a processor loaded from a path, but model.path={model.path!r} builds its "
            "own; remove it or save the tiny model to a directory first."
        )


def _validate_text_to_image(config: Config, objective: str) -> None:
    model, samples = config.model, config.train.samples
    if objective in TOKEN_LEVEL:
        raise ConfigError(
            f"objective.name={objective} is token-level and needs a causal LM, but model.path={model.path!r} "
            "is a text-to-image model; pick a sequence-level objective."
        )
    if model.reference == "precomputed":
        raise ConfigError(
            "model.reference=precomputed needs fixed noise per example, which text-to-image training does not "
            "use; pick adapter (with model.lora), copy or none."
        )
    if not 0 <= model.prompt_dropout < 1:
        raise ConfigError(f"model.prompt_dropout={model.prompt_dropout} must lie in [0, 1).")
    for name in ("every", "seeds", "steps"):
        if getattr(samples, name) is not None and getattr(samples, name) < 1:
            raise ConfigError(f"train.samples.{name}={getattr(samples, name)} must be at least 1.")
    if model.vae_batch_size < 1:
        raise ConfigError(f"model.vae_batch_size={model.vae_batch_size} must be at least 1.")
    if model.attn_implementation not in ("sdpa", "xformers"):
        raise ConfigError(
            f"model.attn_implementation={model.attn_implementation} is not available for text-to-image UNets; "
            "use sdpa (the default) or xformers."
        )
    _refuse_changed(config, (("model", LLM_MODEL_FIELDS),), "causal LMs", KINDS["text_to_image"])
    _refuse_changed(config, (("model", VLM_MODEL_FIELDS),), "vision-language models", KINDS["text_to_image"])


IMAGE_MODEL_FIELDS = (
    "noising", "prompt_dropout", "latents", "vae_path", "vae_dtype", "vae_batch_size", "channels_last",
)  # fmt: skip
IMAGE_DATA_FIELDS = ("resolution", "crop", "flip", "encode_cache", "cache_dtype")
LLM_MODEL_FIELDS = ("max_length", "layout", "logprob_chunk", "trust_remote_code", "guidance_path")
VLM_MODEL_FIELDS = ("train_vision", "processor")
KINDS = {"llm": "a causal LM", "vlm": "a vision-language model", "text_to_image": "a text-to-image model"}


def _refuse_changed(config: Config, fields_: tuple, applies_to: str, kind: str) -> None:
    """Fail on fields set away from their defaults that the model's kind never reads."""
    for where, names in fields_:
        section = getattr(config, where)
        for name in names:
            if getattr(section, name) != getattr(type(section)(), name):
                raise ConfigError(
                    f"{where}.{name} applies to {applies_to} only, but model.path={config.model.path!r} is {kind}; "
                    "remove it (or set model.modality if the path's kind was not recognised)."
                )


def modality(model: ModelSection) -> str:
    """``llm``, ``vlm`` or ``text_to_image``: as configured, or read from the path (a diffusers pipeline has a model
    index; an image-text-to-text checkpoint names its architecture in ``config.json``)."""
    if model.modality != "auto":
        return model.modality
    path = model.path
    if path.startswith("tiny:"):
        from mmdpo.adapters.tiny_vlm import TINY_VLMS

        arch = path.removeprefix("tiny:")
        return "text_to_image" if arch in ("sd15", "sdxl") else "vlm" if arch in TINY_VLMS else "llm"
    if Path(path).exists():
        if (Path(path) / "model_index.json").is_file():
            return "text_to_image"
        return "vlm" if _image_text_to_text(Path(path) / "config.json") else "llm"
    from huggingface_hub import file_exists, hf_hub_download

    try:
        if file_exists(path, "model_index.json"):
            return "text_to_image"
        return "vlm" if _image_text_to_text(Path(hf_hub_download(path, "config.json"))) else "llm"
    except (OSError, ValueError):  # offline or not a repo id: the loader reports what is wrong with the path
        return "llm"


def _image_text_to_text(config_file: Path) -> bool:
    """Whether a transformers ``config.json`` names an image-text-to-text architecture."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if not config_file.is_file():
        return False
    return json.loads(config_file.read_text()).get("model_type") in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


def resolved_reference(config: Config) -> str:
    """The reference strategy ``auto`` stands for: none, the disabled adapter, or a frozen copy."""
    if config.model.reference != "auto":
        return config.model.reference
    if not get_objective(config.objective.name, **config.objective.hparams).needs_reference:
        return "none"
    return "adapter" if config.model.lora is not None else "copy"
