"""Audio-preference sources become groups of stored clips; decoding, checking and Tango's mel front end."""

import io
import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
from datasets import Audio, Dataset, List

from mmdpo.data.audio import AudioError, MelFrontEnd, check_audio, decode_audio, load_audio_groups

RATE = 16000
TANGO_STFT = {
    "filter_length": 1024,
    "hop_length": 160,
    "win_length": 1024,
    "n_mel_channels": 64,
    "sampling_rate": 16000,
    "mel_fmin": 0,
    "mel_fmax": 8000,
}
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"), "mp3": ("MP3", None)}


def tone(freq, seconds=0.25, rate=RATE, amplitude=0.5):
    return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def encode(samples, rate=RATE, kind="wav"):
    container, subtype = FORMATS[kind]
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=container, subtype=subtype)
    return buffer.getvalue()


def pitch(samples, rate=RATE):
    """The frequency of the strongest FFT bin (Hann window), resolution rate / len(samples)."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return np.argmax(spectrum) * rate / len(samples)


def pitches(groups):
    return [[round(pitch(decode_audio(c, RATE))) for c in row["candidates"]] for row in groups.dataset]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def audio_folder(tmp_path):
    """clips/a.wav at 256 Hz, clips/b.flac at 512 Hz, clips/c.ogg at 1024 Hz (whole FFT bins of a 0.25 s clip)."""
    folder = tmp_path / "prefs"
    (folder / "clips").mkdir(parents=True)
    for name, kind, freq in (("a", "wav", 256), ("b", "flac", 512), ("c", "ogg", 1024)):
        (folder / "clips" / f"{name}.{kind}").write_bytes(encode(tone(freq), kind=kind))
    return folder


def alpaca_rows():
    """Audio-Alpaca's columns, clips as datasets.Audio storage dicts."""
    clips = [encode(tone(f)) for f in (256, 512, 1024, 2048)]
    return {
        "prompt": ["rain on a roof", "a dog barks"],
        "chosen": [{"bytes": clips[0], "path": "chosen_0.wav"}, {"bytes": clips[1], "path": "chosen_1.wav"}],
        "rejected": [{"bytes": clips[2], "path": "reject_0.wav"}, {"bytes": clips[3], "path": "reject_1.wav"}],
        "strategy": ["inpaint", "temporal"],
    }


# --- formats and sources ----------------------------------------------------------------------------


def test_audio_alpaca_parquet_with_audio_dicts(tmp_path):
    rows = alpaca_rows()
    data = Dataset.from_dict(rows).cast_column("chosen", Audio()).cast_column("rejected", Audio())
    data.to_parquet(tmp_path / "train-00000.parquet")
    groups = load_audio_groups(tmp_path)
    assert (groups.format, groups.label, groups.skipped) == ("audio_alpaca", "ranks", {})
    assert groups.dataset.column_names == ["prompt", "candidates", "ranks", "strategy"]
    assert groups.dataset.features["candidates"] == List(Audio(decode=False))
    assert groups.dataset["ranks"] == [[0, 1], [0, 1]]
    assert groups.dataset["prompt"] == rows["prompt"]
    assert groups.dataset["strategy"] == ["inpaint", "temporal"]
    assert groups.dataset[1]["candidates"] == [rows["chosen"][1], rows["rejected"][1]]
    assert pitches(groups) == [[256, 1024], [512, 2048]]


def test_decoded_arrays_are_stored_once_as_exact_wav_bytes():
    mono = tone(512) * 1.5  # beyond full scale: float WAV keeps it
    stereo = np.stack([tone(256), tone(1024, amplitude=0.25)])  # [channels, samples], as datasets decodes
    data = Dataset.from_list(
        [
            {
                "prompt": "p",
                "chosen": {"array": mono.tolist(), "sampling_rate": 8000},
                "rejected": {"array": stereo.tolist(), "sampling_rate": RATE},
            },  # noqa: E501
        ]
    )
    groups = load_audio_groups(data)
    chosen, rejected = groups.dataset[0]["candidates"]
    assert chosen["path"] is None and chosen["bytes"][:4] == b"RIFF"
    np.testing.assert_array_equal(decode_audio(chosen, 8000), mono)
    np.testing.assert_array_equal(decode_audio(rejected, RATE), (stereo[0] + stereo[1]) / 2)


def test_a_bad_array_sampling_rate_is_a_bad_row():
    row = {"prompt": "p", "chosen": {"array": [0.1, 0.2], "sampling_rate": 0}, "rejected": "x.wav"}
    with pytest.raises(ValueError, match=r"^Row 0 of the in-memory dataset: field 'chosen' has sampling_rate 0; give"):
        load_audio_groups(Dataset.from_list([row]))


@pytest.mark.parametrize("read", ["file", "folder"])
def test_jsonl_index_paths_resolve_against_the_index_folder(tmp_path, monkeypatch, read):
    folder = audio_folder(tmp_path)
    rows = [
        {"prompt": "low over mid", "chosen": "clips/a.wav", "rejected": "clips/b.flac", "strategy": "s"},
        {"prompt": "high over low", "chosen": "clips/c.ogg", "rejected": "clips/a.wav", "strategy": "t"},
    ]
    index = write_jsonl(folder / "index.jsonl", rows)
    monkeypatch.chdir(tmp_path)
    groups = load_audio_groups(index if read == "file" else folder)
    clips = folder.absolute() / "clips"
    assert groups.dataset["candidates"] == [
        [{"bytes": None, "path": str(clips / "a.wav")}, {"bytes": None, "path": str(clips / "b.flac")}],
        [{"bytes": None, "path": str(clips / "c.ogg")}, {"bytes": None, "path": str(clips / "a.wav")}],
    ]
    assert pitches(groups) == [[256, 512], [1024, 256]]


def test_ranked_clips_with_scores_expand_to_pairs(tmp_path):
    folder = audio_folder(tmp_path)
    rows = [{"prompt": "p", "audios": ["clips/a.wav", "clips/b.flac", "clips/c.ogg"], "scores": [0.2, 0.9, 0.1]}]
    index = write_jsonl(folder / "ranked.jsonl", rows)
    whole = load_audio_groups(index)
    assert (whole.format, whole.label, whole.dataset["scores"]) == ("audio_ranked", "scores", [[0.2, 0.9, 0.1]])
    pairs = load_audio_groups(index, pairs="all")
    assert pitches(pairs) == [[512, 256], [512, 1024], [256, 1024]]
    assert pairs.dataset["ranks"] == [[0, 1]] * 3
    assert pairs.dataset["scores"] == [[0.9, 0.2], [0.9, 0.1], [0.2, 0.1]]
    assert pairs.dataset["group_id"] == [0, 0, 0]


def test_best_vs_rest_pairs_keep_their_strategy_and_id():
    clips = [encode(tone(f)) for f in (256, 512, 1024)]
    data = Dataset.from_dict(
        {"prompt": ["p"], "audios": [clips], "ranks": [[1, 0, 2]], "strategy": ["mixed"], "id": ["x"]}
    )
    groups = load_audio_groups(data, pairs="best_vs_rest")
    assert pitches(groups) == [[512, 256], [512, 1024]]
    assert groups.dataset["ranks"] == [[0, 1], [0, 1]]
    assert (groups.dataset["group_id"], groups.dataset["id"]) == ([0, 0], ["x", "x"])
    assert groups.dataset["strategy"] == ["mixed", "mixed"]


@pytest.mark.parametrize(("ties", "ranks", "skipped"), [("drop", [[0, 1]], {"tie": 1}), ("keep", [[0, 1], [0, 0]], {})])
def test_ties_are_dropped_or_kept(ties, ranks, skipped):
    clips = [encode(tone(f)) for f in (256, 512)]
    data = Dataset.from_dict({"prompt": ["p", "q"], "audios": [clips, clips], "ranks": [[0, 1], [0, 0]]})
    groups = load_audio_groups(data, ties=ties)
    assert (groups.dataset["ranks"], groups.skipped) == (ranks, skipped)


def test_unpaired_clips_and_their_labels(tmp_path):
    folder = audio_folder(tmp_path)
    rows = [
        {"prompt": "good", "audio": "clips/a.wav", "label": True},
        {"prompt": "bad", "audio": "clips/b.flac", "label": False},
        {"prompt": "odd", "audio": "clips/c.ogg", "label": None},
    ]
    index = write_jsonl(folder / "kto.jsonl", rows)
    with pytest.raises(ValueError, match=r"^Row 2 of .*kto\.jsonl: field 'label' must be true or false, got None; fix"):
        load_audio_groups(index)
    groups = load_audio_groups(index, bad_rows="skip")
    assert (groups.format, groups.label, groups.skipped) == ("audio_unpaired", "desirable", {"bad_label": 1})
    assert groups.dataset["desirable"] == [[True], [False]]
    assert pitches(groups) == [[256], [512]]
    with pytest.raises(ValueError, match="data.pairs=all needs ranked or scored groups"):
        load_audio_groups(index, pairs="all", bad_rows="skip")


def test_groups_schema_with_audio_candidates(tmp_path):
    folder = audio_folder(tmp_path)
    rows = [{"prompt": "p", "candidates": ["clips/a.wav", "clips/c.ogg"], "ranks": [1, 0]}]
    groups = load_audio_groups(write_jsonl(folder / "groups.jsonl", rows))
    assert (groups.format, groups.dataset["ranks"], pitches(groups)) == ("groups", [[1, 0]], [[256, 1024]])


def test_missing_column_names_it_for_each_format():
    rows = alpaca_rows()
    del rows["rejected"]
    with pytest.raises(ValueError, match=r"the closest audio format is audio_alpaca, which lacks 'rejected'; rename"):
        load_audio_groups(Dataset.from_dict(rows))
    with pytest.raises(ValueError, match=r"^data.format=audio_alpaca needs column 'rejected', but the data has"):
        load_audio_groups(Dataset.from_dict(rows), format="audio_alpaca")


def test_missing_clip_file_fails_or_is_skipped(tmp_path):
    folder = audio_folder(tmp_path)
    rows = [
        {"prompt": "p", "chosen": "clips/a.wav", "rejected": "clips/b.flac"},
        {"prompt": "q", "chosen": "clips/a.wav", "rejected": "clips/gone.wav"},
    ]
    index = write_jsonl(folder / "index.jsonl", rows)
    gone = folder.absolute() / "clips" / "gone.wav"
    with pytest.raises(ValueError) as err:
        load_audio_groups(index)
    assert str(err.value) == (
        f"Row 1 of {index.absolute()}: field 'rejected' names '{gone}', which does not exist; "
        "fix the row or set data.bad_rows=skip to drop such rows."
    )
    groups = load_audio_groups(index, bad_rows="skip")
    assert (len(groups), groups.skipped) == (1, {"missing_audio": 1})


# --- checking ---------------------------------------------------------------------------------------


def bad_clip_groups(tmp_path):
    folder = audio_folder(tmp_path)
    (folder / "clips" / "corrupt.wav").write_bytes(b"RIFF and then nothing a decoder could read")
    (folder / "clips" / "silent.flac").write_bytes(encode(tone(512, amplitude=5e-5) + 0.2, kind="flac"))
    rows = [
        {"prompt": "p", "chosen": "clips/a.wav", "rejected": "clips/corrupt.wav"},
        {"prompt": "q", "chosen": "clips/silent.flac", "rejected": "clips/c.ogg"},
        {"prompt": "r", "chosen": "clips/b.flac", "rejected": "clips/c.ogg"},
    ]
    return load_audio_groups(write_jsonl(folder / "index.jsonl", rows)), folder.absolute() / "clips"


def test_corrupt_and_silent_clips_are_fatal_with_the_fix(tmp_path):
    groups, clips = bad_clip_groups(tmp_path)
    assert len(groups) == 3  # loading only checks that files exist
    with pytest.raises(ValueError) as err:
        check_audio(groups, "error")
    text = str(err.value)
    assert text.startswith(f"Row 0 of the groups, candidate 1: Audio file '{clips / 'corrupt.wav'}' is not a readable")
    assert text.endswith("Replace the clip or set data.bad_rows=skip to drop such rows.")
    with pytest.raises(ValueError) as err:
        check_audio(replace(groups, dataset=groups.dataset.select([1, 2])), "error")
    peak = re.search(r"its peak after decoding is ([0-9.e+-]+), below 0\.0001\)\.", str(err.value))
    assert str(err.value).startswith(
        f"Row 0 of the groups, candidate 0: Audio file '{clips / 'silent.flac'}' is silent"
    )
    assert peak and 4e-5 < float(peak.group(1)) < 1e-4  # the 0.2 offset is not signal


def test_corrupt_and_silent_clips_are_skipped_and_counted(tmp_path):
    groups, _ = bad_clip_groups(tmp_path)
    checked = check_audio(groups, "skip")
    assert checked.skipped == {"corrupt_audio": 1, "silent_audio": 1}
    assert checked.dataset["prompt"] == ["r"]
    assert check_audio(checked, "error") is checked


def test_opposite_stereo_channels_downmix_to_silence():
    stereo = np.stack([tone(512), -tone(512)], axis=1)
    data = Dataset.from_dict(
        {"prompt": ["p", "q"], "audio": [encode(stereo), encode(tone(512))], "label": [True, True]}
    )
    checked = check_audio(load_audio_groups(data), "skip")
    assert (checked.skipped, checked.dataset["prompt"]) == ({"silent_audio": 1}, ["q"])


# --- decoding ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FORMATS))
@pytest.mark.parametrize("native", [8000, 44100])
def test_every_format_decodes_and_resamples(kind, native):
    data = encode(tone(1000, seconds=1.0, rate=native), rate=native, kind=kind)
    samples = decode_audio({"bytes": data, "path": None}, RATE)
    assert samples.dtype == np.float32 and samples.shape == (RATE,)
    assert abs(pitch(samples) - 1000) <= 1  # 1 Hz bins
    assert 0.4 < np.abs(samples[RATE // 10 : -RATE // 10]).max() < 0.6  # amplitude 0.5 survives, lossy or not


def test_stereo_downmixes_by_averaging(tmp_path):
    left, right = tone(250), tone(1000, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    samples = decode_audio({"bytes": None, "path": str(path)}, RATE)
    np.testing.assert_array_equal(samples, (left + right) / 2)


def test_decode_errors_name_the_clip(tmp_path):
    with pytest.raises(AudioError, match=r"^Audio file '.*nope\.wav' is missing\.$"):
        decode_audio({"bytes": None, "path": str(tmp_path / "nope.wav")}, RATE)
    with pytest.raises(AudioError, match=r"^Audio bytes of 'x\.mp3' is not a readable audio file \(.*\)\.$"):
        decode_audio({"bytes": b"\x00" * 64, "path": "x.mp3"}, RATE)
    with pytest.raises(AudioError, match="neither bytes nor a path"):
        decode_audio({"bytes": None, "path": None}, RATE)
    with pytest.raises(AudioError, match="holds samples that are not finite numbers"):
        buffer = io.BytesIO()
        soundfile.write(buffer, np.array([0.1, np.nan], dtype=np.float32), RATE, format="WAV", subtype="FLOAT")
        decode_audio({"bytes": buffer.getvalue(), "path": None}, RATE)


# --- Tango's front end ------------------------------------------------------------------------------


def test_tango_settings_give_1024_frames():
    front = MelFrontEnd.from_stft_config(TANGO_STFT, 10.0)
    assert front == MelFrontEnd()
    assert (front.frames, front.waveform_length) == (1024, 163840)
    for duration in (1.25, 2.5, 4.7, 5.0, 7.5, 10.24, 20.0, 30.0):
        shorter = MelFrontEnd(duration=duration)
        assert shorter.frames == int(duration * 102.4)  # Tango's target_length
        assert shorter.waveform_length == int(duration * 102.4) * 160


def test_front_end_settings_are_checked():
    with pytest.raises(ValueError, match=r"^The STFT config lacks 'mel_fmax'; a Tango stft_config.json holds "):
        MelFrontEnd.from_stft_config({k: v for k, v in TANGO_STFT.items() if k != "mel_fmax"}, 10.0)
    with pytest.raises(ValueError, match="win_length=2048 exceeds n_fft=1024"):
        MelFrontEnd(win_length=2048)
    with pytest.raises(ValueError, match=r"fmax=9000.0 must satisfy 0 <= fmin < fmax <= sample_rate / 2 = 8000"):
        MelFrontEnd(fmax=9000.0)
    with pytest.raises(ValueError, match="hop_length=0 must be a positive whole number"):
        MelFrontEnd(hop_length=0)


SMALL = MelFrontEnd(sample_rate=8000, n_fft=256, hop_length=64, win_length=200, n_mels=20, fmin=50.0, fmax=3500.0,
                    duration=0.5)  # fmt: skip


def test_prepare_removes_the_offset_pads_and_peaks_at_half():
    assert (SMALL.frames, SMALL.waveform_length) == (64, 4096)  # int(0.5 * 8000 / 64 * 1.024)
    wave = 0.4 + 0.1 * np.sin(2 * np.pi * np.arange(1000) / 100)  # ten whole periods: mean 0.4
    out = SMALL.prepare(wave)
    assert out.dtype == np.float32 and out.shape == (4096,)
    assert np.abs(out).max() == 0.5 and out[25] == np.float32(0.5)  # the sine's crest
    np.testing.assert_allclose(out[:1000], 0.5 * np.sin(2 * np.pi * np.arange(1000) / 100), atol=1e-6)
    assert not out[1000:].any()


def test_prepare_crops_after_removing_the_whole_clips_mean():
    wave = np.full(5000, 0.25)
    wave[10], wave[4500] = 1.25, -10.0  # the second spike lies beyond the crop
    out = SMALL.prepare(wave)
    mean = (5000 * 0.25 + 1.0 - 10.25) / 5000
    assert out.shape == (4096,) and out[10] == 0.5
    np.testing.assert_allclose(out[0], (0.25 - mean) / (1.25 - mean) * 0.5, rtol=1e-6)
    assert not SMALL.prepare(np.zeros(100)).any()  # silence stays silent


def slaney_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    return np.where(hz < 1000, 3 * hz / 200, 15 + 27 * np.log(np.maximum(hz, 1e-9) / 1000) / math.log(6.4))


def slaney_hz(mel):
    return np.where(mel < 15, 200 * mel / 3, 1000 * np.exp((mel - 15) * math.log(6.4) / 27))


def reference_log_mel(wave, front):
    """AudioLDM's TacotronSTFT written out: framed rfft of the reflect-padded wave under a centred periodic Hann window,
    Slaney-scale triangles with Slaney area norm, natural log of energies floored at 1e-5, cropped or zero-padded."""
    n_fft, hop = front.n_fft, front.hop_length
    window = np.zeros(n_fft)
    left = (n_fft - front.win_length) // 2
    window[left : left + front.win_length] = 0.5 - 0.5 * np.cos(
        2 * np.pi * np.arange(front.win_length) / front.win_length
    )
    padded = np.pad(wave.astype(np.float64), n_fft // 2, mode="reflect")
    spectra = np.abs([np.fft.rfft(padded[t * hop : t * hop + n_fft] * window) for t in range(1 + len(wave) // hop)])
    freqs = np.arange(n_fft // 2 + 1) * front.sample_rate / n_fft
    edges = slaney_hz(np.linspace(slaney_mel(front.fmin), slaney_mel(front.fmax), front.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    triangles = np.maximum(0, np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)))
    log_mel = np.log(np.maximum(spectra @ (triangles * 2 / (upper - lower)).T, 1e-5))
    out = np.zeros((front.frames, front.n_mels))
    out[: min(front.frames, len(log_mel))] = log_mel[: front.frames]
    return out


@pytest.mark.parametrize("front", [MelFrontEnd(duration=2.5), SMALL], ids=["tango", "small"])
def test_mel_matches_an_independent_computation(front):
    rng = np.random.default_rng(0)
    waves = np.stack(
        [front.prepare(rng.uniform(-1, 1, front.waveform_length)), front.prepare(tone(700, 3.0, front.sample_rate))]
    )
    mels = front.mel(torch.from_numpy(waves))
    assert mels.dtype == torch.float32 and mels.shape == (2, front.frames, front.n_mels)
    for mel, wave in zip(mels, waves):
        # energies: float32 rounding of a large spectrum moves the log of a tiny energy, not the energy
        np.testing.assert_allclose(np.exp(mel.numpy()), np.exp(reference_log_mel(wave, front)), rtol=1e-4, atol=1e-6)


def test_mel_at_tango_settings_and_its_edges():
    front = MelFrontEnd()
    silent = front.mel(torch.zeros(1, front.waveform_length))
    assert silent.shape == (1, 1024, 64)
    torch.testing.assert_close(silent, torch.full((1, 1024, 64), math.log(1e-5)))
    loud = torch.from_numpy(front.prepare(tone(1000, 10.0)))[None]
    mel = front.mel(loud)
    # the 1 kHz band: mel centres are evenly spaced on the Slaney scale, 1 kHz is 15 mels, 8 kHz about 45.2
    centre = int(np.argmin(np.abs(slaney_hz(np.linspace(0, slaney_mel(8000), 66)[1:-1]) - 1000)))
    assert mel[0, 100:900].mean(0).argmax().item() == centre
    torch.testing.assert_close(front.mel(torch.full((1, 4096), float("nan"))), front.mel(torch.zeros(1, 4096)))
    short = front.mel(torch.zeros(1, 1600))  # 11 frames, the rest padded with zeros as Tango's _pad_spec does
    assert short[0, 10, 0] == math.log(1e-5) and not short[0, 11:].any()
