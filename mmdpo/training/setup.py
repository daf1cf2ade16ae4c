"""From a config to what the loop needs, per modality: the adapter, the datasets and the collate functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset

from mmdpo.config import Config, ConfigError, modality
from mmdpo.objectives import Objective
from mmdpo.precision import half_dtype


@dataclass
class Setup:
    """An adapter (``scorer``, ``frozen_modules``, ``inputs``, ``policy_loglik``, ``reference_loglik``, ``save``),
    its data, and ``collate(rows, epoch) -> batch`` for the train and the eval rows."""

    adapter: Any
    train: Dataset
    eval: Dataset | None
    skipped: dict[str, int]
    collate: Callable[[list[dict], int], Any]
    eval_collate: Callable[[list[dict], int], Any] | None = None

    def __post_init__(self) -> None:
        self.eval_collate = self.eval_collate or self.collate


def set_up(config: Config, accelerator: Accelerator, objective: Objective, reference: str) -> Setup:
    """Load the model and the data the config names."""
    half = half_dtype(config.train.mixed_precision)
    kind = modality(config.model)
    if kind == "text_to_image":
        return _set_up_text_to_image(config, reference, half)
    if kind == "vlm":
        return _set_up_vlm(config, accelerator, objective, reference, half)

    from mmdpo.adapters.llm import LLMAdapter

    adapter = LLMAdapter.from_config(config.model, reference, extras=objective.extras, reference_dtype=half)
    return _set_up_tokens(adapter, config, accelerator, objective, reference)


def _set_up_tokens(adapter, config: Config, accelerator: Accelerator, objective: Objective, reference: str) -> Setup:
    """Tokenised groups for a causal-LM or vision-language adapter, checked against what the objective reads."""
    from mmdpo.training.data import prepare_datasets

    train, evaluation, skipped = prepare_datasets(config, adapter, accelerator, reference)
    if "step_index" in objective.extras and (len(train) == 0 or train[0]["step_ids"] is None):
        raise ConfigError(
            f"objective.name={objective.name} needs step data, but data.path={config.data.path!r} has no steps; "
            "give the steps or step_dpo format (see mmdpo.data.loaders)."
        )
    mismatched = "mismatched" in objective.extras
    return Setup(adapter, train, evaluation, skipped, lambda rows, epoch: adapter.collate(rows, mismatched=mismatched))


def _set_up_vlm(
    config: Config, accelerator: Accelerator, objective: Objective, reference: str, half: torch.dtype | None
) -> Setup:
    """A vision-language adapter on image + question groups; images are decoded per batch."""
    from mmdpo.adapters.vlm import VLMAdapter

    adapter = VLMAdapter.from_config(config.model, reference, extras=objective.extras, reference_dtype=half)
    return _set_up_tokens(adapter, config, accelerator, objective, reference)


def _set_up_text_to_image(config: Config, reference: str, half: torch.dtype | None) -> Setup:
    """From the encode cache when there is one for this config (no VAE, no text encoders), else from images."""
    from mmdpo.adapters.text_to_image import TextToImageAdapter
    from mmdpo.training.data import load_image_source, split_image_groups
    from mmdpo.training.encodings import open_encode_caches

    caches = open_encode_caches(config)
    if caches is not None:
        adapter = TextToImageAdapter.from_config(config, reference, half, empty_conditions=caches[0].empty_prompt())
        eval_groups = caches[1].group_set() if len(caches) > 1 else None
        train, evaluation, skipped = split_image_groups(config, caches[0].group_set(), eval_groups)
        seed = config.train.seed
        return Setup(adapter, train, evaluation, skipped, partial(caches[0].collate, seed=seed),
                     partial(caches[-1].collate, seed=seed))  # fmt: skip
    adapter = TextToImageAdapter.from_config(config, reference, half)
    groups = [load_image_source(path, split, config) for path, split in config.data.sources]
    train, evaluation, skipped = split_image_groups(config, groups[0], groups[1] if len(groups) > 1 else None)
    return Setup(adapter, train, evaluation, skipped, partial(adapter.collate, seed=config.train.seed))
