"""Autoencoder families, one file each, chosen by name through `FAMILIES`.

Importing this package registers every family. To add one, write
`ae_jax/families/NAME.py` ending with `FAMILIES.register("NAME")(Family(...))` and add
its import below (see docs/architecture.md).
"""

from ae_jax.families.base import (FAMILIES, Family, Terms, batch_chunk, build_model,
                                  get_family, in_chunks, scalar_metrics, validate_config)
from ae_jax.families import (ae, contractive, denoising,  # noqa: F401  (registration)
                             rate_distortion, sparse, spatial_denoising, trimmed, vae, vqvae)
from ae_jax.families.common import Autoencoder
from ae_jax.families.denoising import corrupt
from ae_jax.families.sparse import SparseAutoencoder, topk
from ae_jax.families.vae import (VAE, beta_at, binarize, draw_eps, elbo_terms,
                                 importance_sampled_nll, log_likelihood, log_weights)
from ae_jax.families.vqvae import VQVAE


def config_fields() -> dict:
  """Every family's config fields with their defaults, checked for agreement where two
  families share a field."""
  fields = {}
  for name in FAMILIES:
    for key, value in FAMILIES.get(name).fields.items():
      if key in fields and repr(fields[key]) != repr(value):
        raise ValueError(f"families disagree on the default of {key}: "
                         f"{fields[key]!r} vs {value!r}")
      fields[key] = value
  return fields
