"""The ``model`` and ``data`` config fields every latent-diffusion modality reads, beside the common ones."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mmdpo.config import FRACTION, DataSection, ModelSection, bounded


@dataclass
class NoisingSection:
    """How x_t and the target are drawn (see :mod:`mmdpo.adapters.latent_diffusion.noising`).

    ``forward`` (Diffusion-DPO), ``ddim_inversion`` (InPO: steps 10, eta 0.1) or ``renoise_inversion``
    (SmPO: steps 10 for SDXL, 5 for SD1.5). ``walk``, for the inversions: ``landing`` (the default) walks a grid
    of ``steps`` levels and lands on each group's t, so x_t has the noise level the target eps* assumes; ``official``
    replays the official InPO/SmPO loop under the diffusers it pins (0.20): the model told the level each step
    starts from (-99, 1, 101, ...), x_t on the first grid level at or above t (up to ``T // steps - 1`` levels
    above it; the top level for t above that) and InPO's step noise drawn per image."""

    kind: Literal["forward", "ddim_inversion", "renoise_inversion"] = "forward"
    steps: int = bounded(10, 1)
    eta: float = bounded(0.0, 0)
    walk: Literal["landing", "official"] = "landing"


@dataclass
class LatentModelSection(ModelSection):
    """The ``model`` section of latent-diffusion models.

    ``attn_implementation``: ``sdpa`` (PyTorch's scaled-dot-product attention, the default) or ``xformers`` (the
    optional extra). ``prompt_dropout``: probability that a group's prompt is replaced by the empty one.
    ``latents``: train on a posterior ``sample`` of each candidate's latent (official Diffusion-DPO) or its
    ``mean``. ``vae_path``: a VAE to use instead of the pipeline's (e.g. an fp16-safe one); ``vae_dtype`` its dtype;
    ``vae_batch_size``: candidates per VAE encode; ``channels_last``: the denoiser and VAE in channels-last memory
    format."""

    noising: NoisingSection = field(default_factory=NoisingSection)
    prompt_dropout: float = bounded(0.0, **FRACTION)
    latents: Literal["sample", "mean"] = "sample"
    vae_path: str | None = None
    vae_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    vae_batch_size: int = bounded(8, 1)
    channels_last: bool = False


@dataclass
class LatentDataSection(DataSection):
    """The ``data`` section of latent-diffusion models.

    ``encode_cache``: ``auto`` trains from the cache that ``mmdpo cache`` wrote for this config when there is one
    (and encodes on the fly otherwise), ``require`` fails without it, ``off`` never reads it; ``cache_dtype`` is
    what the cache stores."""

    encode_cache: Literal["auto", "require", "off"] = "auto"
    cache_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
