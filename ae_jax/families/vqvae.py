"""`vqvae`: a vector-quantised autoencoder (van den Oord et al.).

The code is `latent_dim // code_dim` vectors, each replaced by its nearest of
`num_codes` codebook entries with a straight-through gradient; the loss adds the
codebook term and `objective.commitment` times the commitment term. Reported: codebook
perplexity over the global batch.
"""

from typing import Any

import jax
import jax.numpy as jnp
import flax.linen as nn

from ae_jax.families.base import (FAMILIES, Family, Terms, apply, check_recon_loss,
                                  common_kwargs, networks, recon_terms, require)
from ae_jax.families.common import Autoencoder

FIELDS = {
    "model.num_codes": 64,          # codebook size
    "model.code_dim": 4,            # code vector size (latent_dim must be a multiple)
    "objective.commitment": 0.25,
}


class VQVAE(Autoencoder):
  """Vector-quantised autoencoder: the code is `latent_dim // code_dim` vectors, each
  replaced by its nearest of `num_codes` codebook entries (straight-through gradient).
  """
  num_codes: int = 64
  code_dim: int = 8

  def setup(self):
    self.to_latent = nn.Dense(self.latent_dim, name="to_latent")
    self.codebook = self.param(
        "codebook", nn.initializers.variance_scaling(1.0, "fan_in", "uniform"),
        (self.num_codes, self.code_dim))

  def encode_continuous(self, x, cond=None, train: bool = False):
    z = self.to_latent(self.features(x, cond, train))
    return z.reshape(z.shape[0], -1, self.code_dim)

  def nearest(self, z_e):
    d = (jnp.sum(z_e ** 2, -1, keepdims=True) - 2 * z_e @ self.codebook.T
         + jnp.sum(self.codebook ** 2, -1))
    return jnp.argmin(d, axis=-1)

  def encode_indices(self, x, cond=None):
    """Codebook indices (B, latent_dim // code_dim): the discrete code of each example."""
    return self.nearest(self.encode_continuous(x, cond))

  def indices_to_latent(self, idx):
    return self.codebook[idx].reshape(idx.shape[0], -1)

  def encode(self, x, cond=None, train: bool = False):
    return self.indices_to_latent(self.nearest(self.encode_continuous(x, cond, train)))

  def __call__(self, x, cond=None, train: bool = False) -> dict[str, Any]:
    z_e = self.encode_continuous(x, cond, train)
    idx = self.nearest(z_e)
    q = self.codebook[idx]
    z_q = z_e + jax.lax.stop_gradient(q - z_e)
    out = self.decode(z_q.reshape(z_q.shape[0], -1), cond, train)
    return {"z_e": z_e, "q": q, "indices": idx, "z": z_q, "out": out}


def build(cfg, input_shape):
  enc, dec = networks(cfg, input_shape)
  return VQVAE(enc, dec, num_codes=cfg.model.num_codes, code_dim=cfg.model.code_dim,
               **common_kwargs(cfg))


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  del step
  x = batch["x"]
  res = apply(model, params, x, batch, keys, cfg, train)
  result = recon_terms(cfg, res["out"], x)
  sg = jax.lax.stop_gradient
  ze, q = res["z_e"], res["q"]
  codebook = jnp.mean(jnp.square(sg(ze) - q), axis=(1, 2))
  commit = jnp.mean(jnp.square(ze - sg(q)), axis=(1, 2))
  result["codebook"] = codebook
  result["commitment"] = commit
  result["loss"] = result["loss"] + codebook + cfg.objective.commitment * commit
  result["code_hist"] = jnp.mean(jax.nn.one_hot(res["indices"], model.num_codes), axis=1)
  return result


def finalize(means, cfg):
  del cfg
  means = dict(means)
  p = means["code_hist"]
  means["perplexity"] = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0)))
  return means


def validate(cfg, input_shape):
  del input_shape
  check_recon_loss(cfg)
  m = cfg.model
  require(m.latent_dim % m.code_dim == 0,
          f"model.latent_dim={m.latent_dim} must be a multiple of model.code_dim={m.code_dim}")
  require(m.num_codes >= 2, f"model.num_codes must be >= 2, got {m.num_codes}")


FAMILIES.register("vqvae")(Family("vqvae", build, terms, finalize, fields=FIELDS,
                                  validate=validate, hparams=("objective.commitment",)))
