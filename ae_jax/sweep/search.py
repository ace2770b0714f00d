"""The sweep driver: grid, random and TPE search around a base config, resumable, and the
`ae-jax sweep` command."""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Callable

import ml_collections
import numpy as np

from ae_jax import vmap_trials
from ae_jax.errors import ConfigError, DataError
from ae_jax.sweep.report import (TRIALS_FILE, SweepResult, _append, _finish, _short,
                                 read_rows)
from ae_jax.sweep.run import (METRICS, _Context, _run_group, _run_point_safe,
                              anomaly_labels)
from ae_jax.sweep.space import (Space, check_space, grid_points, load_space, parse_param,
                                parse_space, random_points, space_to_json, trial_key)
from ae_jax.sweep.tpe import _distributions, _from_optuna, _optuna, _tell, _tpe_study

SPEC_FILE = "sweep_spec.json"
MODES = ("grid", "random", "tpe")


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
                      f"vmappable fields are: {', '.join(vmap_trials.vmappable())}")
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
