"""The text-to-image adapter on tiny SD1.5- and SDXL-like models built in memory."""

import math

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from mmdpo.adapters.latent_diffusion.batch import LatentBatch
from mmdpo.adapters.latent_diffusion.latents import encode_moments
from mmdpo.adapters.latent_diffusion.model import add_lora, use_xformers
from mmdpo.adapters.latent_diffusion.noising import Noising
from mmdpo.adapters.latent_diffusion.randomness import group_seeds
from mmdpo.adapters.text_to_image import ImageMedia, TextToImageAdapter, load_text_to_image
from mmdpo.config import LoraSection
from mmdpo.objectives import Preferences, get_objective

PROMPTS = ["a red circle", "a blue square on green"]


def adapter(kind="sd15", reference="copy", lora=False, **options):
    model = load_text_to_image(f"tiny:{kind}")
    if lora:
        add_lora(model.denoiser, LoraSection(r=4, alpha=4), model.family.lora_targets)
    return TextToImageAdapter(model, reference=reference, media=ImageMedia(16), **options)


def image_batch(ad, k=2, prompts=PROMPTS, seed=0, time_ids=None):
    g = torch.Generator().manual_seed(seed)
    b = len(prompts)
    return LatentBatch(
        prefs=Preferences(ranks=torch.tensor([[0, 1]] * b)),
        media=torch.rand(b, k, 3, 16, 16, generator=g) * 2 - 1,
        input_ids=ad.model.family.tokenize(ad.model.tokenizers, prompts),
        extra={"time_ids": time_ids if time_ids is not None else torch.tensor([[16.0, 16, 0, 0, 16, 16]] * b)}
        if ad.model.family.name == "sdxl"
        else {},
    )


def score(ad, batch, seed=0):
    inputs = ad.inputs(batch, torch.Generator().manual_seed(seed))
    reference = ad.reference(batch, inputs)
    return ad.policy_loglik(ad.scorer, batch, inputs, reference), reference.loglik, inputs


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_prompt_encoding_matches_the_diffusers_pipeline(kind):
    ad = adapter(kind)
    ours = ad.model.encode_prompts(PROMPTS)
    theirs = ad.pipeline().encode_prompt(
        PROMPTS, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    torch.testing.assert_close(ours["encoder_hidden_states"], theirs[0])
    if kind == "sdxl":
        torch.testing.assert_close(ours["text_embeds"], theirs[2])  # the second encoder's pooled projection
        assert ours["encoder_hidden_states"].shape[-1] == ad.model.denoiser.config.cross_attention_dim


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_both_families_score_the_elbo_surrogate_of_their_unet_call(kind):
    """-0.5 * mean((unet(x_t, t, conditions) - target)^2) per candidate, the UNet called as each family's diffusers
    pipeline calls it: SD1.5 with the text states only, SDXL with its pooled embeddings and time ids too."""
    ad = adapter(kind)
    policy, _, inputs = score(ad, image_batch(ad))
    noised = inputs["noised"]
    per_candidate = {name: value.repeat_interleave(2, dim=0) for name, value in inputs.items() if name != "noised"}
    states = per_candidate.pop("encoder_hidden_states")
    added = per_candidate if kind == "sdxl" else None
    assert sorted(per_candidate) == (["text_embeds", "time_ids"] if kind == "sdxl" else [])
    with torch.no_grad():
        prediction = ad.model.denoiser(noised.x_t, noised.timesteps, states, added_cond_kwargs=added).sample
    expected = -0.5 * (prediction - noised.target).square().mean(dim=(1, 2, 3)).view(2, 2)
    torch.testing.assert_close(policy.values.detach(), expected)


@pytest.mark.parametrize(("kind", "reference", "lora"), [("sd15", "copy", False), ("sdxl", "adapter", True)])
def test_policy_equal_to_reference_gives_ln2_and_half_accuracy(kind, reference, lora):
    ad = adapter(kind, reference=reference, lora=lora)
    batch = image_batch(ad)
    policy, ref, _ = score(ad, batch)
    out = get_objective("dpo", beta=5000.0)(policy, ref, batch.prefs)
    if reference == "adapter":  # the same module with its adapter off: exactly equal
        assert math.isclose(out.loss.item(), math.log(2), abs_tol=1e-7)
        assert out.metrics["rewards/accuracies"].item() == 0.5
    else:  # a frozen copy in eval mode runs other fp32 kernels than the training-mode policy: rounding only
        assert (policy.values - ref.values).abs().max() < 1e-6
        assert math.isclose(out.loss.item(), math.log(2), abs_tol=1e-3)
    out.loss.backward()
    trained = [p for p in ad.scorer.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_gradient_checkpointing_recomputes_the_policy_with_its_adapter_on():
    """The disabled-adapter reference runs before the policy, so checkpointed recomputation in backward sees the
    LoRA weights switched on: the loss and the LoRA gradients equal those without checkpointing."""
    runs = []
    for checkpointing in (False, True):
        ad = adapter("sdxl", reference="adapter", lora=True)
        torch.manual_seed(0)
        for name, param in ad.model.denoiser.named_parameters():
            if "lora_B" in name:  # a trained adapter: the policy differs from the reference
                param.data.normal_(std=0.05)
        if checkpointing:
            ad.model.denoiser.enable_gradient_checkpointing()
        ad.model.denoiser.train()
        policy, ref, _ = score(ad, image_batch(ad))
        loss = get_objective("dpo", beta=5000.0)(policy, ref, Preferences(ranks=torch.tensor([[0, 1]] * 2))).loss
        loss.backward()
        grads = {n: p.grad.clone() for n, p in ad.model.denoiser.named_parameters() if p.requires_grad}
        runs.append((loss.detach(), grads))
    (loss, grads), (loss_gc, grads_gc) = runs
    assert abs(loss.item() - math.log(2)) > 1e-4
    torch.testing.assert_close(loss_gc, loss)
    assert grads.keys() == grads_gc.keys() and all(grads[n].abs().sum() > 0 for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_gc[name], grads[name], rtol=1e-4, atol=1e-7)


def test_candidates_of_a_group_share_timestep_noise_and_dropout():
    ad = adapter(prompt_dropout=0.5, sample_latents=False)  # posterior means: identical images, identical latents
    batch = image_batch(ad, prompts=PROMPTS * 4)
    batch.media[:, 1] = batch.media[:, 0]  # identical candidates must get identical estimates
    policy, _, inputs = score(ad, batch)
    torch.testing.assert_close(policy.values[:, 0], policy.values[:, 1])
    t = inputs["noised"].timesteps.view(8, 2)
    assert torch.equal(t[:, 0], t[:, 1]) and len(set(t[:, 0].tolist())) > 1
    again, _, _ = score(ad, batch)  # a seeded generator reproduces everything
    torch.testing.assert_close(again.values, policy.values)


@pytest.mark.parametrize("noising", [Noising(), Noising("ddim_inversion", steps=2, eta=0.1)])
def test_a_groups_randomness_comes_from_its_own_seed_whatever_its_batch(noising):
    """As the trainer runs: posterior sample, prompt dropout, timestep, noise and InPO's step noise of a group are
    drawn from its seed alone, so the group gets the same x_t in a batch of four or alone, and the same again."""
    ad = adapter("sdxl", prompt_dropout=0.5, noising=noising)
    prompts = ["a red circle", "a blue square", "a green cat", "a tall tree"]
    whole = image_batch(ad, prompts=prompts)
    whole.group_seeds = torch.tensor([11, 12, 13, 14])
    noised = ad.inputs(whole)["noised"]
    for index in range(4):
        alone = image_batch(ad, prompts=prompts[index : index + 1])
        alone.media, alone.group_seeds = whole.media[index : index + 1], whole.group_seeds[index : index + 1]
        single = ad.inputs(alone)["noised"]
        torch.testing.assert_close(single.timesteps, noised.timesteps[2 * index : 2 * index + 2])
        torch.testing.assert_close(single.x_t, noised.x_t[2 * index : 2 * index + 2], atol=1e-5, rtol=1e-4)
    assert len(set(noised.timesteps.tolist())) > 1
    again = ad.inputs(whole)["noised"]
    torch.testing.assert_close(again.x_t, noised.x_t)
    whole.group_seeds = torch.tensor([21, 12, 13, 14])
    moved = ad.inputs(whole)["noised"].x_t
    assert not torch.allclose(moved[:2], noised.x_t[:2]) and torch.allclose(moved[2:], noised.x_t[2:], atol=1e-5)


def test_group_seeds_depend_on_seed_epoch_and_row_only():
    rows = [{"row_index": 3}, {"row_index": 8}]
    seeds = group_seeds(rows, seed=0, epoch=1)
    assert torch.equal(group_seeds(rows[1:], seed=0, epoch=1), seeds[1:])
    assert len({*seeds.tolist(), *group_seeds(rows, 0, 2).tolist(), *group_seeds(rows, 1, 1).tolist()}) == 6
    assert (seeds >= 0).all()


def test_prompt_dropout_substitutes_the_encoded_empty_prompt():
    ad = adapter("sdxl", prompt_dropout=1.0)
    dropped = ad.inputs(image_batch(ad), torch.Generator().manual_seed(0))
    ad.prompt_dropout = 0.0
    empty = ad.inputs(image_batch(ad, prompts=["", ""]), torch.Generator().manual_seed(0))
    for name in ("encoder_hidden_states", "text_embeds"):
        torch.testing.assert_close(dropped[name], empty[name])


def test_sdxl_micro_conditioning_reaches_the_unet():
    ad = adapter("sdxl")
    base = torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 2)
    cropped = torch.tensor([[64.0, 48, 8, 4, 16, 16]] * 2)
    same, _, _ = score(ad, image_batch(ad, time_ids=base))
    again, _, _ = score(ad, image_batch(ad, time_ids=base.clone()))
    other, _, _ = score(ad, image_batch(ad, time_ids=cropped))
    torch.testing.assert_close(same.values, again.values)
    assert (same.values - other.values).abs().min() > 1e-7


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_saved_lora_loads_into_a_diffusers_pipeline_and_changes_its_output(kind, tmp_path):
    ad = adapter(kind, reference="adapter", lora=True)
    with torch.no_grad():
        for name, param in ad.model.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a trained adapter
    ad.save(ad.scorer, tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()

    def sample(pipe):
        return pipe(
            PROMPTS[0], height=16, width=16, num_inference_steps=2, output_type="np",
            generator=torch.Generator().manual_seed(0),
        ).images  # fmt: skip

    trained = sample(ad.pipeline())
    base = adapter(kind)  # the same random base weights, without the adapter
    pipe = base.pipeline()
    before = sample(pipe)
    pipe.load_lora_weights(tmp_path)
    after = sample(pipe)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, trained, atol=1e-5)


def test_full_fine_tune_saves_a_pipeline_that_loads_back(tmp_path):
    ad = adapter("sdxl")
    with torch.no_grad():
        next(ad.model.denoiser.parameters()).add_(1.0)
    ad.save(ad.scorer, tmp_path / "final")
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "final")
    for (name, ours), theirs in zip(ad.model.denoiser.state_dict().items(), pipe.unet.state_dict().values()):
        torch.testing.assert_close(ours, theirs, msg=name)

    loaded = load_text_to_image(str(tmp_path / "final"))  # the loader reads a local pipeline directory
    assert loaded.family.name == "sdxl" and len(loaded.text_encoders) == 2 and len(loaded.tokenizers) == 2
    torch.testing.assert_close(loaded.denoiser.conv_in.weight, ad.model.denoiser.conv_in.weight)
    assert type(loaded.sampling_scheduler).__name__ == type(pipe.scheduler).__name__


def test_a_missing_model_path_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.path="):
        load_text_to_image(str(tmp_path / "nowhere"))


def test_generation_is_per_prompt_and_seed_and_samples_the_reference_too():
    ad = adapter(reference="adapter", lora=True)
    with torch.no_grad():
        for name, param in ad.model.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    options = {"steps": 2, "guidance_scale": 3.0}
    both = ad.generate(PROMPTS, [0, 1], **options)
    assert both.shape == (2, 2, 3, 16, 16) and 0 <= both.min() and both.max() <= 1
    alone = ad.generate(PROMPTS[1:], [1], **options)  # another batch: the same image for the same prompt and seed
    torch.testing.assert_close(alone[0, 0], both[1, 1])
    assert not torch.allclose(both[0, 0], both[0, 1])
    base = adapter().generate(PROMPTS, [0, 1], **options)  # the same random base, without the adapter
    torch.testing.assert_close(ad.generate(PROMPTS, [0, 1], reference=True, **options), base)
    assert (both - base).abs().max() > 1e-3


def test_a_float32_vae_stays_float32_under_autocast():
    vae = load_text_to_image("tiny:sd15").vae.eval()
    pixels = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    exact = encode_moments(vae, pixels, chunk=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = encode_moments(vae, pixels, chunk=2)
    for a, b in zip(autocast, exact):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_xformers_without_the_extra_names_it():
    with pytest.raises(ValueError, match=r"pip install 'mmdpo\[xformers\]'"):
        use_xformers(load_text_to_image("tiny:sd15").denoiser)
