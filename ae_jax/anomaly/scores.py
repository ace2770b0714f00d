"""Anomaly scores: a name in `SCORES` -> a `Score` saying how one trained model scores a batch.

A score sees one ensemble member's model and parameters, a scaled batch x (B, ...) and
the member's training statistics (`TrainStats`); the detector averages its (B,) output
over the members.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax
import jax
import jax.numpy as jnp

from ae_jax.families import elbo_terms, importance_sampled_nll
from ae_jax.registry import Registry

@dataclasses.dataclass(frozen=True)
class Score:
  """How one trained model scores a batch.

  `per_element(model, params, x)` gives (B, *shape) errors whose mean over features is
  the score, or None; `per_example(model, params, x, keys, cfg, samples, stats)` gives
  (B,) scores directly. `stats` are the member's training statistics (`TrainStats`).
  """
  name: str
  per_element: Callable | None
  per_example: Callable | None = None
  needs_vae: bool = False
  # terms(model, params, x, stats) -> (B, 2): for a score built from two terms, each
  # standardised with its mean and std over the reference (held-out) examples; the
  # detector fits those statistics (`TrainStats.term_mean` / `term_std`) only for such scores
  terms: Callable | None = None


@flax.struct.dataclass
class TrainStats:
  """One member's statistics on the training part, in scaled units.

  err_scale: mean per-feature error (*shape) of the element score (squared for 'mse'
  and 'gaussian', absolute for 'mae'); latent_mean (L,) and latent_precision (L, L):
  the mean and inverse covariance of the codes; latent_whiten (L, L): W with
  W W^T = latent_precision; codes (R, L): whitened codes of up to MAX_CODES training
  examples; knn_scale (): the mean `knn_distance` of those codes among themselves;
  term_mean (2,) and term_std (2,): mean and std of the two terms of a standardised
  score ('combined', 'mse_gaussian', 'mse_gaussian_max') over the reference (held-out)
  examples; 0 and 1 for every other score.
  """
  err_scale: jax.Array
  latent_mean: jax.Array
  latent_precision: jax.Array
  latent_whiten: jax.Array
  codes: jax.Array
  knn_scale: jax.Array
  term_mean: jax.Array
  term_std: jax.Array


MAX_CODES = 4096
KNN_K = 5


SCORES: Registry[Score] = Registry("anomaly score")


def reconstruction(model, params, x):
  """The model's reconstruction of the scaled batch x (B, ...), same shape."""
  return model.apply(params, x, method=model.reconstruct)


def _squared_error(model, params, x):
  return jnp.square(reconstruction(model, params, x) - x)


def _abs_error(model, params, x):
  return jnp.abs(reconstruction(model, params, x) - x)


def _latent_distance(model, params, x, stats: TrainStats):
  """Squared Mahalanobis distance (B,) of the codes of x from the training codes."""
  z = model.apply(params, x, method=model.encode).reshape(x.shape[0], -1)
  d = z - stats.latent_mean
  return jnp.einsum("bi,ij,bj->b", d, stats.latent_precision, d)


def knn_distance(z: jax.Array, codes: jax.Array, k: int = KNN_K) -> jax.Array:
  """Mean squared distance (B,) from whitened codes z (B, L) to their nearest reference codes.

  The nearest reference code is always skipped and the next k are averaged, so a training
  example that is itself among the references (distance 0) is scored like any other.
  """
  d2 = (jnp.sum(z * z, -1)[:, None] - 2.0 * z @ codes.T + jnp.sum(codes * codes, -1)[None])
  k = min(k, codes.shape[0] - 1)
  nearest = -jax.lax.top_k(-jnp.maximum(d2, 0.0), k + 1)[0]
  return jnp.mean(nearest[:, 1:], -1)


def _latent_knn_term(model, params, x, stats: TrainStats):
  """L * knn_distance / knn_scale (B,): about L for typical training examples."""
  z = model.apply(params, x, method=model.encode).reshape(x.shape[0], -1)
  zw = (z - stats.latent_mean) @ stats.latent_whiten
  return z.shape[-1] * knn_distance(zw, stats.codes) / stats.knn_scale


def _residual_term(model, params, x, stats: TrainStats):
  """Sum over features of squared residuals / their training mean (B,)."""
  err = _squared_error(model, params, x) / stats.err_scale
  return jnp.sum(err.reshape(x.shape[0], -1), -1)


def _knn(model, params, x, keys, cfg, samples, stats: TrainStats):
  """The 'gaussian' score with the Mahalanobis term replaced by latent kNN (B,).

  Residuals as in 'gaussian'; the code's mean squared whitened distance to its nearest
  training codes, scaled so that its training mean is L, replaces the distance from the
  code mean: a multi-modal code distribution (clusters, several normal modes) is then
  not scored as if it were one Gaussian.
  """
  del keys, cfg, samples
  return _residual_term(model, params, x, stats) + _latent_knn_term(model, params, x, stats)


def score_terms(model, params, x, stats: TrainStats):
  """(B, 2): the residual term and the latent kNN term of each example of x."""
  return jnp.stack([_residual_term(model, params, x, stats),
                    _latent_knn_term(model, params, x, stats)], -1)


def mse_gaussian_terms(model, params, x, stats: TrainStats):
  """(B, 2): the 'mse' score (unweighted: error_weights does not apply) and the
  'gaussian' score of each example of x."""
  mse = jnp.mean(_squared_error(model, params, x).reshape(x.shape[0], -1), -1)
  return jnp.stack([mse, _gaussian(model, params, x, None, None, None, stats)], -1)


def standardised(terms: Callable, reduce: str = "sum") -> Callable:
  """A per-example score from `terms`' two columns, each as (term - mean) / std with the
  mean and std of that term over the reference examples (`stats.term_mean` / `term_std`),
  then summed (reduce='sum') or the larger taken (reduce='max': an example is as anomalous
  as its more extreme term, so a term that separates well is not diluted by one that does not).

  Scale-free, so both terms count alike whatever their units: the 'knn' score adds a sum
  over D features to a term of about L, so its residual dominates when D >> L.
  """
  combine = {"sum": jnp.sum, "max": jnp.max}[reduce]

  def score(model, params, x, keys, cfg, samples, stats: TrainStats):
    del keys, cfg, samples
    return combine((terms(model, params, x, stats) - stats.term_mean) / stats.term_std, -1)
  return score


def _latent_knn(model, params, x, keys, cfg, samples, stats: TrainStats):
  """Only the latent kNN term of 'knn' (B,): where the code lies, not the residual."""
  del keys, cfg, samples
  return _latent_knn_term(model, params, x, stats)


def _gaussian(model, params, x, keys, cfg, samples, stats: TrainStats):
  """-log-likelihood (up to constants) of x under Gaussian residuals and codes (B,).

  Residuals get the per-feature variance and codes the mean and covariance seen in
  training, as in probabilistic PCA: off-manifold and unusual-on-manifold examples
  both score high.
  """
  del keys, cfg, samples
  return _residual_term(model, params, x, stats) + _latent_distance(model, params, x, stats)


def _neg_elbo(model, params, x, keys, cfg, samples, stats):
  del stats
  one = lambda xi, k: elbo_terms(model, params, xi[None], None, k, cfg, samples)["elbo"][0]
  return -jax.vmap(one)(x, keys)


def _nll(model, params, x, keys, cfg, samples, stats):
  del stats
  chunk = min(samples, 100)
  one = lambda xi, k: importance_sampled_nll(model, params, xi[None], k, cfg, samples,
                                             chunk)[0]
  return jax.vmap(one)(x, keys)


SCORES.register("mse")(Score("mse", _squared_error))
SCORES.register("mae")(Score("mae", _abs_error))
SCORES.register("gaussian")(Score("gaussian", _squared_error, _gaussian))
SCORES.register("knn")(Score("knn", _squared_error, _knn))
SCORES.register("combined")(Score("combined", _squared_error, standardised(score_terms),
                                   terms=score_terms))
# two members that differ in what they look at, not in the seed: the plain mean squared
# error (every feature alike: wins where anomalies show in features that normally vary
# little) and the 'gaussian' score (residuals per feature variance plus where the code lies)
SCORES.register("mse_gaussian")(Score("mse_gaussian", _squared_error,
                                      standardised(mse_gaussian_terms),
                                      terms=mse_gaussian_terms))
SCORES.register("mse_gaussian_max")(Score("mse_gaussian_max", _squared_error,
                                          standardised(mse_gaussian_terms, "max"),
                                          terms=mse_gaussian_terms))
SCORES.register("latent_knn")(Score("latent_knn", _squared_error, _latent_knn))
SCORES.register("elbo")(Score("elbo", _squared_error, _neg_elbo, needs_vae=True))
SCORES.register("nll")(Score("nll", _squared_error, _nll, needs_vae=True))
