"""The diffusion log-likelihood estimator on a tiny SD-like UNet."""

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig

from mmdpo.adapters.latent_diffusion.estimator import denoising_loglik
from mmdpo.adapters.latent_diffusion.noising import draw_noise, noise_latents
from mmdpo.adapters.latent_diffusion.randomness import drop_conditions
from mmdpo.adapters.reference import adapter_disabled
from mmdpo.objectives import LogLik, Preferences, get_objective


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=8, norm_num_groups=2,
    )  # fmt: skip


def scheduler(prediction_type="epsilon"):
    return DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type=prediction_type
    )


def denoiser(unet):
    return lambda x, t, encoder_hidden_states: unet(x, t, encoder_hidden_states=encoder_hidden_states).sample


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 2, 4, 8, 8, generator=g), torch.randn(3, 5, 8, generator=g)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_matches_the_diffusers_training_loss(batch, prediction_type):
    latents, text = batch
    unet, sched = tiny_unet(), scheduler(prediction_type)
    draw = draw_noise(latents, 1000, torch.Generator().manual_seed(2))
    loglik = denoising_loglik(denoiser(unet), noise_latents(latents, sched, draw), encoder_hidden_states=text)
    for g in range(3):
        for k in range(2):
            x0, t = latents[g, k : k + 1], draw.timesteps[g : g + 1]
            x_t = sched.add_noise(x0, draw.noise[g : g + 1], t)
            target = (
                draw.noise[g : g + 1]
                if prediction_type == "epsilon"
                else sched.get_velocity(x0, draw.noise[g : g + 1], t)
            )
            pred = unet(x_t, t, encoder_hidden_states=text[g : g + 1]).sample
            expected = -0.5 * F.mse_loss(pred, target)
            torch.testing.assert_close(loglik.values[g, k], expected, atol=1e-6, rtol=1e-5)


def test_noise_and_timestep_are_shared_within_a_group_and_differ_across_groups(batch):
    latents, text = batch
    same = latents[:, :1].expand(-1, 2, -1, -1, -1)  # both candidates of each group identical
    draw = draw_noise(same, 1000, torch.Generator().manual_seed(3))
    assert draw.timesteps.shape == (3,) and draw.noise.shape == (3, 4, 8, 8)
    loglik = denoising_loglik(denoiser(tiny_unet()), noise_latents(same, scheduler(), draw), encoder_hidden_states=text)
    torch.testing.assert_close(loglik.values[:, 0], loglik.values[:, 1])
    assert len(set(draw.timesteps.tolist())) > 1 and not torch.allclose(draw.noise[0], draw.noise[1])
    again = draw_noise(same, 1000, torch.Generator().manual_seed(3))  # a seeded generator reproduces the draw
    assert torch.equal(again.timesteps, draw.timesteps) and torch.equal(again.noise, draw.noise)


def test_lora_disabled_reference_gives_ln2_then_learns_a_margin(batch):
    latents, text = batch
    unet, sched = tiny_unet(), scheduler()
    unet.add_adapter(
        LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    )
    draw = draw_noise(latents, 1000, torch.Generator().manual_seed(4))
    prefs = Preferences(ranks=torch.tensor([[0, 1]] * 3))
    dpo = get_objective("dpo", beta=5000.0)

    def score():
        with torch.no_grad(), adapter_disabled(unet):
            reference = denoising_loglik(
                denoiser(unet), noise_latents(latents, sched, draw), encoder_hidden_states=text
            )
        return denoising_loglik(
            denoiser(unet), noise_latents(latents, sched, draw), encoder_hidden_states=text
        ), reference

    policy, reference = score()
    out = dpo(policy, reference, prefs)
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert out.metrics["rewards/accuracies"].item() == 0.5
    optimizer = torch.optim.SGD([p for p in unet.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(5):
        optimizer.zero_grad()
        policy, reference = score()
        dpo(policy, reference, prefs).loss.backward()
        optimizer.step()
    policy, reference = score()
    trained = dpo(policy, reference, prefs)
    assert trained.loss.item() < math.log(2) and trained.metrics["rewards/margins"].item() > 0


def test_beta_5000_reproduces_the_official_and_the_diffusers_sd15_losses():
    g = torch.Generator().manual_seed(5)
    err_policy, err_reference = torch.rand(4, 2, generator=g), torch.rand(4, 2, generator=g)  # per-sample MSE
    ours = get_objective("dpo", beta=5000.0)(
        LogLik(-0.5 * err_policy), LogLik(-0.5 * err_reference), Preferences(ranks=torch.tensor([[0, 1]] * 4))
    ).losses
    model_diff, ref_diff = err_policy[:, 0] - err_policy[:, 1], err_reference[:, 0] - err_reference[:, 1]
    official = -F.logsigmoid(-0.5 * 5000 * (model_diff - ref_diff))  # Diffusion-DPO / diffusers SDXL script
    sd15_script = -F.logsigmoid(2500 * (ref_diff - model_diff))  # diffusers SD1.5 script, beta_dpo=2500
    torch.testing.assert_close(ours, official)
    torch.testing.assert_close(ours, sd15_script)


def test_prompt_dropout_is_decided_per_group():
    conditions = {"encoder_hidden_states": torch.ones(64, 5, 8), "text_embeds": torch.ones(64, 3)}
    empty = {"encoder_hidden_states": torch.zeros(1, 5, 8), "text_embeds": torch.zeros(1, 3)}
    dropped = drop_conditions(conditions, empty, 0.5, torch.Generator().manual_seed(6))
    states, pooled = dropped["encoder_hidden_states"].flatten(1), dropped["text_embeds"]
    assert ((states == 0).all(1) | (states == 1).all(1)).all()  # whole groups, never parts
    assert torch.equal((states == 0).all(1), (pooled == 0).all(1))  # every condition of a group drops together
    assert 10 < int((states == 0).all(1).sum()) < 54
    assert drop_conditions(conditions, empty, 0.0) is conditions
