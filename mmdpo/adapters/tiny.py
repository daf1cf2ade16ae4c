"""Tiny random models and an in-memory byte-level tokenizer, for tests, the demo and benchmarks.

``tiny:<arch>`` as a model path builds one of these instead of loading weights, so everything
runs offline.
"""

from __future__ import annotations

from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
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


# --- latent-diffusion parts (assembled by mmdpo.adapters.latent_diffusion.families) ---------------


def tiny_clip_tokenizer(model_max_length: int = 77):
    """A CLIP tokenizer with a byte-level vocabulary and no merges, built in memory."""
    from transformers import CLIPTokenizer

    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=model_max_length)


def tiny_clip_config(tokenizer, hidden_size: int):
    """A two-layer CLIP text config over ``tokenizer``'s vocabulary (the diffusers test-suite sizes)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=len(tokenizer), hidden_size=hidden_size,
        intermediate_size=2 * hidden_size, num_attention_heads=2, num_hidden_layers=2, projection_dim=hidden_size,
        max_position_embeddings=tokenizer.model_max_length,
    )  # fmt: skip


def tiny_unet(**config: Any):
    """A two-level ``UNet2DConditionModel`` on 4-channel latents, cross-attention in the lower level; ``config``
    adds the conditioning (``cross_attention_dim``, ``attention_head_dim``, ...) or replaces these settings."""
    from diffusers import UNet2DConditionModel

    defaults = dict(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        norm_num_groups=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    return UNet2DConditionModel(**{**defaults, **config})


def tiny_vae(**config: Any):
    """A two-level ``AutoencoderKL`` from RGB to 4 latent channels; ``config`` replaces these settings."""
    from diffusers import AutoencoderKL

    defaults = dict(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=2,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    return AutoencoderKL(**{**defaults, **config})


def tiny_t5_tokenizer(model_max_length: int = 64) -> PreTrainedTokenizerFast:
    """A T5-style tokenizer built in memory: one token per byte, pad 0, ``</s>`` 1 appended to every text, unk 2."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[char] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
        model_max_length=model_max_length,
    )  # fmt: skip


def tiny_t5_encoder(tokenizer, d_model: int = 32):
    """A one-layer ``T5EncoderModel`` over ``tokenizer``'s vocabulary (pad 0, eos 1, as FLAN-T5)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_ff=2 * d_model, d_kv=8, num_heads=4, num_layers=1,
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return T5EncoderModel(config)


def tiny_vocoder(n_mels: int, upsample_initial_channel: int = 16, **config: Any):
    """A ``SpeechT5HifiGan`` mel-to-waveform vocoder of ``n_mels`` input bins, ``upsample_initial_channel`` wide;
    ``config`` gives its upsampling (its rates multiply to the STFT hop) and other settings."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    return SpeechT5HifiGan(
        SpeechT5HifiGanConfig(
            model_in_dim=n_mels, upsample_initial_channel=upsample_initial_channel, normalize_before=False, **config
        )
    )


def tiny_ddpm_scheduler():
    """The DDPM training schedule SD1.5 and SDXL ship (scaled linear betas, epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        prediction_type="epsilon",
        steps_offset=1,
    )
