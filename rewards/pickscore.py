"""PickScore (Kirstain et al. 2023, arXiv 2305.01569): a CLIP-H/14 fine-tuned on Pick-a-Pic preferences."""

from __future__ import annotations

import PIL.Image
import torch
from torch import Tensor
from torch.nn import functional as F
from transformers import CLIPModel, CLIPProcessor

from mmdpo.rewards.base import Reward
from mmdpo.rewards.tiny import tiny_clip

PICKSCORE_ID = "yuvalkirstain/PickScore_v1"
PICKSCORE_PROCESSOR_ID = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"


class PickScore(Reward):
    """``logit_scale.exp() * cos(E_text, E_image)`` of a transformers ``CLIPModel``, as the model card's code (about
    20-23 for good matches; a softmax over one prompt's candidates gives preference probabilities).

    Args:
        model: the ``CLIPModel``.
        processor: its ``CLIPProcessor`` (image processor and tokenizer; text is truncated to its max length, 77).
    """

    name = "pickscore"

    def __init__(self, model: CLIPModel, processor: CLIPProcessor, batch_size: int = 16):
        super().__init__(batch_size)
        self.model, self.processor = model.eval(), processor

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        inputs = self.processor(text=prompts, images=items, padding=True, truncation=True, return_tensors="pt")
        inputs = inputs.to(self.device, self.dtype)  # casts only the floating-point pixel values
        images = self.model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        texts = self.model.get_text_features(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).pooler_output
        return self.model.logit_scale.exp() * (F.normalize(images, dim=-1) * F.normalize(texts, dim=-1)).sum(-1)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = PICKSCORE_ID,
        processor: str | None = None,
        *,
        batch_size: int = 16,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> PickScore:
        """The model from a local folder or hub id, and the processor from ``processor``: by default the model's own
        folder, or LAION's CLIP-ViT-H-14 processor for the official checkpoint (which the model card loads)."""
        processor = processor or (PICKSCORE_PROCESSOR_ID if path_or_id == PICKSCORE_ID else path_or_id)
        model = CLIPModel.from_pretrained(path_or_id, dtype=dtype or torch.float32)
        return cls(model, CLIPProcessor.from_pretrained(processor), batch_size).to(device)

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs) -> PickScore:
        return cls(*tiny_clip(seed), **kwargs)
