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


class KeyedLM(FakeLM):
    """Returns the KL sequences' log-probs when called on them (KTO's mismatched pairs), else the main ones."""

    def __init__(self, log_probs, kl_log_probs):
        super().__init__(log_probs)
        self.kl = FakeLM(kl_log_probs)

    def forward(self, input_ids, attention_mask, labels, fused_lm_head, use_cache=False):
        source = self.kl if bool(input_ids[0, 0] == 1) else super()
        return source.forward(input_ids, attention_mask, labels, fused_lm_head, use_cache)


def trl_kto_loss(
    policy,
    reference,
    policy_kl,
    reference_kl,
    desirable,
    *,
    loss_type="kto",
    beta=0.1,
    desirable_weight=1.0,
    undesirable_weight=1.0,
):
    """TRL's KTO loss for B unpaired completions given their summed log-probs ``[B]`` and mismatched ones ``[B]``."""
    from trl.trainer.kto_trainer import KTOTrainer

    def tokens(x):  # one prompt token, then the whole log-prob on one completion token
        return torch.stack([torch.zeros_like(x), x], dim=1)[:, 1:]

    b = policy.shape[0]
    trainer = object.__new__(KTOTrainer)
    trainer.model = KeyedLM(tokens(policy), tokens(policy_kl))
    trainer.ref_model = KeyedLM(tokens(reference), tokens(reference_kl))
    trainer.accelerator = Accelerator(cpu=True)
    trainer.args = SimpleNamespace(gradient_checkpointing_kwargs=None)
    trainer.aux_loss_enabled, trainer.precompute_ref_logps = False, False
    trainer.calculate_KL = loss_type == "kto"
    trainer.loss_type, trainer.beta = loss_type, beta
    trainer.desirable_weight, trainer.undesirable_weight = desirable_weight, undesirable_weight
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    ids = torch.zeros(b, 2, dtype=torch.long)
    mask = torch.tensor([[0, 1]] * b)
    inputs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": mask, "label": desirable,
        "KL_input_ids": torch.ones_like(ids), "KL_attention_mask": torch.ones_like(ids), "KL_completion_mask": mask,
    }  # fmt: skip
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}
