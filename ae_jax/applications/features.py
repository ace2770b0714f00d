"""Dimensionality reduction and feature learning: PCA against autoencoder latents.

Examples are flattened to (N, D); latents are (N, L). Linear probes are scikit-learn
logistic regressions on standardised features; sparse codes are judged by L0, the
fraction of variance unexplained (FVU) and the share of dead latents.
"""

from typing import Sequence

import ml_collections
import numpy as np

from ae_jax import configs
from ae_jax.applications import denoise  # noqa: F401  registers the 'subpixel' network


def flat(x) -> np.ndarray:
  """(N, ...) -> (N, D) float64."""
  x = np.asarray(x, np.float64)
  return x.reshape(len(x), -1)


class PCA:
  """Principal components of training data via SVD: `fit(x)`, `encode`, `decode`."""

  def __init__(self, num_components: int):
    self.num_components = num_components

  def fit(self, x) -> "PCA":
    x = flat(x)
    self.mean_ = x.mean(0)
    _, _, vt = np.linalg.svd(x - self.mean_, full_matrices=False)
    self.components_ = vt[:self.num_components]
    return self

  def encode(self, x) -> np.ndarray:
    """(N, ...) -> (N, num_components) coefficients."""
    return (flat(x) - self.mean_) @ self.components_.T

  def decode(self, z, shape: Sequence[int] | None = None) -> np.ndarray:
    """(N, num_components) -> (N, D), or (N, *shape) when given."""
    out = np.asarray(z, np.float64) @ self.components_ + self.mean_
    return out if shape is None else out.reshape(len(out), *shape)

  def reconstruct(self, x) -> np.ndarray:
    return self.decode(self.encode(x), np.shape(x)[1:])


def mse(x, x_hat) -> float:
  """Mean squared error over every value of every example."""
  return float(np.mean(np.square(flat(x) - flat(x_hat))))


def linear_probe(z_train, y_train, z_test, y_test, *, c: float = 1.0,
                 max_iter: int = 2000) -> float:
  """Test accuracy of a logistic regression fitted on standardised training features."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
  probe.fit(flat(z_train), np.asarray(y_train))
  return float(probe.score(flat(z_test), np.asarray(y_test)))


def sparse_metrics(z, x, x_hat, threshold: float = 0.0) -> dict[str, float]:
  """Sparse-autoencoder metrics of codes z (N, L) for data x and reconstructions x_hat.

  l0: mean number of latents with |z| > threshold per example; fvu: squared error over
  the total variance of x around its mean; dead_fraction: share of latents never active
  on these examples (dead_latents: their number).
  """
  z, x, x_hat = flat(z), flat(x), flat(x_hat)
  active = np.abs(z) > threshold
  dead = int(np.sum(~active.any(0)))
  fvu = float(np.sum(np.square(x - x_hat)) / np.sum(np.square(x - x.mean(0))))
  return {"l0": float(active.sum(1).mean()), "fvu": fvu, "dead_latents": dead,
          "dead_fraction": dead / z.shape[1]}


def tsne(z, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
  """A 2-D t-SNE map (N, 2) of latents (N, L), PCA-initialised; exact below 500 points."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  method = "exact" if len(z) < 500 else "barnes_hut"
  return TSNE(2, perplexity=perplexity, init="pca", method=method,
              random_state=seed).fit_transform(flat(z))


def ae_config(latent_dim: int, *, family: str = "ae", network: str = "subpixel",
              channels: Sequence[int] = (32, 64), widths: Sequence[int] = (512, 256),
              epochs: int = 10, batch_size: int = 64, learning_rate: float = 2e-3,
              sparsity: str = "l1", k: int = 8, l1_weight: float = 1e-3
              ) -> ml_collections.ConfigDict:
  """Config of an MSE autoencoder (family `ae` or `sparse`) trained with a cosine schedule."""
  c = configs.get_preset("default")
  c.model.family = family
  c.model.network = network
  c.model.channels = tuple(channels)
  c.model.widths = tuple(widths)
  c.model.latent_dim = latent_dim
  c.model.recon_loss = "mse"
  c.model.sparsity = sparsity
  c.model.k = k
  c.objective.l1_weight = l1_weight
  return configs.set_offline_training(c, learning_rate=learning_rate, batch_size=batch_size,
                                      epochs=epochs)
