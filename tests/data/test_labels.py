"""Group rows' label columns as Preferences tensors, and which label columns a dataset provides."""

import torch
from datasets import Dataset, Features, Image, List, Value

from mmdpo.data.schema import preferences, provided_labels


def test_preferences_from_ranked_rows_with_scores_and_margin_rewards():
    rows = [
        {"prompt": "p", "ranks": [0, 1], "scores": [0.5, 0.25], "margin_rewards": [[1, 2], [3, 4]], "desirable": None},
        {"prompt": "q", "ranks": [1, 0], "scores": [0.0, 1.0], "margin_rewards": [[5, 6], [7, 8]], "desirable": None},
    ]
    prefs = preferences(rows)
    assert torch.equal(prefs.ranks, torch.tensor([[0, 1], [1, 0]])) and prefs.ranks.dtype == torch.long
    assert torch.equal(prefs.scores, torch.tensor([[0.5, 0.25], [0.0, 1.0]])) and prefs.scores.dtype == torch.float32
    assert prefs.margin_rewards.shape == (2, 2, 2) and prefs.margin_rewards.dtype == torch.float32
    assert prefs.margin_rewards[1, 0].tolist() == [5.0, 6.0]
    assert prefs.desirable is None and prefs.segment_labels is None and prefs.weights is None


def test_preferences_from_unpaired_and_segment_rows():
    prefs = preferences([{"desirable": [True]}, {"desirable": [False]}])
    assert torch.equal(prefs.desirable, torch.tensor([[True], [False]])) and prefs.ranks is None
    segments = preferences([{"ranks": [0, 1], "segment_labels": [[1, 0, -1], [-1, -1, 0]]}])
    assert segments.segment_labels.dtype == torch.float32 and segments.segment_labels.shape == (1, 2, 3)


def test_provided_labels_reads_the_first_row_and_ignores_other_columns():
    data = Dataset.from_dict(
        {"prompt": ["p"], "candidates": [["a", "b"]], "ranks": [[0, 1]], "scores": [None], "input_ids": [[1, 2]]}
    )
    assert provided_labels(data) == {"ranks"}
    assert provided_labels(data.select([])) == frozenset()
    steps = Dataset.from_dict({"ranks": [[0, 1]], "steps": [[["a"], ["b"]]], "margin_rewards": [[[0.0], [1.0]]]})
    assert provided_labels(steps) == {"ranks", "steps", "margin_rewards"}


def test_provided_labels_never_decodes_media():
    features = Features({"images": List(Image()), "ranks": List(Value("int64"))})
    broken = Dataset.from_dict({"images": [[{"bytes": b"not an image", "path": None}]], "ranks": [[0, 1]]}, features)
    assert provided_labels(broken) == {"ranks"}
