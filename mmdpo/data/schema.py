"""The preference-group schema every loader produces and every adapter consumes.

A ``datasets.Dataset`` whose rows are groups: one condition with K candidates and one kind of label.

- ``prompt``: str (plain) or a list of chat messages ``[{"role": ..., "content": ...}]`` (conversational);
- ``candidates``: K responses, each a str (plain) or a list of messages (the turns after the prompt);
- one label column: ``ranks`` (list[int], 0 = best, ties share a rank), ``scores`` (list[float], higher is
  better) or ``desirable`` (list[bool], unpaired, K = 1); the other label columns are absent or None. The one
  exception: ``scores`` may ride along with ``ranks`` (the reward values behind them, e.g. the two scores of an
  expanded pair); ranks then decide the order and the scores serve as margins;
- optional ``margin_rewards`` beside ranks or scores: per candidate, the rewards of M other objectives (MODPO's
  margins; list[list[float]], K lists of the same M >= 1 in every row);
- optional ``segment_labels``: per candidate, one label in {+1, -1, 0} per temporal segment (dense video
  preferences);
- optional ``images`` (VLMs), ``id`` and ``group_id`` (the source group of a pair expanded from a ranked list);
- step data (step-level DPO) adds ``prefix``, the correct reasoning steps both candidates share (text that
  continues the prompt, possibly empty), and ``steps``: per candidate, its steps (texts) from the first one
  after the prefix on, whose concatenation is the candidate. The first step is where the rejected candidate
  first errs and the chosen one does not.

A dataset is all plain or all conversational.

    prefs = preferences(rows)            # the label columns of a batch of rows as Preferences tensors
    provided_labels(dataset)             # frozenset({"ranks", "scores"}): what an objective may read
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from mmdpo.objectives import Preferences

if TYPE_CHECKING:
    from datasets import Dataset

# the condition and its candidates
PROMPT = "prompt"
CANDIDATES = "candidates"
IMAGES = "images"

# labels
RANKS = "ranks"
SCORES = "scores"
DESIRABLE = "desirable"
MARGIN_REWARDS = "margin_rewards"
SEGMENT_LABELS = "segment_labels"
LABEL_DTYPES: dict[str, torch.dtype] = {
    RANKS: torch.long,
    SCORES: torch.float32,
    DESIRABLE: torch.bool,
    MARGIN_REWARDS: torch.float32,
    SEGMENT_LABELS: torch.float32,
}
"""The label columns that become :class:`~mmdpo.objectives.Preferences` fields of the same name, with their dtypes."""

# step data
PREFIX = "prefix"
STEPS = "steps"

# bookkeeping
ID = "id"
GROUP_ID = "group_id"
PASSTHROUGH = (IMAGES, ID, GROUP_ID)
"""Columns copied unchanged from the source rows (images are never decoded on the way)."""


def preferences(rows: Sequence[dict[str, Any]]) -> Preferences:
    """The label columns of a batch of group rows as a :class:`~mmdpo.objectives.Preferences`; a column that is
    absent or None in the first row is left out."""
    return Preferences(
        **{
            name: torch.tensor([row[name] for row in rows], dtype=dtype)
            for name, dtype in LABEL_DTYPES.items()
            if rows[0].get(name) is not None
        }
    )


def provided_labels(dataset: Dataset) -> frozenset[str]:
    """The label columns (:data:`LABEL_DTYPES` and ``steps``) ``dataset`` carries with values, judged by its first
    row; an empty dataset provides none."""
    present = [name for name in (*LABEL_DTYPES, STEPS) if name in dataset.column_names]
    if not present or not len(dataset):
        return frozenset()
    first = dataset.select_columns(present)[0]
    return frozenset(name for name in present if first[name] is not None)
