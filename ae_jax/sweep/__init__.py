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

The package: `space` (distributions, JSON form, grid/random points, trial keys), `run`
(training and scoring trials), `tpe` (the optuna adaptor), `report` (trials.jsonl, table,
importance, figure, best config) and `search` (the driver `sweep` and `run_cli`).
"""

from ae_jax.sweep.report import (TRIALS_FILE, SweepResult, importance, markdown_table,
                                 metric_figure, read_rows)
from ae_jax.sweep.run import METRICS, anomaly_labels, run_trial, score_runs
from ae_jax.sweep.search import MODES, SPEC_FILE, run_cli, sweep
from ae_jax.sweep.space import (DISTRIBUTIONS, Choice, LogUniform, Space, Uniform, check_space,
                                choice, grid_points, load_space, loguniform, parse_entry,
                                parse_param, parse_space, random_points, space_to_json,
                                trial_key, uniform)
from ae_jax.sweep.tpe import OPTUNA_HINT

__all__ = [
    "Choice", "DISTRIBUTIONS", "LogUniform", "METRICS", "MODES", "OPTUNA_HINT", "SPEC_FILE",
    "Space", "SweepResult", "TRIALS_FILE", "Uniform", "anomaly_labels", "check_space",
    "choice", "grid_points", "importance", "load_space", "loguniform", "markdown_table",
    "metric_figure", "parse_entry", "parse_param", "parse_space", "random_points",
    "read_rows", "run_cli", "run_trial", "score_runs", "space_to_json", "sweep", "trial_key",
    "uniform",
]
