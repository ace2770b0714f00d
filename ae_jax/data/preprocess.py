"""Preprocessing on host arrays: non-finite checks, scaling, windows and splits.

Statistics are fitted on the training split only and stored as plain numpy arrays,
so a fitted `Scaler` can go into a checkpoint without pickle.
"""

from __future__ import annotations

import numpy as np

from ae_jax.data.sources import ArrayData
from ae_jax.errors import ConfigError, DataError

NONFINITE_POLICIES = ("raise", "drop", "impute")
SCALER_METHODS = ("none", "minmax", "standard")
MIN_SCALE = 1e-8


def check_finite(x: np.ndarray, split: str, policy: str = "raise",
                 y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
  """Finds examples with NaN or inf and raises, drops them or imputes them.

  Args:
    x: examples (N, ...).
    split: the split's name, used in the error message.
    policy: 'raise'; 'drop' removes bad examples (and their labels); 'impute' replaces
      each non-finite value by the mean of that feature's finite values in `x`
      (0 where a feature has none).
    y: optional labels (N,), kept aligned with `x`.

  Returns:
    (x, y) with only finite values.
  """
  if policy not in NONFINITE_POLICIES:
    raise ConfigError(f"data.nonfinite must be one of {NONFINITE_POLICIES}, got {policy!r}")
  x = np.asarray(x)
  finite = np.isfinite(x)
  good_rows = finite.reshape(x.shape[0], -1).all(axis=1)
  if good_rows.all():
    return x, y
  bad = np.flatnonzero(~good_rows)
  if policy == "raise":
    raise DataError(
        f"NaN/inf in the {split} split: first bad example at index {bad[0]} "
        f"({bad.size} of {x.shape[0]} examples have non-finite values); set "
        "data.nonfinite='drop' or 'impute' to drop those examples or replace the values "
        "by the feature mean")
  if policy == "drop":
    if bad.size == x.shape[0]:
      raise DataError(f"every example of the {split} split has NaN/inf; nothing is left "
                      "after dropping them")
    return x[good_rows], None if y is None else np.asarray(y)[good_rows]
  counts = finite.sum(axis=0)
  sums = np.where(finite, x, 0).sum(axis=0, dtype=np.float64)
  means = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
  return np.where(finite, x, means).astype(x.dtype), y


class Scaler:
  """Per-feature affine scaling, `(x - offset) / scale`, fitted on training data.

  Statistics are taken over axis 0, so they have shape `x.shape[1:]`: per feature for
  vectors, per time step and channel for sequences, per pixel for images. Features
  whose range or std is below 1e-8 (e.g. MNIST's blank border) get scale 1.
  """

  def __init__(self, method: str = "none"):
    if method not in SCALER_METHODS:
      raise ConfigError(f"scaler method must be one of {SCALER_METHODS}, got {method!r}")
    self.method = method
    self.offset: np.ndarray | None = None
    self.scale: np.ndarray | None = None

  def fit(self, x: np.ndarray) -> Scaler:
    """Fits offset and scale on the training examples `x` (N, ...); returns self."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 0:
      raise DataError("cannot fit a scaler on zero examples")
    if self.method == "minmax":
      offset, spread = x.min(axis=0), x.max(axis=0) - x.min(axis=0)
    elif self.method == "standard":
      offset, spread = x.mean(axis=0), x.std(axis=0)
    else:
      offset, spread = np.zeros(x.shape[1:]), np.ones(x.shape[1:])
    self.offset = offset.astype(np.float32)
    self.scale = np.where(spread < MIN_SCALE, 1.0, spread).astype(np.float32)
    return self

  def _check(self, x: np.ndarray) -> np.ndarray:
    if self.offset is None:
      raise DataError("Scaler is not fitted: call fit(train_x) first")
    x = np.asarray(x, dtype=np.float32)
    if x.shape[1:] != self.offset.shape:
      raise DataError(f"scaler was fitted on examples of shape {self.offset.shape}, "
                      f"got examples of shape {x.shape[1:]}")
    return x

  def transform(self, x: np.ndarray) -> np.ndarray:
    """Scales examples (N, ...) with the fitted statistics; float32."""
    return (self._check(x) - self.offset) / self.scale

  def inverse_transform(self, x: np.ndarray) -> np.ndarray:
    """Maps scaled examples (N, ...) back to the original units; float32."""
    return self._check(x) * self.scale + self.offset

  def to_state(self) -> dict[str, np.ndarray | str]:
    """The fitted scaler as {'method': str, 'offset': array, 'scale': array}."""
    if self.offset is None:
      raise DataError("Scaler is not fitted: nothing to save")
    return {"method": self.method, "offset": self.offset.copy(), "scale": self.scale.copy()}

  @classmethod
  def from_state(cls, state: dict) -> Scaler:
    """Rebuilds a fitted scaler from `to_state()` output (also after a checkpoint restore)."""
    method = state["method"]
    if isinstance(method, bytes):
      method = method.decode()
    scaler = cls(str(np.asarray(method)))
    scaler.offset = np.asarray(state["offset"], dtype=np.float32)
    scaler.scale = np.asarray(state["scale"], dtype=np.float32)
    return scaler


def robust_scaler(x: np.ndarray) -> Scaler:
  """A fitted `Scaler` that centres on the median and divides by IQR / 1.349.

  IQR / 1.349 is the std of a normal with that IQR; features whose IQR is (near) zero
  fall back to their std and then to 1, so anomalies in the training examples `x`
  (N, ...) do not inflate the scale. Offset and scale have shape x.shape[1:].
  """
  x = np.asarray(x, np.float64)
  if x.shape[0] == 0:
    raise DataError("cannot fit a scaler on zero examples")
  q25, median, q75 = np.percentile(x, [25, 50, 75], axis=0)
  spread = (q75 - q25) / 1.349
  spread = np.where(spread < MIN_SCALE, x.std(axis=0), spread)
  return Scaler.from_state({"method": "standard", "offset": median,
                            "scale": np.where(spread < MIN_SCALE, 1.0, spread)})


def sliding_windows(series: np.ndarray, length: int, stride: int,
                    normalize: bool = False) -> np.ndarray:
  """Cuts a long series into overlapping windows.

  Args:
    series: (T,) or (T, C).
    length: window length L.
    stride: step between window starts.
    normalize: z-score each window per channel; constant windows become zeros.

  Returns:
    float32 (num_windows, L, C) with num_windows = (T - L) // stride + 1.
  """
  series = np.asarray(series, dtype=np.float32)
  if series.ndim == 1:
    series = series[:, None]
  if series.ndim != 2:
    raise DataError(f"series must be (T,) or (T, C), got shape {series.shape}")
  if length < 1 or stride < 1:
    raise ConfigError(f"window length and stride must be >= 1, got {length}, {stride}")
  if series.shape[0] < length:
    raise DataError(f"series of length {series.shape[0]} is shorter than one window "
                    f"({length})")
  windows = np.lib.stride_tricks.sliding_window_view(series, length, axis=0)[::stride]
  windows = np.ascontiguousarray(windows.transpose(0, 2, 1))
  if normalize:
    mean = windows.mean(axis=1, keepdims=True)
    std = windows.std(axis=1, keepdims=True)
    windows = (windows - mean) / np.where(std < MIN_SCALE, 1.0, std)
  return windows.astype(np.float32)


def train_val_split(data: ArrayData, val_fraction: float,
                    seed: int) -> tuple[ArrayData, ArrayData]:
  """Holds out round(N * val_fraction) random examples; the same seed gives the same split.

  Both parts keep the original order of their examples.
  """
  if not 0.0 < val_fraction < 1.0:
    raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
  n = len(data)
  n_val = int(round(n * val_fraction))
  if n_val < 1 or n_val >= n:
    raise DataError(f"{data.name}: val_fraction={val_fraction} of {n} examples leaves "
                    f"{n - n_val} for training and {n_val} for validation")
  order = np.random.default_rng(seed).permutation(n)
  return data.take(np.sort(order[n_val:])), data.take(np.sort(order[:n_val]))
