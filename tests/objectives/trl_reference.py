"""Drive TRL's own loss code (DPO, KTO, TPO, CPO, ORPO trainers) on chosen log-probs, without a real model.

Each trainer is built with ``object.__new__`` (no ``__init__``, no model loading) and given only the
attributes its loss method reads; fake models return fixed per-token log-probs.
"""

from collections import defaultdict
from types import SimpleNamespace

import torch
from accelerate import Accelerator


def bare(cls, **attrs):
    """A ``cls`` instance without running ``__init__``, with the attributes every TRL loss method reads."""
    trainer = object.__new__(cls)
    trainer.accelerator = Accelerator(cpu=True)
    trainer.aux_loss_enabled = False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    for name, value in attrs.items():
        setattr(trainer, name, value)
    return trainer


def logged(trainer) -> dict[str, float]:
    return {k: v[-1] for k, v in trainer._metrics["train"].items()}


def with_prompt_token(x):
    """``[N, T]`` -> ``[N, T+1]`` with one leading prompt position (zeros)."""
    return torch.cat([torch.zeros(x.shape[0], 1, dtype=x.dtype), x], dim=1)


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
    """TRL's DPO loss for B pairs given per-token log-probs ``[B, 2, T]`` (chosen first) and a mask.

    The reference goes through TRL's precompute path: ``compute_ref_log_probs`` (which applies
    ``ld_alpha`` to the reference) fills ``ref_chosen_logps`` / ``ref_rejected_logps`` of the inputs.
    """
    from trl import DPOTrainer

    def rows(x):  # [B, 2, T] -> TRL's [chosen_1..B ; rejected_1..B] rows with one leading prompt token
        return with_prompt_token(torch.cat([x[:, 0], x[:, 1]]))

    completion_mask = rows(mask.long())
    shifted = lambda x: (rows(x) * completion_mask)[:, 1:]  # noqa: E731
    trainer = bare(
        DPOTrainer,
        model=FakeLM(shifted(policy), None if aligned is None else shifted(policy - aligned)),
        ref_model=None,
        args=SimpleNamespace(discopop_tau=discopop_tau, gradient_checkpointing_kwargs=None),
        precompute_ref_logps=True,
        ld_alpha=ld_alpha,
        f_divergence_type=f_divergence_type,
        f_alpha_divergence_coef=f_alpha,
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=use_weighting,
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
    }
    ref_chosen, ref_rejected = trainer.compute_ref_log_probs(FakeLM(shifted(reference)), inputs)
    inputs.update(ref_chosen_logps=ref_chosen, ref_rejected_logps=ref_rejected)
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    return loss, logged(trainer)


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

    def tokens(x):  # the whole log-prob on one completion token (after the prompt position)
        return x[:, None]

    b = policy.shape[0]
    trainer = bare(
        KTOTrainer,
        model=KeyedLM(tokens(policy), tokens(policy_kl)),
        ref_model=KeyedLM(tokens(reference), tokens(reference_kl)),
        args=SimpleNamespace(gradient_checkpointing_kwargs=None),
        precompute_ref_logps=False,
        calculate_KL=loss_type == "kto",
        loss_type=loss_type,
        beta=beta,
        desirable_weight=desirable_weight,
        undesirable_weight=undesirable_weight,
    )
    ids = torch.zeros(b, 2, dtype=torch.long)
    mask = torch.tensor([[0, 1]] * b)
    inputs = {
        "input_ids": ids, "attention_mask": torch.ones_like(ids), "completion_mask": mask, "label": desirable,
        "KL_input_ids": torch.ones_like(ids), "KL_attention_mask": torch.ones_like(ids), "KL_completion_mask": mask,
    }  # fmt: skip
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    return loss, logged(trainer)


class LogitLM(torch.nn.Module):
    """A two-token vocabulary whose logits give token 0 (every label) exactly the wanted log-probs.

    Logits (lp, log(1 - e^lp)) have logsumexp 0, so log_softmax picks lp back.
    """

    def __init__(self, log_probs):
        super().__init__()
        lp = torch.cat([log_probs, torch.full((log_probs.shape[0], 1), -1.0)], dim=1)  # last position: unused
        self.logits = torch.stack([lp, torch.log(-torch.expm1(lp))], dim=-1)

    def forward(self, input_ids, attention_mask, use_cache=False):
        return SimpleNamespace(logits=self.logits)


def trl_tpo_loss(policy, mask, *, beta=0.01, tpo_alpha=1.0):
    """TRL's Triple-PO loss for B pairs ``[B, 2, T]`` (chosen first), the chosen response also being the gold one."""
    from trl.experimental.tpo import TPOTrainer

    rows = torch.cat([policy[:, 0], policy[:, 1], policy[:, 0]])  # [chosen; rejected; gold]
    completion_mask = with_prompt_token(torch.cat([mask[:, 0], mask[:, 1], mask[:, 0]]).long())
    log_probs = torch.where(completion_mask[:, 1:].bool(), rows, torch.full_like(rows, -1.0))
    trainer = bare(
        TPOTrainer, model=LogitLM(log_probs), loss_type="sigmoid", beta=beta, label_smoothing=0.0, tpo_alpha=tpo_alpha
    )
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": torch.ones_like(completion_mask),
        "completion_mask": completion_mask,
    }
    loss = trainer._compute_loss(trainer.model, inputs, return_outputs=False)
    return loss, logged(trainer)


def trl_cpo_loss(chosen, rejected, *, loss_type, beta, simpo_gamma=0.5, label_smoothing=0.0):
    """TRL's ``CPOTrainer.cpo_loss`` (CPO / SimPO) on per-sequence log-probs ``[B]`` (averaged for SimPO)."""
    from trl.experimental.cpo import CPOTrainer

    trainer = bare(
        CPOTrainer, loss_type=loss_type, beta=beta, simpo_gamma=simpo_gamma, label_smoothing=label_smoothing, alpha=0.0
    )
    return trainer.cpo_loss(chosen, rejected)


def trl_odds_ratio_loss(avg_chosen, avg_rejected, *, beta):
    """TRL's ``ORPOTrainer.odds_ratio_loss`` on average token log-probs ``[B]``: (beta logsig(log odds), rewards...)."""
    from trl.experimental.orpo import ORPOTrainer

    return bare(ORPOTrainer, beta=beta).odds_ratio_loss(avg_chosen, avg_rejected)
