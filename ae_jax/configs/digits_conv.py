"""Convolutional autoencoder on digits (8x8x1)."""

from ae_jax.configs import default


def get_config():
  c = default.get_config()
  c.model.network = "conv2d"
  c.model.channels = (16, 32)
  c.model.latent_dim = 16
  return c
