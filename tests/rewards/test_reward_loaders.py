"""The real loaders on checkpoints saved in the hub layouts, offline: the loaded reward scores like the saved one."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mmdpo.rewards import Aesthetic, Audio, CLAPScore, CLIPScore, HPSv2, PickScore, VLMJudge, load_reward
from mmdpo.rewards.tiny import TINY_OPEN_CLIP, TINY_OPEN_CLIP_CONFIG


def test_pickscore_loads_a_model_folder_with_its_processor_or_a_separate_one(tmp_path, prompts, images):
    tiny = PickScore.tiny(seed=1)
    tiny.model.save_pretrained(tmp_path / "both")
    tiny.processor.save_pretrained(tmp_path / "both")
    tiny.model.save_pretrained(tmp_path / "model")  # like yuvalkirstain/PickScore_v1 beside LAION's processor
    tiny.processor.save_pretrained(tmp_path / "processor")
    expected = tiny(prompts, images)
    torch.testing.assert_close(PickScore.from_pretrained(str(tmp_path / "both"))(prompts, images), expected)
    loaded = PickScore.from_pretrained(str(tmp_path / "model"), str(tmp_path / "processor"), dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16
    torch.testing.assert_close(loaded(prompts, images), expected, atol=0.1, rtol=0.05)
    tiny.model.to(torch.bfloat16).save_pretrained(tmp_path / "half")  # transformers would load it in bfloat16
    assert PickScore.from_pretrained(str(tmp_path / "half"), str(tmp_path / "processor")).dtype == torch.float32


def test_clipscore_loads_open_clips_hub_folder_layout_and_a_checkpoint_file(tmp_path, prompts, images):
    tiny = CLIPScore.tiny(seed=1)
    save_file(tiny.model.state_dict(), tmp_path / "open_clip_model.safetensors")
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP_CONFIG}))
    torch.save(tiny.model.state_dict(), tmp_path / "weights.pt")
    expected = tiny(prompts, images)
    torch.testing.assert_close(CLIPScore.from_pretrained(str(tmp_path))(prompts, images), expected)
    from_file = CLIPScore.from_pretrained(TINY_OPEN_CLIP, pretrained=str(tmp_path / "weights.pt"), weight=100)
    torch.testing.assert_close(from_file(prompts, images), expected * 40)


@pytest.mark.parametrize(("version", "filename"), [("2.0", "HPS_v2_compressed.pt"), ("2.1", "HPS_v2.1_compressed.pt")])
def test_hpsv2_loads_the_state_dict_entry_of_the_versions_checkpoint(tmp_path, prompts, images, version, filename):
    tiny = HPSv2.tiny(seed=1)
    torch.save({"state_dict": tiny.model.state_dict()}, tmp_path / filename)
    expected = tiny(prompts, images)
    for source in (tmp_path, tmp_path / filename):
        loaded = HPSv2.from_pretrained(str(source), version, arch=TINY_OPEN_CLIP)
        torch.testing.assert_close(loaded(prompts, images), expected)
    by_name = load_reward("hpsv2", str(tmp_path), version=version, arch=TINY_OPEN_CLIP)
    torch.testing.assert_close(by_name(prompts, images), expected)
    assert not torch.allclose(HPSv2.tiny(seed=2)(prompts, images), expected)  # the weights matter


def test_hpsv2_names_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"holds no HPS_v2.1_compressed.pt"):
        HPSv2.from_pretrained(str(tmp_path), arch=TINY_OPEN_CLIP)
    with pytest.raises(FileNotFoundError, match="does not exist; give a checkpoint file, its folder or a hub repo id"):
        HPSv2.from_pretrained(str(tmp_path / "absent.pt"), arch=TINY_OPEN_CLIP)
    with pytest.raises(ValueError, match="HPS version '3' is unknown; use one of 2.0, 2.1"):
        HPSv2.from_pretrained(str(tmp_path), "3")


def test_aesthetic_loads_the_heads_layers_state_dict_onto_a_clip_checkpoint(tmp_path, images):
    tiny = Aesthetic.tiny(seed=1)
    clip = CLIPScore.tiny(seed=1).model  # the same seed builds the same tower
    assert torch.equal(clip.visual.conv1.weight, tiny.visual.conv1.weight)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    torch.save(tiny.head.state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    assert set(tiny.head.state_dict()) == {f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    loaded = Aesthetic.from_pretrained(str(tmp_path), clip=TINY_OPEN_CLIP, clip_pretrained=str(tmp_path / "clip.pt"))
    torch.testing.assert_close(loaded("", images), tiny("", images))


def test_clap_loads_a_saved_model_and_processor(tmp_path):
    tiny = CLAPScore.tiny(seed=1)
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    audio = Audio(np.random.default_rng(0).normal(0, 0.2, (2, 8000)), 16000)
    expected = tiny(["rain", "a dog barking twice"], audio)
    torch.testing.assert_close(
        CLAPScore.from_pretrained(str(tmp_path))(["rain", "a dog barking twice"], audio), expected
    )


def test_vlm_judge_loads_a_saved_model_and_processor(tmp_path, prompts, images):
    tiny = VLMJudge.tiny(seed=1)
    tiny.model.save_pretrained(tmp_path)
    tiny.processor.save_pretrained(tmp_path)
    loaded = VLMJudge.from_pretrained(str(tmp_path))
    assert loaded.answer_ids == tiny.answer_ids
    torch.testing.assert_close(loaded(prompts, images), tiny(prompts, images))
