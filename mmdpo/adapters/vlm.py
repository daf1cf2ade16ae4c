"""The vision-language adapter: image + question preference groups -> per-token log-likelihoods of the answers.

    model, processor = load_vlm("Qwen/Qwen2-VL-2B-Instruct")      # or a local dir, tiny:llava, tiny:qwen2_vl, ...
    adapter = VLMAdapter(model, processor, reference="copy")

Models are transformers image-text-to-text models (``AutoModelForImageTextToText``); LLaVA, Qwen2-VL, Qwen2.5-VL,
Idefics3 and PaliGemma are tested, and others whose ``get_image_features`` and ``mm_encoder_outputs`` follow the
transformers 5 conventions take the same path. Everything the processor returns reaches the model: per-image
outputs (``pixel_values``, ``image_grid_thw``, ``pixel_attention_mask``, ``image_sizes``, ...) go to the vision
tower, per-token ones (``token_type_ids``, ``mm_token_type_ids``) are extended over the answers.

Each image is encoded once per group, not once per answer as TRL and LLaMA-Factory do: the vision tower and the
projector run on the batch's images once, and their features reach the model as ``mm_encoder_outputs``. With the
``shared`` layout (default; see :mod:`mmdpo.adapters.llm`) a group is one row ``[prompt | y_1 | ... | y_K]``, so the
prompt, image tokens included, also runs once per group; ``concat`` gives each of the K rows the group's features.
With the vision tower frozen (``model.train_vision: false``, the default) the features are computed once per step
and serve the reference and the policy alike. Positions restart after the prompt for every answer, in 3-D
(M-RoPE) for the Qwen2-VL family; PaliGemma's prompt attends bidirectionally (prefix-LM) in the shared mask too.

Prompts are never truncated, so no image is cut: answers are cut at ``model.max_length`` and a prompt (image tokens
included) that leaves no room is an error, or a skipped row with ``data.bad_rows=skip``.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, ProcessorMixin
from transformers.modeling_outputs import BaseModelOutputWithPooling

from mmdpo.adapters.llm import (
    TOY_GROUPS,
    CausalLMScorer,
    LLMAdapter,
    LLMBatch,
    RowError,
    TokenModelSection,
    load_pretrained,
    tokenize_group,
)
from mmdpo.config import ConfigError
from mmdpo.data.images import ImageError, decode_image
from mmdpo.precision import DTYPES

TOKEN_TYPE_INPUTS = ("token_type_ids", "mm_token_type_ids")
"""Per-token processor outputs; every other output but the ids and the mask is per image."""
ANSWER_TOKEN_TYPES = {("paligemma", "token_type_ids"): 1}
"""Per-token values of answer tokens where they are not 0: PaliGemma's suffix."""
PREFIX_LM = {"paligemma"}
"""Families whose prompt attends bidirectionally; their position ids also start at 1."""


@dataclass
class VLMModelSection(TokenModelSection):
    """The ``model`` section of vision-language models: a causal LM's, plus ``train_vision`` (train the vision tower
    and the projector too; by default they are frozen and LoRA adapts the language model only) and ``processor``
    (keyword arguments for ``AutoProcessor.from_pretrained``, e.g. ``{max_pixels: 802816}`` to bound Qwen2-VL's
    image tokens)."""

    train_vision: bool = False
    processor: dict[str, Any] = field(default_factory=dict)


@dataclass
class VLMBatch(LLMBatch):
    """An :class:`~mmdpo.adapters.llm.LLMBatch` plus the images of its B groups.

    ``image_inputs``: the processor's per-image outputs for the groups' images, once each. ``token_inputs``: its
    per-token outputs over the rows. ``feature_index [N]``: for every image token of the rows, in order, the row of
    the groups' image features ``[sum of image tokens, H]`` it takes (the identity in the shared layout).
    ``position_ids`` are ``[3, rows, length]`` for M-RoPE models.
    """

    image_inputs: dict[str, Tensor] = field(default_factory=dict)
    token_inputs: dict[str, Tensor] = field(default_factory=dict)
    feature_index: Tensor | None = None

    def model_inputs(self) -> dict[str, Any]:
        return {
            **super().model_inputs(),
            "image_inputs": self.image_inputs,
            "token_inputs": self.token_inputs,
            "feature_index": self.feature_index,
        }


def encode_images(model: nn.Module, image_inputs: dict[str, Tensor]) -> tuple[Tensor, bool]:
    """Every image of a batch through the vision tower and the projector of ``model`` (the base model of an
    image-text-to-text model), once: ``[N, H]`` features in the order of the image tokens, and whether the model
    takes them as a list (LLaVA, Qwen2-VL, Idefics3) rather than a tensor (PaliGemma)."""
    names = inspect.signature(model.get_image_features).parameters
    pooled = model.get_image_features(
        **{name: value for name, value in image_inputs.items() if name in names}, return_dict=True
    ).pooler_output
    if isinstance(pooled, (list, tuple)):
        return torch.cat([part.reshape(-1, part.shape[-1]) for part in pooled]), True
    return pooled.reshape(-1, pooled.shape[-1]), False


class VLMScorer(CausalLMScorer):
    """A :class:`~mmdpo.adapters.llm.CausalLMScorer` whose forward also takes images: the processor's per-image
    outputs (encoded here, once per group) or features already encoded by :func:`encode_images`."""

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None,
        image_inputs: dict[str, Tensor] | None = None,
        token_inputs: dict[str, Tensor] | None = None,
        feature_index: Tensor | None = None,
        image_features: tuple[Tensor, bool] | None = None,
    ) -> Tensor:
        model = self.causal_lm.base_model
        if image_features is None and image_inputs:
            image_features = encode_images(model, image_inputs)
        encoded = {}
        if image_features is not None:
            features, as_list = image_features
            features = features.index_select(0, feature_index)
            pooled = BaseModelOutputWithPooling(pooler_output=[features] if as_list else features)
            encoded["mm_encoder_outputs"] = {"image": pooled}
        return model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **(token_inputs or {}),
            **encoded,
        ).last_hidden_state


def vision_parameters(model: PreTrainedModel) -> list[nn.Parameter]:
    """The parameters outside the language model and its output layer: the vision tower and the projector."""
    language = {id(p) for part in (model.get_decoder(), model.get_output_embeddings()) for p in part.parameters()}
    return [p for p in model.parameters() if id(p) not in language]


def language_linear_layers(model: PreTrainedModel) -> str:
    """A peft ``target_modules`` pattern for every linear layer of the language model (not the vision tower, the
    projector or the output layer)."""
    decoder = model.get_decoder()
    prefix = next(name for name, module in model.named_modules() if module is decoder)
    leaves = sorted({name.rsplit(".", 1)[-1] for name, m in decoder.named_modules() if isinstance(m, nn.Linear)})
    return rf"{re.escape(prefix)}\..*\.({'|'.join(leaves)})"


def load_vlm(
    path: str,
    *,
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    trust_remote_code: bool = False,
    processor_options: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """An image-text-to-text model and its processor from a local directory, a hub id, or ``tiny:<arch>``.

    Hub ids download only when the network allows it (``HF_HUB_OFFLINE`` is respected). ``processor_options`` go to
    ``AutoProcessor.from_pretrained`` (e.g. Qwen2-VL's ``max_pixels``). A tokenizer without a pad token pads with EOS.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mmdpo.adapters.tiny_vlm import tiny_vlm

    if path.startswith("tiny:"):
        model, processor = tiny_vlm(path.removeprefix("tiny:"), attn_implementation=attn_implementation)
        return model.to(dtype), processor
    options = {"dtype": dtype, "attn_implementation": attn_implementation, "trust_remote_code": trust_remote_code}
    return load_pretrained(path, AutoModelForImageTextToText, AutoProcessor, **options, **processor_options or {})


def _has_placeholders(turns: list[dict[str, Any]], token: str) -> bool:
    """Whether a conversation holds an image part or the processor's image token in its text."""
    for turn in turns:
        content = turn["content"]
        if isinstance(content, str) and token in content:
            return True
        if isinstance(content, list) and any(part.get("type") == "image" for part in content):
            return True
    return False


def decode_images(row: dict[str, Any]) -> list[PIL.Image.Image]:
    """A group's images, decoded from their stored form."""
    return [decode_image(image) for image in row.get("images") or []]


class VLMAdapter(LLMAdapter):
    """Everything the trainer needs for an image-text-to-text model (see the module docstring).

    Args:
        model: the policy, a transformers image-text-to-text model or a peft model of one.
        processor: its processor.
        train_vision: train the vision tower and the projector too; by default they are frozen (with LoRA:
            adapters on the language model only) and each image's features serve the reference and the policy.
        kwargs: as :class:`~mmdpo.adapters.llm.LLMAdapter`.
    """

    scorer_class = VLMScorer
    model_section = VLMModelSection

    def __init__(self, model: nn.Module, processor: ProcessorMixin, *, train_vision: bool = False, **kwargs: Any):
        super().__init__(model, processor.tokenizer, **kwargs)
        self.processor = processor
        lm = self.scorer.causal_lm
        if not train_vision:
            for param in vision_parameters(lm):
                param.requires_grad_(False)
        self.family = lm.config.model_type
        self.image_token_id = lm.config.image_token_id
        self.rope_index = getattr(lm.base_model, "get_rope_index", None)
        self.forward_inputs = inspect.signature(lm.base_model.forward).parameters
        frozen = not any(p.requires_grad for p in vision_parameters(lm))
        self.shares_features = frozen and self.guidance_scorer is None

    @classmethod
    def load(cls, path: str, section) -> tuple[PreTrainedModel, ProcessorMixin]:
        return load_vlm(
            path,
            dtype=DTYPES[section.dtype],
            attn_implementation=section.attn_implementation,
            trust_remote_code=section.trust_remote_code,
            processor_options=section.processor,
        )

    @classmethod
    def lora_targets(cls, model: PreTrainedModel, section) -> str:
        """The language model's linear layers, or every linear layer but the head with ``model.train_vision``."""
        return "all-linear" if section.train_vision else language_linear_layers(model)

    @classmethod
    def check_config(cls, config, objective) -> None:
        super().check_config(config, objective)
        if config.model.processor and config.model.path.startswith("tiny:"):
            raise ConfigError(
                f"model.processor configures a processor loaded from a path, but model.path={config.model.path!r} "
                "builds its own; remove it or save the tiny model to a directory first."
            )

    @classmethod
    def from_section(
        cls, section, reference: str, extras: frozenset[str] = frozenset(), reference_dtype: torch.dtype | None = None
    ) -> VLMAdapter:
        return super().from_section(section, reference, extras, reference_dtype, train_vision=section.train_vision)

    def load_source(self, path: str, split: str, config) -> Any:
        """Image + question groups of one source (:func:`mmdpo.data.vlm.load_vlm_groups`); ``toy`` is the built-in
        colour task."""
        from mmdpo.data.vlm import colour_pairs, load_vlm_groups

        data = config.data
        options = {"format": data.format, "split": split, "ties": data.ties, "bad_rows": data.bad_rows}
        source = colour_pairs(TOY_GROUPS, config.train.seed) if path == "toy" else path
        return load_vlm_groups(source, **options, pairs=data.pairs)

    # --- tokenisation ------------------------------------------------------------------------------

    def _process(self, texts: list[str], images: list[list[PIL.Image.Image]], special: bool) -> dict[str, Tensor]:
        """The processor's output for prompts and their images, right-padded."""
        extra = {"images": images} if any(images) else {}
        return self.processor(
            text=texts, add_special_tokens=special, padding=True, padding_side="right", return_tensors="pt", **extra
        )

    def _with_images(self, row: dict[str, Any], count: int) -> dict[str, Any]:
        """The row with one image placeholder per image, as TRL's ``prepare_multimodal_messages`` places them: a
        plain prompt becomes a user turn (with assistant answers) when the processor has a chat template, and image
        parts go before the first user turn's text unless the prompt already holds placeholders. Without a chat
        template (PaliGemma) the placeholders go before the plain prompt."""
        prompt, token = row["prompt"], self.processor.image_token
        if self.processor.chat_template is None:
            if isinstance(prompt, list):
                raise ValueError(f"The {self.family} processor has no chat template; give plain-text prompts.")
            return {**row, "prompt": prompt if token in prompt else token * count + prompt}
        if not isinstance(prompt, list):
            answers = [[{"role": "assistant", "content": answer}] for answer in row["candidates"]]
            row = {**row, "prompt": [{"role": "user", "content": prompt}], "candidates": answers}
        if count == 0 or _has_placeholders(row["prompt"], token):
            return row
        turns = list(row["prompt"])
        first = next(i for i, turn in enumerate(turns) if turn["role"] == "user")
        content = turns[first]["content"]
        text = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
        turns[first] = {**turns[first], "content": [{"type": "image"}] * count + text}
        return {**row, "prompt": turns}

    def tokenize(self, row: dict[str, Any]) -> dict[str, Any]:
        """Token ids as :func:`~mmdpo.adapters.llm.tokenize_group` gives them, the prompt's image placeholders
        expanded by the processor, plus the rendered prompt that collation processes again with the images."""
        try:
            images = decode_images(row)
        except ImageError as err:
            raise RowError("bad_image", f"{err} Replace the image or set data.bad_rows=skip.") from None
        prompt: dict[str, Any] = {}

        def encode(text: str, special: bool) -> list[int]:
            try:
                ids = self._process([text], [images], special)["input_ids"][0].tolist()
            except ValueError as err:
                raise RowError(
                    "bad_image", f"The processor refused the prompt and its {len(images)} images: {err}"
                ) from None
            prompt.update(prompt_text=text, prompt_special=special, image_tokens=ids.count(self.image_token_id))
            return ids

        try:
            out = tokenize_group(
                self._with_images(row, len(images)), self.tokenizer, self.max_length, template=self.processor,
                encode_prompt=encode,
            )  # fmt: skip
        except RowError as err:
            if err.reason != "prompt_too_long":
                raise
            raise RowError(
                err.reason, f"{err} Its {prompt['image_tokens']} image tokens are never cut, so answers would be lost."
            ) from None
        return {**out, "prompt_text": prompt["prompt_text"], "prompt_special": prompt["prompt_special"]}

    # --- collation ---------------------------------------------------------------------------------

    def collate(self, rows: Sequence[dict[str, Any]]) -> VLMBatch:
        """The causal-LM batch of the rows' token ids plus their images, each processed once per group."""
        batch = super().collate(rows)
        images = [decode_images(row) for row in rows]
        processed = self._process([row["prompt_text"] for row in rows], images, rows[0]["prompt_special"])
        lengths = processed["attention_mask"].sum(-1).tolist()
        for g, row in enumerate(rows):
            if processed["input_ids"][g, : lengths[g]].tolist() != row["prompt_ids"][: lengths[g]]:
                raise ValueError(
                    f"The processor gave group {g}'s prompt other tokens than at tokenisation; make it deterministic."
                )
        n_rows, length = batch.input_ids.shape
        per_group = n_rows // len(rows)
        group = torch.arange(len(rows)).repeat_interleave(per_group)
        prompt_mask = torch.arange(length)[None] < torch.tensor([len(row["prompt_ids"]) for row in rows])[group, None]

        token_inputs = {}
        for name in TOKEN_TYPE_INPUTS:
            if name in processed and name in self.forward_inputs:
                values = torch.full((n_rows, length), ANSWER_TOKEN_TYPES.get((self.family, name), 0))
                values[prompt_mask] = 0
                for r, g in enumerate(group.tolist()):
                    values[r, : lengths[g]] = processed[name][g, : lengths[g]]
                token_inputs[name] = values
        if self.layout == "shared" and "token_type_ids" in token_inputs and self.family not in PREFIX_LM:
            raise ValueError(
                f"model.layout=shared builds its own attention mask and does not know how {self.family} attends by "
                "token_type_ids; use model.layout=concat."
            )

        text_inputs = {"input_ids", "attention_mask", "labels", *TOKEN_TYPE_INPUTS}
        image_inputs = {name: value for name, value in processed.items() if name not in text_inputs}
        counts = (processed["input_ids"] == self.image_token_id).sum(-1)
        starts = counts.cumsum(0) - counts
        feature_index = torch.cat([torch.arange(starts[g], starts[g] + counts[g]) for g in group.tolist()])

        position_ids, attention_mask = batch.position_ids, batch.attention_mask
        if self.rope_index is not None and "image_grid_thw" in image_inputs:
            position_ids = self._rope_positions(batch, token_inputs, image_inputs, images, group, prompt_mask)
        elif self.family in PREFIX_LM and self.layout == "shared":
            position_ids = position_ids + 1
            visible = True if attention_mask.dtype == torch.bool else 0.0  # the prompt attends bidirectionally
            for r in range(n_rows):
                attention_mask[r, 0, prompt_mask[r, :, None] & prompt_mask[r, None, :]] = visible

        return VLMBatch(
            **{**vars(batch), "position_ids": position_ids, "attention_mask": attention_mask},
            image_inputs=image_inputs,
            token_inputs=token_inputs,
            feature_index=feature_index,
        )

    def _rope_positions(
        self,
        batch: LLMBatch,
        token_inputs: dict[str, Tensor],
        image_inputs: dict[str, Tensor],
        images: list[list[PIL.Image.Image]],
        group: Tensor,
        prompt_mask: Tensor,
    ) -> Tensor:
        """``[3, rows, length]`` M-RoPE positions: the model's own for the prompt; each answer's text positions
        continue from the prompt's largest, restarting for every answer in the shared layout."""
        firsts = torch.tensor([0] + [len(group_images) for group_images in images]).cumsum(0)
        grid = image_inputs["image_grid_thw"][
            torch.cat([torch.arange(firsts[g], firsts[g + 1]) for g in group.tolist()])
        ]
        types = token_inputs.get("mm_token_type_ids")
        if batch.position_ids is None:  # concat: one prompt and one answer per row, right-padded
            return self.rope_index(batch.input_ids, types, image_grid_thw=grid, attention_mask=batch.attention_mask)[0]
        positions, delta = self.rope_index(batch.input_ids, types, image_grid_thw=grid, attention_mask=prompt_mask)
        return torch.where(prompt_mask, positions, batch.position_ids + delta)

    # --- scoring -----------------------------------------------------------------------------------

    def inputs(self, batch: VLMBatch) -> dict[str, Any]:
        """The forward inputs of a batch; with the vision tower frozen, the images' features instead of their pixels,
        computed here once for the reference and the policy."""
        inputs = batch.model_inputs()
        if self.shares_features and batch.image_inputs:
            with torch.no_grad():
                inputs["image_features"] = encode_images(self.scorer.causal_lm.base_model, inputs.pop("image_inputs"))
        return inputs

    def cache_key(self, dataset) -> dict[str, Any]:
        """Beyond the causal-LM key: the processor's settings and the content of every image."""
        from mmdpo.data.vlm import image_digest

        processor = hashlib.sha256(self.processor.to_json_string().encode()).hexdigest()[:16]
        return {**super().cache_key(dataset), "processor": processor, "images": image_digest(dataset)}

    def save(self, scorer: VLMScorer, directory: str | Path) -> None:
        """The adapter (peft) or full model plus the processor, loadable with peft/transformers as they are."""
        scorer.model.save_pretrained(directory)
        self.processor.save_pretrained(directory)
