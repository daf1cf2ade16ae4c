"""From the ``data`` config section to train and eval datasets: tokenised text (or image + question) groups, plus
reference values when precomputed, or image groups whose images are checked once and decoded per batch."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

from accelerate import Accelerator
from datasets import Dataset, concatenate_datasets

from mmdpo.adapters.llm import LLMAdapter, RowError
from mmdpo.adapters.reference import model_fingerprint, precompute_reference
from mmdpo.config import Config, modality
from mmdpo.data.loaders import GroupSet, load_groups, train_eval_split
from mmdpo.data.toy import toy_groups

TOY_GROUPS = 512


def _groups(path: str, split: str, config: Config) -> GroupSet:
    """Text groups, or image + question groups for a vision-language model; ``toy`` is the built-in task of each."""
    data, seed = config.data, config.train.seed
    options = {"format": data.format, "split": split, "ties": data.ties, "bad_rows": data.bad_rows, "pairs": data.pairs}
    if modality(config.model) == "vlm":
        from mmdpo.data.vlm import colour_pairs, load_vlm_groups

        return load_vlm_groups(colour_pairs(TOY_GROUPS, seed) if path == "toy" else path, **options)
    return load_groups(toy_groups(TOY_GROUPS, seed) if path == "toy" else path, **options)


def tokenize(dataset: Dataset, llm: LLMAdapter, bad_rows: str, skipped: Counter) -> Dataset:
    """Token ids for every group; unusable rows raise, or are dropped and counted with ``bad_rows=skip``."""

    def encode(row: dict, index: int) -> dict:
        try:
            return {"tokens": llm.tokenize(row), "error": ""}
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


def prepare_datasets(
    config: Config, llm: LLMAdapter, accelerator: Accelerator, reference_kind: str
) -> tuple[Dataset, Dataset | None, dict[str, int]]:
    """Load, split and tokenise the data; precompute reference values when configured."""
    data = config.data
    sources = [_groups(path, split, config) for path, split in data.sources]
    groups = sources[0]
    skipped = Counter(groups.skipped)
    if len(sources) > 1:
        train_set, eval_set = groups, sources[1]
    else:
        train_set, eval_set = train_eval_split(groups, data.eval_fraction, seed=config.train.seed)
    train_ds = tokenize(train_set.dataset, llm, data.bad_rows, skipped)
    eval_ds = None if eval_set is None else tokenize(eval_set.dataset, llm, data.bad_rows, skipped)

    if reference_kind == "precomputed":
        cache_dir = Path(data.cache_dir or Path(config.train.output_dir) / "cache")
        frozen = {"reference_logps": llm.scorer}
        if llm.guidance_scorer is not None:  # every frozen model's values travel with the data
            frozen["guidance_logps"] = llm.guidance_scorer
        for column, scorer in frozen.items():
            train_ds = attach_values(train_ds, column, scorer, llm, config, accelerator, cache_dir)
            eval_ds = (
                None if eval_ds is None else attach_values(eval_ds, column, scorer, llm, config, accelerator, cache_dir)
            )
        llm.guidance_scorer = None
    return train_ds, eval_ds, dict(skipped)


def attach_values(
    ds: Dataset, column: str, scorer, llm: LLMAdapter, config: Config, accelerator: Accelerator, cache_dir: Path
) -> Dataset:
    """``ds`` plus a ``column`` of ``scorer``'s per-token log-probs, computed once on the main process and cached."""
    key = {
        "model": model_fingerprint(scorer.model),
        **llm.cache_key(ds),
        "mixed_precision": config.train.mixed_precision,
    }
    scorer.to(accelerator.device)

    def score(rows: list[dict]):
        batch = llm.collate(rows).to(accelerator.device)
        with accelerator.autocast():
            return scorer(**batch.model_inputs())["values"]

    settings = {"batch_size": config.train.batch_size, "cache_dir": cache_dir, "key_parts": key, "column": column}
    if accelerator.is_main_process:
        precompute_reference(ds, score, **settings)
    accelerator.wait_for_everyone()
    return precompute_reference(ds, score, **settings)


def load_image_source(path: str, split: str, config: Config) -> GroupSet:
    """Image groups of one source with every image checked once (unreadable ones fatal or skipped)."""
    from mmdpo.data.images import check_images, load_image_groups

    data = config.data
    if path == "toy":
        raise ValueError("data.path=toy is the text task; give text-to-image training a dataset path.")
    groups = load_image_groups(
        path, format=data.format, split=split, ties=data.ties, bad_rows=data.bad_rows, pairs=data.pairs
    )
    return check_images(groups, data.bad_rows)


def split_image_groups(
    config: Config, groups: GroupSet, eval_groups: GroupSet | None
) -> tuple[Dataset, Dataset | None, dict[str, int]]:
    """Train and eval groups, each row with its ``row_index`` in its source (which seeds its transform and indexes
    the encode cache); the eval set is ``eval_groups`` when given, else a seeded fraction of ``groups``."""

    def indexed(group_set: GroupSet) -> GroupSet:
        if "row_index" in group_set.dataset.column_names:
            return group_set
        dataset = group_set.dataset.add_column("row_index", list(range(len(group_set))))
        return replace(group_set, dataset=dataset)

    groups = indexed(groups)
    if eval_groups is not None:
        train_set, eval_set = groups, indexed(eval_groups)
    else:
        train_set, eval_set = train_eval_split(groups, config.data.eval_fraction, seed=config.train.seed)
    skipped = Counter(train_set.skipped) + Counter({} if eval_set is None else eval_set.skipped)
    return train_set.dataset, None if eval_set is None else eval_set.dataset, dict(skipped)
