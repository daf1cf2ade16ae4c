"""From a config to everything the loop runs: the accelerator, the objective, the adapter of the config's modality,
its data, the prepared scorer, the optimizer and the schedule.

    run = set_up(load_config("configs/llm/dpo.yaml"))
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_scheduler

from mmdpo.adapters.base import Adapter, AdapterData, BuildContext
from mmdpo.config import Config, ConfigError, resolved_reference
from mmdpo.data.schema import provided_labels
from mmdpo.modalities import get_modality
from mmdpo.objectives import Objective, check_labels, get_objective
from mmdpo.precision import half_dtype
from mmdpo.training.batches import Order, epoch_batches


@dataclass
class Run:
    """What one training run holds; the loop, the callbacks and a schedule of stages read and replace its parts.

    ``scorer`` is the adapter's scorer as accelerate prepared it (DDP, autocast); ``params`` its trained parameters;
    ``order`` the order of the training groups per epoch (:mod:`mmdpo.training.batches`).
    """

    config: Config
    accelerator: Accelerator
    objective: Objective
    adapter: Adapter
    data: AdapterData
    scorer: nn.Module
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    steps_per_epoch: int
    total_steps: int
    eval_loader: DataLoader | None
    order: Order = epoch_batches

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process


def set_up(config: Config) -> Run:
    """Build the run a config describes (model, data, optimizer), checking the data against the objective."""
    tc = config.train
    AcceleratorState._reset_state()  # a later run in the same process may pick another precision; processes stay
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, cpu=not torch.cuda.is_available())
    set_seed(tc.seed)
    objective = get_objective(config.objective.name, **config.objective.hparams)
    context = BuildContext(objective, resolved_reference(config), half_dtype(tc.mixed_precision), accelerator)
    adapter = get_modality(config.model.modality).adapter_class().from_config(config, context)
    data = adapter.data(config, accelerator)
    try:
        check_labels(objective, provided_labels(data.train))
    except ValueError as err:
        raise ConfigError(str(err)) from err

    world = accelerator.num_processes
    per_epoch = len(epoch_batches(len(data.train), tc.batch_size, world, 0, tc.seed, 0)) // tc.grad_accum
    if per_epoch == 0:
        raise ConfigError(
            f"{len(data.train)} training groups do not fill one step of train.batch_size={tc.batch_size} x "
            f"train.grad_accum={tc.grad_accum} x {world} processes; lower train.batch_size or add data."
        )
    total_steps = tc.max_steps or per_epoch * tc.epochs
    params = [p for p in adapter.scorer.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, tc, accelerator.device)
    schedule = get_scheduler(tc.scheduler, optimizer, int(tc.warmup_ratio * total_steps), total_steps)
    scorer, optimizer = accelerator.prepare(adapter.scorer, optimizer)
    for module in adapter.frozen_modules:
        module.to(accelerator.device)
    eval_loader = held_out_loader(data, tc.batch_size, accelerator)
    return Run(config, accelerator, objective, adapter, data, scorer, params, optimizer, schedule, per_epoch,
               total_steps, eval_loader)  # fmt: skip


def make_optimizer(params: list[nn.Parameter], tc, device: torch.device) -> torch.optim.Optimizer:
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


def held_out_loader(data: AdapterData, batch_size: int, accelerator: Accelerator) -> DataLoader | None:
    """This process's share of the held-out groups, in order, or None without any."""
    if data.eval is None or not len(data.eval):
        return None
    world, rank = accelerator.num_processes, accelerator.process_index
    if len(data.eval) < world:
        raise ConfigError(
            f"{len(data.eval)} held-out groups cannot be shared by {world} processes; "
            "raise data.eval_fraction or set it to 0."
        )
    shard = data.eval.select(range(rank, len(data.eval), world))
    return DataLoader(shard, batch_size=batch_size, collate_fn=partial(data.eval_collate, epoch=0))
