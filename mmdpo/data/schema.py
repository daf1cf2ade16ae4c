"""The preference-group schema every loader produces and every adapter consumes.

A row is one condition with K candidates and one kind of label:

- ``prompt``: str, or a list of chat messages ``[{"role": ..., "content": ...}]`` (conversational);
- ``candidates``: K responses, each a str (plain) or a list of messages (the turns after the prompt);
- one label column: ``ranks`` (list[int], 0 = best, ties share a rank), ``scores`` (list[float],
  higher is better) or ``desirable`` (list[bool], unpaired, K = 1);
- optional ``images`` (VLMs), ``id`` and ``group_id`` (the source group of an expanded pair).

A dataset is all plain or all conversational.
"""

PROMPT = "prompt"
CANDIDATES = "candidates"
LABELS = ("ranks", "scores", "desirable")
