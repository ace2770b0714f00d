"""Denoising autoencoder on digits with Gaussian noise."""

from ae_jax.configs import default


def get_config():
  c = default.get_config()
  c.model.family = "denoising"
  c.objective.noise = "gaussian"
  c.objective.noise_level = 0.3
  return c
