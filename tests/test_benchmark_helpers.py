"""The pure helpers of benchmarks/diffusion_dpo.py: FLOPs counting, the model it builds, step bookkeeping."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import diffusion_dpo as bench  # noqa: E402
from harness import step_times  # noqa: E402


def test_full_size_is_sdxl_base_and_its_flops_match_the_reference_table():
    """SDXL base 1.0: 2,567,463,684 UNet parameters and 6.761 TFLOPs per 1024 px forward (perf reference B3)."""
    from diffusers import UNet2DConditionModel

    config = bench.unet_config("full")
    assert config["cross_attention_dim"] == 2048
    assert config["projection_class_embeddings_input_dim"] == 2816
    with torch.device("meta"):
        params = sum(p.numel() for p in UNet2DConditionModel(**config).parameters())
    assert params == 2_567_463_684
    assert bench.unet_forward_flops(config, 1024) / 1e12 == pytest.approx(6.761, abs=5e-4)


def test_flops_scale_with_the_batch():
    config = bench.unet_config("tiny")
    assert bench.unet_forward_flops(config, 64, batch=3) == 3 * bench.unet_forward_flops(config, 64)


def test_training_flops_per_pair():
    assert bench.train_flops_per_pair(1.0, gradient_checkpointing=False) == 6.0  # 2 x (fwd + input-grad bwd + ref)
    assert bench.train_flops_per_pair(1.0, gradient_checkpointing=True) == 8.0
    assert bench.train_flops_per_pair(1.0, gradient_checkpointing=False, lora=False) == 8.0
    assert bench.train_flops_per_pair(2.0, gradient_checkpointing=True, k=4) == 32.0


def test_the_tiny_pipeline_loads_in_mmdpo_and_its_conditions_fit_the_unet(tmp_path):
    from mmdpo.adapters.text_to_image import load_text_to_image

    bench.build_pipeline("tiny", tmp_path / "model")
    model = load_text_to_image(str(tmp_path / "model"))
    assert model.family.name == "sdxl" and len(model.text_encoders) == 2
    conditions = model.encode_prompts(["a red cat"])
    side = bench.SIZES["tiny"]["resolution"] // 8
    added = {"text_embeds": conditions["text_embeds"], "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    out = model.denoiser(
        torch.randn(1, 4, side, side), torch.tensor([10]), conditions["encoder_hidden_states"], added_cond_kwargs=added
    ).sample
    assert out.shape == (1, 4, side, side)


def test_sections_are_summed_per_step_and_the_rest_is_other():
    sections = bench.Sections("cpu")
    stamps = [1.0, 2.0, 4.0, 5.0]  # steps 1, 2, 3 take 1, 2 and 1 seconds of wall time
    cpu_stamps = [0.5, 1.0, 2.0, 2.5]  # and 0.5, 1 and 0.5 seconds of CPU time
    # (section, wall start, wall seconds, CPU seconds)
    sections.records = [
        ("data", 1.1, 0.2, 0.1),
        ("data", 1.5, 0.2, 0.1),
        ("ref_fwd", 2.5, 1.0, 0.8),
        ("data", 4.1, 0.1, 0.0),
    ]
    wall = sections.per_step(stamps, warmup=0)
    assert wall["data"] == pytest.approx(0.1)  # median of 0.4, 0 and 0.1
    assert wall["ref_fwd"] == pytest.approx(0.0)  # median of 0, 1 and 0
    assert wall["other"] == pytest.approx(0.9)  # median of 0.6, 1.0 and 0.9
    cpu = sections.per_step(stamps, warmup=0, cpu_stamps=cpu_stamps)
    assert cpu["data"] == pytest.approx(0.0)  # median of 0.2, 0 and 0
    assert cpu["other"] == pytest.approx(0.3)  # median of 0.3, 0.2 and 0.5
    assert sections.per_step(stamps, warmup=1)["ref_fwd"] == pytest.approx(0.5)  # steps 2 and 3 only
    assert step_times(stamps, warmup=1) == [2.0, 1.0]
