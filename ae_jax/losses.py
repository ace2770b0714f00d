"""Per-example loss terms. Each takes ONE example (no batch axis) and returns a scalar;
`batched` vmaps them and `weighted_mean` reduces over the batch in one place."""

import math

import jax
import jax.numpy as jnp

from ae_jax.registry import Registry

LOG_2PI = math.log(2 * math.pi)


def mse(x_hat, x):
  """Mean squared error over all features of one example."""
  return jnp.mean(jnp.square(x_hat - x))


def mae(x_hat, x):
  """Mean absolute error over all features of one example."""
  return jnp.mean(jnp.abs(x_hat - x))


def bce_with_logits(logits, x):
  """Mean Bernoulli cross-entropy of targets x in [0, 1] given logits, computed stably.

  softplus(l) - x*l equals -x*log(sigmoid(l)) - (1-x)*log(1-sigmoid(l)) without
  overflow for large |l|.
  """
  return jnp.mean(jax.nn.softplus(logits) - x * logits)


def bernoulli_log_likelihood(logits, x):
  """Summed log p(x | logits) over features (nats)."""
  return -jnp.sum(jax.nn.softplus(logits) - x * logits)


def gaussian_log_likelihood(mean, x, log_sigma):
  """Summed log N(x; mean, exp(log_sigma)^2) over features (nats)."""
  log_sigma = jnp.broadcast_to(log_sigma, x.shape)
  z = (x - mean) * jnp.exp(-log_sigma)
  return -0.5 * jnp.sum(jnp.square(z) + 2 * log_sigma + LOG_2PI)


def gaussian_kl(mean, logvar):
  """KL(N(mean, exp(logvar)) || N(0, I)) summed over latent units."""
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def diag_gaussian_log_density(z, mean, logvar):
  """log N(z; mean, diag(exp(logvar))) summed over the last axis."""
  return -0.5 * jnp.sum(jnp.square(z - mean) * jnp.exp(-logvar) + logvar + LOG_2PI, axis=-1)


def sparsity_kl(rho, rho_hat, eps: float = 1e-6):
  """Sum over units of KL(Bernoulli(rho) || Bernoulli(rho_hat)); rho_hat in (0, 1)."""
  rho_hat = jnp.clip(rho_hat, eps, 1 - eps)
  return jnp.sum(rho * jnp.log(rho / rho_hat)
                 + (1 - rho) * jnp.log((1 - rho) / (1 - rho_hat)))


RECON_LOSSES: Registry = Registry("reconstruction loss")
RECON_LOSSES.register("mse")(mse)
RECON_LOSSES.register("mae")(mae)
RECON_LOSSES.register("bce")(bce_with_logits)


def batched(fn):
  """vmap a per-example function over the leading axis of every argument."""
  return jax.vmap(fn)


def weighted_mean(values, weights):
  """Mean over the leading axis of every leaf, with per-example weights (B,)."""
  total = jnp.maximum(jnp.sum(weights), 1e-12)

  def reduce(v):
    w = weights.reshape(weights.shape + (1,) * (v.ndim - 1)).astype(v.dtype)
    return jnp.sum(v * w, axis=0) / total.astype(v.dtype)

  return jax.tree.map(reduce, values)
