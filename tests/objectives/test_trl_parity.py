"""Every loss TRL also implements, against TRL's own DPOTrainer code on the same per-token inputs."""

import pytest
import torch
from trl_reference import trl_dpo_loss

from mmdpo.objectives import LogLik, Preferences, get_objective

pytest.importorskip("trl")

B, T = 6, 7


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


@pytest.mark.parametrize(("trl_name", "name", "extra"), CASES)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_loss_matches_trl(inputs, trl_name, name, extra, beta):
    policy, reference, mask = inputs
    expected, trl_metrics = trl_dpo_loss(policy, reference, mask, loss_type=trl_name, beta=beta, **extra)
    loss, metrics = ours(name, policy, reference, mask, beta=beta, **extra)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("f_alpha", [0.3, 0.5])
def test_f_divergences_match_trl(inputs, divergence, f_alpha):
    policy, reference, mask = inputs
    expected, _ = trl_dpo_loss(
        policy, reference, mask, loss_type="sigmoid", f_divergence_type=divergence, f_alpha=f_alpha
    )
    loss, _ = ours("dpo", policy, reference, mask, f_divergence=divergence, f_alpha=f_alpha)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ld_alpha", [0.0, 0.5])
def test_ld_dpo_matches_trl(inputs, ld_alpha):
    policy, reference, mask = inputs
    expected, _ = trl_dpo_loss(policy, reference, mask, loss_type="sigmoid", ld_alpha=ld_alpha)
    loss, _ = ours("dpo", policy, reference, mask, ld_alpha=ld_alpha)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    policy_only, _ = ours("dpo", policy, reference, mask, ld_alpha=ld_alpha, ld_reference=False)
    assert not torch.allclose(policy_only, expected)  # the legacy (policy-only) form is a different loss


def test_wpo_weighting_matches_trl(inputs):
    policy, reference, mask = inputs
    aligned = policy + torch.rand(policy.shape, generator=torch.Generator().manual_seed(1))  # log p - log sum p^2
    expected, _ = trl_dpo_loss(policy, reference, mask, loss_type="sigmoid", use_weighting=True, aligned=aligned)
    loss, _ = ours("dpo", policy, reference, mask, wpo=True, aligned=aligned)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("loss_type", ["kto", "apo_zero_unpaired"])
@pytest.mark.parametrize("weights", [(1.0, 1.0), (1.0, 1.33)])
def test_unpaired_losses_match_trl(loss_type, weights):
    from trl_reference import trl_kto_loss

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
        assert out.metrics[key].item() == pytest.approx(trl_metrics[key], abs=1e-5)
