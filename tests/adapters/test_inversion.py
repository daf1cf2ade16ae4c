"""DDIM inversion (InPO, SmPO's ReNoise): it lands on t, inverts, matches diffusers' step, and is shared per group;
the official walk replays the official InPO/SmPO loop."""

import math

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler

from mmdpo.adapters.latent_diffusion.families.sd15 import SD15
from mmdpo.adapters.latent_diffusion.inversion import ddim_invert, ddim_move, implied_noise, posterior_std
from mmdpo.adapters.latent_diffusion.noising import NoiseDraw, Noising, draw_noise, noise_latents
from mmdpo.adapters.latent_diffusion.randomness import group_generators
from mmdpo.config import ConfigError, load_config

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


def test_a_grid_whose_stride_does_not_divide_the_schedule_gets_step_noise_for_its_extra_move():
    latents = torch.randn(1, 2, 4, 8, 8, generator=torch.Generator().manual_seed(10))
    noising = Noising("ddim_inversion", steps=7, eta=0.1)  # stride 142: t = 999 takes 8 moves, the last from 994
    z = draw_noise(latents, 1000, torch.Generator().manual_seed(11), noising).step_noise
    assert z.shape == (8, 1, 4, 8, 8)
    without_last = z.clone()
    without_last[7] = 0
    x_t, x_t_without_last = (
        noise_latents(latents, SCHEDULER, NoiseDraw(torch.tensor([999]), z[0], noise), noising, no_noise).x_t
        for noise in (z, without_last)
    )
    sigma = math.sqrt((1 - ALPHAS[994]) / (1 - ALPHAS[999]) * (1 - ALPHAS[999] / ALPHAS[994]))
    torch.testing.assert_close(x_t - x_t_without_last, 0.1 * sigma * z[7].expand(2, -1, -1, -1))


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


# --- the official walk ---------------------------------------------------------------------------------------------

SD15_SCHEDULER = {  # SD1.5's scheduler_config.json, as the official code reads it (SDXL's differs only in its class)
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "steps_offset": 1, "clip_sample": False,
}  # fmt: skip


class PinnedDDIMInverseScheduler(DDIMInverseScheduler):
    """``DDIMInverseScheduler`` as diffusers 0.20 (the version the official InPO and SmPO code pins) sets and steps
    it: its timesteps are today's one step lower (-99, 1, ..., 801 for 10 leading steps from 1) and its step at s
    moves from level s to s + T // steps, which is today's step at s + T // steps (checked against 0.20's class)."""

    def set_timesteps(self, num_inference_steps, device=None):
        super().set_timesteps(num_inference_steps, device)
        self.timesteps = self.timesteps - self.config.num_train_timesteps // num_inference_steps

    def step(self, model_output, timestep, sample):
        return super().step(
            model_output, timestep + self.config.num_train_timesteps // self.num_inference_steps, sample
        )


W = torch.randn(64, 64, generator=torch.Generator().manual_seed(6)) / 8


def toy_denoiser(x, t, text):
    """A fixed random linear map of the latent, shifted by the timestep and the condition."""
    return (x.flatten(1) @ W).view_as(x) + t.float().view(-1, 1, 1, 1) / 1000 + text.view(-1, 1, 1, 1)


def official_loop(scheduler, latents, t, text, steps, eta, renoise, noises):
    """InPO's train.py inversion (SmPO's with ``renoise``) for one batch at timestep t, its ``torch.randn_like``
    draws given as ``noises[i]``: x_t and the target noise."""
    inverse_scheduler = PinnedDDIMInverseScheduler.from_config(scheduler.config)
    noise_scheduler = DDIMScheduler.from_config(scheduler.config)
    inverse_scheduler.set_timesteps(steps)
    noisy_latents, bsz = latents.clone(), latents.shape[0]
    times = inverse_scheduler.timesteps[inverse_scheduler.timesteps < t]
    for i, s in enumerate(times):
        noise_pred = toy_denoiser(noisy_latents, s.repeat([bsz]), text)
        if renoise:
            noisy_latents_1 = inverse_scheduler.step(noise_pred, s, noisy_latents).prev_sample
            noise_pred = (noise_pred + toy_denoiser(noisy_latents_1, s.repeat([bsz]), text)) / 2
        noisy_latents = inverse_scheduler.step(noise_pred, s, noisy_latents).prev_sample
        prev_t = s + inverse_scheduler.config.num_train_timesteps // inverse_scheduler.num_inference_steps
        variance = noise_scheduler._get_variance(prev_t, s) ** (0.5)
        noisy_latents += eta * noises[i] * variance
    alpha_prod_t = noise_scheduler.alphas_cumprod[t]
    return noisy_latents, (noisy_latents - latents * alpha_prod_t ** (0.5)) / ((1 - alpha_prod_t) ** (0.5))


@pytest.mark.parametrize(
    ("kind", "steps", "eta", "settings"),
    [
        ("ddim_inversion", 10, 0.1, {}),  # InPO
        ("renoise_inversion", 5, 0.0, {}),  # SmPO on SD1.5
        ("renoise_inversion", 10, 0.1, {"timestep_spacing": "trailing"}),
        ("ddim_inversion", 10, 0.1, {"prediction_type": "v_prediction", "set_alpha_to_one": True}),
    ],
)
def test_the_official_walk_replays_the_official_loop_step_for_step(kind, steps, eta, settings):
    scheduler = DDPMScheduler.from_config({**SD15_SCHEDULER, **settings})
    g = torch.Generator().manual_seed(7)
    timesteps = torch.tensor([0, 1, 2, 101, 150, 901, 902, 999])  # the grid's edges and beyond its top
    latents, text = torch.randn(8, 2, 4, 4, 4, generator=g), torch.randn(8, generator=g)
    step_noise = torch.randn(steps, 8, 2, 4, 4, 4, generator=g)  # one per image, as the official randn_like
    draw = NoiseDraw(timesteps, torch.randn(8, 4, 4, 4, generator=g), step_noise)
    noising = Noising(kind, steps=steps, eta=eta, walk="official")
    noised = noise_latents(latents, scheduler, draw, noising, toy_denoiser, text=text)
    for b, t in enumerate(timesteps.tolist()):
        x_t, noise = official_loop(
            scheduler, latents[b], t, text[b].expand(2), steps, eta, kind == "renoise_inversion", step_noise[:, b]
        )
        torch.testing.assert_close(noised.x_t[2 * b : 2 * b + 2], x_t, atol=1e-5, rtol=1e-5)
        target = (
            noise
            if scheduler.config.prediction_type == "epsilon"
            else scheduler.get_velocity(latents[b], noise, torch.tensor([t, t]))
        )
        torch.testing.assert_close(noised.target[2 * b : 2 * b + 2], target, atol=1e-5, rtol=1e-5)


def test_the_official_walk_stops_on_the_grid_level_at_or_above_t():
    scheduler = DDPMScheduler.from_config(SD15_SCHEDULER)
    alphas = scheduler.alphas_cumprod
    x0 = torch.randn(6, 4, 8, 8, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([0, 1, 2, 101, 150, 950])
    reached = torch.tensor([1, 1, 101, 101, 201, 901])  # grid 1, 101, ..., 901; the top one for t above it
    x_t = ddim_invert(no_noise, x0, t, scheduler, steps=10, walk="official")
    # a model predicting no noise scales x0 by sqrt(a_reached / a_start), starting at alphas_cumprod[0]
    torch.testing.assert_close(x_t, (alphas[reached] / alphas[0]).sqrt().view(-1, 1, 1, 1) * x0)
    landing = ddim_invert(no_noise, x0, t, scheduler, steps=10)
    torch.testing.assert_close(landing, alphas[t].sqrt().view(-1, 1, 1, 1) * x0)


def test_the_official_walk_tells_the_model_the_level_each_step_starts_from():
    told = []

    def recording(x, t, **_):
        told.append(t.tolist())
        return torch.zeros_like(x)

    ddim_invert(recording, torch.zeros(2, 4, 8, 8), torch.tensor([250, 150]), SCHEDULER, steps=10, walk="official")
    assert told == [[-99, -99], [1, 1], [101, 101], [201]]
    told.clear()
    ddim_invert(recording, torch.zeros(2, 4, 8, 8), torch.tensor([250, 150]), SCHEDULER, steps=10)
    assert told == [[100, 100], [200, 150], [250]]


def test_official_step_noise_is_drawn_per_image_from_each_groups_generator():
    latents = torch.randn(3, 1, 4, 8, 8, generator=torch.Generator().manual_seed(9)).expand(-1, 2, -1, -1, -1)
    official = Noising("ddim_inversion", steps=4, eta=0.1, walk="official")

    def draw(seeds, noising=official):
        return draw_noise(
            latents[: len(seeds)], 1000, group_generators(torch.tensor(seeds), torch.device("cpu")), noising
        )

    drawn = draw([1, 2, 3])
    assert drawn.step_noise.shape == (4, 3, 2, 4, 8, 8)
    torch.testing.assert_close(draw([2]).step_noise[:, 0], drawn.step_noise[:, 1])  # whatever batch the group is in
    shared = draw([1, 2, 3], Noising("ddim_inversion", steps=4, eta=0.1))
    assert shared.step_noise.shape == (4, 3, 4, 8, 8)
    torch.testing.assert_close(shared.timesteps, drawn.timesteps)
    noised = noise_latents(latents, SCHEDULER, drawn, official, no_noise)
    x_t = noised.x_t.view(3, 2, -1)
    assert not torch.allclose(x_t[:, 0], x_t[:, 1])  # identical candidates, their own step noise


def test_the_walk_is_a_noising_field_of_the_config():
    def noising(*overrides):
        return load_config(None, ["model.path=tiny:sd15", "data.path=x", *overrides]).model.noising

    assert noising().walk == "landing"
    assert noising("model.noising={kind: ddim_inversion, walk: official}").walk == "official"
    with pytest.raises(ConfigError, match="walk"):
        noising("model.noising.walk=offical")


def test_the_adapter_walks_as_the_config_says(tmp_path):
    from mmdpo.adapters.base import BuildContext
    from mmdpo.adapters.text_to_image import TextToImageAdapter
    from mmdpo.objectives import get_objective

    overrides = ["model.path=tiny:sd15", "data.path=x", "model.noising={kind: ddim_inversion, walk: official}"]
    config = load_config(None, [*overrides, f"train.output_dir={tmp_path}", "data.encode_cache=off"])
    adapter = TextToImageAdapter.from_config(config, BuildContext(get_objective("dpo"), "copy", None, None))
    assert adapter.noising.walk == "official"
