"""An ensemble of autoencoder detectors that differ in more than the seed.

`AutoencoderDetector(ensemble=3)` averages members that share everything but the seed
(they are stacked and vmapped, so they must share their shapes). `EnsembleDetector`
combines detectors that differ in anything: network (MLP, conv), family (ae, denoising,
vae), sizes, score. Each member is an `AutoencoderDetector` fitted on the same examples
with the same held-out part; its scores are standardised by the mean and standard
deviation of its scores of that held-out part (examples no member trained on), so that
members whose scores live on different scales weigh alike, and the standardised scores
are averaged (`combine='mean'`) or the largest is taken (`combine='max'`). The threshold
rule then reads the combined scores of the held-out part, as `AutoencoderDetector` does.

  det = EnsembleDetector([{"widths": [512, 256], "score": "mse"},
                          {"network": "conv1d", "score": "mse"}]).fit(X_normal)
  det.decision_function(X_new)        # (N,) combined scores; det.predict(X_new) 0/1 flags

`load_detector(path)` reads a folder written by either class's `save`.
"""

from __future__ import annotations

import inspect
import json
import pathlib
from typing import Any, Sequence

import numpy as np

from ae_jax.anomaly.detector import (FORMAT_VERSION, AutoencoderDetector, check_labels,
                                     read_meta, set_threshold)
from ae_jax.anomaly.thresholds import DEFAULT_THRESHOLD, THRESHOLDS
from ae_jax.errors import ConfigError, DataError

ENSEMBLE_FILE = "ensemble.json"
ARRAYS_FILE = "ensemble.npz"
COMBINE = ("mean", "max")
# Arguments the ensemble sets for every member: the same split, seed and threshold setup.
SHARED = ("seed", "val_fraction", "max_val", "contamination", "threshold", "k")
# A member's scores are standardised on the held-out part when it holds at least this
# many examples (a standard deviation of fewer is too noisy), else on every fit example.
MIN_STANDARDISE = 10


def _member_arguments() -> set[str]:
  params = inspect.signature(AutoencoderDetector.__init__).parameters
  return {n for n in params if n != "self"} - set(SHARED) - {"config"}


class EnsembleDetector:
  """Detectors that differ in more than the seed, their standardised scores combined.

  Attributes after `fit`: `members_` (fitted `AutoencoderDetector`s), `loc_` / `scale_`
  (M,) the mean and std each member's scores are standardised by, `threshold_`,
  `decision_scores_` (N,) combined scores of the fit examples, `labels_`,
  `reference_scores_` the combined scores the threshold rule read, `input_shape_`,
  `feature_names_in_` (set by the caller, as for `AutoencoderDetector`).
  """

  def __init__(self, members: Sequence[dict[str, Any]], *, combine: str = "mean",
               contamination: float = 0.1, threshold: str = DEFAULT_THRESHOLD,
               k: float = 1.0, seed: int = 0, val_fraction: float = 0.1,
               max_val: int = 8192):
    """Sets up the ensemble; nothing is trained until `fit`.

    Args:
      members: two or more dicts of `AutoencoderDetector` arguments, one per member (for
        example {"network": "conv1d", "score": "mse"}). The arguments in `SHARED` are the
        ensemble's and may not appear in a member.
      combine: 'mean' (the default) or 'max' of the members' standardised scores.
      contamination / threshold / k: the threshold rule, read on the combined scores
        (see `AutoencoderDetector`).
      seed / val_fraction / max_val: as for `AutoencoderDetector`, shared by every member
        so that all hold out the same examples.
    """
    self.members = [dict(m) for m in members] if isinstance(members, (list, tuple)) \
        else members
    self.combine = combine
    self.contamination = contamination
    self.threshold = threshold
    self.k = k
    self.seed = seed
    self.val_fraction = val_fraction
    self.max_val = max_val
    self._validate()
    self.threshold_: float | None = None
    self.decision_scores_: np.ndarray | None = None
    self.labels_: np.ndarray | None = None
    self.members_: list[AutoencoderDetector] = []
    self.feature_names_in_: list[str] | None = None

  def get_params(self) -> dict[str, Any]:
    """The constructor arguments (JSON-serialisable)."""
    return {"members": [dict(m) for m in self.members], "combine": self.combine,
            **{n: getattr(self, n) for n in SHARED}}

  def _member(self, kw: dict[str, Any]) -> AutoencoderDetector:
    # Members keep their own thresholds out of the way: the ensemble's rule decides.
    return AutoencoderDetector(**kw, seed=self.seed, val_fraction=self.val_fraction,
                               max_val=self.max_val, contamination=self.contamination,
                               threshold="percentile", k=self.k)

  def _validate(self) -> None:
    if not isinstance(self.members, list) or len(self.members) < 2 or not all(
        isinstance(m, dict) for m in self.members):
      raise ConfigError("members must be a list of at least two dicts of AutoencoderDetector "
                        f"arguments, got {self.members!r}; for members that differ only in "
                        "the seed use AutoencoderDetector(ensemble=N)")
    if self.combine not in COMBINE:
      raise ConfigError(f"combine must be one of {COMBINE}, got {self.combine!r}")
    THRESHOLDS.get(self.threshold)
    known = _member_arguments()
    for i, m in enumerate(self.members):
      shared = sorted(set(m) & set(SHARED))
      if shared:
        raise ConfigError(f"member {i} sets {shared}: the ensemble sets {', '.join(SHARED)} "
                          "for every member; pass them to EnsembleDetector instead")
      unknown = sorted(set(m) - known)
      if unknown:
        raise ConfigError(f"member {i}: unknown AutoencoderDetector arguments {unknown}; "
                          f"valid: {', '.join(sorted(known))}")
      try:
        self._member(m)
      except ConfigError as err:
        raise ConfigError(f"member {i}: {err}") from None

  # -- training --

  def holdout_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices into n examples, the same for every member."""
    return AutoencoderDetector(seed=self.seed, val_fraction=self.val_fraction,
                               max_val=self.max_val).holdout_indices(n)

  def fit(self, X, y=None, *, X_val=None, y_val=None) -> "EnsembleDetector":
    """Fits every member on X (N, ...) and sets the combined threshold; returns self.

    y, X_val, y_val: labels for the 'f1_best' rule, as for `AutoencoderDetector.fit`.
    """
    x = np.asarray(X)
    if x.ndim < 2:
      raise DataError(f"expected a batch of examples (N, ...), got an array of shape {x.shape}")
    _, val_idx = self.holdout_indices(len(x))
    check_labels(self.threshold, len(val_idx), y, X_val, y_val)
    self.members_ = [self._member(m).fit(x) for m in self.members]
    self.input_shape_ = tuple(x.shape[1:])
    raw = np.stack([m.decision_scores_ for m in self.members_]).astype(np.float64)
    ref = raw[:, val_idx] if len(val_idx) >= MIN_STANDARDISE else raw
    self.loc_ = ref.mean(1)
    self.scale_ = np.maximum(ref.std(1), 1e-6 * np.abs(self.loc_) + 1e-12)
    self.decision_scores_ = self._combine(self._standardise(raw))
    set_threshold(self, val_idx, y, X_val, y_val)
    return self

  @property
  def history_(self) -> list[list[dict]]:
    """The training logs of every member's networks, member after member."""
    return [h for m in self.members_ for h in m.history_]

  # -- scoring --

  def _standardise(self, raw: np.ndarray) -> np.ndarray:
    """(M, N) raw member scores -> standardised (0 = a member's mean held-out score)."""
    return (raw - self.loc_[:, None]) / self.scale_[:, None]

  def _combine(self, z: np.ndarray) -> np.ndarray:
    """(M, N) standardised member scores -> (N,) combined scores (float32)."""
    return (z.mean(0) if self.combine == "mean" else z.max(0)).astype(np.float32)

  def member_scores(self, X) -> np.ndarray:
    """(M, N) standardised scores of each member (0 = the mean held-out score)."""
    if not self.members_:
      raise DataError("the detector is not fitted: call fit(X) first")
    x = np.asarray(X)
    if x.shape[1:] != self.input_shape_:
      raise DataError(f"the detector was fitted on examples of shape {self.input_shape_}, "
                      f"got {x.shape[1:]}")
    return self._standardise(
        np.stack([m.decision_function(x) for m in self.members_]).astype(np.float64))

  def decision_function(self, X) -> np.ndarray:
    """Anomaly scores (N,) of examples X (N, ...); higher means more anomalous."""
    return self._combine(self.member_scores(X))

  def predict(self, X) -> np.ndarray:
    """0/1 labels (N,): 1 where decision_function(X) > threshold_."""
    if self.threshold_ is None:
      raise DataError("the detector has no threshold: call fit(X) first")
    return (self.decision_function(X) > self.threshold_).astype(np.int64)

  # -- persistence --

  def save(self, path) -> pathlib.Path:
    """Writes ensemble.json, ensemble.npz and one `AutoencoderDetector` folder per member
    (member_0, member_1, ...) into the folder `path` (no pickle)."""
    if not self.members_:
      raise DataError("the detector is not fitted: call fit(X) first")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(self.members_):
      m.save(path / f"member_{i}")
    meta = {"version": FORMAT_VERSION, "params": self.get_params(),
            "input_shape": list(self.input_shape_), "threshold_": self.threshold_,
            "feature_names_in": self.feature_names_in_}
    np.savez(path / ARRAYS_FILE, loc=self.loc_, scale=self.scale_,
             decision_scores=self.decision_scores_, reference_scores=self.reference_scores_)
    (path / ENSEMBLE_FILE).write_text(json.dumps(meta, indent=2))
    return path

  @classmethod
  def load(cls, path) -> "EnsembleDetector":
    """Rebuilds an ensemble written by `save`; reads only JSON and numeric arrays."""
    path = pathlib.Path(path)
    meta = read_meta(path, ENSEMBLE_FILE, ARRAYS_FILE, "ensemble")
    det = cls(**meta["params"])
    det.members_ = [AutoencoderDetector.load(path / f"member_{i}")
                    for i in range(len(det.members))]
    det.input_shape_ = tuple(meta["input_shape"])
    det.threshold_ = meta["threshold_"]
    det.feature_names_in_ = meta.get("feature_names_in")
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as arrays:
      det.loc_, det.scale_ = arrays["loc"], arrays["scale"]
      det.decision_scores_ = arrays["decision_scores"]
      det.reference_scores_ = arrays["reference_scores"]
    det.labels_ = (det.decision_scores_ > det.threshold_).astype(np.int64)
    return det


def load_detector(path) -> AutoencoderDetector | EnsembleDetector:
  """The detector saved in the folder `path` by `AutoencoderDetector.save` or
  `EnsembleDetector.save`."""
  if (pathlib.Path(path) / ENSEMBLE_FILE).exists():
    return EnsembleDetector.load(path)
  return AutoencoderDetector.load(path)
