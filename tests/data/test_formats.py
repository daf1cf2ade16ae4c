"""Each public format, plain and conversational, converts to the group schema."""

import pytest
from datasets import Dataset

from mmdpo.data.loaders import load_groups


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def test_conversational_pairs_with_an_explicit_prompt():
    rows = [{"prompt": [user("hi")], "chosen": [assistant("hello!")], "rejected": [assistant("go away")]}]
    groups = load_groups(Dataset.from_list(rows))
    assert (groups.format, groups.conversational, groups.label) == ("pairs", True, "ranks")
    assert groups.dataset[0] == {
        "prompt": [user("hi")],
        "candidates": [[assistant("hello!")], [assistant("go away")]],
        "ranks": [0, 1],
    }


def test_implicit_prompt_is_the_shared_opening_turns():
    shared = [user("hi"), assistant("hello"), user("tell me a joke")]
    rows = [
        {
            "chosen": shared + [assistant("why did the chicken...")],
            "rejected": shared + [assistant("no"), user("please"), assistant("no")],
        }
    ]
    groups = load_groups(Dataset.from_list(rows))
    assert groups.format == "pairs" and groups.conversational
    assert groups.dataset[0]["prompt"] == shared
    assert groups.dataset[0]["candidates"] == [
        [assistant("why did the chicken...")],
        [assistant("no"), user("please"), assistant("no")],
    ]


def test_a_text_prompt_beside_full_conversations_is_ignored_like_trl_does():
    # HuggingFaceH4/ultrafeedback_binarized: prompt is text, chosen/rejected repeat it as the user turn.
    rows = [
        {
            "prompt": "hi",
            "chosen": [user("hi"), assistant("hello!")],
            "rejected": [user("hi"), assistant("go away")],
            "score_chosen": 8,
            "score_rejected": 3.5,
        }
    ]
    groups = load_groups(Dataset.from_list(rows))
    assert groups.label == "ranks"
    assert groups.dataset[0] == {
        "prompt": [user("hi")],
        "candidates": [[assistant("hello!")], [assistant("go away")]],
        "ranks": [0, 1],
        "scores": [8.0, 3.5],
    }


@pytest.mark.parametrize("responses", ["responses", "completions"])
def test_ranked_lists_by_ranks(responses):
    rows = [{"prompt": "p", responses: ["a", "b", "c"], "ranks": [2, 0, 1]}]
    groups = load_groups(Dataset.from_list(rows))
    assert (groups.format, groups.label) == ("ranked", "ranks")
    assert groups.dataset.to_dict() == {"prompt": ["p"], "candidates": [["a", "b", "c"]], "ranks": [[2, 0, 1]]}


def test_ranked_lists_by_scores_and_by_both():
    scored = load_groups(Dataset.from_list([{"prompt": "p", "responses": ["a", "b"], "scores": [1, 0.5]}]))
    assert scored.label == "scores"
    assert scored.dataset.to_dict() == {"prompt": ["p"], "candidates": [["a", "b"]], "scores": [[1.0, 0.5]]}
    both = load_groups(
        Dataset.from_list([{"prompt": "p", "responses": ["a", "b"], "ranks": [1, 0], "scores": [0.2, 0.7]}])
    )
    assert both.label == "ranks"
    assert both.dataset[0] == {"prompt": "p", "candidates": ["a", "b"], "ranks": [1, 0], "scores": [0.2, 0.7]}


def test_conversational_ranked_lists():
    rows = [
        {
            "prompt": [user("q")],
            "responses": [[assistant("a")], [assistant("b")], [assistant("c")]],
            "scores": [0.1, 0.3, 0.2],
        }
    ]
    groups = load_groups(Dataset.from_list(rows))
    assert groups.conversational and groups.label == "scores"
    assert groups.dataset[0]["candidates"] == [[assistant("a")], [assistant("b")], [assistant("c")]]


def test_unpaired_rows_plain_and_conversational():
    plain = load_groups(
        Dataset.from_list(
            [{"prompt": "p", "completion": "good", "label": True}, {"prompt": "q", "completion": "bad", "label": False}]
        )
    )
    assert (plain.format, plain.label, plain.conversational) == ("unpaired", "desirable", False)
    assert plain.dataset.to_dict() == {
        "prompt": ["p", "q"],
        "candidates": [["good"], ["bad"]],
        "desirable": [[True], [False]],
    }
    chat = load_groups(Dataset.from_list([{"prompt": [user("p")], "completion": [assistant("good")], "label": True}]))
    assert chat.conversational
    assert chat.dataset[0] == {"prompt": [user("p")], "candidates": [[assistant("good")]], "desirable": [True]}


def test_our_own_groups_round_trip(tmp_path):
    rows = [{"prompt": "p", "responses": ["a", "b", "c", "d"], "scores": [0.4, 0.1, 0.9, 0.3]}]
    pairs = load_groups(Dataset.from_list(rows), pairs="adjacent")
    pairs.dataset.save_to_disk(tmp_path / "pairs")
    again = load_groups(tmp_path / "pairs")
    assert (again.format, again.label) == ("groups", "ranks")
    assert again.dataset.to_dict() == pairs.dataset.to_dict()
    assert again.dataset["group_id"] == [0, 0, 0]
    unpaired = [{"prompt": "p", "candidates": ["x"], "desirable": [False], "ranks": None, "scores": None}]
    assert load_groups(Dataset.from_list(unpaired)).dataset.to_dict() == {
        "prompt": ["p"],
        "candidates": [["x"]],
        "desirable": [[False]],
    }


def test_format_can_be_forced_over_detection():
    rows = [{"prompt": "p", "chosen": "c", "rejected": "r", "completion": "c", "label": True}]
    assert load_groups(Dataset.from_list(rows)).format == "pairs"
    forced = load_groups(Dataset.from_list(rows), format="unpaired")
    assert forced.format == "unpaired"
    assert forced.dataset[0] == {"prompt": "p", "candidates": ["c"], "desirable": [True]}
