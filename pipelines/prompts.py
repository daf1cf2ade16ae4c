"""Prompt lists for synthetic data: a text file (one prompt a line) or a table with a ``prompt`` or ``caption``
column, e.g. the Pick-a-Pic v2 captions that RankDPO's Syn-Pic uses (Karthik et al. 2024, arXiv 2410.18013)."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmdpo.data.loaders import read_table

PROMPT_COLUMNS = ("prompt", "caption")


@dataclass(frozen=True)
class Prompts:
    """The prompts of a run, in file order, and what was left out on the way (``blank``, ``repeated``,
    ``over_max_prompts``)."""

    texts: list[str]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def digest(self) -> str:
        """SHA-256 of the prompts, which a resumed run must match."""
        return hashlib.sha256("\n".join(self.texts).encode()).hexdigest()


def _read_texts(path: Path) -> list[str | None]:
    if path.is_file() and path.suffix.lower() == ".txt":
        return path.read_text(encoding="utf-8").splitlines()
    table = read_table(path)
    column = next((c for c in PROMPT_COLUMNS if c in table.column_names), None)
    if column is None:
        raise ValueError(
            f"prompts={str(path)!r} has columns {table.column_names} but no 'prompt' or 'caption'; rename one."
        )
    texts = table[column]
    if any(text is not None and not isinstance(text, str) for text in texts):
        raise ValueError(f"Column {column!r} of prompts={str(path)!r} holds non-text values; give one string a row.")
    return texts


def read_prompts(path: str | Path, *, max_prompts: int | None = None, unique: bool = True) -> Prompts:
    """The prompts of ``path``, stripped of surrounding whitespace; blank ones (and repeats, with ``unique``) are
    dropped and counted, then the first ``max_prompts`` kept."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"prompts={str(path)!r} does not exist; give a .txt file (one prompt a line) or a .jsonl, .json or "
            ".parquet file or directory with a 'prompt' or 'caption' column."
        )
    skipped = Counter()
    texts = []
    for text in _read_texts(path):
        text = (text or "").strip()
        if not text:
            skipped["blank"] += 1
        else:
            texts.append(text)
    if unique:
        kept = list(dict.fromkeys(texts))
        skipped["repeated"] += len(texts) - len(kept)
        texts = kept
    if max_prompts is not None and len(texts) > max_prompts:
        skipped["over_max_prompts"] += len(texts) - max_prompts
        texts = texts[:max_prompts]
    if not texts:
        raise ValueError(f"prompts={str(path)!r} holds no prompts (skipped: {dict(skipped)}); give a non-empty file.")
    return Prompts(texts, str(path), {reason: count for reason, count in skipped.items() if count})
