"""Every objective against hand-computed values, plus the invariants all of them must keep."""

import math

import pytest
import torch

from mmdpo.objectives import OBJECTIVES, REFERENCE_FREE, LogLik, Preferences, get_objective


def softplus(x):
    return math.log1p(math.exp(x))


def logsig(x):
    return -softplus(-x)


def sig(x):
    return 1 / (1 + math.exp(-x))


def log_odds(avg):
    return avg - math.log(1 - math.exp(avg))


# One pair: policy totals -1 (chosen, 2 tokens) and -3 (rejected, 4 tokens); reference -2 and -2.5.
# So r_w = 1, r_l = -0.5, Delta = 1.5; averages -0.5 and -0.75.
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
    ("madpo", {"beta": 0.5, "margin_scale": 2.0}, 2 * sig(-2.0 * 0.7) * softplus(-0.75)),
    ("curry_dpo", {"beta": 0.5}, softplus(-0.75)),
    ("plackett_luce", {"beta": 0.5}, softplus(-0.75)),
    ("lipo_lambda", {"beta": 0.5}, softplus(-0.75)),
    ("rankdpo", {"beta": 0.5}, softplus(-0.75)),
    ("adpo", {"tau": 2.0}, softplus(-0.75)),
    ("kto", {"beta": 0.5}, 0.5 * ((1 - sig(0.5)) + (1 - sig(0.25)))),
    ("apo_zero_unpaired", {"beta": 0.5}, 0.5 * ((1 - sig(0.5)) + sig(-0.25))),
    ("beta_dpo", {"beta": 0.5, "rho": 0.0}, softplus(-0.75)),
]


@pytest.mark.parametrize(("name", "hparams", "expected"), HAND, ids=[h[0] for h in HAND])
def test_hand_computed_value(name, hparams, expected):
    out = get_objective(name, **hparams)(POLICY, REFERENCE, PAIR)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_every_objective_has_a_hand_computed_value():
    assert {h[0] for h in HAND} >= set(OBJECTIVES) - {"modpo"}


def test_modpo_hand_computed():
    prefs = Preferences(ranks=torch.tensor([[0, 1]]), margin_rewards=torch.tensor([[[0.3, 1.0], [0.1, 2.0]]]))
    out = get_objective("modpo", beta=0.5, weights=(0.5, 0.25, 0.25))(POLICY, REFERENCE, prefs)
    margin = 0.25 * (0.3 - 0.1) + 0.25 * (1.0 - 2.0)
    assert out.loss.item() == pytest.approx(softplus(-(0.75 - margin) / 0.5), rel=1e-6)


def test_listwise_hand_computed_on_three_candidates():
    # rewards r = [0.2, 1.0, -0.4] (beta = 1), ranks [1, 0, 2]: best is candidate 1, then 0, then 2
    policy, reference = LogLik(torch.tensor([[0.2, 1.0, -0.4]])), LogLik(torch.zeros(1, 3))
    prefs = Preferences(ranks=torch.tensor([[1, 0, 2]]))
    a, b, c = 0.2, 1.0, -0.4
    pl = -(b - math.log(math.exp(a) + math.exp(b) + math.exp(c))) - (a - math.log(math.exp(a) + math.exp(c)))
    assert get_objective("plackett_luce", beta=1.0)(policy, reference, prefs).loss.item() == pytest.approx(pl, rel=1e-6)
    pairs = [softplus(-(b - a)), softplus(-(b - c)), softplus(-(a - c))]
    curry = get_objective("curry_dpo", beta=1.0)(policy, reference, prefs).loss.item()
    assert curry == pytest.approx(sum(pairs) / 3, rel=1e-6)
    adjacent = get_objective("curry_dpo", beta=1.0, pairs="adjacent")(policy, reference, prefs).loss.item()
    assert adjacent == pytest.approx((pairs[0] + pairs[2]) / 2, rel=1e-6)
    # LiPO-lambda: labels psi = 2 - rank = [1, 2, 0]; positions under current scores: b=1, a=2, c=3
    gain = {"a": 2**1, "b": 2**2, "c": 2**0}
    inv = {"a": 1 / math.log2(3), "b": 1 / math.log2(2), "c": 1 / math.log2(4)}
    w = {("b", "a"): abs(gain["b"] - gain["a"]) * abs(inv["b"] - inv["a"]),
         ("b", "c"): abs(gain["b"] - gain["c"]) * abs(inv["b"] - inv["c"]),
         ("a", "c"): abs(gain["a"] - gain["c"]) * abs(inv["a"] - inv["c"])}  # fmt: skip
    scale = 3 / sum(w.values())
    lipo = sum(scale * wt * p for wt, p in zip(w.values(), pairs)) / 3
    assert get_objective("lipo_lambda", beta=1.0)(policy, reference, prefs).loss.item() == pytest.approx(lipo, rel=1e-6)
    # ADPO with a listwise target: KL(q || softmax(r / tau))
    q = torch.softmax(-torch.tensor([1.0, 0.0, 2.0]), 0)
    p = torch.softmax(torch.tensor([a, b, c]) / 2.0, 0)
    kl = (q * (q.log() - p.log())).sum().item()
    out = get_objective("adpo", tau=2.0, target="listwise")(policy, reference, prefs)
    assert out.loss.item() == pytest.approx(kl, rel=1e-5)


def test_kto_reference_point_uses_mismatched_pairs():
    policy = LogLik(torch.tensor([[1.0], [0.0]]), extras={"mismatched": torch.tensor([[0.6], [0.2]])})
    reference = LogLik(torch.zeros(2, 1), extras={"mismatched": torch.zeros(2, 1)})
    prefs = Preferences(desirable=torch.tensor([[True], [False]]))
    out = get_objective("kto", beta=1.0)(policy, reference, prefs)
    z = 0.4  # mean of mismatched log-ratios, clamped at 0
    expected = [1 - sig(1.0 - z), 1 - sig(z - 0.0)]
    torch.testing.assert_close(out.losses, torch.tensor(expected))
    assert out.metrics["kl"].item() == pytest.approx(z)


def test_beta_dpo_adapts_beta_and_carries_state():
    policy = LogLik(torch.tensor([[0.0, -1.0], [0.0, -3.0], [0.0, 0.5], [0.0, -0.2]]))
    reference = LogLik(torch.zeros(4, 2))
    prefs = Preferences(ranks=torch.tensor([[0, 1]] * 4))
    objective = get_objective("beta_dpo", beta=0.1, alpha=0.6, rho=0.25)
    first = objective(policy, reference, prefs)
    gaps = torch.tensor([1.0, 3.0, -0.5, 0.2])
    kept = torch.tensor([True, False, True, True])  # the pair farthest from the mean is filtered
    assert torch.equal(first.losses > 0, kept)
    expected_beta = 0.1 * (1 + 0.6 * (gaps[kept].mean() - gaps.mean()))
    assert first.metrics["beta"].item() == pytest.approx(expected_beta.item(), rel=1e-6)
    second = objective(policy, reference, prefs, state=first.state)
    assert second.state["mean"].item() == pytest.approx(gaps.mean().item(), rel=1e-6)  # EMA of equal batches


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


def call(name, policy, reference, mask, prefs, mismatched=None, **hparams):
    extras = {"mismatched": mismatched} if mismatched is not None else {}
    ref = LogLik(reference, mask, extras={"mismatched": torch.zeros_like(mismatched)} if extras else {})
    hparams = {"weights": (0.5, 0.5), **hparams} if name == "modpo" else hparams
    return get_objective(name, **hparams)(LogLik(policy, mask, extras=extras), ref, prefs)


LISTWISE = {"plackett_luce", "lipo_lambda", "rankdpo", "curry_dpo", "adpo"}
DPO_AT_EQUALITY = set(OBJECTIVES) - REFERENCE_FREE - {"ipo", "ipo_sum", "hinge", "exo", "nca", "bco", "apo_zero",
                                                      "apo_down", "sppo_hard", "discopop", "kto", "apo_zero_unpaired",
                                                      "rpo", "beta_dpo", "madpo", "modpo"}  # fmt: skip


@pytest.mark.parametrize("name", sorted(DPO_AT_EQUALITY))
def test_policy_equal_to_reference_gives_ln2_and_half_accuracy(name):
    policy, _, mask, prefs, _ = batch(0)
    out = call(name, policy, policy, mask, prefs)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - {"beta_dpo"}))
def test_padding_does_not_change_the_loss(name):
    policy, reference, mask, prefs, mismatched = batch(1)
    pad = lambda x, v: torch.cat([x, torch.full((*x.shape[:2], 3), v, dtype=x.dtype)], -1)  # noqa: E731
    base = call(name, policy, reference, mask, prefs, mismatched)
    padded = call(name, pad(policy, 7.0), pad(reference, -9.0), pad(mask, False), prefs, mismatched)
    torch.testing.assert_close(padded.losses, base.losses)


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - {"aot", "aot_unpaired", "beta_dpo", "kto"}))
def test_batch_order_permutes_per_group_losses(name):
    policy, reference, mask, prefs, mismatched = batch(2)
    perm = torch.tensor([3, 0, 4, 1, 2])
    permuted = Preferences(**{k: None if v is None else v[perm] for k, v in vars(prefs).items()})
    base = call(name, policy, reference, mask, prefs, mismatched)
    moved = call(name, policy[perm], reference[perm], mask[perm], permuted, mismatched[perm])
    torch.testing.assert_close(moved.losses, base.losses[perm])


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - {"beta_dpo"}))
def test_candidate_order_inside_a_group_does_not_matter(name):
    policy, reference, mask, prefs, mismatched = batch(3)
    flip = Preferences(**{k: None if v is None else v.flip(1) for k, v in vars(prefs).items()})
    base = call(name, policy, reference, mask, prefs, mismatched)
    flipped = call(name, policy.flip(1), reference.flip(1), mask.flip(1), flip, mismatched.flip(1))
    torch.testing.assert_close(flipped.losses, base.losses)


# apo_down lowers both likelihoods by design, sppo_hard and the unpaired losses pull each response to a target,
# and DiscoPOP's blend is non-monotone (its gradient changes sign for large margins, DiscoPOP paper Fig. 3).
NOT_MONOTONE = {"kto", "apo_zero_unpaired", "apo_down", "sppo_hard", "beta_dpo", "discopop"}


@pytest.mark.parametrize("name", sorted(set(OBJECTIVES) - NOT_MONOTONE))
def test_gradient_raises_chosen_and_lowers_rejected(name):
    policy, reference, mask, prefs, mismatched = batch(4)
    policy = policy.clone().requires_grad_(True)
    call(name, policy, reference, mask, prefs, mismatched).loss.backward()
    grad = (policy.grad * mask).sum(-1)
    best = prefs.ranks == 0
    assert (grad[best] <= 0).all() and (grad[best] < 0).any()  # descending the loss raises the chosen log-likelihood
    assert (grad[~best] >= 0).all()


def test_listwise_losses_reduce_to_dpo_for_pairs():
    policy, reference, mask, prefs, _ = batch(5)
    dpo = call("dpo", policy, reference, mask, prefs).losses
    for name in ("plackett_luce", "curry_dpo", "lipo_lambda", "rankdpo"):
        torch.testing.assert_close(call(name, policy, reference, mask, prefs).losses, dpo)
    torch.testing.assert_close(call("adpo", policy, reference, mask, prefs, tau=10.0).losses, dpo)


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
