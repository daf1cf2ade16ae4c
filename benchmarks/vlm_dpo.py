"""VLM DPO throughput, peak memory and FLOPs: mmdpo against TRL's DPOTrainer, same model, data, batch and precision.

    python benchmarks/vlm_dpo.py --size real --batch 8 --steps 20                   # GPU, Qwen2-VL-2B architecture
    python benchmarks/vlm_dpo.py --size small --batch 4 --steps 15 --device cpu --precision no --threads 1

The model is a random-weight Qwen2-VL of the chosen size with a byte-level tokenizer and Qwen2-VL's processor built
from parts, saved once to a temporary directory so every trainer loads the same weights. The data are random-noise
images of one size (so a fixed number of image tokens) with random lowercase questions and answers (one byte per
token) as TRL's conversational rows, which mmdpo reads as they are. Both trainers fine-tune the language model fully
against a frozen reference copy, with the vision tower frozen (``--train-vision`` trains it in both), and read their
batches in the main process. Each trainer runs in its own process so peak memory is its own; mmdpo runs once per
layout: ``shared`` (image and prompt once per pair) and ``concat`` (image once per pair, the prompt per answer).

Reported: median seconds per optimizer step after warm-up, pairs/s and tokens/s (prompt, image tokens included, plus
answer, per answer: the same count for all), peak memory (GPU: allocated; CPU: growth of the resident set during
training), the FLOPs of one step counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions)
with the vision tower's forward share, how many images the vision tower encodes per pair, and the seconds per step
spent in the vision tower's forward.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import current_rss, median, result_line, run_child, sync  # noqa: E402

SIZES = {  # text: hidden, layers, heads, kv heads, intermediate, vocab; vision: depth, width, heads; image side
    "tiny": ((32, 2, 4, 2, 37, 512), (2, 32, 4), 56),
    "small": ((256, 4, 4, 2, 688, 4096), (4, 256, 4), 336),
    "real": ((1536, 28, 12, 2, 8960, 151936), (32, 1280, 16), 448),  # Qwen2-VL-2B-Instruct
}
QUESTION = "describe the picture in detail: "


def make_model(size: str, side: int, directory: Path) -> None:
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from mmdpo.adapters.tiny_vlm import QWEN_VISION, chat_template, tiny_vlm_tokenizer

    (hidden, layers, heads, kv, inter, vocab), (depth, width, vision_heads), _ = SIZES[size]
    tokenizer = tiny_vlm_tokenizer(QWEN_VISION)
    pixels = dict(min_pixels=side * side, max_pixels=side * side, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=chat_template("<|vision_start|><|image_pad|><|vision_end|>"),
    )  # fmt: skip
    half = hidden // heads // 2
    config = Qwen2VLConfig(
        text_config=dict(
            vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [half // 4, 3 * half // 8,
                             half - half // 4 - 3 * half // 8]},
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
        ),
        vision_config=dict(
            depth=depth, embed_dim=width, hidden_size=hidden, num_heads=vision_heads, mlp_ratio=4, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, in_chans=3,
        ),
        **{f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in zip(
            ("vision_start", "vision_end", "image", "video"), QWEN_VISION
        )},
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)


def make_data(path: Path, n: int, side: int, question_len: int, completion_len: int) -> None:
    import numpy as np
    from PIL import Image

    rng = random.Random(0)
    noise = np.random.default_rng(0)
    folder = path.parent / "images"
    folder.mkdir()

    def text(length: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(length))

    with path.open("w") as f:
        for i in range(n):
            image = folder / f"{i}.png"
            Image.fromarray(noise.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(image)
            answers = [[{"role": "assistant", "content": text(completion_len)}] for _ in range(2)]
            row = {"images": [str(image)], "prompt": [{"role": "user", "content": QUESTION + text(question_len)}]}
            f.write(json.dumps({**row, "chosen": answers[0], "rejected": answers[1]}) + "\n")


def prompt_lengths(workdir: Path) -> tuple[int, int]:
    """Image tokens and prompt tokens (image tokens included) of the first row, as the processor gives them."""
    from PIL import Image
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(workdir / "model")
    row = json.loads((workdir / "data.jsonl").read_text().splitlines()[0])
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": row["prompt"][0]["content"]}]}]
    text = processor.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    ids = processor(text=[text], images=[Image.open(row["images"][0])])["input_ids"][0]
    return ids.count(processor.image_token_id), len(ids)


class Meter:
    """Per optimizer step: the time (and the vision tower's part of it), and over the last step the images the tower
    encodes and the FLOPs (the tower's among them)."""

    def __init__(self, patches_per_image: int, last: int, sync):
        from transformers.models.qwen2_vl import modeling_qwen2_vl

        self.patches_per_image, self.last, self.sync = patches_per_image, last, sync
        self.images = self.flops = self.vision_flops = 0
        self.vision_seconds, self.mode = 0.0, None
        self.stamps: list[tuple[float, float]] = []
        tower = modeling_qwen2_vl.Qwen2VisionTransformerPretrainedModel
        forward = tower.forward

        def counted(module, hidden_states, *args, **kwargs):
            self.images += hidden_states.shape[0] // self.patches_per_image
            flops = self.mode.get_total_flops() if self.mode else 0
            self.sync()
            start = time.perf_counter()
            out = forward(module, hidden_states, *args, **kwargs)
            self.sync()
            self.vision_seconds += time.perf_counter() - start
            self.vision_flops += (self.mode.get_total_flops() - flops) if self.mode else 0
            return out

        tower.forward = counted

    def step_end(self, step: int) -> None:
        from torch.utils.flop_counter import FlopCounterMode

        self.sync()
        self.stamps.append((time.perf_counter(), self.vision_seconds))
        if step == self.last - 1:  # count the last step
            self.images, self.mode = 0, FlopCounterMode(display=False)
            self.mode.__enter__()
        elif step == self.last:
            self.mode.__exit__(None, None, None)
            self.flops, self.mode = self.mode.get_total_flops(), None


def run_mmdpo(args, model_dir: Path, data: Path, out: Path, meter: Meter) -> None:
    from mmdpo.config import load_config
    from mmdpo.training.callbacks import OnLog
    from mmdpo.training.trainer import train

    config = load_config(
        None,
        [
            f"model.path={model_dir}", f"model.layout={args.layout}", f"model.gradient_checkpointing={args.gc}",
            f"model.train_vision={args.train_vision}", "model.reference=copy", "model.max_length=32768",
            f"data.path={data}", "data.eval_fraction=0", "data.num_workers=0", "objective.name=dpo",
            f"train.output_dir={out}", f"train.batch_size={args.batch}", f"train.max_steps={meter.last}",
            f"train.mixed_precision={args.precision}", "train.log_every=1", "train.lr=1e-6",
            "train.tensorboard=false", "train.plots=false", "train.progress=false",
        ],
    )  # fmt: skip
    meter.sync()
    train(config, callbacks=[OnLog(lambda step, metrics: meter.step_end(step))])


def run_trl(args, model_dir: Path, data: Path, out: Path, meter: Meter) -> None:
    import torch
    from datasets import Image, List, load_dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Clock(TrainerCallback):
        def on_step_end(self, _args, state, *_, **__):
            meter.step_end(state.global_step)

    dataset = load_dataset("json", data_files=str(data), split="train").cast_column("images", List(Image()))
    config = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=meter.last, max_length=None,
        learning_rate=1e-6, bf16=args.precision == "bf16", gradient_checkpointing=args.gc, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=args.device == "cpu", dataloader_num_workers=0,
    )  # fmt: skip
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    if not args.train_vision:
        model.model.visual.requires_grad_(False)
    processor = AutoProcessor.from_pretrained(model_dir)
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=processor, callbacks=[Clock()]
    )
    trainer.train()


def one(args) -> None:
    """Run one trainer in this process and print its numbers as JSON."""
    import torch

    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    else:
        torch.cuda.reset_peak_memory_stats()
    side = args.image_size or SIZES[args.size][2]
    last = args.warmup + args.steps + 1  # the last step counts FLOPs and is not timed
    meter = Meter((side // 14) ** 2, last, lambda: sync(args.device))
    workdir = Path(args.workdir)
    baseline = current_rss() / 2**30
    runner = run_trl if args.which == "trl" else run_mmdpo
    runner(args, workdir / "model", workdir / "data.jsonl", workdir / args.which, meter)
    timed = meter.stamps[args.warmup : last]
    steps = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(timed, timed[1:])]
    if args.device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 - baseline
    result = {
        "step_s": median([s for s, _ in steps]), "vision_s": median([v for _, v in steps]),
        "peak_gib": peak, "gflops": meter.flops / 1e9, "vision_gflops": meter.vision_flops / 1e9,
        "images_per_pair": meter.images / args.batch,
    }  # fmt: skip
    print(result_line(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="real")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--image-size", type=int, help="image side in pixels, a multiple of 28 (default per size)")
    parser.add_argument("--question-len", type=int, default=32, help="question tokens beside the image")
    parser.add_argument("--completion-len", type=int, default=64, help="tokens per answer")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    parser.add_argument("--precision", choices=["bf16", "no"], default="bf16")
    parser.add_argument("--gc", action="store_true", help="gradient checkpointing in both trainers")
    parser.add_argument("--train-vision", action="store_true", help="train the vision tower too, in both trainers")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads per trainer")
    parser.add_argument("--which", choices=["mmdpo", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--layout", choices=["shared", "concat"], default="shared", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        return one(args)

    side = args.image_size or SIZES[args.size][2]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_model(args.size, side, workdir / "model")
        pairs = args.batch * (args.warmup + args.steps + 2)
        make_data(workdir / "data.jsonl", pairs, side, args.question_len, args.completion_len)
        lengths = prompt_lengths(workdir)
        results = {}
        for name, which, layout in [("mmdpo shared", "mmdpo", "shared"), ("mmdpo concat", "mmdpo", "concat"),
                                    ("TRL", "trl", "shared")]:  # fmt: skip
            cmd = [sys.executable, __file__, *sys.argv[1:], "--which", which, "--layout", layout, "--workdir", tmp]
            results[name] = run_child(cmd, name)

    image_tokens, prompt = lengths
    tokens = args.batch * 2 * (prompt + args.completion_len + 2)  # an answer ends with <|im_end|> and a newline
    memory = "peak GiB" if args.device == "cuda" else "RSS+ GiB"
    print(
        f"\nDPO, Qwen2-VL-{args.size} random weights, batch {args.batch} pairs, {side}x{side} images ({image_tokens} "
        f"image tokens of {prompt} prompt tokens), answers {args.completion_len} tokens, {args.precision}, gradient "
        f"checkpointing {'on' if args.gc else 'off'}, vision tower {'trained' if args.train_vision else 'frozen'}, "
        f"{args.device}\n"
    )
    header = ["steps/s", "pairs/s", "tokens/s", memory, "GFLOP/step", "vision", "images/pair", "vision s/step"]
    widths = [9, 9, 10, 10, 12, 8, 13, 15]
    print(f"{'':14s}" + "".join(f"{h:>{w}s}" for h, w in zip(header, widths)))
    for name, r in results.items():
        sps = 1 / r["step_s"]
        share = r["vision_gflops"] / r["gflops"] if r["gflops"] else float("nan")
        cells = [f"{sps:.3f}", f"{sps * args.batch:.2f}", f"{sps * tokens:.0f}", f"{r['peak_gib']:.2f}"]
        cells += [f"{r['gflops']:.1f}", f"{share:.0%}", f"{r['images_per_pair']:.0f}", f"{r['vision_s']:.3f}"]
        print(f"{name:14s}" + "".join(f"{c:>{w}s}" for c, w in zip(cells, widths)))
    t = results["TRL"]
    for name in ("mmdpo shared", "mmdpo concat"):
        m = results[name]
        ratios = [f"{t['step_s'] / m['step_s']:.2f}x", "", "", f"{m['peak_gib'] / t['peak_gib']:.2f}x"]
        ratios += [f"{m['gflops'] / t['gflops']:.2f}x", "", f"{m['images_per_pair'] / t['images_per_pair']:.2f}x"]
        ratios += [f"{m['vision_s'] / t['vision_s']:.2f}x"]
        print(f"{name.replace('mmdpo', 'vs TRL'):14s}" + "".join(f"{c:>{w}s}" for c, w in zip(ratios, widths)))


if __name__ == "__main__":
    main()
