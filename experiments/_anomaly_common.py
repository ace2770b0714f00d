"""Helpers of the anomaly-detection experiments: metrics, the PyOD anchors, figures.

API:
  enable_compile_cache(path): JAX's persistent compilation cache in `path`, so that the
    ensemble members and seeds of one input shape compile once.
  ranking_metrics(y, scores) -> {'roc_auc', 'pr_auc'} (y: 1 = anomaly).
  label_metrics(y, pred, weights=None) -> {'accuracy', 'precision', 'recall', 'f1'}
    (scikit-learn's, optionally weighted per example).
  rule_metrics(reference, scores, y, contamination, weights=None) -> {'accuracy@rule',
    'f1@rule'} for each label-free threshold rule set on `reference`; None where a rule
    does not apply.
  pyod_missing() -> None, or why the PyOD anchors cannot run here.
  anchor(name, seed) -> an unfitted PyOD detector ('IForest', 'ECOD', 'PyOD-AE', 'KNN', 'PCA').
  fit_anchor(name, seed, x_fit, *x_score) -> (training scores, [scores of each x_score],
    seconds).
  rescored(det, score, x_fit) -> the fitted AutoencoderDetector `det` read with another
    score that has the same training statistics (no refit); a score of two standardised
    terms ('combined', ...) gets its terms' statistics from det's held-out part of x_fit.
  fit_variant(kw, fit_x, scores) -> (fit seconds, steps of each member, {score: (detector,
    its scores of the fit's held-out rows)}): one development variant, fitted once and read
    with every score (the dev scripts' shared loop); a variant with `members` is an
    EnsembleDetector, read once under the name 'ensemble'.
  roc_figure(path, curves, title): ROC curves {label: (y, scores)}.
  mean_std(values) -> (mean, std) with std over seeds (population std, ddof=0; 0 for one
    value), from ae_jax.results.mean_std.
"""

import copy
import pathlib
import time

import numpy as np

from ae_jax import results
from ae_jax.anomaly import AutoencoderDetector, EnsembleDetector
from ae_jax.anomaly.scores import SCORES

ANCHORS = ("IForest", "ECOD", "PyOD-AE", "KNN", "PCA")


def enable_compile_cache(path) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  pathlib.Path(path).mkdir(parents=True, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def ranking_metrics(y, scores) -> dict[str, float]:
  from sklearn.metrics import average_precision_score, roc_auc_score
  y = np.asarray(y).astype(int)
  return {"roc_auc": float(roc_auc_score(y, scores)),
          "pr_auc": float(average_precision_score(y, scores))}


def label_metrics(y, pred, weights=None) -> dict[str, float]:
  """Accuracy, precision, recall and F1 of the 0/1 flags `pred` against y (1 = anomaly),
  each example weighted by `weights` (None: equally); 0 where a ratio has nothing to
  count (no flags, or no anomalies)."""
  from sklearn import metrics  # pylint: disable=g-import-not-at-top
  y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
  precision, recall, f1, _ = metrics.precision_recall_fscore_support(
      y, pred, average="binary", sample_weight=weights, zero_division=0)
  return {"accuracy": float(metrics.accuracy_score(y, pred, sample_weight=weights)),
          "precision": float(precision), "recall": float(recall), "f1": float(f1)}


LABEL_FREE_RULES = ("percentile", "mean_std", "max", "tukey", "log_tukey")


def rule_metrics(reference, scores, y, contamination: float, weights=None) -> dict:
  """Accuracy and F1 of `scores > threshold` against y (1 = anomaly) for every label-free
  rule, each threshold set on the `reference` scores, each example weighted by `weights`
  (None: equally); None where a rule does not apply (log_tukey on scores <= 0)."""
  from ae_jax.anomaly import THRESHOLDS  # pylint: disable=g-import-not-at-top
  from ae_jax.errors import DataError  # pylint: disable=g-import-not-at-top
  out = {}
  for rule in LABEL_FREE_RULES:
    try:
      t = THRESHOLDS.get(rule)(reference, contamination=contamination, k=1.0)
    except DataError:
      out[f"accuracy@{rule}"] = out[f"f1@{rule}"] = None
      continue
    m = label_metrics(y, np.asarray(scores) > t, weights)
    out[f"accuracy@{rule}"], out[f"f1@{rule}"] = m["accuracy"], m["f1"]
  return out


def pyod_missing() -> str | None:
  try:
    import pyod  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return (f"PyOD anchors skipped ({e}); install them with "
            "pip install -e '.[compare]'")
  return None


def anchor(name: str, seed: int):
  """An unfitted PyOD detector with PyOD's defaults (one CPU thread for torch)."""
  if name == "IForest":
    from pyod.models.iforest import IForest
    return IForest(random_state=seed)
  if name == "ECOD":
    from pyod.models.ecod import ECOD
    return ECOD()
  if name == "PyOD-AE":
    import torch
    from pyod.models.auto_encoder import AutoEncoder
    torch.set_num_threads(1)
    return AutoEncoder(random_state=seed, verbose=0, device="cpu")
  if name == "KNN":
    from pyod.models.knn import KNN
    return KNN()
  if name == "PCA":
    from pyod.models.pca import PCA
    return PCA(random_state=seed)
  raise ValueError(f"unknown anchor {name!r}; valid: {', '.join(ANCHORS)}")


def fit_anchor(name: str, seed: int, x_fit, *x_score):
  """Fit `name` on x_fit (N, ...) flattened; returns (training scores (N,), [scores of each
  x_score], seconds for fitting and scoring)."""
  flat = lambda a: np.asarray(a, np.float64).reshape(len(a), -1)
  start = time.perf_counter()
  model = anchor(name, seed).fit(flat(x_fit))
  scores = [model.decision_function(flat(x)) for x in x_score]
  return model.decision_scores_, scores, time.perf_counter() - start


def mean_std(values) -> tuple[float, float]:
  """(mean, population std over seeds): `ae_jax.results.mean_std` with ddof=0, the
  spread every anomaly table reports."""
  return results.mean_std(values, ddof=0)


def roc_figure(path, curves: dict, title: str = "") -> pathlib.Path:
  """ROC curves of several detectors on one labelled set: {label: (y, scores)}."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from sklearn.metrics import roc_auc_score, roc_curve
  fig, ax = plt.subplots(figsize=(4.8, 4.4))
  for label, (y, s) in curves.items():
    fpr, tpr, _ = roc_curve(y, s)
    ax.plot(fpr, tpr, lw=1.3, label=f"{label} (AUC {roc_auc_score(y, s):.3f})")
  ax.plot([0, 1], [0, 1], ":", color="grey", lw=0.8)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7, loc="lower right")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return pathlib.Path(path)


def rescored(det: AutoencoderDetector, score: str, x_fit=None) -> AutoencoderDetector:
  """`det` read with another score that has the same training statistics (no refit).

  A score of two standardised terms ('combined', 'mse_gaussian', ...) also needs the mean
  and std of its terms over the held-out examples, as `fit` sets them: they are computed
  here from `x_fit`, the examples det was fitted on (required for such a score).
  """
  new, old = SCORES.get(score), SCORES.get(det.score)
  if new.per_element is not old.per_element:
    raise ValueError(f"score {score!r} needs other training statistics than {det.score!r}")
  other = copy.copy(det)
  other.__dict__ = {k: v for k, v in det.__dict__.items()
                    if k not in ("_example_fn", "_element_fn", "_terms_fn")}
  other.score = score
  if new.terms is not None and new.terms is not old.terms:
    if x_fit is None:
      raise ValueError(f"score {score!r} standardises its terms on the held-out examples: "
                       "pass x_fit, the examples the detector was fitted on")
    from ae_jax.anomaly.detector import MIN_HELD_OUT  # pylint: disable=g-import-not-at-top
    x = other._prepare(x_fit)  # pylint: disable=protected-access
    train_idx, held = other.holdout_indices(len(x))
    ref = x[held] if len(held) >= MIN_HELD_OUT else x[train_idx]
    other.stats_ = other._with_term_stats(det.stats_, ref)  # pylint: disable=protected-access
  return other


def fit_variant(kw: dict, fit_x, scores) -> tuple[float, list, dict]:
  """Fits AutoencoderDetector(**kw) on fit_x once and reads it with every score.

  Returns (fit seconds, the last logged step of each member, {score: (the detector read
  with that score, its scores of the rows of fit_x the fit held out)}); the held-out
  scores are the label-free reference for standardising and thresholding.

  kw with `members` (and optionally `combine`) is an `EnsembleDetector` of members that
  differ in more than the seed; it has its own scores, so it is read once, as
  {'ensemble': ...}, whatever `scores` says.
  """
  det = EnsembleDetector(**kw) if "members" in kw else AutoencoderDetector(**kw)
  start = time.perf_counter()
  det.fit(fit_x)
  seconds = time.perf_counter() - start
  _, held = det.holdout_indices(len(fit_x))
  readings = {"ensemble": det} if "members" in kw else \
      {score: rescored(det, score, fit_x) for score in scores}
  read = {score: (d, d.decision_function(fit_x[held])) for score, d in readings.items()}
  return seconds, [h[-1]["step"] for h in det.history_], read
