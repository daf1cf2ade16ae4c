"""CLAP score (Wu et al. 2023, arXiv 2211.06687): text-audio agreement from a contrastive audio-text model."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F
from transformers import ClapModel, ClapProcessor

from mmdpo.rewards.base import Reward
from mmdpo.rewards.media import Audio, to_waveforms
from mmdpo.rewards.tiny import tiny_clap


class CLAPScore(Reward):
    """``cos(E_audio, E_text)`` of a transformers ``ClapModel``, in [-1, 1].

    Media is :class:`~mmdpo.rewards.media.Audio`; waveforms are mixed to mono and resampled to the feature
    extractor's rate (48 kHz for LAION's checkpoints), so 16 kHz Tango / AudioLDM outputs can go in as they are.
    Audio longer than the extractor's ``max_length_s`` (10 s) is cut by transformers at random (``rand_trunc``) or
    fused from random chunks (``fusion``): seed numpy for repeatable scores of long clips.

    Args:
        model: the ``ClapModel``.
        processor: its ``ClapProcessor`` (feature extractor and RoBERTa tokenizer).
    """

    name = "clap"

    def __init__(self, model: ClapModel, processor: ClapProcessor, batch_size: int = 16):
        super().__init__(batch_size)
        self.model, self.processor = model.eval(), processor

    @property
    def sampling_rate(self) -> int:
        return self.processor.feature_extractor.sampling_rate

    def prepare(self, media: Audio) -> list[np.ndarray]:
        return to_waveforms(media, self.sampling_rate)

    def score_batch(self, prompts: list[str], items: list[np.ndarray]) -> Tensor:
        audio = self.processor.feature_extractor(items, sampling_rate=self.sampling_rate, return_tensors="pt")
        text = self.processor.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
        audios = self.model.get_audio_features(**audio.to(self.device, self.dtype)).pooler_output
        texts = self.model.get_text_features(**text.to(self.device)).pooler_output
        return (F.normalize(audios, dim=-1) * F.normalize(texts, dim=-1)).sum(-1)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = "laion/clap-htsat-unfused",
        *,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> CLAPScore:
        """A CLAP model and its processor from one local folder or hub id (e.g. ``laion/larger_clap_general``)."""
        model = ClapModel.from_pretrained(path_or_id, dtype=dtype or torch.float32)
        return cls(model, ClapProcessor.from_pretrained(path_or_id), batch_size).to(device)

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs) -> CLAPScore:
        return cls(*tiny_clap(seed), **kwargs)
