"""Every objective against values computed by hand from its formula, plus the invariants all of them keep."""

import math
import statistics

import pytest
import torch

from mmdpo.objectives import OBJECTIVES, LogLik, Preferences, get_objective, hyperparameters
from mmdpo.objectives.pairwise import madpo_weight

REFERENCE_FREE = {name for name, spec in OBJECTIVES.items() if not spec.needs_reference}
TOKEN_LEVEL = {"tdpo", "sparsepo", "tgdpo", "step_dpo"}  # per-token extras; their values are in test_token.py


def softplus(x):
    return math.log1p(math.exp(x))


def logsig(x):
    return -softplus(-x)


def sig(x):
    return 1 / (1 + math.exp(-x))


def log_odds(avg):
    return avg - math.log(1 - math.exp(avg))


def lse(*xs):
    return math.log(sum(math.exp(x) for x in xs))


def madpo_w(h, c_max=2.0, c_min=0.5, lam=1.0, tau=2.0):
    c = c_min + (c_max - c_min) / (1 + (c_max - 1) / (1 - c_min) * math.exp(lam * (abs(h) - tau)))
    return sig(c * h) / sig(h) if h > -tau else 1.0


LAMBDA_K2 = 1 - 1 / math.log2(3)  # |1/log2(1+1) - 1/log2(1+2)|: LiPO's position factor for a pair

# One pair: policy totals -1 (chosen, 2 tokens) and -3 (rejected, 4 tokens); reference -2 and -2.5.
# So r_w = 1, r_l = -0.5, Delta = 1.5; averages -0.5 and -0.75; reward-model scores 0.9 and 0.2 (h = 0.7).
POLICY = LogLik(torch.tensor([[-1.0, -3.0]]), lengths=torch.tensor([[2, 4]]))
REFERENCE = LogLik(torch.tensor([[-2.0, -2.5]]))
PAIR = Preferences(ranks=torch.tensor([[0, 1]]), scores=torch.tensor([[0.9, 0.2]]))

HAND = [
    ("dpo", {"beta": 0.5}, softplus(-0.75)),
    ("cdpo", {"beta": 0.5, "label_smoothing": 0.1}, 0.9 * softplus(-0.75) + 0.1 * softplus(0.75)),
    ("rdpo", {"beta": 0.5, "label_smoothing": 0.1}, (0.9 * softplus(-0.75) - 0.1 * softplus(0.75)) / 0.8),
    ("ipo", {"beta": 0.5}, (1 / 2 + 0.5 / 4 - 1.0) ** 2),
    ("ipo_sum", {"beta": 0.5}, (1.5 - 1.0) ** 2),
    ("hinge", {"beta": 0.5}, 0.25),
    ("sigmoid_norm", {"beta": 0.5}, softplus(-0.5 * (0.5 + 0.125))),
    ("simpo", {"beta": 2.0, "gamma_beta_ratio": 0.1}, softplus(-2.0 * (0.25 - 0.1))),
    ("orpo", {"beta": 0.1}, 0.5 - 0.1 * logsig(log_odds(-0.5) - log_odds(-0.75))),
    (
        "exo",
        {"beta": 0.5, "label_smoothing": 0.1},
        sig(0.75) * (logsig(0.75) - math.log(0.9)) + sig(-0.75) * (logsig(-0.75) - math.log(0.1)),
    ),
    ("nca", {"beta": 0.5}, -logsig(0.5) - 0.5 * logsig(-0.5) - 0.5 * logsig(0.25)),
    ("bco", {"beta": 0.5}, -logsig(0.5) - logsig(0.25)),
    ("apo_zero", {"beta": 0.5}, 1 - sig(0.5) + sig(-0.25)),
    ("apo_down", {"beta": 0.5}, sig(0.5) + 1 - sig(0.75)),
    ("sppo_hard", {"beta": 0.5}, (1 - 1) ** 2 + (-0.5 + 1) ** 2),
    ("aot", {"beta": 0.5}, softplus(-0.5 * (2.0 - 0.5))),
    ("aot_unpaired", {"beta": 0.5}, softplus(-0.75)),
    ("discopop", {"beta": 0.5, "tau": 0.05}, (1 - sig(15)) * softplus(-0.75) + sig(15) * math.exp(-0.75)),
    ("triple_po", {"beta": 0.5, "alpha": 2.0}, softplus(-1.0) + 2.0 * 0.5),
    ("asft", {"beta": 0.1}, 0.5 - 0.1 * (logsig(log_odds(-0.5)) + logsig(-log_odds(-0.75)))),
    ("rpo", {"beta": 0.5}, softplus(-0.75) + 0.5),
    ("madpo", {"beta": 0.5}, madpo_w(0.7) * softplus(-0.75)),
    (
        "madpo",
        {"beta": 0.5, "c_max": 3.0, "c_min": 0.2, "lam": 2.0, "tau": 0.5},
        madpo_w(0.7, 3, 0.2, 2, 0.5) * softplus(-0.75),
    ),
    ("curry_dpo", {"beta": 0.5}, softplus(-0.75)),
    ("plackett_luce", {"beta": 0.5}, softplus(-0.75)),
    ("lipo_lambda", {"beta": 0.5}, (2**0.9 - 2**0.2) * LAMBDA_K2 * softplus(-0.75)),  # the scores are the labels
    ("rankdpo", {"beta": 0.5}, (2**0.9 - 2**0.2) * LAMBDA_K2 * softplus(-0.75)),
    ("rankdpo", {"beta": 0.5, "weighting": "gain"}, (2**0.9 - 2**0.2) * softplus(-0.75)),
    ("adpo", {"tau": 2.0}, softplus(-0.75)),
    ("kto", {"beta": 0.5}, 0.5 * ((1 - sig(0.5)) + (1 - sig(0.25)))),  # no mismatched values: z = 0
    ("apo_zero_unpaired", {"beta": 0.5}, 0.5 * ((1 - sig(0.5)) + sig(-0.25))),
    # EMA from zero: M0 = 0.1 * 1.5; beta_batch = 0.5 (1 + 0.6 (1.5 - 0.15))
    ("beta_dpo", {"beta": 0.5, "rho": 0.0}, softplus(-0.5 * (1 + 0.6 * (1.5 - 0.15)) * 1.5)),
    # soft label p = sig(0.9 - 0.2) from the scores in [0, 1]
    ("smpo", {"beta": 0.5, "gamma": 10.0, "score_min": 0.0, "score_max": 1.0}, softplus(-5 * (2 * sig(0.7) - 1) * 1.5)),
    # mse = -2 loglik = 2 and 6; f(e) = 0.5 e / (exp(0.5 e) - 1)
    ("mapo", {"beta": 0.1, "timesteps": 1}, 2 - 0.1 * logsig(1 / math.expm1(1) - 3 / math.expm1(3))),
    ("mapo", {"beta": 0.1}, 2 - 0.1 * logsig(1000 * (1 / math.expm1(1) - 3 / math.expm1(3)))),
    ("dro_hinge", {"margin": 4.0}, 4.0 - 2 * 1.5),
    ("dro_hinge", {}, 0.0),
    # z = max(0, mean(1, -0.5)) = 0.25 from the batch's own rewards
    ("diffusion_kto", {"beta": 0.5}, 1 - sig(0.5 * 0.75)),
]


@pytest.mark.parametrize(("name", "hparams", "expected"), HAND, ids=[f"{h[0]}-{i}" for i, h in enumerate(HAND)])
def test_hand_computed_value(name, hparams, expected):
    out = get_objective(name, **hparams)(POLICY, REFERENCE, PAIR)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_every_objective_has_a_hand_computed_value():
    assert {h[0] for h in HAND} | {"modpo"} | TOKEN_LEVEL == set(OBJECTIVES)  # token-level ones: test_token.py


def test_registry_defaults():
    assert REFERENCE_FREE == {"simpo", "orpo", "triple_po", "asft", "mapo"}
    assert hyperparameters("rpo")["sft_weight"] == 1.0 and hyperparameters("dpo")["sft_weight"] == 0.0
    assert hyperparameters("exo")["label_smoothing"] == 1e-3
    assert hyperparameters("discopop")["tau"] == 0.05
    assert (hyperparameters("triple_po")["beta"], hyperparameters("triple_po")["alpha"]) == (0.01, 1.0)
    assert {k: hyperparameters("beta_dpo")[k] for k in ("beta", "alpha", "rho", "momentum")} == {
        "beta": 0.1, "alpha": 0.6, "rho": 0.2, "momentum": 0.9,
    }  # fmt: skip
    assert hyperparameters("apo_zero_unpaired")["kl"] is False


def test_modpo_hand_computed():
    prefs = Preferences(ranks=torch.tensor([[0, 1]]), margin_rewards=torch.tensor([[[0.3, 1.0], [0.1, 2.0]]]))
    out = get_objective("modpo", beta=0.5, weights=(0.5, 0.25, 0.25))(POLICY, REFERENCE, prefs)
    margin = 0.25 * (0.3 - 0.1) + 0.25 * (1.0 - 2.0)
    assert out.loss.item() == pytest.approx(softplus(-(0.75 - margin) / 0.5), rel=1e-6)
    with pytest.raises(ValueError, match="1 \\+ 2"):
        get_objective("modpo", weights=(0.5, 0.5))(POLICY, REFERENCE, prefs)


def test_madpo_weight_amplifies_hard_pairs_and_dampens_easy_ones():
    h = torch.tensor([-3.0, -2.0, -1.0, 0.0, 0.5, 1.5, 2.0, 4.0, 8.0])
    w = madpo_weight(h, c_max=2.0, c_min=0.5, lam=1.0, tau=2.0)
    torch.testing.assert_close(w, torch.tensor([madpo_w(x) for x in h.tolist()]))
    assert w[0] == 1 and w[1] == 1 and w[3] == 1  # h <= -tau and h = 0 keep DPO's weight
    assert (w[4:6] > 1).all() and w[6].item() == pytest.approx(1.0) and (w[7:] < 1).all()
    with pytest.raises(ValueError, match="c_min < 1 < c_max"):
        madpo_weight(h, c_max=0.9, c_min=0.5, lam=1.0, tau=2.0)


def test_exo_needs_a_positive_label_smoothing():
    with pytest.raises(ValueError, match="objective.label_smoothing"):
        get_objective("exo", label_smoothing=0.0)(POLICY, REFERENCE, PAIR)


def test_plackett_luce_top_k_is_checked():
    with pytest.raises(ValueError, match="objective.top_k"):
        get_objective("plackett_luce", top_k=3)(POLICY, REFERENCE, PAIR)


# --- listwise on three candidates ---------------------------------------------------------------

# Candidates a, b, c with rewards r = [0.2, 1.0, -0.4] (beta = 1) and ranks [1, 0, 2]: b best, then a, then c.
A, B_, C = 0.2, 1.0, -0.4
LIST_POLICY, LIST_REFERENCE = LogLik(torch.tensor([[A, B_, C]])), LogLik(torch.zeros(1, 3))
LIST_RANKS = Preferences(ranks=torch.tensor([[1, 0, 2]]))
PAIR_LOSS = {"ba": softplus(-(B_ - A)), "bc": softplus(-(B_ - C)), "ac": softplus(-(A - C))}


def listwise_loss(name, prefs=LIST_RANKS, policy=LIST_POLICY, **hparams):
    return get_objective(name, **hparams)(policy, LIST_REFERENCE, prefs).loss.item()


def test_plackett_luce_on_three_candidates():
    first = B_ - lse(A, B_, C)
    second = A - lse(A, C)
    assert listwise_loss("plackett_luce", beta=1.0) == pytest.approx(-first - second, rel=1e-6)
    assert listwise_loss("plackett_luce", beta=1.0, top_k=1) == pytest.approx(-first, rel=1e-6)


def test_plackett_luce_breaks_rank_ties_by_candidate_index():
    tied = Preferences(ranks=torch.tensor([[0, 0, 1]]))  # a and b tie: order a, b, c
    expected = -(A - lse(A, B_, C)) - (B_ - lse(B_, C))
    assert listwise_loss("plackett_luce", tied, beta=1.0) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ("all", (PAIR_LOSS["ba"] + PAIR_LOSS["bc"] + PAIR_LOSS["ac"]) / 3),
        ("best_vs_rest", (PAIR_LOSS["ba"] + PAIR_LOSS["bc"]) / 2),
        ("adjacent", (PAIR_LOSS["ba"] + PAIR_LOSS["ac"]) / 2),
    ],
)
def test_curry_dpo_pair_sets(pairs, expected):
    assert listwise_loss("curry_dpo", beta=1.0, pairs=pairs) == pytest.approx(expected, rel=1e-6)


def lambda_weight(gain_i, gain_j, pos_i, pos_j):
    return abs(gain_i - gain_j) * abs(1 / math.log2(1 + pos_i) - 1 / math.log2(1 + pos_j))


def test_lipo_lambda_weights_pairs_by_gain_and_current_position():
    # labels psi = 2 - rank = a 1, b 2, c 0; positions under the current scores: b 1, a 2, c 3
    w = {"ba": lambda_weight(2**2, 2**1, 1, 2), "bc": lambda_weight(2**2, 2**0, 1, 3), "ac": lambda_weight(2, 1, 2, 3)}
    expected = sum(w[p] * PAIR_LOSS[p] for p in w)
    assert listwise_loss("lipo_lambda", beta=1.0) == pytest.approx(expected, rel=1e-6)
    # the same list scored in a different order: a now sorts first (position 1), b second
    swapped = LogLik(torch.tensor([[B_, A, C]]))
    w = {"ba": lambda_weight(4, 2, 2, 1), "bc": lambda_weight(4, 1, 2, 3), "ac": lambda_weight(2, 1, 1, 3)}
    losses = {"ba": softplus(-(A - B_)), "bc": softplus(-(A - C)), "ac": softplus(-(B_ - C))}
    expected = sum(w[p] * losses[p] for p in w)
    assert listwise_loss("lipo_lambda", policy=swapped, beta=1.0) == pytest.approx(expected, rel=1e-6)


def test_lipo_lambda_positions_at_equal_scores_follow_the_labels():
    equal = LogLik(torch.zeros(1, 3))
    w = lambda_weight(4, 2, 1, 2) + lambda_weight(4, 1, 1, 3) + lambda_weight(2, 1, 2, 3)
    for ranks in ([[1, 0, 2]], [[2, 1, 0]], [[0, 2, 1]]):
        prefs = Preferences(ranks=torch.tensor(ranks))
        assert listwise_loss("lipo_lambda", prefs, policy=equal) == pytest.approx(w * math.log(2), rel=1e-6)


@pytest.mark.parametrize(
    ("weighting", "weights"),
    [
        (
            "lambda",
            {
                "ba": lambda_weight(2**1.0, 2**0.5, 1, 2),
                "bc": lambda_weight(2, 1, 1, 3),
                "ac": lambda_weight(2**0.5, 1, 2, 3),
            },
        ),
        ("gain", {"ba": 2**1.0 - 2**0.5, "bc": 2**1.0 - 1, "ac": 2**0.5 - 1}),
        ("uniform", {"ba": 1.0, "bc": 1.0, "ac": 1.0}),
    ],
)
def test_rankdpo_uses_soft_scores_as_gains(weighting, weights):
    prefs = Preferences(scores=torch.tensor([[0.5, 1.0, 0.0]]))  # phi: b 1.0, a 0.5, c 0.0 (ranks derived)
    expected = sum(weights[p] * PAIR_LOSS[p] for p in weights)
    assert listwise_loss("rankdpo", prefs, beta=1.0, weighting=weighting) == pytest.approx(expected, rel=1e-6)


def test_adpo_targets_on_three_candidates():
    tau = 2.0
    log_p = [x / tau - lse(A / tau, B_ / tau, C / tau) for x in (A, B_, C)]
    assert listwise_loss("adpo", tau=tau) == pytest.approx(-log_p[1], rel=1e-6)  # hard: one-hot on b
    scores = [0.5, 1.0, 0.0]
    q = [math.exp(x / 0.5 - lse(*(y / 0.5 for y in scores))) for x in scores]
    soft = sum(qi * (math.log(qi) - lp) for qi, lp in zip(q, log_p))
    prefs = Preferences(ranks=torch.tensor([[1, 0, 2]]), scores=torch.tensor([scores]))
    assert listwise_loss("adpo", prefs, tau=tau, target="soft", target_temperature=0.5) == pytest.approx(soft, rel=1e-5)
    q = [math.exp(-r - lse(-1, 0, -2)) for r in (1, 0, 2)]
    listwise = sum(qi * (math.log(qi) - lp) for qi, lp in zip(q, log_p))
    assert listwise_loss("adpo", tau=tau, target="listwise") == pytest.approx(listwise, rel=1e-5)


def test_listwise_metrics_compare_best_and_worst_and_count_ordered_pairs():
    # rewards a 0.2, b 0.2 (tie, counts half), c -0.4: pairs (b,a) 0.5, (b,c) 1, (a,c) 1
    out = get_objective("curry_dpo", beta=1.0)(LogLik(torch.tensor([[0.2, 0.2, -0.4]])), LIST_REFERENCE, LIST_RANKS)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.2)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.4)
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(2.5 / 3)
    flipped = get_objective("curry_dpo", beta=1.0)(LogLik(torch.tensor([[1.0, 0.2, -0.4]])), LIST_REFERENCE, LIST_RANKS)
    assert flipped.metrics["rewards/accuracies"].item() == pytest.approx(2 / 3)


# --- unpaired and stateful ------------------------------------------------------------------------


def test_kto_reference_point_uses_mismatched_pairs():
    policy = LogLik(torch.tensor([[1.0], [0.0]]), extras={"mismatched": torch.tensor([[0.6], [0.2]])})
    reference = LogLik(torch.zeros(2, 1), extras={"mismatched": torch.zeros(2, 1)})
    prefs = Preferences(desirable=torch.tensor([[True], [False]]))
    out = get_objective("kto", beta=1.0, undesirable_weight=2.0)(policy, reference, prefs)
    z = 0.4  # mean of mismatched log-ratios, clamped at 0
    torch.testing.assert_close(out.losses, torch.tensor([1 - sig(1.0 - z), 2.0 * (1 - sig(z - 0.0))]))
    assert out.metrics["kl"].item() == pytest.approx(z)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(1.0)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.0)


def test_kto_clamps_a_negative_kl_estimate_and_averages_over_the_group():
    policy = LogLik(torch.tensor([[1.0, -1.0]]), extras={"mismatched": torch.tensor([[-0.5, -0.5]])})
    reference = LogLik(torch.zeros(1, 2), extras={"mismatched": torch.zeros(1, 2)})
    prefs = Preferences(desirable=torch.tensor([[True, False]]))
    out = get_objective("kto", beta=1.0)(policy, reference, prefs)
    assert out.metrics["kl"].item() == 0.0
    assert out.losses.item() == pytest.approx(((1 - sig(1.0)) + (1 - sig(1.0))) / 2)


def test_beta_dpo_adapts_beta_filters_and_carries_state():
    gaps = [1.0, 3.0, -0.5, 0.2]
    policy = LogLik(torch.tensor([[0.0, -g] for g in gaps]))
    reference = LogLik(torch.zeros(4, 2))
    prefs = Preferences(ranks=torch.tensor([[0, 1]] * 4))
    objective = get_objective("beta_dpo", beta=0.1, alpha=0.6, rho=0.25)
    first = objective(policy, reference, prefs)
    m0 = 0.1 * statistics.mean(gaps)  # EMA from zero, updated before use
    kept = [g for g in gaps if g != 3.0]  # the gap farthest from M0 is filtered
    beta = 0.1 * (1 + 0.6 * (statistics.mean(kept) - m0))
    assert first.metrics["beta"].item() == pytest.approx(beta, rel=1e-6)
    assert first.losses[1].item() == 0.0
    assert first.loss.item() == pytest.approx(statistics.mean(softplus(-beta * g) for g in kept), rel=1e-6)
    assert first.state["mean"].item() == pytest.approx(m0, rel=1e-6)
    assert first.state["std"].item() == pytest.approx(0.1 * statistics.stdev(gaps), rel=1e-6)
    second = objective(policy, reference, prefs, state=first.state)
    assert second.state["mean"].item() == pytest.approx(0.9 * m0 + 0.1 * statistics.mean(gaps), rel=1e-6)


# --- invariants over every objective -----------------------------------------------------------


def batch(seed, b=5, k=2, t=6):
    g = torch.Generator().manual_seed(seed)
    policy = -torch.rand(b, k, t, generator=g) * 2
    reference = -torch.rand(b, k, t, generator=g) * 2
    mask = torch.arange(t) < torch.randint(2, t + 1, (b, k, 1), generator=g)
    ranks = torch.stack([torch.randperm(k, generator=g) for _ in range(b)])
    scores = torch.rand(b, k, generator=g)
    mismatched = torch.rand(b, k, generator=g)
    prefs = Preferences(ranks=ranks, scores=scores, margin_rewards=torch.rand(b, k, 1, generator=g))
    return policy, reference, mask, prefs, mismatched


def token_extras(policy, reference):
    """Token-level extras as functions of the log-probs, so every invariance below carries over to them: the KL
    is 0 where policy = reference, masks and guidance weights are positive, step 0 is each response's first 2 tokens."""
    first_two = (torch.arange(policy.shape[-1]) >= 2).long().expand(policy.shape)
    on_policy = {"token_kl": ((policy - reference) ** 2).detach(), "mask": torch.sigmoid(reference)}
    return {**on_policy, "step_index": first_two}, {"guidance": 0.5 * reference}


def call(name, policy, reference, mask, prefs, mismatched=None, **hparams):
    on_policy, on_reference = token_extras(policy, reference)
    if mismatched is not None:
        on_policy, on_reference = (
            {**on_policy, "mismatched": mismatched},
            {**on_reference, "mismatched": 0 * mismatched},
        )
    hparams = {"weights": (0.5, 0.5), **hparams} if name == "modpo" else hparams
    ref = LogLik(reference, mask, extras=on_reference)
    return get_objective(name, **hparams)(LogLik(policy, mask, extras=on_policy), ref, prefs)


def reorder(prefs, fn):
    return Preferences(**{k: None if v is None else fn(v) for k, v in vars(prefs).items()})


LISTS = {"plackett_luce", "lipo_lambda", "rankdpo", "curry_dpo", "adpo", "kto", "apo_zero_unpaired", "diffusion_kto"}
DPO_AT_EQUALITY = {"dpo", "cdpo", "rdpo", "sigmoid_norm", "aot", "aot_unpaired", "plackett_luce", "curry_dpo"}
DPO_AT_EQUALITY |= {"adpo", "beta_dpo"} | TOKEN_LEVEL
UNPAIRED = {"kto", "apo_zero_unpaired", "diffusion_kto"}
ACCURACY = set(OBJECTIVES) - REFERENCE_FREE - UNPAIRED


@pytest.mark.parametrize("name", sorted(DPO_AT_EQUALITY))
def test_policy_equal_to_reference_gives_ln2(name):
    policy, _, mask, prefs, _ = batch(0)
    assert call(name, policy, policy, mask, prefs).loss.item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.mark.parametrize("name", sorted(ACCURACY))
def test_policy_equal_to_reference_gives_half_accuracy(name):
    policy, _, mask, prefs, _ = batch(0, k=4 if name in LISTS else 2)
    assert call(name, policy, policy, mask, prefs).metrics["rewards/accuracies"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(REFERENCE_FREE))
def test_reference_free_objectives_ignore_the_reference(name):
    policy, reference, mask, prefs, _ = batch(7)
    with_ref = call(name, policy, reference, mask, prefs)
    without = get_objective(name)(LogLik(policy, mask), None, prefs)
    torch.testing.assert_close(with_ref.losses, without.losses)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_padding_does_not_change_the_loss(name):
    policy, reference, mask, prefs, mismatched = batch(1)
    pad = lambda x, v: torch.cat([x, torch.full((*x.shape[:2], 3), v, dtype=x.dtype)], -1)  # noqa: E731
    base = call(name, policy, reference, mask, prefs, mismatched)
    padded = call(name, pad(policy, 7.0), pad(reference, -9.0), pad(mask, False), prefs, mismatched)
    torch.testing.assert_close(padded.losses, base.losses)


BATCH_SORTED = {"aot", "aot_unpaired"}  # losses come sorted over the batch, not per group


def test_batch_sorted_objectives_are_marked_in_their_specs():
    assert {name for name, spec in OBJECTIVES.items() if spec.batch_sorted} == BATCH_SORTED


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_batch_order_permutes_per_group_losses(name):
    policy, reference, mask, prefs, mismatched = batch(2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    base = call(name, policy, reference, mask, prefs, mismatched)
    moved = call(name, policy[perm], reference[perm], mask[perm], reorder(prefs, lambda v: v[perm]), mismatched[perm])
    torch.testing.assert_close(moved.losses, base.losses if name in BATCH_SORTED else base.losses[perm])


@pytest.mark.parametrize(("name", "k"), [(n, 2) for n in sorted(OBJECTIVES)] + [(n, 4) for n in sorted(LISTS)])
def test_candidate_order_inside_a_group_does_not_matter(name, k):
    policy, reference, mask, prefs, mismatched = batch(3, k=k)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(k))
    base = call(name, policy, reference, mask, prefs, mismatched)
    shuffle = lambda v: v[:, perm]  # noqa: E731
    moved = call(name, *map(shuffle, (policy, reference, mask)), reorder(prefs, shuffle), shuffle(mismatched))
    torch.testing.assert_close(moved.losses, base.losses)


# apo_down lowers both likelihoods by design, sppo_hard and the unpaired losses pull each response to a target,
# and DiscoPOP's blend is non-monotone (its gradient changes sign for large margins, DiscoPOP paper Fig. 3).
NOT_MONOTONE = UNPAIRED | {"apo_down", "sppo_hard", "discopop"}
SCORE_LABELLED = {"smpo"}  # the preference is the reward scores' order, whatever the ranks say


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - NOT_MONOTONE))
def test_gradient_raises_chosen_and_lowers_rejected(name):
    policy, reference, mask, prefs, mismatched = batch(4)
    policy = policy.clone().requires_grad_(True)
    call(name, policy, reference, mask, prefs, mismatched).loss.backward()
    grad = (policy.grad * mask).sum(-1)  # d loss / d logp per candidate
    best = prefs.scores == prefs.scores.max(-1, keepdim=True).values if name in SCORE_LABELLED else prefs.ranks == 0
    tiny = 1e-30  # a saturated loss (MaPO at these margins) leaves float32-underflow gradients of either sign
    assert (grad[best] <= tiny).all() and (grad[best] < 0).any()  # descending the loss raises the chosen one
    assert (grad[~best] >= -tiny).all() and (grad[~best] > 0).any()


def test_dpo_gradient_is_minus_and_plus_beta_sigmoid():
    policy = torch.tensor([[-1.0, -3.0]], requires_grad=True)
    get_objective("dpo", beta=0.5)(LogLik(policy), REFERENCE, PAIR).loss.backward()
    torch.testing.assert_close(policy.grad, torch.tensor([[-0.5 * sig(-0.75), 0.5 * sig(-0.75)]]))


def test_listwise_losses_reduce_to_dpo_for_pairs():
    policy, reference, mask, prefs, _ = batch(5)
    ranked = Preferences(ranks=prefs.ranks)  # labels from ranks: gains 2^1 and 2^0
    dpo = call("dpo", policy, reference, mask, ranked).losses
    for name, hparams, factor in [
        ("plackett_luce", {}, 1.0),
        ("curry_dpo", {}, 1.0),
        ("adpo", {"tau": 10.0}, 1.0),  # beta = 1 / tau
        ("lipo_lambda", {}, LAMBDA_K2),
        ("rankdpo", {"weighting": "gain"}, 1.0),
        ("rankdpo", {"weighting": "uniform"}, 1.0),
    ]:
        torch.testing.assert_close(call(name, policy, reference, mask, ranked, **hparams).losses, factor * dpo)


def test_group_weights_scale_the_losses():
    policy, reference, mask, prefs, _ = batch(6)
    weights = torch.tensor([1.0, 0.0, 2.0, 0.5, 1.0])
    base = call("dpo", policy, reference, mask, prefs).losses
    weighted = call("dpo", policy, reference, mask, Preferences(ranks=prefs.ranks, weights=weights)).losses
    torch.testing.assert_close(weighted, base * weights)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(ValueError, match="did you mean 'simpo'"):
        get_objective("simppo")
    with pytest.raises(ValueError, match="did you mean 'label_smoothing'"):
        get_objective("cdpo", label_smothing=0.1)


def test_pairwise_objectives_refuse_ties_and_long_lists():
    policy, reference, mask, _, _ = batch(6)
    with pytest.raises(ValueError, match="data.ties=drop"):
        call("dpo", policy, reference, mask, Preferences(ranks=torch.zeros(5, 2, dtype=torch.long)))
    with pytest.raises(ValueError, match="K = 3"):
        call("dpo", *batch(6, k=3)[:3], Preferences(ranks=torch.tensor([[0, 1, 2]] * 5)))


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_batch_sorted_objectives_refuse_per_group_weights(name):
    policy, reference, mask, prefs, _ = batch(7)
    weighted = Preferences(ranks=prefs.ranks, weights=torch.ones(5))
    with pytest.raises(ValueError, match="per-group weights"):
        call(name, policy, reference, mask, weighted)
