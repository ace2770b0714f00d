"""The held-out protocol of the application experiments: train, validation, test.

Every choice (architecture, epochs, hyperparameters, baseline filter settings, operating
points) is made on a validation split carved from the training data; the reported test
split is scored once, at the end, for the chosen setting only. Each result JSON carries
`protocol(...)`: the data, the splits, what was tuned on what, the budget and the CPU
(the model name from `ae_jax.results.cpu_info`, the same as in the result's environment).

API:
  VAL_SEED: the seed of the fixed train / validation carving (independent of --seed).
  carve_validation(train, num_val, seed=VAL_SEED) -> (fit_part, val) ArrayData: a fixed,
    seeded random `num_val` examples of the training split for validation, the rest to fit.
  carved_splits(n_train, n_val, n_test, train_note="", val_note="", test_note="scored once")
    -> dict: the `splits` record of a carved protocol, worded the same in every script.
  colon_entry(metavar, *types) -> argparse type: 'A:B' -> (types[0](A), types[1](B)), e.g.
    the --dae-grid EPOCHS:BATCH and features' --ae-grid NETWORK:EPOCHS entries.
  add_budget_arguments(parser, default, help): --dae-grid EPOCHS:BATCH ... and --val-size,
    the flags of every script that chooses its training budget with fit_budgets.
  fit_budgets(grid, make_config, train, val_score, score_name, seed, first=None)
    -> (trained, seconds, rows): one model per (epochs, batch) of `grid`, the best validation
    score kept; `rows` is the validation table with a `chosen` column.
  select(scores, higher=True) -> int: the index of the best validation score (first on ties).
  protocol(data, splits, tuned, budget, untuned=()) -> dict: the record for result.json.
  rows(record) -> list[dict]: the same record as table rows ({"item", "value"}) for table.md.
"""

import argparse
import time
from typing import Sequence

import numpy as np

from ae_jax import fit, results

VAL_SEED = 12345


def carve_validation(train, num_val: int, seed: int = VAL_SEED):
  """(fit_part, val): `num_val` seeded-random examples of `train` held out for validation."""
  n = len(train)
  if not 0 < num_val < n:
    raise ValueError(f"validation size {num_val} must be between 1 and {n - 1} "
                     f"(the training split has {n} examples)")
  order = np.random.RandomState(seed).permutation(n)
  return train.take(np.sort(order[num_val:])), train.take(np.sort(order[:num_val]))


def carved_splits(n_train: int, n_val: int, n_test: int, train_note: str = "",
                  val_note: str = "", test_note: str = "scored once") -> dict:
  """The three split descriptions of a run that carved its validation from training."""
  return {"train": f"{n_train} training images (the training split less the validation "
                   f"images){'; ' + train_note if train_note else ''}",
          "validation": f"{n_val} training images held out (seed {VAL_SEED})"
                        f"{', ' + val_note if val_note else ''}",
          "test": f"{n_test} test images, {test_note}"}


def select(scores: Sequence[float], higher: bool = True) -> int:
  """Index of the best validation score; NaN scores never win."""
  values = np.asarray(scores, np.float64)
  if values.size == 0 or np.all(np.isnan(values)):
    raise ValueError(f"no finite validation score to choose from: {list(scores)}")
  values = np.where(np.isnan(values), -np.inf if higher else np.inf, values)
  return int(np.argmax(values) if higher else np.argmin(values))


def colon_entry(metavar: str, *types):
  """An argparse `type` for one grid entry written as colon-separated fields.

  `colon_entry("NETWORK:EPOCHS", str, int)("mlp:10") == ("mlp", 10)`; a wrong field count
  or a field that does not convert is an argparse error naming the expected form.
  """
  def parse(text: str) -> tuple:
    parts = text.split(":")
    if len(parts) != len(types):
      raise argparse.ArgumentTypeError(f"{text!r} is not {metavar}")
    try:
      return tuple(kind(part) for kind, part in zip(types, parts))
    except ValueError:
      raise argparse.ArgumentTypeError(f"{text!r} is not {metavar}") from None
  return parse


_budget = colon_entry("EPOCHS:BATCH", int, int)  # 'EPOCHS:BATCH' -> (epochs, batch_size)


def add_budget_arguments(parser, default: list[tuple[int, int]], help: str) -> None:  # pylint: disable=redefined-builtin
  """--dae-grid (the training budgets fit_budgets chooses among) and --val-size (the
  training images held out for validation)."""
  parser.add_argument("--dae-grid", nargs="+", type=_budget, default=default,
                      metavar="EPOCHS:BATCH", help=help)
  parser.add_argument("--val-size", type=int, default=1000,
                      help="training images held out for validation")


def fit_budgets(grid, make_config, train, val_score, score_name: str, seed: int,
                first: dict | None = None):
  """Trains one model per training budget and keeps the best on validation.

  grid: (epochs, batch_size) pairs; make_config(epochs, batch_size) -> config (its seed is
  set to `seed`); train: the data the models fit; val_score(trained) -> float, higher is
  better; score_name: its column in the rows; first: columns put before the others in
  every row. Returns (the chosen model, its training seconds, the validation rows).
  """
  rows, models = [], []
  for epochs, batch_size in grid:
    cfg = make_config(epochs, batch_size)
    cfg.seed = seed
    trained, seconds = results.timed(fit.fit, cfg, train_data=train, progress=False)
    models.append((trained, seconds))
    rows.append({**(first or {}), "epochs": epochs, "batch": batch_size,
                 score_name: float(val_score(trained)), "train seconds": round(seconds, 1)})
  best = select([r[score_name] for r in rows])
  for i, r in enumerate(rows):
    r["chosen"] = i == best
  return (*models[best], rows)


def protocol(data: str, splits: dict, tuned: Sequence[str], budget: dict,
             untuned: Sequence[str] = ()) -> dict:
  """The protocol record of one run.

  data: the data set; splits: {name: description with its size}; tuned: "what -> on what"
  lines; budget: epochs and the like (wall and CPU seconds of the whole run are added
  here); untuned: settings fixed before the run and not selected on any data.
  """
  return {"data": data, "splits": dict(splits), "tuned_on_validation": list(tuned),
          "fixed_beforehand": list(untuned),
          "test": "scored once, after every choice, for the chosen setting only",
          "budget": {**budget, "cpu_seconds": round(time.process_time(), 1)},
          "cpu_model": results.cpu_info()["model"]}


def rows(record: dict) -> list[dict]:
  out = [{"item": "data", "value": record["data"]}]
  out += [{"item": f"split: {name}", "value": text} for name, text in record["splits"].items()]
  out += [{"item": "chosen on validation", "value": t} for t in record["tuned_on_validation"]]
  out += [{"item": "fixed beforehand (not tuned)", "value": t}
          for t in record["fixed_beforehand"]]
  out.append({"item": "test split", "value": record["test"]})
  out.append({"item": "budget",
              "value": ", ".join(f"{k} {v}" for k, v in record["budget"].items())})
  out.append({"item": "CPU", "value": record["cpu_model"]})
  return out
