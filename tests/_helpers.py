"""Helpers shared by several test modules (not a test module itself)."""

import jax
import jax.numpy as jnp

from ae_jax.families import build_model


def set_fields(cfg, **fields):
  """Set `cfg[section][field] = value` for each `section__field=value`; returns cfg.

  `set_fields(cfg, model__latent_dim=3, objective__rd_lambda=0.1)`: keyword names cannot
  hold the dot of "model.latent_dim", so a double underscore stands for it.
  """
  for key, value in fields.items():
    section, field = key.split("__")
    cfg[section][field] = value
  return cfg


def rd_cfg(cfg, **fields):
  """A small `rate_distortion` config (dense transform, 6 latents, BCE, λ 0.01, one
  device under jit), then `set_fields(cfg, **fields)`."""
  cfg.model.family = "rate_distortion"
  cfg.model.latent_dim = 6
  cfg.model.recon_loss = "bce"
  cfg.objective.rd_lambda = 0.01
  cfg.train.parallel = "jit"
  cfg.train.num_devices = 1
  return set_fields(cfg, **fields)


def rd_init(cfg, shape=(8, 8, 1)):
  """(model, params) of `cfg` for examples of `shape`, initialised with key 0."""
  model = build_model(cfg, shape)
  return model, jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, *shape)))
