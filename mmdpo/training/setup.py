"""From a config to what the loop needs, per modality: the adapter, the datasets and the collate function."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from accelerate import Accelerator
from datasets import Dataset

from mmdpo.config import Config, modality
from mmdpo.objectives import Objective


@dataclass
class Setup:
    """An adapter (``scorer``, ``frozen_modules``, ``inputs``, ``policy_loglik``, ``reference_loglik``, ``save``),
    its data, and ``collate(rows, epoch) -> batch``."""

    adapter: Any
    train: Dataset
    eval: Dataset | None
    skipped: dict[str, int]
    collate: Callable[[list[dict], int], Any]


def set_up(config: Config, accelerator: Accelerator, objective: Objective, reference: str) -> Setup:
    """Load the model and the data the config names."""
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.mixed_precision)
    if modality(config.model) == "text_to_image":
        from mmdpo.adapters.text_to_image import TextToImageAdapter
        from mmdpo.training.data import prepare_image_datasets

        adapter = TextToImageAdapter.from_config(config, reference, half)
        train, evaluation, skipped = prepare_image_datasets(config)
        return Setup(adapter, train, evaluation, skipped, partial(adapter.collate, seed=config.train.seed))

    from mmdpo.adapters.llm import LLMAdapter
    from mmdpo.training.data import prepare_datasets

    wpo = bool(config.objective.hparams.get("wpo"))
    adapter = LLMAdapter.from_config(config.model, reference, wpo=wpo, reference_dtype=half)
    mismatched = objective.name == "kto" and objective.hparams.get("kl", True)
    train, evaluation, skipped = prepare_datasets(config, adapter, accelerator, reference)
    return Setup(adapter, train, evaluation, skipped, lambda rows, epoch: adapter.collate(rows, mismatched=mismatched))
