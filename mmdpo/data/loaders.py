"""Public preference formats -> preference groups (:mod:`mmdpo.data.schema`).

    groups = load_groups("/data/prefs.jsonl")                   # format detected from the columns
    train, held_out = train_eval_split(groups, 0.05, seed=0)

Formats: ``pairs`` (TRL: prompt/chosen/rejected, plain or conversational, or implicit-prompt
conversations), ``ranked`` (prompt, responses or completions, ranks or scores), ``unpaired``
(prompt, completion, label) and ``groups`` (our own schema). Sources: JSONL/JSON, Parquet and CSV
files, directories of them, ``save_to_disk`` directories and in-memory datasets.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
from datasets.exceptions import DatasetGenerationError

from mmdpo.data.schema import CANDIDATES, LABELS, PROMPT

Pairing = Literal["none", "all", "best_vs_rest", "adjacent", "best_vs_worst"]
FILE_TYPES = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FORMAT_COLUMNS = {
    "groups": [(PROMPT, CANDIDATES)],
    "pairs": [("prompt", "chosen", "rejected"), ("chosen", "rejected")],
    "ranked": [("prompt", "responses"), ("prompt", "completions")],
    "unpaired": [("prompt", "completion", "label")],
}


class BadRow(ValueError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class GroupSet:
    """Preference groups plus what the loader learned about them."""

    dataset: Dataset
    format: str
    conversational: bool
    label: str
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)


# --- reading ---------------------------------------------------------------------------------------


def read_table(source: str | Path | Dataset, split: str = "train") -> Dataset:
    """A ``datasets.Dataset`` from a file, a directory or a dataset object."""
    if isinstance(source, Dataset):
        return source
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(
            f"data.path={str(path)!r} does not exist; give a JSONL/Parquet/CSV file or a directory."
        )
    if path.is_dir() and any(
        (path / marker).exists() for marker in ("dataset_info.json", "dataset_dict.json", "state.json")
    ):
        loaded = load_from_disk(str(path))
        if isinstance(loaded, DatasetDict):
            if split not in loaded:
                raise ValueError(f"data.split={split!r} is not in {str(path)!r}; it has {', '.join(loaded)}.")
            return loaded[split]
        return loaded
    files = sorted(p for p in path.rglob("*") if p.suffix in FILE_TYPES) if path.is_dir() else [path]
    kinds = {FILE_TYPES.get(p.suffix) for p in files}
    if not files or None in kinds or len(kinds) != 1:
        raise ValueError(
            f"data.path={str(path)!r} must be one kind of .jsonl/.json/.parquet/.csv file (or a directory of them)."
        )
    kind = kinds.pop()
    try:
        return load_dataset(kind, data_files=[str(p) for p in files], split="train")
    except DatasetGenerationError as err:
        cause = err.__cause__ or err
        raise ValueError(
            f"data.path={str(path)!r} is not valid {kind}: {cause}; fix or remove the broken file."
        ) from err


def detect_format(columns: list[str]) -> str:
    """The first format whose required columns are all present."""
    for name, options in FORMAT_COLUMNS.items():
        if any(all(c in columns for c in option) for option in options):
            return name
    wanted = "; ".join(f"{name}: {' + '.join(options[0])}" for name, options in FORMAT_COLUMNS.items())
    raise ValueError(f"The data has columns {columns}, which fit no known format ({wanted}); rename the columns.")


# --- row conversion --------------------------------------------------------------------------------


def _require(row: dict[str, Any], name: str) -> Any:
    value = row.get(name)
    if value is None or (isinstance(value, (str, list)) and not value):
        raise BadRow(
            "empty_response" if name in {"chosen", "rejected", "completion"} else "missing_field",
            f"field {name!r} is empty",
        )
    return value


def _common_prefix(a: list[dict], b: list[dict]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _from_pairs(row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = _require(row, "chosen"), _require(row, "rejected")
    if row.get("prompt") is None:  # implicit prompt: the shared opening turns of two conversations
        if not isinstance(chosen, list):
            raise BadRow("missing_field", "field 'prompt' is missing and chosen/rejected are not conversations")
        cut = _common_prefix(chosen, rejected)
        prompt, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
        if not prompt or not chosen or not rejected:
            raise BadRow("empty_response", "chosen and rejected share no prompt turns or have no reply after it")
    else:
        prompt = _require(row, "prompt")
    return {PROMPT: prompt, CANDIDATES: [chosen, rejected], "ranks": [0, 1]}


def _from_ranked(row: dict[str, Any]) -> dict[str, Any]:
    responses = row.get("responses", row.get("completions"))
    if not responses or any(r is None or (isinstance(r, (str, list)) and not r) for r in responses):
        raise BadRow("empty_response", "a response in the list is empty")
    out = {PROMPT: _require(row, "prompt"), CANDIDATES: list(responses)}
    for label in ("ranks", "scores"):
        if row.get(label) is not None:
            if len(row[label]) != len(responses):
                raise BadRow("length_mismatch", f"{len(responses)} responses but {len(row[label])} {label}")
            out[label] = list(row[label])
            return out
    raise BadRow("missing_field", "fields 'ranks' and 'scores' are both empty")


def _from_unpaired(row: dict[str, Any]) -> dict[str, Any]:
    label = row.get("label")
    if not isinstance(label, bool):
        raise BadRow("bad_label", f"field 'label' must be true or false, got {label!r}")
    return {PROMPT: _require(row, "prompt"), CANDIDATES: [_require(row, "completion")], "desirable": [label]}


def _from_groups(row: dict[str, Any]) -> dict[str, Any]:
    candidates = _require(row, CANDIDATES)
    out = {PROMPT: _require(row, PROMPT), CANDIDATES: candidates}
    for label in LABELS:
        if row.get(label) is not None:
            if len(row[label]) != len(candidates):
                raise BadRow("length_mismatch", f"{len(candidates)} candidates but {len(row[label])} {label}")
            out[label] = row[label]
    if len(out) == 2:
        raise BadRow("missing_field", f"none of the label fields {', '.join(LABELS)} is set")
    return out


CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "groups": _from_groups,
    "pairs": _from_pairs,
    "ranked": _from_ranked,
    "unpaired": _from_unpaired,
}


def _is_tie(group: dict[str, Any]) -> bool:
    labels = group.get("ranks", group.get("scores"))
    return labels is not None and len(set(labels)) == 1


def _ranks(group: dict[str, Any]) -> list[int]:
    """Dense ranks (0 = best) from ranks or scores."""
    if group.get("ranks") is not None:
        return list(group["ranks"])
    distinct = sorted(set(group["scores"]), reverse=True)
    return [distinct.index(s) for s in group["scores"]]


def expand_pairs(group: dict[str, Any], mode: Pairing) -> list[tuple[int, int]]:
    """Index pairs (better, worse) of a ranked group (Curry-DPO's multi-pair expansion)."""
    ranks = _ranks(group)
    order = sorted(range(len(ranks)), key=lambda i: (ranks[i], i))
    if mode == "all":
        return [(i, j) for i, j in itertools.permutations(range(len(ranks)), 2) if ranks[i] < ranks[j]]
    if mode == "best_vs_rest":
        return [(order[0], j) for j in order[1:] if ranks[order[0]] < ranks[j]]
    if mode == "best_vs_worst":
        return [(order[0], order[-1])] if ranks[order[0]] < ranks[order[-1]] else []
    if mode == "adjacent":
        levels = sorted(set(ranks))
        return [
            (i, j) for a, b in zip(levels, levels[1:]) for i in order if ranks[i] == a for j in order if ranks[j] == b
        ]
    raise ValueError(f"data.pairs={mode!r} is unknown; use none, all, best_vs_rest, adjacent or best_vs_worst.")


def _pair_rows(group: dict[str, Any], mode: Pairing, group_id: int) -> list[dict[str, Any]]:
    rows = []
    for i, j in expand_pairs(group, mode):
        row = {PROMPT: group[PROMPT], CANDIDATES: [group[CANDIDATES][i], group[CANDIDATES][j]], "ranks": [0, 1]}
        if group.get("scores") is not None:
            row["scores"] = [group["scores"][i], group["scores"][j]]
        rows.append({**row, "group_id": group_id})
    return rows


# --- the entry point -------------------------------------------------------------------------------


def load_groups(
    source: str | Path | Dataset,
    *,
    format: str = "auto",
    split: str = "train",
    ties: Literal["drop", "keep"] = "drop",
    bad_rows: Literal["error", "skip"] = "error",
    pairs: Pairing = "none",
) -> GroupSet:
    """Read ``source`` and convert it to preference groups.

    Args:
        format: ``auto`` (from the columns) or one of ``pairs``, ``ranked``, ``unpaired``, ``groups``.
        split: the split of a saved ``DatasetDict``.
        ties: ``drop`` removes groups whose candidates all share one rank or score.
        bad_rows: ``error`` stops at the first unusable row, naming it; ``skip`` drops and counts them.
        pairs: expand ranked groups into K = 2 pairs (``all``, ``best_vs_rest``, ``adjacent``, ``best_vs_worst``).
    """
    table = read_table(source, split)
    if format == "auto":
        format = detect_format(table.column_names)
    if format not in CONVERTERS:
        raise ValueError(f"data.format={format!r} is unknown; use auto, {', '.join(CONVERTERS)}.")
    if not any(all(c in table.column_names for c in option) for option in FORMAT_COLUMNS[format]):
        need = " + ".join(FORMAT_COLUMNS[format][0])
        raise ValueError(f"data.format={format} needs columns {need}, but the data has {table.column_names}.")

    convert, skipped, groups = CONVERTERS[format], Counter(), []
    for index, row in enumerate(table):
        try:
            group = convert(row)
        except BadRow as err:
            if bad_rows == "error":
                raise ValueError(f"Row {index}: {err}; fix the row or set data.bad_rows=skip.") from err
            skipped[err.reason] += 1
            continue
        if ties == "drop" and _is_tie(group):
            skipped["tie"] += 1
            continue
        for extra in ("images", "id"):
            if row.get(extra) is not None:
                group[extra] = row[extra]
        groups.append(group)

    conversational = bool(groups) and isinstance(groups[0][PROMPT], list)
    if pairs != "none":
        groups = [row for gid, group in enumerate(groups) for row in _pair_rows(group, pairs, gid)]
    label = next((name for name in LABELS if groups and groups[0].get(name) is not None), "ranks")
    return GroupSet(Dataset.from_list(groups), format, conversational, label, dict(skipped))


def train_eval_split(groups: GroupSet, eval_fraction: float, seed: int) -> tuple[GroupSet, GroupSet | None]:
    """A seeded split; pairs expanded from one group stay on one side."""
    if eval_fraction <= 0:
        return groups, None
    data = groups.dataset
    keys = data["group_id"] if "group_id" in data.column_names else list(range(len(data)))
    unique = sorted(set(keys))
    held = set(Dataset.from_dict({"k": unique}).shuffle(seed=seed)["k"][: max(1, round(eval_fraction * len(unique)))])
    train_idx = [i for i, k in enumerate(keys) if k not in held]
    eval_idx = [i for i, k in enumerate(keys) if k in held]
    return replace(groups, dataset=data.select(train_idx)), replace(groups, dataset=data.select(eval_idx), skipped={})
