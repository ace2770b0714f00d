"""Autoencoder modules. Every model exposes `encode`, `decode`, `reconstruct` and
`__call__`, usable through `model.apply(params, x, method=Model.encode)`.

Shapes: x is (B, *input_shape); a latent is (B, latent_dim). `decode` returns the
decoder's raw output: logits for a Bernoulli/BCE model, means otherwise;
`reconstruct` maps it into data space.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class Autoencoder(nn.Module):
  """Encoder -> Dense(latent_dim) -> decoder. `logits` says the decoder emits logits."""
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
      h = jnp.concatenate([h, _one_hot(cond, self.num_classes, h.dtype)], axis=-1)
    return h

  def latent_in(self, z, cond=None):
    if self.num_classes:
      z = jnp.concatenate([z, _one_hot(cond, self.num_classes, z.dtype)], axis=-1)
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


def _one_hot(cond, num_classes, dtype):
  if cond is None:
    raise ValueError("this model is conditional: pass the labels as `cond`")
  return jax.nn.one_hot(cond, num_classes, dtype=dtype)


class SparseAutoencoder(Autoencoder):
  """Autoencoder whose code is `relu` (L1 penalty), `sigmoid` (KL target rate) or `topk`.

  With `topk`, at most k units of each code are nonzero: the k largest
  pre-activations are kept if positive and the rest set to zero.
  """
  code: str = "relu"
  k: int = 0

  def encode(self, x, cond=None, train: bool = False):
    pre = self.to_latent(self.features(x, cond, train))
    if self.code == "relu":
      return nn.relu(pre)
    if self.code == "sigmoid":
      return nn.sigmoid(pre)
    return topk(pre, self.k)


def topk(pre, k: int):
  """Top-k over ReLU pre-activations: keep the k largest entries of the last axis that
  are positive, zero the others (ties broken by index)."""
  _, idx = jax.lax.top_k(pre, k)
  keep = jnp.sum(jax.nn.one_hot(idx, pre.shape[-1], dtype=pre.dtype), axis=-2)
  return nn.relu(pre) * keep


class VAE(Autoencoder):
  """Gaussian posterior q(z|x) = N(mean, diag(exp(logvar))), standard normal prior.

  `encode` gives the posterior mean (a deterministic code); `__call__` takes
  `eps` (B, S, latent_dim) standard-normal draws and returns S reparameterised
  samples per example with their decodings (B, S, *input_shape).
  `learn_sigma` adds a per-feature learned log-sigma for a Gaussian likelihood.
  """
  learn_sigma: bool = False
  output_shape: tuple = ()

  def setup(self):
    self.to_mean = nn.Dense(self.latent_dim, name="to_mean")
    self.to_logvar = nn.Dense(self.latent_dim, name="to_logvar")
    if self.learn_sigma:
      self.log_sigma = self.param("log_sigma", nn.initializers.zeros, self.output_shape)

  def posterior(self, x, cond=None, train: bool = False):
    h = self.features(x, cond, train)
    return self.to_mean(h), self.to_logvar(h)

  def encode(self, x, cond=None, train: bool = False):
    return self.posterior(x, cond, train)[0]

  def __call__(self, x, cond=None, eps=None, train: bool = False) -> dict[str, Any]:
    mean, logvar = self.posterior(x, cond, train)
    if eps is None:
      eps = jnp.zeros((x.shape[0], 1, self.latent_dim), mean.dtype)
    z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps
    b, s = z.shape[:2]
    flat_cond = None if cond is None else jnp.repeat(cond, s, axis=0)
    out = self.decode(z.reshape(b * s, -1), flat_cond, train)
    result = {"mean": mean, "logvar": logvar, "z": z, "out": out.reshape(b, s, *out.shape[1:])}
    if self.learn_sigma:
      result["log_sigma"] = self.log_sigma
    return result


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
