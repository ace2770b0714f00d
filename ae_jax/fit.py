"""The training loop: data, model, compiled step, evaluation, checkpoints, resume, figures.

`fit(config, workdir)` trains and returns a `Trained` model. Given the same workdir a
run resumes from its newest readable checkpoint with the same step, rng and data
order, and ends with the same parameters as an uninterrupted run.
"""

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ae_jax import checkpoint as ckpt_lib
from ae_jax import data as data_lib
from ae_jax import distributed
from ae_jax import parallel
from ae_jax.errors import ConfigError, DataError, NonFiniteError
from ae_jax.families import FAMILIES, build_model, get_family
from ae_jax.train import create_train_state, eval_step, finalize_eval, train_step

METRICS_FILE = "metrics.jsonl"


# ---- data ----------------------------------------------------------------------------

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
  if cfg.model.family == "cvae" and train_data.y is None:
    raise DataError(f"family 'cvae' conditions on labels, but {train_data.name} has none")
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
  if t.parallel in ("pmap", "shard_map") and t.batch_size % num_devices:
    raise ConfigError(f"train.batch_size={t.batch_size} is not a multiple of the {num_devices} "
                      "devices; choose a multiple or set train.num_devices")
  if t.batch_size // max(num_devices, 1) < 1 or num_train < t.batch_size:
    raise DataError(f"the training split has {num_train} examples, fewer than one batch of "
                    f"{t.batch_size}; lower train.batch_size or give more data")


# ---- the trained model ---------------------------------------------------------------

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
    return jax.jit(lambda p, x, *c: self.model.apply(p, x, *c, method=self.model.encode))

  @functools.cached_property
  def _decode(self):
    return jax.jit(lambda p, z, *c: self.model.to_data(
        self.model.apply(p, z, *c, method=self.model.decode)))

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

  def sample(self, num: int, seed: int = 0, cond=None) -> np.ndarray:
    """Decoded draws from the prior (VAE families)."""
    if self.config.model.family not in ("vae", "cvae"):
      raise ConfigError(f"sampling needs a VAE family, this model is {self.config.model.family!r}")
    z = jax.random.normal(jax.random.key(seed), (num, self.config.model.latent_dim))
    return self.decode(np.asarray(z), cond)

  @classmethod
  def load(cls, workdir, best: bool = False) -> "Trained":
    """Load a trained model from a workdir without running any code from the files."""
    cfg, meta, step = ckpt_lib.load_config(workdir, best=best)
    input_shape = tuple(meta["input_shape"])
    model = build_model(cfg, input_shape)
    state = create_train_state(cfg, model, input_shape, jax.random.key(0), 1)
    manager = ckpt_lib.open_manager(workdir, best=best)
    try:
      state, meta = ckpt_lib.restore_newest_readable(manager, cfg, state, str(workdir))
    finally:
      manager.close()
    scaler = scaler_from_meta(meta)
    return cls(cfg, model, state.params, scaler, input_shape, int(state.step),
               workdir=pathlib.Path(workdir))


def scaler_from_meta(meta: dict) -> data_lib.Scaler:
  return data_lib.Scaler.from_state(
      {k: (v if k == "method" else np.asarray(v, np.float32)) for k, v in meta["scaler"].items()})


def evaluate(cfg, model, params, data, mode: str = "jit", batch_size: int | None = None,
             num_devices: int = 0) -> dict[str, float]:
  """Metrics over every example of `data` exactly once (padded, masked last batch)."""
  family = get_family(cfg.model.family)
  fn = _eval_fn(cfg, model, family, mode, num_devices)
  n = getattr(fn, "num_devices", 1)
  bs = batch_size or cfg.train.batch_size
  bs = max(n, (bs // n) * n)
  return _run_eval(fn, family, cfg, params, data, bs)


def _eval_fn(cfg, model, family, mode, num_devices):
  step = functools.partial(eval_step, model=model, family=family, config=cfg)
  return parallel.compile_step(step, mode, num_devices=num_devices, donate_state=False)


def _run_eval(fn, family, cfg, params, data, batch_size) -> dict[str, float]:
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


# ---- the loop ------------------------------------------------------------------------

class _MetricsLog:
  """Appends JSON lines to workdir/metrics.jsonl; on resume drops lines past the step."""

  def __init__(self, workdir: pathlib.Path | None, resume_step: int | None):
    self.path = None if workdir is None else workdir / METRICS_FILE
    self.rows: list[dict] = []
    if self.path is not None and self.path.exists():
      rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
      keep = [r for r in rows if resume_step is not None and r["step"] <= resume_step]
      self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
      self.rows = keep

  def write(self, row: dict) -> None:
    self.rows.append(row)
    if self.path is not None:
      with self.path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _meta(cfg, input_shape, scaler, iterator, best, bad_evals) -> dict:
  return {"config": cfg.to_json(), "input_shape": list(input_shape),
          "data_state": iterator.get_state().decode(), "best_val_loss": best,
          "bad_evals": bad_evals, "version": 1,
          "scaler": {k: (v if isinstance(v, str) else np.asarray(v).tolist())
                     for k, v in scaler.to_state().items()}}


def fit(cfg: ml_collections.ConfigDict, workdir=None, *, train_data=None, eval_data=None,
        progress: bool = True, stop_after: int | None = None,
        restore_best: bool = False, make_loader: Callable | None = None) -> Trained:
  """Train `cfg` and return the trained model.

  Args:
    cfg: a config from `ae_jax.configs` (possibly overridden).
    workdir: where checkpoints, metrics.jsonl and figures go; None keeps nothing on disk.
      A workdir with checkpoints resumes from the newest readable one.
    train_data / eval_data: ArrayData to use instead of loading cfg.data.
    progress: show a tqdm bar.
    stop_after: stop (after checkpointing) once this step is reached; for tests of resume.
    restore_best: return the parameters of the evaluation with the lowest validation
      loss (kept in host memory) instead of the last ones; needs validation data.
    make_loader: `make_loader(train_data, batch_size=, seed=)` giving an iterable whose
      iterator has get_state() -> bytes and set_state(bytes); default
      `ae_jax.data.make_train_loader` (Grain).
  """
  get_family(cfg.model.family)
  distributed.check_config(cfg)
  is_main = distributed.is_main_process()
  train, val, scaler = prepare_data(cfg, train_data, eval_data)
  input_shape = tuple(train.x.shape[1:])
  devices = parallel.resolve_devices(cfg.train.num_devices) if cfg.train.parallel in (
      "pmap", "shard_map") else jax.local_devices()[:1]
  validate_train_config(cfg, len(train), len(devices) * jax.process_count())
  model = build_model(cfg, input_shape)
  family = FAMILIES.get(cfg.model.family)
  steps = total_steps(cfg, len(train))
  state = create_train_state(cfg, model, input_shape, jax.random.key(cfg.seed), steps)
  if jax.process_count() > 1:
    loader = data_lib.pipeline.make_process_train_loader(
        train, global_batch_size=cfg.train.batch_size, seed=cfg.seed)
  else:
    loader = (make_loader or data_lib.make_train_loader)(train, batch_size=cfg.train.batch_size,
                                                       seed=cfg.seed)
  iterator = iter(loader)
  best, bad_evals = float("inf"), 0

  workdir = None if workdir is None else pathlib.Path(workdir)
  ckpts = None
  if workdir is not None:
    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = ckpt_lib.Checkpoints(workdir, cfg.train.keep_checkpoints)
    got = ckpt_lib.restore_newest_readable(ckpts.latest, cfg, state, str(workdir),
                                           delete_damaged=True)
    if got is not None:
      state, meta = got
      try:
        iterator.set_state(meta["data_state"].encode())
      except ValueError as e:
        raise DataError(
            f"the checkpoint in {workdir} was written for other training data or batching "
            f"than this run's ({str(e).splitlines()[0]}); resume with the same data and "
            "train.batch_size, or use a new workdir") from None
      best, bad_evals = meta["best_val_loss"], meta["bad_evals"]
  start = int(state.step)
  log = _MetricsLog(workdir if is_main else None, start)
  if workdir is not None and is_main:
    (workdir / "config.json").write_text(cfg.to_json(indent=2))

  step_fn = parallel.compile_step(
      functools.partial(train_step, model=model, family=family, config=cfg),
      cfg.train.parallel, num_devices=cfg.train.num_devices)
  eval_fn = _eval_fn(cfg, model, family, cfg.train.parallel, cfg.train.num_devices)
  rng = jax.random.key(cfg.seed + 1)
  last_good = start if ckpts is not None and start in ckpts.steps() else None
  pending: list[tuple[int, dict]] = []
  skipped = 0
  stop_at = steps if stop_after is None else min(steps, stop_after)
  bar = tqdm.tqdm(total=steps, initial=start, disable=not (progress and is_main), desc="train",
                  dynamic_ncols=True)
  board = _open_board(cfg, workdir, model, scaler, input_shape, val if val is not None else train,
                      steps, start) if cfg.train.get("tensorboard", False) and is_main else None
  t0 = time.time()

  def drain():
    """Bring pending metrics to the host; stop on the first non-finite step."""
    nonlocal skipped
    rows = []
    for s, m in pending:
      m = {k: float(v) for k, v in m.items()}
      if m["finite"] < 1:
        if cfg.train.nonfinite == "raise":
          where = (f"the last good checkpoint is step {last_good} in {workdir / 'checkpoints'}"
                   " (left intact)" if last_good is not None else "no checkpoint was written")
          raise NonFiniteError(
              f"non-finite loss or gradient at step {s} (loss={m['loss']}, "
              f"grad_norm={m['grad_norm']}); {where}. Lower optim.learning_rate, set "
              "optim.grad_clip, check the data scaling, or set train.nonfinite='skip'")
        skipped += 1
        if skipped > cfg.train.max_skipped_steps:
          raise NonFiniteError(
              f"{skipped} non-finite steps were skipped (the last at step {s}), more than "
              f"train.max_skipped_steps={cfg.train.max_skipped_steps}; lower "
              "optim.learning_rate or set optim.grad_clip")
      rows.append((s, m))
    pending.clear()
    return rows

  stopped_early = False
  best_params = None
  try:
    for step in range(start + 1, stop_at + 1):
      batch = parallel.host_batch(next(iterator))
      state, metrics = step_fn(state, batch, rng)
      pending.append((step, metrics))
      is_log = step % cfg.train.log_every == 0 or step == stop_at
      is_eval = val is not None and (step % cfg.train.eval_every == 0 or step == steps)
      is_ckpt = ckpts is not None and (step % cfg.train.checkpoint_every == 0 or step == stop_at)
      if is_log or is_eval or is_ckpt:
        rows = drain()
        s, m = rows[-1]
        row = {"step": s, "split": "train", "time": round(time.time() - t0, 3),
               "timestamp": time.time(), **m}
        log.write(row)
        if board is not None:
          board.scalars(s, "train", m)
        bar.set_postfix(loss=f"{m['loss']:.4g}")
      bar.update(1)
      if is_eval:
        ev = _run_eval(eval_fn, family, cfg, state.params, val,
                       _eval_batch_size(cfg, getattr(eval_fn, "num_devices", 1)))
        log.write({"step": step, "split": "eval", "time": round(time.time() - t0, 3),
                   "timestamp": time.time(), **ev})
        if board is not None:
          board.evaluation(step, ev, distributed.to_local(state.params))
        if ev["loss"] < best:
          best, bad_evals = ev["loss"], 0
          if restore_best:
            best_params = jax.device_get(state.params)
          if ckpts is not None:
            ckpts.save_best(step, distributed.to_global(state),
                            _meta(cfg, input_shape, scaler, iterator, best, bad_evals), best)
        else:
          bad_evals += 1
        if cfg.train.patience and bad_evals >= cfg.train.patience:
          stopped_early = True
      if is_ckpt or (stopped_early and ckpts is not None):
        ckpts.save(step, distributed.to_global(state),
                   _meta(cfg, input_shape, scaler, iterator, best, bad_evals))
        last_good = step
      if stopped_early:
        bar.write(f"early stopping at step {step}: no improvement of the validation loss "
                  f"in {bad_evals} evaluations (best {best:.5g})")
        break
  finally:
    bar.close()
    if board is not None:
      board.close()
    if ckpts is not None:
      ckpts.close()
  params = (distributed.to_local(state.params) if best_params is None else
            jax.tree.map(jnp.asarray, best_params))
  result = Trained(cfg, model, params, scaler, input_shape, int(state.step),
                   history=log.rows, workdir=workdir)
  if workdir is not None and cfg.train.figures and jax.process_index() == 0:
    from ae_jax import figures  # matplotlib is imported only when figures are drawn
    result.figure_paths = figures.training_figures(result, val if val is not None else train)
  return result


# ---- TensorBoard (optional, train.tensorboard) -------------------------------------

def _open_board(cfg, workdir, model, scaler, input_shape, data, steps: int, start: int):
  """A `TrainingBoard` writing to workdir/tensorboard, drawing examples of `data`."""
  from ae_jax import tensorboard
  from ae_jax.train import learning_rate_schedule
  if workdir is None:
    raise ConfigError("train.tensorboard=true writes into the workdir; give a workdir or set "
                      "train.tensorboard=false")
  n = tensorboard.NUM_IMAGES
  return tensorboard.TrainingBoard(
      workdir / tensorboard.LOGDIR, Trained(cfg, model, None, scaler, input_shape),
      scaler.inverse_transform(data.x[:n]), None if data.y is None else data.y[:n],
      learning_rate=learning_rate_schedule(cfg, steps),
      can_sample=get_family(cfg.model.family).can_sample,
      images_every=cfg.train.get("tensorboard_images_every", 5), start_step=start)


def _eval_batch_size(cfg, num_devices: int) -> int:
  bs = max(cfg.train.batch_size, 256)
  return max(num_devices, (bs // num_devices) * num_devices)
