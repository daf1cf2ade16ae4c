"""What `mmdpo synth` costs beyond generating the images: the same generators, prompts, seeds and batches, timed
(1) generating alone, (2) as the whole pipeline (scoring, PNG encoding, ranking and writing shards on the background
thread while the next batch generates) and (3) the pipeline with the background thread off (``pending_batches=0``:
each batch is scored and written before the next is generated).

    python benchmarks/synth_overhead.py                                        # CPU: tiny SD1.5 and SDXL at 64 px
    python benchmarks/synth_overhead.py --device cuda --threads 8 --resolution 1024 --steps 30 \\
        --generators stabilityai/stable-diffusion-xl-base-1.0 --dtype float16 \\
        --rewards "[{name: pickscore, dtype: float16}, {name: hpsv2, dtype: float16}, {name: clipscore}]"
    python benchmarks/synth_overhead.py --rewards "[{name: clipscore, path: ViT-B-32-quickgelu,
        options: {pretrained: null}}, brightness]"       # CPU: a full-size CLIP ViT-B/32 reward (random weights)

Models load once, outside the timings; a warm-up batch runs first. Repeats alternate the three runs and the medians
are reported, with images/s and the ratio to generating alone (overhead = ratio - 1). On the CPU, torch runs on
``--threads`` threads (1 by default: the generating thread then leaves the other core to the background thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from mmdpo.pipelines.config import load_synth_config  # noqa: E402
from mmdpo.pipelines.generators import load_generator  # noqa: E402
from mmdpo.pipelines.prompts import read_prompts  # noqa: E402
from mmdpo.pipelines.ranked_set import load_rewards, score_images, shard_path  # noqa: E402
from mmdpo.pipelines.synth import Shard, blocks, write_shards  # noqa: E402

SUBJECTS = ["a red fox", "a glass teapot", "an old lighthouse", "a bowl of ramen", "a cyclist", "a snowy village"]
STYLES = ["at dusk", "in watercolour", "as a studio photo", "in the rain", "from above", "in neon light"]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", nargs="+", default=["tiny:sd15", "tiny:sdxl"])
    rewards = "[{name: pickscore, path: tiny}, {name: hpsv2, path: tiny}, {name: aesthetic, path: tiny}, brightness]"
    parser.add_argument("--rewards", default=rewards, help="the synth config's rewards list, in YAML")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="prompts per pipeline call")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    return parser.parse_args()


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="synth_overhead_") as work:
        measure(args, Path(work))


def measure(args: argparse.Namespace, work: Path) -> None:
    prompts_file = work / "prompts.txt"
    prompts_file.write_text("\n".join(f"{SUBJECTS[i % 6]} {STYLES[i // 6 % 6]}, {i}" for i in range(args.prompts)))
    generators = ", ".join(
        f"{{path: '{path}', steps: {args.steps}, resolution: {args.resolution}, batch_size: {args.batch}, "
        f"dtype: {args.dtype}, guidance_scale: 5.0}}"
        for path in args.generators
    )
    config = load_synth_config(
        None,
        [f"prompts={prompts_file}", f"out={work / 'set'}", f"generators=[{generators}]", f"rewards={args.rewards}",
         f"seeds={args.seeds}", f"shard_size={args.shard_size}", f"device={args.device}"],
    )  # fmt: skip
    device = torch.device(args.device)
    prompts = read_prompts(prompts_file)
    loaded = [load_generator(section, device) for section in config.generators]
    scorers = load_rewards(config.rewards, device)
    images = len(prompts) * len(loaded) * args.seeds

    warm = Shard(0, prompts.texts[:1], config, scorers)
    for _, batch_prompts, seeds in warm.batches(0, 1):
        score_images(scorers, batch_prompts, loaded[0](batch_prompts, seeds))

    def generate_alone(_run: int) -> None:
        for first, end in blocks(len(prompts), config.shard_size):
            shard = Shard(first, prompts.texts[first:end], config, scorers)
            for index, generator in enumerate(loaded):
                for _, batch_prompts, seeds in shard.batches(index, generator.section.batch_size):
                    generator(batch_prompts, seeds)

    def pipeline(pending: int, run: int) -> None:
        out = work / f"set-{pending}-{run}"
        todo = [(block, shard_path(out, *block, 8)) for block in blocks(len(prompts), config.shard_size)]
        write_shards(dataclasses.replace(config, pending_batches=pending), prompts, todo, loaded, scorers, False)

    runs = {
        "generation alone": generate_alone,
        "pipeline (background thread)": functools.partial(pipeline, config.pending_batches),
        "pipeline (pending_batches=0)": functools.partial(pipeline, 0),
    }
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for run in range(args.repeats):
        for name, fn in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn(run)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append(time.perf_counter() - start)

    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(
        f"{images} images ({len(prompts)} prompts x {len(loaded)} generators x {args.seeds} seeds) at "
        f"{args.resolution} px, {args.steps} steps, rewards {[r.name for r in scorers]}, {args.dtype}, {hardware}, "
        f"torch threads {args.threads}, median of {args.repeats}"
    )
    base = statistics.median(seconds["generation alone"])
    print(f"{'run':32} {'seconds':>8} {'images/s':>9} {'ratio':>6}")
    for name, times in seconds.items():
        median = statistics.median(times)
        print(f"{name:32} {median:8.2f} {images / median:9.2f} {median / base:6.3f}")


if __name__ == "__main__":
    main()
