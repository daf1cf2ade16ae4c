"""The latent-diffusion core every diffusion modality shares, and the model families over it.

- :mod:`.adapter`: :class:`~.adapter.LatentDiffusionAdapter`, the adapter contract over a family and a kind of
  media (:mod:`.media`);
- :mod:`.family`: what a family supplies (:class:`~.family.Family`); :mod:`.families`: SD1.5, SDXL, Tango (and
  Tango's released layout); :mod:`.tango_pipeline`: Tango's diffusers pipeline;
- :mod:`.model`: loading a family's parts, LoRA, attention backends;
- :mod:`.randomness`, :mod:`.latents`, :mod:`.noising`, :mod:`.inversion`, :mod:`.estimator`: per-group randomness,
  latents, x_t and the target, the log-likelihood estimate;
- :mod:`.batch`, :mod:`.data`, :mod:`.cache`: batches, the groups of a run, the encode cache;
- :mod:`.sections`: the config fields of latent-diffusion models.
"""
