"""Tango and Tango 2 (Ghosal et al. 2023, arXiv 2304.13731; Majumder et al. 2024, arXiv 2404.09956): a frozen
FLAN-T5 encoder whose last hidden state and attention mask condition an 8-channel ``UNet2DConditionModel`` on the
latents of AudioLDM's VAE, which encodes 1-channel log-mel spectrograms; a HiFi-GAN vocoder turns mels into audio.

Prompts are padded to the batch's longest (:func:`~mmdpo.adapters.latent_diffusion.tango_pipeline.t5_tokens`), so
the states and the mask are :attr:`~mmdpo.adapters.latent_diffusion.family.Family.variable_length` conditions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import Tensor, nn
from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig, T5EncoderModel

from mmdpo.adapters.latent_diffusion.family import Family
from mmdpo.adapters.latent_diffusion.model import LatentDiffusionModel, load_part
from mmdpo.adapters.latent_diffusion.tango_pipeline import TangoPipeline, t5_states, t5_tokens, vocoder_stft
from mmdpo.adapters.tiny import tiny_t5_encoder, tiny_t5_tokenizer, tiny_unet, tiny_vae, tiny_vocoder

TANGO_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}  # fmt: skip
"""The DDPM schedule Tango trains and samples with: Stable Diffusion 2.1's scheduler config (its
``scheduler_name``), v-prediction."""
AUDIOLDM_HIFIGAN = {
    "upsample_rates": [5, 4, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 8, 4, 4], "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]], "sampling_rate": 16000,
}  # fmt: skip
"""The upsampling of AudioLDM's 16 kHz HiFi-GAN inside Tango's VAE (its rates multiply to the hop, 160); its widths
are read from its weights."""
TINY_STFT = {
    "filter_length": 512, "hop_length": 160, "win_length": 512, "n_mel_channels": 16, "sampling_rate": 16000,
    "mel_fmin": 0, "mel_fmax": 8000,
}  # fmt: skip
"""The mel settings of ``tiny:tango``: Tango's rate and hop, 16 mels."""


class Tango(Family):
    name = "tango"
    pipelines = ("TangoPipeline",)
    pipeline_class = TangoPipeline
    text_parts = (("text_encoder", T5EncoderModel, "tokenizer"),)
    sampling_parts = (("vocoder", SpeechT5HifiGan),)
    variable_length = ("encoder_hidden_states", "encoder_attention_mask")

    def tiny(self) -> LatentDiffusionModel:
        """Tango's parts at toy sizes: a one-layer T5 (d_model 32), a two-level UNet on 8 latent channels, a two-level
        VAE from 1-channel mels to 8 latent channels, an AudioLDM-shaped HiFi-GAN 32 channels wide, the mel settings
        of :data:`TINY_STFT`."""
        torch.manual_seed(0)
        tokenizer = tiny_t5_tokenizer()
        encoder = tiny_t5_encoder(tokenizer, d_model=32)
        unet = tiny_unet(
            in_channels=8, out_channels=8, norm_num_groups=8, cross_attention_dim=32, attention_head_dim=2,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), use_linear_projection=True,
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), upcast_attention=True,
        )  # fmt: skip
        vae = tiny_vae(  # 32 groups, as latent-diffusion VAEs (and so Tango's release layout) have
            block_out_channels=[32, 64], in_channels=1, out_channels=1, latent_channels=8, norm_num_groups=32,
            scaling_factor=0.9,
        )  # fmt: skip
        vocoder = tiny_vocoder(  # weights wide enough to give audible waveforms at random
            TINY_STFT["n_mel_channels"], 32, initializer_range=0.13, **AUDIOLDM_HIFIGAN, stft_config=TINY_STFT
        )
        return LatentDiffusionModel(
            "tiny:tango", self, unet, DDPMScheduler.from_config(TANGO_SCHEDULER), vae, [encoder], [tokenizer],
            sampling_parts={"vocoder": vocoder},
        )  # fmt: skip

    def tokenize(self, tokenizers: Sequence[Any], prompts: Sequence[str]) -> list[Tensor]:
        """Token ids padded to the longest prompt, as Tango tokenises."""
        return [t5_tokens(tokenizers[0], prompts)]

    def encode(self, text_encoders: Sequence[nn.Module], input_ids: Sequence[Tensor]) -> dict[str, Tensor]:
        states, mask = t5_states(text_encoders[0], input_ids[0])
        return {"encoder_hidden_states": states, "encoder_attention_mask": mask}

    def denoise(
        self, denoiser: nn.Module, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor, encoder_attention_mask: Tensor
    ) -> Tensor:
        states, mask = encoder_hidden_states.to(x_t.dtype), encoder_attention_mask.bool()
        return denoiser(x_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample


def stft_config(path: str) -> dict[str, Any] | None:
    """The mel settings (Tango's ``stft_config.json`` keys) of the Tango pipeline at ``path`` (``tiny:tango``, a local
    directory or a hub id), which its vocoder's config carries; None when it names none (Tango's own apply)."""
    if path.startswith("tiny:"):
        return dict(TINY_STFT)
    return vocoder_stft(load_part(SpeechT5HifiGanConfig, path, "vocoder", "model.path"))
