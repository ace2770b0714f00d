"""Running trials and scoring them: vmapped groups or one by one through `fit`, one row per
point of the space (mean ± std of its metric over seeds)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Sequence

import ml_collections
import numpy as np

from ae_jax import results, vmap_trials
from ae_jax.configs.overrides import with_overrides
from ae_jax.errors import ConfigError, DataError
from ae_jax.sweep.space import _plain, trial_key

METRICS = {"val_loss": "min", "recon_mse": "min", "roc_auc": "max"}


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
    mean, std = results.mean_std(values, ddof=1) if error is None else (math.nan, math.nan)
    names = sorted({k for s in scores for k in s})
    rows.append({
        "key": trial_key(point, ctx.seeds),
        "overrides": {k: _plain(v) for k, v in point.items()},
        "metric": ctx.metric, "value": mean, "std": std, "values": values,
        "metrics": {n: results.mean_std([s.get(n, math.nan) for s in scores], ddof=1)[0]
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
