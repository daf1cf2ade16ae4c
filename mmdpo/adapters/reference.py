"""Reference strategies: what the objective compares the policy against.

- ``adapter``: the policy with its LoRA adapter switched off; no second copy of the weights.
- ``copy``: a frozen copy of the initial weights.
- ``precomputed``: values computed once before training and stored beside the data (``reference_logps``),
  cached on disk under a key of the data and model fingerprints, so later runs reuse them.
- ``none``: reference-free objectives.

Every strategy runs before the policy forward and without gradients.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from datasets import Dataset, load_from_disk
from torch import Tensor, nn
from tqdm.auto import tqdm


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` without its peft adapter (transformers/peft and diffusers models alike)."""
    if hasattr(model, "disable_adapter"):  # peft.PeftModel
        with model.disable_adapter():
            yield
        return
    model.disable_adapters()  # diffusers ModelMixin with an injected adapter
    try:
        yield
    finally:
        model.enable_adapters()


def frozen_copy(module: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A detached, gradient-free copy of ``module`` (optionally cast to ``dtype``)."""
    ref = copy.deepcopy(module)
    if dtype is not None:
        ref = ref.to(dtype)
    ref.requires_grad_(False)
    return ref.eval()


def model_fingerprint(model: nn.Module) -> str:
    """A cheap content hash: name, shape and two moments of every parameter."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, param in model.named_parameters():
            p = param.detach().float()
            digest.update(f"{name}{tuple(p.shape)}{p.sum().item():.6e}{p.square().sum().item():.6e}".encode())
    return digest.hexdigest()[:16]


def precompute_reference(
    dataset: Dataset,
    score: Callable[[list[dict]], Tensor],
    *,
    batch_size: int,
    cache_dir: str | Path,
    key_parts: dict,
    column: str = "reference_logps",
    progress: bool = True,
) -> Dataset:
    """Add a ``column`` of per-candidate, per-token values computed by ``score``, cached on disk.

    ``score(rows)`` returns ``[B, K, T]`` per-token values and the rows' token counts give the
    lengths. The cache key hashes the dataset fingerprint with ``key_parts`` (model fingerprint,
    max length, ...), so a changed model or dataset recomputes.
    """
    key = hashlib.sha256(json.dumps({"data": dataset._fingerprint, **key_parts}, sort_keys=True).encode()).hexdigest()
    path = Path(cache_dir) / f"{column.removesuffix('_logps')}-{key[:16]}"
    if path.exists():
        return load_from_disk(str(path))
    values = []
    for start in tqdm(range(0, len(dataset), batch_size), desc=column, disable=not progress):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset)))).to_list()
        with torch.no_grad():
            per_token = score(rows).cpu()
        for row, group in zip(rows, per_token):
            values.append([group[k, : len(ids)].tolist() for k, ids in enumerate(row["candidate_ids"])])
    result = dataset.add_column(column, values)
    tmp = path.with_name(path.name + ".tmp")
    result.save_to_disk(str(tmp))
    tmp.rename(path)
    return load_from_disk(str(path))
