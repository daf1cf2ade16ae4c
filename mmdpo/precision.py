"""Dtype names as configs write them, and the half-precision dtype of an accelerate mixed-precision mode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

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


@contextlib.contextmanager
def inputs_in_own_dtype(*modules: nn.Module | None) -> Iterator[None]:
    """While inside, every floating tensor a module receives (nested in dicts too) is cast to its weights' dtype.

    A diffusers pipeline assembled from parts in different dtypes (a float16 denoiser beside a float32 VAE, text
    encoders in the mixed-precision dtype) then samples without autocast, which does nothing for float16 on a CPU.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        dtype = next(module.parameters()).dtype

        def cast(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.to(dtype)
            return {k: cast(v) for k, v in value.items()} if isinstance(value, dict) else value

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules if m is not None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
