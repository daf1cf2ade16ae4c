"""Tiny random vision-language models with processors built from parts, for tests, benchmarks and ``tiny:<arch>``.

Sizes follow the offline recipes verified on transformers 5.x (``reference/adapters_and_rewards.md`` §3.2):
a two-layer text tower of width 32 on a two-layer vision tower. Tokenizers are byte-level vocabularies without
merges, built in memory; every processor but PaliGemma's carries a ChatML template whose image parts render as
the family's image placeholder. Nothing is downloaded.

    model, processor = tiny_vlm("qwen2_vl")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tokenizers import pre_tokenizers

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin, Qwen2Tokenizer

CHATML = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_VISION = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
TINY_VLMS = ("llava", "qwen2_vl", "qwen2_5_vl", "idefics3", "paligemma")


def byte_vocab(specials: list[str]) -> dict[str, int]:
    """The special tokens first, then the 256 byte-level characters."""
    return {token: i for i, token in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}


def chat_template(image: str) -> str:
    """ChatML in which a ``{"type": "image"}`` content part renders as ``image`` and text parts as their text."""
    return (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
        "{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for part in m['content'] %}"
        "{% if part['type'] == 'image' %}" + image + "{% else %}{{ part['text'] }}{% endif %}"
        "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def tiny_vlm_tokenizer(specials: list[str], **kwargs: Any) -> Qwen2Tokenizer:
    """A byte-level tokenizer whose ChatML and image tokens are special, padding with ``<|endoftext|>``."""
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer(
        vocab=byte_vocab(CHATML + specials), merges=[], unk_token=None, pad_token="<|endoftext|>",
        eos_token="<|im_end|>", model_max_length=4096, **kwargs,
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": CHATML[1:] + specials})
    return tokenizer


def _text_config(tokenizer: Qwen2Tokenizer, **overrides: Any) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
        "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.pad_token_id,
        "eos_token_id": tokenizer.eos_token_id, **overrides,
    }  # fmt: skip


def _llava() -> tuple[PretrainedConfig, ProcessorMixin]:
    """CLIP vision tower on 28-pixel images (4 image tokens), Qwen2 text tower."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaProcessor

    tokenizer = tiny_vlm_tokenizer(["<image>"])
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
        tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=chat_template("<image>"),
    )  # fmt: skip
    config = LlavaConfig(
        text_config={"model_type": "qwen2", **_text_config(tokenizer)},
        vision_config=dict(
            model_type="clip_vision_model", image_size=28, patch_size=14, hidden_size=32, projection_dim=32,
            num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        ),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )  # fmt: skip
    return config, processor


def _qwen(version: str) -> tuple[PretrainedConfig, ProcessorMixin]:
    """Qwen2-VL or Qwen2.5-VL: 14-pixel patches merged 2 x 2, images of 28² to 56² pixels (1 to 4 image tokens)."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
    )  # fmt: skip
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = tiny_vlm_tokenizer(QWEN_VISION)
    sizes = dict(min_pixels=28 * 28, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2)
    processor_class, config_class = (
        (Qwen2VLProcessor, Qwen2VLConfig) if version == "qwen2_vl" else (Qwen2_5_VLProcessor, Qwen2_5_VLConfig)
    )
    processor = processor_class(
        image_processor=Qwen2VLImageProcessor(**sizes), tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**sizes), chat_template=chat_template(
            "<|vision_start|><|image_pad|><|vision_end|>"
        ),
    )  # fmt: skip
    vision = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, depth=2, num_heads=4, hidden_size=32)
    if version == "qwen2_vl":
        vision.update(embed_dim=32, mlp_ratio=4, in_chans=3)
    else:
        vision.update(intermediate_size=37, out_hidden_size=32, window_size=28, fullatt_block_indexes=[1])
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [1, 1, 2]}
    config = config_class(
        text_config=_text_config(tokenizer, rope_parameters=rope),
        vision_config=vision,
        **{f"{name}_token_id": tokenizer.convert_tokens_to_ids(token) for name, token in zip(
            ("vision_start", "vision_end", "image", "video"), QWEN_VISION
        )},
    )  # fmt: skip
    return config, processor


def _idefics3() -> tuple[PretrainedConfig, ProcessorMixin]:
    """SigLIP-style tower on 28-pixel images, pixel-shuffled 2 x 2 into one image token, Llama text tower."""
    from transformers import Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    tokenizer = tiny_vlm_tokenizer(["<image>", "<fake_token_around_image>", "<global-img>", "<end_of_utterance>"])
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False, size={"longest_edge": 28}, max_image_size={"longest_edge": 28}
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=1, chat_template=chat_template("<image>")
    )
    config = Idefics3Config(
        text_config={"model_type": "llama", **_text_config(tokenizer)},
        vision_config=dict(
            image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=37,
        ),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=2,
    )  # fmt: skip
    return config, processor


def _paligemma() -> tuple[PretrainedConfig, ProcessorMixin]:
    """SigLIP tower on 28-pixel images (4 image tokens), Gemma text tower, a prefix-LM; no chat template."""
    from transformers import PaliGemmaConfig, PaliGemmaProcessor, SiglipImageProcessor

    tokenizer = tiny_vlm_tokenizer(["<bos>"], bos_token="<bos>")
    image_processor = SiglipImageProcessor(size={"height": 28, "width": 28})
    image_processor.image_seq_length = 4
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <image> and 1152 more
    config = PaliGemmaConfig(
        text_config={"model_type": "gemma", **_text_config(tokenizer, num_key_value_heads=1, head_dim=8)},
        vision_config=dict(
            model_type="siglip_vision_model", image_size=28, patch_size=14, hidden_size=32, intermediate_size=37,
            num_hidden_layers=2, num_attention_heads=4,
        ),
        image_token_id=processor.image_token_id,
        projection_dim=32,
    )  # fmt: skip
    return config, processor


def tiny_vlm(arch: str = "llava", *, attn_implementation: str = "sdpa") -> tuple[PreTrainedModel, ProcessorMixin]:
    """A randomly initialised image-text-to-text model of a known family and its processor."""
    from transformers import AutoModelForImageTextToText

    builders = {
        "llava": _llava, "qwen2_vl": lambda: _qwen("qwen2_vl"), "qwen2_5_vl": lambda: _qwen("qwen2_5_vl"),
        "idefics3": _idefics3, "paligemma": _paligemma,
    }  # fmt: skip
    if arch not in builders:
        raise ValueError(f"Unknown tiny vision-language model {arch!r}; choose one of {', '.join(TINY_VLMS)}.")
    config, processor = builders[arch]()
    model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn_implementation)
    return model, processor
