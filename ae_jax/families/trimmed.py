"""`trimmed_ae`: an autoencoder whose training loss ignores the worst-reconstructed examples.

Each training batch drops the share `objective.trim` of its examples with the highest
reconstruction loss (the cut is the batch quantile, held constant for the gradient) and
averages the rest, so that anomalies mixed into the training data (the unsupervised
anomaly-detection protocol) pull less on the fit. Evaluation is untrimmed. The quantile
is taken over each device's part of the batch; the anomaly detector trains on one device.
"""

import jax
import jax.numpy as jnp

from ae_jax.families import ae
from ae_jax.families.base import FAMILIES, Family, Terms, check_recon_loss, require

FIELDS = {"objective.trim": 0.1}  # share of each training batch left out of the loss


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  out = ae.terms(model, params, batch, keys, step, cfg, train)
  trim = cfg.objective.trim
  if not train or trim <= 0:
    return out
  loss = out["loss"]
  cut = jnp.quantile(jax.lax.stop_gradient(loss), 1.0 - trim)
  kept = (loss <= cut).astype(loss.dtype)
  return {**out, "loss": loss * kept / jnp.maximum(jnp.mean(kept), 1e-12), "kept": kept}


def validate(cfg, input_shape):
  check_recon_loss(cfg)
  trim = cfg.objective.trim
  require(0.0 <= trim < 0.5, f"objective.trim must be in [0, 0.5), got {trim}")


def batch_coupled(cfg) -> bool:
  """The cut is a quantile of the batch's losses."""
  return cfg.objective.trim > 0


FAMILIES.register("trimmed_ae")(Family("trimmed_ae", ae.build, terms, fields=FIELDS,
                                       validate=validate, undercomplete=True,
                                       batch_coupled=batch_coupled))
