"""Diffusion-DPO throughput and peak memory: mmdpo against diffusers' ``train_diffusion_dpo_sdxl.py``.

    # the peer script, from a diffusers checkout (examples/research_projects/diffusion_dpo/)
    PEER=path/to/train_diffusion_dpo_sdxl.py

    python benchmarks/diffusion_dpo.py --peer-script $PEER --size full --batch 2 --steps 12 --gc  # one GPU, bf16
    python benchmarks/diffusion_dpo.py --peer-script $PEER --size small --device cpu --threads 1 \
        --batch 2 --steps 6 --warmup 1 --repeats 3 [--gc] [--profile]
    python benchmarks/diffusion_dpo.py --size small --device cpu --threads 1 --only mmdpo --profile

What both trainers get: one SDXL-architecture pipeline with random weights, saved once with
``StableDiffusionXLPipeline.save_pretrained`` (UNet, VAE, two CLIP text encoders, byte-level CLIP tokenizers
built in memory, the SDXL Euler scheduler config), and one Pick-a-Pic-style Parquet file (``caption``,
``jpg_0``, ``jpg_1`` as JPEG bytes at the training resolution, ``label_0`` in {0, 1}). Sizes:

- ``full``: SDXL base 1.0's shapes (UNet 2,567,463,684 parameters, CLIP-L + bigG, the 4-level VAE), 1024 px.
- ``small``: SDXL's block structure (3 levels, 2 ResNets per level, 1/2/10 transformer layers, head dim 64,
  ``text_time`` conditioning, cross-attention over both encoders' states concatenated, 4-level VAE) with
  channels divided by 5 (UNet 64/128/256, 95.7 M parameters) and by 4 (VAE), 256 px: seconds per step on two
  CPU cores.
- ``tiny``: the same structure shrunk further, for tests.

Both train a LoRA (rank ``--rank``, alpha = rank, Gaussian init, on ``to_q/to_k/to_v/to_out.0``) on the UNet
with the disabled adapter as the reference, DPO with beta 5000 (both scripts' 0.5 convention), AdamW (weight
decay 0.01), a constant learning rate, gradient clipping at 1.0, the same batch, resolution, center crop and
no flip, VAE posterior samples from an fp32 VAE, no prompt dropout and the same ``--workers`` data-loader
processes. Under ``--mixed-precision bf16|fp16`` both cast the frozen UNet and the text encoders to that
dtype and keep the VAE in fp32; mmdpo keeps the LoRA weights in fp32, the peer only under fp16 (its own rule).
With ``--cache`` mmdpo first writes its encode cache (``mmdpo cache``: VAE posterior moments and prompt
embeddings, once) and trains from it without loading the VAE or the text encoders; the peer encodes every step.

Each trainer runs in its own process, so peak memory is its own; with ``--repeats R`` the two alternate
(mmdpo first in even repeats, the peer first in odd ones) and the table shows medians over repeats.
Step time is measured from a timestamp taken after every ``optimizer.step()`` (a global optimizer
post-hook, after a CUDA synchronise), so loading, the final save and any validation are outside it; the
first interval plus ``--warmup`` more are left out and the median of the rest is reported. It includes
everything between two optimizer steps: data loading (JPEG decode, transforms, tokenising), VAE and text
encoding, the reference and policy passes, backward, clipping and the optimizer. The same hook also reads
the process's CPU time; on ``--device cpu`` the table's rates use it (``--clock``), because on cores shared
with other jobs wall time swings by 2x from run to run while CPU time stays within a few per cent. There,
pass ``--threads 1``: with two OpenMP threads on two busy cores every parallel region waits for a descheduled
thread, and one UNet forward measured 15-30x slower than with one thread. Memory: on a GPU
``torch.cuda.max_memory_allocated`` of the whole process and what was allocated at the first UNet call
(weights plus optimizer set-up); on a CPU the peak RSS of the whole process (``getrusage``), the RSS at the
first UNet call and the highest RSS sampled during training. FLOPs come from
``torch.utils.flop_counter.FlopCounterMode`` on one UNet forward at the benchmark's shapes (meta device);
a LoRA step costs per image a policy forward and an input-gradient backward (2F), a reference forward (F),
and one more forward with gradient checkpointing (F): 6F or 8F per pair. VAE and text-encoder FLOPs are
not counted. On a GPU, MFU is that rate over ``--peak-tflops`` (989.4, H100 SXM dense bf16).

``--profile`` also times sections in each child, by wrapping library entry points both trainers call (no
trainer code is changed): data-loader ``__next__``, ``AutoencoderKL.encode``, the CLIP text encoders'
``forward``, ``UNet2DConditionModel.forward`` with gradients (policy) and without (reference; mmdpo's
inversion noising would count here too), ``Accelerator.backward``, ``Accelerator.clip_grad_norm_`` and the
optimizer step. ``other`` is the rest of the step. On a GPU each section synchronises, which costs a little.

The peer runs unmodified through ``runpy``; what it needs from outside:

- ``wandb``: imported at the top of the script, used only for validation images; when it is not installed
  the child puts an empty stand-in module in ``sys.modules``.
- Data: ``--dataset_name`` is a local folder holding ``train.parquet`` (``datasets`` names the split from
  the file name), with ``--dataset_split_name train``.
- Arguments: ``--report_to tensorboard`` (its default; it has no "none"), ``--checkpointing_steps`` beyond
  the run, ``--no_hflip``, ``--lr_scheduler constant``; ``HF_HUB_OFFLINE=1`` and ``HF_HOME`` inside the work
  directory. CPU runs set ``CUDA_VISIBLE_DEVICES=`` for both trainers.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import runpy
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    MemoryMeter,
    StepClock,
    check_timing_args,
    cpu_name,
    median,
    result_line,
    run_side,
    step_times,
    summarise,
    sync,
)  # fmt: skip

H100_BF16_DENSE_TFLOPS = 989.4

SDXL_BLOCKS = {
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "layers_per_block": 2,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "in_channels": 4,
    "out_channels": 4,
}

# Per size: UNet kwargs beyond SDXL_BLOCKS, the two CLIP text encoders (hidden, layers, heads, intermediate,
# activation), VAE channels and groups, resolution. "full" is stabilityai/stable-diffusion-xl-base-1.0.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "unet": {
            "block_out_channels": (320, 640, 1280),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "addition_time_embed_dim": 256,
        },
        "text": [(768, 12, 12, 3072, "quick_gelu"), (1280, 32, 20, 5120, "gelu")],
        "vocab": 49408,
        "vae": ((128, 256, 512, 512), 32),
        "resolution": 1024,
    },
    "small": {
        "unet": {
            "block_out_channels": (64, 128, 256),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (1, 2, 4),
            "addition_time_embed_dim": 64,
        },
        "text": [(64, 4, 1, 256, "quick_gelu"), (128, 8, 2, 512, "gelu")],
        "vocab": 1024,
        "vae": ((32, 64, 128, 128), 32),
        "resolution": 256,
    },
    "tiny": {
        "unet": {
            "block_out_channels": (32, 32, 64),
            "transformer_layers_per_block": (1, 1, 1),
            "attention_head_dim": (1, 1, 2),
            "addition_time_embed_dim": 8,
        },
        "text": [(32, 1, 1, 64, "quick_gelu"), (32, 1, 1, 64, "gelu")],
        "vocab": 1024,
        "vae": ((8, 8, 16, 16), 8),
        "resolution": 64,
    },
}


# --- model and data --------------------------------------------------------------------------------


def unet_config(size: str) -> dict[str, Any]:
    """The ``UNet2DConditionModel`` kwargs of a size: cross-attention over both encoders' states concatenated,
    ``text_time`` input = 6 time ids x ``addition_time_embed_dim`` + the second encoder's pooled projection."""
    spec = SIZES[size]
    (h1, *_), (h2, *_) = spec["text"]
    unet = dict(spec["unet"])
    vae_scale = 2 ** (len(spec["vae"][0]) - 1)
    return {
        **SDXL_BLOCKS,
        **unet,
        "cross_attention_dim": h1 + h2,
        "projection_class_embeddings_input_dim": 6 * unet["addition_time_embed_dim"] + h2,
        "sample_size": spec["resolution"] // vae_scale,
    }


def build_pipeline(size: str, directory: str | Path, seed: int = 0) -> None:
    """Save a random-weight SDXL-architecture pipeline of ``size`` to ``directory`` (diffusers layout)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from mmdpo.adapters.tiny import tiny_clip_tokenizer

    spec = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()  # byte-level vocabulary; its ids fit every size's vocab
    encoders = []
    for cls, (hidden, layers, heads, inter, act) in zip((CLIPTextModel, CLIPTextModelWithProjection), spec["text"]):
        config = CLIPTextConfig(
            vocab_size=max(spec["vocab"], len(tokenizer)), hidden_size=hidden, num_hidden_layers=layers,
            num_attention_heads=heads, intermediate_size=inter, hidden_act=act, projection_dim=hidden,
            max_position_embeddings=tokenizer.model_max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1,
        )  # fmt: skip
        encoders.append(cls(config))
    channels, groups = spec["vae"]
    vae = AutoencoderKL(
        block_out_channels=channels, down_block_types=["DownEncoderBlock2D"] * len(channels),
        up_block_types=["UpDecoderBlock2D"] * len(channels), latent_channels=4, layers_per_block=2,
        norm_num_groups=groups, sample_size=spec["resolution"], scaling_factor=0.13025,
    )  # fmt: skip
    unet = UNet2DConditionModel(**unet_config(size))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        steps_offset=1, timestep_spacing="leading", prediction_type="epsilon", interpolation_type="linear",
    )  # fmt: skip
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[1], tokenizer=tokenizer, tokenizer_2=tokenizer,
        unet=unet, scheduler=scheduler, add_watermarker=False,
    )  # fmt: skip
    pipe.save_pretrained(directory)


WORDS = (
    "a photo of the red blue green small large cat dog house tree mountain river city night sunset portrait "
    "painting oil watercolor detailed cinematic light shadow forest ocean robot castle flower garden"
).split()


def make_data(path: str | Path, rows: int, resolution: int, seed: int = 0) -> None:
    """A Pick-a-Pic-style Parquet file: ``caption``, ``jpg_0``, ``jpg_1`` (JPEG bytes of smooth random images
    at ``resolution``), ``label_0`` alternating 1 and 0."""
    import numpy as np
    from datasets import Dataset
    from PIL import Image

    rng = np.random.default_rng(seed)
    words = random.Random(seed)

    def jpeg() -> bytes:
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((resolution, resolution), Image.BILINEAR)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 13, (resolution, resolution, 3))
        buffer = io.BytesIO()
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    table = [
        {
            "caption": " ".join(words.choices(WORDS, k=words.randint(6, 20))),
            "jpg_0": jpeg(),
            "jpg_1": jpeg(),
            "label_0": float(i % 2 == 0),
        }
        for i in range(rows)
    ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(table).to_parquet(str(path))


def prepare_workdir(workdir: Path, size: str, rows: int, resolution: int) -> None:
    """Build the pipeline and the data once; a work directory built for the same spec is reused."""
    spec = {"size": size, "rows": rows, "resolution": resolution}
    marker = workdir / "spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec:
        return
    for stale in ("model", "data"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    start = time.perf_counter()
    build_pipeline(size, workdir / "model")
    make_data(workdir / "data" / "train.parquet", rows, resolution)
    marker.write_text(json.dumps(spec))
    print(f"built the {size} pipeline and {rows} pairs in {time.perf_counter() - start:.0f} s ({workdir})")


# --- FLOPs -----------------------------------------------------------------------------------------


def unet_forward_flops(config: dict[str, Any], resolution: int, batch: int = 1, text_len: int = 77) -> int:
    """FLOPs of one UNet forward on ``batch`` latents of a ``resolution``-pixel image (VAE factor 8), counted
    by ``FlopCounterMode`` on the meta device (matmuls, convolutions and attention)."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
    side = resolution // 8
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
        x = torch.randn(batch, config["in_channels"], side, side)
        states = torch.randn(batch, text_len, config["cross_attention_dim"])
        added = {"text_embeds": torch.randn(batch, pooled), "time_ids": torch.randn(batch, 6)}
        t = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        unet(x, t, states, added_cond_kwargs=added)
    return counter.get_total_flops()


def train_flops_per_pair(forward: float, *, gradient_checkpointing: bool, lora: bool = True, k: int = 2) -> float:
    """Model FLOPs of one DPO training group of ``k`` images from the per-image UNet forward FLOPs.

    Per image: the policy forward (F), its backward (2F with weight gradients, F for LoRA, whose weight
    gradients are negligible), the reference forward (F) and, with gradient checkpointing, the recomputed
    forward (F). LoRA: 6F per pair, 8F with checkpointing.
    """
    per_image = forward * (1 + (1 if lora else 2) + 1 + (1 if gradient_checkpointing else 0))
    return k * per_image


# --- the children: one trainer per process --------------------------------------------------------


def mmdpo_overrides(args, workdir: Path, out: Path) -> list[str]:
    """The ``mmdpo train`` overrides that match the peer's arguments."""
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(args.mixed_precision, "float32")
    return [
        f"model.path={workdir / 'model'}",
        f"model.dtype={dtype}",
        f"model.lora.r={args.rank}",
        f"model.lora.alpha={args.rank}",
        "model.reference=adapter",
        f"model.gradient_checkpointing={str(args.gc).lower()}",
        "model.latents=sample",
        "model.vae_dtype=float32",
        "model.prompt_dropout=0",
        f"data.path={workdir / 'data' / 'train.parquet'}",
        "data.format=pickapic",
        f"data.resolution={args.resolution}",
        "data.crop=center",
        "data.flip=0",
        "data.eval_fraction=0",
        f"data.num_workers={args.workers}",
        "objective.name=dpo",
        "objective.beta=5000",
        f"train.output_dir={out}",
        f"train.seed={args.seed}",
        f"train.batch_size={args.batch}",
        "train.grad_accum=1",
        f"train.max_steps={args.steps}",
        f"train.lr={args.lr}",
        "train.weight_decay=0.01",
        "train.scheduler=constant",
        "train.warmup_ratio=0",
        "train.max_grad_norm=1.0",
        f"train.mixed_precision={args.mixed_precision}",
        "train.log_every=1",
        "train.resume=false",
        "train.tensorboard=true",
        "train.plots=false",
        "train.progress=false",
        f"data.encode_cache={'require' if args.cache else 'off'}",
        f"data.cache_dir={workdir / 'cache'}",
    ]


def peer_argv(args, workdir: Path, out: Path) -> list[str]:
    """The peer script's command line for the same run."""
    argv = [
        args.peer_script,
        "--pretrained_model_name_or_path", str(workdir / "model"),
        "--dataset_name", str(workdir / "data"),
        "--dataset_split_name", "train",
        "--output_dir", str(out),
        "--seed", str(args.seed),
        "--resolution", str(args.resolution),
        "--train_batch_size", str(args.batch),
        "--gradient_accumulation_steps", "1",
        "--max_train_steps", str(args.steps),
        "--checkpointing_steps", str(10**9),
        "--learning_rate", str(args.lr),
        "--lr_scheduler", "constant",
        "--lr_warmup_steps", "0",
        "--rank", str(args.rank),
        "--beta_dpo", "5000",
        "--max_grad_norm", "1.0",
        "--no_hflip",
        "--vae_encode_batch_size", "8",
        "--dataloader_num_workers", str(args.workers),
        "--mixed_precision", args.mixed_precision,
        "--report_to", "tensorboard",
    ]  # fmt: skip
    if args.gc:
        argv.append("--gradient_checkpointing")
    return argv


def run_mmdpo(args, workdir: Path, out: Path) -> None:
    from mmdpo.adapters.text_to_image import TextToImageAdapter
    from mmdpo.config import load_config
    from mmdpo.training.trainer import train

    config = load_config(None, mmdpo_overrides(args, workdir, out))
    if args.cache:  # `mmdpo cache` once, before training; its time is not a training step's
        start = time.perf_counter()
        TextToImageAdapter.build_cache(config)
        print(f"encode cache: {time.perf_counter() - start:.1f} s", file=sys.stderr)
    train(config)


def run_peer(args, workdir: Path, out: Path) -> None:
    import importlib.util
    import types

    if importlib.util.find_spec("wandb") is None:  # imported at the top of the script, used only for validation
        sys.modules["wandb"] = types.ModuleType("wandb")
    argv = peer_argv(args, workdir, out)
    saved, sys.argv = sys.argv, argv
    try:
        runpy.run_path(args.peer_script, run_name="__main__")
    finally:
        sys.argv = saved


class Sections:
    """Wall and CPU time per named section per optimizer step, from wrapped library entry points."""

    def __init__(self, device: str):
        self.device = device
        self.records: list[tuple[str, float, float, float]] = []  # (section, wall start, wall s, CPU s)
        self._depth = 0

    def add(self, name: str, start: float, cpu_start: float) -> None:
        self.records.append((name, start, time.perf_counter() - start, time.process_time() - cpu_start))

    def wrap(self, owner: Any, attr: str, section: str | Any) -> None:
        """Time ``owner.attr``; ``section`` is a name or a function of nothing that returns one."""
        original = getattr(owner, attr)
        sections = self

        def timed(*a, **kw):
            if sections._depth:  # nested in another timed section: counted there
                return original(*a, **kw)
            name = section() if callable(section) else section
            sync(sections.device)
            start, cpu_start = time.perf_counter(), time.process_time()
            sections._depth += 1
            try:
                return original(*a, **kw)
            finally:
                sections._depth -= 1
                sync(sections.device)
                sections.add(name, start, cpu_start)

        setattr(owner, attr, timed)

    def per_step(self, stamps: list[float], warmup: int, cpu_stamps: list[float] | None = None) -> dict[str, float]:
        """Median seconds per timed step of each section and ``other`` (the step minus all sections); wall time,
        or CPU time when ``cpu_stamps`` (the step clock's) are given."""
        import bisect

        steps = list(range(1 + warmup, len(stamps)))  # step k runs from stamps[k-1] to stamps[k]
        names = sorted({name for name, *_ in self.records})
        totals = {name: {k: 0.0 for k in steps} for name in names}
        for name, start, wall, cpu in self.records:
            k = bisect.bisect_left(stamps, start)
            if k in totals[name]:
                totals[name][k] += wall if cpu_stamps is None else cpu
        out = {name: median(list(by_step.values())) for name, by_step in totals.items()}
        bounds = stamps if cpu_stamps is None else cpu_stamps
        other = [bounds[k] - bounds[k - 1] - sum(totals[n][k] for n in names) for k in steps]
        out["other"] = median(other)
        return out


def install_sections(sections: Sections, clock: StepClock) -> None:
    """Wrap the entry points both trainers go through (see the module docstring)."""
    import torch
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    from torch.utils.data.dataloader import _BaseDataLoaderIter
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    sections.wrap(_BaseDataLoaderIter, "__next__", "data")
    sections.wrap(AutoencoderKL, "encode", "vae_encode")
    sections.wrap(CLIPTextModel, "forward", "text_encode")
    sections.wrap(CLIPTextModelWithProjection, "forward", "text_encode")
    sections.wrap(UNet2DConditionModel, "forward", lambda: "policy_fwd" if torch.is_grad_enabled() else "ref_fwd")
    sections.wrap(Accelerator, "backward", "backward")
    sections.wrap(Accelerator, "clip_grad_norm_", "clip_grad")
    starts: list[tuple[float, float]] = []

    def pre(*_):
        sync(sections.device)
        starts.append((time.perf_counter(), time.process_time()))

    def post(*_):  # registered after the clock's hook: the clock has already synchronised
        sections.add("optimizer", *starts[-1])

    register_optimizer_step_pre_hook(pre)
    register_optimizer_step_post_hook(post)


def child(args) -> None:
    """Run one trainer in this process and print its numbers as one RESULT line."""
    import torch
    from diffusers import UNet2DConditionModel

    workdir, out = Path(args.workdir), Path(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
    memory = MemoryMeter(args.device)
    clock = StepClock(args.device)
    sections = Sections(args.device) if args.profile else None
    if sections is not None:
        install_sections(sections, clock)
    forward = UNet2DConditionModel.forward

    def first_call_marks_start(self, *a, **kw):  # models loaded, optimizer built: training starts here
        memory.mark_start()
        return forward(self, *a, **kw)

    UNet2DConditionModel.forward = first_call_marks_start
    (run_mmdpo if args.child == "mmdpo" else run_peer)(args, workdir, out)
    timed = step_times(clock.stamps, args.warmup)
    result = {
        "step_s": clock.median_step(args.warmup),
        "cpu_step_s": clock.median_step(args.warmup, cpu=True),
        "mean_step_s": sum(timed) / len(timed),
        "steps_timed": len(timed),
        "optimizer_steps": len(clock.stamps),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if args.device == "cuda" else f"{cpu_name()}",
        **memory.report(),
    }
    if sections is not None:
        result["sections"] = sections.per_step(clock.stamps, args.warmup)
        result["cpu_sections"] = sections.per_step(clock.stamps, args.warmup, clock.cpu_stamps)
    print(result_line(result))


# --- the parent: build once, run the children, print the table ------------------------------------


def print_table(args, results: dict[str, dict], flops_pair: float, forward: float) -> None:
    import diffusers
    import torch

    first = next(iter(results.values()))
    device = first["device_name"] + ("" if args.device == "cuda" else f", {first['threads']} thread(s)")
    print(
        f"\nDiffusion-DPO LoRA r={args.rank}, SDXL-{args.size} random weights (UNet fwd {forward / 1e9:.2f} "
        f"GFLOP/image), {args.resolution} px, batch {args.batch} pairs, precision {args.mixed_precision}, "
        f"gradient checkpointing {'on' if args.gc else 'off'}; {device}; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}; median of {args.steps - 1 - args.warmup} timed steps per run, "
        f"median of {args.repeats} run(s)\n"
    )
    key = "cpu_step_s" if args.clock == "cpu" else "step_s"
    other = "step_s" if key == "cpu_step_s" else "cpu_step_s"
    labels = {"step_s": "wall s/step", "cpu_step_s": "CPU s/step"}
    mfu = args.device == "cuda"
    memory = "GPU GiB" if args.device == "cuda" else "RSS GiB"
    head = f"{'':12s}{labels[key]:>12s}{'(min-max)':>13s}{'pairs/s':>9s}{'TFLOP/s':>9s}"
    head += f"{'MFU':>7s}" if mfu else f"{labels[other]:>13s}"
    head += f"{'peak ' + memory:>14s}{'at start':>10s}{'in training':>13s}"
    print(head)
    for which, r in results.items():
        pairs = args.batch / r[key]
        runs = r[f"{key}_runs"]
        row = f"{which:12s}{r[key]:12.3f}{f'({min(runs):.2f}-{max(runs):.2f})':>13s}{pairs:9.3f}"
        row += f"{pairs * flops_pair / 1e12:9.4f}"
        row += f"{100 * pairs * flops_pair / (args.peak_tflops * 1e12):6.1f}%" if mfu else f"{r[other]:13.3f}"
        row += f"{r['peak_gib']:14.2f}{r['start_gib']:10.2f}{r['train_peak_gib']:13.2f}"
        print(row)
    if len(results) == 2:
        m, p = results["mmdpo"], results["peer"]
        row = f"{'mmdpo/peer':12s}{m[key] / p[key]:11.2f}x{'':13s}{p[key] / m[key]:8.2f}x{p[key] / m[key]:8.2f}x"
        row += f"{'':7s}" if mfu else f"{m[other] / p[other]:12.2f}x"
        row += f"{m['peak_gib'] / p['peak_gib']:13.2f}x{m['start_gib'] / p['start_gib']:9.2f}x"
        row += f"{m['train_peak_gib'] / p['train_peak_gib']:12.2f}x"
        print(row)
        print("(s/step < 1x and pairs/s > 1x: mmdpo faster; memory < 1x: mmdpo smaller)")
    sections = "cpu_sections" if key == "cpu_step_s" else "sections"
    if sections in next(iter(results.values())):
        names = ["data", "vae_encode", "text_encode", "ref_fwd", "policy_fwd", "backward", "clip_grad", "optimizer"]
        print(f"\n{labels[key]} by section (median over steps, then over runs)\n{'':14s}", end="")
        print("".join(f"{which:>18s}" for which in results))
        for name in [*names, "other"]:
            cells = []
            for r in results.values():
                value = r[sections].get(name, 0.0)
                cells.append(f"{value:9.3f} ({100 * value / r[key]:4.1f}%)")
            print(f"{name:14s}" + "".join(f"{c:>18s}" for c in cells))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="full")
    parser.add_argument("--batch", type=int, default=2, help="pairs per optimizer step (per-device batch)")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out after the first")
    parser.add_argument("--resolution", type=int, help="pixels (default: the size's own, 1024 / 256 / 64)")
    parser.add_argument("--gc", action="store_true", help="gradient checkpointing in both trainers")
    parser.add_argument("--cache", action="store_true", help="mmdpo trains from its encode cache (written first)")
    parser.add_argument("--mixed-precision", choices=["auto", "no", "bf16", "fp16"], default="auto",
                        help="auto: bf16 on cuda, no (fp32) on cpu")  # fmt: skip
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--peer-script", help="path to diffusers' train_diffusion_dpo_sdxl.py")
    parser.add_argument("--only", choices=["mmdpo", "peer"], help="run one side only")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, interleaved; medians reported")
    parser.add_argument("--profile", action="store_true", help="also time sections of each step")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="what the table's rates use: wall time, or the process's CPU time (auto: cpu on --device "
                        "cpu, where other jobs share the cores; wall on cuda)")  # fmt: skip
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank (alpha = rank)")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, help="CPU threads per trainer (OMP_NUM_THREADS; default: torch's)")
    parser.add_argument("--workers", type=int, default=0, help="data-loader worker processes, both trainers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_DENSE_TFLOPS, help="for MFU (GPU only)")
    parser.add_argument("--workdir", help="keep the model and data here and reuse them (default: a temp dir)")
    parser.add_argument("--json", help="also write all numbers to this file")
    parser.add_argument("--child", choices=["mmdpo", "peer"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.resolution = args.resolution or SIZES[args.size]["resolution"]
    if args.mixed_precision == "auto":
        args.mixed_precision = "bf16" if args.device == "cuda" else "no"
    check_timing_args(parser, args)
    if args.child:
        return child(args)
    sides = [args.only] if args.only else ["mmdpo", "peer"]
    if "peer" in sides and not (args.peer_script and Path(args.peer_script).is_file()):
        parser.error("--peer-script must name diffusers' train_diffusion_dpo_sdxl.py (or pass --only mmdpo).")
    if args.peer_script:
        args.peer_script = str(Path(args.peer_script).resolve())
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda but no CUDA device is visible; pass --device cpu.")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        prepare_workdir(workdir, args.size, args.batch * args.steps, args.resolution)
        runs: dict[str, list[dict]] = {side: [] for side in sides}
        for repeat in range(args.repeats):
            for which in sides if repeat % 2 == 0 else sides[::-1]:
                result = run_side(__file__, args, which, workdir, repeat)
                runs[which].append(result)
                print(
                    f"  {which} run {repeat + 1}: {result['step_s']:.3f} s/step wall, {result['cpu_step_s']:.3f} CPU",
                    flush=True,
                )

    config = unet_config(args.size)
    forward = unet_forward_flops(config, args.resolution)
    flops_pair = train_flops_per_pair(forward, gradient_checkpointing=args.gc)
    results = {which: summarise(rs) for which, rs in runs.items()}
    print_table(args, results, flops_pair, forward)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "flops_per_pair": flops_pair, "results": results, "runs": runs}, indent=2)
        )


if __name__ == "__main__":
    main()
