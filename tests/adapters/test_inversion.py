"""DDIM inversion (InPO, SmPO's ReNoise): it lands on t, inverts, matches diffusers' step, and is shared per group."""

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from mmdpo.adapters.latent_diffusion.families.sd15 import SD15
from mmdpo.adapters.latent_diffusion.inversion import ddim_invert, ddim_move, implied_noise, posterior_std
from mmdpo.adapters.latent_diffusion.noising import NoiseDraw, Noising, noise_latents

TINY = SD15().tiny()
UNET, SCHEDULER = TINY.denoiser.eval(), TINY.scheduler
ALPHAS = SCHEDULER.alphas_cumprod


def unet_denoise(x, t, encoder_hidden_states):
    return UNET(x, t, encoder_hidden_states=encoder_hidden_states).sample


def no_noise(x, t, **_):
    return torch.zeros_like(x)


def path(t: int, steps: int) -> list[int]:
    stride = 1000 // steps
    return [-1] + [level for level in range(stride, 1000, stride) if level < t] + [t]


def denoise_back(x_t, timesteps, steps, text):
    """DDIM from each x_t down the same levels to the clean latent, the model evaluated where each move starts."""
    out = []
    for i, t in enumerate(timesteps.tolist()):
        levels = path(t, steps)[::-1]
        x = x_t[i : i + 1]
        for d, c in zip(levels[:-1], levels[1:]):
            with torch.no_grad():
                eps = unet_denoise(x, torch.tensor([d]), text[i : i + 1])
            x = ddim_move(x, eps, ALPHAS[d : d + 1], torch.ones(1) if c < 0 else ALPHAS[c : c + 1])
        out.append(x)
    return torch.cat(out)


def relative_error(a, b):
    return ((a - b).flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1)).tolist()


def test_a_model_predicting_no_noise_lands_exactly_on_each_timestep():
    x0 = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 99, 100, 999])  # one batch, every latent to its own level, the grid's edges included
    x_t = ddim_invert(no_noise, x0, t, SCHEDULER, steps=10)
    torch.testing.assert_close(x_t, ALPHAS[t].sqrt().view(-1, 1, 1, 1) * x0)
    torch.testing.assert_close(implied_noise(x_t, x0, t, SCHEDULER), torch.zeros_like(x0), atol=1e-5, rtol=0)


def test_inpo_noise_is_the_posterior_std_of_each_move_by_hand():
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    z = torch.randn(10, 1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    t = 150  # two moves: clean -> 100 (no noise from the clean latent) -> 150
    x_t = ddim_invert(no_noise, x0, torch.tensor([t]), SCHEDULER, steps=10, eta=0.1, step_noise=z)
    a100, a150 = ALPHAS[100].item(), ALPHAS[t].item()
    sigma = math.sqrt((1 - a100) / (1 - a150) * (1 - a150 / a100))
    expected = math.sqrt(a150 / a100) * (math.sqrt(a100) * x0) + 0.1 * sigma * z[1]
    torch.testing.assert_close(x_t, expected)
    assert posterior_std(torch.ones(1), ALPHAS[100:101]).item() == 0.0


@pytest.mark.parametrize("renoise", [False, True])
def test_the_model_runs_once_per_move_on_the_latents_still_moving(renoise):
    calls = []

    def counting(x, t, **_):
        calls.append(len(t))
        return torch.zeros_like(x)

    ddim_invert(counting, torch.zeros(3, 4, 8, 8), torch.tensor([5, 250, 999]), SCHEDULER, steps=10, renoise=renoise)
    per_move = [3, 2, 2, 1, 1, 1, 1, 1, 1, 1]  # t=5: one move; t=250: three; t=999: ten
    assert calls == ([n for n in per_move for _ in range(2)] if renoise else per_move)


def test_a_move_matches_diffusers_ddim_inverse_and_ddim_steps():
    g = torch.Generator().manual_seed(3)
    x, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    inverse = DDIMInverseScheduler.from_config(SCHEDULER.config, steps_offset=1)
    inverse.set_timesteps(10)  # timesteps 1, 101, ...; the step at 201 moves from level 101 to 201
    ours = ddim_move(x, eps, ALPHAS[101].expand(2), ALPHAS[201].expand(2))
    torch.testing.assert_close(ours, inverse.step(eps, 201, x).prev_sample)
    forward = DDIMScheduler.from_config(SCHEDULER.config, steps_offset=1, set_alpha_to_one=False)
    forward.set_timesteps(10)  # the step at 201 moves down to level 101
    torch.testing.assert_close(
        ddim_move(x, eps, ALPHAS[201].expand(2), ALPHAS[101].expand(2)), forward.step(eps, 201, x).prev_sample
    )


def test_invert_then_denoise_returns_the_latent_and_renoise_inverts_better():
    g = torch.Generator().manual_seed(4)
    x0, text = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 77, 8, generator=g)
    t = torch.tensor([10, 250, 500])
    errors = {}
    for steps, renoise in [(10, False), (10, True), (50, False)]:
        x_t = ddim_invert(unet_denoise, x0, t, SCHEDULER, steps=steps, renoise=renoise, encoder_hidden_states=text)
        errors[steps, renoise] = relative_error(denoise_back(x_t, t, steps, text), x0)
    assert max(errors[10, False]) < 0.08
    assert all(r < p for r, p in zip(errors[10, True], errors[10, False]))  # ReNoise: closer to the fixed point
    assert errors[50, False][0] == errors[10, False][0]  # t = 10: one move on either grid
    assert all(f < p for f, p in zip(errors[50, False][1:], errors[10, False][1:]))  # finer grid: closer


@pytest.mark.parametrize("kind", ["ddim_inversion", "renoise_inversion"])
def test_candidates_of_a_group_share_the_inversion_and_groups_differ(kind):
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(3, 1, 4, 8, 8, generator=g).expand(-1, 2, -1, -1, -1)  # identical candidates per group
    text = torch.randn(3, 77, 8, generator=g)
    noising = Noising(kind, steps=5, eta=0.1)
    draw = NoiseDraw(torch.tensor([120, 480, 800]), torch.randn(3, 4, 8, 8), torch.randn(5, 3, 4, 8, 8))
    noised = noise_latents(latents, SCHEDULER, draw, noising, unet_denoise, encoder_hidden_states=text)
    x_t, target = noised.x_t.view(3, 2, -1), noised.target.view(3, 2, -1)
    torch.testing.assert_close(x_t[:, 0], x_t[:, 1])
    torch.testing.assert_close(target[:, 0], target[:, 1])
    assert not torch.allclose(x_t[0, 0], x_t[1, 0])
    # x_t is the forward noising of x0 with the target noise, at the group's own timestep
    eps = target.view_as(noised.x_t)
    torch.testing.assert_close(SCHEDULER.add_noise(latents.flatten(0, 1), eps, noised.timesteps), noised.x_t)
