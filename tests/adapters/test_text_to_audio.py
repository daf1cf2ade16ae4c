"""The text-to-audio adapter on a tiny Tango built in memory: its ELBO, its masked and padded prompts, per-group
dropout, the mel -> VAE -> vocoder chain, its diffusers pipeline and Tango's released checkpoint layout."""

import io
import json
import math
import re

import numpy as np
import pytest
import soundfile
import torch
from transformers import SpeechT5HifiGanConfig

from mmdpo.adapters.latent_diffusion.batch import LatentBatch
from mmdpo.adapters.latent_diffusion.families.tango import TINY_STFT
from mmdpo.adapters.latent_diffusion.families.tango_release import TANGO_UNET, ldm_vae, unet_config
from mmdpo.adapters.latent_diffusion.latents import encode_moments
from mmdpo.adapters.latent_diffusion.model import add_lora
from mmdpo.adapters.latent_diffusion.noising import NoiseDraw, noise_latents
from mmdpo.adapters.latent_diffusion.tango_pipeline import TangoPipeline, mel_front_end, vocoder_stft
from mmdpo.adapters.text_to_audio import AudioDataSection, AudioMedia, TextToAudioAdapter, load_text_to_audio
from mmdpo.config import LoraSection
from mmdpo.data.audio import MelFrontEnd
from mmdpo.modalities import resolve_modality
from mmdpo.objectives import Preferences, get_objective

DURATION = 0.625  # 64 mel frames of the tiny model's hop 160 at 16 kHz
FRONT = MelFrontEnd.from_stft_config(TINY_STFT, DURATION)
PROMPTS = ["rain", "a dog barks twice in the distance"]


def adapter(reference="copy", lora=False, **options):
    model = load_text_to_audio("tiny:tango")
    if lora:
        add_lora(model.denoiser, LoraSection(r=4, alpha=4), model.family.lora_targets)
    return TextToAudioAdapter(model, reference=reference, media=AudioMedia(FRONT), **options)


def mel_batch(ad, prompts=PROMPTS, k=2, seed=0, seeds=None):
    g = torch.Generator().manual_seed(seed)
    return LatentBatch(
        prefs=Preferences(ranks=torch.tensor([[0, 1]] * len(prompts))),
        media=torch.randn(len(prompts), k, 1, FRONT.frames, FRONT.n_mels, generator=g) - 4,
        input_ids=ad.model.family.tokenize(ad.model.tokenizers, prompts),
        group_seeds=seeds,
    )


def score(ad, batch, generator=None):
    inputs = ad.inputs(batch, generator)
    reference = ad.reference(batch, inputs)
    return ad.policy_loglik(ad.scorer, batch, inputs, reference), reference.loglik, inputs


def wav(samples, rate=16000) -> dict:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    return {"bytes": buffer.getvalue(), "path": None}


def trained_lora(ad):
    with torch.no_grad():
        for name, param in ad.model.denoiser.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)


# --- the estimate ----------------------------------------------------------------------------------


def test_the_elbo_is_the_hand_computed_velocity_error_of_the_masked_unet_call():
    """At a fixed t and noise: x_t = sqrt(a) x0 + sqrt(1 - a) eps, v = sqrt(a) eps - sqrt(1 - a) x0 (the tiny model is
    v-prediction, as Tango), loglik = -0.5 * mean over (C, H, W) of (unet(x_t, t, states, mask) - v)^2."""
    ad = adapter(sample_latents=False)
    assert ad.model.scheduler.config.prediction_type == "v_prediction"
    batch = mel_batch(ad)
    vae = ad.model.vae
    x0 = encode_moments(vae, batch.media.flatten(0, 1))[0].view(2, 2, 8, FRONT.frames // 2, FRONT.n_mels // 2)
    conditions = ad.model.encode_prompts(PROMPTS)
    eps = torch.randn(2, *x0.shape[2:], generator=torch.Generator().manual_seed(1))
    t = torch.tensor([700, 30])
    noised = noise_latents(x0, ad.model.scheduler, NoiseDraw(t, eps))
    ours = ad.scorer(noised, **conditions)

    a = ad.model.scheduler.alphas_cumprod[t.repeat_interleave(2)].view(4, 1, 1, 1)
    x0, eps4 = x0.flatten(0, 1), eps.repeat_interleave(2, dim=0)
    x_t, v = a.sqrt() * x0 + (1 - a).sqrt() * eps4, a.sqrt() * eps4 - (1 - a).sqrt() * x0
    states = conditions["encoder_hidden_states"].repeat_interleave(2, dim=0)
    mask = conditions["encoder_attention_mask"].repeat_interleave(2, dim=0)
    assert not mask[0].all() and mask[2].all()  # the short prompt is padded, the mask hides its padding
    with torch.no_grad():
        prediction = ad.model.denoiser(x_t, t.repeat_interleave(2), states, encoder_attention_mask=mask).sample
    expected = -0.5 * (prediction - v).square().mean(dim=(1, 2, 3)).view(2, 2)
    torch.testing.assert_close(ours.detach(), expected, rtol=1e-5, atol=1e-6)


def test_policy_equal_to_its_lora_disabled_reference_gives_ln2():
    ad = adapter(reference="adapter", lora=True)
    batch = mel_batch(ad)
    policy, ref, _ = score(ad, batch, torch.Generator().manual_seed(0))
    out = get_objective("dpo", beta=2000.0)(policy, ref, batch.prefs)
    assert math.isclose(out.loss.item(), math.log(2), abs_tol=1e-7)
    assert out.metrics["rewards/accuracies"].item() == 0.5
    out.loss.backward()
    trained = [p for p in ad.scorer.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)


def test_candidates_of_a_group_share_timestep_and_noise():
    ad = adapter(sample_latents=False)
    batch = mel_batch(ad, prompts=PROMPTS * 3)
    batch.media[:, 1] = batch.media[:, 0]  # identical clips must get identical estimates
    batch.group_seeds = torch.arange(6) + 100
    policy, _, inputs = score(ad, batch)
    torch.testing.assert_close(policy.values[:, 0], policy.values[:, 1])
    t = inputs["noised"].timesteps.view(6, 2)
    assert torch.equal(t[:, 0], t[:, 1]) and len(set(t[:, 0].tolist())) > 1
    again, _, _ = score(ad, batch)  # each group's seed reproduces its draws
    torch.testing.assert_close(again.values, policy.values)


# --- prompts: padding and dropout ------------------------------------------------------------------


def test_padding_a_prompt_to_a_longer_one_changes_nothing():
    """A group scores the same alone (its prompt unpadded) as beside a longer prompt (padded, the mask off), with the
    same per-group randomness, and its T5 states at its own tokens are the same."""
    ad = adapter()
    together = mel_batch(ad, seeds=torch.tensor([5, 6]))
    alone = mel_batch(ad, prompts=PROMPTS[:1], seeds=torch.tensor([5]))
    alone.media = together.media[:1]
    assert together.input_ids[0].shape[1] > alone.input_ids[0].shape[1]
    pair, _, _ = score(ad, together)
    single, _, _ = score(ad, alone)
    torch.testing.assert_close(single.values, pair.values[:1], rtol=1e-5, atol=1e-6)
    short, long = ad.model.encode_prompts(PROMPTS[:1]), ad.model.encode_prompts(PROMPTS)
    length = short["encoder_attention_mask"].shape[1]
    torch.testing.assert_close(
        long["encoder_hidden_states"][:1, :length], short["encoder_hidden_states"], atol=1e-6, rtol=1e-5
    )
    assert not long["encoder_attention_mask"][0, length:].any()


def test_prompt_dropout_gives_every_candidate_of_a_dropped_group_the_empty_prompt(monkeypatch):
    """Dropout is decided per group, for all its candidates (Tango 2's own trainer drops only the winners' prompts):
    the UNet sees, for both candidates of a group, either the group's prompt or the empty one."""
    ad = adapter(prompt_dropout=0.5)
    prompts = [f"sound number {i}" + " loud" * i for i in range(8)]
    batch = mel_batch(ad, prompts=prompts, seeds=torch.arange(8) + 40)
    seen = []
    denoise = ad.scorer.family.denoise

    def spy(denoiser, x_t, t, encoder_hidden_states, encoder_attention_mask):
        seen.append((encoder_hidden_states, encoder_attention_mask))
        return denoise(denoiser, x_t, t, encoder_hidden_states, encoder_attention_mask)

    monkeypatch.setattr(ad.scorer.family, "denoise", spy)
    score(ad, batch)
    states, mask = seen[-1]
    full = ad.model.encode_prompts(prompts)
    empty = ad.model.family.pad(ad.model.encode_prompts([""]), full["encoder_attention_mask"].shape[1])
    dropped = []
    for group in range(8):
        winner, loser = 2 * group, 2 * group + 1
        torch.testing.assert_close(states[winner], states[loser])
        assert torch.equal(mask[winner], mask[loser])
        is_empty = torch.equal(mask[winner], empty["encoder_attention_mask"][0].to(mask))
        source = empty["encoder_hidden_states"][0] if is_empty else full["encoder_hidden_states"][group]
        torch.testing.assert_close(states[winner], source)
        dropped.append(is_empty)
    assert any(dropped) and not all(dropped)


def test_the_empty_prompt_and_longer_batches_meet_padded_with_the_mask_off():
    ad = adapter()
    empty, prompts = ad.model.encode_prompts([""]), ad.model.encode_prompts(PROMPTS)
    padded, same = ad.model.family.align(empty, prompts)
    assert padded["encoder_hidden_states"].shape[1] == prompts["encoder_hidden_states"].shape[1]
    assert padded["encoder_attention_mask"].sum() == 1  # the empty prompt is T5's </s> alone
    assert not padded["encoder_hidden_states"][0, 1:].any()
    assert all(torch.equal(same[name], prompts[name]) for name in prompts)  # the longest is left as it is


# --- media, sampling and saving --------------------------------------------------------------------


def test_clips_become_mels_latents_and_waveforms_of_the_models_sizes():
    """A 0.4 s 48 kHz stereo clip and a 1 s one: resampled, padded or cropped to 0.64 s, log-mels [1, 64, 16] ->
    latents [8, 32, 8] -> the vocoder's 64 x 160 samples."""
    ad = adapter()
    t = np.arange(int(0.4 * 48000)) / 48000
    stereo = np.stack([np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 660 * t)], axis=1).astype(np.float32)
    rows = [{"candidates": [wav(stereo, 48000), wav(np.random.default_rng(0).standard_normal(16000) * 0.1)]}]
    mels, _ = ad.media.collate(rows, seed=0, epoch=0)
    assert mels.shape == (1, 2, 1, 64, 16)
    assert mels[0, 0, 0, -10:].max() <= math.log(1e-5) + 1e-6  # the short clip is padded with silence
    mean, std = encode_moments(ad.model.vae, mels.flatten(0, 1))
    assert mean.shape == std.shape == (2, 8, 32, 8)
    waveforms = ad.pipeline().decode(mean, FRONT)
    assert waveforms.shape == (2, FRONT.waveform_length) == (2, 64 * 160)
    assert waveforms.abs().max() <= 1 and waveforms.abs().max() > 1e-3


def test_media_settings_come_from_the_models_stft_config(tmp_path):
    from mmdpo.config import load_config

    config = load_config(None, ["model.path=tiny:tango", "data.duration=0.625", f"data.path={tmp_path}"])
    media = TextToAudioAdapter.media_of(config)
    assert media.front_end == FRONT and media.settings()["hop_length"] == 160 and media.settings()["n_mels"] == 16
    assert AudioMedia.from_section(AudioDataSection()).front_end == MelFrontEnd()  # Tango's own, 10 s
    assert mel_front_end(vocoder_stft(SpeechT5HifiGanConfig()), 10.0) == MelFrontEnd()  # a vocoder naming none


def test_generation_is_per_prompt_and_seed_and_samples_the_reference_too():
    ad = adapter(reference="adapter", lora=True)
    trained_lora(ad)
    options = {"steps": 2, "guidance_scale": 3.0}
    both = ad.generate(PROMPTS, [0, 1], **options)
    assert both.shape == (2, 2, FRONT.waveform_length) and both.abs().max() <= 1
    alone = ad.generate(PROMPTS[1:], [1], **options)  # the same clip for the same prompt and seed in another batch
    torch.testing.assert_close(alone[0, 0], both[1, 1], atol=1e-6, rtol=1e-5)
    base = adapter().generate(PROMPTS, [0, 1], **options)  # the same random base, without the adapter
    torch.testing.assert_close(ad.generate(PROMPTS, [0, 1], reference=True, **options), base)
    assert (both - base).abs().max() > 1e-3


def test_saved_lora_loads_into_the_tango_pipeline_and_changes_its_audio(tmp_path):
    ad = adapter(reference="adapter", lora=True)
    trained_lora(ad)
    ad.save(ad.scorer, tmp_path)
    assert (tmp_path / "pytorch_lora_weights.safetensors").is_file()

    def sample(pipe):
        pipe.set_progress_bar_config(disable=True)
        generator = torch.Generator().manual_seed(0)
        return pipe(PROMPTS[0], num_inference_steps=2, generator=generator, audio_length_in_s=DURATION).audios

    trained = sample(ad.pipeline())
    pipe = adapter().pipeline()
    before = sample(pipe)
    pipe.load_lora_weights(tmp_path)
    after = sample(pipe)
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, trained, atol=1e-5)


def test_a_saved_pipeline_loads_back_as_the_same_model(tmp_path):
    ad = adapter()
    with torch.no_grad():
        next(ad.model.denoiser.parameters()).add_(1.0)
    ad.save(ad.scorer, tmp_path / "final")
    index = json.loads((tmp_path / "final" / "model_index.json").read_text())
    assert index["_class_name"] == "TangoPipeline" and index["vocoder"] == ["transformers", "SpeechT5HifiGan"]
    assert resolve_modality(str(tmp_path / "final")).name == "text_to_audio"
    pipe = TangoPipeline.from_pretrained(tmp_path / "final")
    assert pipe.front_end(DURATION) == FRONT  # the vocoder's config carries the STFT settings
    loaded = load_text_to_audio(str(tmp_path / "final"))
    assert loaded.family.name == "tango" and set(loaded.sampling_parts) == {"vocoder"}
    for ours, theirs in ((ad.model.denoiser, loaded.denoiser), (ad.model.vae, loaded.vae)):
        for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    loaded_adapter = TextToAudioAdapter(loaded, media=AudioMedia(FRONT))
    batch = mel_batch(ad, seeds=torch.tensor([1, 2]))
    torch.testing.assert_close(score(loaded_adapter, batch)[0].values, score(ad, batch)[0].values)


def test_a_tiny_tango_is_a_text_to_audio_model():
    assert resolve_modality("tiny:tango").name == "text_to_audio"


# --- Tango's released layout -------------------------------------------------------------------------


def ldm_vae_state(vae) -> dict:
    """A diffusers AutoencoderKL's weights in the latent-diffusion names Tango's pytorch_model_vae.bin uses (the
    inverse of diffusers' conversion): down/up levels, block_{1,2} mid resnets, nin_shortcut, conv attention."""
    levels = len(vae.config.block_out_channels)
    renames = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
        (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.group_norm\.", r"\1.mid.attn_1.norm."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", r"\1.mid.attn_1.\2."),
        (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_out\.0\.", r"\1.mid.attn_1.proj_out."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
    ]
    out = {}
    for key, value in vae.state_dict().items():
        up = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)$", key)
        if up:  # diffusers counts up blocks from the bottom, latent diffusion from the top
            level, part, rest = levels - 1 - int(up.group(1)), up.group(2), up.group(3)
            key = f"decoder.up.{level}.{'block' if part == 'resnets' else 'upsample'}.{rest}"
        for pattern, replacement in renames:
            key = re.sub(pattern, replacement, key)
        if ".attn_1." in key and key.endswith("weight") and value.dim() == 2:
            value = value[:, :, None, None]  # latent diffusion's attention projections are 1x1 convolutions
        out[key] = value.clone()
    return out


def save_as_tango_release(model, directory, stft):
    """``model``'s parts in Tango's release layout: three configs and pickled weights in Tango's names."""
    directory.mkdir()
    t5 = directory.parent / "flan-t5"
    model.text_encoders[0].config.save_pretrained(t5)
    model.tokenizers[0].save_pretrained(t5)
    (directory / "configs").mkdir()
    (directory / "configs" / "unet.json").write_text(json.dumps(dict(model.denoiser.config)))
    main = {
        "text_encoder_name": str(t5), "scheduler_name": "stabilityai/stable-diffusion-2-1", "unet_model_name": None,
        "unet_model_config_path": "configs/unet.json", "snr_gamma": 5.0,
    }  # fmt: skip
    vae = model.vae.config
    ddconfig = {
        "double_z": True, "z_channels": vae.latent_channels, "resolution": 256, "downsample_time": False,
        "in_channels": vae.in_channels, "out_ch": vae.out_channels, "ch": vae.block_out_channels[0],
        "ch_mult": [c // vae.block_out_channels[0] for c in vae.block_out_channels],
        "num_res_blocks": vae.layers_per_block, "attn_resolutions": [], "dropout": 0.0,
    }  # fmt: skip
    vae_config = {
        "image_key": "fbank", "subband": 1, "embed_dim": vae.latent_channels, "time_shuffle": 1,
        "ddconfig": ddconfig, "scale_factor": vae.scaling_factor,
    }  # fmt: skip
    for name, config in (("main", main), ("vae", vae_config), ("stft", stft)):
        (directory / f"{name}_config.json").write_text(json.dumps(config))
    main_state = {f"unet.{k}": v for k, v in model.denoiser.state_dict().items()}
    main_state.update({f"text_encoder.{k}": v for k, v in model.text_encoders[0].state_dict().items()})
    vocoder = {k.replace("upsampler.", "ups."): v for k, v in model.sampling_parts["vocoder"].state_dict().items()}
    vae_state = {
        **ldm_vae_state(model.vae),
        **{f"vocoder.{k}": v for k, v in vocoder.items() if k not in ("mean", "scale")},
    }
    torch.save(main_state, directory / "pytorch_model_main.bin")
    torch.save(vae_state, directory / "pytorch_model_vae.bin")
    torch.save({"mel_basis": torch.zeros(16, 257)}, directory / "pytorch_model_stft.bin")


def test_a_tango_release_converts_once_on_opt_in_and_loads_as_the_same_model(tmp_path):
    tiny = load_text_to_audio("tiny:tango")
    release = tmp_path / "tango2"
    save_as_tango_release(tiny, release, TINY_STFT)
    assert resolve_modality(str(release)).name == "text_to_audio"

    with pytest.raises(ValueError, match=r"pickled \.bin files.*model\.allow_pickle=true") as refused:
        load_text_to_audio(str(release))
    assert str(release / "diffusers") in str(refused.value)
    loaded = load_text_to_audio(str(release), allow_pickle=True)
    assert (release / "diffusers" / "model_index.json").is_file() and loaded.path == str(release / "diffusers")
    assert not list((release / "diffusers").rglob("*.bin"))  # safetensors only
    again = load_text_to_audio(str(release))  # the conversion loads without the option
    assert again.path == loaded.path

    assert loaded.scheduler.config.prediction_type == "v_prediction"  # Stable Diffusion 2.1's schedule
    assert loaded.vae.config.scaling_factor == pytest.approx(tiny.vae.config.scaling_factor)
    ids = tiny.family.tokenize(tiny.tokenizers, PROMPTS)
    tiny.text_encoders[0].eval()  # built in training mode: no dropout
    with torch.no_grad():
        conditions = tiny.family.encode(tiny.text_encoders, ids)
        for name, value in loaded.family.encode(loaded.text_encoders, ids).items():
            torch.testing.assert_close(value, conditions[name])
        x = torch.randn(2, 8, 32, 8, generator=torch.Generator().manual_seed(0))
        t = torch.tensor([10, 900])
        torch.testing.assert_close(
            loaded.family.denoise(loaded.denoiser, x, t, **conditions),
            tiny.family.denoise(tiny.denoiser, x, t, **conditions),
        )
        mels = torch.randn(2, 1, 64, 16, generator=torch.Generator().manual_seed(1)) - 4
        for a, b in zip(encode_moments(loaded.vae, mels), encode_moments(tiny.vae, mels)):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(loaded.vae.decode(x).sample, tiny.vae.decode(x).sample)
        vocoded = loaded.sampling_parts["vocoder"](mels[:, 0])
        torch.testing.assert_close(vocoded, tiny.sampling_parts["vocoder"](mels[:, 0]))

    elsewhere = tmp_path / "converted"
    moved = load_text_to_audio(str(release), allow_pickle=True, converted_path=str(elsewhere))
    assert moved.path == str(elsewhere) and (elsewhere / "model_index.json").is_file()


def test_audioldms_vae_at_its_real_shape_converts_to_the_same_autoencoder(tmp_path):
    """audioldm-s-full's first stage (ch 128 x [1, 2, 4], two resnets a level, z 8), random weights, in latent-diffusion
    names -> diffusers' AutoencoderKL: the same posterior and decoding."""
    from diffusers import AutoencoderKL

    ddconfig = {"in_channels": 1, "out_ch": 1, "ch": 128, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "z_channels": 8}
    torch.manual_seed(0)
    ours = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=8, block_out_channels=[128, 256, 512], layers_per_block=2,
        down_block_types=["DownEncoderBlock2D"] * 3, up_block_types=["UpDecoderBlock2D"] * 3, norm_num_groups=32,
    ).eval()  # fmt: skip
    vae_config = {"embed_dim": 8, "subband": 1, "ddconfig": ddconfig, "scale_factor": 0.9227914214134216}
    converted = ldm_vae(vae_config, ldm_vae_state(ours), tmp_path).eval()
    assert converted.config.scaling_factor == pytest.approx(0.9227914214134216)
    mels = torch.randn(1, 1, 32, 16, generator=torch.Generator().manual_seed(0)) - 4
    with torch.no_grad():
        torch.testing.assert_close(converted.encode(mels).latent_dist.mean, ours.encode(mels).latent_dist.mean)
        z = torch.randn(1, 8, 8, 4, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(converted.decode(z).sample, ours.decode(z).sample)


def test_releases_name_a_unet_config_they_do_not_hold_so_tangos_own_is_used(tmp_path):
    config = unet_config({"unet_model_config_path": "configs/diffusion_model_config.json"}, tmp_path, 2048)
    assert config == {**TANGO_UNET, "cross_attention_dim": 2048}
    with pytest.raises(ValueError, match="unet_model_name"):
        unet_config({"unet_model_name": "stabilityai/stable-diffusion-2-1"}, tmp_path, 1024)
