"""Normalisation, aggregation, ranks and pairs on hand-made score tables, and ensembles of pixel rewards."""

import itertools

import pytest
import torch
from reward_images import solid

from mmdpo.rewards import Brightness, CallableReward, ColourMatch, Ensemble, RankedGroups
from mmdpo.rewards.ensemble import aggregate, dense_ranks, normalise, pairs, win_counts

# One prompt, three candidates, two rewards: reward 0 says 0 > 2 > 1; reward 1 ties 0 and 1 below 2.
TABLE = torch.tensor([[[3.0, 1.0], [1.0, 1.0], [2.0, 5.0]]])
# Reward 0: c0 beats 2 -> 2, c1 -> 0, c2 -> 1. Reward 1: c0 and c1 tie (0.5 each), c2 beats both -> 2.
TABLE_WINS = torch.tensor([[[2.0, 0.5], [0.0, 0.5], [1.0, 2.0]]])
TABLE_PHI = torch.tensor([[2.5, 0.5, 3.0]]) / (2 * 2)  # C_i / (R (K - 1))


def brute_force_phi(scores: torch.Tensor) -> torch.Tensor:
    """RankDPO's phi_i = C_i / (R (K - 1)) by explicit loops, a tie counting half."""
    p, k, r = scores.shape
    phi = torch.zeros(p, k, dtype=torch.float64)
    for g, i, j, m in itertools.product(range(p), range(k), range(k), range(r)):
        if i != j:
            a, b = scores[g, i, m], scores[g, j, m]
            phi[g, i] += 1.0 if a > b else 0.5 if a == b else 0.0
    return phi / (r * (k - 1))


def test_win_counts_and_borda_phi_of_a_hand_made_table():
    torch.testing.assert_close(win_counts(TABLE), TABLE_WINS)
    torch.testing.assert_close(aggregate(TABLE, "borda"), TABLE_PHI)
    torch.testing.assert_close(normalise(TABLE, "rank"), TABLE_WINS / 2)
    assert dense_ranks(aggregate(TABLE, "borda")).tolist() == [[1, 2, 0]]


def test_borda_matches_the_brute_force_count_on_random_tables_with_ties():
    scores = torch.randint(0, 4, (5, 6, 3)).double()  # few distinct values: many ties
    torch.testing.assert_close(aggregate(scores, "borda"), brute_force_phi(scores))
    # Borda is the mean over rewards of the rank normalisation.
    torch.testing.assert_close(aggregate(scores, "borda"), normalise(scores, "rank").mean(-1))


def test_a_condorcet_cycle_ties_exactly():
    cycle = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [2.0, 1.0, 3.0]]).T[None]  # [1, K=3, R=3]
    phi = aggregate(cycle, "borda")
    assert phi.tolist() == [[0.5, 0.5, 0.5]]
    assert dense_ranks(phi).tolist() == [[0, 0, 0]] and pairs(dense_ranks(phi), "all") == [[]]


def test_weighted_borda_and_means():
    torch.testing.assert_close(aggregate(TABLE, "borda", [3, 1]), ((TABLE_WINS * torch.tensor([3, 1])).sum(-1)) / 8)
    torch.testing.assert_close(aggregate(TABLE, "mean"), torch.tensor([[2.0, 1.0, 3.5]]))
    torch.testing.assert_close(aggregate(TABLE, "mean", [1, 0]), torch.tensor([[3.0, 1.0, 2.0]]))


def test_zscores_use_the_population_std_and_ignore_constant_rewards():
    # In float64 the mean of three 0.1s is 0.1 + 1.4e-17: centring alone leaves a rounding error to divide.
    scores = torch.tensor([[[1.0, 0.1], [3.0, 0.1], [5.0, 0.1]]], dtype=torch.float64)
    z = normalise(scores, "zscore")
    std = (8 / 3) ** 0.5
    torch.testing.assert_close(z[..., 0], torch.tensor([[-2 / std, 0.0, 2 / std]], dtype=torch.float64))
    assert z[..., 1].tolist() == [[0.0, 0.0, 0.0]]
    torch.testing.assert_close(aggregate(scores, "zscore"), z[..., 0] / 2)
    pair = torch.tensor([[[10.0], [-4.0]]])
    assert normalise(pair, "zscore").flatten().tolist() == [1.0, -1.0]


def test_dense_ranks_share_ranks_on_ties_and_leave_no_gaps():
    values = torch.tensor([[0.5, 0.9, 0.5, 0.1], [1.0, 1.0, 1.0, 1.0]])
    assert dense_ranks(values).tolist() == [[1, 0, 1, 2], [0, 0, 0, 0]]


def test_pairs_reuse_the_loaders_expansion():
    ranks = torch.tensor([[1, 0, 1, 2]])
    assert pairs(ranks, "best_vs_worst") == [[(1, 3)]]
    assert pairs(ranks, "adjacent") == [[(1, 0), (1, 2), (0, 3), (2, 3)]]
    assert pairs(ranks, "best_vs_rest") == [[(1, 0), (1, 2), (1, 3)]]
    assert pairs(ranks, "all") == [[(1, 0), (1, 2), (1, 3), (0, 3), (2, 3)]]
    with pytest.raises(ValueError, match="Pair mode 'none' is unknown; use one of all, best_vs_rest"):
        pairs(ranks, "none")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: aggregate(TABLE, "median"), "Aggregation 'median' is unknown; use one of borda, zscore, mean"),
        (lambda: aggregate(TABLE, "borda", [1.0]), "weights must be 2 non-negative numbers"),
        (lambda: aggregate(TABLE, "borda", [-1.0, 2.0]), "weights must be 2 non-negative numbers"),
        (lambda: aggregate(TABLE[0], "borda"), r"must be \[prompts, candidates, rewards\]"),
        (lambda: aggregate(TABLE[:, :1], "borda"), "needs at least 2 candidates"),
        (lambda: aggregate(torch.full((1, 2, 1), float("nan"))), "NaN or infinite"),
        (lambda: normalise(TABLE, "minmax"), "Normalisation 'minmax' is unknown"),
    ],
)
def test_bad_tables_and_options_fail_with_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_ranked_groups_keep_the_raw_scores_and_reaggregate():
    ranked = RankedGroups.from_raw(TABLE, ["a", "b"], "borda")
    assert ranked.ranks.tolist() == [[1, 2, 0]] and ranked.scores.dtype == torch.float32
    by_a = ranked.reaggregate("mean", weights=[1, 0])
    assert torch.equal(by_a.raw, TABLE) and by_a.ranks.tolist() == [[0, 2, 1]] and by_a.weights == [1.0, 0.0]
    assert by_a.pairs("best_vs_worst") == [[(0, 1)]]
    with pytest.raises(ValueError, match="do not fit 3 reward names"):
        RankedGroups.from_raw(TABLE, ["a", "b", "c"])


def test_an_ensemble_of_pixel_rewards_ranks_candidates_per_prompt():
    dark_red, red, blue, white = solid((120, 0, 0)), solid((255, 0, 0)), solid((0, 0, 255)), solid((255, 255, 255))
    ensemble = Ensemble(["brightness", ColourMatch()], aggregation="borda")
    ranked = ensemble(["a red ball", "a blue sky"], [[dark_red, red, blue, white], [dark_red, red, blue, white]])
    assert ranked.names == ["brightness", "colour_match"] and ranked.raw.shape == (2, 4, 2)
    torch.testing.assert_close(ranked.raw[0, :, 0], Brightness()("", [dark_red, red, blue, white]))
    # Brightness: white > red > dark red > blue. Colour match "red": red > dark red > blue = white (both sqrt(2) off).
    # Wins (brightness + match): dark red 1 + 2, red 2 + 3, blue 0 + 0.5, white 3 + 0.5; phi = wins / (2 * 3).
    torch.testing.assert_close(ranked.scores[0], torch.tensor([3.0, 5.0, 0.5, 3.5]) / 6)
    assert ranked.ranks[0].tolist() == [2, 0, 3, 1]
    # "blue": match ranks blue first, then dark red (closer to blue than red and white are); brightness as before.
    assert ranked.raw[1, :, 1].argmax().item() == 2
    assert torch.equal(ranked.raw[:, :, 0], ranked.raw[[1, 0], :, 0])  # brightness ignores the prompt


def test_an_ensemble_scores_every_reward_once_across_prompts(images):
    calls = []

    def count(prompts, items):
        calls.append(len(items))
        return [float(i) for i in range(len(items))]

    ensemble = Ensemble([CallableReward(count, "count", batch_size=64)], aggregation="mean")
    ranked = ensemble(["p", "q"], [images, torch.stack([torch.zeros(3, 8, 8)] * 3)])
    assert calls == [6] and ranked.raw[..., 0].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


def test_ensemble_options_are_checked_early(images):
    with pytest.raises(ValueError, match="distinct names"):
        Ensemble([Brightness(), Brightness()])
    with pytest.raises(ValueError, match="Aggregation 'vote' is unknown"):
        Ensemble([Brightness()], aggregation="vote")
    with pytest.raises(ValueError, match="Got 1 weights for 2 rewards"):
        Ensemble([Brightness(), ColourMatch()], weights=[1.0])
    ensemble = Ensemble([Brightness()])
    with pytest.raises(ValueError, match="same number of candidates; got sizes"):
        ensemble(["p", "q"], [images, images[:2]])
    with pytest.raises(ValueError, match="Got 1 prompts for 2 candidate groups"):
        ensemble(["p"], [images, images])
