"""``mmdpo train | cache | synth | score | eval | demo``: the command line.

mmdpo train configs/llm/dpo.yaml model.path=/models/qwen2-0.5b objective.beta=0.1
mmdpo cache configs/sdxl/diffusion_dpo_lora.yaml data.path=/data/pickapic
accelerate launch --num_processes 8 -m mmdpo train configs/llm/simpo.yaml
mmdpo synth configs/synth/sdxl_ranked.yaml prompts=/data/prompts.txt out=/data/synpic
mmdpo score /data/synpic rewards=[pickscore,hpsv2]
mmdpo eval outputs/sdxl_diffusion_dpo_lora prompts=/data/eval_prompts.txt rewards=[pickscore,hpsv2] seeds=4
mmdpo demo
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmdpo.config import ConfigError, load_config


def _train(args: argparse.Namespace) -> None:
    from mmdpo.training.trainer import train

    result = train(load_config(args.config, args.overrides))
    print(f"saved to {result.final_dir}")


def _cache(args: argparse.Namespace) -> None:
    from mmdpo.modalities import get_modality

    config = load_config(args.config, args.overrides)
    modality = get_modality(config.model.modality)
    adapter = modality.adapter_class()
    if not hasattr(adapter, "build_cache"):
        raise ConfigError(
            f"mmdpo cache writes encode caches, which {modality.plural} do not use; model.path={config.model.path!r} "
            f"is {modality.singular}."
        )
    for directory in adapter.build_cache(config):
        print(f"encode cache: {directory}")


def _synth(args: argparse.Namespace) -> None:
    from mmdpo.pipelines.config import load_synth_config
    from mmdpo.pipelines.synth import synth

    result = synth(load_synth_config(args.config, args.overrides))
    rate = result.images / result.seconds if result.seconds else 0.0
    print(f"synth: {result.images} images in {result.seconds:.0f} s ({rate:.2f} images/s) here; set at {result.out}")


def _score(args: argparse.Namespace) -> None:
    from mmdpo.pipelines.config import load_score_config
    from mmdpo.pipelines.score import score

    result = score(load_score_config(args.source, args.overrides))
    ranking = f"{result.aggregation} of {', '.join(result.rewards)}"
    print(f"score: {result.rows} rows in {result.files} files here, ranked by {ranking}; at {result.out}")


def _eval(args: argparse.Namespace) -> None:
    from mmdpo.evaluation import compare_run
    from mmdpo.pipelines.config import load_eval_config
    from mmdpo.pipelines.prompts import read_prompts
    from mmdpo.pipelines.ranked_set import device_of, load_rewards

    config = load_eval_config(args.run_dir, args.overrides)
    prompts = read_prompts(config.prompts, max_prompts=config.max_prompts).texts
    device = device_of(config.device)
    comparison, _, _ = compare_run(
        config.run, prompts, load_rewards(config.rewards, device), seeds=list(range(config.seeds)),
        steps=config.steps, guidance_scale=config.guidance_scale, device=device,
    )  # fmt: skip
    print(comparison.table())
    print(f"before/after images and scores: {Path(config.run) / 'eval'}")


def _demo(args: argparse.Namespace) -> None:
    from mmdpo.demo import run_demo, run_llm_demo

    if args.llm:
        if args.config:
            raise ConfigError("mmdpo demo --llm runs the built-in causal-LM task; drop --config (or --llm).")
        run_llm_demo(args.overrides, output_dir=args.output_dir or "outputs/demo-llm")
    else:
        run_demo(args.config, args.overrides, output_dir=args.output_dir or "outputs/demo")


USER_ERRORS = (ValueError, FileNotFoundError, FloatingPointError)
"""What a user's config, data or paths cause: printed as their one sentence, without a traceback (``--debug`` shows
it). ``ConfigError`` and every data error are ValueErrors."""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mmdpo", description="Preference optimisation for generative models.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    common = argparse.ArgumentParser(add_help=False)  # --debug after the command too, without resetting it
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)

    for name, run, help_, argument, example in (
        ("train", _train, "train from a YAML config with key=value overrides",
         ("config", "path to a YAML config"), "objective.beta=0.1"),
        ("cache", _cache, "encode a text-to-image config's images and prompts once, to disk",
         ("config", "path to a YAML config (the one you will train with)"), "data.path=/data/pickapic"),
        ("synth", _synth, "generate, score and rank a synthetic image preference set",
         ("config", "path to a synth YAML config, e.g. configs/synth/sdxl_ranked.yaml"),
         "prompts=/data/prompts.txt out=/data/set"),
        ("score", _score, "score an image-ranked set with more rewards and re-rank it",
         ("source", "the set: a Parquet file or directory, e.g. a synth output"), "rewards=[pickscore,hpsv2]"),
        ("eval", _eval, "a finished text-to-image run against its base, same prompts and seeds",
         ("run_dir", "the run's output directory (train.output_dir)"), "prompts=p.txt seeds=8"),
    ):  # fmt: skip
        command = commands.add_parser(name, help=help_, parents=[common])
        command.add_argument(argument[0], metavar=argument[0].removesuffix("_dir"), help=argument[1])
        command.add_argument("overrides", nargs="*", help=f"key=value settings, e.g. {example}")
        command.set_defaults(run=run)

    demo = commands.add_parser("demo", help="the whole story on this machine, nothing downloaded", parents=[common])
    demo.add_argument("--config", default=None, help="your own synth + train + eval config instead of the embedded one")
    demo.add_argument("--llm", action="store_true", help="the causal-LM toy task (DPO on the vowel reward) instead")
    demo.add_argument("--output-dir", default=None, help="default outputs/demo (outputs/demo-llm with --llm)")
    demo.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.train.max_steps=50")
    demo.set_defaults(run=_demo)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"mmdpo: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
