"""Text-to-audio: Tango and Tango 2 (:mod:`~mmdpo.adapters.latent_diffusion.families.tango`) trained on audio
preference groups such as Audio-Alpaca.

    model = load_text_to_audio("/models/tango2", allow_pickle=True)   # a release, a TangoPipeline dir, tiny:tango
    adapter = TextToAudioAdapter(model, reference="copy", media=AudioMedia(MelFrontEnd(duration=10.0)))
    inputs = adapter.inputs(batch)                  # mel latents, T5 states and mask, one (t, noise) per group
    policy = adapter.policy_loglik(adapter.scorer, batch, inputs, adapter.reference(batch, inputs))

The latent-diffusion core (:mod:`mmdpo.adapters.latent_diffusion`) does the scoring, sampling and saving; this module
adds the audio: its config fields, loading and checking clips, and Tango's front end (:class:`MelFrontEnd`: decode
at the model's rate, centre, peak 0.5, pad or crop, log-mel), whose STFT settings come from the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmdpo.adapters.latent_diffusion.adapter import LatentDiffusionAdapter
from mmdpo.adapters.latent_diffusion.families.tango import Tango, stft_config
from mmdpo.adapters.latent_diffusion.families.tango_release import pipeline_directory
from mmdpo.adapters.latent_diffusion.media import load_checked_source
from mmdpo.adapters.latent_diffusion.model import LatentDiffusionModel, load_model
from mmdpo.adapters.latent_diffusion.sections import LatentDataSection, LatentModelSection
from mmdpo.adapters.latent_diffusion.tango_pipeline import mel_front_end
from mmdpo.config import POSITIVE, ConfigError, bounded
from mmdpo.data.audio import MelFrontEnd, check_audio, decode_audio, load_audio_groups
from mmdpo.data.loaders import GroupSet

__all__ = [
    "FAMILIES", "AudioDataSection", "AudioMedia", "AudioModelSection", "TextToAudioAdapter", "load_text_to_audio",
]  # fmt: skip

FAMILIES = (Tango(),)


@dataclass
class AudioModelSection(LatentModelSection):
    """The ``model`` section of text-to-audio models: ``allow_pickle`` lets a Tango release's pickled ``.bin``
    weights be read once, to write their safetensors conversion (to ``converted_path``, else the release's
    ``diffusers/`` folder), which later runs load without it."""

    allow_pickle: bool = False
    converted_path: str | None = None


@dataclass
class AudioDataSection(LatentDataSection):
    """The ``data`` section of text-to-audio models: ``duration`` is the seconds each clip is cropped or padded to
    (Tango: 10, 1024 mel frames); the mel settings are the model's."""

    duration: float = bounded(10.0, **POSITIVE)


@dataclass(frozen=True)
class AudioMedia:
    """Clips as the log-mels ``[1, frames, n_mels]`` Tango's VAE encodes (:class:`MelFrontEnd`); a group's clips get
    no random transform."""

    front_end: MelFrontEnd = field(default_factory=MelFrontEnd)

    @classmethod
    def from_section(cls, data: AudioDataSection, stft: Mapping[str, Any] | None = None) -> AudioMedia:
        """Clips of ``data.duration`` seconds through the front end of ``stft`` (a model's ``stft_config.json``
        settings; Tango's by default)."""
        return cls(mel_front_end(stft, data.duration))

    def load_source(self, path: str, split: str, config) -> GroupSet:
        """Audio groups of one source of a config's ``data`` section, every clip decoded once (undecodable or silent
        ones fatal or skipped, by ``data.bad_rows``)."""
        return load_checked_source(path, split, config, load_audio_groups, check_audio, "text-to-audio")

    def collate(self, rows: Sequence[dict[str, Any]], *, seed: int, epoch: int) -> tuple[Tensor, list[dict]]:
        """Each group's clips decoded at the front end's rate, prepared and turned into log-mels
        ``[B, K, 1, frames, n_mels]``; the rows are the groups' records (no family reads conditions from them)."""
        front = self.front_end
        clips = [front.prepare(decode_audio(clip, front.sample_rate)) for row in rows for clip in row["candidates"]]
        mels = front.mel(torch.from_numpy(np.stack(clips)))
        return mels.view(len(rows), -1, 1, *mels.shape[1:]), list(rows)

    def settings(self) -> dict[str, Any]:
        return asdict(self.front_end)

    def sample(self, pipe, prompts: list[str], generators: list[torch.Generator], **options: Any) -> Tensor:
        """Waveforms ``[P, samples]`` in [-1, 1] of clips of the front end's duration."""
        length = self.front_end.duration
        return pipe(prompts, generator=generators, audio_length_in_s=length, output_type="pt", **options).audios


class TextToAudioAdapter(LatentDiffusionAdapter):
    """The latent-diffusion adapter over Tango on audio preference groups (see the module docstring)."""

    model_section = AudioModelSection
    data_section = AudioDataSection
    families = FAMILIES
    media_class = AudioMedia

    @classmethod
    def check_config(cls, config, objective) -> None:
        super().check_config(config, objective)
        if config.train.samples.every is not None:
            raise ConfigError(
                "train.samples writes image grids, which text-to-audio models do not make; remove it and sample with "
                "the saved TangoPipeline."
            )

    @classmethod
    def loadable_config(cls, config):
        """``config`` with a Tango release's ``model.path`` replaced by its safetensors conversion (written once)."""
        model = config.model
        path = pipeline_directory(model.path, allow_pickle=model.allow_pickle, converted_path=model.converted_path)
        return config if path == model.path else replace(config, model=replace(model, path=path))

    @classmethod
    def media_of(cls, config) -> AudioMedia:
        """Clips of ``data.duration`` seconds through the mel front end of the model's STFT settings."""
        return AudioMedia.from_section(config.data, stft_config(config.model.path))


def load_text_to_audio(
    path: str,
    dtype: torch.dtype = torch.float32,
    *,
    encoders: bool = True,
    allow_pickle: bool = False,
    converted_path: str | None = None,
) -> LatentDiffusionModel:
    """The parts of a Tango pipeline (:func:`~mmdpo.adapters.latent_diffusion.model.load_model`), a Tango release
    converted first (:func:`~mmdpo.adapters.latent_diffusion.families.tango_release.pipeline_directory`)."""
    directory = pipeline_directory(path, allow_pickle=allow_pickle, converted_path=converted_path)
    return load_model(directory, FAMILIES, dtype, encoders=encoders)
