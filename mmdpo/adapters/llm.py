"""The causal-LM adapter: preference groups -> token ids -> per-token log-likelihoods.

Two layouts for the forward pass:

- ``shared`` (default): one row per group, ``[prompt | y_1 | ... | y_K]``, with a block attention
  mask so each candidate sees the prompt and itself only, and position ids that restart after the
  prompt for every candidate. The prompt runs once per group instead of K times (prefix sharing,
  Wang & Hegde 2024, arXiv 2410.20305). Needs an attention that takes a 4-D mask (``sdpa``, ``eager``).
- ``concat``: K rows per group, ``[prompt | y_k]`` right-padded, as TRL and OpenRLHF do.

Either way the output layer only runs on positions that predict a completion token, in fp32 chunks
(:mod:`mmdpo.adapters.logprobs`).

Token-level objectives ask for more (:attr:`mmdpo.objectives.Objective.extras`), and only they pay for it:
``token_kl`` keeps the reference's final hidden states at the scored positions (``[M, H]``) and evaluates its
output layer chunk by chunk inside the policy's; SparsePO's masks keep every layer's reference states there
(``[M, L, H]`` for learned masks, ``[M, L]`` means for derived ones); TGDPO runs a third, frozen guidance model;
Step-DPO reads the step of every token from the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mmdpo.adapters.base import AdapterData, BuildContext, ReferencePass
from mmdpo.adapters.logprobs import selected_logprobs
from mmdpo.adapters.reference import adapter_disabled, frozen_copy
from mmdpo.adapters.token_level import TokenMask, base_head, layer_outputs
from mmdpo.config import ConfigError, DataSection, ModelSection
from mmdpo.data.schema import preferences
from mmdpo.objectives import LogLik, Preferences
from mmdpo.precision import DTYPES

Layout = Literal["shared", "concat"]


@dataclass
class TokenModelSection(ModelSection):
    """The ``model`` section of causal LMs (vision-language ones included).

    ``attn_implementation``: any transformers attention. ``max_length`` bounds prompt + completion (completions are
    cut; a prompt that leaves no room is a bad row); ``layout`` ``shared`` runs the prompt once per group with a
    block mask (needs ``sdpa`` or ``eager``), ``concat`` runs K rows as TRL does; ``logprob_chunk`` is how many
    positions the output layer scores at a time. ``guidance_path`` is TGDPO's guidance model (a path like ``path``,
    same tokenizer), run frozen in the reference's dtype; with ``reference=precomputed`` its values are precomputed
    too."""

    max_length: int = 1024
    layout: Layout = "shared"
    logprob_chunk: int = 1024
    trust_remote_code: bool = False
    guidance_path: str | None = None


class RowError(ValueError):
    """A data row that cannot be used; the trainer skips and counts it when ``data.bad_rows=skip``."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# --- tokenisation ----------------------------------------------------------------------------------


def _is_conversational(prompt: Any) -> bool:
    return isinstance(prompt, list)


def tokenize_group(
    row: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    *,
    template: Any = None,
    encode_prompt: Callable[[str, bool], list[int]] | None = None,
) -> dict[str, list[int] | list[list[int]] | None]:
    """Token ids of a group's prompt and of each candidate's completion.

    Plain text: the prompt takes the tokenizer's special tokens (BOS once), each completion is
    tokenised on its own without them and ends with one EOS. Conversational: the chat template
    renders the prompt with the generation prompt, and each completion is the rest of the rendered
    conversation (the template's own end-of-turn, no extra EOS). Step data (a ``steps`` column, see
    :mod:`mmdpo.data.schema`): the shared correct steps (``prefix``) continue the prompt, each candidate is its
    steps tokenised one by one with no EOS (a step need not end the response; Step-DPO's trainer adds none
    either), and ``step_ids`` gives every completion token's step (None for other data). Completions are cut
    at ``max_length``; a prompt that leaves no room raises :class:`RowError`.

    ``template`` renders conversations (the tokenizer by default; a VLM's processor, whose template places its image
    tokens) and ``encode_prompt(text, add_special_tokens)`` turns the rendered prompt into ids (the tokenizer by
    default; a VLM's processor, which expands each image placeholder into the image's tokens).
    """
    template = template or tokenizer
    if encode_prompt is None:

        def encode_prompt(text: str, special: bool) -> list[int]:
            return tokenizer(text, add_special_tokens=special)["input_ids"]

    prompt, candidates, steps = row["prompt"], row["candidates"], row.get("steps")
    if any(not candidate for candidate in candidates):
        raise RowError("empty_response", "A candidate response is empty; remove it or set data.bad_rows=skip.")
    step_ids = None
    if _is_conversational(prompt):
        prompt_text = template.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        prompt_ids = encode_prompt(prompt_text, False)
    else:
        prompt_ids = encode_prompt(prompt, True)
    if steps is not None:
        prompt_ids = prompt_ids + _text_ids(row.get("prefix") or "", tokenizer)
        pieces = [[_text_ids(step, tokenizer) for step in candidate] for candidate in steps]
        completions = [[t for ids in candidate for t in ids] for candidate in pieces]
        step_ids = [[i for i, ids in enumerate(candidate) for _ in ids] for candidate in pieces]
    elif _is_conversational(prompt):
        completions = []
        for candidate in candidates:
            full = template.apply_chat_template(prompt + candidate, tokenize=False)
            if not full.startswith(prompt_text):
                raise RowError("template", "The chat template renders the prompt differently inside the conversation.")
            completions.append(_text_ids(full[len(prompt_text) :], tokenizer))
    else:
        completions = []
        for candidate in candidates:
            ids = _text_ids(candidate, tokenizer)
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
    return {
        "prompt_ids": prompt_ids,
        "candidate_ids": [ids[:room] for ids in completions],
        "step_ids": None if step_ids is None else [ids[:room] for ids in step_ids],
    }


def _text_ids(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


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
    ``step_index [B, K, T]`` is each token's step for step data; ``reference_values`` and ``guidance_values``
    hold precomputed per-token log-probs of the reference and of TGDPO's guidance model.
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor | None
    gather_index: Tensor
    target_ids: Tensor
    scatter_index: Tensor
    target_mask: Tensor
    prefs: Preferences
    step_index: Tensor | None = None
    reference_values: Tensor | None = None
    guidance_values: Tensor | None = None
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
            elif isinstance(value, dict):
                value = {name: tensor.to(device) for name, tensor in value.items()}
            moved[f.name] = value
        return type(self)(**moved)


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

    def stored(name: str) -> list | None:
        return None if rows[0].get(name) is None else [list(row[name]) for row in rows]

    groups = [(row["prompt_ids"], list(row["candidate_ids"])) for row in rows]
    steps = stored("step_ids")
    if mismatched:
        groups = [(prompt, cands + [groups[i - 1][1][0]]) for i, (prompt, cands) in enumerate(groups)]
        steps = None if steps is None else [ids + [steps[i - 1][0]] for i, ids in enumerate(steps)]
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

    def per_token(column: list | None, dtype: torch.dtype) -> Tensor | None:
        """``[B, K, T]`` from per-group, per-candidate lists of per-token values (zero-padded)."""
        if column is None:
            return None
        out = torch.zeros(b, k, width, dtype=dtype)
        for g, group in enumerate(column):
            for c, values in enumerate(group):
                out[g, c, : len(values)] = torch.tensor(values, dtype=dtype)
        return out

    return LLMBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        gather_index=t_index[t_mask],
        target_ids=t_ids[t_mask],
        scatter_index=t_mask.flatten().nonzero().squeeze(-1),
        target_mask=t_mask,
        prefs=preferences(rows),
        step_index=per_token(steps, torch.long),
        reference_values=per_token(stored("reference_logps"), torch.float32),
        guidance_values=per_token(stored("guidance_logps"), torch.float32),
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
    path that actually runs. ``mask_net`` (SparsePO's :class:`TokenMask`) trains with the model.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024, mask_net: TokenMask | None = None):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.mask_net = mask_net

    @property
    def causal_lm(self) -> PreTrainedModel:
        model = self.model
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def hidden_states(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None) -> Tensor:
        """The decoder's final hidden states ``[rows, length, H]``."""
        decoder = self.causal_lm.get_decoder()
        return decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None,
        gather_index: Tensor,
        target_ids: Tensor,
        scatter_index: Tensor,
        target_mask: Tensor,
        capture: tuple[str, ...] = (),
        reference_hidden: Tensor | None = None,
        reference_head: nn.Module | None = None,
        reference_layers: Tensor | None = None,
        **model_inputs: Any,
    ) -> dict[str, Tensor]:
        """``values [B, K, T]`` per-token log-probs, plus what is asked for.

        Args:
            capture: ``wpo_logp`` (``[B, K, T]``, WPO), ``hidden`` (``[M, H]`` final hidden states at the
                scored positions), ``layers`` (``[M, L, H]`` every decoder layer's output there) or
                ``layer_means`` (their means over H, as ``[B, K, T, L]``).
            reference_hidden, reference_head: the reference's ``hidden`` and its output layer; adds
                ``token_kl [B, K, T]``, KL(reference || this model) over the vocabulary at every token.
            reference_layers: the reference's ``layers``; with a ``mask_net``, adds its masks ``[B, K, T]``.
            model_inputs: further inputs :meth:`hidden_states` takes (a VLM's images).
        """
        lm = self.causal_lm
        text_config = lm.config.get_text_config()
        decoder = lm.get_decoder()
        wants_layers = "layers" in capture or "layer_means" in capture
        reduce = "layer_means" in capture
        with layer_outputs(decoder, gather_index, reduce) if wants_layers else nullcontext() as layers:
            hidden = self.hidden_states(input_ids, attention_mask, position_ids, **model_inputs)
        selected = hidden.reshape(-1, hidden.shape[-1]).index_select(0, gather_index)
        per_token = selected_logprobs(
            selected,
            target_ids,
            lm.get_output_embeddings(),
            chunk_size=self.chunk_size,
            scale=getattr(text_config, "logit_scale", None) or 1.0,
            softcap=getattr(text_config, "final_logit_softcapping", None),
            aligned="wpo_logp" in capture,
            reference=None if reference_hidden is None else (reference_hidden, reference_head),
        )
        if self.mask_net is not None and reference_layers is not None:
            per_token.update(self.mask_net(reference_layers))
        if reduce:
            per_token["layer_means"] = torch.stack(layers, dim=1)

        def unflatten(flat: Tensor) -> Tensor:
            out = flat.new_zeros(target_mask.numel(), *flat.shape[1:]).index_copy(0, scatter_index, flat)
            return out.view(*target_mask.shape, *flat.shape[1:])

        scores = {name: unflatten(flat) for name, flat in per_token.items()}
        if "hidden" in capture:
            scores["hidden"] = selected
        if "layers" in capture:
            scores["layers"] = torch.stack(layers, dim=1)
        return scores


def to_loglik(scores: dict[str, Tensor], batch: LLMBatch) -> LogLik:
    """A LogLik from per-token scorer output (``values`` plus per-token extras), with the batch's step indices;
    the KTO mismatched candidate becomes ``extras["mismatched"]``."""
    values, mask = scores["values"], batch.target_mask
    per_token = {name: value for name, value in scores.items() if name != "values"}
    if batch.step_index is not None:
        per_token["step_index"] = batch.step_index
    extras: dict[str, Tensor] = {}
    if batch.mismatched:
        extras["mismatched"] = (values[:, -1:] * mask[:, -1:]).sum(-1)
        values, mask = values[:, :-1], mask[:, :-1]
        per_token = {name: value[:, :-1] for name, value in per_token.items()}
    return LogLik(values=values, mask=mask, extras={**extras, **per_token})


# --- loading ---------------------------------------------------------------------------------------


def load_pretrained(
    path: str,
    model_class: type,
    processing_class: type,
    *,
    dtype: torch.dtype,
    attn_implementation: str,
    trust_remote_code: bool,
    **processing_options: Any,
) -> tuple[PreTrainedModel, Any]:
    """``model_class.from_pretrained`` and ``processing_class.from_pretrained`` (a tokenizer or a processor) of a local
    directory or a hub id; a tokenizer without a pad token pads with EOS."""
    try:
        processing = processing_class.from_pretrained(path, trust_remote_code=trust_remote_code, **processing_options)
        model = model_class.from_pretrained(
            path, dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code
        )
    except OSError as err:
        raise FileNotFoundError(
            f"model.path={path!r} is neither a local model directory nor a reachable hub id ({err})."
        ) from err
    tokenizer = getattr(processing, "tokenizer", processing)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, processing


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
    options = {"dtype": dtype, "attn_implementation": attn_implementation, "trust_remote_code": trust_remote_code}
    return load_pretrained(path, AutoModelForCausalLM, AutoTokenizer, **options)


# --- the adapter -----------------------------------------------------------------------------------

REFERENCE_STATES = {
    "token_kl": "hidden",
    "layer_means": "layer_means",
    "mask": "layers",
    "mask_u": "layers",
    "mask_d": "layers",
}
"""The reference state (a scorer ``capture``) each extra needs."""
TOY_GROUPS = 512
"""Groups of the built-in toy task (``data.path=toy``)."""



def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout so policy and reference passes are deterministic (as TRL does)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def _vocabulary(tokenizer: Any) -> dict[str, int]:
    """The vocabulary of a tokenizer, or of the tokenizer inside a processor."""
    return getattr(tokenizer, "tokenizer", tokenizer).get_vocab()


class LLMAdapter:
    """Everything the trainer needs for a causal LM: tokenise, collate, score policy and reference, save.

    Args:
        model: the policy, a transformers causal LM or a peft model of one.
        tokenizer: its tokenizer.
        reference: ``adapter`` (peft adapter disabled), ``copy`` (frozen copy), ``precomputed``
            (values travel with the batch) or ``none``.
        max_length, layout, chunk_size: see :class:`~mmdpo.config.ModelSection`.
        extras: what the objective asks for beyond log-probs (:attr:`mmdpo.objectives.Objective.extras`).
        reference_dtype: dtype of the frozen copy and the guidance model (half precision under mixed
            precision: the matmuls run in it anyway, and the copy takes half the memory).
        guidance: TGDPO's guidance model (same tokenizer), run frozen beside the reference.
    """

    scorer_class: type[CausalLMScorer] = CausalLMScorer
    """What wraps the policy, the frozen copy and the guidance model."""
    model_section = TokenModelSection
    data_section = DataSection
    references = frozenset({"adapter", "copy", "precomputed", "none"})
    provides = frozenset({*REFERENCE_STATES, "wpo_logp", "mismatched", "guidance", "step_index"})

    def __init__(
        self,
        model: nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        *,
        reference: str = "copy",
        max_length: int = 1024,
        layout: Layout = "shared",
        chunk_size: int = 1024,
        extras: frozenset[str] = frozenset(),
        reference_dtype: torch.dtype | None = None,
        guidance: nn.Module | None = None,
    ):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.layout = layout
        self.reference_kind = reference
        self.extras = frozenset(extras)
        if reference in ("precomputed", "none") and self.reference_capture:
            needs = ", ".join(sorted(self.extras & REFERENCE_STATES.keys()))
            raise ValueError(
                f"model.reference={reference} cannot give the reference states that {needs} need; use copy or adapter."
            )
        if "guidance" in self.extras and guidance is None:
            raise ValueError("The objective needs a guidance model (model.guidance_path); none was given.")
        disable_dropout(model)
        self.scorer = self.scorer_class(model, chunk_size=chunk_size)
        mask_names = tuple(name for name in ("mask", "mask_u", "mask_d") if name in self.extras)
        if mask_names:
            config = self.scorer.causal_lm.config.get_text_config()
            eps = getattr(config, "layer_norm_eps", None) or getattr(config, "rms_norm_eps", None) or 1e-5
            self.scorer.mask_net = TokenMask(config.hidden_size, config.num_hidden_layers, mask_names, eps, chunk_size)
        self.reference_scorer = None
        if reference == "copy":
            self.reference_scorer = self.scorer_class(frozen_copy(model, reference_dtype), chunk_size=chunk_size)
        self.guidance_scorer = None
        if guidance is not None:
            disable_dropout(guidance)
            guidance = guidance.to(reference_dtype) if reference_dtype is not None else guidance
            self.guidance_scorer = self.scorer_class(guidance.requires_grad_(False).eval(), chunk_size=chunk_size)

    @classmethod
    def load(cls, path: str, section) -> tuple[PreTrainedModel, Any]:
        """The model at ``path`` and its tokenizer, in the dtype and attention a :class:`~mmdpo.config.ModelSection`
        names."""
        return load_causal_lm(
            path,
            dtype=DTYPES[section.dtype],
            attn_implementation=section.attn_implementation,
            trust_remote_code=section.trust_remote_code,
        )

    @classmethod
    def lora_targets(cls, model: PreTrainedModel, section) -> str | list[str]:
        """The modules LoRA adapts when ``model.lora.target_modules`` is not given: every linear layer but the head."""
        return "all-linear"

    @classmethod
    def check_config(cls, config, objective) -> None:
        """What only token models check: the reference strategies their extras allow, the guidance model, the
        attention the layout needs."""
        model, name, extras = config.model, objective.name, objective.extras
        if model.reference == "precomputed" and "mismatched" in extras:
            raise ConfigError(
                f"model.reference=precomputed cannot serve objective.name={name} (its KL point uses batch-dependent "
                "pairs); use copy or adapter (with model.lora)."
            )
        if model.reference == "precomputed" and "token_kl" in extras:
            raise ConfigError(
                f"model.reference=precomputed cannot serve objective.name={name}: its per-token KL needs the "
                "reference's whole distribution at every token, which is not stored; use copy or adapter (with "
                "model.lora)."
            )
        if "guidance" in extras and model.guidance_path is None:
            raise ConfigError(
                f"objective.name={name} needs model.guidance_path: the guidance model whose per-token log-probs "
                "weigh each token (e.g. a DPO- or SimPO-trained model with the policy's tokenizer)."
            )
        if model.guidance_path is not None and "guidance" not in extras:
            raise ConfigError(
                f"model.guidance_path is read by objective tgdpo only, but objective.name={name}; remove it."
            )
        if model.layout == "shared" and model.attn_implementation not in {"sdpa", "eager"}:
            raise ConfigError(
                f"model.layout=shared needs a 4-D attention mask, which model.attn_implementation="
                f"{model.attn_implementation} does not take; use model.layout=concat."
            )

    @classmethod
    def from_config(cls, config, context: BuildContext) -> LLMAdapter:
        """The adapter of a run: its ``model`` section, the objective's extras, the resolved reference strategy."""
        return cls.from_section(config.model, context.reference, context.objective.extras, context.half)

    @classmethod
    def from_section(
        cls,
        section: TokenModelSection,
        reference: str,
        extras: frozenset[str] = frozenset(),
        reference_dtype: torch.dtype | None = None,
        **options: Any,
    ) -> LLMAdapter:
        """Load the model a ``model`` section names and wrap it (LoRA when configured), plus the guidance model when
        the objective asks for one; ``options`` go to the constructor."""
        model, tokenizer = cls.load(section.path, section)
        guidance = None
        if "guidance" in extras:
            guidance, guidance_tokenizer = cls.load(section.guidance_path, section)
            if _vocabulary(guidance_tokenizer) != _vocabulary(tokenizer):
                raise ValueError(
                    f"model.guidance_path={section.guidance_path!r} has another vocabulary than model.path="
                    f"{section.path!r}; token rewards need the policy's tokenizer, so pick a model of its family."
                )
        if section.gradient_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.23 renamed it
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
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
                    target_modules=lora.target_modules or cls.lora_targets(model, section),
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
            extras=extras,
            reference_dtype=reference_dtype,
            guidance=guidance,
            **options,
        )

    def data(self, config, accelerator) -> AdapterData:
        """Tokenised groups of the ``data`` section (:func:`mmdpo.adapters.token_data.token_datasets`)."""
        from mmdpo.adapters.token_data import token_datasets

        train, evaluation, skipped = token_datasets(config, self, accelerator)
        return AdapterData(train, evaluation, skipped, lambda rows, epoch: self.collate(rows))

    def load_source(self, path: str, split: str, config) -> Any:
        """The text groups of one source (:func:`mmdpo.data.loaders.load_groups`); ``toy`` is the built-in vowel
        task."""
        from mmdpo.data.loaders import load_groups
        from mmdpo.data.toy import toy_groups

        data = config.data
        options = {"format": data.format, "split": split, "ties": data.ties, "bad_rows": data.bad_rows}
        return load_groups(toy_groups(TOY_GROUPS, config.train.seed) if path == "toy" else path, **options,
                           pairs=data.pairs)  # fmt: skip

    @property
    def attention(self) -> str:
        return self.scorer.causal_lm.config.get_text_config()._attn_implementation

    @property
    def reference_capture(self) -> tuple[str, ...]:
        """What the reference pass keeps for the policy pass and the objective, by the extras asked for."""
        return tuple(sorted({REFERENCE_STATES[name] for name in self.extras & REFERENCE_STATES.keys()}))

    def tokenize(self, row: dict[str, Any]) -> dict[str, Any]:
        return tokenize_group(row, self.tokenizer, self.max_length)

    def collate(self, rows: Sequence[dict[str, Any]]) -> LLMBatch:
        """A batch of tokenised groups, with KTO's mismatched pairs when the objective reads them."""
        return collate(
            rows,
            pad_token_id=self.tokenizer.pad_token_id,
            layout=self.layout,
            mismatched="mismatched" in self.extras,
            attention=self.attention,
        )

    def inputs(self, batch: LLMBatch) -> dict[str, Any]:
        """The forward inputs of a batch (token scoring draws no randomness)."""
        return batch.model_inputs()

    def policy_loglik(
        self, scorer: nn.Module, batch: LLMBatch, inputs: dict[str, Any], reference: ReferencePass
    ) -> LogLik:
        """Per-token policy log-probs through ``scorer`` (the prepared, possibly wrapped, :attr:`scorer`), given
        what the reference pass left for it (its hidden states and output layer for ``token_kl``, its layer states
        for learned masks)."""
        capture = ("wpo_logp",) if "wpo_logp" in self.extras else ()
        return to_loglik(scorer(**inputs, **reference.for_policy, capture=capture), batch)

    def reference(self, batch: LLMBatch, inputs: dict[str, Any]) -> ReferencePass:
        """Reference per-token log-probs of a batch (plus the guidance model's), or None when reference-free."""
        if self.reference_kind == "none":
            return ReferencePass(None)
        guidance = {}
        if "guidance" in self.extras:
            if batch.guidance_values is not None:
                guidance["guidance"] = batch.guidance_values
            else:
                with torch.no_grad():
                    guidance["guidance"] = self.guidance_scorer(**inputs)["values"]
        if self.reference_kind == "precomputed":
            if batch.reference_values is None:
                raise ValueError("model.reference=precomputed but the batch carries no reference_logps.")
            return ReferencePass(to_loglik({"values": batch.reference_values, **guidance}, batch))
        capture = self.reference_capture
        with torch.no_grad():
            if self.reference_kind == "adapter":
                with adapter_disabled(self.scorer.model):
                    scores = self.scorer(**inputs, capture=capture)
                head = base_head(self.scorer.causal_lm.get_output_embeddings())
            else:
                scores = self.reference_scorer(**inputs, capture=capture)
                head = self.reference_scorer.causal_lm.get_output_embeddings()
        for_policy = {}
        if "hidden" in scores:
            for_policy.update(reference_hidden=scores.pop("hidden"), reference_head=head)
        if "layers" in scores:
            for_policy["reference_layers"] = scores.pop("layers")
        return ReferencePass(to_loglik({**scores, **guidance}, batch), for_policy)

    def cache_key(self, dataset) -> dict[str, Any]:
        """What precomputed reference values of ``dataset`` depend on beyond the data and the weights."""
        return {"max_length": self.max_length}

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """Modules the trainer moves to the device but never optimises."""
        return [scorer for scorer in (self.reference_scorer, self.guidance_scorer) if scorer is not None]

    def save(self, scorer: CausalLMScorer, directory: str | Path) -> None:
        """The adapter (peft) or full model plus the tokenizer, loadable with peft/transformers as they are."""
        directory = Path(directory)
        scorer.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
