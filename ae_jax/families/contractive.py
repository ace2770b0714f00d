"""`contractive`: an autoencoder whose code resists small changes of the input
(Rifai et al., 2011). The loss adds `objective.contractive_weight` times the squared
Frobenius norm of the encoder's Jacobian at each example, ||d encode(x) / dx||_F^2,
computed exactly (one reverse pass per latent unit, vectorised).
"""

import jax
import jax.numpy as jnp

from ae_jax.families.base import (FAMILIES, Family, Terms, apply, check_recon_loss,
                                  common_kwargs, networks, recon_terms, require)
from ae_jax.families.common import Autoencoder

FIELDS = {"objective.contractive_weight": 1e-2}


def build(cfg, input_shape):
  enc, dec = networks(cfg, input_shape)
  return Autoencoder(enc, dec, **common_kwargs(cfg))


def jacobian_penalty(model, params, x, cond=None):
  """||d encode(x_i) / d x_i||_F^2 for every example of x (B, ...): shape (B,)."""
  def one(xi, ci):
    ci = None if ci is None else ci[None]
    encode = lambda v: model.apply(params, v[None], ci, method=model.encode)[0]
    return jnp.sum(jnp.square(jax.jacrev(encode)(xi)))
  return jax.vmap(one, in_axes=(0, None if cond is None else 0))(x, cond)


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  del step
  x = batch["x"]
  out = apply(model, params, x, batch, keys, cfg, train)["out"]
  result = recon_terms(cfg, out, x)
  penalty = jacobian_penalty(model, params, x, batch.get("y") if model.num_classes else None)
  result["jacobian_norm"] = penalty
  result["loss"] = result["loss"] + cfg.objective.contractive_weight * penalty
  return result


def validate(cfg, input_shape):
  del input_shape
  check_recon_loss(cfg)
  w = cfg.objective.contractive_weight
  require(w >= 0, f"objective.contractive_weight must be >= 0, got {w}")


FAMILIES.register("contractive")(Family(
    "contractive", build, terms, fields=FIELDS, validate=validate,
    hparams=("objective.contractive_weight",), undercomplete=True))
