"""Before the training loop: data loaded, checked and scaled, the step budget, the checks of
the train config. `fit` and the vmapped trials (`ae_jax.vmap_trials`) share them."""

import dataclasses

import numpy as np

from ae_jax import data as data_lib
from ae_jax import parallel
from ae_jax.errors import ConfigError, DataError
from ae_jax.families import get_family
from ae_jax.train import microbatch_size


def prepare_data(cfg, train_data=None, eval_data=None):
  """(train, eval, scaler): loaded, checked for NaN/inf, scaled with training statistics."""
  d = cfg.data
  if train_data is None:
    train_data = data_lib.load(d.name, d.split or None)
  if len(train_data) == 0:
    raise DataError(f"the training split of {train_data.name} is empty; check data.name "
                    "and data.split")
  train_data = _finite(train_data, "training", d.nonfinite)
  if eval_data is None:
    if d.eval_name:
      eval_data = data_lib.load(d.eval_name)
    elif d.val_fraction > 0:
      train_data, eval_data = data_lib.train_val_split(train_data, d.val_fraction, cfg.seed)
  if eval_data is not None:
    if eval_data.x.shape[1:] != train_data.x.shape[1:]:
      raise DataError(f"evaluation examples have shape {eval_data.x.shape[1:]} but training "
                      f"examples {train_data.x.shape[1:]}; give data of one shape")
    eval_data = _finite(eval_data, "evaluation", d.nonfinite)
  if not d.labels:
    train_data = dataclasses.replace(train_data, y=None)
    if eval_data is not None:
      eval_data = dataclasses.replace(eval_data, y=None)
  scaler = data_lib.Scaler(d.scaling).fit(train_data.x)
  train_data = dataclasses.replace(train_data, x=scaler.transform(train_data.x))
  if eval_data is not None:
    eval_data = dataclasses.replace(eval_data, x=scaler.transform(eval_data.x))
  if get_family(cfg.model.family).conditional and train_data.y is None:
    raise DataError(f"family {cfg.model.family!r} conditions on labels, but {train_data.name} "
                    "has none")
  return train_data, eval_data, scaler


def _finite(data, split, policy):
  x, y = data_lib.check_finite(data.x, split, policy, data.y)
  return dataclasses.replace(data, x=np.asarray(x, np.float32), y=y)


def total_steps(cfg, num_train: int) -> int:
  if cfg.train.num_epochs and cfg.train.num_epochs > 0:
    return max(1, cfg.train.num_epochs * (num_train // cfg.train.batch_size))
  return int(cfg.train.num_steps)


def validate_train_config(cfg, num_train: int, num_devices: int) -> None:
  t = cfg.train
  for name in ("batch_size", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
    value = t[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f"train.{name} must be a positive integer, got {value!r}")
  if t.nonfinite not in ("raise", "skip"):
    raise ConfigError(f"train.nonfinite must be 'raise' or 'skip', got {t.nonfinite!r}")
  if t.parallel not in parallel.MODES:
    raise ConfigError(f"unknown train.parallel {t.parallel!r}; valid modes are: "
                      f"{', '.join(parallel.MODES)}")
  microbatch_size(cfg, get_family(cfg.model.family))
  if t.parallel in ("pmap", "shard_map") and t.batch_size % num_devices:
    raise ConfigError(f"train.batch_size={t.batch_size} is not a multiple of the {num_devices} "
                      "devices; choose a multiple or set train.num_devices")
  if t.batch_size // max(num_devices, 1) < 1 or num_train < t.batch_size:
    raise DataError(f"the training split has {num_train} examples, fewer than one batch of "
                    f"{t.batch_size}; lower train.batch_size or give more data")
