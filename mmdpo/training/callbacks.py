"""What runs around the optimizer steps: validation samples, checkpoints, and hooks of a user's own.

A callback overrides any of the hooks of :class:`Callback`; each receives the :class:`~mmdpo.training.setup.Run`
(adapter, prepared scorer, optimizer, data, config) and the :class:`TrainState`. They run on every process, in
order, after the step that triggers them.

    class Crash(Callback):
        def on_log(self, run, state, metrics):
            if state.step == 5: raise KeyboardInterrupt
    train(config, callbacks=[Crash()])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from mmdpo.figures import image_grid
from mmdpo.training import checkpoint
from mmdpo.training.logs import RunLog


@dataclass
class TrainState:
    """The optimizer step reached, the objective's running statistics, the metrics before training, and whether a
    loss has been NaN or infinite since the start (a device flag, read only where the host syncs anyway)."""

    step: int = 0
    objective_state: dict | None = None
    eval_before: dict[str, float] = field(default_factory=dict)
    nonfinite: torch.Tensor | None = None

    def flag_nonfinite(self, loss: torch.Tensor) -> None:
        bad = ~torch.isfinite(loss)
        self.nonfinite = bad if self.nonfinite is None else self.nonfinite | bad

    def check_finite(self) -> None:
        if self.nonfinite is not None and bool(self.nonfinite):
            raise FloatingPointError(
                f"The loss became NaN or infinite at or before step {self.step}; lower train.lr, use "
                "train.mixed_precision=bf16 instead of fp16, or check the data for empty responses. The last "
                "checkpoint is intact."
            )


class Callback:
    """Hooks of the training loop; every one does nothing unless overridden."""

    def on_train_start(self, run, state: TrainState) -> None:
        """After set-up and resumption, before the first step of this process's run."""

    def on_step_end(self, run, state: TrainState) -> None:
        """After every optimizer step (``state.step`` is the step just taken)."""

    def on_log(self, run, state: TrainState, metrics: dict[str, float]) -> None:
        """After a logged step, with its metrics (training, and held-out ones when evaluated)."""

    def on_train_end(self, run, state: TrainState) -> None:
        """After the last step, before the final model is saved."""


class OnLog(Callback):
    """A callback from a function ``fn(step, metrics)`` called at every logged step."""

    def __init__(self, fn: Callable[[int, dict[str, float]], None]):
        self.fn = fn

    def on_log(self, run, state: TrainState, metrics: dict[str, float]) -> None:
        self.fn(state.step, metrics)


class Checkpoints(Callback):
    """``checkpoints/step-N`` every ``train.save_every`` steps (not at the last, which saves the final model)."""

    def on_step_end(self, run, state: TrainState) -> None:
        tc = run.config.train
        if tc.save_every and state.step % tc.save_every == 0 and state.step != run.total_steps:
            state.check_finite()
            saved = {"objective_state": state.objective_state}
            checkpoint.save(tc.output_dir, state.step, run.accelerator, run.schedule, saved, tc.keep_checkpoints)


class Samples(Callback):
    """The validation grid of the policy's samples (prompts by rows, seeds by columns) before training, every
    ``train.samples.every`` steps and at the end, written by the main process to ``samples/step-N.png``."""

    def __init__(self, log: RunLog):
        self.log = log
        self.prompts: list[str] = []

    def on_train_start(self, run, state: TrainState) -> None:
        samples = run.config.train.samples
        groups = run.data.eval if run.data.eval is not None else run.data.train
        self.prompts = samples.prompts or list(dict.fromkeys(groups["prompt"]))[:4]
        if state.step == 0:
            self.write(run, 0)

    def on_step_end(self, run, state: TrainState) -> None:
        if state.step % run.config.train.samples.every == 0 or state.step == run.total_steps:
            self.write(run, state.step)

    def write(self, run, step: int) -> None:
        samples = run.config.train.samples
        with run.accelerator.autocast():
            images = run.adapter.generate(
                self.prompts, range(samples.seeds), steps=samples.steps, guidance_scale=samples.guidance_scale
            )
        self.log.images(step, image_grid(images, self.prompts, [f"seed {seed}" for seed in range(samples.seeds)]))


def default_callbacks(run, log: RunLog) -> list[Callback]:
    """The callbacks a config asks for: checkpoints, and validation samples on the main process."""
    callbacks: list[Callback] = [Checkpoints()]
    if run.config.train.samples.every is not None and run.is_main:
        callbacks.append(Samples(log))
    return callbacks
