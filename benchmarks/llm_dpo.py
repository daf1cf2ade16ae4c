"""DPO throughput and peak memory: mmdpo against TRL's DPOTrainer, same model, data, batch and precision.

    python benchmarks/llm_dpo.py --size 0.5b --batch 8 --steps 20          # GPU, Qwen2-0.5B architecture
    python benchmarks/llm_dpo.py --size tiny --batch 4 --steps 6 --device cpu

The model is a random-weight Qwen2 of the chosen size saved once to a temporary directory, so both
trainers load the same weights; the data are random lowercase strings tokenised one byte per token,
with fixed prompt and response lengths. Each trainer runs in its own process so peak memory is its
own. Reported: median seconds per optimizer step after warm-up, pairs/s, tokens/s (prompt + chosen
and prompt + rejected tokens per pair, the same count for both) and peak allocated GPU memory.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import result_line, run_child, step_times, sync  # noqa: E402

SIZES = {  # Qwen2 shapes: hidden, layers, heads, kv heads, intermediate, vocab
    "tiny": (64, 2, 4, 2, 128, 1024),
    "0.5b": (896, 24, 14, 2, 4864, 151936),
    "1.5b": (1536, 28, 12, 2, 8960, 151936),
}


def make_model(size: str, directory: Path) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mmdpo.adapters.tiny import tiny_tokenizer

    hidden, layers, heads, kv, inter, vocab = SIZES[size]
    tokenizer = tiny_tokenizer(model_max_length=8192)
    config = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        intermediate_size=inter,
        max_position_embeddings=8192,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def make_data(path: Path, n: int, prompt_len: int, completion_len: int) -> None:
    rng = random.Random(0)

    def text(length: int) -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ") for _ in range(length))

    with path.open("w") as f:
        for _ in range(n):
            # one byte per token; the response loses one character to the appended EOS
            row = {"prompt": text(prompt_len), "chosen": text(completion_len - 1), "rejected": text(completion_len - 1)}
            f.write(json.dumps(row) + "\n")


def run_mmdpo(args, model_dir: Path, data: Path, out: Path) -> list[float]:
    from mmdpo.config import load_config
    from mmdpo.training.callbacks import OnLog
    from mmdpo.training.trainer import train

    stamps: list[float] = []
    config = load_config(
        None,
        [
            f"model.path={model_dir}",
            f"model.gradient_checkpointing={args.gc}",
            f"model.layout={args.layout}",
            f"model.max_length={args.prompt_len + args.completion_len}",
            f"data.path={data}",
            "data.eval_fraction=0",
            "objective.name=dpo",
            f"train.output_dir={out}",
            f"train.batch_size={args.batch}",
            f"train.max_steps={args.steps}",
            f"train.mixed_precision={args.precision}",
            "train.log_every=1",
            "train.lr=1e-6",
            "train.tensorboard=false",
            "train.plots=false",
            "train.progress=false",
        ],
    )
    sync(args.device)
    train(config, callbacks=[OnLog(lambda step, metrics: (sync(args.device), stamps.append(time.perf_counter())))])
    return stamps


def run_trl(args, model_dir: Path, data: Path, out: Path) -> list[float]:
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            sync(args.device)
            stamps.append(time.perf_counter())

    dataset = load_dataset("json", data_files=str(data), split="train")
    config = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=args.batch,
        max_steps=args.steps,
        max_length=args.prompt_len + args.completion_len,
        learning_rate=1e-6,
        bf16=args.precision == "bf16",
        gradient_checkpointing=args.gc,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=args.device == "cpu",
        dataloader_num_workers=0,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = DPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[Clock()]
    )
    trainer.train()
    return stamps


def one(args) -> None:
    """Run one trainer in this process and print its numbers as JSON."""
    import torch

    workdir = Path(args.workdir)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    runner = run_mmdpo if args.which == "mmdpo" else run_trl
    stamps = runner(args, workdir / "model", workdir / "data.jsonl", workdir / args.which)
    times = step_times(stamps, args.warmup)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    print(result_line({"step_s": statistics.median(times), "peak_gib": peak, "steps": len(times)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="0.5b")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--completion-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the median")
    parser.add_argument("--precision", choices=["bf16", "no"], default="bf16")
    parser.add_argument("--gc", action="store_true", help="gradient checkpointing in both trainers")
    parser.add_argument("--layout", choices=["shared", "concat"], default="shared", help="mmdpo's forward layout")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--which", choices=["mmdpo", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.which:
        return one(args)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        make_model(args.size, workdir / "model")
        make_data(workdir / "data.jsonl", args.batch * (args.steps + 1), args.prompt_len, args.completion_len)
        results = {}
        for which in ("mmdpo", "trl"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--which", which, "--workdir", tmp]
            results[which] = run_child(cmd, which)

    tokens = args.batch * 2 * (args.prompt_len + args.completion_len)
    print(
        f"\nDPO, Qwen2-{args.size} random weights, batch {args.batch} pairs, prompt {args.prompt_len} + response "
        f"{args.completion_len} tokens, {args.precision}, gradient checkpointing {'on' if args.gc else 'off'}, "
        f"{args.device}, mmdpo layout {args.layout}\n"
    )
    print(f"{'':14s}{'steps/s':>10s}{'pairs/s':>10s}{'tokens/s':>12s}{'peak GiB':>10s}")
    for which, r in results.items():
        sps = 1 / r["step_s"]
        print(f"{which:14s}{sps:10.3f}{sps * args.batch:10.2f}{sps * tokens:12.0f}{r['peak_gib']:10.2f}")
    m, t = results["mmdpo"], results["trl"]
    print(
        f"{'mmdpo / TRL':14s}{t['step_s'] / m['step_s']:10.2f}x{'':10s}{t['step_s'] / m['step_s']:11.2f}x"
        f"{m['peak_gib'] / t['peak_gib']:9.2f}x"
    )


if __name__ == "__main__":
    main()
