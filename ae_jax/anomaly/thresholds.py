"""Threshold rules: a name in `THRESHOLDS` -> f(reference scores, **kw) -> threshold.

Every rule takes the reference scores (N,) (held-out normal scores, or the training
scores) and keyword arguments it may ignore: `contamination`, `k`, `val_scores` and
`val_labels` (labelled validation scores, 1 = anomaly). Scores above the threshold are
flagged.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ae_jax.errors import ConfigError, DataError
from ae_jax.registry import Registry

THRESHOLDS: Registry[Callable[..., float]] = Registry("threshold rule")

# The detector's default rule: chosen on ECG5000's development protocol (TRAIN+VALIDATION
# only), where it had the best label-free validation accuracy; on the 12 ADBench sets its
# flags' F1 is within 0.01 of 'percentile' (RESULTS_anomaly.md, session 5). It needs no
# contamination.
DEFAULT_THRESHOLD = "tukey"


@THRESHOLDS.register("percentile")
def percentile_threshold(train_scores, *, contamination: float, **_) -> float:
  """The (1 - contamination) quantile of the training scores (PyOD's rule)."""
  return float(np.percentile(train_scores, 100.0 * (1.0 - contamination)))


@THRESHOLDS.register("mean_std")
def mean_std_threshold(train_scores, *, k: float = 1.0, **_) -> float:
  """mean + k * std of the training scores (population std)."""
  s = np.asarray(train_scores, np.float64)
  return float(s.mean() + k * s.std())


@THRESHOLDS.register("max")
def max_threshold(train_scores, **_) -> float:
  """The largest training score: nothing seen in training is flagged."""
  return float(np.max(train_scores))


@THRESHOLDS.register("f1_best")
def f1_best_threshold(train_scores, *, val_scores=None, val_labels=None, **_) -> float:
  """The threshold t that maximises F1 of `val_scores > t` against `val_labels` (1 = anomaly).

  Candidates are the distinct validation scores below the largest one; ties in F1 go
  to the higher threshold.
  """
  del train_scores
  if val_scores is None or val_labels is None:
    raise ConfigError("threshold 'f1_best' needs labels: pass y to fit (the held-out "
                      "validation part is used) or X_val and y_val")
  scores = np.asarray(val_scores, np.float64)
  labels = np.asarray(val_labels).astype(bool)
  if labels.shape != scores.shape:
    raise DataError(f"validation labels have shape {labels.shape}, scores {scores.shape}")
  if not labels.any():
    raise DataError("threshold 'f1_best' needs at least one labelled anomaly (y=1) in the "
                    "validation data")
  order = np.argsort(-scores, kind="stable")
  s, l = scores[order], labels[order]
  tp = np.cumsum(l)
  flagged = np.arange(1, len(s) + 1)
  # Flagging the top i examples means threshold s[i]; valid only where s[i] < s[i - 1].
  cut = np.flatnonzero(s[1:] < s[:-1])
  if cut.size == 0:
    return float(s[0])
  f1 = 2 * tp[cut] / (flagged[cut] + labels.sum())
  best = cut[np.flatnonzero(f1 == f1.max())[0]]
  return float(s[best + 1])


TUKEY_K = 1.5


@THRESHOLDS.register("tukey")
def tukey_threshold(train_scores, **_) -> float:
  """Tukey's upper fence Q3 + 1.5 * (Q3 - Q1) of the reference scores.

  It needs no contamination and moves little when a few anomalies are among the
  reference scores, unlike 'max' and 'mean_std'.
  """
  q1, q3 = np.percentile(np.asarray(train_scores, np.float64), [25, 75])
  return float(q3 + TUKEY_K * (q3 - q1))


@THRESHOLDS.register("log_tukey")
def log_tukey_threshold(train_scores, **_) -> float:
  """Tukey's upper fence on log scores: exp(Q3 + 1.5 * (Q3 - Q1)) of log(reference scores).

  Reconstruction scores are positive and right-skewed (sums of squared errors), so their
  logarithm is closer to symmetric and the fence sits further out; it needs positive
  scores (every score of this package but the VAE's 'elbo' and 'nll').
  """
  s = np.asarray(train_scores, np.float64)
  if np.any(s <= 0):
    raise DataError("threshold 'log_tukey' needs positive scores; use 'tukey' for scores "
                    "that can be zero or negative")
  q1, q3 = np.percentile(np.log(s), [25, 75])
  return float(np.exp(q3 + TUKEY_K * (q3 - q1)))
