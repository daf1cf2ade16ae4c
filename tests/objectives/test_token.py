"""Token-level objectives against values computed by hand from their formulas (the invariants every objective
keeps, padding and order among them, run in test_objectives.py)."""

import math

import pytest
import torch

from mmdpo.objectives import LogLik, Preferences, get_objective, hyperparameters
from mmdpo.objectives.token import rescaled_activations


def softplus(x):
    return math.log1p(math.exp(x))


# One pair, the chosen response second (ranks [1, 0]). Rejected: 2 tokens (a third is padding), chosen: 3 tokens.
# Log-ratios: rejected [0.5, -1.0] (r_l = -0.5), chosen [0.5, -0.5, 1.0] (r_w = 1.0); u = 1.5.
# Per-token KL: rejected [0.2, 0.1] (D_l = 0.3), chosen [0.05, 0.05, 0.1] (D_w = 0.2).
PAD = 99.0
POLICY = torch.tensor([[[-1.0, -2.0, PAD], [-0.5, -1.5, -1.0]]])
REFERENCE = torch.tensor([[[-1.5, -1.0, -PAD], [-1.0, -1.0, -2.0]]])
MASK = torch.tensor([[[True, True, False], [True, True, True]]])
KL = torch.tensor([[[0.2, 0.1, PAD], [0.05, 0.05, 0.1]]])
PREFS = Preferences(ranks=torch.tensor([[1, 0]]))


def loss(name, policy_extras=None, reference_extras=None, **hparams):
    policy = LogLik(POLICY, MASK, extras={"token_kl": KL, **(policy_extras or {})})
    reference = LogLik(REFERENCE, MASK, extras=reference_extras or {})
    return get_objective(name, **hparams)(policy, reference, PREFS)


def test_tdpo1_and_tdpo2():
    out = loss("tdpo", beta=0.5, variant="tdpo1")
    assert out.loss.item() == pytest.approx(softplus(-0.5 * (1.5 - (0.3 - 0.2))), rel=1e-6)
    assert loss("tdpo", beta=0.5, alpha=0.5).loss.item() == pytest.approx(softplus(-0.5 * (1.5 - 0.5 * 0.1)), rel=1e-6)
    # rewards beta (r + D) as the official code logs them; kl/* is the sequential KL D
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5 * (1.0 + 0.2))
    assert out.metrics["rewards/rejected"].item() == pytest.approx(0.5 * (-0.5 + 0.3))
    assert out.metrics["kl/chosen"].item() == pytest.approx(0.2)
    assert out.metrics["kl/rejected"].item() == pytest.approx(0.3)
    assert out.metrics["logps/chosen"].item() == pytest.approx(-3.0)
    assert out.metrics["logps/rejected"].item() == pytest.approx(-3.0)


@pytest.mark.parametrize(("variant", "chosen_kl_has_grad"), [("tdpo1", True), ("tdpo2", False)])
def test_tdpo2_stops_the_gradient_of_the_chosen_kl(variant, chosen_kl_has_grad):
    kl = KL.clone().requires_grad_(True)
    policy = LogLik(POLICY, MASK, extras={"token_kl": kl})
    get_objective("tdpo", variant=variant)(policy, LogLik(REFERENCE, MASK), PREFS).loss.backward()
    assert (kl.grad[0, 1].abs().sum() > 0) == chosen_kl_has_grad
    assert (kl.grad[0, 0, :2] > 0).all()  # a larger KL on the rejected response costs
    assert kl.grad[0, 0, 2] == 0  # padding


# SparsePO masks for the pair above: rejected [1.0, 0.5], chosen [0.5, 2.0, 1.0]; sum over real tokens 5.
# u-part: chosen 0.25 - 1 + 1 = 0.25, rejected 0.5 - 0.5 = 0; KL part: chosen 0.225, rejected 0.25.
MASKS = torch.tensor([[[1.0, 0.5, PAD], [0.5, 2.0, 1.0]]])
ONES = torch.ones(1, 2, 3)


def test_sparsepo_with_one_learned_mask_halves_both_l1_terms():
    out = loss("sparsepo", {"mask": MASKS}, beta=0.5, l1_u=0.1, l1_d=0.2)
    expected = softplus(-0.5 * ((0.25 + 0.225) - (0.0 + 0.25))) + 0.5 * (0.1 * 5 + 0.2 * 5)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5 * 0.475)
    assert out.metrics["mask/mean"].item() == pytest.approx(5 / 5)
    assert out.metrics["mask/sparsity"].item() == 0.0


def test_sparsepo_with_independent_masks():
    out = loss("sparsepo", {"mask_u": MASKS, "mask_d": ONES}, beta=0.5, independent=True, l1_u=0.1, l1_d=0.2)
    expected = softplus(-0.5 * ((0.25 + 0.2) - (0.0 + 0.3))) + 0.1 * 5 + 0.2 * 5
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_sparsepo_masks_derived_from_reference_activations():
    # two layers; rejected: [1, 3] -> [0, 1] and constant [2, 2] -> [1, 1], mean [0.5, 1];
    # chosen: [0, 1, 2] -> [0, .5, 1] and [3, 1, 2] -> [1, 0, .5], mean [0.5, 0.25, 0.75]
    means = torch.tensor([[[[1.0, 2.0], [3.0, 2.0], [-50.0, 80.0]], [[0.0, 3.0], [1.0, 1.0], [2.0, 2.0]]]])
    mask = rescaled_activations(means, MASK)
    torch.testing.assert_close(mask, torch.tensor([[[0.5, 1.0, 0.0], [0.5, 0.25, 0.75]]]))
    out = loss("sparsepo", reference_extras={"layer_means": means}, beta=0.5, mask="reference", l1_u=1.0)
    chosen = (0.25 - 0.125 + 0.75) + (0.025 + 0.0125 + 0.075)
    rejected = (0.25 - 1.0) + (0.1 + 0.1)
    assert out.loss.item() == pytest.approx(softplus(-0.5 * (chosen - rejected)), rel=1e-6)  # no L1 on a fixed rule
    assert "mask/mean" not in out.metrics


def test_sparsepo_with_every_mask_one_is_tdpo1():
    g = torch.Generator().manual_seed(0)
    policy, reference = -torch.rand(6, 2, 5, generator=g), -torch.rand(6, 2, 5, generator=g)
    mask = torch.arange(5) < torch.randint(1, 6, (6, 2, 1), generator=g)
    kl = torch.rand(6, 2, 5, generator=g)
    prefs = Preferences(ranks=torch.stack([torch.randperm(2, generator=g) for _ in range(6)]))
    sparse = get_objective("sparsepo", beta=0.3)(
        LogLik(policy, mask, extras={"token_kl": kl, "mask": torch.ones(6, 2, 5)}), LogLik(reference, mask), prefs
    )
    tdpo1 = get_objective("tdpo", beta=0.3, variant="tdpo1")(
        LogLik(policy, mask, extras={"token_kl": kl}), LogLik(reference, mask), prefs
    )
    torch.testing.assert_close(sparse.losses, tdpo1.losses)
    for name, value in tdpo1.metrics.items():
        torch.testing.assert_close(sparse.metrics[name], value)


def test_reference_mask_rule_ignores_padding_and_gives_constant_maps_one():
    means = torch.tensor([[[[4.0], [4.0], [-7.0]], [[2.0], [5.0], [3.5]]]])
    torch.testing.assert_close(rescaled_activations(means, MASK), torch.tensor([[[1.0, 1.0, 0.0], [0.0, 1.0, 0.5]]]))


def test_tgdpo_weighs_each_token_by_the_guidance_reward():
    # guidance - reference: rejected [0.5, -0.5], chosen [0.5, -0.5, 1.0]; alpha * beta = 0.25
    guidance = torch.tensor([[[-1.0, -1.5, 5.0], [-0.5, -1.5, -1.0]]])
    out = loss("tgdpo", reference_extras={"guidance": guidance}, beta=0.5, alpha=0.5)
    chosen = 0.5 * (1.125 * 0.5 + 0.875 * -0.5 + 1.25 * 1.0)
    rejected = 0.5 * (0.875 * 0.5 + 1.125 * -1.0)
    assert out.loss.item() == pytest.approx(softplus(-(chosen - rejected)), rel=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.5)  # beta r, as the official code logs it


def test_tgdpo_does_not_train_through_the_guidance_reward():
    guidance = torch.zeros(1, 2, 3, requires_grad=True)
    policy = POLICY.clone().requires_grad_(True)
    out = get_objective("tgdpo")(LogLik(policy, MASK), LogLik(REFERENCE, MASK, extras={"guidance": guidance}), PREFS)
    out.loss.backward()
    assert guidance.grad is None and policy.grad.abs().sum() > 0


def test_step_dpo_scores_the_first_step_after_the_shared_prefix_only():
    steps = torch.tensor([[[0, 1, 0], [0, 0, 1]]])  # rejected: step 0 = token 0; chosen: tokens 0 and 1
    out = loss("step_dpo", {"step_index": steps}, beta=0.5)
    assert out.loss.item() == pytest.approx(softplus(-0.5 * ((0.5 - 0.5) - 0.5)), rel=1e-6)
    assert out.metrics["logps/chosen"].item() == pytest.approx(-2.0)
    whole = loss("step_dpo", {"step_index": torch.zeros(1, 2, 3, dtype=torch.long)}, beta=0.5)
    assert whole.loss.item() == pytest.approx(loss("dpo", beta=0.5).loss.item())  # one step each: DPO


@pytest.mark.parametrize(
    ("name", "hparams", "missing"),
    [
        ("tdpo", {}, "'token_kl'"),
        ("sparsepo", {}, "'mask'"),
        ("sparsepo", {"independent": True}, "'mask_u'"),
        ("sparsepo", {"mask": "reference"}, "'layer_means'"),
        ("tgdpo", {}, "'guidance'"),
        ("step_dpo", {}, "'step_index'"),
    ],
)
def test_missing_extras_are_named(name, hparams, missing):
    extras = {"token_kl": KL} if name == "sparsepo" else {}
    with pytest.raises(ValueError, match=f"objective {name} needs per-token {missing}"):
        get_objective(name, **hparams)(LogLik(POLICY, MASK, extras=extras), LogLik(REFERENCE, MASK), PREFS)


def test_bad_options_say_what_to_use():
    with pytest.raises(ValueError, match="tdpo1 or tdpo2"):
        loss("tdpo", variant="tdpo3")
    with pytest.raises(ValueError, match="objective.mask=learned"):
        loss("sparsepo", mask="reference", independent=True)
    with pytest.raises(ValueError, match="learned or reference"):
        loss("sparsepo", mask="random")
    with pytest.raises(ValueError, match="per-token"):
        get_objective("tdpo")(LogLik(torch.zeros(1, 2)), LogLik(torch.zeros(1, 2)), PREFS)


def test_each_objective_asks_only_for_what_it_reads():
    assert get_objective("dpo").extras == frozenset()
    assert get_objective("tdpo").extras == {"token_kl"}
    assert get_objective("sparsepo").extras == {"token_kl", "mask"}
    assert get_objective("sparsepo", independent=True).extras == {"token_kl", "mask_u", "mask_d"}
    assert get_objective("sparsepo", mask="reference").extras == {"token_kl", "layer_means"}
    assert get_objective("tgdpo").extras == {"guidance"}
    assert get_objective("step_dpo").extras == {"step_index"}
    assert get_objective("kto").extras == {"mismatched"} and get_objective("apo_zero_unpaired").extras == frozenset()
    assert get_objective("dpo", wpo=True).extras == {"wpo_logp"}


def test_defaults_follow_the_official_code():
    assert hyperparameters("tdpo") == {"beta": 0.1, "alpha": 0.5, "variant": "tdpo2"}
    assert hyperparameters("sparsepo") == {
        "beta": 0.1, "mask": "learned", "independent": False, "l1_u": 0.0, "l1_d": 0.0,
    }  # fmt: skip
    assert hyperparameters("tgdpo") == {"beta": 0.1, "alpha": 0.5}
    assert hyperparameters("step_dpo") == {"beta": 0.5}
