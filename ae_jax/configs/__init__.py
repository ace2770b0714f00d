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


def set_offline_training(c: ml_collections.ConfigDict, *, learning_rate: float, batch_size: int,
                         epochs: int) -> ml_collections.ConfigDict:
  """Epoch-based, single-device training on in-memory data with no evaluation, checkpoints,
  figures or labels: the settings the application experiments share."""
  c.optim.learning_rate = learning_rate
  c.optim.schedule = "cosine"
  c.train.batch_size = batch_size
  c.train.num_epochs = epochs
  c.train.parallel = "jit"
  c.train.num_devices = 1
  c.train.eval_every = 10 ** 9
  c.train.log_every = 100
  c.train.checkpoint_every = 10 ** 9
  c.train.figures = False
  c.data.val_fraction = 0.0
  c.data.labels = False
  return c
