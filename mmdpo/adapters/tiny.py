"""Tiny random models and an in-memory byte-level tokenizer, for tests, the demo and benchmarks.

``tiny:<arch>`` as a model path builds one of these instead of loading weights, so everything
runs offline.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TINY_ARCHS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", "num_key_value_heads": 2},
    "qwen2": {"model_type": "qwen2", "num_key_value_heads": 2},
    "mistral": {"model_type": "mistral", "num_key_value_heads": 2},
}


def tiny_tokenizer(model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges (one token per byte) and a ChatML template."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {char: i for i, char in enumerate(alphabet)}
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"):
        vocab[special] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def tiny_causal_lm(
    arch: str = "llama",
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    hidden_size: int = 64,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    intermediate_size: int | None = None,
    attn_implementation: str = "sdpa",
    **overrides: Any,
) -> PreTrainedModel:
    """A randomly initialised causal LM of a known architecture, sized for a CPU test."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"Unknown tiny architecture {arch!r}; choose one of {', '.join(TINY_ARCHS)}.")
    tokenizer = tokenizer or tiny_tokenizer()
    spec = dict(TINY_ARCHS[arch])
    config = AutoConfig.for_model(
        spec.pop("model_type"),
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        **{**spec, **overrides},
    )
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


# --- text-to-image ---------------------------------------------------------------------------------


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer with a byte-level vocabulary and no merges, built in memory."""
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_text_to_image(kind: str = "sd15", seed: int = 0) -> dict[str, Any]:
    """Random SD1.5-like (``sd15``) or SDXL-like (``sdxl``) components, the diffusers test-suite sizes.

    Returns ``unet``, ``vae``, ``text_encoders``, ``tokenizers`` and ``scheduler``; the SDXL variant has
    two text encoders (the second with a projection) and ``text_time`` micro-conditioning.
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if kind not in ("sd15", "sdxl"):
        raise ValueError(f"Unknown tiny text-to-image model {kind!r}; choose tiny:sd15 or tiny:sdxl.")
    torch.manual_seed(seed)
    tokenizer = tiny_clip_tokenizer()
    hidden = 8 if kind == "sd15" else 32
    text_config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer), hidden_size=hidden,
        intermediate_size=2 * hidden, num_attention_heads=2, num_hidden_layers=2, projection_dim=hidden,
        max_position_embeddings=tokenizer.model_max_length,
    )  # fmt: skip
    blocks = {
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    }
    if kind == "sd15":
        text_encoders = [CLIPTextModel(text_config)]
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            cross_attention_dim=hidden, norm_num_groups=2, attention_head_dim=2, **blocks,
        )  # fmt: skip
    else:
        text_encoders = [CLIPTextModel(text_config), CLIPTextModelWithProjection(text_config)]
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            cross_attention_dim=2 * hidden, norm_num_groups=2, attention_head_dim=(2, 4), use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + hidden, **blocks,
        )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    scheduler = DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,  # as SD1.5 and SDXL ship it
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoders": text_encoders,
        "tokenizers": [tokenizer] * len(text_encoders),
        "scheduler": scheduler,
    }
