"""Every loss TRL also implements, against TRL's own trainer code on the same per-token inputs."""

import pytest
import torch

from mmdpo.objectives import LogLik, Preferences, get_objective

pytest.importorskip("trl")

from trl_reference import (  # noqa: E402
    trl_cpo_loss,
    trl_dpo_loss,
    trl_kto_loss,
    trl_odds_ratio_loss,
    trl_tpo_loss,
)

B, T = 6, 7
METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


@pytest.fixture
def inputs():
    g = torch.Generator().manual_seed(0)
    policy = -torch.rand(B, 2, T, generator=g) * 3
    reference = -torch.rand(B, 2, T, generator=g) * 3
    lengths = torch.randint(2, T + 1, (B, 2), generator=g)
    mask = torch.arange(T) < lengths.unsqueeze(-1)
    return policy, reference, mask


def ours(name, policy, reference, mask, **hparams):
    extras = {"wpo_logp": hparams.pop("aligned")} if "aligned" in hparams else {}
    ranks = torch.tensor([[0, 1]] * B)
    out = get_objective(name, **hparams)(
        LogLik(policy, mask, extras=extras), LogLik(reference, mask), Preferences(ranks=ranks)
    )
    return out.loss, out.metrics


CASES = [
    ("sigmoid", "dpo", {}),
    ("hinge", "hinge", {}),
    ("ipo", "ipo", {}),
    ("exo_pair", "exo", {"label_smoothing": 0.1}),
    ("nca_pair", "nca", {}),
    ("robust", "rdpo", {"label_smoothing": 0.2}),
    ("bco_pair", "bco", {}),
    ("sppo_hard", "sppo_hard", {}),
    ("aot", "aot", {"label_smoothing": 0.1}),
    ("aot_unpaired", "aot_unpaired", {"label_smoothing": 0.1}),
    ("apo_zero", "apo_zero", {}),
    ("apo_down", "apo_down", {}),
    ("discopop", "discopop", {}),
    ("sigmoid_norm", "sigmoid_norm", {}),
]


@pytest.mark.parametrize(("trl_name", "name", "extra"), CASES, ids=[c[1] for c in CASES])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_loss_and_metrics_match_trl(inputs, trl_name, name, extra, beta):
    policy, reference, mask = inputs
    expected, trl_metrics = trl_dpo_loss(policy, reference, mask, loss_type=trl_name, beta=beta, **extra)
    loss, metrics = ours(name, policy, reference, mask, beta=beta, **extra)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for key in METRICS:
        assert metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-5), key


def test_discopop_tau_matches_trl(inputs):
    policy, reference, mask = inputs
    expected, _ = trl_dpo_loss(policy, reference, mask, loss_type="discopop", beta=2.0, discopop_tau=0.3)
    loss, _ = ours("discopop", policy, reference, mask, beta=2.0, tau=0.3)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(("trl_name", "name"), [("sigmoid", "dpo"), ("ipo", "ipo"), ("sigmoid_norm", "sigmoid_norm")])
@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("f_alpha", [0.3, 0.5])
def test_f_divergences_match_trl(inputs, trl_name, name, divergence, f_alpha):
    # ipo and sigmoid_norm divide each score by its length, so f'(u)'s constants must match TRL's too
    policy, reference, mask = inputs
    expected, _ = trl_dpo_loss(
        policy, reference, mask, loss_type=trl_name, f_divergence_type=divergence, f_alpha=f_alpha
    )
    loss, _ = ours(name, policy, reference, mask, f_divergence=divergence, f_alpha=f_alpha)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.5])
def test_ld_dpo_matches_trl_and_legacy_form_differs(inputs, ld_alpha):
    policy, reference, mask = inputs
    expected, _ = trl_dpo_loss(policy, reference, mask, loss_type="sigmoid", ld_alpha=ld_alpha)
    loss, _ = ours("dpo", policy, reference, mask, ld_alpha=ld_alpha)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    policy_only, _ = ours("dpo", policy, reference, mask, ld_alpha=ld_alpha, ld_reference=False)
    assert not torch.allclose(policy_only, expected)  # the legacy (policy-only) form is a different loss


@pytest.mark.parametrize(("trl_name", "name"), [("sigmoid", "dpo"), ("ipo", "ipo"), ("bco_pair", "bco")])
def test_wpo_weighting_matches_trl(inputs, trl_name, name):
    policy, reference, mask = inputs
    aligned = policy + torch.rand(policy.shape, generator=torch.Generator().manual_seed(1))  # log p - log sum p^2
    expected, _ = trl_dpo_loss(policy, reference, mask, loss_type=trl_name, use_weighting=True, aligned=aligned)
    loss, _ = ours(name, policy, reference, mask, wpo=True, aligned=aligned)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33)])
def test_unpaired_losses_match_trl(loss_type, weights):
    g = torch.Generator().manual_seed(2)
    policy, reference = -torch.rand(B, generator=g) * 5, -torch.rand(B, generator=g) * 5
    policy_kl, reference_kl = -torch.rand(B, generator=g) * 5, -torch.rand(B, generator=g) * 6
    desirable = torch.tensor([True, False, True, True, False, False])
    expected, trl_metrics = trl_kto_loss(
        policy, reference, policy_kl, reference_kl, desirable, loss_type=loss_type, beta=0.3,
        desirable_weight=weights[0], undesirable_weight=weights[1],
    )  # fmt: skip
    objective = get_objective(loss_type, beta=0.3, desirable_weight=weights[0], undesirable_weight=weights[1])
    out = objective(
        LogLik(policy[:, None], extras={"mismatched": policy_kl[:, None]}),
        LogLik(reference[:, None], extras={"mismatched": reference_kl[:, None]}),
        Preferences(desirable=desirable[:, None]),
    )
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=1e-5)
    keys = ["rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"] + ["kl"] * (loss_type == "kto")
    for key in keys:
        assert out.metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-5), key


@pytest.mark.parametrize(("beta", "alpha"), [(0.01, 1.0), (0.5, 0.3)])
def test_triple_po_matches_trl_tpo_with_chosen_as_gold(inputs, beta, alpha):
    policy, _, mask = inputs
    mask = mask.clone()
    mask[:, 0] = torch.arange(T) < 5  # equal gold lengths: TRL's token-mean NLL equals our mean of per-pair means
    expected, trl_metrics = trl_tpo_loss(policy, mask, beta=beta, tpo_alpha=alpha)
    out = get_objective("triple_po", beta=beta, alpha=alpha)(
        LogLik(policy, mask), None, Preferences(ranks=torch.tensor([[0, 1]] * B))
    )
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    for key in METRICS:
        assert out.metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-5), key


@pytest.mark.parametrize(("beta", "gamma_beta_ratio", "label_smoothing"), [(2.0, 0.25, 0.0), (2.5, 0.55, 0.1)])
def test_simpo_matches_trl_cpo_simpo(inputs, beta, gamma_beta_ratio, label_smoothing):
    policy, _, mask = inputs
    avg = (policy * mask).sum(-1) / mask.sum(-1)
    losses, chosen, rejected = trl_cpo_loss(
        avg[:, 0], avg[:, 1], loss_type="simpo", beta=beta, simpo_gamma=gamma_beta_ratio * beta,
        label_smoothing=label_smoothing,
    )  # fmt: skip
    out = get_objective("simpo", beta=beta, gamma_beta_ratio=gamma_beta_ratio, label_smoothing=label_smoothing)(
        LogLik(policy, mask), None, Preferences(ranks=torch.tensor([[0, 1]] * B))
    )
    torch.testing.assert_close(out.losses, losses, atol=1e-6, rtol=1e-5)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(chosen.mean().item(), abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(rejected.mean().item(), abs=1e-6)


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_orpo_odds_ratio_term_matches_trl(inputs, beta):
    policy, _, mask = inputs
    avg = (policy * mask).sum(-1) / mask.sum(-1)
    scaled_log_sigmoid, chosen, rejected, _, _ = trl_odds_ratio_loss(avg[:, 0], avg[:, 1], beta=beta)
    out = get_objective("orpo", beta=beta)(LogLik(policy, mask), None, Preferences(ranks=torch.tensor([[0, 1]] * B)))
    nll = -avg[:, 0]  # ORPO's SFT term, per pair; TRL adds its own batch token-mean NLL outside this function
    torch.testing.assert_close(out.losses - nll, -scaled_log_sigmoid, atol=1e-6, rtol=1e-5)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(chosen.mean().item(), abs=1e-6)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(rejected.mean().item(), abs=1e-6)
