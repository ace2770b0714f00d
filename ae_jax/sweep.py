"""Hyperparameter sweeps: grid, random and Bayesian (TPE) search over config fields.

A search space maps dotted config keys to values:
- a list is a set of values: the grid's axis (grid mode) or a uniform choice (random/tpe);
- `uniform(lo, hi)`, `loguniform(lo, hi)` and `choice([...])` are distributions for random
  search and TPE (a sampled value is rounded when the config field is an int).

In JSON (`--space space.json`, or one `--param key=JSON` flag per key):
`{"optim.learning_rate": {"loguniform": [1e-4, 1e-2]}, "model.latent_dim": [4, 8, 16]}`.

Every trial (a point of the space, over `seeds` seeds) appends one JSON line to
`OUT/trials.jsonl` (overrides, metric, steps, wall time), keyed by a stable hash of its
overrides, so a stopped sweep resumes without redoing finished trials. At the end the
sweep writes `table.md` (sorted, best first), `metric_vs_top_param.png`, `sweep.json` and
`best_config.json`, which `ae-jax train --config OUT/best_config.json` accepts. When every
swept key is a value that `ae_jax.vmap_trials` can vectorise (learning rate, weight decay,
beta, sparsity weight, noise level, seed), trials train together in one compiled step.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import pathlib
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from ae_jax import vmap_trials
from ae_jax.configs.overrides import get_value, has_key, with_overrides
from ae_jax.errors import ConfigError, DataError

TRIALS_FILE = "trials.jsonl"
SPEC_FILE = "sweep_spec.json"
MODES = ("grid", "random", "tpe")
METRICS = {"val_loss": "min", "recon_mse": "min", "roc_auc": "max"}
OPTUNA_HINT = ('mode "tpe" (Bayesian search) needs optuna: pip install -e ".[sweep]"; '
               'grid and random search work without it')


# ---- search spaces -------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Uniform:
  """Uniform on [low, high]."""
  low: float
  high: float

  def sample(self, rng: np.random.Generator) -> float:
    return float(rng.uniform(self.low, self.high))

  def to_json(self) -> dict:
    return {"uniform": [self.low, self.high]}


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """log-uniform on [low, high], low > 0: as likely in [1e-4, 1e-3] as in [1e-3, 1e-2]."""
  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low <= self.high:
      raise ConfigError(f"loguniform needs 0 < low <= high, got [{self.low}, {self.high}]")

  def sample(self, rng: np.random.Generator) -> float:
    return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

  def to_json(self) -> dict:
    return {"loguniform": [self.low, self.high]}


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `values`, each equally likely."""
  values: tuple

  def sample(self, rng: np.random.Generator):
    return self.values[int(rng.integers(len(self.values)))]

  def to_json(self) -> dict:
    return {"choice": list(self.values)}


def uniform(low: float, high: float) -> Uniform:
  return Uniform(float(low), float(high))


def loguniform(low: float, high: float) -> LogUniform:
  return LogUniform(float(low), float(high))


def choice(values: Sequence) -> Choice:
  if not values:
    raise ConfigError("choice needs at least one value")
  return Choice(tuple(values))


DISTRIBUTIONS = {"uniform": uniform, "loguniform": loguniform, "choice": choice}
Space = dict[str, Any]


def parse_entry(key: str, spec) -> Any:
  """One JSON entry: a list (values), a one-key dict naming a distribution, or a scalar."""
  if isinstance(spec, (list, tuple)):
    if not spec:
      raise ConfigError(f"search space {key!r}: the list of values is empty")
    return list(spec)
  if isinstance(spec, dict):
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
      raise ConfigError(f"search space {key!r}: a distribution is one of "
                        f"{{{', '.join(repr(d) + ': ...' for d in DISTRIBUTIONS)}}}, got {spec!r}")
    name, args = next(iter(spec.items()))
    if name == "choice":
      return choice(args)
    if not isinstance(args, (list, tuple)) or len(args) != 2:
      raise ConfigError(f"search space {key!r}: {name} takes [low, high], got {args!r}")
    if args[0] > args[1]:
      raise ConfigError(f"search space {key!r}: {name} needs low <= high, got {args!r}")
    return DISTRIBUTIONS[name](*args)
  if isinstance(spec, (Uniform, LogUniform, Choice)):
    return spec
  return [spec]


def parse_space(spec: dict) -> Space:
  """A space from its JSON form {key: [values] | {"uniform"|"loguniform": [lo, hi]} |
  {"choice": [values]} | value}; Python objects (`uniform(...)`, lists) pass through."""
  if not isinstance(spec, dict) or not spec:
    raise ConfigError("a search space is a non-empty JSON object {config key: values}")
  return {key: parse_entry(key, value) for key, value in spec.items()}


def load_space(path) -> Space:
  path = pathlib.Path(path)
  try:
    return parse_space(json.loads(path.read_text()))
  except FileNotFoundError:
    raise ConfigError(f"search space file {path} does not exist") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"search space file {path} is not valid JSON: {e}") from None


def parse_param(text: str) -> tuple[str, Any]:
  """`key=JSON` (e.g. `optim.learning_rate=[1e-3,3e-3]`,
  `model.latent_dim={"loguniform":[2,32]}`) or `key=v1,v2,...` into (key, entry)."""
  if "=" not in text:
    raise ConfigError(f"--param {text!r}: write KEY=VALUES, e.g. optim.learning_rate=[1e-3,3e-3]")
  key, value = text.split("=", 1)
  try:
    spec = json.loads(value)
  except json.JSONDecodeError:
    spec = [_literal(v) for v in value.split(",")]
  return key.strip(), parse_entry(key.strip(), spec)


def _literal(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text.strip()


def space_to_json(space: Space) -> dict:
  return {k: (v if isinstance(v, list) else v.to_json()) for k, v in space.items()}


def _cast(cfg, key: str, value):
  """A sampled value in the type of the config field: ints are rounded."""
  current = get_value(cfg, key)
  if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
    return int(round(value))
  return value


def _sample(cfg, key, dim, rng):
  if isinstance(dim, list):
    return dim[int(rng.integers(len(dim)))]
  value = _cast(cfg, key, dim.sample(rng))
  if isinstance(dim, (Uniform, LogUniform)) and isinstance(value, int):
    value = min(max(value, math.ceil(dim.low)), math.floor(dim.high))
  return value


def grid_points(space: Space) -> list[dict]:
  """Every combination of the lists, in the order the keys are given (last varies fastest)."""
  axes = []
  for key, dim in space.items():
    if isinstance(dim, Choice):
      dim = list(dim.values)
    if not isinstance(dim, list):
      raise ConfigError(f"grid mode needs a list of values for {key!r}, not {dim.to_json()}; "
                        "give values or use --mode random")
    axes.append(dim)
  return [dict(zip(space, combo)) for combo in itertools.product(*axes)]


def random_points(cfg, space: Space, num: int, seed: int = 0) -> list[dict]:
  """`num` independent draws from the space; the same seed gives the same points."""
  rng = np.random.default_rng(seed)
  return [{k: _sample(cfg, k, dim, rng) for k, dim in space.items()} for _ in range(num)]


def _plain(value):
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def trial_key(overrides: dict, seeds: int = 1) -> str:
  """A stable 12-hex-digit hash of a trial's overrides (and its seed count when > 1)."""
  body = {"overrides": {k: _plain(v) for k, v in overrides.items()}}
  if seeds > 1:
    body["seeds"] = seeds
  text = json.dumps(body, sort_keys=True, allow_nan=True)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def check_space(cfg, space: Space) -> None:
  """Every key must name a config field that accepts each of the space's values."""
  for key, dim in space.items():
    if isinstance(dim, (list, Choice)):
      values = list(dim) if isinstance(dim, list) else list(dim.values)
    elif has_key(cfg, key):
      values = [_cast(cfg, key, dim.low), _cast(cfg, key, dim.high)]
    else:
      values = [dim.low]
    for value in values:
      with_overrides(cfg, {key: value})


# ---- metrics ---------------------------------------------------------------------------

def anomaly_labels(y, normal_class=None) -> np.ndarray:
  """0/1 labels, 1 = anomaly: y != normal_class, or y itself when it is already 0/1."""
  if y is None:
    raise DataError("metric 'roc_auc' needs labelled evaluation data (eval_data/--eval-data "
                    "with labels)")
  y = np.asarray(y)
  if normal_class is not None:
    return (y != normal_class).astype(np.int32)
  if not set(np.unique(y).tolist()) <= {0, 1}:
    raise ConfigError(f"metric 'roc_auc' needs 0/1 labels (1 = anomaly) or normal_class; "
                      f"the labels are {sorted(np.unique(y).tolist())[:10]}")
  return y.astype(np.int32)


def score_runs(runs: Sequence[vmap_trials.TrialRun], metric: str, metric_data=None,
               normal_class=None) -> list[dict[str, float]]:
  """{'val_loss', 'recon_mse'[, 'roc_auc']} of each run; NaN for a failed run.

  recon_mse and roc_auc are computed on `metric_data` (data space, scaled by each run's
  scaler) or else on each run's validation split; the errors are measured in the model's
  input space (the data space when data.scaling='none'). roc_auc scores each example by
  its reconstruction error.
  """
  out = [{"val_loss": r.val_loss} for r in runs]
  ok = [i for i, r in enumerate(runs) if r.error is None]
  if metric_data is not None:
    xs = [runs[i].trained.scaler.transform(np.asarray(metric_data.x, np.float32)) for i in ok]
    ys = [metric_data.y] * len(ok)
  else:
    xs = [None if runs[i].val is None else runs[i].val.x for i in ok]
    ys = [None if runs[i].val is None else runs[i].val.y for i in ok]
  for row in out:
    row["recon_mse"] = math.nan
    if metric == "roc_auc" or normal_class is not None:
      row["roc_auc"] = math.nan
  if metric == "val_loss" and any(r.val is None for r in runs) and metric_data is None:
    raise ConfigError("metric 'val_loss' needs validation data: set data.val_fraction > 0, "
                      "data.eval_name or pass eval_data")
  if not ok or any(x is None for x in xs):
    return out
  model = runs[ok[0]].trained.model
  cond = ys[0] if getattr(model, "num_classes", 0) else None
  errors = vmap_trials.reconstruction_errors([runs[i] for i in ok], xs, cond)
  for j, i in enumerate(ok):
    out[i]["recon_mse"] = float(np.mean(errors[j]))
    if "roc_auc" in out[i]:
      from sklearn.metrics import roc_auc_score
      labels = anomaly_labels(ys[j], normal_class)
      if len(np.unique(labels)) < 2:
        raise DataError("metric 'roc_auc' needs both normal and anomalous examples in the "
                        "evaluation data")
      out[i]["roc_auc"] = float(roc_auc_score(labels, errors[j]))
  return out


def _better(direction: str) -> Callable[[float], float]:
  """Sort key: best first, NaN (failed) last."""
  sign = 1.0 if direction == "min" else -1.0
  return lambda v: math.inf if v is None or not math.isfinite(v) else sign * v


# ---- running trials ----------------------------------------------------------------------

@dataclasses.dataclass
class _Context:
  cfg: ml_collections.ConfigDict
  metric: str
  seeds: int
  vectorise: bool
  train_data: Any
  eval_data: Any
  metric_data: Any
  normal_class: Any


def _seed_overrides(ctx: _Context, point: dict) -> list[dict]:
  base_seed = point.get("seed", ctx.cfg.seed)
  return [{**point, "seed": base_seed + s} if ctx.seeds > 1 else dict(point)
          for s in range(ctx.seeds)]


def run_trial(cfg: ml_collections.ConfigDict, overrides: dict, *, train_data=None,
              eval_data=None) -> vmap_trials.TrialRun:
  """One trial on its own through `fit` (the path of trials that cannot be vmapped)."""
  from ae_jax.errors import NonFiniteError
  from ae_jax.fit import fit, prepare_data
  cfg = with_overrides(cfg, overrides)
  try:
    trained = fit(cfg, None, train_data=train_data, eval_data=eval_data, progress=False)
  except NonFiniteError as e:
    return vmap_trials.TrialRun(overrides, None, None, str(e))
  _, val, _ = prepare_data(cfg, train_data, eval_data)
  return vmap_trials.TrialRun(overrides, trained, val)


def _run_point_seeds(ctx: _Context, point: dict) -> list[vmap_trials.TrialRun]:
  """One point over its seeds, one by one (seeds vmapped together where they can be)."""
  trials = _seed_overrides(ctx, point)
  if ctx.seeds > 1 and ctx.vectorise is not False and not ctx.cfg.train.patience:
    return vmap_trials.fit_trials(with_overrides(ctx.cfg, {
        k: v for k, v in point.items() if k != "seed"}), [{"seed": t["seed"]} for t in trials],
        train_data=ctx.train_data, eval_data=ctx.eval_data)
  return [run_trial(ctx.cfg, t, train_data=ctx.train_data, eval_data=ctx.eval_data)
          for t in trials]


def _rows_for(ctx: _Context, points: list[dict], runs: list, wall: float, vectorised: bool,
              errors: list[str | None] | None = None) -> list[dict]:
  """One row per point from its seeds' runs (runs are point-major, `seeds` per point)."""
  rows = []
  per_trial = wall / max(len(points), 1)
  for p, point in enumerate(points):
    point_runs = runs[p * ctx.seeds:(p + 1) * ctx.seeds]
    error = errors[p] if errors else next((r.error for r in point_runs if r.error), None)
    scores = ([{"val_loss": math.nan, "recon_mse": math.nan}] * ctx.seeds if error and errors
              else score_runs(point_runs, ctx.metric, ctx.metric_data, ctx.normal_class))
    values = [s.get(ctx.metric, math.nan) for s in scores]
    mean, std = vmap_trials.mean_std(values) if error is None else (math.nan, math.nan)
    names = sorted({k for s in scores for k in s})
    rows.append({
        "key": trial_key(point, ctx.seeds),
        "overrides": {k: _plain(v) for k, v in point.items()},
        "metric": ctx.metric, "value": mean, "std": std, "values": values,
        "metrics": {n: vmap_trials.mean_std([s.get(n, math.nan) for s in scores])[0]
                    for n in names},
        "seeds": [t.get("seed", ctx.cfg.seed) for t in _seed_overrides(ctx, point)],
        "steps": max((r.trained.step for r in point_runs if r.trained), default=0),
        "wall_s": round(per_trial, 4), "group_wall_s": round(wall, 4),
        "group_size": len(points), "vectorised": vectorised,
        "status": "ok" if error is None else "failed", "error": error,
    })
  return rows


def _run_group(ctx: _Context, points: list[dict], vectorised: bool) -> list[dict]:
  """Train and score a group of points: together under vmap, or one by one."""
  t0 = time.time()
  if vectorised:
    trials = [t for p in points for t in _seed_overrides(ctx, p)]
    try:
      runs = vmap_trials.fit_trials(ctx.cfg, trials, train_data=ctx.train_data,
                                    eval_data=ctx.eval_data)
    except (ConfigError, DataError):
      if len(points) == 1:
        raise
      # An invalid value in one point must not sink the others: run them apart.
      return [row for p in points for row in _run_point_safe(ctx, p, True)]
    return _rows_for(ctx, points, runs, time.time() - t0, True)
  rows = []
  for point in points:
    t1 = time.time()
    try:
      runs = _run_point_seeds(ctx, point)
    except (ConfigError, DataError) as e:
      rows += _rows_for(ctx, [point], [], time.time() - t1, False, errors=[str(e)])
      continue
    rows += _rows_for(ctx, [point], runs, time.time() - t1, False)
  return rows


def _run_point_safe(ctx, point, vectorised):
  """One point; a value its config rejects becomes a failed row, not a stopped sweep."""
  if not vectorised:
    return _run_group(ctx, [point], False)
  t0 = time.time()
  try:
    runs = vmap_trials.fit_trials(ctx.cfg, _seed_overrides(ctx, point),
                                  train_data=ctx.train_data, eval_data=ctx.eval_data)
  except (ConfigError, DataError) as e:
    return _rows_for(ctx, [point], [], time.time() - t0, True, errors=[str(e)])
  return _rows_for(ctx, [point], runs, time.time() - t0, True)


# ---- the sweep ---------------------------------------------------------------------------

@dataclasses.dataclass
class SweepResult:
  """All rows (finished trials, best first), the best row and config, and what was written."""
  rows: list[dict]
  best: dict | None
  best_config: ml_collections.ConfigDict | None
  importance: dict[str, float]
  out: pathlib.Path
  ran: int
  stopped_by_time: bool
  vectorised: bool
  paths: dict[str, pathlib.Path]


def read_rows(out) -> list[dict]:
  """The finished trials recorded in OUT/trials.jsonl (a torn last line is ignored)."""
  path = pathlib.Path(out) / TRIALS_FILE
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def _append(out: pathlib.Path, rows: list[dict]) -> None:
  path = out / TRIALS_FILE
  torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
  with path.open("a") as f:
    if torn:
      f.write("\n")
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _check_spec(out: pathlib.Path, cfg, metric: str, space: Space) -> None:
  spec = {"base_config": json.loads(cfg.to_json()), "metric": metric,
          "space": space_to_json(space)}
  path = out / SPEC_FILE
  if path.exists():
    old = json.loads(path.read_text())
    for name in ("base_config", "metric"):
      if old.get(name) != spec[name]:
        raise ConfigError(f"{out} holds a sweep with another {name.replace('_', ' ')}; "
                          "resume with the same config and metric, or use a new --out")
  path.write_text(json.dumps(spec, indent=2))


def sweep(cfg: ml_collections.ConfigDict, space: Space | dict, *, out, metric: str = "val_loss",
          direction: str | None = None, mode: str = "grid", trials: int | None = None,
          timeout_s: float | None = None, seeds: int = 1, seed: int = 0,
          vectorise: bool | None = None, chunk: int = 64, tpe_batch: int = 1,
          train_data=None, eval_data=None, metric_data=None, normal_class=None,
          log: Callable[[str], None] | None = print) -> SweepResult:
  """Search `space` around the base config `cfg` and record every trial under `out`.

  Args:
    cfg: the base config; each trial is cfg with one point of the space.
    space: {dotted key: [values] | uniform/loguniform/choice}, or its JSON form.
    out: the sweep directory; trials already in out/trials.jsonl are not run again.
    metric: 'val_loss' (the last evaluation's loss), 'recon_mse' or 'roc_auc' (on
      `metric_data`, else the validation split; roc_auc needs labels).
    direction: 'min' or 'max'; default: the metric's natural one.
    mode: 'grid' (every combination of the lists; `trials` caps how many, first first),
      'random' (`trials` draws, default 20) or 'tpe' (optuna's TPE, `trials` in all).
    timeout_s: start no new trial after this many seconds of this call.
    seeds: run each point over this many seeds (cfg.seed + i); the value is their mean.
    seed: seed of the random and TPE samplers.
    vectorise: True/False/None (auto): train trials together with `vmap_trials` when all
      swept keys are vmappable; `chunk` points go into one compiled group.
    tpe_batch: points TPE proposes before it sees their results (a vmapped group).
    train_data / eval_data: as for `fit`; metric_data: ArrayData for recon_mse/roc_auc.
    normal_class: with roc_auc, the label of normal examples (others are anomalies).
    log: where progress lines go (None: silent).
  """
  if mode not in MODES:
    raise ConfigError(f"unknown sweep mode {mode!r}; valid: {', '.join(MODES)}")
  if metric not in METRICS:
    raise ConfigError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}")
  direction = direction or METRICS[metric]
  if direction not in ("min", "max"):
    raise ConfigError(f"direction must be 'min' or 'max', got {direction!r}")
  if seeds < 1:
    raise ConfigError(f"seeds must be >= 1, got {seeds}")
  if seeds > 1 and "seed" in space:
    raise ConfigError("with seeds > 1 the seed is not a search dimension; drop 'seed' from "
                      "the space")
  space = parse_space(space)
  check_space(cfg, space)
  if metric == "val_loss" and eval_data is None and not cfg.data.eval_name and not (
      cfg.data.val_fraction > 0):
    raise ConfigError("metric 'val_loss' needs validation data: set data.val_fraction > 0, "
                      "data.eval_name or pass eval_data")
  if metric == "roc_auc" and metric_data is not None:
    if len(np.unique(anomaly_labels(metric_data.y, normal_class))) < 2:
      raise DataError("metric 'roc_auc' needs both normal and anomalous examples in the "
                      "evaluation data")
  optuna = _optuna() if mode == "tpe" else None
  log = log or (lambda _: None)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  _check_spec(out, cfg, metric, space)
  can = vmap_trials.can_vmap(cfg, space.keys())
  vectorised = can if vectorise is None else bool(vectorise)
  if vectorised and not can:
    raise ConfigError(f"cannot vectorise trials over {', '.join(space)}: "
                      f"{', '.join(vmap_trials.not_vmappable(space)) or 'train.patience > 0'}; "
                      f"vmappable fields are: {', '.join(vmap_trials.VMAPPABLE)}")
  ctx = _Context(cfg, metric, seeds, vectorised, train_data, eval_data, metric_data,
                 normal_class)
  done = {r["key"]: r for r in read_rows(out)}
  start = time.time()
  deadline = math.inf if timeout_s is None else start + timeout_s
  ran, stopped = 0, False

  def report(rows, total):
    nonlocal ran
    _append(out, rows)
    for row in rows:
      done[row["key"]] = row
      ran += 1
      text = " ".join(f"{k}={_short(v)}" for k, v in row["overrides"].items())
      value = (f"{row['value']:.5g}" + (f" ± {row['std']:.2g}" if seeds > 1 else "")
               if row["status"] == "ok" else f"failed ({(row['error'] or '')[:80]})")
      log(f"[{len(done)}/{total}] {text}: {metric} {value} ({row['wall_s']:.2f} s"
          f"{', vectorised' if row['vectorised'] else ''})")

  if mode in ("grid", "random"):
    points = (grid_points(space) if mode == "grid"
              else random_points(cfg, space, trials if trials is not None else 20, seed))
    if mode == "grid" and trials is not None:
      points = points[:trials]
    keys = [trial_key(p, seeds) for p in points]
    pending = list({k: p for p, k in zip(points, keys) if k not in done}.values())
    finished = len(set(keys) & done.keys())
    if finished:
      log(f"resuming {out}: {finished} of {len(set(keys))} trials already done")
    step = max(1, chunk) if vectorised else 1
    for i in range(0, len(pending), step):
      if time.time() >= deadline:
        stopped = True
        break
      group = pending[i:i + step]
      rows = _run_group(ctx, group, vectorised) if len(group) > 1 else _run_point_safe(
          ctx, group[0], vectorised)
      report(rows, len(points))
    wanted = set(keys)
  else:
    total = trials if trials is not None else 20
    study = _tpe_study(optuna, cfg, space, direction, seed, done.values(), seeds)
    wanted = {r["key"] for r in done.values()}
    repeats = 0
    while len(wanted) < total and repeats < 100:
      if time.time() >= deadline:
        stopped = True
        break
      asked = [study.ask(_distributions(optuna, cfg, space))
               for _ in range(min(max(1, tpe_batch), total - len(wanted)))]
      points = [_from_optuna(cfg, space, t.params) for t in asked]
      fresh = [(t, p) for t, p in zip(asked, points) if trial_key(p, seeds) not in done]
      for t, p in zip(asked, points):
        if trial_key(p, seeds) in done:
          _tell(optuna, study, t, done[trial_key(p, seeds)])
          wanted.add(trial_key(p, seeds))
      if not fresh:
        repeats += 1
        continue
      repeats = 0
      group = [p for _, p in fresh]
      rows = (_run_group(ctx, group, vectorised) if len(group) > 1
              else _run_point_safe(ctx, group[0], vectorised))
      report(rows, total)
      for (t, _), row in zip(fresh, rows):
        _tell(optuna, study, t, row)
        wanted.add(row["key"])

  rows = [done[k] for k in done if k in wanted]
  result = _finish(cfg, space, rows, out, metric, direction, mode, seeds, ran, stopped,
                   vectorised, time.time() - start)
  if result.best is not None:
    log(f"best {metric}: {result.best['value']:.5g} with "
        + " ".join(f"{k}={_short(v)}" for k, v in result.best["overrides"].items()))
  for name, path in result.paths.items():
    log(f"{name}: {path}")
  return result


def _short(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- TPE through optuna -------------------------------------------------------------------

def _optuna():
  try:
    import optuna  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ConfigError(OPTUNA_HINT) from None
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna


def _int_field(cfg, key) -> bool:
  current = get_value(cfg, key)
  return isinstance(current, int) and not isinstance(current, bool)


def _distributions(optuna, cfg, space: Space) -> dict:
  d = optuna.distributions
  out = {}
  for key, dim in space.items():
    if isinstance(dim, (list, Choice)):
      values = dim if isinstance(dim, list) else dim.values
      out[key] = d.CategoricalDistribution(list(range(len(values))))
    elif _int_field(cfg, key):
      out[key] = d.IntDistribution(math.ceil(dim.low), math.floor(dim.high),
                                   log=isinstance(dim, LogUniform))
    else:
      out[key] = d.FloatDistribution(dim.low, dim.high, log=isinstance(dim, LogUniform))
  return out


def _from_optuna(cfg, space, params: dict) -> dict:
  point = {}
  for key, dim in space.items():
    if isinstance(dim, (list, Choice)):
      values = dim if isinstance(dim, list) else dim.values
      point[key] = values[params[key]]
    else:
      point[key] = _cast(cfg, key, params[key])
  return point


def _to_optuna(space, point: dict) -> dict | None:
  params = {}
  for key, dim in space.items():
    if key not in point:
      return None
    if isinstance(dim, (list, Choice)):
      values = [_plain(v) for v in (dim if isinstance(dim, list) else dim.values)]
      if _plain(point[key]) not in values:
        return None
      params[key] = values.index(_plain(point[key]))
    else:
      if not dim.low <= point[key] <= dim.high:
        return None
      params[key] = point[key]
  return params


def _tell(optuna, study, trial, row):
  if row["status"] == "ok" and row["value"] is not None and math.isfinite(row["value"]):
    study.tell(trial, row["value"])
  else:
    study.tell(trial, state=optuna.trial.TrialState.FAIL)


def _tpe_study(optuna, cfg, space, direction, seed, rows, seeds):
  study = optuna.create_study(
      direction="minimize" if direction == "min" else "maximize",
      sampler=optuna.samplers.TPESampler(seed=seed))
  dists = _distributions(optuna, cfg, space)
  for row in rows:
    params = _to_optuna(space, row["overrides"])
    if params is None:
      continue
    ok = row["status"] == "ok" and row["value"] is not None and math.isfinite(row["value"])
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=dists, value=row["value"] if ok else None,
        state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))
  return study


# ---- summary: table, importance, figure, best config ------------------------------------

def importance(rows: list[dict], space: Space) -> dict[str, float]:
  """How much each swept key explains the metric, in [0, 1], over the finished trials.

  Keys swept over a list of values: the share of the metric's variance between the
  groups of equal value (eta squared). Keys drawn from a uniform or log-uniform: the
  squared Spearman rank correlation with the metric.
  """
  ok = [r for r in rows if r["status"] == "ok" and math.isfinite(r["value"])]
  y = np.asarray([r["value"] for r in ok], np.float64)
  out = {}
  for key, dim in space.items():
    values = [json.dumps(r["overrides"].get(key)) for r in ok]
    if len(ok) < 2 or len(set(values)) < 2 or np.var(y) == 0:
      out[key] = 0.0
      continue
    if isinstance(dim, (list, Choice)):
      groups = {}
      for v, target in zip(values, y):
        groups.setdefault(v, []).append(target)
      between = sum(len(g) * (np.mean(g) - y.mean()) ** 2 for g in groups.values())
      out[key] = float(between / (np.var(y) * len(y)))
    else:
      from scipy.stats import spearmanr
      x = np.asarray([r["overrides"][key] for r in ok], np.float64)
      rho = spearmanr(x, y).statistic
      out[key] = 0.0 if not np.isfinite(rho) else float(rho ** 2)
  return out


def markdown_table(rows: list[dict], space_keys: Sequence[str], metric: str, seeds: int) -> str:
  """Rows sorted best first: rank, key, swept values, metric (mean ± std over seeds), the
  other metrics, steps, wall time and status."""
  others = sorted({k for r in rows for k in r.get("metrics", {})} - {metric})
  head = ["rank", *space_keys, metric + (f" (mean ± std, {seeds} seeds)" if seeds > 1 else ""),
          *others, "steps", "wall s", "status", "trial"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for i, r in enumerate(rows, 1):
    if r["status"] == "ok":
      value = (vmap_trials.format_mean_std(r["values"]) if seeds > 1 else f"{r['value']:.5g}")
    else:
      value = "failed"
    cells = [str(i), *(_short(r["overrides"].get(k)) for k in space_keys), value,
             *(_fmt(r.get("metrics", {}).get(k)) for k in others), str(r["steps"]),
             f"{r['wall_s']:.2f}" + (" (v)" if r.get("vectorised") else ""), r["status"],
             f"`{r['key']}`"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _fmt(v) -> str:
  return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def metric_figure(rows, space, key: str, metric: str, path, second: str | None = None):
  """The metric against `key` (one point per trial, ± std over seeds), best marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ok = [r for r in rows if r["status"] == "ok" and math.isfinite(r["value"])]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  raw = [r["overrides"].get(key) for r in ok]
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
  if numeric:
    x = np.asarray(raw, np.float64)
    positive = bool(np.all(x > 0))
    if isinstance(space[key], LogUniform) or (positive and x.max() / max(x.min(), 1e-300) >= 10):
      ax.set_xscale("log")
  else:
    labels = sorted({json.dumps(v) for v in raw})
    x = np.asarray([labels.index(json.dumps(v)) for v in raw], np.float64)
    ax.set_xticks(range(len(labels)), [lab.strip('"') for lab in labels])
  y = np.asarray([r["value"] for r in ok])
  err = np.asarray([r.get("std") or 0.0 for r in ok])
  color = None
  if second is not None and ok:
    sv = [r["overrides"].get(second) for r in ok]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sv):
      color = np.asarray(sv, np.float64)
      if np.all(color > 0) and color.max() / color.min() >= 10:
        color = np.log10(color)
        second = f"log10 {second}"
    else:
      names = sorted({json.dumps(v) for v in sv})
      color = np.asarray([names.index(json.dumps(v)) for v in sv], np.float64)
  if np.any(err > 0):
    ax.errorbar(x, y, yerr=err, fmt="none", ecolor="0.6", capsize=2, zorder=1)
  if color is not None:
    sc = ax.scatter(x, y, c=color, cmap="viridis", s=28, zorder=2)
    fig.colorbar(sc, ax=ax, label=second)
  else:
    ax.scatter(x, y, s=28, zorder=2)
  if len(y):
    best = int(np.argmin(y) if METRICS.get(metric, "min") == "min" else np.argmax(y))
    ax.scatter([x[best]], [y[best]], marker="*", s=260, facecolors="none", edgecolors="red",
               linewidths=1.5, zorder=3, label="best")
    ax.legend(loc="best")
  ax.set_xlabel(key)
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} vs {key} ({len(ok)} trials)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return pathlib.Path(path)


def _finish(cfg, space, rows, out, metric, direction, mode, seeds, ran, stopped, vectorised,
            wall) -> SweepResult:
  rows = sorted(rows, key=lambda r: _better(direction)(r["value"]))
  best = rows[0] if rows and rows[0]["status"] == "ok" and math.isfinite(rows[0]["value"]) \
      else None
  imp = importance(rows, space)
  ranked = sorted(space, key=lambda k: -imp.get(k, 0.0))
  paths = {}
  table = out / "table.md"
  table.write_text(f"Sweep of {metric} ({direction}imise), mode {mode}, {len(rows)} trials"
                   + (f", {seeds} seeds each" if seeds > 1 else "") + ".\n\n"
                   + markdown_table(rows, list(space), metric, seeds))
  paths["table"] = table
  best_cfg = None
  if best is not None:
    best_cfg = with_overrides(cfg, best["overrides"])
    (out / "best_config.json").write_text(best_cfg.to_json(indent=2))
    paths["best_config"] = out / "best_config.json"
    paths["figure"] = metric_figure(rows, space, ranked[0], metric,
                                    out / "metric_vs_top_param.png",
                                    ranked[1] if len(ranked) > 1 else None)
  summary = {"metric": metric, "direction": direction, "mode": mode, "seeds": seeds,
             "space": space_to_json(space), "trials": len(rows), "ran_now": ran,
             "stopped_by_time": stopped, "vectorised": vectorised, "wall_s": wall,
             "importance": imp, "most_important": ranked[0] if ranked else None, "best": best}
  (out / "sweep.json").write_text(json.dumps(summary, indent=2))
  paths["summary"] = out / "sweep.json"
  return SweepResult(rows, best, best_cfg, imp, out, ran, stopped, vectorised, paths)



def run_cli(args, cfg: ml_collections.ConfigDict) -> int:
  """`ae-jax sweep`: the space from --space and --param flags, then `sweep`."""
  space = dict(load_space(args.space)) if args.space else {}
  for text in args.param:
    key, entry = parse_param(text)
    space[key] = entry
  if not space:
    raise ConfigError("give a search space: --space space.json or --param KEY=VALUES "
                      "(e.g. --param optim.learning_rate=[1e-3,3e-3])")
  metric_data = None
  if args.eval_data:
    from ae_jax import data as data_lib
    metric_data = data_lib.load(args.eval_data, args.eval_split or None)
  result = sweep(cfg, space, out=args.out, metric=args.metric, direction=args.direction,
                 mode=args.mode, trials=args.trials, timeout_s=args.timeout, seeds=args.seeds,
                 seed=args.seed, vectorise=False if args.no_vmap else None, chunk=args.chunk,
                 metric_data=metric_data, normal_class=args.normal_class)
  if result.best is None:
    print(f"no trial finished; see {result.out / TRIALS_FILE}")
    return 1
  print(f"train the best config with: ae-jax train --config {result.paths['best_config']}")
  return 0
