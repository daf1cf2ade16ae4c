"""The latent-diffusion adapter: what every latent-diffusion modality gives the training loop, over a model family
(:mod:`~mmdpo.adapters.latent_diffusion.family`) and a kind of media (:class:`Media`).

Per micro-batch it encodes the candidates (VAE) and prompts (the family's text encoders) unless the batch comes from
the encode cache, draws each group's randomness from its own seed (posterior sample, prompt dropout, timestep and
noise, in that order), noises (or inverts) the latents, and scores policy and reference with
:func:`~mmdpo.adapters.latent_diffusion.estimator.denoising_loglik`. A modality is a subclass that names its
families, its media and its data section.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mmdpo.adapters.base import AdapterData, BuildContext, ReferencePass
from mmdpo.adapters.latent_diffusion.batch import LatentBatch
from mmdpo.adapters.latent_diffusion.cache import CachedBatches, cache_path, open_caches, write_caches
from mmdpo.adapters.latent_diffusion.data import split_groups
from mmdpo.adapters.latent_diffusion.estimator import DenoisingScorer
from mmdpo.adapters.latent_diffusion.family import Family
from mmdpo.adapters.latent_diffusion.latents import encode_moments, sample_latents
from mmdpo.adapters.latent_diffusion.media import Media, collate_media
from mmdpo.adapters.latent_diffusion.model import (
    LatentDiffusionModel,
    add_lora,
    family_of,
    freeze,
    load_model,
    use_xformers,
)
from mmdpo.adapters.latent_diffusion.noising import Noising, draw_noise, noise_latents
from mmdpo.adapters.latent_diffusion.randomness import Generators, drop_conditions, group_generators, group_seeds
from mmdpo.adapters.latent_diffusion.sections import LatentDataSection, LatentModelSection
from mmdpo.adapters.reference import adapter_disabled, frozen_copy
from mmdpo.config import ConfigError
from mmdpo.data.encode_cache import EncodeCache
from mmdpo.data.schema import preferences
from mmdpo.objectives import LogLik
from mmdpo.precision import DTYPES, inputs_in_own_dtype


class LatentDiffusionAdapter:
    """Everything the trainer needs for a latent-diffusion model: collate, encode, noise, score, sample, save.

    Args:
        model: the loaded parts; the denoiser is the policy (with a LoRA adapter when ``model.lora`` is set).
        reference: ``adapter`` (LoRA disabled), ``copy`` (frozen copy of the denoiser) or ``none``.
        media: the transform and sampling settings of the modality's candidates (default: its defaults).
        noising: how x_t and the target are drawn (forward noising, DDIM or ReNoise inversion).
        prompt_dropout: probability that a group's prompt is replaced by the empty prompt.
        sample_latents: train on a posterior sample of each candidate's latent (official Diffusion-DPO) or its mean.
        reference_dtype: dtype of the frozen copy (half precision under mixed precision).
        text_dtype: dtype of the text encoders.
        vae_dtype: dtype of the VAE (and of the family's sampling parts, e.g. a vocoder); SDXL's VAE overflows in fp16,
            so keep float32 unless it is an fp16-safe VAE.
        vae_path: a VAE to use instead of the pipeline's (e.g. an fp16-safe one).
        vae_batch_size: candidates per VAE encode (the transient memory of a 1024 px SDXL encode is ~2.5 GB an image).
        caches: the encode caches the batches come from (train, then held-out); the VAE and the text encoders are
            then not loaded until sampling needs them.
    """

    model_section: ClassVar[type] = LatentModelSection
    data_section: ClassVar[type] = LatentDataSection
    references = frozenset({"adapter", "copy", "none"})
    provides: frozenset[str] = frozenset()
    families: ClassVar[tuple[Family, ...]] = ()
    """The model families of the modality; :func:`~mmdpo.adapters.latent_diffusion.model.family_of` picks one."""
    media_class: ClassVar[type[Media]]

    def __init__(
        self,
        model: LatentDiffusionModel,
        *,
        reference: str = "copy",
        media: Media | None = None,
        noising: Noising | None = None,
        prompt_dropout: float = 0.0,
        sample_latents: bool = True,
        reference_dtype: torch.dtype | None = None,
        text_dtype: torch.dtype = torch.float32,
        vae_dtype: torch.dtype = torch.float32,
        vae_path: str | None = None,
        vae_batch_size: int = 8,
        caches: Sequence[EncodeCache] | None = None,
    ):
        if reference not in self.references:
            raise ValueError(
                f"model.reference={reference} is not available for latent-diffusion models; "
                f"use {' or '.join(sorted(self.references))} (adapter needs model.lora)."
            )
        self.model, self.reference_kind = model, reference
        self.media = media or self.media_class()
        self.noising = noising or Noising()
        self.prompt_dropout, self.sample_latents = prompt_dropout, sample_latents
        self.text_dtype, self.vae_dtype = text_dtype, vae_dtype
        self.vae_path, self.vae_batch_size = vae_path, vae_batch_size
        self.caches = list(caches) if caches else None
        self.empty_conditions = self.caches[0].empty_prompt() if self.caches else None
        if model.has_encoders:
            self.freeze_encoders()
        self.scorer = DenoisingScorer(model.denoiser, model.family)
        self.reference_scorer = None
        if reference == "copy":
            self.reference_scorer = DenoisingScorer(frozen_copy(model.denoiser, reference_dtype), model.family)

    # -- building ----------------------------------------------------------------------------------

    @classmethod
    def check_config(cls, config, objective) -> None:
        """What only latent-diffusion models check: the attention backend (the fields' ranges are checked with the
        sections)."""
        model = config.model
        if model.attn_implementation not in ("sdpa", "xformers"):
            raise ConfigError(
                f"model.attn_implementation={model.attn_implementation} is not available for latent-diffusion "
                "denoisers; use sdpa (the default) or xformers."
            )

    @classmethod
    def loadable_config(cls, config):
        """The config whose ``model.path`` the core loads: ``config`` itself, unless the modality first converts a
        checkpoint of a layout of its own to a diffusers pipeline (Tango's releases)."""
        return config

    @classmethod
    def media_of(cls, config) -> Media:
        """The media settings of ``config``: its ``data`` section's (a modality may add the model's own, such as the
        STFT settings of an audio model)."""
        return cls.media_class.from_section(config.data)

    @classmethod
    def from_config(cls, config, context: BuildContext) -> LatentDiffusionAdapter:
        """Load the model of a config and wrap it (LoRA on the denoiser when configured), from the encode cache when
        there is one for this config (then the VAE and the text encoders are not loaded).

        ``context.half`` is the mixed-precision dtype, if any: the text encoders and a frozen reference copy run in
        it.
        """
        config = cls.loadable_config(config)
        section = config.model
        media = cls.media_of(config)
        caches = open_caches(config, media.settings())
        model = load_model(
            section.path, cls.families, DTYPES[section.dtype], encoders=caches is None, vae_path=section.vae_path
        )
        denoiser = model.denoiser
        if section.gradient_checkpointing:
            denoiser.enable_gradient_checkpointing()
        if section.attn_implementation == "xformers":
            use_xformers(denoiser)
        if section.channels_last:
            for module in (denoiser, model.vae):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        if section.lora is not None:
            add_lora(denoiser, section.lora, model.family.lora_targets)
        else:
            denoiser.requires_grad_(True)
        noising = section.noising
        return cls(
            model,
            reference=context.reference,
            media=media,
            noising=Noising(noising.kind, noising.steps, noising.eta, noising.walk),
            prompt_dropout=section.prompt_dropout,
            sample_latents=section.latents == "sample",
            reference_dtype=context.half,
            text_dtype=context.half or torch.float32,
            vae_dtype=DTYPES[section.vae_dtype],
            vae_path=section.vae_path,
            vae_batch_size=section.vae_batch_size,
            caches=caches,
        )

    @classmethod
    def cache_path(cls, config, source: tuple[str, str]) -> Path:
        """Where the encode cache of ``source`` (path, split) under ``config`` lives."""
        config = cls.loadable_config(config)
        return cache_path(config, source, cls.media_of(config).settings())

    @classmethod
    def build_cache(cls, config, accelerator=None) -> list[Path]:
        """``mmdpo cache``: write the encode cache of every source of ``config`` (complete caches are kept)."""
        from accelerate import Accelerator

        config = cls.loadable_config(config)
        media = cls.media_of(config)
        family = family_of(config.model.path, cls.families)
        return write_caches(
            config, family, media.settings(), partial(media.load_source, config=config),
            partial(collate_media, media, family, seed=config.train.seed, epoch=0),
            accelerator or Accelerator(cpu=not torch.cuda.is_available()),
        )  # fmt: skip

    # -- data --------------------------------------------------------------------------------------

    def data(self, config, accelerator) -> AdapterData:
        """The groups of the encode cache when there is one, else of the media sources, each row indexed in its
        source (its randomness and its cache rows follow the index)."""
        seed = config.train.seed
        if self.caches is not None:
            groups = [cache.group_set() for cache in self.caches]
            collate, eval_collate = CachedBatches(self.caches[0], seed), CachedBatches(self.caches[-1], seed)
        else:
            groups = [self.media.load_source(path, split, config) for path, split in config.data.sources]
            collate = eval_collate = partial(self.collate, seed=seed)
        train, evaluation, skipped = split_groups(
            groups[0], groups[1] if len(groups) > 1 else None, config.data.eval_fraction, seed
        )
        return AdapterData(train, evaluation, skipped, collate, eval_collate)

    def collate(self, rows: Sequence[dict[str, Any]], *, seed: int = 0, epoch: int = 0) -> LatentBatch:
        """Each group's candidates transformed identically (:meth:`Media.collate`), its prompt's token ids and the
        conditions its family reads from the transform."""
        family = self.model.family
        candidates, conditions = collate_media(self.media, family, rows, seed=seed, epoch=epoch)
        return LatentBatch(
            prefs=preferences(rows),
            media=candidates,
            input_ids=family.tokenize(self.model.tokenizers, [row["prompt"] for row in rows]),
            extra=conditions,
            group_seeds=group_seeds(rows, seed, epoch),
        )

    # -- scoring -----------------------------------------------------------------------------------

    def freeze_encoders(self) -> None:
        for module in (self.model.vae, *self.model.sampling_parts.values()):
            freeze(module, self.vae_dtype)
        for encoder in self.model.text_encoders:
            freeze(encoder, self.text_dtype)

    def encoders(self) -> LatentDiffusionModel:
        """The model with its VAE and text encoders, loading them (onto the denoiser's device) if they are not yet."""
        if not self.model.has_encoders:
            self.model.load_encoders(self.vae_path)
            self.freeze_encoders()
            for module in (self.model.vae, *self.model.text_encoders, *self.model.sampling_parts.values()):
                module.to(self.model.denoiser.device)
        return self.model

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """Modules the trainer moves to the device but never optimises."""
        parts = (self.model.vae, *self.model.text_encoders, *self.model.sampling_parts.values(), self.reference_scorer)
        return [m for m in parts if m is not None]

    def empty_prompt(self, device: torch.device) -> dict[str, Tensor]:
        """The encoded empty prompt that dropout substitutes (the official scripts encode "")."""
        if self.empty_conditions is None:
            self.empty_conditions = self.encoders().encode_prompts([""])
        if next(iter(self.empty_conditions.values())).device != device:
            self.empty_conditions = {k: v.to(device) for k, v in self.empty_conditions.items()}
        return self.empty_conditions

    def inputs(self, batch: LatentBatch, generator: Generators = None) -> dict[str, Any]:
        """Latents, per-group conditions and the shared noising of one micro-batch, all without gradients.

        The randomness comes from ``generator`` (one for the batch, or one per group), else from one generator per
        group seeded by ``batch.group_seeds`` (as the trainer runs), else from the global generator. It is drawn in
        one order whatever the source of the batch (media or the encode cache): the latents' posterior samples,
        the prompt dropout, then the timesteps and noise.
        """
        mean, std = batch.latent_mean, batch.latent_std
        if mean is None:
            b, k = batch.media.shape[:2]
            vae = self.model.vae
            moments = encode_moments(
                vae, batch.media.flatten(0, 1), self.vae_batch_size, self.model.family.normalisation(vae)
            )
            mean, std = (m.view(b, k, *m.shape[1:]) for m in moments)
        if generator is None and batch.group_seeds is not None:
            generator = group_generators(batch.group_seeds, mean.device)
        latents = sample_latents(mean, std if self.sample_latents else None, generator)
        conditions = batch.embeddings
        if conditions is None:
            with torch.no_grad():
                conditions = self.model.family.encode(self.model.text_encoders, batch.input_ids)
        if self.prompt_dropout > 0:
            conditions, empty = self.model.family.align(conditions, self.empty_prompt(latents.device))
            conditions = drop_conditions(conditions, empty, self.prompt_dropout, generator)
        conditions = {**conditions, **{name: value.to(latents) for name, value in batch.extra.items()}}
        draw = draw_noise(latents, self.model.scheduler.config.num_train_timesteps, generator, self.noising)
        with torch.no_grad():
            noised = noise_latents(latents, self.model.scheduler, draw, self.noising, self.scorer.denoise, **conditions)
        return {"noised": noised, **conditions}

    def reference(self, batch: LatentBatch, inputs: dict[str, Any]) -> ReferencePass:
        """The reference's ``[B, K]`` estimate on the same noising, or none when reference-free."""
        if self.reference_kind == "none":
            return ReferencePass(None)
        with torch.no_grad():
            if self.reference_kind == "adapter":
                with adapter_disabled(self.model.denoiser):
                    return ReferencePass(LogLik(values=self.scorer(**inputs)))
            return ReferencePass(LogLik(values=self.reference_scorer(**inputs)))

    def policy_loglik(
        self, scorer: nn.Module, batch: LatentBatch, inputs: dict[str, Any], reference: ReferencePass
    ) -> LogLik:
        """The policy's ``[B, K]`` estimate through ``scorer`` (the prepared, possibly wrapped, :attr:`scorer`)."""
        return LogLik(values=scorer(**inputs))

    # -- sampling and saving -----------------------------------------------------------------------

    def pipeline(self, denoiser: nn.Module | None = None):
        """The family's diffusers pipeline over these parts (the policy's denoiser unless another is given), for
        sampling and saving."""
        return self.encoders().pipeline(denoiser)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        *,
        steps: int = 25,
        guidance_scale: float = 5.0,
        reference: bool = False,
    ) -> Tensor:
        """Samples ``[P, S, ...]`` in [0, 1] of the policy, or of the reference (``reference=True``), one per prompt
        and seed, each from its own generator, so a sample does not depend on what else is generated."""
        copy = reference and self.reference_kind == "copy"
        pipe = self.pipeline(self.reference_scorer.denoiser if copy else None)
        pipe.set_progress_bar_config(disable=True)
        disabled = reference and not copy
        if disabled and not getattr(self.model.denoiser, "peft_config", None):
            raise ValueError("There is no reference to sample from: neither a LoRA adapter to switch off nor a copy.")
        device = self.model.denoiser.device
        samples = []
        vae, denoiser = pipe.vae, getattr(pipe, self.model.family.denoiser_name)
        in_own_dtypes = inputs_in_own_dtype(denoiser, getattr(vae, "post_quant_conv", None), vae.decoder)
        with adapter_disabled(self.model.denoiser) if disabled else contextlib.nullcontext(), in_own_dtypes:
            for seed in seeds:
                generators = [torch.Generator(device).manual_seed(seed) for _ in prompts]
                out = self.media.sample(
                    pipe, list(prompts), generators, num_inference_steps=steps, guidance_scale=guidance_scale
                )
                samples.append(out.float().cpu())
        return torch.stack(samples, dim=1)

    def save(self, scorer: DenoisingScorer, directory: str | Path) -> None:
        """A LoRA that the family's ``pipe.load_lora_weights(directory)`` accepts, or the whole pipeline with the
        trained denoiser."""
        denoiser, family = scorer.denoiser, self.model.family
        if getattr(denoiser, "peft_config", None):
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(denoiser))
            family.pipeline_class.save_lora_weights(
                directory, **{f"{family.denoiser_name}_lora_layers": layers}, safe_serialization=True
            )
            return
        self.pipeline(denoiser).save_pretrained(directory)
