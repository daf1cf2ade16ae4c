"""Drive TRL's own DPOTrainer loss code on chosen per-token log-probs, without a real model."""

from collections import defaultdict
from types import SimpleNamespace

import torch
from accelerate import Accelerator


class FakeLM(torch.nn.Module):
    """Returns fixed per-token log-probs the way TRL's fused LM head does (zeros off the completion)."""

    is_gradient_checkpointing = False

    def __init__(self, log_probs, log_sum_sq_probs=None):
        super().__init__()
        self.log_probs, self.log_sum_sq = log_probs, log_sum_sq_probs

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache=False):
        shape = self.log_probs.shape
        return SimpleNamespace(
            log_probs=self.log_probs,
            log_sum_sq_probs=self.log_sum_sq if self.log_sum_sq is not None else torch.zeros(shape),
            entropy=torch.zeros(shape),
            mean_logits=torch.zeros(shape),
            is_top1=torch.zeros(shape, dtype=torch.bool),
        )


def trl_dpo_loss(
    policy,
    reference,
    mask,
    *,
    loss_type,
    beta=0.1,
    label_smoothing=0.0,
    ld_alpha=None,
    f_divergence_type="reverse_kl",
    f_alpha=0.5,
    use_weighting=False,
    aligned=None,
    discopop_tau=0.05,
):
    """TRL's DPO loss for B pairs given per-token log-probs ``[B, 2, T]`` (chosen first) and a mask."""
    from trl import DPOTrainer

    def rows(x):  # [B, 2, T] -> TRL's [chosen_1..B ; rejected_1..B] rows with one leading prompt token
        x = torch.cat([x[:, 0], x[:, 1]])
        return torch.cat([torch.zeros(x.shape[0], 1, dtype=x.dtype), x], dim=1)

    completion_mask = rows(mask.long())
    shifted = lambda x: (rows(x) * completion_mask)[:, 1:]  # noqa: E731
    trainer = object.__new__(DPOTrainer)
    trainer.model = FakeLM(shifted(policy), None if aligned is None else shifted(policy - aligned))
    trainer.ref_model = FakeLM(shifted(reference))
    trainer.accelerator = Accelerator(cpu=True)
    trainer.args = SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None)
    trainer.aux_loss_enabled = False
    trainer.precompute_ref_logps = False
    trainer.ld_alpha = ld_alpha
    trainer.f_divergence_type = f_divergence_type
    trainer.f_alpha_divergence_coef = f_alpha
    trainer.loss_types, trainer.loss_weights = [loss_type], [1.0]
    trainer.beta, trainer.label_smoothing = beta, label_smoothing
    trainer.use_weighting = use_weighting
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
    }
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}
