"""`ae`: the undercomplete autoencoder, trained to reconstruct its input."""

from ae_jax.families.base import (FAMILIES, Family, Terms, apply, common_kwargs, networks,
                                  recon_terms)
from ae_jax.families.common import Autoencoder


def build(cfg, input_shape):
  enc, dec = networks(cfg, input_shape)
  return Autoencoder(enc, dec, **common_kwargs(cfg))


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  del step
  x = batch["x"]
  out = apply(model, params, x, batch, keys, cfg, train)["out"]
  return recon_terms(cfg, out, x)


FAMILIES.register("ae")(Family("ae", build, terms, undercomplete=True))
