"""The modality table: which adapter serves a model, resolved once per command and offline.

    modality = resolve_modality("tiny:sdxl")           # Modality(name="text_to_image", ...)
    adapter_class = modality.adapter_class()            # imported on first use

Adding a modality is a module with an :class:`~mmdpo.adapters.base.Adapter` class plus one entry below, or, from a
user's own code, :func:`register_modality`. ``model.modality: auto`` reads the kind from the path: ``tiny:<arch>``
names its builder; a local diffusers pipeline names its pipeline class in ``model_index.json``; a local
transformers checkpoint names its ``model_type`` in ``config.json``; a hub id is read from the local hub cache
when it was downloaded before (nothing is fetched to decide).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmdpo.adapters.base import Adapter


class ModalityError(ValueError):
    """The model's kind cannot be resolved; the message names the fix."""


@dataclass(frozen=True)
class Modality:
    """One row of the table.

    Args:
        name: the value of ``model.modality``.
        adapter: the :class:`~mmdpo.adapters.base.Adapter` class, or its ``"module:Class"`` (imported on first use).
        singular, plural: the models it serves, for messages (``"a text-to-image model"``, ``"text-to-image models"``).
        tiny: the ``tiny:<arch>`` names its adapter builds in memory; None reads them from the adapter's model
            ``families`` (each family's ``name``), so a new family needs no edit here.
        pipelines: the diffusers pipeline classes (``_class_name`` of ``model_index.json``) it loads; None reads them
            from the adapter's ``families`` too.
        model_types: a test of a transformers ``config.json``'s ``model_type`` (None: not a transformers modality).
        markers: files whose presence in a local directory marks a checkpoint of this modality in a layout of its
            own (neither a diffusers pipeline nor a transformers model).
        default: the modality of a transformers checkpoint no other entry claims.
    """

    name: str
    adapter: str | type
    singular: str
    plural: str
    tiny: tuple[str, ...] | None = ()
    pipelines: tuple[str, ...] | None = ()
    model_types: Callable[[str], bool] | None = None
    markers: tuple[str, ...] = ()
    default: bool = False

    def adapter_class(self) -> type[Adapter]:
        if not isinstance(self.adapter, str):
            return self.adapter
        module, _, name = self.adapter.partition(":")
        return getattr(importlib.import_module(module), name)

    def tiny_names(self) -> tuple[str, ...]:
        if self.tiny is not None:
            return self.tiny
        return tuple(family.name for family in self.adapter_class().families)

    def pipeline_names(self) -> tuple[str, ...]:
        if self.pipelines is not None:
            return self.pipelines
        return tuple(name for family in self.adapter_class().families for name in family.pipelines)


def _image_text_to_text(model_type: str) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES


MODALITIES: dict[str, Modality] = {}


def register_modality(modality: Modality) -> Modality:
    """Add (or replace) a row of the table; returns it, so a module can keep a handle."""
    MODALITIES[modality.name] = modality
    return modality


for row in (
    Modality(
        "llm", "mmdpo.adapters.llm:LLMAdapter", "a causal LM", "causal LMs", tiny=("llama", "qwen2", "mistral"),
        model_types=lambda model_type: not _image_text_to_text(model_type), default=True,
    ),
    Modality(
        "vlm", "mmdpo.adapters.vlm:VLMAdapter", "a vision-language model", "vision-language models",
        tiny=("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "paligemma"), model_types=_image_text_to_text,
    ),
    Modality(
        "text_to_image", "mmdpo.adapters.text_to_image:TextToImageAdapter", "a text-to-image model",
        "text-to-image models",
        tiny=None, pipelines=None,
    ),
    Modality(
        "text_to_audio", "mmdpo.adapters.text_to_audio:TextToAudioAdapter", "a text-to-audio model",
        "text-to-audio models", tiny=None, pipelines=None,
        markers=("main_config.json", "vae_config.json", "stft_config.json"),  # a Tango release
    ),
):  # fmt: skip
    register_modality(row)


def get_modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise ModalityError(f"model.modality={name!r} is not one of {', '.join(['auto', *MODALITIES])}.")
    return MODALITIES[name]


def resolve_modality(path: str, modality: str = "auto") -> Modality:
    """The table row for ``model.path`` / ``model.modality`` (see the module docstring); never uses the network."""
    if modality != "auto":
        return get_modality(modality)
    if path.startswith("tiny:"):
        arch = path.removeprefix("tiny:")
        for row in MODALITIES.values():
            if arch in row.tiny_names():
                return row
        known = ", ".join(f"tiny:{a}" for row in MODALITIES.values() for a in row.tiny_names())
        raise ModalityError(f"model.path={path!r} names no tiny model; known: {known}.")
    for row in MODALITIES.values():
        if row.markers and all(_local_file(path, marker) is not None for marker in row.markers):
            return row
    index, config = _local_file(path, "model_index.json"), _local_file(path, "config.json")
    if index is not None:
        pipeline = json.loads(index.read_text()).get("_class_name")
        for row in MODALITIES.values():
            if pipeline in row.pipeline_names():
                return row
        raise ModalityError(
            f"model.path={path!r} is a {pipeline} pipeline, which no modality loads; set model.modality to one of "
            f"{', '.join(MODALITIES)} if one of them serves it."
        )
    if config is not None:
        model_type = json.loads(config.read_text()).get("model_type", "")
        rows = [row for row in MODALITIES.values() if row.model_types is not None and row.model_types(model_type)]
        return next((row for row in rows if not row.default), rows[0] if rows else _default())
    if Path(path).expanduser().exists():
        raise ModalityError(
            f"model.path={path!r} holds neither a diffusers model_index.json nor a transformers config.json; "
            "point it at a saved model directory."
        )
    raise ModalityError(
        f"model.path={path!r} is not a local directory and not in the local hub cache, so its kind cannot be read "
        f"offline; set model.modality to one of {', '.join(MODALITIES)}."
    )


def _default() -> Modality:
    return next(row for row in MODALITIES.values() if row.default)


def _local_file(path: str, name: str) -> Path | None:
    """``name`` inside a local directory, or inside the local hub cache of a hub id; None when neither has it."""
    local = Path(path).expanduser()
    if local.is_dir():
        return local / name if (local / name).is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached: Any = try_to_load_from_cache(path, name)
    except ValueError:  # not even a valid hub id
        return None
    return Path(cached) if isinstance(cached, str) else None
