"""Text-to-image generators for synthetic preference data: diffusers pipelines that turn (prompt, seed) pairs into
images, each image drawn from its own seeded noise so that batching never changes it.

    generator = load_generator(GeneratorSection(path="tiny:sd15", steps=4), device="cpu")
    images = generator(["a red cat", "a red cat"], [candidate_seed(0, "a red cat", generator.name, i) for i in (0, 1)])
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import diffusers
import PIL.Image
import torch

from mmdpo.pipelines.config import GeneratorSection
from mmdpo.precision import DTYPES


def candidate_seed(base_seed: int, prompt: str, generator: str, index: int) -> int:
    """The noise seed of one candidate, a 63-bit hash of (base seed, generator name, seed index, prompt text).

    It depends on nothing else (not the batch, the process count, a restart or the prompt's place in the file), so
    ``pipe(prompt, generator=torch.Generator().manual_seed(seed))`` with the generator's settings regenerates the
    candidate (up to the float rounding of batched kernels).
    """
    digest = hashlib.sha256(f"{base_seed}\0{generator}\0{index}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def load_pipeline(section: GeneratorSection, device: torch.device) -> Any:
    """The diffusers pipeline of a generator, on ``device`` in its dtype, with its scheduler and no progress bar.

    Hub ids and directories load through ``AutoPipelineForText2Image`` (SD1.5, SDXL, SD3, PixArt, ...);
    ``tiny:sd15`` and ``tiny:sdxl`` are the random tiny models of :mod:`mmdpo.adapters.latent_diffusion.families`.
    """
    from mmdpo.adapters.text_to_image import load_text_to_image

    dtype = DTYPES[section.dtype]
    if section.path.startswith("tiny:"):
        pipe = load_text_to_image(section.path).pipeline().to(dtype=dtype)
    else:
        try:
            pipe = diffusers.AutoPipelineForText2Image.from_pretrained(section.path, dtype=dtype)
        except (OSError, ValueError) as err:
            raise FileNotFoundError(
                f"Generator {section.name!r}: cannot load path={section.path!r} as a diffusers text-to-image "
                f"pipeline from a local directory or a reachable hub id ({err})."
            ) from err
    if section.scheduler is not None:
        pipe.scheduler = getattr(diffusers, section.scheduler).from_config(pipe.scheduler.config)
    if section.cpu_offload:
        if device.type != "cuda":
            raise ValueError(f"Generator {section.name!r}: cpu_offload needs a CUDA device, not {device}.")
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@dataclass
class Generator:
    """A loaded generator: ``generator(prompts, seeds)`` gives one RGB PIL image per (prompt, seed)."""

    section: GeneratorSection
    pipeline: Any

    @property
    def name(self) -> str:
        return self.section.name

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[PIL.Image.Image]:
        size = self.section.resolution
        images = self.pipeline(
            prompt=prompts,
            num_inference_steps=self.section.steps,
            guidance_scale=self.section.guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],  # CPU noise: the same on any device
            **({} if size is None else {"height": size, "width": size}),
        ).images
        return [image if image.mode == "RGB" else image.convert("RGB") for image in images]


def load_generator(section: GeneratorSection, device: torch.device | str) -> Generator:
    return Generator(section, load_pipeline(section, torch.device(device)))
