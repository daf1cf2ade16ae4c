"""One pairing rule for ranked lists: the tensor masks curry_dpo trains on and the pairs data.pairs expands into."""

import math

import pytest
import torch

from mmdpo.data.loaders import expand_pairs
from mmdpo.objectives import LogLik, Preferences, get_objective
from mmdpo.objectives.pairs import PAIR_MODES, dense_ranks, pair_mask, ranked_pairs


def softplus(x):
    return math.log1p(math.exp(x))


def test_dense_ranks_close_the_gaps_and_keep_ties():
    assert dense_ranks(torch.tensor([3, 0, 1, 1, 4])).tolist() == [2, 0, 1, 1, 3]
    assert dense_ranks(torch.tensor([[0, 2, 2, 5], [1, 1, 1, 1]])).tolist() == [[0, 1, 1, 2], [0, 0, 0, 0]]
    assert dense_ranks(-torch.tensor([0.2, 0.9, 0.5, 0.5])).tolist() == [2, 0, 1, 1]  # negated scores


# a best; b and c tie second; d last.
HAND = {
    "all": {(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)},
    "best_vs_rest": {(0, 1), (0, 2), (0, 3)},
    "adjacent": {(0, 1), (0, 2), (1, 3), (2, 3)},
    "best_vs_worst": {(0, 3)},
}


@pytest.mark.parametrize("mode", PAIR_MODES)
def test_pair_mask_of_a_hand_made_list_with_a_tie_and_a_gap(mode):
    mask = pair_mask(torch.tensor([[0, 1, 1, 3]]), mode)
    assert {tuple(p) for p in mask[0].nonzero().tolist()} == HAND[mode]


def test_full_ties_give_no_pairs():
    for mode in PAIR_MODES:
        assert ranked_pairs(torch.tensor([2, 2, 2]), mode) == []


def test_unknown_mode_names_the_option():
    pair = Preferences(ranks=torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="objective.pairs='pairwise' is unknown; use one of all, best_vs_rest"):
        get_objective("curry_dpo", pairs="pairwise")(LogLik(torch.zeros(1, 2)), LogLik(torch.zeros(1, 2)), pair)
    with pytest.raises(ValueError, match="data.pairs='ranked' is unknown"):
        expand_pairs({"ranks": [0, 1]}, "ranked")


def random_lists(seed, b=6, k=5):
    """Ranked lists with ties (ranks drawn from 0..2 for 5 candidates) and policy/reference totals."""
    g = torch.Generator().manual_seed(seed)
    ranks = torch.randint(0, 3, (b, k), generator=g)
    ranks[0] = 1  # one full tie
    return ranks, -torch.rand(b, k, generator=g) * 3, -torch.rand(b, k, generator=g) * 3


@pytest.mark.parametrize("mode", PAIR_MODES)
def test_curry_dpo_is_the_mean_dpo_over_the_pairs_the_loader_expands(mode):
    ranks, policy, reference = random_lists(0)
    out = get_objective("curry_dpo", beta=0.5, pairs=mode)(LogLik(policy), LogLik(reference), Preferences(ranks))
    r = policy - reference
    for b in range(len(ranks)):
        pairs = expand_pairs({"ranks": ranks[b].tolist()}, mode)
        expected = sum(softplus(-0.5 * (r[b, i] - r[b, j]).item()) for i, j in pairs) / max(len(pairs), 1)
        assert out.losses[b].item() == pytest.approx(expected, rel=1e-5, abs=1e-7)
    assert out.losses[0].item() == 0.0  # the full tie has no pair


@pytest.mark.parametrize("mode", PAIR_MODES)
def test_scores_pair_as_their_dense_ranks(mode):
    scores = [0.2, 0.9, 0.5, 0.5, 0.1]
    assert expand_pairs({"scores": scores}, mode) == expand_pairs({"ranks": [2, 0, 1, 1, 3]}, mode)
    mask = pair_mask(Preferences(scores=torch.tensor([scores])).ranking(), mode)
    assert {tuple(p) for p in mask[0].nonzero().tolist()} == set(expand_pairs({"scores": scores}, mode))


def test_curry_dpo_pairs_across_a_tie_with_adjacent_levels():
    # ranks 0, 1, 1, 3: levels 0, 1, 1, 2, so the last candidate is adjacent to both tied ones.
    policy = LogLik(torch.tensor([[1.0, 0.5, 0.0, -1.0]]))
    out = get_objective("curry_dpo", beta=1.0, pairs="adjacent")(
        policy, LogLik(torch.zeros(1, 4)), Preferences(ranks=torch.tensor([[0, 1, 1, 3]]))
    )
    expected = (softplus(-0.5) + softplus(-1.0) + softplus(-1.5) + softplus(-1.0)) / 4
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
