"""Tiny random reward backbones built in memory, for tests; nothing is downloaded.

Sizes follow the verified offline recipes of ``reference/adapters_and_rewards.md`` §4 and §3.2: an open_clip
config registered under :data:`TINY_OPEN_CLIP`, a 16-dimensional ``CLIPModel``, the 40 k-parameter ``ClapModel``
and the tiny LLaVA of :mod:`mmdpo.adapters.tiny_vlm`. Tokenizers are byte-level vocabularies without merges.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import open_clip
import torch
from transformers import (
    ClapConfig,
    ClapFeatureExtractor,
    ClapModel,
    ClapProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PretrainedConfig,
    PreTrainedModel,
    RobertaTokenizer,
)

from mmdpo.adapters.tiny import tiny_clip_tokenizer
from mmdpo.adapters.tiny_vlm import byte_vocab, tiny_vlm

TINY_OPEN_CLIP = "mmdpo-tiny-clip"
"""The open_clip architecture name of the tiny config, once :func:`register_tiny_open_clip` has run."""

TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


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
        vocab=byte_vocab(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]), merges=[], model_max_length=60
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
    torch.manual_seed(seed)
    model, processor = tiny_vlm("llava")
    return model.eval(), processor
