"""Audio-preference formats -> preference groups whose candidates are audio clips (:mod:`mmdpo.data.schema`), their
decoding, and Tango's audio front end (waveform -> the log-mel its VAE encodes).

    groups = check_audio(load_audio_groups("/data/audio_alpaca/data"), bad_rows="skip")
    front = MelFrontEnd.from_stft_config(json.load(open("stft_config.json")), duration=10.0)
    clips = [front.prepare(decode_audio(c, front.sample_rate)) for c in groups.dataset[0]["candidates"]]
    mels = front.mel(torch.from_numpy(np.stack(clips)))             # [K, 1024, 64] float32

Formats (detected from the columns, or forced with ``format=``):

- ``audio_alpaca``: Audio-Alpaca (Tango 2, Majumder et al., arXiv 2404.09956) ``prompt`` (or ``caption``),
  ``chosen``, ``rejected``, optional ``strategy`` (how the rejected clip was made; copied into the groups) -> K = 2,
  ``ranks`` [0, 1].
- ``audio_ranked``: ``prompt`` (or ``caption``), ``audios`` and ``ranks`` and/or ``scores``.
- ``audio_unpaired``: ``prompt`` (or ``caption``), ``audio``, ``label`` (true/false) -> K = 1, ``desirable``.
- ``groups``: our own schema with audio candidates, validated.

An audio clip is a path, raw bytes, a ``datasets.Audio`` storage dict ``{"bytes", "path"}`` or a decoded ``{"array",
"sampling_rate"}`` dict (``array`` [samples] or [channels, samples], as ``datasets`` decodes it), which is encoded once
to 32-bit float WAV bytes, so nothing is lost. Every candidate is stored in ``datasets.Audio(decode=False)`` form and
never decoded while loading; relative paths are resolved against the folder of the index file (the current directory for
an in-memory dataset) and must exist. :func:`check_audio` decodes every clip once; :func:`decode_audio` reads WAV, FLAC,
OGG/Vorbis, MP3 and the other formats of libsndfile (``soundfile``) and resamples with ``soxr``.

Sources: those of :func:`~mmdpo.data.images.load_image_groups` (a file, a directory of Parquet/JSONL/CSV files split by
file name, a ``save_to_disk`` directory, a directory of Arrow shards, an in-memory dataset, an audio folder holding its
index file).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import soxr
import torch
from datasets import Audio, Dataset, DatasetDict
from torch import Tensor
from transformers.audio_utils import mel_filter_bank

from mmdpo.data import media_groups
from mmdpo.data.loaders import BadRow, BadRows, GroupSet
from mmdpo.data.schema import CANDIDATES, DESIRABLE, GROUP_ID, ID, PROMPT, RANKS, SCORES

AUDIO_FORMAT_COLUMNS: dict[str, list[tuple[str, ...]]] = {
    # Each tuple is one requirement: at least one of its columns must be present.
    "groups": [(PROMPT,), (CANDIDATES,), (RANKS, SCORES, DESIRABLE)],
    "audio_alpaca": [(PROMPT, "caption"), ("chosen",), ("rejected",)],
    "audio_ranked": [(PROMPT, "caption"), ("audios",), (RANKS, SCORES)],
    "audio_unpaired": [(PROMPT, "caption"), ("audio",), ("label",)],
}
AUDIO_LIST_COLUMNS = (CANDIDATES, "audios", RANKS, SCORES, DESIRABLE)
STRATEGY = "strategy"
STORED_AUDIO = Audio(decode=False)
SILENT_PEAK = 1e-4
"""A clip whose decoded samples, less their mean, never reach this magnitude (full scale 1) is silent."""


class AudioError(ValueError):
    """An audio clip that is missing or cannot be decoded."""


# --- row conversion --------------------------------------------------------------------------------


def _encoded(value: dict[str, Any], field: str) -> bytes:
    """A decoded ``{"array", "sampling_rate"}`` clip as 32-bit float WAV bytes."""
    rate = value.get("sampling_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or rate < 1:
        raise BadRow("wrong_type", field, f"has sampling_rate {rate!r}; give a positive whole number of Hz")
    try:
        array = np.asarray(value["array"], dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRow("wrong_type", field, "has an array that is not a list of numbers") from None
    if array.ndim not in (1, 2):
        raise BadRow("wrong_type", field, f"has an array of shape {array.shape}; give [samples] or [channels, samples]")
    if not array.size:
        raise BadRow("missing_audio", field, "is empty")
    buffer = io.BytesIO()
    soundfile.write(buffer, array.T, rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def stored_audio(value: Any, field: str, base: Path | None) -> dict[str, Any]:
    """An audio clip (a path, bytes, a ``{"bytes", "path"}`` or a ``{"array", "sampling_rate"}`` dict) in
    ``datasets.Audio`` storage form; a relative path is resolved against ``base`` and must name an existing file. An
    empty, mistyped or missing clip raises :class:`~mmdpo.data.loaders.BadRow` naming ``field``."""
    if isinstance(value, dict) and value.get("array") is not None:
        return {"bytes": _encoded(value, field), "path": None}
    return media_groups.stored_reference(value, field, base, "audio")


def _from_audio_unpaired(row: dict[str, Any], base: Path | None) -> dict[str, Any]:
    label = row.get("label")
    if not isinstance(label, bool):
        raise BadRow("bad_label", "label", f"must be true or false, got {label!r}")
    return media_groups.media_group(row, [row.get("audio")], ["audio"], {DESIRABLE: [label]}, base, stored_audio)


AUDIO_CONVERTERS = {
    "groups": partial(media_groups.schema_group, store=stored_audio, noun="audio"),
    "audio_alpaca": partial(media_groups.chosen_rejected_group, store=stored_audio),
    "audio_ranked": partial(media_groups.ranked_group, store=stored_audio, field="audios", noun="audio"),
    "audio_unpaired": _from_audio_unpaired,
}
AUDIO = media_groups.MediaKind(
    "audio", STORED_AUDIO, AUDIO_CONVERTERS, AUDIO_FORMAT_COLUMNS, AUDIO_LIST_COLUMNS, (ID, GROUP_ID, STRATEGY)
)


# --- the entry point -------------------------------------------------------------------------------


def load_audio_groups(path: str | Path | Dataset | DatasetDict, **options: str) -> GroupSet:
    """Read ``path`` and convert it to groups of audio candidates (see the module docstring).

    Args:
        path: a file, a directory or an in-memory dataset.
        options: the keywords below (:func:`~mmdpo.data.media_groups.load_media_groups`).
        format: ``auto`` (from the columns) or one of ``audio_alpaca``, ``audio_ranked``, ``audio_unpaired``,
            ``groups``.
        split: the split of a saved ``DatasetDict`` or of a directory whose file names name splits.
        ties: ``drop`` removes groups whose candidates all tie and counts them under ``skipped["tie"]``; ``keep``
            keeps them.
        bad_rows: ``error`` stops at the first unusable row (missing clip, empty prompt, bad label), naming it and the
            field; ``skip`` drops such rows and counts them by reason (``missing_audio``, ...).
        pairs: ``none``, or expand each ranked group into K = 2 pairs, as
            :func:`~mmdpo.data.loaders.load_groups` does (``strategy``, ``id`` and ``group_id`` follow each pair).
    """
    return media_groups.load_media_groups(AUDIO, path, **options)


# --- decoding and checking -------------------------------------------------------------------------


def _where(clip: Mapping[str, Any]) -> str:
    data, path = clip.get("bytes"), clip.get("path")
    if data:
        return f"bytes of {path!r}" if path else "bytes"
    return f"file {path!r}"


def _native(clip: Mapping[str, Any]) -> tuple[np.ndarray, int]:
    """A stored clip (``{"bytes", "path"}``, bytes first) as float32 mono samples (channels averaged) and its rate."""
    data, path = clip.get("bytes"), clip.get("path")
    if not data and not path:
        raise AudioError("An audio clip has neither bytes nor a path; give one of them.")
    if not data and not Path(path).is_file():
        raise AudioError(f"Audio file {path!r} is missing.")
    where = _where(clip)
    try:
        samples, rate = soundfile.read(io.BytesIO(data) if data else path, dtype="float32", always_2d=True)
    except (RuntimeError, ValueError, TypeError, OSError) as err:  # soundfile.LibsndfileError is a RuntimeError
        raise AudioError(f"Audio {where} is not a readable audio file ({err}).") from None
    if not samples.size:
        raise AudioError(f"Audio {where} holds no samples.")
    if not np.isfinite(samples).all():
        raise AudioError(f"Audio {where} holds samples that are not finite numbers.")
    return samples.mean(axis=1, dtype=np.float32), rate


def decode_audio(ref: Mapping[str, Any], sample_rate: int) -> np.ndarray:
    """Decode one stored clip (``{"bytes", "path"}``, bytes first) to float32 mono samples at ``sample_rate``:
    channels are averaged, then resampled with soxr (high quality), giving ``round(n * sample_rate / rate)`` samples
    for n at the file's rate. A missing or undecodable clip raises :class:`AudioError`."""
    samples, rate = _native(ref)
    if rate == sample_rate:
        return samples
    return soxr.resample(samples, rate, sample_rate).astype(np.float32, copy=False)


def _bad_clip(clip: dict[str, Any]) -> tuple[str, str] | None:
    """``("corrupt_audio", problem)`` for a clip that does not decode, ``("silent_audio", problem)`` for a silent one
    (:data:`SILENT_PEAK`), else None."""
    try:
        samples, _ = _native(clip)
    except AudioError as err:
        return "corrupt_audio", str(err)
    peak = float(np.abs(samples - samples.mean()).max())
    if peak < SILENT_PEAK:
        return (
            "silent_audio",
            f"Audio {_where(clip)} is silent (its peak after decoding is {peak:.1e}, below {SILENT_PEAK:g}).",
        )
    return None


def check_audio(groups: GroupSet, bad_rows: BadRows, num_proc: int | None = None) -> GroupSet:
    """Decode every candidate once at its own rate; a group with an undecodable clip (``corrupt_audio``) or a silent one
    (``silent_audio``: the peak of the mono samples less their mean is below :data:`SILENT_PEAK`) is fatal or dropped
    and counted under that reason."""
    return media_groups.check_candidates(
        groups,
        bad_rows,
        _bad_clip,
        noun="audio",
        what="an undecodable or silent clip",
        fix="Replace the clip or set data.bad_rows=skip to drop such rows.",
        num_proc=num_proc,
    )


# --- Tango's front end -----------------------------------------------------------------------------

AUDIOLDM_STRETCH = Fraction(1024, 1000)
"""AudioLDM (Liu et al., arXiv 2301.12503) trains its VAE on 10.24-s clips: 1024 mel frames at 16 kHz and hop 160
(100 frames/s), a power of two that the VAE's and the UNet's downsampling divide. Its code (and Tango's, which reuses
it) asks for ``int(duration * 102.4)`` frames and ``frames * 160`` samples, so a nominal duration d covers
d * 1.024 s of audio: the frame rate times this stretch."""
STFT_CONFIG_KEYS = {
    "filter_length": "n_fft",
    "hop_length": "hop_length",
    "win_length": "win_length",
    "n_mel_channels": "n_mels",
    "sampling_rate": "sample_rate",
    "mel_fmin": "fmin",
    "mel_fmax": "fmax",
}
"""Tango's ``stft_config.json`` keys (AudioLDM's ``TacotronSTFT`` arguments) -> :class:`MelFrontEnd` fields."""
LOG_FLOOR = 1e-5


@dataclass(frozen=True)
class MelFrontEnd:
    """Tango's audio front end (declare-lab/tango, its AudioLDM ``TacotronSTFT`` and ``wav_to_fbank``): a decoded clip
    -> a fixed-length waveform (:meth:`prepare`) -> the log-mel spectrogram its VAE was trained on (:meth:`mel`).

    The defaults are Tango's ``stft_config.json``: 16 kHz, n_fft 1024, hop 160, window 1024, 64 mels up to 8 kHz;
    ``duration`` 10 s gives 1024 frames (:attr:`frames`) of 163840 samples (:attr:`waveform_length`).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 160
    win_length: int = 1024
    n_mels: int = 64
    fmin: float = 0.0
    fmax: float = 8000.0
    duration: float = 10.0

    def __post_init__(self):
        for name in ("sample_rate", "n_fft", "hop_length", "win_length", "n_mels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"The mel front end's {name}={value!r} must be a positive whole number.")
        if self.win_length > self.n_fft:
            raise ValueError(
                f"The mel front end's win_length={self.win_length} exceeds n_fft={self.n_fft}; "
                "the window must fit in the FFT."
            )
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(
                f"The mel front end's fmin={self.fmin!r} and fmax={self.fmax!r} must satisfy "
                f"0 <= fmin < fmax <= sample_rate / 2 = {self.sample_rate / 2:g}."
            )
        if not self.duration > 0 or self.frames < 1:
            raise ValueError(f"The mel front end's duration={self.duration!r} must give at least one frame (seconds).")

    @classmethod
    def from_stft_config(cls, config: Mapping[str, Any], duration: float) -> MelFrontEnd:
        """The front end of a Tango checkpoint's ``stft_config.json`` for clips of ``duration`` seconds."""
        missing = [key for key in STFT_CONFIG_KEYS if key not in config]
        if missing:
            raise ValueError(
                f"The STFT config lacks {', '.join(map(repr, missing))}; a Tango stft_config.json holds "
                f"{', '.join(STFT_CONFIG_KEYS)}."
            )
        return cls(**{field: config[key] for key, field in STFT_CONFIG_KEYS.items()}, duration=duration)

    @property
    def frames(self) -> int:
        """Mel frames per clip: ``floor(duration * sample_rate / hop_length * 1.024)`` (:data:`AUDIOLDM_STRETCH`),
        Tango's ``int(duration * 102.4)``: 1024 for 10 s."""
        return int(Fraction(self.duration) * self.sample_rate * AUDIOLDM_STRETCH / self.hop_length)

    @property
    def waveform_length(self) -> int:
        """Samples per clip: ``frames * hop_length`` (163840 for Tango's 10 s)."""
        return self.frames * self.hop_length

    @cached_property
    def mel_basis(self) -> Tensor:
        """``[n_mels, n_fft // 2 + 1]`` float32: librosa's default mel filters (Slaney scale, Slaney area norm)."""
        basis = mel_filter_bank(
            num_frequency_bins=self.n_fft // 2 + 1,
            num_mel_filters=self.n_mels,
            min_frequency=self.fmin,
            max_frequency=self.fmax,
            sampling_rate=self.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        return torch.from_numpy(basis.T).float()

    def prepare(self, waveform: np.ndarray) -> np.ndarray:
        """Tango's waveform front end for one mono clip at :attr:`sample_rate`: remove its mean (over the whole clip),
        crop or zero-pad the end to :attr:`waveform_length`, scale the peak to 0.5 (a silent clip stays zeros).
        Returns float32 ``[waveform_length]``."""
        samples = np.asarray(waveform, dtype=np.float64)
        if samples.ndim != 1:
            raise ValueError(f"prepare takes one mono waveform [samples], got shape {samples.shape}.")
        if samples.size:
            samples = samples - samples.mean()
        fitted = np.zeros(self.waveform_length)
        kept = samples[: self.waveform_length]
        fitted[: kept.size] = kept
        peak = np.abs(fitted).max()
        if peak > 0:
            fitted = fitted / peak * 0.5
        return fitted.astype(np.float32)

    def mel(self, waveform: Tensor) -> Tensor:
        """The log-mel spectrograms ``[N, frames, n_mels]`` (float32, on ``waveform``'s device) of ``waveform``
        ``[N, samples]`` at :attr:`sample_rate`, as Tango's VAE sees them (AudioLDM's ``TacotronSTFT``).

        Samples are clipped to [-1, 1] (NaN -> 0); the magnitude STFT uses a periodic Hann window of ``win_length``
        centred in ``n_fft`` and reflect padding of ``n_fft // 2`` (frame t centred on sample t * hop); the mel energies
        :attr:`mel_basis` @ magnitude are floored at 1e-5 before the natural log; frames beyond :attr:`frames` are
        cropped and missing ones padded with zeros (a :meth:`prepare`d clip has one frame more than needed, so nothing
        is padded).
        """
        if waveform.ndim != 2:
            raise ValueError(f"mel takes waveforms [N, samples], got shape {tuple(waveform.shape)}.")
        samples = torch.nan_to_num(waveform.float().clamp(-1, 1))
        window = torch.hann_window(self.win_length, periodic=True, dtype=torch.float32, device=samples.device)
        magnitude = torch.stft(
            samples,
            self.n_fft,
            self.hop_length,
            self.win_length,
            window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()
        energies = self.mel_basis.to(samples.device) @ magnitude
        log_mel = energies.clamp(min=LOG_FLOOR).log().transpose(1, 2)
        log_mel = log_mel[:, : self.frames]
        missing = self.frames - log_mel.shape[1]
        return torch.nn.functional.pad(log_mel, (0, 0, 0, missing)).contiguous()
