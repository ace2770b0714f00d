"""Bernoulli VAE on digits."""

from ae_jax.configs import default


def get_config():
  c = default.get_config()
  c.model.family = "vae"
  c.model.recon_loss = "bce"
  c.model.latent_dim = 8
  c.train.num_steps = 1000
  return c
