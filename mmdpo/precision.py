"""Dtype names as configs write them, and the half-precision dtype of an accelerate mixed-precision mode."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``model.dtype``, ``model.vae_dtype``, ``data.cache_dtype`` ... -> torch dtype."""

HALF = {"bf16": "bfloat16", "fp16": "float16"}
"""``train.mixed_precision`` -> the name of the dtype frozen parts (text encoders, a reference copy) run in."""


def half_name(mixed_precision: str) -> str:
    """The dtype name frozen parts run in under ``train.mixed_precision``: its half format, else float32."""
    return HALF.get(mixed_precision, "float32")


def half_dtype(mixed_precision: str) -> torch.dtype | None:
    """The half-precision dtype of ``train.mixed_precision``, or None when it is ``no``."""
    return DTYPES[HALF[mixed_precision]] if mixed_precision in HALF else None
