"""Preference groups whose candidates are stored media files (images, audio clips): what the image and audio loaders
(:mod:`mmdpo.data.images`, :mod:`mmdpo.data.audio`) share.

A loader describes its media once as a :class:`MediaKind` (its formats, their converters, the stored feature) and
gets reading, row conversion, ties, pair expansion and the checks of every candidate from here:

    groups = load_media_groups(IMAGES, "/data/pickapic_v2/data", bad_rows="skip")   # IMAGES: images.py's MediaKind
    groups = check_candidates(groups, "skip", inspect, noun="image", what=..., fix=...)  # inspect: one candidate

A candidate is stored as a ``{"bytes", "path"}`` reference, the storage of ``datasets.Image(decode=False)`` and
``datasets.Audio(decode=False)``, and is never decoded while loading. Relative paths are resolved against the folder
of the index file (the current directory for an in-memory dataset) and must exist.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from datasets import (
    Dataset,
    DatasetDict,
    Features,
    List,
    Value,
    concatenate_datasets,
    load_dataset,
)

from mmdpo.data.loaders import (
    PAIRINGS,
    BadRow,
    BadRows,
    GroupSet,
    Pairing,
    Ties,
    check_choice,
    check_columns,
    convert_rows,
    data_files,
    detect_format,
    expand_groups,
    group_labels,
    label_of,
    pick_split,
    rank_labels,
    read_table,
)
from mmdpo.data.schema import CANDIDATES, DESIRABLE, GROUP_ID, ID, PROMPT, RANKS, SCORES

REFERENCE = {"bytes": Value("binary"), "path": Value("string")}
"""The Arrow layout of one stored candidate, shared by ``datasets.Image`` and ``datasets.Audio`` storage."""
LABEL_TYPES = {
    PROMPT: Value("string"),
    RANKS: List(Value("int64")),
    SCORES: List(Value("float64")),
    DESIRABLE: List(Value("bool")),
}
Converter = Callable[..., dict[str, Any]]
"""A source row and (keyword ``base``) the folder relative paths start from -> a group."""
Store = Callable[[Any, str, "Path | None"], dict[str, Any]]
"""A media value, its field and the base folder -> a stored ``{"bytes", "path"}`` reference."""


@dataclass(frozen=True)
class MediaKind:
    """One kind of stored media and its preference formats.

    Args:
        noun: what messages and skip reasons call one candidate (``image`` gives ``missing_image``).
        feature: the ``datasets`` feature of one stored candidate (``Image(decode=False)``, ``Audio(decode=False)``).
        converters: per format, the function from a source row and the folder relative paths start from to a group.
        format_columns: per format, its required columns, each a tuple of alternatives (detection order).
        list_columns: the columns that must hold lists.
        passthrough: source columns copied unchanged into the groups when present.
    """

    noun: str
    feature: Any
    converters: Mapping[str, Converter]
    format_columns: Mapping[str, list[tuple[str, ...]]]
    list_columns: tuple[str, ...]
    passthrough: tuple[str, ...] = (ID, GROUP_ID)


# --- reading ---------------------------------------------------------------------------------------


def is_saved(path: Path) -> bool:
    """True for a ``save_to_disk`` directory."""
    return (path / "dataset_dict.json").exists() or (path / "state.json").exists()


def index_folder(path: Path, split: str) -> Path | None:
    """The folder relative media paths start from: the index file's, or None when the split's files sit in several."""
    if path.is_file():
        return path.parent
    if is_saved(path):
        return path
    folders = {Path(f).parent for f in pick_split(data_files(path), split, str(path))}
    return folders.pop() if len(folders) == 1 else None


def read_media_table(source: str | Path | Dataset | DatasetDict, split: str) -> tuple[Dataset, str, Path | None]:
    """The split ``split`` of ``source`` (everything :func:`~mmdpo.data.loaders.read_table` reads, or a directory of
    Arrow shards), a name for messages, and the folder relative media paths start from (None when the split's index
    files sit in several folders)."""
    if isinstance(source, (Dataset, DatasetDict)):
        return read_table(source, split), "the in-memory dataset", Path.cwd()
    path = Path(source).absolute()
    if path.is_dir() and not is_saved(path) and any(path.rglob("*.arrow")):
        return pick_split(load_dataset("arrow", data_dir=str(path)), split, str(path)), str(path), path
    return read_table(path, split), str(path), index_folder(path, split)


def undecoded_rows(table: Dataset, batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """The rows of ``table`` as dicts, media in storage form: ``datasets.Image`` and ``datasets.Audio`` columns are
    read as Arrow, so nothing is decoded."""
    for batch in table.with_format("arrow").iter(batch_size=batch_size):
        yield from batch.to_pylist()


# --- row conversion --------------------------------------------------------------------------------


def row_prompt(row: dict[str, Any]) -> str:
    """The row's ``prompt`` (or ``caption``), which must be non-empty text."""
    field = PROMPT if PROMPT in row else "caption"
    value = row.get(field)
    if value is not None and not isinstance(value, str):
        raise BadRow("wrong_type", field, f"must be text, got {str(value)[:40]}")
    if not value:
        raise BadRow("empty_prompt", field, "is empty")
    return value


def stored_reference(value: Any, field: str, base: Path | None, noun: str) -> dict[str, Any]:
    """A media file (a path, bytes or a ``{"bytes", "path"}`` dict) as a stored reference; a relative path is resolved
    against ``base`` and must name an existing file. An empty, mistyped or missing one raises
    :class:`~mmdpo.data.loaders.BadRow` naming ``field``, counted under ``missing_<noun>`` or ``wrong_type``."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return {"bytes": value["bytes"], "path": value.get("path")}
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)) and value:
        return {"bytes": bytes(value), "path": None}
    if not value:
        raise BadRow(f"missing_{noun}", field, "is empty")
    if not isinstance(value, str):
        raise BadRow("wrong_type", field, f"must be an {noun} path, {noun} bytes or {{bytes, path}}, got {value!r:.40}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        if base is None:
            raise ValueError(
                f"Field {field!r} holds the relative {noun} path {value!r}, but the index files sit in several "
                "folders, so it has no single base; write absolute paths or keep the index files in one folder."
            )
        path = base / path
    if not path.is_file():
        raise BadRow(f"missing_{noun}", field, f"names {str(path)!r}, which does not exist")
    return {"bytes": None, "path": str(path)}


def media_list(row: dict[str, Any], field: str, noun: str) -> list[Any]:
    """The non-empty list of media in ``row[field]``."""
    values = row.get(field)
    if not values:
        raise BadRow(f"missing_{noun}", field, "is empty")
    if not isinstance(values, list):
        raise BadRow("wrong_type", field, f"must be a list of {noun} files, got {str(values)[:40]}")
    return values


def media_group(
    row: dict[str, Any], values: list[Any], fields: list[str], labels: dict, base: Path | None, store: Store
) -> dict[str, Any]:
    """A group of the row's prompt, its media ``values`` (from ``fields``) stored by ``store``, and ``labels``."""
    prompt = row_prompt(row)
    return {PROMPT: prompt, CANDIDATES: [store(v, f, base) for v, f in zip(values, fields)], **labels}


def chosen_rejected_group(row: dict[str, Any], base: Path | None, store: Store) -> dict[str, Any]:
    """A K = 2 group from ``chosen`` and ``rejected``: ranks [0, 1]."""
    return media_group(
        row, [row.get("chosen"), row.get("rejected")], ["chosen", "rejected"], {RANKS: [0, 1]}, base, store
    )


def ranked_group(row: dict[str, Any], base: Path | None, store: Store, field: str, noun: str) -> dict[str, Any]:
    """A group from the media list ``row[field]`` and its ``ranks`` and/or ``scores``."""
    values = media_list(row, field, noun)
    labels = rank_labels(row, len(values), field)
    return media_group(row, values, [f"{field}[{i}]" for i in range(len(values))], labels, base, store)


def schema_group(row: dict[str, Any], base: Path | None, store: Store, noun: str) -> dict[str, Any]:
    """A group of our own schema (:mod:`mmdpo.data.schema`) whose ``candidates`` are media."""
    values = media_list(row, CANDIDATES, noun)
    fields = [f"{CANDIDATES}[{i}]" for i in range(len(values))]
    return media_group(row, values, fields, group_labels(row, len(values)), base, store)


# --- the entry point -------------------------------------------------------------------------------


def _to_dataset(kind: MediaKind, groups: list[dict], sources: list[int], table: Dataset, pairs: Pairing) -> Dataset:
    """The groups as a dataset; candidates are written in their Arrow layout and cast to ``kind.feature``, so no
    ``datasets`` encoder runs (its audio encoder needs torchcodec)."""
    label = label_of(groups[0])
    columns = [PROMPT, CANDIDATES, label]
    if label == RANKS and all(group.get(SCORES) is not None for group in groups):
        columns.append(SCORES)
    types = {**LABEL_TYPES, CANDIDATES: List(REFERENCE)}
    data = {name: [group[name] for group in groups] for name in columns}
    dataset = Dataset.from_dict(data, features=Features({name: types[name] for name in columns}))
    dataset = dataset.cast_column(CANDIDATES, List(kind.feature))
    passthrough = [c for c in kind.passthrough if c in table.column_names]
    if passthrough:
        dataset = concatenate_datasets([dataset, table.select_columns(passthrough).select(sources)], axis=1)
    if pairs != "none" and GROUP_ID not in passthrough:
        dataset = dataset.add_column(GROUP_ID, sources)
    return dataset


def load_media_groups(
    kind: MediaKind,
    source: str | Path | Dataset | DatasetDict,
    *,
    format: str = "auto",
    split: str = "train",
    ties: Ties = "drop",
    bad_rows: BadRows = "error",
    pairs: Pairing = "none",
) -> GroupSet:
    """Read ``source`` and convert it to groups of ``kind`` candidates (the options are described at
    :func:`~mmdpo.data.images.load_image_groups`)."""
    check_choice("data.format", format, ("auto", *kind.converters))
    check_choice("data.ties", ties, ("drop", "keep"))
    check_choice("data.bad_rows", bad_rows, ("error", "skip"))
    check_choice("data.pairs", pairs, PAIRINGS)
    table, name, base = read_media_table(source, split)
    noun = f"{kind.noun} format"
    format = detect_format(table.column_names, kind.format_columns, noun) if format == "auto" else format
    check_columns(table, format, kind.format_columns, kind.list_columns, noun)

    convert = partial(kind.converters[format], base=base)
    groups, sources, skipped = convert_rows(undecoded_rows(table), convert, name, ties=ties, bad_rows=bad_rows)

    if pairs != "none" and groups:
        groups, sources = expand_groups(groups, sources, pairs, name, skipped)
    if not groups:
        raise ValueError(
            f"No usable groups in {name}: {len(table)} rows read, skipped {dict(skipped) or 'none'}; "
            "check the data, data.ties and data.bad_rows."
        )
    dataset = _to_dataset(kind, groups, sources, table, pairs)
    return GroupSet(dataset, format, False, label_of(groups[0]), {k: v for k, v in skipped.items() if v})


# --- checking every candidate ----------------------------------------------------------------------


def first_bad(candidates: list[dict[str, Any]], inspect: Callable[[dict[str, Any]], tuple[str, str] | None]) -> dict:
    """The index, skip reason and problem of a group's first candidate ``inspect`` objects to (it returns a
    (reason, problem) pair or None), or -1 and empty strings."""
    for index, candidate in enumerate(candidates):
        found = inspect(candidate)
        if found is not None:
            return {"bad_candidate": index, "reason": found[0], "problem": found[1]}
    return {"bad_candidate": -1, "reason": "", "problem": ""}


def check_candidates(
    groups: GroupSet,
    bad_rows: BadRows,
    inspect: Callable[[dict[str, Any]], tuple[str, str] | None],
    *,
    noun: str,
    what: str,
    fix: str,
    num_proc: int | None = None,
) -> GroupSet:
    """Run ``inspect`` on every candidate once (a (reason, problem) pair for a bad one, else None); a group with a
    bad candidate is fatal (``Row i of the groups, candidate j: <problem> <fix>``) or dropped and counted under its
    first bad candidate's reason.

    Args:
        noun: the media's name in messages (``image``).
        what: the problem of a bad group in general, for the message when every group is bad (``an unreadable image``).
        fix: the sentence that ends the message of a bad group.
    """
    check_choice("data.bad_rows", bad_rows, ("error", "skip"))
    data = groups.dataset
    report = data.map(
        partial(first_bad, inspect=inspect),
        input_columns=CANDIDATES,
        remove_columns=data.column_names,
        num_proc=num_proc,
        load_from_cache_file=False,
        keep_in_memory=True,
        desc=f"Checking {noun} files",
    )
    bad = [i for i, candidate in enumerate(report["bad_candidate"]) if candidate >= 0]
    if not bad:
        return groups
    if bad_rows == "error":
        first = report[bad[0]]
        raise ValueError(f"Row {bad[0]} of the groups, candidate {first['bad_candidate']}: {first['problem']} {fix}")
    if len(bad) == len(data):
        raise ValueError(f"No usable groups: all {len(data)} hold {what}; check the {noun} files.")
    dropped = set(bad)
    reasons = report.select(bad)["reason"]
    skipped = Counter(groups.skipped) + Counter(reasons)
    return replace(
        groups, dataset=data.select([i for i in range(len(data)) if i not in dropped]), skipped=dict(skipped)
    )
