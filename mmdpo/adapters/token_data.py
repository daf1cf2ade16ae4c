"""Token models' data: a ``data`` section's groups, split, tokenised, and with precomputed reference values attached
when ``model.reference=precomputed``.

    train, evaluation, skipped = token_datasets(config, adapter, accelerator)
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from accelerate import Accelerator
from datasets import Dataset, concatenate_datasets

from mmdpo.adapters.reference import model_fingerprint, precompute_reference
from mmdpo.data.loaders import train_eval_split


def tokenize(dataset: Dataset, adapter, bad_rows: str, skipped: Counter) -> Dataset:
    """Token ids for every group; unusable rows raise, or are dropped and counted with ``bad_rows=skip``."""
    from mmdpo.adapters.llm import RowError

    def encode(row: dict, index: int) -> dict:
        try:
            return {"tokens": adapter.tokenize(row), "error": ""}
        except RowError as err:
            if bad_rows == "error":
                raise ValueError(f"Row {index}: {err}") from err
            return {"tokens": None, "error": err.reason}  # one column, so a dropped row needs no placeholders

    encoded = dataset.map(encode, with_indices=True, desc="tokenize")
    errors = encoded["error"]
    skipped.update(reason for reason in errors if reason)
    kept = encoded.select([i for i, reason in enumerate(errors) if not reason]).remove_columns("error")
    tokens = kept.select_columns(["tokens"]).flatten()
    tokens = tokens.rename_columns({name: name.removeprefix("tokens.") for name in tokens.column_names})
    return concatenate_datasets([kept.remove_columns("tokens"), tokens], axis=1)


def token_datasets(config, adapter, accelerator: Accelerator) -> tuple[Dataset, Dataset | None, dict[str, int]]:
    """Load (``adapter.load_source``), split and tokenise the data; precompute reference values when configured."""
    data = config.data
    sources = [adapter.load_source(path, split, config) for path, split in data.sources]
    groups = sources[0]
    skipped = Counter(groups.skipped)
    if len(sources) > 1:
        train_set, eval_set = groups, sources[1]
    else:
        train_set, eval_set = train_eval_split(groups, data.eval_fraction, seed=config.train.seed)
    train_ds = tokenize(train_set.dataset, adapter, data.bad_rows, skipped)
    eval_ds = None if eval_set is None else tokenize(eval_set.dataset, adapter, data.bad_rows, skipped)

    if adapter.reference_kind == "precomputed":
        cache_dir = Path(data.cache_dir or Path(config.train.output_dir) / "cache")
        frozen = {"reference_logps": adapter.scorer}
        if adapter.guidance_scorer is not None:  # every frozen model's values travel with the data
            frozen["guidance_logps"] = adapter.guidance_scorer
        for column, scorer in frozen.items():
            train_ds = attach_values(train_ds, column, scorer, adapter, config, accelerator, cache_dir)
            if eval_ds is not None:
                eval_ds = attach_values(eval_ds, column, scorer, adapter, config, accelerator, cache_dir)
        adapter.guidance_scorer = None
    return train_ds, eval_ds, dict(skipped)


def attach_values(
    ds: Dataset, column: str, scorer, adapter, config, accelerator: Accelerator, cache_dir: Path
) -> Dataset:
    """``ds`` plus a ``column`` of ``scorer``'s per-token log-probs, computed once on the main process and cached."""
    key = {
        "model": model_fingerprint(scorer.model),
        **adapter.cache_key(ds),
        "mixed_precision": config.train.mixed_precision,
    }
    scorer.to(accelerator.device)

    def score(rows: list[dict]):
        batch = adapter.collate(rows).to(accelerator.device)
        with accelerator.autocast():
            return scorer(**batch.model_inputs())["values"]

    settings = {"batch_size": config.train.batch_size, "cache_dir": cache_dir, "key_parts": key, "column": column}
    if accelerator.is_main_process:
        precompute_reference(ds, score, **settings)
    accelerator.wait_for_everyone()
    return precompute_reference(ds, score, **settings)
