"""The training loop: one readable pass from a :class:`~mmdpo.config.Config` to a saved model.

    result = train(load_config("configs/llm/dpo.yaml", ["train.max_steps=100"]))

Per optimizer step: for each micro-batch, the reference runs first (no gradients), then the
policy, then the objective; gradients accumulate over ``train.grad_accum`` micro-batches and
all processes, are clipped, and the optimizer and schedule step. Metrics are averaged over
micro-batches and processes, logged to the console, ``metrics.jsonl`` and TensorBoard. Checkpoints
(``checkpoints/step-N``) hold the model, optimizer, schedule, RNG and objective state, so a resumed
run continues with the same numbers.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

from mmdpo.config import Config, resolved_reference
from mmdpo.objectives import Objective, get_objective
from mmdpo.training import checkpoint
from mmdpo.training.logs import RunLog, image_grid, plot_curves
from mmdpo.training.setup import set_up


@dataclass
class RunResult:
    """What a finished run leaves behind."""

    output_dir: Path
    final_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)


def epoch_batches(n: int, batch_size: int, world: int, rank: int, seed: int, epoch: int) -> list[list[int]]:
    """This process's share of each global batch of one epoch, in a seeded order; the tail is dropped."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    global_batch = batch_size * world
    return [
        order[start + rank * batch_size : start + (rank + 1) * batch_size]
        for start in range(0, n - global_batch + 1, global_batch)
    ]


def micro_batches(
    dataset, collate_fn: Callable, tc, *, world: int, rank: int, per_epoch: int, start_step: int, num_workers: int
) -> Iterator:
    """This process's micro-batches from optimizer step ``start_step`` on, epoch after epoch, in seeded order."""
    epoch, offset = divmod(start_step * tc.grad_accum, per_epoch * tc.grad_accum)
    while True:
        order = epoch_batches(len(dataset), tc.batch_size, world, rank, tc.seed, epoch)[: per_epoch * tc.grad_accum]
        collate = partial(collate_fn, epoch=epoch)
        yield from DataLoader(dataset, batch_sampler=order[offset:], collate_fn=collate, num_workers=num_workers)
        epoch, offset = epoch + 1, 0


def make_optimizer(params: list[torch.nn.Parameter], tc, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (fused on CUDA), or Adafactor with a fixed learning rate as the official SDXL Diffusion-DPO uses it to
    fit a full fine-tune (no relative step, no parameter scaling, update clipping at 1)."""
    if tc.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(
            params, lr=tc.lr, weight_decay=tc.weight_decay, clip_threshold=1.0, scale_parameter=False,
            relative_step=False,
        )  # fmt: skip
    return torch.optim.AdamW(
        params, lr=tc.lr, weight_decay=tc.weight_decay, betas=tc.adam_betas, fused=device.type == "cuda"
    )


class Step:
    """Computes one micro-batch's objective output from the policy, the reference and the labels.

    The adapter prepares the inputs once (for diffusion: encodings and one noise draw per group, from the group's
    own seed, so a group's draw does not depend on its batch, its process or a restart), so the reference and the
    policy see the same randomness; the reference runs first, without gradients.
    """

    def __init__(self, objective: Objective, adapter, scorer, autocast: Callable):
        self.objective, self.adapter, self.scorer, self.autocast = objective, adapter, scorer, autocast

    def __call__(self, batch, state: dict | None):
        with self.autocast():  # the adapter's frozen parts are not prepared modules, so they get no autocast
            inputs = self.adapter.inputs(batch)
            reference = self.adapter.reference_loglik(batch, inputs)
        policy = self.adapter.policy_loglik(self.scorer, batch, inputs)
        return self.objective(policy, reference, batch.prefs, state)


def write_samples(adapter, samples, prompts: list[str], step: int, log: RunLog, autocast: Callable) -> None:
    """The validation grid of the policy's images (text-to-image): prompts by rows, seeds by columns."""
    with autocast():
        images = adapter.generate(
            prompts, range(samples.seeds), steps=samples.steps, guidance_scale=samples.guidance_scale
        )
    log.images(step, image_grid(images, prompts, [f"seed {seed}" for seed in range(samples.seeds)]))


def _mean_metrics(records: list[dict[str, torch.Tensor]], accelerator: Accelerator) -> dict[str, float]:
    keys = records[0].keys()
    stacked = torch.stack([torch.stack([r[k].float() for k in keys]) for r in records]).mean(0)
    stacked = accelerator.reduce(stacked.to(accelerator.device), reduction="mean")
    return {k: float(v) for k, v in zip(keys, stacked)}


def evaluate(step_fn: Step, loader: DataLoader, accelerator: Accelerator, state: dict | None) -> dict[str, float]:
    """Objective metrics averaged over held-out groups, without gradients, with the same noise every time."""
    records = []
    with torch.no_grad():
        for batch in loader:
            out = step_fn(batch.to(accelerator.device), state)
            records.append({"loss": out.loss.detach(), **out.metrics})
    return {f"eval/{k}": v for k, v in _mean_metrics(records, accelerator).items()} if records else {}


def train(config: Config, on_step: Callable[[int, dict[str, float]], None] | None = None) -> RunResult:
    """Run a whole training job; ``on_step(step, metrics)`` is called after every logged step."""
    tc = config.train
    output_dir = Path(tc.output_dir)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(tc.seed)
    objective = get_objective(config.objective.name, **config.objective.hparams)
    reference_kind = resolved_reference(config)

    setup = set_up(config, accelerator, objective, reference_kind)
    adapter, train_ds, eval_ds, skipped = setup.adapter, setup.train, setup.eval, setup.skipped

    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = len(epoch_batches(len(train_ds), tc.batch_size, world, rank, tc.seed, 0)) // tc.grad_accum
    if per_epoch == 0:
        raise ValueError(
            f"{len(train_ds)} training groups do not fill one step of batch_size={tc.batch_size} x grad_accum="
            f"{tc.grad_accum} x {world} processes; lower train.batch_size or add data."
        )
    total_steps = tc.max_steps or per_epoch * tc.epochs

    params = [p for p in adapter.scorer.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tc, accelerator.device)
    schedule = get_scheduler(tc.scheduler, optimizer, int(tc.warmup_ratio * total_steps), total_steps)
    scorer, optimizer = accelerator.prepare(adapter.scorer, optimizer)
    for module in adapter.frozen_modules:
        module.to(accelerator.device)
    step_fn = Step(objective, adapter, scorer, accelerator.autocast)

    eval_loader = None
    if eval_ds is not None and len(eval_ds):
        if len(eval_ds) < world:
            raise ValueError(
                f"{len(eval_ds)} held-out groups cannot be shared by {world} processes; "
                "raise data.eval_fraction or set it to 0."
            )
        shard = list(range(rank, len(eval_ds), world))
        eval_loader = DataLoader(
            eval_ds.select(shard), batch_size=tc.batch_size, collate_fn=partial(setup.eval_collate, epoch=0)
        )

    state = {"step": 0, "objective_state": None}
    log = RunLog(output_dir, tensorboard=tc.tensorboard and accelerator.is_main_process)
    resume_from = checkpoint.latest(output_dir) if tc.resume else None
    if resume_from is not None:
        state = checkpoint.load(resume_from, accelerator, schedule)
        if accelerator.is_main_process:
            log.truncate_after(state["step"])
    elif accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        log.truncate_after(-1)  # a fresh run in a used directory starts a fresh log

    result = RunResult(output_dir=output_dir, final_dir=output_dir / "final", steps=total_steps, skipped=skipped)
    if eval_loader is not None and state["step"] == 0:
        result.eval_before = evaluate(step_fn, eval_loader, accelerator, state["objective_state"])
        if accelerator.is_main_process:
            log.write(0, result.eval_before)
    sampling = tc.samples.every is not None and accelerator.is_main_process
    prompts = tc.samples.prompts or list(dict.fromkeys((eval_ds or train_ds)["prompt"]))[:4] if sampling else []
    if sampling and state["step"] == 0:
        write_samples(adapter, tc.samples, prompts, 0, log, accelerator.autocast)

    batches = micro_batches(
        train_ds, setup.collate, tc, world=world, rank=rank, per_epoch=per_epoch, start_step=state["step"],
        num_workers=config.data.num_workers,
    )  # fmt: skip
    bar = tqdm(
        total=total_steps,
        initial=state["step"],
        desc="train",
        disable=not (tc.progress and accelerator.is_main_process),
    )
    scorer.train()
    groups_per_step = tc.batch_size * tc.grad_accum * world
    clock = (time.perf_counter(), state["step"])
    pending: list[dict[str, torch.Tensor]] = []
    grad_norms: list[torch.Tensor] = []
    nonfinite = torch.zeros((), dtype=torch.bool, device=accelerator.device)
    for step in range(state["step"] + 1, total_steps + 1):
        for micro in range(tc.grad_accum):
            batch = next(batches).to(accelerator.device)
            sync = accelerator.no_sync(scorer) if micro < tc.grad_accum - 1 else contextlib.nullcontext()
            with sync:
                out = step_fn(batch, state["objective_state"])
                nonfinite |= ~torch.isfinite(out.loss.detach())  # checked when the host syncs anyway
                accelerator.backward(out.loss / tc.grad_accum)
            state["objective_state"] = out.state
            pending.append({"loss": out.loss.detach(), **out.metrics})
        if tc.max_grad_norm is not None:
            grad_norms.append(accelerator.clip_grad_norm_(params, tc.max_grad_norm).detach().float())
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] = step
        bar.update(1)

        logged = step % tc.log_every == 0 or step == total_steps
        if logged:
            _check_finite(nonfinite, step)
            metrics = _mean_metrics(pending, accelerator)
            metrics["lr"] = schedule.get_last_lr()[0]
            if grad_norms:
                metrics["grad_norm"] = float(torch.stack(grad_norms).mean())
            metrics["throughput/groups_per_s"] = groups_per_step * (step - clock[1]) / (time.perf_counter() - clock[0])
            if accelerator.device.type == "cuda":
                metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
            pending, grad_norms = [], []
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics.get('rewards/accuracies', float('nan')):.2f}")
            if eval_loader is not None and tc.eval_every and step % tc.eval_every == 0 and step != total_steps:
                metrics.update(evaluate(step_fn, eval_loader, accelerator, state["objective_state"]))
            if step == total_steps and eval_loader is not None:
                result.eval_after = evaluate(step_fn, eval_loader, accelerator, state["objective_state"])
                metrics.update(result.eval_after)
            if accelerator.is_main_process:
                log.write(step, metrics)
            result.history.append({"step": step, **metrics})
            if on_step is not None:
                on_step(step, metrics)
        if sampling and (step % tc.samples.every == 0 or step == total_steps):
            write_samples(adapter, tc.samples, prompts, step, log, accelerator.autocast)
        if tc.save_every and step % tc.save_every == 0 and step != total_steps:
            _check_finite(nonfinite, step)
            checkpoint.save(output_dir, step, accelerator, schedule, state, tc.keep_checkpoints)
        if logged:  # throughput counts training steps only, not evaluation, samples or checkpoints
            clock = (time.perf_counter(), step)
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        adapter.save(accelerator.unwrap_model(scorer), result.final_dir)
        (output_dir / "summary.json").write_text(
            json.dumps(
                {"eval_before": result.eval_before, "eval_after": result.eval_after, "skipped": skipped}, indent=2
            )
        )
        if tc.plots:
            plot_curves(log.path, output_dir / "training_curves.png")
    log.close()
    return result


def _check_finite(nonfinite: torch.Tensor, step: int) -> None:
    if bool(nonfinite):
        raise FloatingPointError(
            f"The loss became NaN or infinite at or before step {step}; lower train.lr, use train.mixed_precision=bf16 "
            "instead of fp16, or check the data for empty responses. The last checkpoint is intact."
        )
