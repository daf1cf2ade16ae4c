"""Tango 2-style audio DPO throughput and peak memory: mmdpo against Tango 2's own DPO step.

    # a checkout of declare-lab/tango (its tango2/ folder), and the packages its code imports beyond mmdpo's:
    #   pip install einops librosa soundfile
    python benchmarks/audio_dpo.py --tango-repo path/to/tango --size full --batch 4 --steps 12   # one GPU
    python benchmarks/audio_dpo.py --tango-repo path/to/tango --size small --device cpu --threads 1 \
        --batch 2 --steps 6 --warmup 1 --repeats 3 [--lora]

The peer is Tango 2's real code, imported from the checkout: ``DPOAudioDiffusion`` (``tango2/models.py``: T5
encoding, shared t and noise, the UNet policy pass, the frozen deep-copied reference pass, the DPO loss), AudioLDM's
``AutoencoderKL`` and ``TacotronSTFT`` (``audioldm/``) and ``wav_to_fbank`` (``tango2/tools/torch_tools.py``). Its
training script, ``tango2/tango2-train.py``, cannot run as it is (it downloads AudioLDM's checkpoint and a hub
model, and reads Audio-Alpaca from the hub), so :func:`run_peer` restates its inner loop line for line (the
``for step, batch in enumerate(train_dataloader)`` body: fbank, VAE encoding, ``model(latents, text, ref_unet)``,
backward, AdamW, schedule). To import on today's stack the child gives the checkout three stand-ins and one alias,
none of which touches the measured arithmetic: ``diffusers.utils.randn_tensor`` (moved to
``diffusers.utils.torch_utils``), empty ``wandb`` and ``progressbar`` modules (imported, not used in training),
``torchaudio.load`` / ``torchaudio.functional.resample`` through ``soundfile`` and ``soxr`` (the clips are written at
16 kHz, so nothing is resampled), and librosa's ``pad_center`` and ``filters.mel`` taking positional arguments again
(AudioLDM builds its STFT window and mel basis with them once, at start).

What both trainers get: one Tango-architecture model with random weights (the UNet of Tango's
``configs/diffusion_model_config.json``, FLAN-T5 text encoder, AudioLDM's mel VAE with 8 latent channels, the
HiFi-GAN vocoder), the same UNet weights on both sides, one word-level T5 tokenizer, and N pairs of 16 kHz WAV clips
with captions (mmdpo reads them through a JSONL index in the Audio-Alpaca layout). Sizes:

- ``full``: Tango's real shapes (UNet 866 M parameters, FLAN-T5-large encoder, audioldm-s-full VAE), 10 s clips
  (1024 mel frames x 64 mels, latents 8 x 256 x 16).
- ``small``: the same structure with channels / 10 and a 2-layer T5, 2.5 s clips.
- ``tiny``: for tests.

Both: full fine-tuning of the UNet as Tango 2 does it, the reference a frozen fp32 copy, DPO with beta 2000 (the
same number on both sides: mmdpo's estimate is -0.5 * MSE and Tango 2's inside term is -0.5 * beta * (model_diff -
ref_diff)), AdamW (weight decay 1e-2, eps 1e-8), a constant learning rate, no gradient clipping (Tango 2 has none),
no prompt dropout, the VAE's posterior samples, the same batch and ``--workers``. ``--lora`` adds a third row: mmdpo
with a LoRA (rank 8) and the disabled adapter as the reference, what mmdpo adds beyond Tango 2. ``--cache`` makes
mmdpo train from its encode cache and counts the cache pass in its time (the table states how).

Timing, memory and alternating repeats as in ``benchmarks/diffusion_dpo.py`` (:mod:`harness`).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MemoryMeter,
    StepClock,
    check_timing_args,
    cpu_name,
    result_line,
    run_side,
    step_times,
    summarise,
)  # fmt: skip

TANGO_UNET = {
    "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True, "freq_shift": 0,
    "in_channels": 8, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "only_cross_attention": False, "out_channels": 8, "sample_size": [32, 2],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True, "upcast_attention": True,
}  # fmt: skip
"""Tango's ``configs/diffusion_model_config.json`` (the UNet of every released Tango and Tango 2)."""

SD21_SCHEDULER = {
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "steps_offset": 1,
    "trained_betas": None,
}  # fmt: skip
"""stabilityai/stable-diffusion-2-1's scheduler config, which Tango's ``scheduler_name`` names."""

# Per size: UNet channels, heads and groups, T5 (d_model, layers, heads, d_ff), the VAE's base channels (AudioLDM's
# VAE has 32 groups in every norm, so at least 32), clip seconds.
# The vocoder is always AudioLDM's (Tango's VAE builds it whatever the size).
SIZES: dict[str, dict[str, Any]] = {
    "full": {"unet": ([320, 640, 1280, 1280], [5, 10, 20, 20], 32), "t5": (1024, 24, 16, 2816), "vae": 128,
             "seconds": 10.0},
    "small": {"unet": ([32, 64, 128, 128], [1, 2, 4, 4], 8), "t5": (128, 2, 2, 256), "vae": 32,
              "seconds": 2.5},
    "tiny": {"unet": ([16, 16, 32, 32], [1, 1, 2, 2], 8), "t5": (32, 1, 1, 64), "vae": 32,
             "seconds": 1.25},
}  # fmt: skip
SAMPLE_RATE, HOP, N_FFT, N_MELS = 16000, 160, 1024, 64
WORDS = "a dog barks while birds chirp and a car passes by rain falls on a metal roof people talk loudly".split()


def unet_config(size: str) -> dict[str, Any]:
    blocks, heads, groups = SIZES[size]["unet"]
    return {**TANGO_UNET, "block_out_channels": blocks, "attention_head_dim": heads, "norm_num_groups": groups,
            "cross_attention_dim": SIZES[size]["t5"][0]}  # fmt: skip


def vae_ddconfig(size: str) -> dict[str, Any]:
    """AudioLDM's first-stage config (audioldm-s-full: ch 128, ch_mult 1/2/4, z 8) at ``size``."""
    ch = SIZES[size]["vae"]
    return {"double_z": True, "z_channels": 8, "resolution": 256, "downsample_time": False, "in_channels": 1,
            "out_ch": 1, "ch": ch, "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [],
            "dropout": 0.0}  # fmt: skip


def vocoder_config() -> dict[str, Any]:
    """AudioLDM's HIFIGAN_16K_64 as ``SpeechT5HifiGanConfig`` keys."""
    return {"model_in_dim": N_MELS, "sampling_rate": SAMPLE_RATE, "upsample_initial_channel": 1024,
            "upsample_rates": [5, 4, 2, 2, 2], "upsample_kernel_sizes": [16, 16, 8, 4, 4],
            "resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5]] * 3,
            "normalize_before": False}  # fmt: skip


def save_text_encoder(size: str, directory: Path) -> None:
    """A FLAN-T5-shaped encoder with random weights and a word-level tokenizer (pad 0, eos 1), as one directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(sorted(set(WORDS)))}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)  # fmt: skip
    d_model, layers, heads, d_ff = SIZES[size]["t5"]
    config = T5Config(vocab_size=32128 if size == "full" else 128, d_model=d_model, d_kv=d_model // heads,
                      d_ff=d_ff, num_layers=layers, num_heads=heads, feed_forward_proj="gated-gelu",
                      is_encoder_decoder=False, use_cache=False)  # fmt: skip
    torch.manual_seed(1)
    T5EncoderModel(config).save_pretrained(directory)
    fast.save_pretrained(directory)


def make_clips(directory: Path, pairs: int, seconds: float) -> list[dict[str, str]]:
    """``pairs`` (caption, chosen, rejected) rows of 16 kHz WAV noise clips, plus the JSONL index mmdpo reads."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(pairs):
        row = {"prompt": " ".join(rng.choice(WORDS, size=int(rng.integers(8, 16))))}
        for side in ("chosen", "rejected"):
            path = directory / f"{side}_{i}.wav"
            soundfile.write(path, 0.3 * rng.standard_normal(int(seconds * SAMPLE_RATE)).astype("float32"), SAMPLE_RATE)
            row[side] = path.name
        rows.append(row)
    (directory / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def prepare_workdir(workdir: Path, size: str, pairs: int, sides: list[str]) -> None:
    """The shared parts (UNet config and weights, T5, scheduler, clips) and, for mmdpo, its pipeline over them."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    if not (workdir / "ready").exists():
        save_text_encoder(size, workdir / "t5")
        DDPMScheduler(**SD21_SCHEDULER).save_pretrained(workdir / "scheduler_root" / "scheduler")
        (workdir / "unet_config.json").write_text(json.dumps(unet_config(size)))
        torch.manual_seed(0)
        UNet2DConditionModel.from_config(unet_config(size)).save_pretrained(workdir / "unet")
        make_clips(workdir / "data", pairs, SIZES[size]["seconds"])
        (workdir / "ready").write_text("")
    if any(side.startswith("mmdpo") for side in sides) and not (workdir / "mmdpo-model").exists():
        save_mmdpo_model(workdir, size)


def save_mmdpo_model(workdir: Path, size: str) -> None:
    """A Tango pipeline directory (mmdpo's) over the same UNet, T5 and scheduler, with a diffusers mel VAE and a
    ``SpeechT5HifiGan`` vocoder of AudioLDM's shapes."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, SpeechT5HifiGan, SpeechT5HifiGanConfig, T5EncoderModel

    from mmdpo.adapters.latent_diffusion.tango_pipeline import TangoPipeline

    ch = SIZES[size]["vae"]
    vae = AutoencoderKL(
        in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(ch, 2 * ch, 4 * ch), layers_per_block=2,
        norm_num_groups=32, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
    )  # fmt: skip
    TangoPipeline(
        vae=vae, text_encoder=T5EncoderModel.from_pretrained(workdir / "t5"),
        tokenizer=AutoTokenizer.from_pretrained(workdir / "t5"),
        unet=UNet2DConditionModel.from_pretrained(workdir / "unet"), scheduler=DDPMScheduler(**SD21_SCHEDULER),
        vocoder=SpeechT5HifiGan(SpeechT5HifiGanConfig(**vocoder_config())),
    ).save_pretrained(workdir / "mmdpo-model")  # fmt: skip


# --- the children ----------------------------------------------------------------------------------


def mmdpo_overrides(args, workdir: Path, out: Path, lora: bool) -> list[str]:
    overrides = [
        f"model.path={workdir / 'mmdpo-model'}",
        "model.reference=adapter" if lora else "model.reference=copy",
        "model.latents=sample",
        "model.prompt_dropout=0",
        f"data.path={workdir / 'data' / 'index.jsonl'}",
        f"data.duration={SIZES[args.size]['seconds']}",
        "data.eval_fraction=0",
        f"data.num_workers={args.workers}",
        "objective.name=dpo",
        "objective.beta=2000",
        f"train.output_dir={out}",
        f"train.seed={args.seed}",
        f"train.batch_size={args.batch}",
        f"train.max_steps={args.steps}",
        f"train.lr={args.lr}",
        "train.weight_decay=0.01",
        "train.scheduler=constant",
        "train.warmup_ratio=0",
        "train.max_grad_norm=null",
        f"train.mixed_precision={args.mixed_precision}",
        "train.log_every=1",
        "train.resume=false",
        "train.plots=false",
        "train.progress=false",
        f"data.encode_cache={'require' if args.cache else 'off'}",
        f"data.cache_dir={out / 'cache'}",
    ]
    return overrides + (["model.lora.r=8", "model.lora.alpha=8"] if lora else [])


def run_mmdpo(args, workdir: Path, out: Path, lora: bool) -> float:
    """Train; returns the seconds of the encode-cache pass (0 without ``--cache``)."""
    from mmdpo.adapters.text_to_audio import TextToAudioAdapter
    from mmdpo.config import load_config
    from mmdpo.training.trainer import train

    config = load_config(None, mmdpo_overrides(args, workdir, out, lora))
    cache_s = 0.0
    if args.cache:
        start = time.perf_counter()
        TextToAudioAdapter.build_cache(config)
        cache_s = time.perf_counter() - start
    train(config)
    return cache_s


def import_tango(repo: Path) -> types.ModuleType:
    """``tango2/tango2-train.py`` as a module (its models, dataset and tools), with the stand-ins of the docstring."""
    import importlib.util

    import diffusers.utils
    import numpy as np
    import soundfile
    import soxr
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    diffusers.utils.randn_tensor = randn_tensor

    def stub(name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        sys.modules[name] = module
        return module

    stub("wandb"), stub("progressbar")
    torchaudio, functional = stub("torchaudio"), stub("torchaudio.functional")
    torchaudio.functional = functional

    def load(path):
        data, rate = soundfile.read(path, dtype="float32", always_2d=True)
        return torch.from_numpy(data.T.copy()), rate

    def resample(waveform, orig_freq, new_freq):
        if orig_freq == new_freq:
            return waveform
        return torch.from_numpy(np.stack([soxr.resample(w.numpy(), orig_freq, new_freq) for w in waveform]))

    torchaudio.load, functional.resample = load, resample

    import librosa  # AudioLDM calls two functions that are keyword-only since librosa 0.10 positionally (at init)

    pad_center, mel = librosa.util.pad_center, librosa.filters.mel
    librosa.util.pad_center = lambda data, size=None, **kw: pad_center(data, size=size, **kw)
    librosa.filters.mel = lambda sr, n_fft, n_mels=128, fmin=0.0, fmax=None, **kw: mel(
        sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, **kw
    )
    sys.path[:0] = [str(repo / "tango2"), str(repo)]
    spec = importlib.util.spec_from_file_location("tango2_train", repo / "tango2" / "tango2-train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_peer(args, workdir: Path, out: Path) -> None:
    """Tango 2's DPO training as ``tango2-train.py`` sets it up and runs its inner loop (see the module docstring)."""
    import copy

    import torch
    from accelerate import Accelerator
    from safetensors.torch import load_file
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    tango = import_tango(Path(args.tango_repo))
    from audioldm.audio.stft import TacotronSTFT
    from audioldm.variational_autoencoder import AutoencoderKL

    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.device == "cpu")
    torch.manual_seed(args.seed)
    vae = AutoencoderKL(ddconfig=vae_ddconfig(args.size), embed_dim=8, scale_factor=1.0).eval()
    stft = TacotronSTFT(N_FFT, HOP, N_FFT, N_MELS, SAMPLE_RATE, 0, 8000).eval()
    model = tango.DPOAudioDiffusion(
        str(workdir / "t5"), str(workdir / "scheduler_root"), None, str(workdir / "unet_config.json"), None, True,
        False, 2000,
    )  # fmt: skip
    model.unet.load_state_dict(load_file(workdir / "unet" / "diffusion_pytorch_model.safetensors"))
    rows = [json.loads(line) for line in (workdir / "data" / "index.jsonl").read_text().splitlines()]
    frame = {"prompt": [r["prompt"] for r in rows], "chosen": [str(workdir / "data" / r["chosen"]) for r in rows],
             "rejected": [str(workdir / "data" / r["rejected"]) for r in rows]}  # fmt: skip
    train_dataset = tango.DPOText2AudioDataset(tango.HuggingfaceDataset.from_dict(frame), "", "prompt", "chosen",
                                               "rejected")  # fmt: skip
    train_dataloader = DataLoader(train_dataset, shuffle=True, batch_size=args.batch,
                                  collate_fn=train_dataset.collate_fn, num_workers=args.workers)  # fmt: skip
    ref_unet = copy.deepcopy(model.unet)
    ref_unet.requires_grad_(False)
    ref_unet.to(accelerator.device)
    for param in model.text_encoder.parameters():
        param.requires_grad = False
        model.text_encoder.eval()
    optimizer = torch.optim.AdamW(model.unet.parameters(), lr=args.lr, betas=(0.9, 0.999), weight_decay=1e-2,
                                  eps=1e-08)  # fmt: skip
    lr_scheduler = get_scheduler(name="constant", optimizer=optimizer)
    vae, stft, model, optimizer, lr_scheduler = accelerator.prepare(vae, stft, model, optimizer, lr_scheduler)
    train_dataloader = accelerator.prepare(train_dataloader)
    duration, completed = SIZES[args.size]["seconds"], 0
    model.train()
    while completed < args.steps:
        for _step, batch in enumerate(train_dataloader):  # tango2-train.py, the DPO branch of its loop
            with accelerator.accumulate(model):
                device = accelerator.device
                text, audio_w, audio_l, _ = batch
                target_length = int(duration * 102.4)
                with torch.no_grad():
                    unwrapped_vae = accelerator.unwrap_model(vae)
                    mel_w, _, waveform_w = tango.torch_tools.wav_to_fbank(audio_w, target_length, stft)
                    mel_l, _, waveform_l = tango.torch_tools.wav_to_fbank(audio_l, target_length, stft)
                    mel_w = mel_w.unsqueeze(1).to(device)
                    mel_l = mel_l.unsqueeze(1).to(device)
                    latent_w = unwrapped_vae.get_first_stage_encoding(unwrapped_vae.encode_first_stage(mel_w))
                    latent_l = unwrapped_vae.get_first_stage_encoding(unwrapped_vae.encode_first_stage(mel_l))
                latents = torch.cat((latent_w, latent_l), dim=0)
                loss = model(latents, text, ref_unet, validation_mode=False, sft=False)
                accelerator.backward(loss)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            completed += 1
            if completed == args.steps:
                break


def child(args) -> None:
    """Run one trainer in this process and print its numbers as one RESULT line."""
    import torch
    from diffusers import UNet2DConditionModel

    workdir, out = Path(args.workdir), Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    memory, clock = MemoryMeter(args.device), StepClock(args.device)
    forward = UNet2DConditionModel.forward

    def first_call_marks_start(self, *a, **kw):  # models loaded, optimizer built: training starts here
        memory.mark_start()
        return forward(self, *a, **kw)

    UNet2DConditionModel.forward = first_call_marks_start
    start = time.perf_counter()
    cache_s = 0.0
    if args.child == "peer":
        run_peer(args, workdir, out)
    else:
        cache_s = run_mmdpo(args, workdir, out, lora=args.child == "mmdpo-lora")
    timed = step_times(clock.stamps, args.warmup)
    print(result_line({
        "step_s": clock.median_step(args.warmup),
        "cpu_step_s": clock.median_step(args.warmup, cpu=True),
        "mean_step_s": sum(timed) / len(timed),
        "total_s": time.perf_counter() - start,
        "cache_s": cache_s,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else cpu_name(),
        **memory.report(),
    }))  # fmt: skip


# --- the parent ------------------------------------------------------------------------------------


def print_table(args, results: dict[str, dict], runs: dict[str, list[dict]]) -> None:
    import diffusers
    import torch

    first = next(iter(results.values()))
    device = first["device_name"] + ("" if args.device == "cuda" else f", {first['threads']} thread(s)")
    key = "cpu_step_s" if args.clock == "cpu" else "step_s"
    print(
        f"\nTango 2 DPO, Tango-{args.size} random weights, {SIZES[args.size]['seconds']} s clips, batch {args.batch} "
        f"pairs, precision {args.mixed_precision}; {device}; torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}; {'CPU' if key == 'cpu_step_s' else 'wall'} seconds, median of "
        f"{args.steps - 1 - args.warmup} timed steps per run, median of {args.repeats} run(s)\n"
    )
    memory = "GPU GiB" if args.device == "cuda" else "RSS GiB"
    print(f"{'':16s}{'s/step':>9s}{'(min-max)':>15s}{'pairs/s':>9s}{'peak ' + memory:>14s}{'in training':>13s}")
    for which, r in results.items():
        spread = r[f"{key}_runs"]
        print(f"{which:16s}{r[key]:9.3f}{f'({min(spread):.3f}-{max(spread):.3f})':>15s}{args.batch / r[key]:9.3f}"
              f"{r['peak_gib']:14.2f}{r['train_peak_gib']:13.2f}")  # fmt: skip
    if "peer" in results:
        p = results["peer"]
        for which in [w for w in results if w != "peer"]:
            m = results[which]
            memory = f"{m['peak_gib'] / p['peak_gib']:13.2f}x{m['train_peak_gib'] / p['train_peak_gib']:12.2f}x"
            print(f"{which + '/peer':16s}{m[key] / p[key]:8.2f}x{'':15s}{p[key] / m[key]:8.2f}x{memory}")
        print("(pairs/s > 1x: mmdpo faster; memory < 1x: mmdpo smaller)")
    if args.cache:
        cache = [r["cache_s"] for r in runs.get("mmdpo", [])]
        steps = args.steps
        print(f"mmdpo's encode-cache pass: {min(cache):.1f}-{max(cache):.1f} s for {args.batch * steps} pairs, "
              f"i.e. {min(cache) / steps:.3f}+ s per step of one epoch, not in the s/step above")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tango-repo", help="a checkout of declare-lab/tango")
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--batch", type=int, default=4, help="pairs per optimizer step (Tango 2: 4)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2, help="steps left out after the first")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], default="no",
                        help="Tango 2's accelerate default is no (fp32)")  # fmt: skip
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--only", choices=["mmdpo", "peer", "mmdpo-lora"], help="run one side only")
    parser.add_argument("--lora", action="store_true", help="add mmdpo with LoRA and the disabled-adapter reference")
    parser.add_argument("--cache", action="store_true", help="mmdpo trains from its encode cache (pass timed)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto")
    parser.add_argument("--lr", type=float, default=9.6e-7)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir")
    parser.add_argument("--json")
    parser.add_argument("--child", choices=["mmdpo", "peer", "mmdpo-lora"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    check_timing_args(parser, args)
    if args.child:
        return child(args)
    sides = [args.only] if args.only else ["mmdpo", "peer"] + (["mmdpo-lora"] if args.lora else [])
    if "peer" in sides and not (args.tango_repo and (Path(args.tango_repo) / "tango2" / "models.py").is_file()):
        parser.error("--tango-repo must name a checkout of declare-lab/tango (or pass --only mmdpo).")
    if args.tango_repo:
        args.tango_repo = str(Path(args.tango_repo).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        prepare_workdir(workdir, args.size, args.batch * args.steps, sides)
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for repeat in range(args.repeats):
            for which in sides if repeat % 2 == 0 else sides[::-1]:
                result = run_side(__file__, args, which, workdir, repeat)
                runs[which].append(result)
                print(f"  {which} run {repeat + 1}: {result['step_s']:.3f} s/step wall, {result['cpu_step_s']:.3f} "
                      f"CPU, peak {result['peak_gib']:.2f} GiB", flush=True)  # fmt: skip
    results = {which: summarise(rs) for which, rs in runs.items()}
    print_table(args, results, runs)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
