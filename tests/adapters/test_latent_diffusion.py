"""The latent-diffusion core serves a model family written here, outside mmdpo, in one small class; families are
chosen from the tiny name, the pipeline class or the denoiser config."""

import io
import json
import math

import PIL.Image
import pytest
import torch
from datasets import Dataset
from torch import Tensor
from transformers import CLIPTextModel

from mmdpo.adapters.latent_diffusion.data import indexed
from mmdpo.adapters.latent_diffusion.families.sd15 import SD15
from mmdpo.adapters.latent_diffusion.families.sdxl import SDXL
from mmdpo.adapters.latent_diffusion.family import Family
from mmdpo.adapters.latent_diffusion.model import LatentDiffusionModel, add_lora, family_of, load_model
from mmdpo.adapters.text_to_image import ImageMedia, TextToImageAdapter
from mmdpo.adapters.tiny import tiny_clip_config, tiny_clip_tokenizer, tiny_ddpm_scheduler, tiny_unet, tiny_vae
from mmdpo.config import LoraSection
from mmdpo.data.images import load_image_groups
from mmdpo.objectives import get_objective


class WidthClasses(Family):
    """A family with another conditioning: the mean of one CLIP encoder's states (a single token to attend to) and a
    class label per group, read from its first image's width, through the UNet's class embedding."""

    name = "width_classes"
    pipelines = ("WidthClassesPipeline",)
    text_parts = (("text_encoder", CLIPTextModel, "tokenizer"),)

    def tiny(self) -> LatentDiffusionModel:
        torch.manual_seed(0)
        tokenizer = tiny_clip_tokenizer()
        encoder = CLIPTextModel(tiny_clip_config(tokenizer, 8))
        unet = tiny_unet(cross_attention_dim=8, attention_head_dim=2, num_class_embeds=3)
        return LatentDiffusionModel(
            "tiny:width_classes", self, unet, tiny_ddpm_scheduler(), tiny_vae(), [encoder], [tokenizer]
        )

    def encode(self, text_encoders, input_ids):
        return {"encoder_hidden_states": text_encoders[0](input_ids[0])[0].mean(dim=1, keepdim=True)}

    def group_conditions(self, group):
        return {"class_labels": group.original_size[1] // 10 % 3}

    def denoise(self, denoiser, x_t: Tensor, t: Tensor, encoder_hidden_states: Tensor, class_labels: Tensor) -> Tensor:
        states = encoder_hidden_states.to(x_t.dtype)
        return denoiser(x_t, t, encoder_hidden_states=states, class_labels=class_labels.long()).sample


class WidthClassesAdapter(TextToImageAdapter):
    families = (WidthClasses(),)


def png(width: int, value: int) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new("RGB", (width, 20), (value, 255 - value, 60)).save(buffer, format="PNG")
    return buffer.getvalue()


def rows(widths=(20, 30, 40, 50)):
    data = [
        {"prompt": f"picture {i}", "chosen": png(width, 200), "rejected": png(width, 40)}
        for i, width in enumerate(widths)
    ]
    return indexed(load_image_groups(Dataset.from_list(data))).dataset.to_list()


def test_a_family_written_outside_mmdpo_trains_a_step_through_the_core():
    model = load_model("tiny:width_classes", WidthClassesAdapter.families)
    add_lora(model.denoiser, LoraSection(r=4, alpha=4), model.family.lora_targets)
    ad = WidthClassesAdapter(model, reference="adapter", media=ImageMedia(16), prompt_dropout=0.5)
    batch = ad.collate(rows(), seed=0, epoch=0)
    assert batch.extra["class_labels"].tolist() == [2, 0, 1, 2]  # width // 10 % 3 of 20, 30, 40, 50 px
    dpo = get_objective("dpo", beta=5000.0)

    def loss():
        inputs = ad.inputs(batch)
        reference = ad.reference(batch, inputs)
        assert inputs["encoder_hidden_states"].shape == (4, 1, 8)  # the family's encoding reached the inputs
        return dpo(ad.policy_loglik(ad.scorer, batch, inputs, reference), reference.loglik, batch.prefs).loss

    before = loss()
    assert math.isclose(before.item(), math.log(2), abs_tol=1e-7)  # the disabled adapter is the policy at first
    params = [p for p in ad.scorer.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1.0)
    before.backward()
    assert all(p.grad is not None for p in params) and any(p.grad.abs().sum() > 0 for p in params)
    optimizer.step()
    assert abs(loss().item() - math.log(2)) > 1e-6

    inputs = ad.inputs(batch)
    relabelled = {**inputs, "class_labels": (inputs["class_labels"] + 1) % 3}
    assert (ad.scorer(**inputs) - ad.scorer(**relabelled)).abs().min() > 0  # the label reaches the UNet


def test_families_come_from_the_tiny_name_the_pipeline_class_or_the_unet_config(tmp_path):
    families = (SD15(), SDXL())
    assert [family_of(f"tiny:{name}", families).name for name in ("sd15", "sdxl")] == ["sd15", "sdxl"]
    with pytest.raises(ValueError, match="choose tiny:sd15 or tiny:sdxl"):
        family_of("tiny:flux", families)

    saved = TextToImageAdapter(SDXL().tiny(), reference="none")
    saved.save(saved.scorer, tmp_path)
    assert family_of(str(tmp_path), families).name == "sdxl"  # StableDiffusionXLPipeline
    index = json.loads((tmp_path / "model_index.json").read_text())
    (tmp_path / "model_index.json").write_text(json.dumps({**index, "_class_name": "MyXLPipeline"}))
    assert family_of(str(tmp_path), families).name == "sdxl"  # its UNet's text_time conditioning
    with pytest.raises(ValueError, match="MyXLPipeline pipeline, which no model family here loads"):
        family_of(str(tmp_path), families[:1])
