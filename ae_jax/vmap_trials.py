"""Many trials of one model trained together: the train step `vmap`ped over a trial axis.

Trials that differ only in values (learning rate, weight decay, beta, sparsity weight,
noise level, seed) share every shape, so their parameters, optimizer states and
hyperparameters stack along a leading trial axis T and one compiled call advances all of
them by one step. Each trial sees exactly what `ae_jax.fit.fit` would give it on its own:
the same initial parameters, data split, batch order and random draws (all from its
`seed`), the same step and the same evaluations, so its final parameters match a run one
by one to float tolerance.

Hyperparameters become traced per-trial arrays in two places:
- the learning rate and weight decay live in the optimizer state
  (`optax.inject_hyperparams`), one value per trial;
- objective weights (`objective.beta`, ...) are passed to the unchanged
  `ae_jax.train.train_step` inside a config copy whose fields hold the traced values.

`fit_trials(cfg, overrides)` trains one trial per overrides dict; `fit_seeds(cfg, n)` is
the same over n seeds, and `mean_std` / `format_mean_std` summarise a metric over them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from ae_jax import data as data_lib
from ae_jax import networks, results
from ae_jax.configs.overrides import with_overrides  # noqa: F401  (re-exported)
from ae_jax.errors import ConfigError
from ae_jax.families import FAMILIES, build_model, get_family, validate_config
from ae_jax.loop import run_steps
from ae_jax.prepare import prepare_data, total_steps, validate_train_config
from ae_jax.train import (INIT_SAMPLE, TrainState, eval_step, finalize_eval, init_params,
                          make_optimizer, train_step)
from ae_jax.trained import Trained, eval_batch_size

OPTIM_HPARAMS = ("optim.learning_rate", "optim.weight_decay")


def objective_hparams(family: str | None = None) -> tuple[str, ...]:
  """The objective fields that may be traced: those of `family` (its `Family.hparams`), or
  with None the union over every registered family, sorted by family name."""
  names = [family] if family is not None else FAMILIES.names()
  out = []
  for name in names:
    out += [k for k in get_family(name).hparams if k not in out]
  return tuple(out)


def vmappable() -> tuple[str, ...]:
  """Config keys whose values trials may differ in and still train together: the seed,
  the learning rate and weight decay, and every family's objective hparams (a field its
  family does not read is a constant to it)."""
  return ("seed", *OPTIM_HPARAMS, *objective_hparams())


def __getattr__(name):
  # OBJECTIVE_HPARAMS and VMAPPABLE as before, computed from the complete family registry.
  if name == "OBJECTIVE_HPARAMS":
    return objective_hparams()
  if name == "VMAPPABLE":
    return vmappable()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class TrialRun:
  """One trained trial: its overrides, the model as `fit` returns it (None if training
  stopped on an error), its validation data (already scaled; None without validation)
  and an error message if it diverged."""
  overrides: dict
  trained: Trained | None
  val: data_lib.ArrayData | None = None
  error: str | None = None

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.trained.config

  @property
  def val_loss(self) -> float:
    """The loss of the last evaluation (NaN without one or for a failed trial)."""
    if self.trained is None or self.error is not None:
      return math.nan
    evals = [r for r in self.trained.history if r["split"] == "eval"]
    return float(evals[-1]["loss"]) if evals else math.nan


def not_vmappable(keys) -> list[str]:
  """The keys among `keys` that change more than a value (shapes, code paths)."""
  return sorted(set(keys) - set(vmappable()))


def can_vmap(cfg: ml_collections.ConfigDict, keys) -> bool:
  """Whether trials over these config keys can train together under `vmap`."""
  return not not_vmappable(keys) and not cfg.train.patience


def traced_config(cfg: ml_collections.ConfigDict, hparams: dict[str, Any]) -> ml_collections.ConfigDict:
  """A copy of cfg, not type safe, whose objective fields hold the (traced) values in
  hparams {'objective.beta': array, ...}; the families read them like Python floats."""
  out = ml_collections.ConfigDict(cfg.to_dict(), type_safe=False)
  for key, value in hparams.items():
    section, field = key.split(".")
    out[section][field] = value
  return out


def trial_optimizer(cfg: ml_collections.ConfigDict, steps: int) -> optax.GradientTransformation:
  """cfg's optimizer with the learning rate and weight decay held in the optimizer state.

  The update is `make_optimizer`'s at learning rate 1 (any schedule shaped by it), scaled
  by the state's learning rate: `make_optimizer(cfg)`'s update up to float rounding, since
  every optimizer there is linear in its learning rate.
  """
  if cfg.optim.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate must be > 0, got {cfg.optim.learning_rate}")
  if cfg.optim.get("ema_decay", 0.0):
    raise ConfigError(f"optim.ema_decay={cfg.optim.ema_decay}: vmapped trials do not keep a "
                      "moving average of the parameters; set optim.ema_decay=0 or run the "
                      "trials one by one")

  def factory(learning_rate, weight_decay):
    unit = traced_config(cfg, {"optim.learning_rate": 1.0, "optim.weight_decay": weight_decay})
    return optax.chain(make_optimizer(unit, steps), optax.scale(learning_rate))

  return optax.inject_hyperparams(factory)(learning_rate=cfg.optim.learning_rate,
                                           weight_decay=cfg.optim.weight_decay)


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _column(cfgs, key) -> np.ndarray:
  section, field = key.split(".")
  return np.asarray([float(c[section][field]) for c in cfgs], np.float32)


class _Program:
  """The model, optimizer and compiled vmapped steps of one base config, kept across calls
  so that groups of trials of one sweep compile once."""

  def __init__(self, cfg, input_shape, steps):
    self.model = build_model(cfg, input_shape)
    self.family = get_family(cfg.model.family)
    self.tx = trial_optimizer(cfg, steps)
    model, family = self.model, self.family

    def one_step(state, batch, rng, hp):
      return train_step(state, batch, rng, model=model, family=family,
                        config=traced_config(cfg, hp))

    def one_eval(params, batch, rng, hp):
      return eval_step(params, batch, rng, model=model, family=family,
                       config=traced_config(cfg, hp))

    self.step = functools.cache(lambda axis: jax.jit(
        jax.vmap(one_step, in_axes=(0, axis, 0, 0)), donate_argnums=(0,)))
    self.eval = functools.cache(lambda axis: jax.jit(jax.vmap(one_eval, in_axes=(0, axis, 0, 0))))


_PROGRAMS: dict[str, _Program] = {}
_MAX_PROGRAMS = 8


def _program(cfg, input_shape, steps) -> _Program:
  """The program of cfg's model, objective and optimizer; the data, the seed and the
  vmappable values (traced per trial) do not enter it."""
  parts = json.loads(cfg.to_json())
  for name in (*OPTIM_HPARAMS, *objective_hparams(cfg.model.family)):
    section, field = name.split(".")
    parts[section].pop(field)
  key = json.dumps([{k: parts[k] for k in ("model", "objective", "optim")},
                    parts["train"]["nonfinite"], list(input_shape), steps], sort_keys=True)
  if key not in _PROGRAMS:
    while len(_PROGRAMS) >= _MAX_PROGRAMS:
      _PROGRAMS.pop(next(iter(_PROGRAMS)))
    _PROGRAMS[key] = _Program(cfg, input_shape, steps)
  return _PROGRAMS[key]


def _check(cfg, overrides):
  if not overrides:
    raise ConfigError("fit_trials needs at least one trial")
  keys = set().union(*(o.keys() for o in overrides))
  bad = not_vmappable(keys)
  if bad:
    raise ConfigError(f"trials over {', '.join(bad)} change shapes or code paths and cannot "
                      f"be vmapped; vmappable fields are: {', '.join(vmappable())}")
  if cfg.train.patience:
    raise ConfigError("train.patience (early stopping) stops each trial at its own step; "
                      "run such trials one by one, or set train.patience=0")
  return keys


def _index_shuffle():
  try:
    from grain._src.python.experimental.index_shuffle.python import (  # pylint: disable=g-import-not-at-top
        index_shuffle_module)
  except ImportError:
    return None
  return index_shuffle_module.index_shuffle


class _Stream:
  """The example indices of `make_train_loader(data, batch_size, seed)`'s batches on one
  process, computed an epoch at a time with grain's own index shuffle (per epoch seed
  seed + epoch), so no record passes through the loader. `ok` is False where this
  cannot be had or does not match the loader's sampler."""

  def __init__(self, num: int, batch_size: int, seed: int):
    self.num, self.batch_size, self.seed = num, batch_size, seed
    self.shuffle = _index_shuffle()
    self.position, self.epoch, self.order = 0, -1, np.zeros((0,), np.int64)
    self.ok = self.shuffle is not None and jax.process_count() == 1 and self._matches_sampler()

  def _epoch(self, epoch: int) -> np.ndarray:
    s = (self.seed + epoch) % 2**32
    return np.fromiter((self.shuffle(i, max_index=self.num - 1, seed=s, rounds=4)
                        for i in range(self.num)), np.int64, self.num)

  def _matches_sampler(self) -> bool:
    import grain.python as grain  # pylint: disable=g-import-not-at-top
    sampler = grain.IndexSampler(num_records=self.num, shard_options=grain.NoSharding(),
                                 shuffle=True, seed=self.seed, num_epochs=None)
    probe = list(range(min(self.num, 8))) + [self.num + i for i in range(min(self.num, 8))]
    want = [sampler[p].record_key for p in probe]
    got = [int(self._epoch(p // self.num)[p % self.num]) for p in probe]
    return want == got

  def next(self) -> np.ndarray:
    """The indices (batch_size,) of the next batch."""
    out = []
    while len(out) < self.batch_size:
      epoch, offset = divmod(self.position, self.num)
      if epoch != self.epoch:
        self.epoch, self.order = epoch, self._epoch(epoch)
      take = min(self.batch_size - len(out), self.num - offset)
      out.extend(self.order[offset:offset + take])
      self.position += take
    return np.asarray(out, np.int64)


class _Batches:
  """Training batches of every trial: one stream per distinct data seed.

  `next()` gives (batch, batch_axis): one shared batch (axis None) when all trials read
  the same stream, else a stack (T, B, ...) with each trial's own batch. Batches are
  gathered from the arrays by `_Stream` indices, or read from grain loaders where the
  indices cannot be computed.
  """

  def __init__(self, trains: list, trial_group: list[int], batch_size: int, seeds: list[int]):
    self.trains = trains
    self.trial_group = trial_group
    self.streams = [_Stream(len(t), batch_size, s) for t, s in zip(trains, seeds)]
    if not all(st.ok for st in self.streams):
      self.streams = None
      self.iters = [iter(data_lib.make_train_loader(t, batch_size=batch_size, seed=s))
                    for t, s in zip(trains, seeds)]

  def _batch(self, g: int) -> dict:
    from ae_jax.parallel import host_batch
    if self.streams is None:
      return host_batch(next(self.iters[g]))
    idx = self.streams[g].next()
    data = self.trains[g]
    batch = {"x": data.x[idx]}
    if data.y is not None:
      batch["y"] = data.y[idx]
    return batch

  def next(self):
    batches = [self._batch(g) for g in range(len(self.trains))]
    if len(batches) == 1:
      return batches[0], None
    return {k: np.stack([batches[g][k] for g in self.trial_group]) for k in batches[0]}, 0


def trial_state(cfg: ml_collections.ConfigDict, cfgs: Sequence[ml_collections.ConfigDict],
                input_shape: tuple, steps: int, data=None):
  """(program, state, rngs, hparams) of T trial configs that differ from cfg in values only.

  `program.step(batch_axis)(state, batch, rngs, hparams)` advances every trial by one
  step (batch shared with batch_axis=None, or (T, B, ...) with 0); `state` is a
  TrainState whose leaves have a leading trial axis T, each trial's parameters
  initialised as `fit` does from its seed (and, given `data`, a sample of the scaled
  training data, by the family's `init_from_data` with its config); `rngs` (T,) step keys; `hparams` the
  values of the family's traced objective fields {'objective.beta': (T,), ...}.
  """
  prog = _program(cfg, input_shape, steps)
  model = prog.model
  init_from_data = get_family(cfg.model.family).init_from_data
  params = []
  for c in cfgs:
    key = jax.random.key(c.seed)
    p = networks.initial_params(c, init_params(model, input_shape, key,
                                               conditional=bool(model.num_classes)), key)
    if data is not None and init_from_data is not None:
      p = init_from_data(p, data, c)
    params.append(p)
  params = _stack(params)
  opt_state = jax.vmap(prog.tx.init)(params)
  opt_state = opt_state._replace(hyperparams={
      **opt_state.hyperparams, "learning_rate": jnp.asarray(_column(cfgs, "optim.learning_rate")),
      "weight_decay": jnp.asarray(_column(cfgs, "optim.weight_decay"))})
  state = TrainState(step=jnp.zeros((len(cfgs),), jnp.int32), apply_fn=model.apply,
                     params=jax.tree.map(jnp.asarray, params), tx=prog.tx, opt_state=opt_state)
  rngs = jax.vmap(jax.random.key)(jnp.asarray([c.seed for c in cfgs]) + 1)
  hparams = {k: jnp.asarray(_column(cfgs, k)) for k in objective_hparams(cfg.model.family)}
  return prog, state, rngs, hparams


def fit_trials(cfg: ml_collections.ConfigDict, overrides: Sequence[dict], *, train_data=None,
               eval_data=None, progress: bool = False) -> list[TrialRun]:
  """Train one trial per overrides dict, all together in one compiled step.

  Args:
    cfg: the base config; each trial is `cfg` with its overrides, whose keys must be in
      `vmappable()`. `train.parallel` is ignored: the trials run under `jit(vmap)` on one
      device. `train.patience` must be 0.
    overrides: T dicts {'optim.learning_rate': 3e-3, 'seed': 1, ...}.
    train_data / eval_data: as for `fit`.
    progress: show a tqdm bar.

  Returns:
    T TrialRuns in the order of `overrides`. A trial whose loss or gradient stops being
    finite (past `train.max_skipped_steps` with train.nonfinite='skip') gets an error
    message instead of stopping the others.
  """
  overrides = [dict(o) for o in overrides]
  _check(cfg, overrides)
  cfgs = [with_overrides(cfg, o) for o in overrides]
  base = cfgs[0]
  get_family(base.model.family)

  groups: dict[int, int] = {}
  prepared = []
  for c in cfgs:
    if c.seed not in groups:
      groups[c.seed] = len(prepared)
      prepared.append(prepare_data(c, train_data, eval_data))
  trial_group = [groups[c.seed] for c in cfgs]
  train0, val0, _ = prepared[0]
  input_shape = tuple(train0.x.shape[1:])
  validate_train_config(base, len(train0), 1)
  build_model(base, input_shape)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for c in cfgs[1:]:
      validate_config(c, input_shape)
  for c in cfgs:
    if c.optim.learning_rate <= 0:
      raise ConfigError(f"optim.learning_rate must be > 0, got {c.optim.learning_rate}")
  steps = total_steps(base, len(train0))
  num_trials = len(cfgs)
  prog, state, rngs, hparams = trial_state(cfg, cfgs, input_shape, steps,
                                           data=train0.x[:INIT_SAMPLE])
  model, family = prog.model, prog.family
  seeds = jnp.asarray([c.seed for c in cfgs])

  batches = _Batches([p[0] for p in prepared], trial_group, base.train.batch_size, list(groups))
  vals = [p[1] for p in prepared]
  eval_rngs = jax.vmap(jax.random.key)(seeds + 1)
  eval_bs = eval_batch_size(base, 1)

  histories: list[list[dict]] = [[] for _ in cfgs]
  errors: list[str | None] = [None] * num_trials
  skipped = np.zeros(num_trials, int)

  def on_metrics(host_rows):
    """Record each trial's first failure; log the newest step's metrics of every trial."""
    for s, m in host_rows:
      for t in np.flatnonzero(np.asarray(m["finite"]) < 1):
        if errors[t] is not None:
          continue
        if base.train.nonfinite == "raise":
          errors[t] = (f"non-finite loss or gradient at step {s} (loss={float(m['loss'][t])}, "
                       f"grad_norm={float(m['grad_norm'][t])})")
        else:
          skipped[t] += 1
          if skipped[t] > base.train.max_skipped_steps:
            errors[t] = (f"{skipped[t]} non-finite steps were skipped (the last at step {s}), "
                         f"more than train.max_skipped_steps={base.train.max_skipped_steps}")
    s, m = host_rows[-1]
    now = round(time.time() - t0, 3)
    for t in range(num_trials):
      histories[t].append({"step": s, "split": "train", "time": now,
                           **{k: float(v[t]) for k, v in m.items()}})

  def evaluate(state):
    total, count = None, 0.0
    streams = [data_lib.eval_batches(v, eval_bs) for v in vals]
    for group_batches in zip(*streams):
      group_batches = [{k: v for k, v in b.items() if k != "index"} for b in group_batches]
      if len(group_batches) == 1:
        batch, axis = group_batches[0], None
      else:
        batch = {k: np.stack([group_batches[g][k] for g in trial_group])
                 for k in group_batches[0]}
        axis = 0
      sums, cnt = jax.device_get(prog.eval(axis)(state.params, batch, eval_rngs, hparams))
      total = sums if total is None else jax.tree.map(np.add, total, sums)
      count = count + np.asarray(cnt, np.float64)
    return [finalize_eval(family, cfgs[t], jax.tree.map(lambda v: v[t], total), count[t])
            for t in range(num_trials)]

  def on_eval(step, state) -> bool:
    now = round(time.time() - t0, 3)
    for t, ev in enumerate(evaluate(state)):
      histories[t].append({"step": step, "split": "eval", "time": now, **ev})
    return False

  bar = tqdm.tqdm(total=steps, disable=not progress, desc=f"train x{num_trials}",
                  dynamic_ncols=True)
  t0 = time.time()
  try:
    state, _ = run_steps(
        # A batch is (batch, its trial axis): shared (None) or one per trial (0).
        state, lambda st, ba: prog.step(ba[1])(st, ba[0], rngs, hparams), batches.next,
        start=0, stop_at=steps, last_step=steps, log_every=base.train.log_every,
        eval_every=base.train.eval_every, evaluates=val0 is not None, on_metrics=on_metrics,
        on_eval=on_eval, on_step=lambda: bar.update(1))
  finally:
    bar.close()

  final_params = jax.device_get(state.params)
  runs = []
  for t, c in enumerate(cfgs):
    params = jax.tree.map(lambda p: jnp.asarray(p[t]), final_params)
    g = trial_group[t]
    trained = Trained(c, model, params, prepared[g][2], input_shape, steps, history=histories[t])
    runs.append(TrialRun(overrides[t], trained, vals[g], errors[t]))
  return runs


def fit_seeds(cfg: ml_collections.ConfigDict, num_seeds: int, *, train_data=None,
              eval_data=None, progress: bool = False) -> list[TrialRun]:
  """`cfg` trained with seeds cfg.seed, cfg.seed + 1, ..., all at once (see fit_trials)."""
  if num_seeds < 1:
    raise ConfigError(f"num_seeds must be >= 1, got {num_seeds}")
  return fit_trials(cfg, [{"seed": cfg.seed + i} for i in range(num_seeds)],
                    train_data=train_data, eval_data=eval_data, progress=progress)


def reconstruction_errors(runs: Sequence[TrialRun], x, cond=None, chunk: int = 1024) -> np.ndarray:
  """Per-example mean squared reconstruction error (T, N) of every run on x (N, ...).

  x is in the model's input space (already scaled) and shared by all runs, or a list of
  T such arrays, one per run; the runs must share one model (as `fit_trials` gives).
  """
  model = runs[0].trained.model
  x_axis = 0 if isinstance(x, (list, tuple)) else None
  xs = np.stack([np.asarray(v, np.float32) for v in x]) if x_axis == 0 else (
      np.asarray(x, np.float32))
  params = jax.tree.map(lambda *p: jnp.stack(p), *[r.trained.params for r in runs])
  fn = _reconstruct_fn(model, x_axis)
  n = xs.shape[1] if x_axis == 0 else xs.shape[0]
  size = min(chunk, n)
  out = []
  for start in range(0, n, size):
    stop = min(start + size, n)
    idx = np.minimum(np.arange(start, start + size), n - 1)
    xb = xs[:, idx] if x_axis == 0 else xs[idx]
    cb = None if cond is None else np.asarray(cond)[idx]
    out.append(np.asarray(fn(params, xb, cb))[:, :stop - start])
  return np.concatenate(out, axis=1) if out else np.zeros((len(runs), 0), np.float32)


_RECONSTRUCT: dict[tuple, tuple] = {}


def _reconstruct_fn(model, x_axis):
  """jit(vmap) of the per-example squared error over stacked params, one per model."""
  key = (id(model), x_axis)
  if key not in _RECONSTRUCT:
    while len(_RECONSTRUCT) >= 2 * _MAX_PROGRAMS:
      _RECONSTRUCT.pop(next(iter(_RECONSTRUCT)))

    def one(p, xb, cb):
      x_hat = model.apply(p, xb, cb, method=model.reconstruct)
      return jnp.mean(jnp.square(x_hat - xb).reshape(xb.shape[0], -1), axis=-1)

    _RECONSTRUCT[key] = (model, jax.jit(jax.vmap(one, in_axes=(0, x_axis, None))))
  return _RECONSTRUCT[key][1]


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation over seeds (`results.mean_std` with ddof=1; 0 for
  one value) ignoring NaNs."""
  return results.mean_std(values, ddof=1)


def format_mean_std(values, digits: int = 4) -> str:
  """'mean ± std' over seeds (sample std, ddof=1) with `digits` significant digits; one
  value prints alone."""
  return results.format_mean_std(values, ddof=1, digits=digits)
