"""`denoising`: reconstruct the clean example from a corrupted one.

The corruption (`objective.noise`, one of `CORRUPTIONS`) is drawn per example from the
example's own key, so the same global batch gives the same corruptions on any number of
devices, and evaluation is repeatable.
"""

import jax
import ml_collections

from ae_jax.corruption import CORRUPTIONS
from ae_jax.families import ae
from ae_jax.families.base import (FAMILIES, Family, Terms, apply, check_recon_loss, recon_terms,
                                  require)

FIELDS = {
    "objective.noise": "gaussian",   # gaussian | salt_pepper | masking | block | ...
    "objective.noise_level": 0.2,    # sigma for gaussian, a rate for salt_pepper / masking
    "objective.noise_clip": True,
    "objective.clip_min": 0.0,
    "objective.clip_max": 1.0,
    "objective.block_size": 3,
    "objective.block_region": ml_collections.config_dict.placeholder(int),
}


def corrupt(cfg, keys, x):
  """Corrupt each example of x (B, ...) with its own key, as cfg.objective.noise says."""
  fn = CORRUPTIONS.get(cfg.objective.noise)
  return jax.vmap(lambda k, xi: fn(k, xi, cfg.objective.noise_level, cfg.objective))(keys, x)


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  del step
  x = batch["x"]
  noisy = corrupt(cfg, keys, x)
  out = apply(model, params, noisy, batch, keys, cfg, train)["out"]
  return recon_terms(cfg, out, x)


def validate(cfg, input_shape):
  check_recon_loss(cfg)
  o = cfg.objective
  CORRUPTIONS.get(o.noise)
  require(o.noise_level >= 0, f"objective.noise_level must be >= 0, got {o.noise_level}")
  if o.noise in ("salt_pepper", "masking"):
    require(o.noise_level <= 1, f"objective.noise_level is a rate for {o.noise!r} noise "
            f"and must be in [0, 1], got {o.noise_level}")
  if o.noise == "block":
    smallest = min(input_shape[:-1]) if len(input_shape) > 1 else input_shape[0]
    require(0 < o.block_size <= smallest,
            f"objective.block_size must be in [1, {smallest}], got {o.block_size}")


FAMILIES.register("denoising")(Family(
    "denoising", ae.build, terms, fields=FIELDS, validate=validate,
    hparams=("objective.noise_level",), undercomplete=True))
