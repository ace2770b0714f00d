"""Sparse autoencoders as dictionaries: L1, L1 weighted by decoder norms, TopK, TopK+AuxK,
BatchTopK and JumpReLU compared at the same L0 on two kinds of data.

Data (offline): MNIST pixels (`mnist_t10k`: its fixed 8,000 / 2,000 split; the last
1,000 of the 8,000 are the validation split) with scikit-learn's 8x8 digits as the
fallback when the shared data is absent; and the post-ReLU hidden activations of a small
MLP classifier trained in this script on the same training split (the setting of SAE
research, made offline), scaled so that the mean squared norm of a training vector is
its dimension.

  python -m experiments.sparse_dictionary            # the CPU-sized run (RESULTS_sparse.md)
  python -m experiments.sparse_dictionary --smoke    # seconds, for CI
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import data as data_lib
from ae_jax.errors import ConfigError
from experiments import _io

NAME = "sparse_dictionary"
VAL_SIZE = 1000


@dataclasses.dataclass
class Splits:
  """Train / validation / test vectors (N, D) float32 with labels, and where they came from."""
  name: str
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray
  y_train: np.ndarray
  y_val: np.ndarray
  y_test: np.ndarray
  note: str = ""

  @property
  def dim(self) -> int:
    return self.train.shape[1]

  def subset(self, n_train: int, n_eval: int) -> "Splits":
    return dataclasses.replace(
        self, train=self.train[:n_train], y_train=self.y_train[:n_train], val=self.val[:n_eval],
        y_val=self.y_val[:n_eval], test=self.test[:n_eval], y_test=self.y_test[:n_eval])


def _flat(data) -> tuple[np.ndarray, np.ndarray]:
  return data.x.reshape(len(data), -1).astype(np.float32), np.asarray(data.y, np.int32)


def load_pixels(source: str = "mnist_t10k", val_size: int = VAL_SIZE) -> Splits:
  """Pixel vectors in [0, 1]: mnist_t10k's train split minus its last `val_size` examples,
  those as validation, and its test split. With source 'digits' (or when the shared data
  is absent) the 1,797 8x8 digits, split 1,200 / 297 / 300 with RandomState(0)."""
  if source == "mnist_t10k" and data_lib.data_dir() is None:
    source = "digits"
  if source == "mnist_t10k":
    train, test = _io.load_splits("mnist_t10k")
    x, y = _flat(train)
    x_test, y_test = _flat(test)
    return Splits("mnist_t10k", x[:-val_size], x[-val_size:], x_test, y[:-val_size],
                  y[-val_size:], y_test, "MNIST t10k pixels, 7,000 / 1,000 / 2,000")
  if source != "digits":
    raise ConfigError(f"--data must be mnist_t10k or digits, got {source!r}")
  x, y = _flat(data_lib.load("digits"))
  order = np.random.RandomState(0).permutation(len(x))
  tr, va, te = order[:1200], order[1200:1497], order[1497:]
  return Splits("digits", x[tr], x[va], x[te], y[tr], y[va], y[te],
                "sklearn 8x8 digits (fallback: shared MNIST absent), 1,200 / 297 / 300")


def _mlp_init(key, sizes):
  params = []
  for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1), zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), "b": jnp.zeros(b)})
  return params


def _mlp_hidden(params, x):
  """Post-ReLU activations of every hidden layer, a list of (B, width)."""
  hidden, h = [], x
  for layer in params[:-1]:
    h = jax.nn.relu(h @ layer["w"] + layer["b"])
    hidden.append(h)
  return hidden


def _mlp_logits(params, x):
  h = _mlp_hidden(params, x)[-1] if len(params) > 1 else x
  return h @ params[-1]["w"] + params[-1]["b"]


def train_classifier(x, y, widths=(256, 128), epochs: int = 8, batch_size: int = 128,
                     learning_rate: float = 1e-3, seed: int = 0):
  """An MLP classifier x (N, D) -> 10 classes with ReLU hidden layers of `widths`,
  trained with Adam on softmax cross-entropy. Returns its parameters (a list of layers)."""
  num_classes = int(y.max()) + 1
  params = _mlp_init(jax.random.key(seed), [x.shape[1], *widths, num_classes])
  tx = optax.adam(learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(_mlp_logits(p, xb), yb).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  rng = np.random.RandomState(seed)
  for _ in range(epochs):
    order = rng.permutation(len(x))
    for start in range(0, len(x) - batch_size + 1, batch_size):
      idx = order[start:start + batch_size]
      params, opt_state, _ = step(params, opt_state, x[idx], y[idx])
  return params


def classifier_accuracy(params, x, y) -> float:
  return float(np.mean(np.asarray(jnp.argmax(_mlp_logits(params, x), -1)) == y))


def load_activations(pixels: Splits, widths=(256, 128), layer: int = -1, epochs: int = 8,
                     seed: int = 0) -> tuple[Splits, dict]:
  """Post-ReLU activations of hidden layer `layer` of an MLP classifier trained on
  `pixels.train`, for every split, scaled by one factor (fitted on the training split) so
  that a training vector's mean squared norm equals its dimension. Returns the splits
  and the classifier's facts (widths, epochs, validation and test accuracy, scale)."""
  t0 = time.time()
  params = train_classifier(pixels.train, pixels.y_train, widths, epochs=epochs, seed=seed)
  acts = {split: np.asarray(_mlp_hidden(params, getattr(pixels, split))[layer], np.float32)
          for split in ("train", "val", "test")}
  scale = float(np.sqrt(acts["train"].shape[1] / np.mean(np.sum(acts["train"] ** 2, -1))))
  facts = {"widths": list(widths), "layer": layer, "epochs": epochs,
           "val_accuracy": classifier_accuracy(params, pixels.val, pixels.y_val),
           "test_accuracy": classifier_accuracy(params, pixels.test, pixels.y_test),
           "scale": scale, "train_seconds": round(time.time() - t0, 1),
           "alive_units": int(np.sum(acts["train"].max(0) > 0))}
  width = acts["train"].shape[1]
  splits = Splits(f"mlp_acts_{pixels.name}", acts["train"] * scale, acts["val"] * scale,
                  acts["test"] * scale, pixels.y_train, pixels.y_val, pixels.y_test,
                  f"post-ReLU activations ({width} units) of hidden layer {layer} of an MLP "
                  f"{pixels.dim}-{'-'.join(map(str, widths))}-10 classifier trained {epochs} "
                  f"epochs on the {pixels.name} training split (test accuracy "
                  f"{facts['test_accuracy']:.3f}), scaled by {scale:.3g}")
  return splits, facts
