"""The causal-LM adapter: preference groups -> token ids -> per-token log-likelihoods.

Two layouts for the forward pass:

- ``shared`` (default): one row per group, ``[prompt | y_1 | ... | y_K]``, with a block attention
  mask so each candidate sees the prompt and itself only, and position ids that restart after the
  prompt for every candidate. The prompt runs once per group instead of K times (prefix sharing,
  Wang & Hegde 2024, arXiv 2410.20305). Needs an attention that takes a 4-D mask (``sdpa``, ``eager``).
- ``concat``: K rows per group, ``[prompt | y_k]`` right-padded, as TRL and OpenRLHF do.

Either way the output layer only runs on positions that predict a completion token, in fp32 chunks
(:mod:`mmdpo.adapters.logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmdpo.adapters.logprobs import selected_logprobs
from mmdpo.objectives import LogLik, Preferences
from mmdpo.training.reference import adapter_disabled, frozen_copy

Layout = Literal["shared", "concat"]


class RowError(ValueError):
    """A data row that cannot be used; the trainer skips and counts it when ``data.bad_rows=skip``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- tokenisation ----------------------------------------------------------------------------------


def _is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list)


def tokenize_group(
    row: dict[str, Any], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> dict[str, list[int] | list[list[int]]]:
    """Token ids of a group's prompt and of each candidate's completion.

    Plain text: the prompt takes the tokenizer's special tokens (BOS once), each completion is
    tokenised on its own without them and ends with one EOS. Conversational: the chat template
    renders the prompt with the generation prompt, and each completion is the rest of the rendered
    conversation (the template's own end-of-turn, no extra EOS). Completions are cut at
    ``max_length``; a prompt that leaves no room raises :class:`RowError`.
    """
    prompt, candidates = row["prompt"], row["candidates"]
    if any(not candidate for candidate in candidates):
        raise RowError("empty_response", "A candidate response is empty; remove it or set data.bad_rows=skip.")
    if _is_conversational(prompt):
        prompt_text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completions = []
        for candidate in candidates:
            full = tokenizer.apply_chat_template(prompt + candidate, tokenize=False)
            if not full.startswith(prompt_text):
                raise RowError("template", "The chat template renders the prompt differently inside the conversation.")
            completions.append(tokenizer(full[len(prompt_text) :], add_special_tokens=False)["input_ids"])
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        completions = []
        for candidate in candidates:
            ids = tokenizer(candidate, add_special_tokens=False)["input_ids"]
            if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
                ids = ids + [tokenizer.eos_token_id]
            completions.append(ids)
    room = max_length - len(prompt_ids)
    if room <= 0:
        raise RowError(
            "prompt_too_long",
            f"A prompt of {len(prompt_ids)} tokens leaves no room under model.max_length={max_length}; "
            "raise model.max_length or set data.bad_rows=skip.",
        )
    completions = [ids[:room] for ids in completions]
    return {"prompt_ids": prompt_ids, "candidate_ids": completions}


# --- collation -------------------------------------------------------------------------------------


@dataclass
class LLMBatch:
    """Model inputs plus the positions to score, for B groups of K candidates.

    The M scored tokens are given flat, so the forward needs no data-dependent shapes (and no
    host-device synchronisation): ``gather_index [M]`` indexes the flattened ``[rows * length]``
    hidden states at the positions that predict ``target_ids [M]``, and ``scatter_index [M]``
    places each log-prob in the flattened ``[B, K, T]`` output; ``target_mask [B, K, T]`` marks
    real completion tokens.
    ``mismatched`` (KTO) adds one extra candidate per group: the previous group's first candidate.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor | None
    gather_index: Tensor
    target_ids: Tensor
    scatter_index: Tensor
    target_mask: Tensor
    prefs: Preferences
    reference_values: Tensor | None = None
    mismatched: bool = False
    num_tokens: int = 0
    """Real (non-padding) tokens the forward pass processes."""

    def model_inputs(self) -> dict[str, Tensor | None]:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
            "gather_index": self.gather_index,
            "target_ids": self.target_ids,
            "scatter_index": self.scatter_index,
            "target_mask": self.target_mask,
        }

    def to(self, device: torch.device | str) -> LLMBatch:
        """Model inputs to ``device``; labels stay on the host so objectives check them without a sync."""
        moved: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device)
            moved[f.name] = value
        return LLMBatch(**moved)


def _labels(rows: Sequence[dict[str, Any]]) -> Preferences:
    def column(name: str, dtype: torch.dtype) -> Tensor | None:
        if rows[0].get(name) is None:
            return None
        return torch.tensor([row[name] for row in rows], dtype=dtype)

    return Preferences(
        ranks=column("ranks", torch.long),
        scores=column("scores", torch.float32),
        desirable=column("desirable", torch.bool),
    )


def _pad(sequences: list[list[int]], value: int) -> Tensor:
    width = max((len(s) for s in sequences), default=0)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long).reshape(
        len(sequences), width
    )


def collate(
    rows: Sequence[dict[str, Any]],
    *,
    pad_token_id: int,
    layout: Layout = "shared",
    mismatched: bool = False,
    attention: str = "sdpa",
) -> LLMBatch:
    """Pack tokenised groups into one forward pass (see the module docstring for the layouts)."""
    groups = [(row["prompt_ids"], list(row["candidate_ids"])) for row in rows]
    if mismatched:
        groups = [(prompt, cands + [groups[i - 1][1][0]]) for i, (prompt, cands) in enumerate(groups)]
    k = len(groups[0][1])
    if any(len(cands) != k for _, cands in groups):
        raise ValueError("Every group in a batch needs the same number of candidates K.")

    sequences, positions, targets, target_index = [], [], [], []
    for prompt, cands in groups:
        if layout == "shared":
            row_start = len(sequences)
            seq, pos, index = list(prompt), list(range(len(prompt))), []
            for cand in cands:
                start = len(seq)
                # position start-1 predicts the first token: the prompt's last token for every candidate
                index.append([len(prompt) - 1] + list(range(start, start + len(cand) - 1)))
                seq += cand
                pos += range(len(prompt), len(prompt) + len(cand))
            sequences.append(seq)
            positions.append(pos)
            target_index.append([(row_start, idx) for idx in index])
        else:
            index = []
            for cand in cands:
                index.append((len(sequences), list(range(len(prompt) - 1, len(prompt) + len(cand) - 1))))
                sequences.append(list(prompt) + cand)
            target_index.append(index)
        targets.append(cands)

    input_ids = _pad(sequences, pad_token_id)
    length = input_ids.shape[1]
    width = max(len(c) for cands in targets for c in cands)
    b = len(groups)
    t_index = torch.zeros(b, k, width, dtype=torch.long)
    t_ids = torch.full((b, k, width), pad_token_id, dtype=torch.long)
    t_mask = torch.zeros(b, k, width, dtype=torch.bool)
    for g, (cands, index) in enumerate(zip(targets, target_index)):
        for c, (cand, (row, idx)) in enumerate(zip(cands, index)):
            n = len(cand)
            t_index[g, c, :n] = torch.tensor(idx) + row * length
            t_ids[g, c, :n] = torch.tensor(cand)
            t_mask[g, c, :n] = True

    if layout == "shared":
        attention_mask = _block_mask(groups, length)
        if attention == "eager":
            attention_mask = torch.zeros(attention_mask.shape).masked_fill(
                ~attention_mask, torch.finfo(torch.float32).min
            )
        position_ids = _pad(positions, 0)
    else:
        lengths = torch.tensor([len(s) for s in sequences])
        attention_mask = (torch.arange(length)[None] < lengths[:, None]).long()
        position_ids = None

    reference = None
    if rows[0].get("reference_logps") is not None:
        reference = torch.zeros(b, k, width)
        for g, row in enumerate(rows):
            for c, values in enumerate(row["reference_logps"]):
                reference[g, c, : len(values)] = torch.tensor(values)
    return LLMBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        gather_index=t_index[t_mask],
        target_ids=t_ids[t_mask],
        scatter_index=t_mask.flatten().nonzero().squeeze(-1),
        target_mask=t_mask,
        prefs=_labels(rows),
        reference_values=reference,
        mismatched=mismatched,
        num_tokens=sum(len(s) for s in sequences),
    )


def _block_mask(groups: list[tuple[list[int], list[list[int]]]], length: int) -> Tensor:
    """``[B, 1, L, L]`` bool: causal inside the prompt and inside each candidate, candidates see the prompt."""
    mask = torch.zeros(len(groups), 1, length, length, dtype=torch.bool)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for g, (prompt, cands) in enumerate(groups):
        p = len(prompt)
        mask[g, 0, :p, :p] = causal[:p, :p]
        start = p
        for cand in cands:
            end = start + len(cand)
            mask[g, 0, start:end, :p] = True
            mask[g, 0, start:end, start:end] = causal[: len(cand), : len(cand)]
            start = end
        mask[g, 0, start:, :].fill_(False)
        idle = torch.arange(start, length)
        mask[g, 0, idle, idle] = True  # padding attends to itself only, so no row is fully masked
    return mask


# --- scoring ---------------------------------------------------------------------------------------


class CausalLMScorer(nn.Module):
    """Wraps a causal LM (or a peft model of one) so its forward returns per-token log-probs.

    Handing this module to ``accelerator.prepare`` keeps DDP's gradient hooks and autocast on the
    path that actually runs.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024, wpo: bool = False):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.wpo = wpo

    @property
    def causal_lm(self) -> PreTrainedModel:
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None,
        gather_index: Tensor,
        target_ids: Tensor,
        scatter_index: Tensor,
        target_mask: Tensor,
    ) -> tuple[Tensor, Tensor | None]:
        lm = self.causal_lm
        text_config = lm.config.get_text_config()
        hidden = lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, gather_index)
        out = selected_logprobs(
            selected,
            target_ids,
            lm.get_output_embeddings(),
            chunk_size=self.chunk_size,
            scale=getattr(text_config, "logit_scale", None) or 1.0,
            softcap=getattr(text_config, "final_logit_softcapping", None),
            aligned=self.wpo,
        )
        logp, aligned = out if self.wpo else (out, None)

        def unflatten(flat: Tensor) -> Tensor:
            return flat.new_zeros(target_mask.numel()).index_copy(0, scatter_index, flat).view(target_mask.shape)

        return unflatten(logp), None if aligned is None else unflatten(aligned)


def to_loglik(values: Tensor, batch: LLMBatch, aligned: Tensor | None = None) -> LogLik:
    """Split scorer output into the K real candidates and the KTO mismatched extra."""
    mask = batch.target_mask
    extras: dict[str, Tensor] = {}
    if batch.mismatched:
        extras["mismatched"] = (values[:, -1:] * mask[:, -1:]).sum(-1)
        values, mask = values[:, :-1], mask[:, :-1]
        aligned = None if aligned is None else aligned[:, :-1]
    if aligned is not None:
        extras["wpo_logp"] = aligned
    return LogLik(values=values, mask=mask, extras=extras)


# --- loading ---------------------------------------------------------------------------------------


def load_causal_lm(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM and its tokenizer from a local directory, a hub id, or ``tiny:<arch>``.

    Hub ids download only when the network allows it (``HF_HUB_OFFLINE`` is respected). A
    tokenizer without a pad token pads with EOS.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mmdpo.adapters.tiny import tiny_causal_lm, tiny_tokenizer

    if path.startswith("tiny:"):
        tokenizer = tiny_tokenizer()
        model = tiny_causal_lm(path.removeprefix("tiny:"), tokenizer, attn_implementation=attn_implementation)
        return model.to(dtype), tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise FileNotFoundError(
            f"model.path={path!r} is neither a local model directory nor a reachable hub id ({err})."
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# --- the adapter -----------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout so policy and reference passes are deterministic (as TRL does)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


class LLMAdapter:
    """Everything the trainer needs for a causal LM: tokenise, collate, score policy and reference, save.

    Args:
        model: the policy, a transformers causal LM or a peft model of one.
        tokenizer: its tokenizer.
        reference: ``adapter`` (peft adapter disabled), ``copy`` (frozen copy), ``precomputed``
            (values travel with the batch) or ``none``.
        max_length, layout, chunk_size, wpo: see :class:`~mmdpo.config.ModelSection`.
        reference_dtype: dtype of the frozen copy (half precision under mixed precision: the matmuls
            run in it anyway, and the copy takes half the memory).
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        reference: str = "copy",
        max_length: int = 1024,
        layout: Layout = "shared",
        chunk_size: int = 1024,
        wpo: bool = False,
        reference_dtype: torch.dtype | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.layout = layout
        self.reference_kind = reference
        disable_dropout(model)
        self.scorer = CausalLMScorer(model, chunk_size=chunk_size, wpo=wpo)
        self.reference_scorer = None
        if reference == "copy":
            self.reference_scorer = CausalLMScorer(frozen_copy(model, reference_dtype), chunk_size=chunk_size)

    @classmethod
    def from_config(
        cls, section, reference: str, wpo: bool = False, reference_dtype: torch.dtype | None = None
    ) -> LLMAdapter:
        """Load the model named by a :class:`~mmdpo.config.ModelSection` and wrap it (LoRA when configured)."""
        model, tokenizer = load_causal_lm(
            section.path,
            dtype=DTYPES[section.dtype],
            attn_implementation=section.attn_implementation,
            trust_remote_code=section.trust_remote_code,
        )
        if section.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if section.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora = section.lora
            model = get_peft_model(
                model,
                LoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=lora.target_modules or "all-linear",
                    task_type="CAUSAL_LM",
                ),
            )
        return cls(
            model,
            tokenizer,
            reference=reference,
            max_length=section.max_length,
            layout=section.layout,
            chunk_size=section.logprob_chunk,
            wpo=wpo,
            reference_dtype=reference_dtype,
        )

    @property
    def attention(self) -> str:
        return self.scorer.causal_lm.config._attn_implementation

    def tokenize(self, row: dict[str, Any]) -> dict[str, Any]:
        return tokenize_group(row, self.tokenizer, self.max_length)

    def collate(self, rows: Sequence[dict[str, Any]], mismatched: bool = False) -> LLMBatch:
        return collate(
            rows,
            pad_token_id=self.tokenizer.pad_token_id,
            layout=self.layout,
            mismatched=mismatched,
            attention=self.attention,
        )

    def inputs(self, batch: LLMBatch, generator: torch.Generator | None = None) -> dict[str, Tensor | None]:
        """The forward inputs of a batch (token scoring draws no randomness, so ``generator`` is unused)."""
        return batch.model_inputs()

    def policy_loglik(self, scorer: nn.Module, batch: LLMBatch, inputs: dict[str, Tensor | None]) -> LogLik:
        """Per-token policy log-probs through ``scorer`` (the prepared, possibly wrapped, :attr:`scorer`)."""
        values, aligned = scorer(**inputs)
        return to_loglik(values, batch, aligned)

    def reference_loglik(self, batch: LLMBatch, inputs: dict[str, Tensor | None]) -> LogLik | None:
        """Reference per-token log-probs of a batch, or None when reference-free."""
        if self.reference_kind == "none":
            return None
        if self.reference_kind == "precomputed":
            if batch.reference_values is None:
                raise ValueError("model.reference=precomputed but the batch carries no reference_logps.")
            return to_loglik(batch.reference_values, batch)
        with torch.no_grad():
            if self.reference_kind == "adapter":
                with adapter_disabled(self.scorer.model):
                    return to_loglik(self.scorer(**inputs)[0], batch)
            return to_loglik(self.reference_scorer(**inputs)[0], batch)

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """Modules the trainer moves to the device but never optimises."""
        return [] if self.reference_scorer is None else [self.reference_scorer]

    def save(self, scorer: CausalLMScorer, directory: str | Path) -> None:
        """The adapter (peft) or full model plus the tokenizer, loadable with peft/transformers as they are."""
        directory = Path(directory)
        scorer.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
