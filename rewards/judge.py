"""A vision-language model as judge: how likely it answers "Yes" to a question about the image and the prompt."""

from __future__ import annotations

import PIL.Image
import torch
from torch import Tensor
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from mmdpo.rewards.base import Reward
from mmdpo.rewards.tiny import tiny_llava

VQASCORE_QUESTION = 'Does this figure show "{prompt}"? Please answer yes or no.'
"""The question template of VQAScore (Lin et al. 2024, arXiv 2404.01291, ``t2v_metrics``)."""


class VLMJudge(Reward):
    """``P(yes) / (P(yes) + P(no))`` for the model's next token after a chat turn holding the image and a question,
    i.e. ``sigmoid(logit_yes - logit_no)``, in [0, 1]. VQAScore (Lin et al. 2024) uses the unnormalised ``P(yes)``;
    renormalising over the two answers ignores probability mass on other tokens.

    Answers are matched by their first token. Prompts are left-padded and the last position read, which is exact
    for models with rotary (relative) positions, the usual case.

    Args:
        model: a transformers image-text-to-text model (LLaVA, Qwen2-VL, Idefics3, ...).
        processor: its processor, with a chat template.
        question: the user turn's text; ``{prompt}`` is replaced by the item's prompt.
        answers: the positive and the negative answer.
    """

    name = "vlm_judge"

    def __init__(
        self,
        model: PreTrainedModel,
        processor: ProcessorMixin,
        question: str = VQASCORE_QUESTION,
        answers: tuple[str, str] = ("Yes", "No"),
        batch_size: int = 8,
    ):
        super().__init__(batch_size)
        if "{prompt}" not in question:
            raise ValueError(f"The judge's question must hold '{{prompt}}' where the prompt goes; got {question!r}.")
        ids = [processor.tokenizer.encode(answer, add_special_tokens=False)[:1] for answer in answers]
        if len(answers) != 2 or not all(ids) or ids[0] == ids[1]:
            raise ValueError(f"The judge needs two answers with different first tokens; got {answers!r}.")
        self.model, self.processor, self.question = model.eval(), processor, question
        self.answer_ids = [i[0] for i in ids]

    def conversation(self, prompt: str) -> list[dict]:
        """One user turn: the image, then the question about ``prompt``."""
        question = self.question.replace("{prompt}", prompt)
        return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]

    def score_batch(self, prompts: list[str], items: list[PIL.Image.Image]) -> Tensor:
        conversations = [self.conversation(prompt) for prompt in prompts]
        texts = self.processor.apply_chat_template(conversations, add_generation_prompt=True)
        inputs = self.processor(images=items, text=texts, padding=True, padding_side="left", return_tensors="pt")
        logits = self.model(**inputs.to(self.device, self.dtype), logits_to_keep=1).logits[:, -1, self.answer_ids]
        return logits.float().softmax(-1)[:, 0]

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str,
        *,
        question: str = VQASCORE_QUESTION,
        answers: tuple[str, str] = ("Yes", "No"),
        batch_size: int = 8,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> VLMJudge:
        """A model (``AutoModelForImageTextToText``) and its processor from one local folder or hub id."""
        model = AutoModelForImageTextToText.from_pretrained(path_or_id, dtype=dtype or torch.float32)
        return cls(model, AutoProcessor.from_pretrained(path_or_id), question, answers, batch_size).to(device)

    @classmethod
    def tiny(cls, seed: int = 0, **kwargs) -> VLMJudge:
        return cls(*tiny_llava(seed), **kwargs)
