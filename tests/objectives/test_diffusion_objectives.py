"""Diffusion objectives against their official code's formulas, written on raw per-sample MSEs.

The adapters hand the objectives loglik = -0.5 * mse; each test rewrites the official loss on the MSEs and
checks the registered objective, with the beta mapping its docstring states.
"""

import pytest
import torch
import torch.nn.functional as F

from mmdpo.objectives import LogLik, Preferences, get_objective
from mmdpo.objectives.diffusion import PICKSCORE_RANGE

PAIRS = Preferences(ranks=torch.tensor([[0, 1]] * 6))


@pytest.fixture
def mse():
    """Per-sample denoising errors of the policy and the reference, ``[6, 2]``, winners first, in float64 so the
    comparisons see formula differences, not rounding (the official MaPO's exp(x) - 1 loses digits expm1 keeps)."""
    g = torch.Generator().manual_seed(0)
    return (torch.rand(6, 2, generator=g, dtype=torch.float64) * 0.2 for _ in range(2))


def loglik(errors):
    return LogLik(-0.5 * errors)


def diffs(errors):
    return errors[:, 0] - errors[:, 1]


def test_hinge_and_ipo_are_the_diffusers_sd15_loss_types_at_twice_their_beta(mse):
    policy, reference = mse
    logits = diffs(reference) - diffs(policy)  # train_diffusion_dpo.py: ref_diff - model_diff
    hinge = get_objective("hinge", beta=5000.0)(loglik(policy), loglik(reference), PAIRS).losses
    torch.testing.assert_close(hinge, torch.relu(1 - 2500 * logits))
    ipo = get_objective("ipo_sum", beta=5000.0)(loglik(policy), loglik(reference), PAIRS).losses
    torch.testing.assert_close(4 * ipo, (logits - 1 / (2 * 2500)) ** 2)  # the script's loss is 4x, a constant


def test_smpo_is_the_official_soft_label_loss(mse):
    policy, reference = mse
    g = torch.Generator().manual_seed(1)
    lo, hi = PICKSCORE_RANGE
    scores = lo + torch.rand(6, 2, generator=g, dtype=torch.float64) * (hi - lo)
    order = scores.argsort(-1, descending=True)  # the official data put the PickScore winner first
    sw, sl = scores.gather(1, order).unbind(1)
    pw, rw = policy.gather(1, order), reference.gather(1, order)
    p = torch.exp((sw - lo) / (hi - lo)) / (torch.exp((sw - lo) / (hi - lo)) + torch.exp((sl - lo) / (hi - lo)))
    official = -F.logsigmoid(-0.5 * 2000 * (2 * p - 1) * 10 * (diffs(pw) - diffs(rw)))  # train.py, beta_dpo 2000
    prefs = Preferences(scores=scores)
    ours = get_objective("smpo", beta=2000.0)(loglik(policy), loglik(reference), prefs)
    torch.testing.assert_close(ours.losses, official)
    assert (ours.metrics["soft_label"] >= 0.5).item()


def test_smpo_gives_no_gradient_for_equally_good_images(mse):
    policy, reference = mse
    policy = policy.clone().requires_grad_(True)
    equal = Preferences(scores=torch.full((6, 2), 0.2, dtype=torch.float64))
    out = get_objective("smpo")(loglik(policy), loglik(reference), equal)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.6931, abs=1e-4) and policy.grad.abs().max() == 0


def test_mapo_is_the_official_compute_loss(mse):
    policy, _ = mse
    w, l = policy.unbind(1)
    s = 0.5
    log_odds = (s * w) / (torch.exp(s * w) - 1) - (s * l) / (torch.exp(s * l) - 1)
    official = w - 0.1 * F.logsigmoid(log_odds * 1000)  # utils.py compute_loss, before its batch mean
    ours = get_objective("mapo")(loglik(policy), None, PAIRS)
    torch.testing.assert_close(ours.losses, official)


def test_dro_hinge_is_the_official_margin_loss(mse):
    policy, reference = mse
    # the expert (chosen) and the policy sample (rejected), the official L_exp, L_exp0, L_pol, L_pol0
    diff = (policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1])
    official = torch.relu(diff + 1e-3)
    torch.testing.assert_close(get_objective("dro_hinge")(loglik(policy), loglik(reference), PAIRS).losses, official)


def test_diffusion_kto_is_the_official_sigmoid_halo(mse):
    policy, reference = mse
    errors_pol, errors_ref = policy.flatten()[:, None], reference.flatten()[:, None]  # 12 images, unpaired
    label = torch.tensor([1.0, 0.0] * 6, dtype=torch.float64)
    g = -errors_pol[:, 0] + errors_ref[:, 0]  # policy_KL_logps - reference_KL_logps, no 0.5
    z0 = g.mean().clamp(min=0)
    official = 1 - torch.sigmoid((2 * label - 1) * 1000 * (g - z0))  # beta_dpo 1000, weights 1
    prefs = Preferences(desirable=label.bool()[:, None])
    ours = get_objective("diffusion_kto")(loglik(errors_pol), loglik(errors_ref), prefs)
    torch.testing.assert_close(ours.losses, official)
