"""Anomaly detection with autoencoders, shaped like a PyOD detector.

`AutoencoderDetector(...).fit(X)` trains an ensemble of autoencoders of any family of
`ae_jax.families` on (mostly) normal examples; `decision_function(X)` gives one score per
example (higher = more anomalous), `predict(X)` 0/1 labels by `threshold_`. Scores and
threshold rules are chosen by name from `SCORES` and `THRESHOLDS`.

Shapes: X is (N, D) vectors, (N, T, C) sequences ((N, T) with network='conv1d' or
'tcn1d') or (N, H, W, C) images. Everything is scored in batches of `score_batch_size`, so memory
does not grow with N.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import configs
from ae_jax.configs import overrides as overrides_lib
from ae_jax import data as data_lib
from ae_jax.anomaly.scores import (MAX_CODES, SCORES, TrainStats, knn_distance,
                                   reconstruction)
from ae_jax.anomaly.thresholds import DEFAULT_THRESHOLD, THRESHOLDS
from ae_jax.errors import CheckpointError, ConfigError, DataError
from ae_jax.families import build_model, get_family
from ae_jax.fit import fit
from ae_jax.networks import ACTIVATIONS
from ae_jax.train import init_params

FORMAT_VERSION = 1
MIN_HELD_OUT = 20
CONFIG_FILE = "detector.json"
ARRAYS_FILE = "arrays.npz"


# ---- scaling -------------------------------------------------------------------------

SCALINGS = ("standard", "robust", "minmax", "none")
ERROR_WEIGHTS = ("none", "train")
EVAL_EVERY = ("epoch", "budget")  # named evaluation intervals (see AutoencoderDetector)


def fit_scaler(method: str, x: np.ndarray) -> data_lib.Scaler:
  """A fitted per-feature `Scaler` (offset and scale of shape x.shape[1:]).

  'robust' is `ae_jax.data.robust_scaler` (median and IQR / 1.349), so anomalies in the
  training data do not inflate the scale; the others are `ae_jax.data.Scaler(method)`.
  """
  if method not in SCALINGS:
    raise ConfigError(f"scaling must be one of {SCALINGS}, got {method!r}")
  if method == "robust":
    return data_lib.robust_scaler(x)
  return data_lib.Scaler(method).fit(x)


def holdout_split(n: int, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(train indices, held-out indices), both sorted: `n_val` of range(n) drawn by `seed`.

  The detector holds out its validation part this way; experiments use it to give
  other detectors the same held-out rows.
  """
  order = np.random.default_rng(seed).permutation(n)
  return np.sort(order[n_val:]), np.sort(order[:n_val])


AUTO_NETWORKS = {1: "mlp", 2: "conv1d", 3: "conv2d"}


def network_for(network: str, example_shape: tuple) -> str:
  """`network`, or for 'auto' the network that suits examples of `example_shape`."""
  if network != "auto":
    return network
  if len(example_shape) not in AUTO_NETWORKS:
    raise DataError(f"network='auto' knows vectors, sequences and images, not examples of "
                    f"shape {example_shape}; pass network= explicitly")
  return AUTO_NETWORKS[len(example_shape)]


# ---- configuration -------------------------------------------------------------------

def default_sizes(input_shape: tuple) -> tuple[tuple[int, ...], int]:
  """(MLP hidden widths, latent size) for examples of `input_shape`.

  The bottleneck is kept well below the input size so that the network cannot learn the
  identity on low-dimensional tabular data.
  """
  d = math.prod(input_shape)
  latent = int(min(32, max(2, math.ceil(d / 4))))
  hidden = int(min(256, max(32, 2 * d)))
  return (hidden, max(hidden // 2, latent)), latent


# Detector arguments for training data that holds the anomalies too (ADBench's unsupervised
# protocol; `ae-jax detect --contaminated`): median/IQR scaling, a loss that ignores each
# batch's 20 % worst-reconstructed rows, the mean squared residual as the score, tanh
# hidden layers. Chosen on ADBench's 12 shared sets (experiments/RESULTS_anomaly.md,
# sessions 7 and 10); the class's own defaults serve clean (normal-only) training data.
CONTAMINATED = {"scaling": "robust", "trim": 0.2, "score": "mse", "activation": "tanh"}


# ---- the detector --------------------------------------------------------------------

class AutoencoderDetector:
  """A PyOD-style anomaly detector backed by an ensemble of autoencoders.

  Attributes after `fit`: `threshold_` (float), `decision_scores_` (N,) scores of the
  training examples, `labels_` (N,) their 0/1 labels, `reference_scores_` the scores the
  threshold rule read, `models_` one `ae_jax.fit.Trained` per ensemble member,
  `history_` their training logs, `stats_` the members' `TrainStats`;
  `feature_names_in_` the column names of tabular input, when the caller sets them
  (`ae-jax detect` does; they are saved and loaded with the detector).

  The rules 'percentile', 'mean_std' and 'max' read the scores of the held-out
  validation part when it has at least MIN_HELD_OUT examples: the networks never trained
  on them, whereas scores of training examples are biased low. Otherwise they read the
  scores of every training example, as PyOD does.
  """

  def __init__(self, family: str = "ae", network: str = "mlp", *,
               contamination: float = 0.1, threshold: str = DEFAULT_THRESHOLD,
               score: str = "gaussian", k: float = 1.0, scaling: str = "standard",
               error_weights: str = "none", trim: float = 0.0,
               ensemble: int = 3, latent_dim: int | None = None,
               widths: tuple[int, ...] | None = None,
               channels: tuple[int, ...] = (32, 64), dropout: float = 0.2,
               activation: str = "relu",
               epochs: int = 100, max_steps: int = 1000, batch_size: int = 64,
               learning_rate: float = 1e-3,
               val_fraction: float = 0.1, max_val: int = 8192, patience: int = 5,
               eval_every: int | str | None = None, seed: int = 0,
               score_batch_size: int = 4096, score_samples: int = 64,
               overrides: dict[str, Any] | None = None,
               config: ml_collections.ConfigDict | None = None):
    """Sets up a detector; nothing is trained until `fit`.

    Args:
      family / network: the autoencoder family and network (see `ae_jax.families`);
        network 'auto' picks it from the examples' rank: mlp for vectors (N, D), conv1d
        for sequences (N, T, C), conv2d for images (N, H, W, C).
      contamination: the expected share of anomalies in the training data, in (0, 0.5]
        (read by the 'percentile' rule).
      threshold: a name in `THRESHOLDS` (tukey, the default; percentile, mean_std, max,
        log_tukey, f1_best).
      score: a name in `SCORES`: gaussian (residuals and codes, the default), mse, mae,
        knn, latent_knn, combined (residual and latent kNN terms, each standardised on
        the held-out examples), mse_gaussian and mse_gaussian_max (the mse and gaussian
        scores, standardised alike, summed or the larger); elbo, nll for the VAE.
      k: the k of the 'mean_std' rule.
      scaling: 'standard', 'robust', 'minmax' or 'none', fitted on the training part of X.
      error_weights: 'none', or 'train' to divide each feature's error by its mean over
        the training part (features that are always reconstructed well then count more).
      trim: with family 'ae', the share of each training batch with the highest loss that
        the loss ignores (family 'trimmed_ae'), against anomalies in the training data.
      ensemble: number of members (seeds seed, seed + 1000, ...); their scores are averaged.
      latent_dim / widths: None picks them from the input size (`default_sizes`).
      channels: conv channels for network conv1d / conv2d / tcn1d.
      dropout: dropout rate of the MLP's hidden layers while training.
      activation: the hidden layers' activation, a name in `ae_jax.networks.ACTIVATIONS`
        (relu, the default; tanh scores contaminated tabular data better: CONTAMINATED).
      epochs / max_steps: train for min(epochs * batches per epoch, max_steps) steps.
      batch_size, learning_rate: training batch size (capped at the training size), Adam.
      val_fraction / max_val: held-out share of X (at most max_val examples) for early
        stopping; 0 turns validation and early stopping off.
      patience: evaluations without improvement before stopping; the best parameters
        are kept. 0 trains for all steps.
      eval_every: steps between evaluations; None or 'epoch' = about once per epoch (at
        least 20 evaluations), 'budget' = 20 evaluations spread over the step budget
        (on small training sets 'epoch' evaluates every few steps, so `patience` stops
        training after a few dozen steps; 'budget' lets it run at least a quarter of
        the budget with the default patience).
      seed: makes the split, the initialisation and the batch order reproducible.
      score_batch_size: examples per scoring batch.
      score_samples: Monte Carlo samples of the 'elbo' and 'nll' scores.
      overrides: extra config fields as {'model.dropout': 0.1, ...}.
      config: a full `ml_collections` config to start from instead of the default preset.
    """
    self.family = family
    self.network = network
    self.contamination = contamination
    self.threshold = threshold
    self.score = score
    self.k = k
    self.scaling = scaling
    self.error_weights = error_weights
    self.trim = trim
    self.ensemble = ensemble
    self.latent_dim = latent_dim
    self.widths = None if widths is None else tuple(widths)
    self.channels = tuple(channels)
    self.dropout = dropout
    self.activation = activation
    self.epochs = epochs
    self.max_steps = max_steps
    self.batch_size = batch_size
    self.learning_rate = learning_rate
    self.val_fraction = val_fraction
    self.max_val = max_val
    self.patience = patience
    self.eval_every = eval_every
    self.seed = seed
    self.score_batch_size = score_batch_size
    self.score_samples = score_samples
    self.overrides = dict(overrides or {})
    self.config = config
    self._validate()
    self.threshold_: float | None = None
    self.decision_scores_: np.ndarray | None = None
    self.labels_: np.ndarray | None = None
    self.models_: list = []
    self.history_: list[list[dict]] = []
    self.feature_names_in_: list[str] | None = None

  # -- setup --

  def get_params(self) -> dict[str, Any]:
    """The constructor arguments (JSON-serialisable except `config`)."""
    names = ("family", "network", "contamination", "threshold", "score", "k", "scaling",
             "error_weights", "trim", "ensemble", "latent_dim", "widths", "channels",
             "dropout", "activation", "epochs", "max_steps",
             "batch_size", "learning_rate", "val_fraction", "max_val", "patience",
             "eval_every", "seed", "score_batch_size", "score_samples", "overrides")
    return {n: getattr(self, n) for n in names}

  def _validate(self) -> None:
    THRESHOLDS.get(self.threshold)
    score = SCORES.get(self.score)
    if get_family(self.family).conditional:
      raise ConfigError(f"family {self.family!r} conditions on class labels, which anomaly "
                        "detection does not have at scoring time; use family='vae'")
    if score.needs_vae and self.family != "vae":
      raise ConfigError(f"score {self.score!r} needs family='vae', got {self.family!r}; "
                        "use score='mse' or 'mae' for other families")
    if not 0.0 < self.contamination <= 0.5:
      raise ConfigError(f"contamination must be in (0, 0.5], got {self.contamination}")
    if self.scaling not in SCALINGS:
      raise ConfigError(f"scaling must be one of {SCALINGS}, got {self.scaling!r}")
    if self.error_weights not in ERROR_WEIGHTS:
      raise ConfigError(f"error_weights must be one of {ERROR_WEIGHTS}, got "
                        f"{self.error_weights!r}")
    for name in ("ensemble", "epochs", "max_steps", "batch_size", "score_batch_size",
                 "score_samples"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if not 0.0 <= self.trim < 0.5:
      raise ConfigError(f"trim must be in [0, 0.5), got {self.trim}")
    if self.activation not in ACTIVATIONS:
      raise ConfigError(f"activation must be one of {', '.join(sorted(ACTIVATIONS))}, got "
                        f"{self.activation!r}")
    if self.trim and self.family != "ae":
      raise ConfigError(f"trim applies to family='ae' (trained as 'trimmed_ae'), got "
                        f"{self.family!r}")
    if not 0.0 <= self.val_fraction < 1.0:
      raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
    if self.eval_every not in (None, *EVAL_EVERY) and not (
        isinstance(self.eval_every, int) and not isinstance(self.eval_every, bool)
        and self.eval_every >= 1):
      raise ConfigError(f"eval_every must be a positive integer, None or one of "
                        f"{EVAL_EVERY}, got {self.eval_every!r}")

  def _build_config(self, input_shape: tuple, num_train: int) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(self.config.to_dict()) if self.config is not None \
        else configs.get_preset("default")
    widths, latent = default_sizes(input_shape)
    m = cfg.model
    m.family, m.network = self.family, network_for(self.network, input_shape)
    if self.trim:
      m.family, cfg.objective.trim = "trimmed_ae", self.trim
    m.latent_dim = self.latent_dim or latent
    m.widths = self.widths or widths
    m.channels = self.channels
    m.dropout = self.dropout
    m.activation = self.activation
    if self.family == "vae" and m.recon_loss not in ("bce", "gaussian"):
      m.recon_loss = "gaussian"
    if self.scaling in ("standard", "robust"):
      cfg.objective.noise_clip = False
    cfg.data.scaling = "none"
    cfg.data.val_fraction = 0.0
    cfg.data.labels = False
    cfg.optim.learning_rate = self.learning_rate
    t = cfg.train
    t.batch_size = min(self.batch_size, num_train)
    per_epoch = max(1, num_train // t.batch_size)
    t.num_epochs = 0
    t.num_steps = int(min(self.max_steps, self.epochs * per_epoch))
    spread = max(1, t.num_steps // 20)
    if self.eval_every in (None, "epoch"):
      t.eval_every = min(per_epoch, spread)
    elif self.eval_every == "budget":
      t.eval_every = spread
    else:
      t.eval_every = int(self.eval_every)
    t.log_every = t.eval_every
    t.checkpoint_every = t.num_steps
    t.patience = self.patience
    t.parallel = "jit"
    t.figures = False
    cfg.seed = self.seed
    for key, value in self.overrides.items():
      overrides_lib.set_value(cfg, key, value, "detector overrides")
    return cfg

  def _prepare(self, X) -> np.ndarray:
    """X as float32 of the detector's example shape, checked for NaN/inf."""
    x = np.asarray(X, np.float32)
    if self.network in ("conv1d", "tcn1d") and x.ndim == 2:
      x = x[..., None]
    if x.ndim < 2:
      raise DataError(f"expected a batch of examples (N, ...), got an array of shape {x.shape}")
    if getattr(self, "input_shape_", None) is not None and x.shape[1:] != self.input_shape_:
      raise DataError(f"the detector was fitted on examples of shape {self.input_shape_}, "
                      f"got {x.shape[1:]}")
    if not np.all(np.isfinite(x)):
      bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(1))
      raise DataError(f"NaN/inf in X: {bad.size} examples, the first at index {bad[0]}; "
                      "impute or drop them first (ae_jax.data.check_finite)")
    return x

  # -- training --

  def holdout_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) indices into n examples, as `fit` splits them."""
    n_val = min(self.max_val, int(round(n * self.val_fraction))) if self.val_fraction else 0
    return holdout_split(n, n_val, self.seed)

  def fit(self, X, y=None, *, X_val=None, y_val=None) -> "AutoencoderDetector":
    """Trains on X (N, ...) and sets `threshold_`; returns self.

    Args:
      X: training examples, normal or mostly normal (`contamination`).
      y: optional 0/1 labels of X (1 = anomaly). Training never uses them; the
        'f1_best' rule reads the labels of the held-out validation part.
      X_val, y_val: a labelled validation set for the 'f1_best' rule instead.
    """
    x = self._prepare(X)
    n = len(x)
    self.input_shape_ = tuple(x.shape[1:])
    train_idx, val_idx = self.holdout_indices(n)
    n_val = len(val_idx)
    if n_val and n - n_val < 2:
      raise DataError(f"{n} examples are too few to hold out {n_val} for validation; "
                      "give more data or set val_fraction=0")
    check_labels(self.threshold, n_val, y, X_val, y_val)
    self.scaler_ = fit_scaler(self.scaling, x[train_idx])
    x_scaled = self.scaler_.transform(x)
    make = data_lib.sources.make_array_data
    train = make(x_scaled[train_idx], None, "anomaly:train")
    val = make(x_scaled[val_idx], None, "anomaly:val") if n_val else None
    base = self._build_config(self.input_shape_, len(train))
    self.models_, self.history_ = [], []
    for member in range(self.ensemble):
      cfg = ml_collections.ConfigDict(base.to_dict())
      cfg.seed = self.seed + 1000 * member
      trained = fit(cfg, None, train_data=train, eval_data=val, progress=False,
                    restore_best=val is not None, make_loader=data_lib.ArrayBatches)
      self.models_.append(trained)
      self.history_.append(trained.history)
    self.config_ = base
    self._finish_setup()
    self.stats_ = self._train_stats(x[train_idx])
    if SCORES.get(self.score).terms is not None:
      self.stats_ = self._with_term_stats(
          self.stats_, x[val_idx] if n_val >= MIN_HELD_OUT else x[train_idx])
    self.decision_scores_ = self.decision_function(x)
    set_threshold(self, val_idx, y, X_val, y_val)
    return self

  def _finish_setup(self) -> None:
    """Stacks the members' parameters for one vmapped, compiled scoring call."""
    for name in ("_element_fn", "_example_fn", "_reconstruct_fn", "_stats_fn", "_encode_fn",
                 "_terms_fn"):
      self.__dict__.pop(name, None)
    self.model_ = self.models_[0].model
    self.params_ = jax.tree.map(lambda *p: jnp.asarray(np.stack([np.asarray(a) for a in p])),
                                *[t.params for t in self.models_])

  # -- scoring --

  def _check_fitted(self) -> None:
    if getattr(self, "params_", None) is None:
      raise DataError("the detector is not fitted: call fit(X) first")

  def _weights(self, stats: TrainStats):
    return stats.err_scale if self.error_weights == "train" else jnp.ones_like(stats.err_scale)

  @functools.cached_property
  def _stats_fn(self):
    """jit(params, x, mask) -> per-member masked sums of errors, codes and code products."""
    element, model = SCORES.get(self.score).per_element, self.model_

    def sums(p, x, mask):
      err = element(model, p, x)
      z = model.apply(p, x, method=model.encode).reshape(x.shape[0], -1)
      return (jnp.tensordot(mask, err, 1), mask @ z, jnp.einsum("b,bi,bj->ij", mask, z, z))

    return jax.jit(lambda params, x, mask: jax.vmap(lambda p: sums(p, x, mask))(params))

  def _train_stats(self, x: np.ndarray) -> TrainStats:
    """Per-member `TrainStats` (leading axis = member) over the training examples x."""
    total = None
    for start, stop, batch in self._batches(x):
      mask = (np.arange(len(batch)) < stop - start).astype(np.float32)
      got = jax.tree.map(np.asarray, self._stats_fn(self.params_, batch, mask))
      total = got if total is None else jax.tree.map(np.add, total, got)
    n = float(len(x))
    err, z_sum, zz_sum = (t.astype(np.float64) / n for t in total)
    floor = 1e-3 * err.reshape(len(err), -1).mean(-1) + 1e-12
    err = np.maximum(err, floor.reshape((-1,) + (1,) * (err.ndim - 1)))
    cov = zz_sum - z_sum[:, :, None] * z_sum[:, None, :]
    evals, evecs = np.linalg.eigh(cov)
    evals = np.maximum(evals, 1e-6 * evals.max(-1, keepdims=True) + 1e-12)
    precision = np.einsum("mij,mj,mkj->mik", evecs, 1.0 / evals, evecs)
    whiten = evecs / np.sqrt(evals)[:, None, :]
    pick = np.random.default_rng(self.seed + 11).permutation(len(x))[:MAX_CODES]
    codes = np.concatenate([np.asarray(self._encode_fn(self.params_, batch))[:, :stop - start]
                            for start, stop, batch in self._batches(x[np.sort(pick)])], 1)
    codes = np.einsum("mrl,mlk->mrk", codes - z_sum[:, None, :], whiten).astype(np.float32)
    knn_scale = np.array([np.mean(np.concatenate([
        np.asarray(knn_distance(jnp.asarray(c[i:i + 1024]), jnp.asarray(c)))
        for i in range(0, len(c), 1024)])) for c in codes]) if len(pick) > 1 else \
        np.ones(len(codes))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    members = len(err)
    return TrainStats(f32(err), f32(z_sum), f32(precision), f32(whiten), f32(codes),
                      f32(np.maximum(knn_scale, 1e-12)), f32(np.zeros((members, 2))),
                      f32(np.ones((members, 2))))

  @functools.cached_property
  def _terms_fn(self):
    """jit(params, stats, x (B, ...)) -> (members, B, 2): the two terms of the score."""
    model, terms = self.model_, SCORES.get(self.score).terms
    return jax.jit(lambda params, stats, x: jax.vmap(
        lambda p, st: terms(model, p, x, st))(params, stats))

  def _with_term_stats(self, stats: TrainStats, x_ref: np.ndarray) -> TrainStats:
    """`stats` with term_mean / term_std: per member, the mean and std of the score's two
    terms over the reference examples x_ref (the held-out part)."""
    terms = np.concatenate([np.asarray(self._terms_fn(self.params_, stats, batch))
                            [:, :stop - start] for start, stop, batch in self._batches(x_ref)],
                           1).astype(np.float64)
    std = np.maximum(terms.std(1), 1e-6 * np.abs(terms.mean(1)) + 1e-12)
    return stats.replace(term_mean=jnp.asarray(terms.mean(1), jnp.float32),
                         term_std=jnp.asarray(std, jnp.float32))

  @functools.cached_property
  def _encode_fn(self):
    """jit(params, x (B, ...)) -> codes (members, B, L)."""
    model = self.model_
    return jax.jit(lambda params, x: jax.vmap(
        lambda p: model.apply(p, x, method=model.encode).reshape(x.shape[0], -1))(params))

  @functools.cached_property
  def _element_fn(self):
    """jit(params, stats, x) -> (B, *shape) errors / weights, averaged over members."""
    element, model = SCORES.get(self.score).per_element, self.model_
    return jax.jit(lambda params, stats, x: jnp.mean(jax.vmap(
        lambda p, st: element(model, p, x) / self._weights(st))(params, stats), axis=0))

  @functools.cached_property
  def _example_fn(self):
    """jit(params, stats, x (B, ...), start) -> (B,) scores, averaged over members."""
    score = SCORES.get(self.score)
    model, cfg, samples, seed = self.model_, self.config_, self.score_samples, self.seed

    def one(p, st, x, keys):
      if score.per_example is not None:
        return score.per_example(model, p, x, keys, cfg, samples, st)
      err = score.per_element(model, p, x) / self._weights(st)
      return jnp.mean(err.reshape(x.shape[0], -1), -1)

    def scores(params, stats, x, start):
      base = jax.random.key(seed + 7)
      keys = jax.vmap(lambda i: jax.random.fold_in(base, i))(start + jnp.arange(x.shape[0]))
      return jnp.mean(jax.vmap(lambda p, st: one(p, st, x, keys))(params, stats), axis=0)

    return jax.jit(scores)

  @functools.cached_property
  def _reconstruct_fn(self):
    model = self.model_
    return jax.jit(lambda params, x: jnp.mean(
        jax.vmap(lambda p: reconstruction(model, p, x))(params), axis=0))

  def _batches(self, x: np.ndarray):
    """(start, stop, padded scaled batch) over x in batches of score_batch_size.

    Smaller inputs get one batch padded to a power of two, so that a few compiled
    shapes serve every call.
    """
    bs = min(self.score_batch_size, 2 ** max(6, math.ceil(math.log2(max(len(x), 1)))))
    for start in range(0, len(x), bs):
      chunk = self.scaler_.transform(x[start:start + bs])
      stop = start + len(chunk)
      if len(chunk) < bs:
        chunk = np.concatenate([chunk, np.zeros((bs - len(chunk),) + chunk.shape[1:],
                                                np.float32)])
      yield start, stop, chunk

  def decision_function(self, X) -> np.ndarray:
    """Anomaly scores (N,) of examples X (N, ...); higher means more anomalous."""
    self._check_fitted()
    x = self._prepare(X)
    out = np.empty((len(x),), np.float32)
    for start, stop, batch in self._batches(x):
      got = self._example_fn(self.params_, self.stats_, batch, start)
      out[start:stop] = np.asarray(got)[:stop - start]
    return out

  def predict(self, X) -> np.ndarray:
    """0/1 labels (N,): 1 where decision_function(X) > threshold_."""
    if self.threshold_ is None:
      raise DataError("the detector has no threshold: call fit(X) first")
    return (self.decision_function(X) > self.threshold_).astype(np.int64)

  def feature_scores(self, X) -> np.ndarray:
    """Per-feature errors (N, *example_shape) in scaled units, averaged over members.

    Squared errors (absolute for score 'mae'), divided by the training mean of each
    feature's error when error_weights='train'; their mean over features is the
    'mse' / 'mae' score.
    """
    self._check_fitted()
    x = self._prepare(X)
    out = np.empty(x.shape, np.float32)
    for start, stop, batch in self._batches(x):
      got = self._element_fn(self.params_, self.stats_, batch)
      out[start:stop] = np.asarray(got)[:stop - start]
    return out

  def timestep_scores(self, X) -> np.ndarray:
    """Per-timestep errors (N, T) of sequences (N, T, C), averaged over channels."""
    x = self._prepare(X)
    if x.ndim != 3:
      raise DataError(f"timestep_scores needs sequences (N, T, C), got shape {x.shape}")
    return self.feature_scores(x).mean(axis=-1)

  def reconstruct(self, X) -> np.ndarray:
    """Reconstructions (N, *example_shape) in data units, averaged over members."""
    self._check_fitted()
    x = self._prepare(X)
    out = np.empty(x.shape, np.float32)
    for start, stop, batch in self._batches(x):
      out[start:stop] = np.asarray(self._reconstruct_fn(self.params_, batch))[:stop - start]
    return self.scaler_.inverse_transform(out)

  # -- persistence --

  def save(self, path) -> pathlib.Path:
    """Writes detector.json and arrays.npz into the folder `path` (no pickle)."""
    self._check_fitted()
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = self.get_params()
    params["widths"] = None if params["widths"] is None else list(params["widths"])
    params["channels"] = list(params["channels"])
    meta = {"version": FORMAT_VERSION, "params": params, "config": self.config_.to_json(),
            "input_shape": list(self.input_shape_), "threshold_": self.threshold_,
            "feature_names_in": self.feature_names_in_}
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    arrays = {f"params/{k}": np.asarray(v) for k, v in _flatten(self.params_).items()}
    arrays.update({"scaler/offset": self.scaler_.offset, "scaler/scale": self.scaler_.scale,
                   "decision_scores": self.decision_scores_,
                   "reference_scores": self.reference_scores_})
    arrays.update({f"stats/{f.name}": np.asarray(getattr(self.stats_, f.name))
                   for f in dataclasses.fields(TrainStats)})
    np.savez(path / ARRAYS_FILE, **arrays)
    return path

  @classmethod
  def load(cls, path) -> "AutoencoderDetector":
    """Rebuilds a detector written by `save`; reads only JSON and numeric arrays."""
    path = pathlib.Path(path)
    meta = read_meta(path, CONFIG_FILE, ARRAYS_FILE, "detector")
    det = cls(**meta["params"])
    det.config_ = ml_collections.ConfigDict(json.loads(meta["config"]))
    det.input_shape_ = tuple(meta["input_shape"])
    det.threshold_ = meta["threshold_"]
    det.feature_names_in_ = meta.get("feature_names_in")
    model = build_model(det.config_, det.input_shape_)
    template = init_params(model, det.input_shape_, jax.random.key(0))
    with np.load(path / ARRAYS_FILE, allow_pickle=False) as arrays:
      stored = {k[len("params/"):]: arrays[k] for k in arrays.files if k.startswith("params/")}
      det.params_ = _unflatten(template, stored, det.ensemble, path)
      det.scaler_ = data_lib.Scaler.from_state({
          "method": det.scaling, "offset": arrays["scaler/offset"],
          "scale": arrays["scaler/scale"]})
      det.decision_scores_ = arrays["decision_scores"]
      det.reference_scores_ = arrays["reference_scores"]
      det.stats_ = TrainStats(**_stats_fields(arrays, det.ensemble))
    det.model_ = model
    det.labels_ = (det.decision_scores_ > det.threshold_).astype(np.int64)
    return det


def check_labels(threshold: str, n_val: int, y, X_val, y_val) -> None:
  """Before any training: the labels `fit` needs for the 'f1_best' rule are there (y with
  a non-empty held-out part of n_val examples, or X_val and y_val)."""
  if threshold == "f1_best" and X_val is None and (y is None or not n_val):
    raise ConfigError("threshold 'f1_best' needs labels: pass y to fit (with "
                      "val_fraction > 0, the held-out part is used) or X_val and y_val")
  if X_val is not None and y_val is None:
    raise ConfigError("X_val was given without y_val")


def set_threshold(det, val_idx: np.ndarray, y, X_val, y_val) -> None:
  """Sets det.reference_scores_, det.threshold_ and det.labels_ from det.decision_scores_
  (the scores of the fit examples): the rule det.threshold reads the scores of the
  held-out part `val_idx` when it has at least MIN_HELD_OUT examples, else every fit
  score; 'f1_best' reads the labelled X_val, or y of the held-out part."""
  scores = det.decision_scores_
  val_scores = val_labels = None
  if X_val is not None:
    val_scores, val_labels = det.decision_function(X_val), np.asarray(y_val)
  elif y is not None and len(val_idx):
    val_scores, val_labels = scores[val_idx], np.asarray(y)[val_idx]
  det.reference_scores_ = scores[val_idx] if len(val_idx) >= MIN_HELD_OUT else scores
  det.threshold_ = THRESHOLDS.get(det.threshold)(
      det.reference_scores_, contamination=det.contamination, k=det.k,
      val_scores=val_scores, val_labels=val_labels)
  det.labels_ = (scores > det.threshold_).astype(np.int64)


def read_meta(path: pathlib.Path, config_file: str, arrays_file: str, kind: str) -> dict:
  """The JSON metadata of a detector folder written by `save`, after checking that the
  folder holds both files and that their format version is this one's."""
  if not (path / config_file).exists() or not (path / arrays_file).exists():
    raise CheckpointError(f"{path} holds no saved {kind} (expected {config_file} and "
                          f"{arrays_file})")
  meta = json.loads((path / config_file).read_text())
  if meta.get("version") != FORMAT_VERSION:
    raise CheckpointError(f"{path}: detector format {meta.get('version')}, this version "
                          f"reads {FORMAT_VERSION}")
  return meta


def _stats_fields(arrays, members: int) -> dict[str, jax.Array]:
  """The `TrainStats` fields stored in `arrays`; detectors saved before the latent kNN
  scores existed lack codes, whitening and knn_scale, which get neutral stand-ins."""
  got = {f.name: jnp.asarray(arrays[f"stats/{f.name}"]) for f in dataclasses.fields(TrainStats)
         if f"stats/{f.name}" in arrays.files}
  latent = got["latent_mean"].shape[-1]
  got.setdefault("latent_whiten", jnp.broadcast_to(jnp.eye(latent), (members, latent, latent)))
  got.setdefault("codes", jnp.zeros((members, 2, latent)))
  got.setdefault("knn_scale", jnp.ones((members,)))
  got.setdefault("term_mean", jnp.zeros((members, 2)))
  got.setdefault("term_std", jnp.ones((members, 2)))
  return got


def _flatten(tree) -> dict[str, Any]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p, simple=True, separator="/"): v for p, v in leaves}


def _unflatten(template, stored: dict[str, np.ndarray], members: int, where) -> Any:
  """Fills the structure of `template` (one member) with stacked arrays from `stored`."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for p, leaf in paths:
    key = jax.tree_util.keystr(p, simple=True, separator="/")
    if key not in stored:
      raise CheckpointError(f"{where}: parameter {key!r} is missing; the saved arrays do not "
                            "match the saved config")
    value = stored.pop(key)
    if value.shape != (members, *leaf.shape):
      raise CheckpointError(f"{where}: parameter {key!r} has shape {value.shape}, expected "
                            f"{(members, *leaf.shape)}")
    leaves.append(jnp.asarray(value, leaf.dtype))
  if stored:
    raise CheckpointError(f"{where}: unexpected parameters {sorted(stored)[:5]}")
  return jax.tree_util.tree_unflatten(treedef, leaves)
