"""A trained model: inference in data space (encode, decode, reconstruct, sample, evaluate)
and loading from a workdir; the evaluation over a dataset that training shares."""

import copy
import dataclasses
import functools
import pathlib
from typing import Any, Callable

import jax
import ml_collections
import numpy as np

from ae_jax import checkpoint as ckpt_lib
from ae_jax import data as data_lib
from ae_jax import distributed
from ae_jax import parallel
from ae_jax.errors import ConfigError, DataError
from ae_jax.families import build_model, get_family, in_chunks
from ae_jax.train import create_train_state, eval_params, eval_step, finalize_eval


@dataclasses.dataclass
class Trained:
  """A trained model with its config and scaler; methods take and return data space numpy."""
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  scaler: data_lib.Scaler
  input_shape: tuple
  step: int = 0
  history: list = dataclasses.field(default_factory=list)
  workdir: pathlib.Path | None = None
  batch_size: int = 1024
  figure_paths: dict = dataclasses.field(default_factory=dict)

  def _batched(self, fn: Callable, x, *extra) -> np.ndarray:
    outs = []
    for start in range(0, len(x), self.batch_size):
      outs.append(np.asarray(fn(self.params, *(a[start:start + self.batch_size] for a in
                                               (x, *extra)))))
    return np.concatenate(outs) if outs else np.zeros((0,))

  @functools.cached_property
  def _encode(self):
    return jax.jit(in_chunks(self.config, lambda p, x, *c: self.model.apply(
        p, x, *c, method=self.model.encode)))

  @functools.cached_property
  def _decode(self):
    return jax.jit(in_chunks(self.config, lambda p, z, *c: self.model.to_data(
        self.model.apply(p, z, *c, method=self.model.decode))))

  def _prep(self, x) -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.shape[1:] != tuple(self.input_shape):
      raise DataError(f"expected examples of shape {tuple(self.input_shape)}, got "
                      f"{x.shape[1:]} (array shape {x.shape})")
    return self.scaler.transform(x)

  def encode(self, x, cond=None) -> np.ndarray:
    """Latent codes (N, latent_dim) of data-space examples x (N, *input_shape)."""
    return self._batched(self._encode, self._prep(x), *([] if cond is None else [cond]))

  def decode(self, z, cond=None) -> np.ndarray:
    """Data-space reconstructions (N, *input_shape) of latents z (N, latent_dim)."""
    out = self._batched(self._decode, np.asarray(z, np.float32),
                        *([] if cond is None else [cond]))
    return self.scaler.inverse_transform(out)

  def reconstruct(self, x, cond=None) -> np.ndarray:
    return self.decode(self.encode(x, cond), cond)

  def evaluate(self, data) -> dict[str, float]:
    """The family's objective and metrics over every example of `data` (ArrayData or array)."""
    if not isinstance(data, data_lib.ArrayData):
      data = data_lib.sources.make_array_data(np.asarray(data, np.float32), None, "array")
    data = dataclasses.replace(data, x=self._prep(data.x))
    return evaluate(self.config, self.model, self.params, data, "jit")

  @property
  def conditional(self) -> bool:
    """Whether the model conditions on labels (its family's `conditional`)."""
    return get_family(self.config.model.family).conditional

  def sample(self, num: int, seed: int = 0, cond=None) -> np.ndarray:
    """Decoded draws from the prior (families with `can_sample`: vae, cvae)."""
    if not get_family(self.config.model.family).can_sample:
      raise ConfigError(f"sampling needs a family with a prior (vae, cvae), this model is "
                        f"{self.config.model.family!r}")
    z = self.model.apply(self.params, jax.random.key(seed), num,
                         method=self.model.sample_prior)
    return self.decode(np.asarray(z), cond)

  @classmethod
  def load(cls, workdir, best: bool = False) -> "Trained":
    """Load a trained model from a workdir without running any code from the files."""
    cfg, model, state, meta = load_state(workdir, best=best)
    return cls(cfg, model, eval_params(state), scaler_from_meta(meta),
               tuple(meta["input_shape"]), int(state.step), workdir=pathlib.Path(workdir))


def load_state(workdir, best: bool = False):
  """(config, model, the whole TrainState, checkpoint metadata) of a workdir's newest
  readable checkpoint (of its best ones with best=True): the parameters and the optimizer
  state, so also the moving average of optim.ema_decay."""
  cfg, meta, _ = ckpt_lib.load_config(workdir, best=best)
  input_shape = tuple(meta["input_shape"])
  model = build_model(cfg, input_shape)
  state = create_train_state(cfg, model, input_shape, jax.random.key(0), 1)
  manager = ckpt_lib.open_manager(workdir, best=best)
  try:
    state, meta = ckpt_lib.restore_newest_readable(manager, cfg, state, str(workdir))
  finally:
    manager.close()
  return cfg, model, state, meta


def scaler_from_meta(meta: dict) -> data_lib.Scaler:
  return data_lib.Scaler.from_state(
      {k: (v if k == "method" else np.asarray(v, np.float32)) for k, v in meta["scaler"].items()})


def evaluate(cfg, model, params, data, mode: str = "jit", batch_size: int | None = None,
             num_devices: int = 0) -> dict[str, float]:
  """Metrics over every example of `data` exactly once (padded, masked last batch)."""
  family = get_family(cfg.model.family)
  fn = eval_fn(cfg, model, family, mode, num_devices)
  n = getattr(fn, "num_devices", 1)
  bs = batch_size or cfg.train.batch_size
  bs = max(n, (bs // n) * n)
  return run_eval(fn, family, cfg, params, data, bs)


_EVAL_FNS: dict = {}


def eval_fn(cfg, model, family, mode, num_devices):
  """The compiled evaluation step of this model and config. One compilation per
  (architecture, config, family, mode, device count): evaluating again (each epoch, each
  model of a sweep, a peer's weights copied in) reuses it instead of compiling anew."""
  key = (model, cfg.to_json(sort_keys=True), id(family), mode, num_devices)
  fn = _EVAL_FNS.get(key)
  if fn is None:
    step = functools.partial(eval_step, model=model, family=family, config=copy.deepcopy(cfg))
    fn = parallel.compile_step(step, mode, num_devices=num_devices, donate_state=False)
    if len(_EVAL_FNS) >= 32:
      _EVAL_FNS.pop(next(iter(_EVAL_FNS)))
    _EVAL_FNS[key] = fn
  return fn


def run_eval(fn, family, cfg, params, data, batch_size) -> dict[str, float]:
  rng = jax.random.key(cfg.seed + 1)
  total_sums, total_count = None, 0.0
  for batch in data_lib.eval_batches(data, batch_size):
    batch = parallel.host_batch(batch)
    if getattr(fn, "process_local", False):
      batch = distributed.process_slice(batch)
    sums, count = fn(params, batch, rng)
    sums = jax.tree.map(np.asarray, sums)
    total_sums = sums if total_sums is None else jax.tree.map(np.add, total_sums, sums)
    total_count += float(count)
  return finalize_eval(family, cfg, total_sums, total_count)


def eval_batch_size(cfg, num_devices: int) -> int:
  bs = max(cfg.train.batch_size, 256)
  return max(num_devices, (bs // num_devices) * num_devices)
