"""GPU checks: bf16 mixed precision on CUDA (skipped without a CUDA device)."""

import pytest
import torch

from mmdpo.adapters.llm import CausalLMScorer, collate, tokenize_group
from mmdpo.adapters.tiny import tiny_causal_lm
from mmdpo.config import load_config
from mmdpo.training.trainer import train

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("layout", ["shared", "concat"])
def test_bf16_logprobs_on_cuda_track_fp32(tokenizer, layout):
    torch.manual_seed(0)
    model = tiny_causal_lm("qwen2", tokenizer, hidden_size=128).cuda()
    rows = [
        {**tokenize_group({"prompt": "a b c d", "candidates": ["e f g", "h i"]}, tokenizer, 64), "ranks": [0, 1]},
        {**tokenize_group({"prompt": "x", "candidates": ["yyyyyyyy", "z"]}, tokenizer, 64), "ranks": [1, 0]},
    ]
    batch = collate(rows, pad_token_id=tokenizer.pad_token_id, layout=layout).to("cuda")
    scorer = CausalLMScorer(model)
    exact = scorer(**batch.model_inputs())["values"]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        half = scorer(**batch.model_inputs())["values"]
    assert half.dtype == torch.float32  # log-probs always come out in fp32
    torch.testing.assert_close(half.sum(-1), exact.sum(-1), atol=0.5, rtol=0.02)


@pytest.mark.parametrize("lora", [False, True])
def test_bf16_dpo_learns_on_cuda(tmp_path, lora):
    overrides = [
        "model.path=tiny:llama",
        "data.path=toy",
        "train.mixed_precision=bf16",
        "train.epochs=3",
        "train.batch_size=16",
        "train.lr=3e-3",
        "objective.beta=0.5",
        f"train.output_dir={tmp_path}",
        "train.progress=false",
    ]
    if lora:
        overrides += ["model.lora.r=8", "model.gradient_checkpointing=true", "train.lr=2e-2"]
    result = train(load_config(None, overrides))
    assert result.eval_after["eval/rewards/accuracies"] >= 0.9


@pytest.mark.parametrize(("precision", "lora"), [("fp16", True), ("bf16", True), ("bf16", False)])
def test_text_to_image_mixed_precision_on_cuda(tmp_path, pickapic, precision, lora):
    """fp16 keeps the LoRA weights in fp32 for the gradient scaler and the VAE in fp32; bf16 full fine-tuning runs a
    half-precision reference copy. Each starts at ln 2, stays finite and moves the held-out loss."""
    overrides = [
        "model.path=tiny:sdxl", f"data.path={pickapic}", "data.resolution=16", "data.eval_fraction=0.25",
        "objective.beta=5000", f"train.mixed_precision={precision}", "train.max_steps=4", "train.batch_size=4",
        "train.lr=1e-3", f"train.output_dir={tmp_path}", "train.progress=false", "model.gradient_checkpointing=true",
    ]  # fmt: skip
    if lora:
        overrides += ["model.lora.r=4", "model.dtype=float16" if precision == "fp16" else "model.dtype=bfloat16"]
    result = train(load_config(None, overrides))
    assert result.eval_before["eval/loss"] == pytest.approx(0.6931, abs=2e-2)  # half-precision reference: rounding
    assert result.eval_after["eval/loss"] == result.eval_after["eval/loss"]
    assert result.eval_after["eval/loss"] != result.eval_before["eval/loss"]
