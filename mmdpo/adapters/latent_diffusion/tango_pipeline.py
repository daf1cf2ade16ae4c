"""Tango's text-to-audio sampling as a diffusers pipeline (Ghosal et al. 2023, arXiv 2304.13731; Tango 2, Majumder
et al. 2024, arXiv 2404.09956), which diffusers does not ship.

    pipe = TangoPipeline.from_pretrained("outputs/tango2_dpo/final")      # or the adapter's pipeline()
    pipe.load_lora_weights("outputs/tango2_dpo_lora/final")               # a LoRA that mmdpo saved
    waveforms = pipe(["rain on a tin roof"], num_inference_steps=100, guidance_scale=3.0).audios

The prompt is encoded by FLAN-T5, padded to the batch's longest prompt, and its last hidden state conditions the
UNet through cross-attention with the padding masked (``encoder_attention_mask``); classifier-free guidance runs
against the encoded empty prompt. The VAE decodes latents to log-mel spectrograms ``[B, 1, frames, n_mels]`` and
the HiFi-GAN vocoder turns them into 16 kHz waveforms. The vocoder's config carries the STFT settings of the mel
(``stft_config``, Tango's ``stft_config.json``; Tango's own when absent), so a saved pipeline knows the front end its
VAE was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, SchedulerMixin, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from diffusers.pipelines.pipeline_utils import AudioPipelineOutput
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from transformers import SpeechT5HifiGan, T5EncoderModel

from mmdpo.data.audio import MelFrontEnd

DEFAULT_DURATION = 10.0
"""Tango's clip length in seconds: 1024 mel frames, latents ``[8, 256, 16]``."""


def t5_tokens(tokenizer, prompts: Sequence[str]) -> Tensor:
    """Token ids ``[B, L]`` of ``prompts``, padded (id 0) to the longest and truncated at the tokenizer's maximum, as
    Tango tokenises."""
    return tokenizer(
        list(prompts), padding=True, max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def t5_states(encoder: T5EncoderModel, input_ids: Tensor) -> tuple[Tensor, Tensor]:
    """The encoder's last hidden state ``[B, L, D]`` and the attention mask ``[B, L]`` (bool) of ``input_ids``: every
    position but the padding (T5 pads with its pad id only, so the mask is the tokenizer's)."""
    input_ids = input_ids.to(encoder.device)
    mask = input_ids != encoder.config.pad_token_id
    return encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state, mask


def vocoder_stft(config) -> dict | None:
    """The STFT settings (Tango's ``stft_config.json`` keys) a Tango vocoder's config carries as ``stft_config``;
    None when it names none (then Tango's own apply)."""
    return getattr(config, "stft_config", None)


def mel_front_end(stft: Mapping[str, Any] | None, duration: float) -> MelFrontEnd:
    """The mel front end of ``stft`` (Tango's own settings when None) for clips of ``duration`` seconds."""
    return MelFrontEnd(duration=duration) if stft is None else MelFrontEnd.from_stft_config(stft, duration)


class TangoPipeline(DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    """Tango and Tango 2 as a diffusers pipeline: a FLAN-T5 encoder, an 8-channel ``UNet2DConditionModel``, a
    scheduler, an ``AutoencoderKL`` on 1-channel log-mels and a ``SpeechT5HifiGan`` vocoder (see the module
    docstring). ``save_pretrained`` writes a standard pipeline directory; ``load_lora_weights`` loads a UNet LoRA."""

    model_cpu_offload_seq = "text_encoder->unet->vae->vocoder"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: T5EncoderModel,
        tokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        vocoder: SpeechT5HifiGan,
    ):
        super().__init__()
        self.register_modules(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler, vocoder=vocoder
        )

    def front_end(self, duration: float = DEFAULT_DURATION) -> MelFrontEnd:
        """The mel front end of the vocoder's STFT settings (Tango's own if it names none) for clips of ``duration``
        seconds."""
        return mel_front_end(vocoder_stft(self.vocoder.config), duration)

    def latent_shape(self, batch: int, front: MelFrontEnd) -> tuple[int, int, int, int]:
        """``(B, C, frames / f, n_mels / f)`` for the VAE's downsampling f, rounded up to whole latents."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return batch, self.unet.config.in_channels, -(-front.frames // factor), -(-front.n_mels // factor)

    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str], guidance: bool) -> tuple[Tensor, Tensor]:
        """T5 states and masks of ``prompts``, preceded by the empty prompt's for each when ``guidance`` is on."""
        texts = [""] * len(prompts) + list(prompts) if guidance else list(prompts)
        return t5_states(self.text_encoder, t5_tokens(self.tokenizer, texts))

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        num_inference_steps: int = 100,
        guidance_scale: float = 3.0,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        audio_length_in_s: float | None = None,
        output_type: str = "np",
        return_dict: bool = True,
    ):
        """Waveforms ``[B, frames * hop]`` in [-1, 1] of ``prompt`` (Tango's sampler: the scheduler's steps with
        classifier-free guidance against the empty prompt when ``guidance_scale > 1``).

        Args:
            generator: one generator, or one per prompt (each prompt's noise then comes from its own).
            audio_length_in_s: seconds of audio (Tango's 10 s by default); mel frames are AudioLDM's
                ``int(seconds * sample_rate * 1.024 / hop)``.
            output_type: ``np`` (a NumPy array) or ``pt`` (a tensor).
        """
        if output_type not in ("np", "pt"):
            raise ValueError(f"output_type={output_type!r} is not one of 'np', 'pt'.")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        guidance = guidance_scale > 1.0
        device = self._execution_device
        states, mask = self.encode_prompt(prompts, guidance)
        states = states.to(self.unet.dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        front = self.front_end(DEFAULT_DURATION if audio_length_in_s is None else audio_length_in_s)
        shape = self.latent_shape(len(prompts), front)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        for t in self.progress_bar(self.scheduler.timesteps):
            model_input = self.scheduler.scale_model_input(torch.cat([latents] * 2) if guidance else latents, t)
            prediction = self.unet(model_input, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
            if guidance:
                unconditional, conditional = prediction.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(prediction, t, latents, generator=generator).prev_sample
        audios = self.decode(latents, front).float().cpu()
        if output_type == "np":
            audios = audios.numpy()
        self.maybe_free_model_hooks()
        return AudioPipelineOutput(audios=audios) if return_dict else (audios,)

    def decode(self, latents: Tensor, front: MelFrontEnd) -> Tensor:
        """Latents -> the VAE's log-mels ``[B, frames, n_mels]`` of ``front`` -> the vocoder's waveforms, cropped to
        ``[B, frames * hop]`` (AudioLDM's HiFi-GAN gives a few samples more)."""
        vae = self.vae
        mel = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        waveforms = self.vocoder(mel[:, 0, : front.frames, : front.n_mels].to(self.vocoder.dtype))
        return waveforms[:, : front.waveform_length]
