"""Modules the families share: the deterministic encoder -> latent -> decoder bottleneck.

Every model exposes `encode`, `decode`, `reconstruct` and `__call__`, usable through
`model.apply(params, x, method=Model.encode)`. Shapes: x is (B, *input_shape); a latent
is (B, latent_dim). `decode` returns the decoder's raw output: logits for a
Bernoulli/BCE model, means otherwise; `reconstruct` maps it into data space.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Autoencoder(nn.Module):
  """Encoder -> Dense(latent_dim) -> decoder. `logits` says the decoder emits logits;
  `num_classes > 0` makes it conditional (one-hot labels join the features and latent)."""
  encoder: nn.Module
  decoder: nn.Module
  latent_dim: int
  logits: bool = False
  num_classes: int = 0

  def setup(self):
    self.to_latent = nn.Dense(self.latent_dim, name="to_latent")

  def features(self, x, cond=None, train: bool = False):
    h = self.encoder(x, train=train)
    if self.num_classes:
      h = jnp.concatenate([h, one_hot(cond, self.num_classes, h.dtype)], axis=-1)
    return h

  def latent_in(self, z, cond=None):
    if self.num_classes:
      z = jnp.concatenate([z, one_hot(cond, self.num_classes, z.dtype)], axis=-1)
    return z

  def encode(self, x, cond=None, train: bool = False):
    return self.to_latent(self.features(x, cond, train))

  def decode(self, z, cond=None, train: bool = False):
    return self.decoder(self.latent_in(z, cond), train=train)

  def to_data(self, out):
    return jax.nn.sigmoid(out) if self.logits else out

  def reconstruct(self, x, cond=None):
    return self.to_data(self.decode(self.encode(x, cond), cond))

  def __call__(self, x, cond=None, train: bool = False) -> dict[str, Any]:
    z = self.encode(x, cond, train)
    return {"z": z, "out": self.decode(z, cond, train)}


def one_hot(cond, num_classes, dtype):
  if cond is None:
    raise ValueError("this model is conditional: pass the labels as `cond`")
  return jax.nn.one_hot(cond, num_classes, dtype=dtype)
