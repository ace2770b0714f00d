"""Top-k sparse autoencoder on digits with a wide latent."""

from ae_jax.configs import default


def get_config():
  c = default.get_config()
  c.model.family = "sparse"
  c.model.sparsity = "topk"
  c.model.latent_dim = 64
  c.model.k = 8
  return c
