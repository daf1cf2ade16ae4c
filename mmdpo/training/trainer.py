"""The training loop: one readable pass from a :class:`~mmdpo.config.Config` to a saved model.

    result = train(load_config("configs/llm/dpo.yaml", ["train.max_steps=100"]))

Per optimizer step: for each micro-batch, the adapter draws the shared inputs, the reference runs (no gradients),
then the policy, then the objective (:class:`~mmdpo.training.step.Step`); gradients accumulate over
``train.grad_accum`` micro-batches and all processes, are clipped, and the optimizer and schedule step. Metrics are
averaged over micro-batches and processes, logged to the console, ``metrics.jsonl`` and TensorBoard. Checkpoints
(``checkpoints/step-N``) hold the model, optimizer, schedule, RNG and objective state, so a resumed run continues
with the same numbers. Everything else hangs off :mod:`~mmdpo.training.callbacks`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from mmdpo.config import Config
from mmdpo.training import checkpoint
from mmdpo.training.batches import micro_batches
from mmdpo.training.callbacks import Callback, TrainState, default_callbacks
from mmdpo.training.logs import RunLog, plot_curves
from mmdpo.training.setup import Run, set_up
from mmdpo.training.step import Step, evaluate, mean_metrics


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


def train(config: Config, callbacks: Sequence[Callback] = ()) -> RunResult:
    """Run a whole training job; ``callbacks`` add to those the config asks for (checkpoints, samples)."""
    tc, output_dir = config.train, Path(config.train.output_dir)
    run = set_up(config)
    step_fn = Step(run.objective, run.adapter, run.scorer, run.accelerator.autocast)
    log = RunLog(output_dir, tensorboard=tc.tensorboard and run.is_main)
    state = start_or_resume(run, log)
    if run.eval_loader is not None and state.step == 0:
        state.eval_before = evaluate(step_fn, run.eval_loader, run.accelerator, state.objective_state)
        if run.is_main:
            log.write(0, state.eval_before)
            (output_dir / "eval_before.json").write_text(json.dumps(state.eval_before))
    callbacks = [*default_callbacks(run, log), *callbacks]
    for callback in callbacks:
        callback.on_train_start(run, state)

    result = RunResult(output_dir, output_dir / "final", run.total_steps, eval_before=state.eval_before,
                       skipped=run.data.skipped)  # fmt: skip
    batches = micro_batches(
        run.data.train, run.data.collate, tc, world=run.accelerator.num_processes, rank=run.accelerator.process_index,
        per_epoch=run.steps_per_epoch, start_step=state.step, num_workers=config.data.num_workers, order=run.order,
    )  # fmt: skip
    bar = tqdm(total=run.total_steps, initial=state.step, desc="train", disable=not (tc.progress and run.is_main))
    meter = Meter(run, state.step)
    run.scorer.train()
    for step in range(state.step + 1, run.total_steps + 1):
        state.step = step
        meter.add(optimizer_step(run, step_fn, batches, state))
        bar.update(1)
        logged = state.step % tc.log_every == 0 or state.step == run.total_steps
        if logged:
            metrics = meter.metrics(state)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", acc=f"{metrics.get('rewards/accuracies', float('nan')):.2f}")
            due = tc.eval_every and state.step % tc.eval_every == 0
            if run.eval_loader is not None and (due or state.step == run.total_steps):
                metrics.update(evaluate(step_fn, run.eval_loader, run.accelerator, state.objective_state))
            if run.is_main:
                log.write(state.step, metrics)
            result.history.append({"step": state.step, **metrics})
            for callback in callbacks:
                callback.on_log(run, state, metrics)
        for callback in callbacks:
            callback.on_step_end(run, state)
        if logged:  # throughput counts training steps only, not evaluation, samples or checkpoints
            meter.restart_clock(state.step)
    bar.close()
    for callback in callbacks:
        callback.on_train_end(run, state)
    result.eval_after = {k: v for k, v in result.history[-1].items() if k.startswith("eval/")} if result.history else {}
    finish(run, result, log)
    return result


def start_or_resume(run: Run, log: RunLog) -> TrainState:
    """The newest checkpoint's state when ``train.resume`` finds one, else a fresh run in ``output_dir``."""
    tc, output_dir = run.config.train, Path(run.config.train.output_dir)
    resume_from = checkpoint.latest(output_dir) if tc.resume else None
    if resume_from is not None:
        saved = checkpoint.load(resume_from, run.accelerator, run.schedule)
        before = output_dir / "eval_before.json"
        eval_before = json.loads(before.read_text()) if before.exists() else {}
        state = TrainState(saved["step"], saved["objective_state"], eval_before)
        if run.is_main:
            print(f"mmdpo: resuming from step {state.step} ({resume_from})")
            log.truncate_after(state.step)
        return state
    if run.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
        log.truncate_after(-1)  # a fresh run in a used directory starts a fresh log
    return TrainState()


def optimizer_step(run: Run, step_fn: Step, batches: Iterator, state: TrainState) -> list[dict[str, torch.Tensor]]:
    """Accumulate ``train.grad_accum`` micro-batches, clip, step; returns the micro-batches' metrics (on device)."""
    tc, accelerator = run.config.train, run.accelerator
    records = []
    for micro in range(tc.grad_accum):
        batch = next(batches).to(accelerator.device)
        sync = accelerator.no_sync(run.scorer) if micro < tc.grad_accum - 1 else contextlib.nullcontext()
        with sync:
            out = step_fn(batch, state.objective_state)
            accelerator.backward(out.loss / tc.grad_accum)
        state.objective_state = out.state
        records.append({"loss": out.loss.detach(), **out.metrics})
        state.flag_nonfinite(out.loss.detach())
    if tc.max_grad_norm is not None:
        records[-1]["grad_norm"] = accelerator.clip_grad_norm_(run.params, tc.max_grad_norm).detach().float()
    run.optimizer.step()
    run.schedule.step()
    run.optimizer.zero_grad(set_to_none=True)
    return records


class Meter:
    """Metrics of the steps since the last log: means over micro-batches and processes, learning rate, throughput of
    training steps only (evaluation, samples and checkpoints excluded), peak memory; a NaN or infinite loss stops
    the run here, where the host syncs anyway."""

    def __init__(self, run: Run, step: int):
        self.run, self.pending = run, []
        self.clock = (time.perf_counter(), step)

    def add(self, records: list[dict[str, torch.Tensor]]) -> None:
        self.pending.extend(records)

    def metrics(self, state: TrainState) -> dict[str, float]:
        run, tc = self.run, self.run.config.train
        state.check_finite()
        norms = [r.pop("grad_norm") for r in self.pending if "grad_norm" in r]
        metrics = mean_metrics(self.pending, run.accelerator)
        metrics["lr"] = run.schedule.get_last_lr()[0]
        if norms:
            metrics["grad_norm"] = float(torch.stack(norms).mean())
        groups = tc.batch_size * tc.grad_accum * run.accelerator.num_processes
        elapsed = time.perf_counter() - self.clock[0]
        metrics["throughput/groups_per_s"] = groups * (state.step - self.clock[1]) / elapsed
        if run.accelerator.device.type == "cuda":
            metrics["memory/peak_gb"] = torch.cuda.max_memory_allocated(run.accelerator.device) / 2**30
        self.pending = []
        return metrics

    def restart_clock(self, step: int) -> None:
        self.clock = (time.perf_counter(), step)


def finish(run: Run, result: RunResult, log: RunLog) -> None:
    """Save the final model in its ecosystem's format, the summary and the training curves."""
    run.accelerator.wait_for_everyone()
    if run.is_main:
        run.adapter.save(run.accelerator.unwrap_model(run.scorer), result.final_dir)
        summary = {"eval_before": result.eval_before, "eval_after": result.eval_after, "skipped": result.skipped}
        (result.output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if run.config.train.plots:
            plot_curves(log.path, result.output_dir / "training_curves.png")
    log.close()
