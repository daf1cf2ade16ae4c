"""Text-to-image adapter: SD1.5- and SDXL-style latent diffusion models from diffusers.

    model = load_text_to_image("stabilityai/stable-diffusion-xl-base-1.0")   # or a local dir, tiny:sd15, tiny:sdxl
    add_lora(model.unet, LoraSection(r=8, alpha=8))
    adapter = TextToImageAdapter(model, reference="adapter", resolution=1024)
    inputs = adapter.inputs(batch, generator)   # latents, conditions, one (t, noise) per group, without gradients
    policy, reference = adapter.policy_loglik(adapter.scorer, batch, inputs), adapter.reference_loglik(batch, inputs)

Per micro-batch the adapter encodes images (VAE) and prompts (CLIP; SDXL: both encoders' penultimate hidden
states concatenated, the second's pooled output, and ``time_ids`` from each group's original size, crop and
target size) unless the batch comes from the encode cache, drops prompts per group, draws one timestep and
noise per group, noises (or inverts) the latents, and scores policy and reference with
:func:`~mmdpo.adapters.diffusion.denoising_loglik`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from torch import Tensor, nn

from mmdpo.adapters.diffusion import (
    Generators,
    Noised,
    Noising,
    denoising_loglik,
    draw_noise,
    draw_per_group,
    drop_conditions,
    generator_device,
    noise_latents,
)
from mmdpo.adapters.reference import adapter_disabled, frozen_copy
from mmdpo.objectives import LogLik, Preferences
from mmdpo.precision import DTYPES

UNET_LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
"""The attention projections the diffusers LoRA scripts adapt; ``pipe.load_lora_weights`` expects these."""


@dataclass
class TextToImageModel:
    """The diffusers/transformers parts of an SD-style pipeline that training touches.

    ``vae``, ``text_encoders`` and ``tokenizers`` are None / empty when training from the encode cache; the
    pipeline's ``path`` loads them when saving a whole pipeline or sampling needs them
    (:meth:`load_encoders`).
    """

    path: str
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    vae: AutoencoderKL | None = None
    text_encoders: list[nn.Module] = field(default_factory=list)
    tokenizers: list[Any] = field(default_factory=list)
    sampling_scheduler: SchedulerMixin | None = None
    """The pipeline's own scheduler (what generation and saved pipelines use); DDIM from ``scheduler`` if None."""

    @property
    def sdxl(self) -> bool:
        """SDXL-style micro-conditioning (pooled text embeddings and ``time_ids``)."""
        return self.unet.config.addition_embed_type == "text_time"

    @property
    def has_encoders(self) -> bool:
        return self.vae is not None and bool(self.text_encoders)

    def load_encoders(self, vae_path: str | None = None) -> None:
        """Load the VAE (from ``vae_path`` when given), text encoders and tokenizers of :attr:`path` if missing."""
        if not self.has_encoders:
            self.vae, self.text_encoders, self.tokenizers = load_encoders(self.path)
        if vae_path is not None:
            self.vae = _load(AutoencoderKL, vae_path, None, "model.vae_path")


def load_text_to_image(path: str, dtype: torch.dtype = torch.float32, *, encoders: bool = True) -> TextToImageModel:
    """The UNet, VAE, text encoder(s), tokenizer(s) and a DDPM training scheduler of a pipeline.

    ``path`` is a local diffusers pipeline directory, a hub id (downloaded only when the network allows it), or
    ``tiny:sd15`` / ``tiny:sdxl`` (random models built in memory, the same weights every time). Only these parts
    load (no safety checker). ``encoders=False`` leaves out the VAE and the text encoders (training from the
    encode cache).
    """
    from mmdpo.adapters.tiny import tiny_text_to_image

    if path.startswith("tiny:"):
        parts = tiny_text_to_image(path.removeprefix("tiny:"))
        model = TextToImageModel(path, cast(parts["unet"], dtype), parts["scheduler"])
        if encoders:
            model.vae, model.text_encoders, model.tokenizers = parts["vae"], parts["text_encoders"], parts["tokenizers"]
        return model
    _model_index(path)  # a clear error for a path that is no pipeline
    model = TextToImageModel(
        path,
        _load(UNet2DConditionModel, path, "unet", "model.path", dtype=dtype),
        _load(DDPMScheduler, path, "scheduler", "model.path"),
    )
    sampling_config = DDPMScheduler.load_config(path, subfolder="scheduler")
    model.sampling_scheduler = getattr(diffusers, sampling_config["_class_name"]).from_config(sampling_config)
    if encoders:
        model.vae, model.text_encoders, model.tokenizers = load_encoders(path)
    return model


def load_encoders(path: str) -> tuple[AutoencoderKL, list[nn.Module], list[Any]]:
    """The VAE, the text encoder(s) and tokenizer(s) of a pipeline (SDXL: both, the second with projection)."""
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    from mmdpo.adapters.tiny import tiny_text_to_image

    if path.startswith("tiny:"):
        parts = tiny_text_to_image(path.removeprefix("tiny:"))
        return parts["vae"], parts["text_encoders"], parts["tokenizers"]
    vae = _load(AutoencoderKL, path, "vae", "model.path")
    text_encoders = [_load(CLIPTextModel, path, "text_encoder", "model.path")]
    tokenizers = [_load(AutoTokenizer, path, "tokenizer", "model.path")]
    if _model_index(path).get("text_encoder_2", [None])[0] is not None:
        text_encoders.append(_load(CLIPTextModelWithProjection, path, "text_encoder_2", "model.path"))
        tokenizers.append(_load(AutoTokenizer, path, "tokenizer_2", "model.path"))
    return vae, text_encoders, tokenizers


def cast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` in ``dtype``, cast only when it differs (diffusers models warn on every cast)."""
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)


def freeze(module: nn.Module, dtype: torch.dtype, device: torch.device | None = None) -> nn.Module:
    """A frozen part (VAE, text encoder): eval mode, no gradients, in ``dtype``, on ``device`` when given."""
    cast(module.requires_grad_(False).eval(), dtype)
    return module if device is None else module.to(device)


def _load(cls, path: str, subfolder: str | None, field_name: str, **kwargs):
    """``cls.from_pretrained`` with the failure stated in terms of the config field that named the path."""
    try:
        return cls.from_pretrained(path, **({"subfolder": subfolder} if subfolder else {}), **kwargs)
    except (OSError, ValueError) as err:  # ValueError: not even a valid hub id
        where = f"{subfolder}/ of " if subfolder else ""
        raise FileNotFoundError(
            f"{field_name}={path!r}: cannot load {where}it from a local directory or a reachable hub id ({err})."
        ) from err


def _model_index(path: str) -> dict[str, Any]:
    local = Path(path) / "model_index.json"
    if local.is_file():
        return json.loads(local.read_text())
    from huggingface_hub import hf_hub_download

    try:
        return json.loads(Path(hf_hub_download(path, "model_index.json")).read_text())
    except (OSError, ValueError) as err:  # ValueError: not even a valid hub id
        raise FileNotFoundError(
            f"model.path={path!r} is neither a local diffusers pipeline directory nor a reachable hub id ({err})."
        ) from err


# --- encoding --------------------------------------------------------------------------------------


def tokenize_prompts(tokenizers: Sequence[Any], prompts: Sequence[str]) -> list[Tensor]:
    """Padded input ids ``[B, L]`` per tokenizer (CLIP pads to its ``model_max_length``, 77)."""
    return [
        tok(
            list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        for tok in tokenizers
    ]


@torch.no_grad()
def encode_prompts(text_encoders: Sequence[nn.Module], input_ids: Sequence[Tensor]) -> dict[str, Tensor]:
    """``encoder_hidden_states`` (and SDXL's pooled ``text_embeds``), as the diffusers pipelines compute them.

    One encoder (SD1.5): its last hidden state. Two (SDXL): both penultimate hidden states concatenated, and
    the second encoder's projected pooled output.
    """
    if len(text_encoders) == 1:
        encoder = text_encoders[0]
        return {"encoder_hidden_states": encoder(input_ids[0].to(encoder.device))[0]}
    states, pooled = [], None
    for encoder, ids in zip(text_encoders, input_ids):
        out = encoder(ids.to(encoder.device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled = out[0]
    return {"encoder_hidden_states": torch.cat(states, dim=-1), "text_embeds": pooled}


@torch.no_grad()
def encode_moments(vae: AutoencoderKL, pixels: Tensor, chunk: int = 8) -> tuple[Tensor, Tensor]:
    """Mean and std of the VAE posterior of ``pixels [N, 3, H, W]`` in [-1, 1], shifted and scaled as latents.

    Encodes ``chunk`` images at a time in the VAE's own dtype, whatever autocast is active (SDXL's VAE overflows in
    fp16, so a float32 VAE must stay float32); float32 out. A latent is ``mean + std * z`` (:func:`sample_latents`).
    """
    means, stds = [], []
    device = next(vae.parameters()).device
    with torch.autocast(device.type, enabled=False):
        for part in pixels.split(chunk):
            dist = vae.encode(part.to(device, next(vae.parameters()).dtype)).latent_dist
            means.append(dist.mean.float())
            stds.append(dist.std.float())
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    scale = vae.config.scaling_factor
    return (torch.cat(means) - shift) * scale, torch.cat(stds) * scale


def sample_latents(mean: Tensor, std: Tensor | None, generator: Generators = None) -> Tensor:
    """A posterior sample ``mean + std * z`` of ``[B, K, ...]`` moments (z from ``generator``, or group b's from the
    b-th of B generators), or the mean when ``std`` is None."""
    if std is None:
        return mean
    z = draw_per_group(torch.randn, mean.shape, generator, generator_device(generator, mean.device))
    return mean + std * z.to(mean)


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], resolution: int) -> list[float]:
    """SDXL micro-conditioning: original (h, w), crop (top, left), target (h, w)."""
    return [*map(float, original_size), *map(float, crop_top_left), float(resolution), float(resolution)]


# --- batches ---------------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """B groups of K images, either as pixels plus token ids (encoded on the device) or as cached encodings.

    Args:
        prefs: the groups' labels.
        pixels: ``[B, K, 3, H, W]`` in [-1, 1], or None with ``latent_mean``.
        input_ids: per tokenizer ``[B, L]``, or None with ``embeddings``.
        latent_mean, latent_std: ``[B, K, C, h, w]`` cached VAE posterior moments (:func:`encode_moments`); the
            std is None when the cache holds means only.
        embeddings: cached ``encoder_hidden_states [B, L, D]`` (and ``text_embeds [B, P]``).
        time_ids: ``[B, 6]`` SDXL micro-conditioning (read by SDXL-style models only).
        group_seeds: ``[B]`` seeds of each group's randomness (posterior sample, prompt dropout, timestep, noise),
            from (seed, epoch, row) by :func:`group_seeds`; they stay on the host.
    """

    prefs: Preferences
    pixels: Tensor | None = None
    input_ids: list[Tensor] | None = None
    latent_mean: Tensor | None = None
    latent_std: Tensor | None = None
    embeddings: dict[str, Tensor] | None = None
    time_ids: Tensor | None = None
    group_seeds: Tensor | None = None

    def to(self, device: torch.device | str) -> ImageBatch:
        moved = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.to(device, non_blocking=True)
            elif isinstance(value, list):
                value = [v.to(device, non_blocking=True) for v in value]
            elif isinstance(value, dict):
                value = {k: v.to(device, non_blocking=True) for k, v in value.items()}
            moved[f.name] = value
        moved["prefs"], moved["group_seeds"] = self.prefs, self.group_seeds  # labels and seeds stay on the host
        return ImageBatch(**moved)


def preferences(rows: Sequence[dict[str, Any]]) -> Preferences:
    """The label columns of a list of group rows as a :class:`Preferences`."""
    labels = {}
    for name, dtype in (("ranks", torch.long), ("scores", torch.float32), ("desirable", torch.bool)):
        if rows[0].get(name) is not None:
            labels[name] = torch.tensor([row[name] for row in rows], dtype=dtype)
    return Preferences(**labels)


def group_seeds(rows: Sequence[dict[str, Any]], seed: int, epoch: int) -> Tensor:
    """``[B]`` seeds of the groups' randomness, a hash of (seed, epoch, the row's ``row_index``): a group draws the
    same noise whatever batch, process or resumed run it lands in, and new noise every epoch."""
    digests = [hashlib.blake2b(f"{seed}/{epoch}/{row['row_index']}".encode(), digest_size=8).digest() for row in rows]
    return torch.tensor([int.from_bytes(digest, "little") >> 1 for digest in digests], dtype=torch.long)


def collate_images(
    rows: Sequence[dict[str, Any]], transform, tokenizers: Sequence[Any], resolution: int, *, seed: int, epoch: int
) -> ImageBatch:
    """Decode each group's images and transform them identically, seeded by (seed, epoch, the row's ``row_index``).

    ``time_ids`` (SDXL micro-conditioning) come with every batch; only SDXL-style models read them.
    """
    from mmdpo.data.images import decode_image

    pixels, ids = [], []
    for row in rows:
        group = transform(
            [decode_image(image) for image in row["candidates"]], random.Random(f"{seed}/{epoch}/{row['row_index']}")
        )
        pixels.append(group.pixels)
        ids.append(time_ids(group.original_size, group.crop_top_left, resolution))
    return ImageBatch(
        prefs=preferences(rows),
        pixels=torch.stack(pixels),
        input_ids=tokenize_prompts(tokenizers, [row["prompt"] for row in rows]),
        time_ids=torch.tensor(ids),
        group_seeds=group_seeds(rows, seed, epoch),
    )


# --- scoring ---------------------------------------------------------------------------------------


class UNetDenoiser(nn.Module):
    """The UNet as a denoiser of ``(x_t, t, conditions)``; its forward returns the ``[B, K]`` log-likelihoods.

    Wrapping the UNet in one module lets accelerate prepare it (DDP, autocast) like any model.
    """

    def __init__(self, unet: UNet2DConditionModel):
        super().__init__()
        self.unet = unet
        self.dtype = next(unet.parameters()).dtype  # diffusers' unet.dtype walks every module, at every call

    def denoise(
        self,
        x_t: Tensor,
        t: Tensor,
        encoder_hidden_states: Tensor,
        text_embeds: Tensor | None = None,
        time_ids: Tensor | None = None,
    ) -> Tensor:
        dtype = self.dtype
        added = None if text_embeds is None else {"text_embeds": text_embeds.to(dtype), "time_ids": time_ids}
        return self.unet(
            x_t.to(dtype), t, encoder_hidden_states=encoder_hidden_states.to(dtype), added_cond_kwargs=added
        ).sample

    def forward(self, noised: Noised, **conditions: Tensor) -> Tensor:
        return denoising_loglik(self.denoise, noised, **conditions).values


@dataclass
class TextToImageAdapter:
    """Everything the trainer needs for an SD-style model: collate, encode, noise, score, save.

    Args:
        model: the loaded parts; the UNet is the policy (with a LoRA adapter when ``lora`` is set).
        reference: ``adapter`` (LoRA disabled), ``copy`` (frozen copy of the UNet) or ``none``.
        resolution: training resolution in pixels (square).
        noising: how x_t and the target are drawn (forward noising, DDIM or ReNoise inversion).
        prompt_dropout: probability that a group's prompt is replaced by the empty prompt.
        sample_latents: train on a posterior sample of each image's latent (official Diffusion-DPO) or its mean.
        reference_dtype: dtype of the frozen copy (half precision under mixed precision).
        text_dtype: dtype of the text encoders.
        vae_dtype: dtype of the VAE; SDXL's VAE overflows in fp16, so keep float32 unless it is an fp16-safe VAE.
        vae_path: a VAE to use instead of the pipeline's (e.g. an fp16-safe one).
        vae_batch_size: images per VAE encode (the transient memory of a 1024 px SDXL encode is ~2.5 GB an image).
        transform: the group transform of the image path (:class:`~mmdpo.data.images.GroupTransform`).
        empty_conditions: the encoded empty prompt, when the batches come from the encode cache and the text
            encoders are not loaded.
    """

    model: TextToImageModel
    reference: str = "copy"
    resolution: int = 512
    noising: Noising = field(default_factory=Noising)
    prompt_dropout: float = 0.0
    sample_latents: bool = True
    reference_dtype: torch.dtype | None = None
    text_dtype: torch.dtype = torch.float32
    vae_dtype: torch.dtype = torch.float32
    vae_path: str | None = None
    vae_batch_size: int = 8
    transform: Any = None
    empty_conditions: dict[str, Tensor] | None = None

    def __post_init__(self) -> None:
        if self.reference not in ("adapter", "copy", "none"):
            raise ValueError(
                f"model.reference={self.reference} is not available for text-to-image models; "
                "use adapter (with model.lora), copy or none."
            )
        if self.model.has_encoders:
            self._prepare_encoders()
        self.scorer = UNetDenoiser(self.model.unet)
        self.reference_scorer = None
        if self.reference == "copy":
            self.reference_scorer = UNetDenoiser(frozen_copy(self.model.unet, self.reference_dtype))

    def _prepare_encoders(self) -> None:
        freeze(self.model.vae, self.vae_dtype)
        for encoder in self.model.text_encoders:
            freeze(encoder, self.text_dtype)

    def encoders(self) -> TextToImageModel:
        """The model with its VAE and text encoders, loading them (onto the UNet's device) if they are not yet."""
        if not self.model.has_encoders:
            self.model.load_encoders(self.vae_path)
            self._prepare_encoders()
            for module in (self.model.vae, *self.model.text_encoders):
                module.to(self.model.unet.device)
        return self.model

    @property
    def frozen_modules(self) -> list[nn.Module]:
        """Modules the trainer moves to the device but never optimises."""
        return [m for m in (self.model.vae, *self.model.text_encoders, self.reference_scorer) if m is not None]

    # -- data --------------------------------------------------------------------------------------

    def collate(self, rows: Sequence[dict[str, Any]], *, seed: int = 0, epoch: int = 0) -> ImageBatch:
        """Decode and transform each group's images identically (:func:`collate_images`)."""
        return collate_images(rows, self.transform, self.model.tokenizers, self.resolution, seed=seed, epoch=epoch)

    # -- scoring -----------------------------------------------------------------------------------

    def empty_prompt(self, device: torch.device) -> dict[str, Tensor]:
        """The encoded empty prompt that dropout substitutes (the official scripts encode "")."""
        if self.empty_conditions is None:
            model = self.encoders()
            self.empty_conditions = encode_prompts(model.text_encoders, tokenize_prompts(model.tokenizers, [""]))
        if self.empty_conditions["encoder_hidden_states"].device != device:
            self.empty_conditions = {k: v.to(device) for k, v in self.empty_conditions.items()}
        return self.empty_conditions

    def inputs(self, batch: ImageBatch, generator: Generators = None) -> dict[str, Any]:
        """Latents, per-group conditions and the shared noising of one micro-batch, all without gradients.

        The randomness comes from ``generator`` (one for the batch, or one per group), else from one generator per
        group seeded by ``batch.group_seeds`` (as the trainer runs), else from the global generator. It is drawn in
        one order whatever the source of the batch (images or the encode cache): the latents' posterior samples,
        the prompt dropout, then the timesteps and noise.
        """
        mean, std = batch.latent_mean, batch.latent_std
        if mean is None:
            b, k = batch.pixels.shape[:2]
            moments = encode_moments(self.model.vae, batch.pixels.flatten(0, 1), self.vae_batch_size)
            mean, std = (m.view(b, k, *m.shape[1:]) for m in moments)
        if generator is None and batch.group_seeds is not None:
            generator = [torch.Generator(mean.device).manual_seed(seed) for seed in batch.group_seeds.tolist()]
        latents = sample_latents(mean, std if self.sample_latents else None, generator)
        conditions = batch.embeddings or encode_prompts(self.model.text_encoders, batch.input_ids)
        if self.prompt_dropout > 0:
            conditions = drop_conditions(conditions, self.empty_prompt(latents.device), self.prompt_dropout, generator)
        if self.model.sdxl:
            conditions = {**conditions, "time_ids": batch.time_ids.to(latents)}
        draw = draw_noise(latents, self.model.scheduler.config.num_train_timesteps, generator, self.noising)
        with torch.no_grad():
            noised = noise_latents(latents, self.model.scheduler, draw, self.noising, self.scorer.denoise, **conditions)
        return {"noised": noised, **conditions}

    def policy_loglik(self, scorer: nn.Module, batch: ImageBatch, inputs: dict[str, Any]) -> LogLik:
        """The policy's ``[B, K]`` estimate through ``scorer`` (the prepared, possibly wrapped, :attr:`scorer`)."""
        return LogLik(values=scorer(**inputs))

    def reference_loglik(self, batch: ImageBatch, inputs: dict[str, Any]) -> LogLik | None:
        """The reference's ``[B, K]`` estimate on the same noising, or None when reference-free."""
        if self.reference == "none":
            return None
        with torch.no_grad():
            if self.reference == "adapter":
                with adapter_disabled(self.model.unet):
                    return LogLik(values=self.scorer(**inputs))
            return LogLik(values=self.reference_scorer(**inputs))

    # -- building and saving -----------------------------------------------------------------------

    @classmethod
    def from_config(
        cls,
        config,
        reference: str,
        half: torch.dtype | None = None,
        empty_conditions: dict[str, Tensor] | None = None,
    ) -> TextToImageAdapter:
        """Load the model of a :class:`~mmdpo.config.Config` and wrap it (LoRA on the UNet when configured).

        ``half`` is the mixed-precision dtype, if any: the text encoders and a frozen reference copy run in it.
        With ``empty_conditions`` (training from the encode cache) the VAE and text encoders are not loaded.
        """
        from mmdpo.data.images import GroupTransform

        section, data = config.model, config.data
        model = load_text_to_image(section.path, DTYPES[section.dtype], encoders=empty_conditions is None)
        if model.has_encoders and section.vae_path is not None:
            model.load_encoders(section.vae_path)
        if section.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        if section.attn_implementation == "xformers":
            use_xformers(model.unet)
        if section.channels_last:
            for module in (model.unet, model.vae):
                if module is not None:
                    module.to(memory_format=torch.channels_last)
        if section.lora is not None:
            add_lora(model.unet, section.lora)
        else:
            model.unet.requires_grad_(True)
        return cls(
            model,
            reference=reference,
            resolution=data.resolution,
            noising=Noising(section.noising.kind, section.noising.steps, section.noising.eta),
            prompt_dropout=section.prompt_dropout,
            sample_latents=section.latents == "sample",
            reference_dtype=half,
            text_dtype=half or torch.float32,
            vae_dtype=DTYPES[section.vae_dtype],
            vae_path=section.vae_path,
            vae_batch_size=section.vae_batch_size,
            transform=GroupTransform(data.resolution, crop=data.crop, flip=data.flip),
            empty_conditions=empty_conditions,
        )

    @property
    def pipeline_class(self) -> type:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        return StableDiffusionXLPipeline if self.model.sdxl else StableDiffusionPipeline

    def pipeline(self, unet: UNet2DConditionModel | None = None):
        """A diffusers pipeline over these parts (the policy UNet unless another is given), for sampling and saving."""
        m = self.encoders()
        scheduler = m.sampling_scheduler or DDIMScheduler.from_config(m.scheduler.config)
        parts = {"vae": m.vae, "unet": unet or m.unet, "scheduler": scheduler}
        if m.sdxl:
            return self.pipeline_class(
                text_encoder=m.text_encoders[0], text_encoder_2=m.text_encoders[1],
                tokenizer=m.tokenizers[0], tokenizer_2=m.tokenizers[1], **parts,
            )  # fmt: skip
        return self.pipeline_class(
            text_encoder=m.text_encoders[0], tokenizer=m.tokenizers[0], safety_checker=None,
            feature_extractor=None, requires_safety_checker=False, **parts,
        )  # fmt: skip

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
        """Images ``[P, S, 3, R, R]`` in [0, 1] of the policy, or of the reference (``reference=True``), one per
        prompt and seed, each from its own generator, so an image does not depend on what else is generated."""
        pipe = self.pipeline(self.reference_scorer.unet if reference and self.reference == "copy" else None)
        pipe.set_progress_bar_config(disable=True)
        if reference and self.reference != "copy" and not getattr(self.model.unet, "peft_config", None):
            raise ValueError("There is no reference to sample from: neither a LoRA adapter to switch off nor a copy.")
        disabled = reference and self.reference != "copy"
        device = self.model.unet.device
        images = []
        with adapter_disabled(self.model.unet) if disabled else contextlib.nullcontext():
            for seed in seeds:
                out = pipe(
                    list(prompts), generator=[torch.Generator(device).manual_seed(seed) for _ in prompts],
                    num_inference_steps=steps, guidance_scale=guidance_scale, height=self.resolution,
                    width=self.resolution, output_type="pt",
                )  # fmt: skip
                images.append(out.images.float().cpu())
        return torch.stack(images, dim=1)

    def save(self, scorer: UNetDenoiser, directory: str | Path) -> None:
        """A LoRA that ``pipe.load_lora_weights(directory)`` accepts, or the whole pipeline with the trained UNet."""
        unet = scorer.unet
        if getattr(unet, "peft_config", None):
            from diffusers.utils import convert_state_dict_to_diffusers
            from peft.utils import get_peft_model_state_dict

            layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
            self.pipeline_class.save_lora_weights(directory, unet_lora_layers=layers, safe_serialization=True)
            return
        self.pipeline(unet).save_pretrained(directory)


def use_xformers(unet: UNet2DConditionModel) -> None:
    """xformers' memory-efficient attention in every UNet attention layer (PyTorch SDPA is the default)."""
    try:
        unet.enable_xformers_memory_efficient_attention()
    except (ModuleNotFoundError, ValueError) as err:
        raise ValueError(
            f"model.attn_implementation=xformers needs the xformers extra (pip install 'mmdpo[xformers]') and a CUDA "
            f"device ({err}); or keep the default sdpa."
        ) from err


def add_lora(unet: UNet2DConditionModel, section) -> None:
    """Inject a peft LoRA adapter into the UNet's attention projections, as the diffusers LoRA scripts do.

    The base weights freeze; the LoRA weights train in float32 whatever the UNet's dtype. Gaussian init keeps
    the output unchanged at the start (B = 0), so the disabled adapter is an exact reference.
    """
    from diffusers.training_utils import cast_training_params
    from peft import LoraConfig

    unet.requires_grad_(False)
    unet.add_adapter(
        LoraConfig(
            r=section.r,
            lora_alpha=section.alpha,
            lora_dropout=section.dropout,
            init_lora_weights="gaussian",
            target_modules=section.target_modules or UNET_LORA_TARGETS,
        )
    )
    cast_training_params(unet, dtype=torch.float32)
