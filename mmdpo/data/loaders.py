"""Public preference formats -> preference groups (:mod:`mmdpo.data.schema`).

    groups = load_groups("/data/prefs.jsonl")                           # format detected from the columns
    pairs = load_groups("/data/ranked.parquet", pairs="best_vs_rest")   # Curry-DPO style K = 2 pairs
    train, held_out = train_eval_split(groups, 0.05, seed=0)

Formats (detected from the columns, or forced with ``format=``):

- ``pairs``: TRL's ``prompt``/``chosen``/``rejected``, plain or conversational, or conversations with no prompt
  of their own: the opening turns they share become the prompt (TRL's ``extract_prompt``; like TRL, a text
  ``prompt`` beside full conversations is ignored). Optional ``score_chosen``/``score_rejected`` (UltraFeedback)
  ride along as ``scores``; optional ``chosen_margin_rewards``/``rejected_margin_rewards`` (each a list of M numbers:
  the rewards of the other objectives, as MODPO's margins) as ``margin_rewards``. -> K = 2, ``ranks`` [0, 1].
- ``ranked``: ``prompt``, ``responses`` (or ``completions``) and ``ranks`` and/or ``scores``; optional
  ``margin_rewards``, per response a list of M numbers.
- ``unpaired``: ``prompt``, ``completion``, ``label`` (bool) -> K = 1, ``desirable``.
- ``groups``: our own schema (:mod:`mmdpo.data.schema`, ``margin_rewards`` included), validated.
- ``step_dpo``: Step-DPO's columns (its ``Math-Step-DPO-10K``): ``prompt``, ``initial_reason_steps`` (the correct
  steps so far, possibly empty; ``prefix`` as its data pipeline names it), ``chosen`` and ``rejected`` (the next
  step, right and wrong) -> K = 2 step pairs, the correct steps as ``prefix``, one step per candidate.
- ``steps``: whole solutions as step lists: ``prompt``, ``chosen_steps``, ``rejected_steps`` and optionally
  ``first_error``, the index of the rejected solution's first wrong step. The steps before the point where the
  two lists part are shared and become ``prefix``; each candidate keeps its steps from there on. ``first_error``,
  when given, must be that point (a check on the data). -> K = 2 step pairs.

Steps are concatenated exactly as given, so keep their separators (such as a trailing newline) in the texts.
Margin rewards are all or nothing: every row has them, each candidate the same M, or no row does.

Sources: a JSONL/JSON, Parquet or CSV file; a directory of such files (split by file name as ``datasets``
does it, e.g. ``data/train-0000.parquet`` and ``data/test-0000.parquet``); a ``save_to_disk`` directory of a
``Dataset`` or ``DatasetDict``; an in-memory ``Dataset`` or ``DatasetDict``. CSV cells hold text, not lists, so
CSV carries plain pairs and unpaired rows only.

Rows are converted in a plain loop rather than ``Dataset.map``: conversion drops rows, expands one group
into several pairs and counts skip reasons, and ``map``'s cache would replay results without the counting.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import torch
from datasets import (
    Dataset,
    DatasetDict,
    Features,
    Json,
    List,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)
from datasets.data_files import DataFilesDict, EmptyDatasetError, get_data_patterns
from datasets.exceptions import DatasetGenerationError

from mmdpo.data.schema import (
    CANDIDATES,
    DESIRABLE,
    GROUP_ID,
    MARGIN_REWARDS,
    PASSTHROUGH,
    PREFIX,
    PROMPT,
    RANKS,
    SCORES,
    STEPS,
)
from mmdpo.objectives.pairs import PAIR_MODES, PairMode, ranked_pairs

Ties = Literal["drop", "keep"]
BadRows = Literal["error", "skip"]
Pairing = Literal["none", PairMode]
PAIRINGS = ("none", *PAIR_MODES)
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
FORMAT_COLUMNS: dict[str, list[tuple[str, ...]]] = {
    # Each tuple is one requirement: at least one of its columns must be present.
    "groups": [(PROMPT,), (CANDIDATES,), (RANKS, SCORES, DESIRABLE)],
    "step_dpo": [(PROMPT,), ("initial_reason_steps", PREFIX), ("chosen",), ("rejected",)],
    "steps": [(PROMPT,), ("chosen_steps",), ("rejected_steps",)],
    "pairs": [("chosen",), ("rejected",)],
    "ranked": [(PROMPT,), ("responses", "completions"), (RANKS, SCORES)],
    "unpaired": [(PROMPT,), ("completion",), ("label",)],
}
LIST_COLUMNS = (CANDIDATES, "responses", "completions", RANKS, SCORES, DESIRABLE, "chosen_steps", "rejected_steps")


class BadRow(ValueError):
    """A row that cannot become a group; ``bad_rows=skip`` drops it and counts it under ``reason``."""

    def __init__(self, reason: str, field: str, problem: str):
        super().__init__(f"field {field!r} {problem}")
        self.reason = reason


class MixedKinds(ValueError):
    """Plain text and conversations in one row or dataset; fatal whatever ``bad_rows`` says."""


@dataclass
class GroupSet:
    """Preference groups plus what the loader learned about them.

    Args:
        dataset: the groups (:mod:`mmdpo.data.schema`).
        format: the source format (``pairs``, ``ranked``, ``unpaired`` or ``groups``).
        conversational: prompts and candidates are chat messages rather than text.
        label: the label column, ``ranks``, ``scores`` or ``desirable``.
        skipped: rows (or groups) left out, by reason: ``tie``, ``empty_prompt``, ``empty_response``,
            ``length_mismatch``, ``bad_label``, ``wrong_type``.
    """

    dataset: Dataset
    format: str
    conversational: bool
    label: str
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.dataset)


# --- reading ---------------------------------------------------------------------------------------


def read_table(path: str | Path | Dataset | DatasetDict, split: str = "train") -> Dataset:
    """One split of a file, a directory or an in-memory dataset; a single table is split ``train``."""
    if isinstance(path, (Dataset, DatasetDict)):
        return pick_split(path, split, "the in-memory dataset")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"data.path={str(path)!r} does not exist; give a .jsonl/.json, .parquet or .csv file or a directory."
        )
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return pick_split(load_from_disk(str(path)), split, str(path))
    files = pick_split(data_files(path), split, str(path))
    kinds = {FILE_BUILDERS[Path(f).suffix.lower()] for f in files}
    if len(kinds) > 1:
        raise ValueError(f"data.path={str(path)!r} mixes {' and '.join(sorted(kinds))} files; keep one kind.")
    kind = kinds.pop()
    if all(Path(f).stat().st_size == 0 for f in files):
        raise ValueError(f"data.path={str(path)!r} is empty: it has no rows; give a file with preference data.")
    try:
        return load_dataset(kind, data_files=files, split="train")
    except (DatasetGenerationError, pa.ArrowException) as err:
        cause = err.__cause__ or err
        raise ValueError(
            f"data.path={str(path)!r} is not valid {kind}: {cause}; fix or remove the broken file."
        ) from err


def data_files(path: Path) -> dict[str, list[str]]:
    """Data files by split: a file is ``train``; a directory splits by file name, as ``load_dataset`` does."""
    if path.is_file():
        if path.suffix.lower() not in FILE_BUILDERS:
            raise ValueError(f"data.path={str(path)!r} is not a .jsonl/.json, .parquet or .csv file.")
        return {"train": [str(path)]}
    try:
        found = DataFilesDict.from_patterns(get_data_patterns(str(path)), base_path=str(path))
    except EmptyDatasetError:
        found = {}
    splits = {str(name): [f for f in files if Path(f).suffix.lower() in FILE_BUILDERS] for name, files in found.items()}
    splits = {name: files for name, files in splits.items() if files}
    if not splits:
        raise ValueError(f"data.path={str(path)!r} holds no .jsonl/.json, .parquet or .csv files.")
    return splits


def pick_split(tables: Dataset | Mapping[str, Any], split: str, where: str) -> Any:
    if isinstance(tables, Dataset):
        tables = {"train": tables}
    if split not in tables:
        raise ValueError(
            f"The split {split!r} is not in {where}, which has: {', '.join(tables)}; set data.split (or eval_split)."
        )
    return tables[split]


# --- formats and columns ---------------------------------------------------------------------------


def _describe(options: tuple[str, ...]) -> str:
    alternatives = " or ".join(repr(c) for c in options[1:])
    return repr(options[0]) + (f" (or {alternatives})" if alternatives else "")


def _missing(columns: list[str], needs: list[tuple[str, ...]]) -> list[str]:
    """The requirements in ``needs`` (one tuple of alternative columns each) that ``columns`` do not meet."""
    return [_describe(options) for options in needs if not any(c in columns for c in options)]


def detect_format(columns: list[str], formats: dict = FORMAT_COLUMNS, noun: str = "format") -> str:
    """The first of ``formats`` (for text: groups, pairs, ranked, unpaired) whose required columns are all present."""
    fitting = [name for name, needs in formats.items() if not _missing(columns, needs)]
    if fitting:
        return fitting[0]
    closest = min(formats, key=lambda name: len(_missing(columns, formats[name])))
    others = ", ".join(name for name in formats if name != closest)
    raise ValueError(
        f"The data has columns {columns}: the closest {noun} is {closest}, which lacks "
        f"{', '.join(_missing(columns, formats[closest]))}; rename the columns (other {noun}s: {others})."
    )


def check_columns(
    table: Dataset,
    format: str,
    formats: dict = FORMAT_COLUMNS,
    list_columns: tuple[str, ...] = LIST_COLUMNS,
    noun: str = "format",
) -> None:
    """Fail early, in one sentence, when ``table`` lacks a column ``format`` needs or holds text where lists go."""
    columns = table.column_names
    missing = _missing(columns, formats[format])
    if format == "pairs" and not missing and PROMPT not in columns and isinstance(table.features["chosen"], Value):
        missing = ["'prompt' (only conversations carry their own prompt)"]
    if missing:
        fits = [name for name, needs in formats.items() if name != format and not _missing(columns, needs)]
        fit = f"{noun}s that fit them: {', '.join(fits)}" if fits else f"no {noun} fits them"
        raise ValueError(
            f"data.format={format} needs column {', '.join(missing)}, but the data has columns {columns}; {fit}."
        )
    read = {c for options in formats[format] for c in options}
    for name in (c for c in list_columns if c in read and c in columns):
        feature = table.features[name]
        if isinstance(feature, Value) and feature.dtype != "null":
            raise ValueError(
                f"Column {name!r} holds single {feature.dtype} values where lists are needed; "
                "CSV cannot store lists, so write this data as JSONL or Parquet."
            )


# --- row conversion --------------------------------------------------------------------------------


def _kind(conversational: bool) -> str:
    return "a conversation" if conversational else "text"


def _content(value: Any, field: str) -> bool:
    """Check one prompt or response; True for a conversation (a list of messages), False for text."""
    if value is None or (isinstance(value, (str, list)) and not value):
        raise BadRow("empty_prompt" if field == PROMPT else "empty_response", field, "is empty")
    if isinstance(value, str):
        return False
    if isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return True
    raise BadRow("wrong_type", field, f"must be text or a list of {{role, content}} messages, got {str(value)[:40]}")


def _group(prompt: Any, candidates: list[Any], fields: list[str], labels: dict[str, list]) -> dict[str, Any]:
    """A group, once the prompt and every candidate are non-empty and of one kind."""
    conversational = _content(prompt, PROMPT)
    for candidate, name in zip(candidates, fields):
        if _content(candidate, name) != conversational:
            raise MixedKinds(
                f"field 'prompt' is {_kind(conversational)} but field {name!r} is {_kind(not conversational)}"
            )
    return {PROMPT: prompt, CANDIDATES: candidates, **labels}


def _check_list(values: Any, k: int, field: str, noun: str) -> list:
    if not isinstance(values, list):
        raise BadRow("wrong_type", field, f"must be a list, got {values!r}")
    if len(values) != k:
        raise BadRow("length_mismatch", field, f"has {len(values)} entries for {k} {noun}")
    return values


def _score(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRow("bad_label", field, f"must hold finite numbers, got {value!r}")
    return float(value)


def _rank(value: Any, field: str) -> int:
    if _score(value, field) < 0 or value != int(value):
        raise BadRow("bad_label", field, f"must hold whole numbers >= 0 (0 = best), got {value!r}")
    return int(value)


def rank_labels(row: dict[str, Any], k: int, noun: str) -> dict[str, list]:
    """``ranks``, ``scores`` or both (ranks decide the order, scores ride along as reward values)."""
    labels = {}
    if row.get(RANKS) is not None:
        labels[RANKS] = [_rank(v, RANKS) for v in _check_list(row[RANKS], k, RANKS, noun)]
    if row.get(SCORES) is not None:
        labels[SCORES] = [_score(v, SCORES) for v in _check_list(row[SCORES], k, SCORES, noun)]
    if not labels:
        raise BadRow("bad_label", RANKS, "is empty and so is 'scores'")
    return labels


def _margin_rewards(lists: list[tuple[Any, str]]) -> list[list[float]]:
    """One list of M >= 1 finite rewards per candidate, given as (values, field) pairs; the same M for all."""
    rewards = []
    for values, name in lists:
        if not isinstance(values, list) or not values:
            raise BadRow(
                "bad_label", name, f"must be a non-empty list of rewards, one per other objective, got {values!r}"
            )
        rewards.append([_score(v, name) for v in values])
    for (_, name), values in zip(lists, rewards):
        if len(values) != len(rewards[0]):
            raise BadRow(
                "length_mismatch",
                name,
                f"has {len(values)} rewards but {lists[0][1]!r} has {len(rewards[0])}; give every candidate the same M",
            )
    return rewards


def _margin_column(row: dict[str, Any], k: int, noun: str) -> dict[str, list]:
    """``margin_rewards`` of a row with K candidates when it has them: K lists of M rewards."""
    if row.get(MARGIN_REWARDS) is None:
        return {}
    values = _check_list(row[MARGIN_REWARDS], k, MARGIN_REWARDS, noun)
    return {MARGIN_REWARDS: _margin_rewards([(v, f"{MARGIN_REWARDS}[{i}]") for i, v in enumerate(values)])}


def _candidate_list(row: dict[str, Any], field: str) -> list[Any]:
    values = row.get(field)
    if values is None or (isinstance(values, (str, list)) and not values):
        raise BadRow("empty_response", field, "is empty")
    if not isinstance(values, list):
        raise BadRow("wrong_type", field, f"must be a list of responses, got {str(values)[:40]}")
    return values


def _split_shared_turns(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """TRL's implicit prompt: the opening turns two conversations share, then what follows in each."""
    _content(chosen, "chosen")
    _content(rejected, "rejected")
    cut = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    if cut == 0:
        raise BadRow("empty_prompt", PROMPT, "is missing and 'chosen' and 'rejected' share no opening turn to use")
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if cut == len(turns):
            raise BadRow("empty_response", name, "has no turn after the prompt it shares with the other response")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def _from_pairs(row: dict[str, Any]) -> dict[str, Any]:
    prompt, chosen, rejected = row.get(PROMPT), row.get("chosen"), row.get("rejected")
    if isinstance(chosen, list) and isinstance(rejected, list) and not isinstance(prompt, list):
        prompt, chosen, rejected = _split_shared_turns(chosen, rejected)
    labels: dict[str, list] = {RANKS: [0, 1]}
    if row.get("score_chosen") is not None and row.get("score_rejected") is not None:
        labels[SCORES] = [_score(row["score_chosen"], "score_chosen"), _score(row["score_rejected"], "score_rejected")]
    margins = [(row.get(f"{name}_margin_rewards"), f"{name}_margin_rewards") for name in ("chosen", "rejected")]
    given = [field for values, field in margins if values is not None]
    if len(given) == 1:
        other = next(field for _, field in margins if field not in given)
        raise BadRow("bad_label", other, f"is empty while {given[0]!r} is set; give both or neither")
    if given:
        labels[MARGIN_REWARDS] = _margin_rewards(margins)
    return _group(prompt, [chosen, rejected], ["chosen", "rejected"], labels)


def _from_ranked(row: dict[str, Any]) -> dict[str, Any]:
    field = "responses" if "responses" in row else "completions"
    responses = _candidate_list(row, field)
    labels = {**rank_labels(row, len(responses), field), **_margin_column(row, len(responses), field)}
    return _group(row.get(PROMPT), responses, [f"{field}[{i}]" for i in range(len(responses))], labels)


def _from_unpaired(row: dict[str, Any]) -> dict[str, Any]:
    label = row.get("label")
    if not isinstance(label, bool):
        raise BadRow("bad_label", "label", f"must be true or false, got {label!r}")
    return _group(row.get(PROMPT), [row.get("completion")], ["completion"], {DESIRABLE: [label]})


def group_labels(row: dict[str, Any], count: int) -> dict[str, list]:
    """The labels of an own-schema row with ``count`` candidates: ranks and/or scores, or one desirable flag."""
    if row.get(DESIRABLE) is None:
        if row.get(RANKS) is None and row.get(SCORES) is None:
            raise BadRow("bad_label", RANKS, "is empty and so are 'scores' and 'desirable'")
        return rank_labels(row, count, CANDIDATES)
    if row.get(RANKS) is not None or row.get(SCORES) is not None:
        raise BadRow("bad_label", DESIRABLE, "is set beside 'ranks' or 'scores'; keep one label kind")
    desirable = _check_list(row[DESIRABLE], 1, DESIRABLE, "candidate (unpaired groups have one)")
    if count != 1:
        raise BadRow("length_mismatch", CANDIDATES, f"has {count} entries; unpaired groups have one")
    if not isinstance(desirable[0], bool):
        raise BadRow("bad_label", DESIRABLE, f"must hold true or false, got {desirable[0]!r}")
    return {DESIRABLE: desirable}


def _from_groups(row: dict[str, Any]) -> dict[str, Any]:
    candidates = _candidate_list(row, CANDIDATES)
    fields = [f"{CANDIDATES}[{i}]" for i in range(len(candidates))]
    labels = group_labels(row, len(candidates))
    if DESIRABLE in labels and row.get(MARGIN_REWARDS) is not None:
        raise BadRow("bad_label", MARGIN_REWARDS, "is set beside 'desirable'; margin rewards go with ranks or scores")
    return _group(row.get(PROMPT), candidates, fields, {**labels, **_margin_column(row, len(candidates), CANDIDATES)})


def _step(value: Any, field: str) -> str:
    if value is None or value == "":
        raise BadRow("empty_response", field, "is empty")
    if not isinstance(value, str):
        raise BadRow("wrong_type", field, f"must be the text of a step, got {str(value)[:40]}")
    return value


def _step_list(row: dict[str, Any], field: str) -> list[str]:
    return [_step(step, f"{field}[{i}]") for i, step in enumerate(_candidate_list(row, field))]


def _step_pair(prompt: Any, prefix: str, chosen: list[str], rejected: list[str]) -> dict[str, Any]:
    """A K = 2 step group: the prompt (text or messages), the shared correct steps, each candidate's steps."""
    _content(prompt, PROMPT)
    steps = [chosen, rejected]
    return {PROMPT: prompt, PREFIX: prefix, CANDIDATES: ["".join(s) for s in steps], STEPS: steps, RANKS: [0, 1]}


def _from_step_dpo(row: dict[str, Any]) -> dict[str, Any]:
    field = "initial_reason_steps" if "initial_reason_steps" in row else PREFIX
    prefix = row.get(field) or ""
    if not isinstance(prefix, str):
        raise BadRow("wrong_type", field, f"must be the text of the correct steps so far, got {str(prefix)[:40]}")
    return _step_pair(
        row.get(PROMPT), prefix, [_step(row.get("chosen"), "chosen")], [_step(row.get("rejected"), "rejected")]
    )


def _from_steps(row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = _step_list(row, "chosen_steps"), _step_list(row, "rejected_steps")
    parting = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
    first = row.get("first_error")
    if first is not None:
        if isinstance(first, bool) or not isinstance(first, int) or first < 0:
            raise BadRow("bad_label", "first_error", f"must be a step index >= 0, got {first!r}")
        if first != parting:
            raise BadRow(
                "bad_label",
                "first_error",
                f"is {first} but 'chosen_steps' and 'rejected_steps' part at step {parting} (the steps before the "
                "first error are the same in both, the erroneous one differs)",
            )
    for name, steps in (("chosen_steps", chosen), ("rejected_steps", rejected)):
        if parting == len(steps):
            raise BadRow("empty_response", name, "has no step after the steps it shares with the other solution")
    return _step_pair(row.get(PROMPT), "".join(chosen[:parting]), chosen[parting:], rejected[parting:])


CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "groups": _from_groups,
    "step_dpo": _from_step_dpo,
    "steps": _from_steps,
    "pairs": _from_pairs,
    "ranked": _from_ranked,
    "unpaired": _from_unpaired,
}


def label_of(group: dict[str, Any]) -> str:
    """The label kind of a group: ``ranks`` (even with scores beside them), ``scores`` or ``desirable``."""
    return next(name for name in (RANKS, SCORES, DESIRABLE) if group.get(name) is not None)


# --- ties and pair expansion -----------------------------------------------------------------------


def is_full_tie(group: dict[str, Any]) -> bool:
    """True when every candidate shares one rank (or score), so the group prefers nothing."""
    key = group.get(RANKS) if group.get(RANKS) is not None else group.get(SCORES)
    return key is not None and len(set(key)) == 1


def expand_pairs(group: dict[str, Any], mode: PairMode) -> list[tuple[int, int]]:
    """(better, worse) candidate indices of a ranked group (by ``ranks``, else ``scores``), for Curry-DPO style
    multi-pair training: :func:`mmdpo.objectives.pairs.ranked_pairs`, the rule ``curry_dpo`` pairs by.

    ``all``: every pair of different ranks; ``best_vs_rest``: each best candidate against each worse one;
    ``adjacent``: each candidate against each one a rank level below; ``best_vs_worst``: each best against each
    worst. Tied candidates are never paired with each other, and ties at a level all take part. Pairs come in
    order of the better level, then the worse level, then candidate position.
    """
    key = group[RANKS] if group.get(RANKS) is not None else [-s for s in group[SCORES]]
    return ranked_pairs(torch.tensor(key), mode, "data.pairs")


def pair_group(group: dict[str, Any], better: int, worse: int) -> dict[str, Any]:
    pair = {PROMPT: group[PROMPT], CANDIDATES: [group[CANDIDATES][better], group[CANDIDATES][worse]], RANKS: [0, 1]}
    for name in (SCORES, MARGIN_REWARDS):
        if group.get(name) is not None:
            pair[name] = [group[name][better], group[name][worse]]
    return pair


def expand_groups(
    groups: list[dict[str, Any]], sources: list[int], mode: PairMode, name: str, skipped: Counter
) -> tuple[list[dict[str, Any]], list[int]]:
    """Each ranked group as its K = 2 pairs (:func:`expand_pairs`), each with its source row; a group with no pair
    to give (a full tie kept by ``ties=keep``) is counted under ``skipped["tie"]``."""
    if label_of(groups[0]) == DESIRABLE:
        raise ValueError(f"data.pairs={mode} needs ranked or scored groups, but {name} is unpaired.")
    expanded, expanded_sources = [], []
    for group, source in zip(groups, sources):
        produced = [pair_group(group, i, j) for i, j in expand_pairs(group, mode)]
        if not produced:
            skipped["tie"] += 1
        expanded += produced
        expanded_sources += [source] * len(produced)
    return expanded, expanded_sources


# --- the entry point -------------------------------------------------------------------------------


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is unknown; use one of {', '.join(choices)}.")


def _check_consistent(first: dict[str, Any], group: dict[str, Any], row: str) -> None:
    """One dataset, one kind of content and one kind of label."""
    conversational = isinstance(group[PROMPT], list)
    if conversational != isinstance(first[PROMPT], list):
        raise ValueError(
            f"{row} is {_kind(conversational)} but earlier rows are {_kind(not conversational)}; "
            "a dataset must be all plain text or all conversations, so split it in two."
        )
    if label_of(group) != label_of(first):
        raise ValueError(
            f"{row} is labelled by {label_of(group)!r} but earlier rows by {label_of(first)!r}; "
            "label every row the same way."
        )
    margins, earlier = group.get(MARGIN_REWARDS), first.get(MARGIN_REWARDS)
    if (margins is None) != (earlier is None):
        has, had = ("has no", "do") if margins is None else ("has", "do not")
        raise ValueError(f"{row} {has} margin_rewards but earlier rows {had}; give them to every row or to none.")
    if margins is not None and len(margins[0]) != len(earlier[0]):
        raise ValueError(
            f"{row} has {len(margins[0])} margin rewards per candidate but earlier rows have {len(earlier[0])}; "
            "give every row the same M."
        )


def _to_dataset(groups: list[dict[str, Any]], columns: list[str]) -> Dataset:
    data = {name: [group[name] for group in groups] for name in columns}
    try:
        return Dataset.from_dict(data)
    except pa.ArrowException:  # messages Arrow cannot unify (text content in one turn, content parts in another)
        types = {
            PROMPT: Json(),
            CANDIDATES: List(Json()),
            RANKS: List(Value("int64")),
            SCORES: List(Value("float64")),
            DESIRABLE: List(Value("bool")),
            MARGIN_REWARDS: List(List(Value("float64"))),
            PREFIX: Value("string"),
            STEPS: List(List(Value("string"))),
        }
        return Dataset.from_dict(data, features=Features({name: types[name] for name in columns}))


def convert_rows(
    rows: Iterable[dict[str, Any]],
    convert: Callable[[dict[str, Any]], dict[str, Any]],
    name: str,
    *,
    ties: Ties,
    bad_rows: BadRows,
) -> tuple[list[dict[str, Any]], list[int], Counter]:
    """Each row as a group by ``convert``, all of one label kind: a bad row fails naming it or is skipped and
    counted, a full tie is dropped with ``ties=drop``. Returns the groups, each one's row index, and the skips."""
    groups: list[dict[str, Any]] = []
    sources: list[int] = []
    skipped: Counter = Counter()
    for index, row in enumerate(rows):
        where = f"Row {index} of {name}"
        try:
            group = convert(row)
        except MixedKinds as err:
            raise ValueError(f"{where}: {err}; a dataset must be all plain text or all conversations.") from None
        except BadRow as err:
            if bad_rows == "error":
                raise ValueError(f"{where}: {err}; fix the row or set data.bad_rows=skip to drop such rows.") from None
            skipped[err.reason] += 1
            continue
        if groups:
            _check_consistent(groups[0], group, where)
        if ties == "drop" and is_full_tie(group):
            skipped["tie"] += 1
            continue
        groups.append(group)
        sources.append(index)
    return groups, sources, skipped


def load_groups(
    path: str | Path | Dataset | DatasetDict,
    *,
    format: str = "auto",
    split: str = "train",
    ties: Ties = "drop",
    bad_rows: BadRows = "error",
    pairs: Pairing = "none",
    name: str | None = None,
) -> GroupSet:
    """Read ``path`` and convert it to preference groups.

    Args:
        path: a file, a directory or an in-memory dataset (see the module docstring).
        format: ``auto`` (from the columns) or one of ``pairs``, ``ranked``, ``unpaired``, ``groups``.
        split: the split of a saved ``DatasetDict`` or of a directory whose file names name splits.
        ties: ``drop`` removes ranked or scored groups whose candidates all tie (a tied pair included) and counts
            them under ``skipped["tie"]``; ``keep`` keeps them (pair expansion still cannot pair tied candidates).
        bad_rows: ``error`` stops at the first unusable row, naming it and the field; ``skip`` drops such rows and
            counts them by reason. Mixed plain/conversational data and mixed label kinds are always errors.
        pairs: ``none``, or expand each ranked group into K = 2 pairs (``all``, ``best_vs_rest``, ``adjacent``,
            ``best_vs_worst``; see :func:`expand_pairs`), each with ranks [0, 1], its two scores when the group has
            scores, and ``group_id``: the source row (or the source's own ``group_id``).
        name: what messages call the source (by default the path, or "the in-memory dataset").
    """
    check_choice("data.format", format, ("auto", *CONVERTERS))
    check_choice("data.ties", ties, ("drop", "keep"))
    check_choice("data.bad_rows", bad_rows, ("error", "skip"))
    check_choice("data.pairs", pairs, PAIRINGS)
    table = read_table(path, split)
    format = detect_format(table.column_names) if format == "auto" else format
    check_columns(table, format)
    name = name or ("the in-memory dataset" if isinstance(path, (Dataset, DatasetDict)) else str(path))

    passthrough = [c for c in PASSTHROUGH if c in table.column_names]
    rows = table.remove_columns(passthrough)
    groups, sources, skipped = convert_rows(rows, CONVERTERS[format], name, ties=ties, bad_rows=bad_rows)

    if pairs != "none" and groups:
        if STEPS in groups[0]:
            raise ValueError(
                f"data.pairs={pairs} expands ranked lists, but {name} holds step pairs; set data.pairs=none."
            )
        groups, sources = expand_groups(groups, sources, pairs, name, skipped)
    if not groups:
        raise ValueError(
            f"No usable groups in {name}: {len(table)} rows read, skipped {dict(skipped) or 'none'}; "
            "check the data, data.ties and data.bad_rows."
        )

    label = label_of(groups[0])
    columns = [PROMPT, CANDIDATES, label]
    if label == RANKS and all(group.get(SCORES) is not None for group in groups):
        columns.append(SCORES)
    if MARGIN_REWARDS in groups[0]:
        columns.append(MARGIN_REWARDS)
    if STEPS in groups[0]:
        columns += [PREFIX, STEPS]
    dataset = _to_dataset(groups, columns)
    if passthrough:
        dataset = concatenate_datasets([dataset, table.select_columns(passthrough).select(sources)], axis=1)
    if pairs != "none" and GROUP_ID not in passthrough:
        dataset = dataset.add_column(GROUP_ID, sources)
    conversational = isinstance(groups[0][PROMPT], list)
    return GroupSet(dataset, format, conversational, label, {k: v for k, v in skipped.items() if v})


def train_eval_split(groups: GroupSet, eval_fraction: float, seed: int) -> tuple[GroupSet, GroupSet | None]:
    """A seeded (train, eval) split of the groups; pairs expanded from one group (one ``group_id``) stay together.

    Eval takes ``round(eval_fraction * n)`` of the n source groups (at least one); rows keep their order on each
    side. ``eval_fraction == 0`` gives no eval set. ``skipped`` stays with the train side so it is counted once.
    """
    if not 0 <= eval_fraction < 1:
        raise ValueError(f"data.eval_fraction={eval_fraction} must lie in [0, 1).")
    if eval_fraction == 0:
        return groups, None
    data = groups.dataset
    keys = list(data[GROUP_ID]) if GROUP_ID in data.column_names else list(range(len(data)))
    unique = sorted(set(keys))
    n_eval = max(1, round(eval_fraction * len(unique)))
    if n_eval >= len(unique):
        raise ValueError(
            f"data.eval_fraction={eval_fraction} of {len(unique)} groups leaves none to train on; lower it."
        )
    held = set(random.Random(seed).sample(unique, n_eval))
    train = [i for i, key in enumerate(keys) if key not in held]
    evaluation = [i for i, key in enumerate(keys) if key in held]
    return (
        replace(groups, dataset=data.select(train)),
        replace(groups, dataset=data.select(evaluation), skipped={}),
    )
