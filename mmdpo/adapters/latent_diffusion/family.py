"""What a model family adds to the latent-diffusion core: its text encoders and how they condition the denoiser,
extra conditions read from each group's data, its latent normalisation, its diffusers pipeline and a tiny build.

    class MyFamily(Family):
        name, pipelines, pipeline_class = "mine", ("MyPipeline",), MyPipeline
        text_parts = (("text_encoder", T5EncoderModel, "tokenizer"),)
        def tiny(self): ...                                   # a LatentDiffusionModel built in memory
        def encode(self, text_encoders, input_ids): ...       # {"encoder_hidden_states": ..., ...}
        def denoise(self, denoiser, x_t, t, **conditions): ...

Everything else (latents, noising, per-group randomness, reference strategies, LoRA, the encode cache, sampling
and saving) is the core's. Families are stateless: one instance serves every model of the family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn
from torch.nn import functional as F

from mmdpo.adapters.latent_diffusion.latents import Normalisation, vae_normalisation

if TYPE_CHECKING:
    from mmdpo.adapters.latent_diffusion.model import LatentDiffusionModel


class Family(ABC):
    """One model family (SD1.5, SDXL, ...) over the latent-diffusion core.

    Attributes:
        name: its tiny model is ``tiny:<name>``.
        pipelines: the diffusers pipeline classes (``_class_name`` of ``model_index.json``) it loads.
        pipeline_class: the diffusers pipeline that samples from the family and saves it.
        pipeline_options: what that pipeline is built with beside its components.
        text_parts: per text encoder, its subfolder, its transformers class and its tokenizer's subfolder.
        denoiser_name: the pipeline component that is trained (its subfolder; ``<name>_lora_layers`` when saving).
        denoiser_class, vae_class: the diffusers classes of those components.
        lora_targets: the modules LoRA adapts unless ``model.lora.target_modules`` names others; the default is the
            attention projections the diffusers LoRA scripts adapt, which ``pipe.load_lora_weights`` expects.
        sampling_parts: per pipeline component that only sampling needs (Tango's vocoder), its subfolder and class;
            they load with the VAE and the text encoders.
        variable_length: the prompt conditions ``[B, L, ...]`` whose length L is the batch's longest prompt (token
            states and their attention mask, whose zeros hide the padding); where conditions of several batches meet
            (prompt dropout's empty prompt, the encode cache) they are zero-padded to one length (:meth:`align`).
    """

    name: ClassVar[str]
    pipelines: ClassVar[tuple[str, ...]]
    pipeline_class: ClassVar[type]
    pipeline_options: ClassVar[dict[str, Any]] = {}
    text_parts: ClassVar[tuple[tuple[str, type, str], ...]]
    denoiser_name: ClassVar[str] = "unet"
    denoiser_class: ClassVar[type] = UNet2DConditionModel
    vae_class: ClassVar[type] = AutoencoderKL
    lora_targets: ClassVar[tuple[str, ...]] = ("to_k", "to_q", "to_v", "to_out.0")
    sampling_parts: ClassVar[tuple[tuple[str, type], ...]] = ()
    variable_length: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def tiny(self) -> LatentDiffusionModel:
        """A random model of the family built in memory, the same weights every time (``tiny:<name>``)."""

    @abstractmethod
    def encode(self, text_encoders: Sequence[nn.Module], input_ids: Sequence[Tensor]) -> dict[str, Tensor]:
        """The prompt conditions ``[B, ...]`` by name, as the family's pipeline computes them (called without
        gradients)."""

    @abstractmethod
    def denoise(self, denoiser: nn.Module, x_t: Tensor, t: Tensor, **conditions: Tensor) -> Tensor:
        """The denoiser's prediction at ``(x_t, t)`` (``x_t`` already in its dtype) given the conditions of
        :meth:`encode` and :meth:`group_conditions`."""

    def load_text_encoders(self, path: str) -> tuple[list[nn.Module], list[Any]]:
        """The text encoders and their tokenizers (:attr:`text_parts`) of the pipeline at ``path``."""
        from transformers import AutoTokenizer

        from mmdpo.adapters.latent_diffusion.model import load_part

        encoders = [load_part(cls, path, subfolder, "model.path") for subfolder, cls, _ in self.text_parts]
        tokenizers = [load_part(AutoTokenizer, path, subfolder, "model.path") for *_, subfolder in self.text_parts]
        return encoders, tokenizers

    def tokenize(self, tokenizers: Sequence[Any], prompts: Sequence[str]) -> list[Tensor]:
        """Input ids ``[B, L]`` per tokenizer, padded to its ``model_max_length`` (CLIP: 77) and truncated."""
        return [
            tok(
                list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids
            for tok in tokenizers
        ]  # fmt: skip

    def pad(self, conditions: dict[str, Tensor], length: int) -> dict[str, Tensor]:
        """``conditions`` with their :attr:`variable_length` ones zero-padded (mask off) to ``length`` positions."""
        return {
            name: F.pad(value, (0, 0) * (value.dim() - 2) + (0, length - value.shape[1]))
            if name in self.variable_length else value
            for name, value in conditions.items()
        }  # fmt: skip

    def align(self, *conditions: dict[str, Tensor]) -> list[dict[str, Tensor]]:
        """Several batches' conditions with their :attr:`variable_length` ones padded to the longest among them."""
        lengths = [c[name].shape[1] for c in conditions for name in self.variable_length]
        return [self.pad(c, max(lengths)) for c in conditions] if lengths else list(conditions)

    def group_conditions(self, group: Any) -> dict[str, list[float]]:
        """Conditions read from one group's transformed media (e.g. SDXL's size and crop), none by default."""
        return {}

    def normalisation(self, vae: nn.Module) -> Normalisation:
        """The latent space's (shift, scale): by default what the VAE's config names."""
        return vae_normalisation(vae)

    def accepts(self, denoiser_config: dict[str, Any]) -> bool:
        """Whether a denoiser of this config belongs to the family (asked when the pipeline's class is none of
        :attr:`pipelines`)."""
        return False

    def pipeline_parts(self, text_encoders: Sequence[nn.Module], tokenizers: Sequence[Any]) -> dict[str, Any]:
        """The pipeline's keyword arguments beside the VAE, the denoiser and the scheduler."""
        parts = dict(self.pipeline_options)
        for (encoder_name, _, tokenizer_name), encoder, tokenizer in zip(self.text_parts, text_encoders, tokenizers):
            parts[encoder_name], parts[tokenizer_name] = encoder, tokenizer
        return parts
