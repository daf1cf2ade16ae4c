"""The diffusion log-likelihood estimate every diffusion objective reads.

For candidate latents x0 of a group the estimate is the ELBO surrogate

    loglik = -0.5 * mean over the non-batch dims of (f(x_t, t, c) - y)^2,

with (x_t, y) drawn by :mod:`~mmdpo.adapters.latent_diffusion.noising`, one timestep and one noise draw per group.
With this convention DPO's beta = 5000 reproduces both the official Diffusion-DPO setting (beta 5000 with the 0.5,
arXiv 2311.12908) and the diffusers SD1.5 script's default (beta 2500 without the 0.5).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor, nn

from mmdpo.adapters.latent_diffusion.noising import Denoiser, Noised
from mmdpo.objectives import LogLik

if TYPE_CHECKING:
    from mmdpo.adapters.latent_diffusion.family import Family


def denoising_loglik(denoiser: Denoiser, noised: Noised, **conditions: Tensor) -> LogLik:
    """``LogLik [B, K]``: -0.5 * the per-candidate mean squared error of ``denoiser`` on ``noised``.

    ``conditions`` are per group (``[B, ...]``, e.g. ``encoder_hidden_states``) and are repeated for
    every candidate; the denoiser runs once on all ``B * K`` noised latents.
    """
    k = noised.x_t.shape[0] // noised.groups
    repeated = {name: value.repeat_interleave(k, dim=0) for name, value in conditions.items()}
    prediction = denoiser(noised.x_t, noised.timesteps, **repeated)
    error = (prediction.float() - noised.target.float()).square().mean(dim=tuple(range(1, prediction.dim())))
    return LogLik(values=-0.5 * error.view(noised.groups, k))


class DenoisingScorer(nn.Module):
    """A denoiser (UNet, transformer) as its family calls it; its forward returns the ``[B, K]`` estimates.

    Wrapping the denoiser in one module lets accelerate prepare it (DDP, autocast) like any model.
    """

    def __init__(self, denoiser: nn.Module, family: Family):
        super().__init__()
        self.denoiser = denoiser
        self.family = family
        self.dtype = next(denoiser.parameters()).dtype  # diffusers' .dtype walks every module, at every call

    def denoise(self, x_t: Tensor, t: Tensor, **conditions: Tensor) -> Tensor:
        """The prediction at ``(x_t, t)``, with ``x_t`` in the denoiser's dtype."""
        return self.family.denoise(self.denoiser, x_t.to(self.dtype), t, **conditions)

    def forward(self, noised: Noised, **conditions: Tensor) -> Tensor:
        return denoising_loglik(self.denoise, noised, **conditions).values
