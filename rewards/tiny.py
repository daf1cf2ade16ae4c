"""Tiny random reward backbones built in memory, for tests; nothing is downloaded.

Sizes follow the verified offline recipes of ``reference/adapters_and_rewards.md`` §4 and §3.2: an open_clip
config registered under :data:`TINY_OPEN_CLIP`, a 16-dimensional ``CLIPModel``, the 40 k-parameter ``ClapModel``
and a LLaVA with a Qwen2 text tower. Tokenizers are byte-level vocabularies without merges.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch
from tokenizers import pre_tokenizers
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Tokenizer,
    RobertaTokenizer,
)

from mmdpo.adapters.tiny import tiny_clip_tokenizer

TINY_OPEN_CLIP = "mmdpo-tiny-clip"
"""The open_clip architecture name of the tiny config, once :func:`register_tiny_open_clip` has run."""

TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
IMAGE_TOKEN = "<image>"
VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_vocab(specials: list[str]) -> dict[str, int]:
    """The special tokens first, then the 256 byte-level characters."""
    return {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}


def _seeded(model_class: type[PreTrainedModel], config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """``model_class(config)`` with weights drawn after ``torch.manual_seed(seed)``, in eval mode."""
    torch.manual_seed(seed)
    return model_class(config).eval()


def register_tiny_open_clip() -> str:
    """Register the tiny open_clip config (once per process) and return its architecture name."""
    if TINY_OPEN_CLIP not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as folder:  # open_clip keeps the parsed config after the rescan
            path = Path(folder) / f"{TINY_OPEN_CLIP}.json"
            path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG))
            open_clip.add_model_config(path)
    return TINY_OPEN_CLIP


def tiny_clip(seed: int = 0) -> tuple[CLIPModel, CLIPProcessor]:
    """A random ``CLIPModel`` (32-pixel images, 16-dimensional embeddings) and its processor."""
    tokenizer = tiny_clip_tokenizer()
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=0, eos_token_id=1, pad_token_id=1,
        ),
        vision_config=dict(
            image_size=32, patch_size=16, hidden_size=32, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2,
        ),
        projection_dim=16,
    )  # fmt: skip
    return _seeded(CLIPModel, config, seed), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def tiny_clap(seed: int = 0) -> tuple[ClapModel, ClapProcessor]:
    """A random ``ClapModel`` (HTS-AT audio tower, 1 s windows at 48 kHz) and its processor."""
    tokenizer = RobertaTokenizer(
        vocab=_byte_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), merges=[], model_max_length=60
    )
    feature_extractor = ClapFeatureExtractor(
        feature_size=64, sampling_rate=48000, hop_length=800, max_length_s=1, truncation="rand_trunc",
        padding="repeatpad",
    )  # fmt: skip
    config = ClapConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_attention_heads=2,
            num_hidden_layers=1, projection_dim=16, max_position_embeddings=64,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        audio_config=dict(
            spec_size=64, num_mel_bins=64, window_size=8, patch_size=4, patch_stride=(4, 4),
            patch_embeds_hidden_size=16, hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2],
            projection_dim=16, enable_fusion=False, patch_embed_input_channels=1,
        ),
        projection_dim=16,
    )  # fmt: skip
    return _seeded(ClapModel, config, seed), ClapProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def tiny_llava(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random LLaVA (CLIP vision tower on 28-pixel images, Qwen2 text tower) and its processor."""
    tokenizer = Qwen2Tokenizer(
        vocab=_byte_vocab(["<|endoftext|>", "<|im_start|>", "<|im_end|>", IMAGE_TOKEN]), merges=[], unk_token=None,
        pad_token="<|endoftext|>", eos_token="<|im_end|>", model_max_length=512,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", IMAGE_TOKEN]})
    image_processor = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=VLM_CHAT_TEMPLATE,
    )  # fmt: skip
    config = LlavaConfig(
        text_config=dict(
            model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(
            model_type="clip_vision_model", image_size=28, patch_size=14, hidden_size=32, projection_dim=32,
            num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )  # fmt: skip
    return _seeded(LlavaForConditionalGeneration, config, seed), processor
