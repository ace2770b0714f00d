"""`ae-jax detect`: fit an anomaly detector on a file of normal rows and score another file.

  ae-jax detect --fit normal.csv --score new.csv --out scores.csv [--save DIR]
  ae-jax detect --load DIR --score new.csv --out scores.npz --labels label

Files are .csv (one example per row, an optional header row of column names), .npy
(an array (N, ...)) or .npz (key `x` or `X`). The output holds one score and one 0/1
flag per scored row: .csv columns `score,flag`, .npy an (N, 2) array, .npz arrays
`scores`, `flags` and `threshold`. Every input is read and checked before anything is
trained, and outputs are written to a temporary name and renamed, so a failed run leaves
no half-written file.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import pathlib
import shutil
import tempfile
import time

import numpy as np

from ae_jax.errors import ConfigError, DataError

FORMATS = (".csv", ".npy", ".npz")


@dataclasses.dataclass
class Table:
  """Examples read from one file: x (N, ...) float32, column names (CSV header) or None,
  labels y (N,) int or None."""
  path: pathlib.Path
  x: np.ndarray
  names: list[str] | None
  y: np.ndarray | None


def add_parser(sub) -> None:
  """Registers `detect` on the `ae-jax` subparsers object `sub`."""
  d = sub.add_parser("detect", help="fit an anomaly detector on a file and score rows "
                     "(CSV / .npy / .npz)")
  d.add_argument("--fit", default="", help="file of normal (or mostly normal) rows to fit on")
  d.add_argument("--load", default="", help="a detector folder written by --save")
  d.add_argument("--score", default="", help="file of rows to score (default: the --fit file)")
  d.add_argument("--out", default="scores.csv", help="output: .csv, .npy or .npz")
  d.add_argument("--save", default="", help="write the fitted detector to this new folder")
  d.add_argument("--labels", default="", help="label column (CSV) or key (.npz), 1 = anomaly: "
                 "left out of the features; gives ROC-AUC, PR-AUC and the confusion matrix")
  d.add_argument("--threshold", default=None,
                 help="threshold rule: tukey (default), percentile, mean_std, max, log_tukey, "
                 "f1_best")
  d.add_argument("--contamination", type=float, default=None,
                 help="expected share of anomalies (percentile rule; default 0.1)")
  d.add_argument("--k", type=float, default=None, help="k of the mean_std rule (default 1)")
  d.add_argument("--seed", type=int, default=0)
  d.add_argument("--ensemble", type=int, default=3, help="autoencoders in the ensemble")
  d.add_argument("--max-steps", type=int, default=1000, help="training steps per member")
  d.add_argument("--network", default="mlp", help="mlp, or conv1d / conv2d for .npy input")
  d.add_argument("--scaling", default=None,
                 help="standard (default), robust, minmax or none")
  d.add_argument("--contaminated", action="store_true",
                 help="the --fit rows hold anomalies too (no clean normal set): robust "
                 "scaling, a trimmed loss, the mse score and tanh layers, the configuration "
                 "chosen on ADBench (ae_jax.anomaly.detector.CONTAMINATED); --scaling still "
                 "overrides its scaling")
  d.add_argument("--members", default="",
                 help="JSON list of AutoencoderDetector arguments, one dict per member of an "
                 "ensemble whose members differ in more than the seed (ae_jax.anomaly."
                 "EnsembleDetector), e.g. '[{\"score\": \"mse\"}, {\"network\": \"conv1d\"}]'; "
                 "--seed and the threshold flags apply to the ensemble, --ensemble, "
                 "--max-steps, --network and --scaling to each member unless it sets them")
  d.add_argument("--combine", default="mean", help="how --members' standardised scores "
                 "are combined: mean (default) or max")
  d.set_defaults(run_command=run)


# ---- reading -------------------------------------------------------------------------

def _number(text: str, path, line: int, column: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise DataError(f"{path}, line {line}, column {column!r}: {text!r} is not a number") \
        from None
  if not math.isfinite(value):
    raise DataError(f"{path}, line {line}, column {column!r}: missing or non-finite value "
                    f"{text!r}; drop or impute that row first")
  return value


def _is_number(text: str) -> bool:
  try:
    float(text)
  except ValueError:
    return False
  return True


def _read_csv(path: pathlib.Path, labels: str) -> Table:
  with open(path, newline="") as f:
    rows = [(i, r) for i, r in enumerate(csv.reader(f), start=1) if any(c.strip() for c in r)]
  if not rows:
    raise DataError(f"{path}: the file is empty")
  header = None
  if not all(_is_number(c) for c in rows[0][1] if c.strip()):
    header = [c.strip() for c in rows[0][1]]
    rows = rows[1:]
    dupes = sorted({n for n in header if header.count(n) > 1})
    if dupes:
      raise DataError(f"{path}: duplicate column names {dupes}")
  if not rows:
    raise DataError(f"{path}: a header but no data rows")
  width = len(header) if header else len(rows[0][1])
  names = header or [f"column {j + 1}" for j in range(width)]
  label_col = None
  if labels:
    if header is None:
      raise DataError(f"{path}: --labels {labels!r} needs a header row naming the columns")
    if labels in header:
      label_col = header.index(labels)
  values = np.empty((len(rows), width), np.float64)
  for r, (line, cells) in enumerate(rows):
    if len(cells) != width:
      raise DataError(f"{path}, line {line}: {len(cells)} fields, expected {width}")
    for j, cell in enumerate(cells):
      values[r, j] = _number(cell.strip() or "nan", path, line, names[j])
  y = None
  if label_col is not None:
    y = values[:, label_col]
    values = np.delete(values, label_col, axis=1)
    names = names[:label_col] + names[label_col + 1:]
  if values.shape[1] == 0:
    raise DataError(f"{path}: no feature columns (only the label column {labels!r})")
  return Table(path, values.astype(np.float32), names if header else None, y)


def _read_array(path: pathlib.Path, labels: str) -> Table:
  y = None
  try:
    if path.suffix == ".npy":
      if labels:
        raise DataError(f"{path}: --labels needs a .csv column or a .npz key; a .npy file "
                        "holds only the examples")
      x = np.load(path, allow_pickle=False)
    else:
      with np.load(path, allow_pickle=False) as arrays:
        key = next((k for k in ("x", "X") if k in arrays.files), None)
        if key is None:
          raise DataError(f"{path}: no array 'x' or 'X' (keys: {', '.join(arrays.files)})")
        x = arrays[key]
        if labels and labels in arrays.files:
          y = arrays[labels]
  except (ValueError, OSError) as e:
    raise DataError(f"{path}: not a readable {path.suffix} file ({e})") from None
  if x.ndim < 2 or x.shape[0] == 0:
    raise DataError(f"{path}: expected an array of examples (N, ...) with N > 0, got shape "
                    f"{x.shape}")
  if not np.issubdtype(x.dtype, np.number):
    raise DataError(f"{path}: expected numbers, got dtype {x.dtype}")
  flat = x.reshape(len(x), -1).astype(np.float64)
  bad = ~np.isfinite(flat)
  if bad.any():
    row, col = np.argwhere(bad)[0]
    raise DataError(f"{path}: row {row} (0-based), feature {col}: missing or non-finite value "
                    f"({int(bad.any(1).sum())} rows affected); drop or impute them first")
  if y is not None and y.shape != (len(x),):
    raise DataError(f"{path}: labels {labels!r} have shape {y.shape}, expected ({len(x)},)")
  return Table(path, x.astype(np.float32), None, y)


def read_table(path, labels: str = "") -> Table:
  """Reads a .csv, .npy or .npz file of examples; `labels` names a label column / key."""
  path = pathlib.Path(path)
  if path.suffix not in FORMATS:
    raise DataError(f"{path}: unknown file type {path.suffix!r}; use one of {FORMATS}")
  if not path.is_file():
    raise DataError(f"{path}: no such file")
  if path.stat().st_size == 0:
    raise DataError(f"{path}: the file is empty")
  table = _read_csv(path, labels) if path.suffix == ".csv" else _read_array(path, labels)
  if table.y is not None:
    values = np.unique(table.y)
    if not np.isin(values, (0, 1)).all():
      raise DataError(f"{path}: label column {labels!r} must hold 0 (normal) or 1 (anomaly), "
                      f"found {values[:5].tolist()}")
    table.y = table.y.astype(np.int64)
  return table


def _labelled(table: Table, labels: str) -> Table:
  """`table`, which must hold the label column / key `labels` when one is named (checked
  before its columns are compared with the fit's, so a misspelt name is reported as such)."""
  if labels and table.y is None:
    columns = f" (its columns: {', '.join(table.names)})" if table.names else ""
    raise DataError(f"{table.path}: no label column or key {labels!r}{columns}; give "
                    "--labels the name of the column that holds the 0/1 labels")
  return table


def align_columns(table: Table, names: list[str] | None, shape: tuple, source: str) -> Table:
  """`table` with its columns in the fit-time order `names`; errors name what differs."""
  if names is not None and table.names is not None and table.names != names:
    missing = [n for n in names if n not in table.names]
    extra = [n for n in table.names if n not in names]
    if missing or extra:
      raise DataError(f"{table.path}: columns differ from those at fit time ({source}): "
                      f"missing {missing}, unexpected {extra}")
    table.x = table.x[:, [table.names.index(n) for n in names]]
    table.names = list(names)
  if tuple(table.x.shape[1:]) != tuple(shape):
    raise DataError(f"{table.path}: examples of shape {tuple(table.x.shape[1:])}, but the "
                    f"detector was fitted on shape {tuple(shape)} ({source})")
  return table


# ---- writing -------------------------------------------------------------------------

def _check_out(path: pathlib.Path) -> None:
  if path.suffix not in FORMATS:
    raise ConfigError(f"--out {path}: use a .csv, .npy or .npz file name")
  if not path.parent.is_dir():
    raise ConfigError(f"--out {path}: the folder {path.parent} does not exist")


def write_scores(path, scores: np.ndarray, flags: np.ndarray, threshold: float) -> None:
  """Writes scores (N,) and flags (N,) to `path` atomically (temporary file, then rename)."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
  try:
    with os.fdopen(fd, "w" if path.suffix == ".csv" else "wb") as f:
      if path.suffix == ".csv":
        f.write("score,flag\n")
        f.writelines(f"{s:.9g},{int(g)}\n" for s, g in zip(scores, flags))
      elif path.suffix == ".npy":
        np.save(f, np.stack([scores.astype(np.float64), flags.astype(np.float64)], axis=1))
      else:
        np.savez(f, scores=scores, flags=flags.astype(np.int64),
                 threshold=np.float64(threshold))
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _save_detector(det, path: pathlib.Path) -> None:
  """det.save into a temporary folder beside `path`, then renamed to `path`."""
  tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
  try:
    det.save(tmp)
    if path.exists():
      path.rmdir()
    tmp.rename(path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


# ---- the command ---------------------------------------------------------------------

def _summary(name: str, scores: np.ndarray, flags: np.ndarray) -> str:
  q = np.percentile(scores, [0, 50, 100])
  return (f"scored {name}: {len(scores)} rows, {int(flags.sum())} flagged "
          f"({100 * flags.mean():.1f} %); scores min {q[0]:.4g}, median {q[1]:.4g}, "
          f"max {q[2]:.4g}")


def label_report(y: np.ndarray, scores: np.ndarray, flags: np.ndarray) -> str:
  """ROC-AUC, PR-AUC, accuracy and the confusion matrix of flags against labels y (1 = anomaly)."""
  from sklearn.metrics import average_precision_score, roc_auc_score
  tp = int(np.sum((y == 1) & (flags == 1)))
  fp = int(np.sum((y == 0) & (flags == 1)))
  fn = int(np.sum((y == 1) & (flags == 0)))
  tn = int(np.sum((y == 0) & (flags == 0)))
  lines = []
  if 0 < y.sum() < len(y):
    lines.append(f"ROC-AUC {roc_auc_score(y, scores):.4f}, "
                 f"PR-AUC {average_precision_score(y, scores):.4f}")
  else:
    lines.append("ROC-AUC and PR-AUC need both labels 0 and 1 among the scored rows")
  lines.append(f"accuracy {(tp + tn) / len(y):.4f}, precision {tp / max(tp + fp, 1):.4f}, "
               f"recall {tp / max(tp + fn, 1):.4f}")
  lines.append("confusion matrix (rows: label 0 / 1, columns: flag 0 / 1):")
  lines.append(f"  label 0: {tn:8d} {fp:8d}")
  lines.append(f"  label 1: {fn:8d} {tp:8d}")
  return "\n".join(lines)


def _describe(det) -> str:
  members = getattr(det, "members_", None)
  if members:
    names = ", ".join(f"{m.family}/{m.network}/{m.score} x{m.ensemble}" for m in members)
    return f"{len(members)} detectors: {names}; the {det.combine} of their standardised scores"
  return f"ensemble {det.ensemble}"


def _check_args(args) -> None:
  if bool(args.fit) == bool(args.load):
    raise ConfigError("give exactly one of --fit FILE (train a detector) or --load DIR")
  if args.load and not args.score:
    raise ConfigError("--load needs --score FILE: the rows to score")
  if args.load and (args.contaminated or args.scaling is not None or args.members):
    raise ConfigError("--contaminated, --scaling and --members set up a detector fitted with "
                      "--fit; a --load'ed detector keeps its own")
  if args.members:
    _members(args.members)
  elif args.combine != "mean":
    raise ConfigError("--combine applies to an ensemble given by --members")
  if args.save:
    save = pathlib.Path(args.save)
    if args.load:
      raise ConfigError("--save writes a detector fitted with --fit; it has no use with --load")
    if save.exists() and (not save.is_dir() or any(save.iterdir())):
      raise ConfigError(f"--save {save}: exists and is not an empty folder; choose a new one")
    if not save.parent.is_dir():
      raise ConfigError(f"--save {save}: the folder {save.parent} does not exist")
  _check_out(pathlib.Path(args.out))


def _members(text: str) -> list[dict]:
  """The --members JSON: a list of dicts of AutoencoderDetector arguments."""
  import json  # pylint: disable=g-import-not-at-top
  try:
    members = json.loads(text)
  except json.JSONDecodeError as e:
    raise ConfigError(f"--members is not valid JSON ({e}); give a list of dicts, e.g. "
                      '\'[{"score": "mse"}, {"network": "conv1d"}]\'') from None
  if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
    raise ConfigError(f"--members must be a JSON list of dicts, got {text!r}")
  return members


def _build(args, rule: dict):
  """The unfitted detector the --fit flags describe."""
  from ae_jax.anomaly.detector import CONTAMINATED, AutoencoderDetector
  from ae_jax.anomaly.ensemble import EnsembleDetector
  setting = dict(CONTAMINATED) if args.contaminated else {}   # else the class's defaults
  if args.scaling is not None:
    setting["scaling"] = args.scaling
  setting.update(network=args.network, ensemble=args.ensemble, max_steps=args.max_steps)
  if not args.members:
    return AutoencoderDetector(seed=args.seed, **setting, **rule)
  members = [{**setting, **m} for m in _members(args.members)]
  return EnsembleDetector(members, combine=args.combine, seed=args.seed, **rule)


def run(args: argparse.Namespace) -> int:
  """Runs `ae-jax detect` with parsed arguments; returns the exit status."""
  from ae_jax.anomaly.ensemble import load_detector
  from ae_jax.anomaly.thresholds import DEFAULT_THRESHOLD, THRESHOLDS
  _check_args(args)
  rule = {"threshold": args.threshold or DEFAULT_THRESHOLD,
          "contamination": 0.1 if args.contamination is None else args.contamination,
          "k": 1.0 if args.k is None else args.k}
  if args.load:
    det = load_detector(args.load)
    source = f"loaded from {args.load}"
    given = {k: v for k, v in (("threshold", args.threshold),
                               ("contamination", args.contamination), ("k", args.k))
             if v is not None}
    if given:
      if given.get("threshold") == "f1_best":
        raise ConfigError("--threshold f1_best needs labelled fit data; refit with --fit "
                          "and --labels")
      for key, value in given.items():
        setattr(det, key, value)
      det._validate()  # pylint: disable=protected-access
      det.threshold_ = THRESHOLDS.get(det.threshold)(
          det.reference_scores_, contamination=det.contamination, k=det.k)
    score_table = align_columns(_labelled(read_table(args.score, args.labels), args.labels),
                                det.feature_names_in_, det.input_shape_, source)
  else:
    fit_table = read_table(args.fit, args.labels)
    score_table = _labelled(read_table(args.score, args.labels) if args.score else fit_table,
                            args.labels)
    if args.score:
      align_columns(score_table, fit_table.names, fit_table.x.shape[1:], f"{args.fit}")
    det = _build(args, rule)
    start = time.perf_counter()
    det.fit(fit_table.x, fit_table.y)
    det.feature_names_in_ = fit_table.names
    print(f"fitted on {args.fit}: {len(fit_table.x)} rows of shape "
          f"{tuple(fit_table.x.shape[1:])} ({_describe(det)}) in "
          f"{time.perf_counter() - start:.1f} s")
  scores = det.decision_function(score_table.x)
  flags = (scores > det.threshold_).astype(np.int64)
  print(f"threshold ({det.threshold}, contamination {det.contamination}): {det.threshold_:.6g}")
  print(_summary(str(score_table.path), scores, flags))
  write_scores(args.out, scores, flags, det.threshold_)
  print(f"wrote {len(scores)} scores and flags to {args.out}")
  if args.save:
    _save_detector(det, pathlib.Path(args.save))
    print(f"saved the detector to {args.save}")
  if args.labels:
    print(f"labels {args.labels!r}:")
    print(label_report(score_table.y, scores, flags))
  return 0
