"""Model families over the latent-diffusion core, one module each
(:class:`~mmdpo.adapters.latent_diffusion.family.Family`)."""
