"""Each objective's spec: what it reads from the data, checked against loaded datasets, and what it asks of adapters."""

import inspect

import pytest
from datasets import Dataset

from mmdpo.data.loaders import load_groups
from mmdpo.data.schema import provided_labels
from mmdpo.data.toy import toy_margin_pairs, toy_step_pairs
from mmdpo.objectives import OBJECTIVES, check_labels, get_objective

PAIRS = [{"prompt": "p", "chosen": "good", "rejected": "bad"}, {"prompt": "q", "chosen": "yes", "rejected": "no"}]
DATA = {
    "pairs": PAIRS,
    "scored": [{"prompt": "p", "responses": ["a", "b", "c"], "scores": [0.1, 0.9, 0.5]}],
    "unpaired": [{"prompt": "p", "completion": "c", "label": True}, {"prompt": "q", "completion": "d", "label": False}],
    "margins": toy_margin_pairs(4),
    "steps": toy_step_pairs(4),
}
PROVIDED = {
    "pairs": {"ranks"},
    "scored": {"scores"},
    "unpaired": {"desirable"},
    "margins": {"ranks", "margin_rewards"},
    "steps": {"ranks", "steps"},
}
# The kind of data each objective reads (pairs unless listed), a kind it cannot use, what the refusal says it needs
# and the start of the fix it gives.
RANKING = ("pairs", "unpaired", "a ranking (ranks, or scores to rank by)", "give ranks (0 = best) or scores")
SCORES = ("scored", "pairs", "scores (a reward value per candidate)", "add a scores column")
DESIRABLE = ("unpaired", None, "desirable labels (or a ranking, whose best candidates count", "give unpaired")
SPECIAL = {
    "madpo": SCORES,
    "smpo": SCORES,
    "modpo": ("margins", "pairs", "margin_rewards (the other objectives' rewards", "add a margin_rewards column"),
    "step_dpo": ("steps", "pairs", "step data (each candidate's reasoning steps", "give data in the step_dpo or steps"),
    "kto": DESIRABLE,
    "apo_zero_unpaired": DESIRABLE,
    "diffusion_kto": DESIRABLE,
}


def provided(kind):
    return provided_labels(load_groups(Dataset.from_list(list(DATA[kind]))).dataset)


@pytest.mark.parametrize("kind", sorted(DATA))
def test_loaded_datasets_provide_their_label_columns(kind):
    assert provided(kind) == PROVIDED[kind]


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_accepts_the_data_it_reads(name):
    fits = SPECIAL.get(name, RANKING)[0]
    check_labels(get_objective(name), provided(fits))
    if fits == "pairs":  # a ranking may come as scores too
        check_labels(get_objective(name), provided("scored"))


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_refuses_data_of_the_wrong_kind_naming_the_column(name):
    _, wrong, what, fix = SPECIAL.get(name, RANKING)
    labels = {"segment_labels"} if wrong is None else provided(wrong)  # every loaded set can serve the unpaired ones
    with pytest.raises(ValueError) as caught:
        check_labels(get_objective(name), labels)
    message = str(caught.value)
    assert message.startswith(f"objective.name={name} needs {what}")
    assert f"which data.path does not have; {fix}" in message
    assert message.endswith(".") and ". " not in message  # one sentence


def test_the_refusal_is_one_sentence_naming_the_objective_the_column_and_the_fix():
    with pytest.raises(ValueError) as caught:
        check_labels(get_objective("modpo"), {"ranks"})
    assert str(caught.value) == (
        "objective.name=modpo needs margin_rewards (the other objectives' rewards of each candidate), which "
        "data.path does not have; add a margin_rewards column (one list of M rewards per candidate; "
        "chosen_margin_rewards and rejected_margin_rewards for pairs)."
    )


def test_every_missing_label_is_named_at_once():
    with pytest.raises(ValueError, match="needs a ranking .* and margin_rewards .*; give ranks .*; add a margin"):
        check_labels(get_objective("modpo"), {"desirable"})


def test_labels_follow_the_hyperparameters():
    check_labels(get_objective("adpo"), {"ranks"})
    with pytest.raises(ValueError, match="objective.name=adpo needs scores"):
        check_labels(get_objective("adpo", target="soft"), {"ranks"})
    check_labels(get_objective("adpo", target="soft"), {"ranks", "scores"})


def test_extras_follow_the_hyperparameters():
    assert get_objective("apo_zero_unpaired", kl=True).extras == {"mismatched"}
    assert get_objective("kto", kl=False).extras == frozenset()
    assert get_objective("simpo", wpo=True).extras == {"wpo_logp"}
    assert get_objective("rpo").extras == frozenset() and get_objective("rpo").hparams == {"sft_weight": 1.0}


KNOWN_EXTRAS = set("wpo_logp mismatched token_kl mask mask_u mask_d layer_means guidance step_index".split())


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_presets_are_hyperparameters_and_extras_are_known_names(name):
    spec = OBJECTIVES[name]
    assert set(spec.presets) <= set(inspect.signature(spec.function).parameters)
    assert get_objective(name).extras <= KNOWN_EXTRAS
