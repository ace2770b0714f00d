"""Bayesian search (TPE) through optuna: the space as optuna distributions, points back
and forth, finished trials told to (and replayed into) a study."""

from __future__ import annotations

import math

from ae_jax.configs.overrides import get_value
from ae_jax.errors import ConfigError
from ae_jax.sweep.space import Choice, LogUniform, Space, _cast, _plain

OPTUNA_HINT = ('mode "tpe" (Bayesian search) needs optuna: pip install -e ".[sweep]"; '
               'grid and random search work without it')


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
