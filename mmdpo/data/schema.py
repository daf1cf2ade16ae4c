"""The preference-group schema every loader produces and every adapter consumes.

A ``datasets.Dataset`` whose rows are groups: one condition with K candidates and one kind of label.

- ``prompt``: str (plain) or a list of chat messages ``[{"role": ..., "content": ...}]`` (conversational);
- ``candidates``: K responses, each a str (plain) or a list of messages (the turns after the prompt);
- one label column: ``ranks`` (list[int], 0 = best, ties share a rank), ``scores`` (list[float], higher is
  better) or ``desirable`` (list[bool], unpaired, K = 1); the other label columns are absent or None. The one
  exception: ``scores`` may ride along with ``ranks`` (the reward values behind them, e.g. the two scores of an
  expanded pair); ranks then decide the order and the scores serve as margins;
- optional ``images`` (VLMs), ``id`` and ``group_id`` (the source group of a pair expanded from a ranked list);
- step data (step-level DPO) adds ``prefix``, the correct reasoning steps both candidates share (text that
  continues the prompt, possibly empty), and ``steps``: per candidate, its steps (texts) from the first one
  after the prefix on, whose concatenation is the candidate. The first step is where the rejected candidate
  first errs and the chosen one does not.

A dataset is all plain or all conversational.
"""

PROMPT = "prompt"
CANDIDATES = "candidates"
RANKS = "ranks"
SCORES = "scores"
DESIRABLE = "desirable"
LABELS = (RANKS, SCORES, DESIRABLE)
IMAGES = "images"
ID = "id"
GROUP_ID = "group_id"
PREFIX = "prefix"
STEPS = "steps"
PASSTHROUGH = (IMAGES, ID, GROUP_ID)
"""Columns copied unchanged from the source rows (images are never decoded on the way)."""
