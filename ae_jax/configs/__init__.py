"""Config presets: each module has `get_config()` returning an ml_collections ConfigDict."""

import importlib

import ml_collections

from ae_jax.errors import ConfigError

PRESETS = ("default", "digits_conv", "digits_vae", "digits_sparse_topk", "digits_denoising",
           "tiny")


def get_preset(name: str = "default") -> ml_collections.ConfigDict:
  """Config of a preset by name (a module of `ae_jax.configs`)."""
  if name not in PRESETS:
    raise ConfigError(f"unknown config preset {name!r}; valid presets are: {', '.join(PRESETS)}")
  return importlib.import_module(f"ae_jax.configs.{name}").get_config()
