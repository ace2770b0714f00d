"""`sparse`: an autoencoder whose code is pushed to be sparse.

`model.sparsity` chooses the code and its penalty:
  l1    ReLU code, `objective.l1_weight` * |z|_1 per example;
  kl    sigmoid code, `objective.kl_weight` * KL(rho || rho_hat) where rho_hat is each
        unit's mean activation over the GLOBAL batch (device-count independent);
  topk  exactly `model.k` nonzero units per example.
Reported: L0, fraction of variance unexplained (FVU), dead and dense latent fractions.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import losses
from ae_jax.families.base import (FAMILIES, Family, Terms, activity_terms, apply,
                                  check_recon_loss, common_kwargs, finalize_activity,
                                  networks, recon_terms, require)
from ae_jax.families.common import Autoencoder

FIELDS = {
    "model.sparsity": "l1",         # l1 | kl | topk
    "model.k": 4,                   # top-k active latents
    "objective.l1_weight": 1e-3,
    "objective.kl_rho": 0.05,
    "objective.kl_weight": 0.1,
}


class SparseAutoencoder(Autoencoder):
  """Autoencoder whose code is `relu` (L1 penalty), `sigmoid` (KL target rate) or `topk`.

  With `topk`, exactly k units of each code are nonzero: the k largest
  pre-activations are kept and the rest set to zero.
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
  """Keep the k largest entries of the last axis, zero the others (ties broken by index)."""
  _, idx = jax.lax.top_k(pre, k)
  keep = jnp.sum(jax.nn.one_hot(idx, pre.shape[-1], dtype=pre.dtype), axis=-2)
  return pre * keep


_CODES = {"l1": "relu", "kl": "sigmoid", "topk": "topk"}


def build(cfg, input_shape):
  enc, dec = networks(cfg, input_shape)
  return SparseAutoencoder(enc, dec, code=_CODES[cfg.model.sparsity], k=cfg.model.k,
                           **common_kwargs(cfg))


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  del step
  x = batch["x"]
  res = apply(model, params, x, batch, keys, cfg, train)
  z, out = res["z"], res["out"]
  result = recon_terms(cfg, out, x)
  flat_x = x.reshape(x.shape[0], -1)
  recon_x = model.to_data(out).reshape(flat_x.shape)
  result["sq_err"] = jnp.sum(jnp.square(recon_x - flat_x), -1)
  result["sq_norm"] = jnp.sum(jnp.square(flat_x), -1)
  result["x_mean"] = flat_x
  if cfg.model.sparsity == "kl":
    result["code"] = z
    active = (z > 0.5).astype(jnp.float32)
  else:
    active = (z != 0).astype(jnp.float32)
  result.update(activity_terms(z, active))
  if cfg.model.sparsity == "l1":
    l1 = jnp.sum(jnp.abs(z), axis=-1)
    result["l1"] = l1
    result["loss"] = result["loss"] + cfg.objective.l1_weight * l1
  return result


def finalize(means, cfg):
  means = finalize_activity(dict(means))
  variance = means["sq_norm"] - jnp.sum(jnp.square(means["x_mean"]))
  means["fvu"] = means["sq_err"] / jnp.maximum(variance, 1e-12)
  if cfg.model.sparsity == "kl":
    kl = losses.sparsity_kl(cfg.objective.kl_rho, means["code"])
    means["sparsity_kl"] = kl
    means["loss"] = means["loss"] + cfg.objective.kl_weight * kl
  return means


def validate(cfg, input_shape):
  del input_shape
  check_recon_loss(cfg)
  m, o = cfg.model, cfg.objective
  require(m.sparsity in _CODES,
          f"model.sparsity must be one of {', '.join(_CODES)}; got {m.sparsity!r}")
  if m.sparsity == "topk":
    require(isinstance(m.k, int) and 0 < m.k <= m.latent_dim,
            f"model.k must be an integer in [1, latent_dim={m.latent_dim}], got {m.k!r}")
  require(o.l1_weight >= 0, f"objective.l1_weight must be >= 0, got {o.l1_weight}")
  require(0 < o.kl_rho < 1, f"objective.kl_rho must be in (0, 1), got {o.kl_rho}")


FAMILIES.register("sparse")(Family(
    "sparse", build, terms, finalize, fields=FIELDS, validate=validate,
    hparams=("objective.l1_weight", "objective.kl_weight", "objective.kl_rho")))
