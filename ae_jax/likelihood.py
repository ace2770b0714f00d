"""Likelihood metrics of a trained VAE over a whole dataset split, in bounded memory.

`importance_nll` estimates -log p(x) per example by importance sampling from q(z|x)
(k samples, drawn `chunk` at a time and merged with a running logsumexp, so memory
is bounded by batch_size * chunk decodings whatever k is). `elbo` gives the per-example
evidence lower bound, `active_units` the number of latent units whose posterior mean
varies across the data (Burda et al. 2016: Cov_x(E_q[u | x]) > 0.01).
`likelihood_metrics` gathers them for `ae-jax evaluate --nll-samples K`.
All values are in nats; images are the model's input space, (N, *input_shape).
"""

import functools
import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ae_jax import families
from ae_jax.errors import ConfigError

ACTIVE_UNIT_THRESHOLD = 0.01


def _require_vae(trained):
  family = trained.config.model.family
  if not families.get_family(family).can_sample:
    raise ConfigError(f"a likelihood needs a VAE family (one with a prior: vae, cvae); this "
                      f"model is {family!r}")


def _cond(trained, cond):
  conditional = families.get_family(trained.config.model.family).conditional
  if conditional and cond is None:
    raise ConfigError(f"family {trained.config.model.family!r} conditions on labels: pass them "
                      "as `cond` (data with labels)")
  return cond if conditional else None


@functools.lru_cache(maxsize=32)
def nll_fn(model, cfg_json: str, num_samples: int, chunk: int, conditional: bool):
  """The jitted estimator fn(params, x (B, ...), key, *cond) -> -log p(x) (B,) with
  `num_samples` importance samples drawn `chunk` at a time; `cfg_json` is the config (as
  JSON) that `families.importance_sampled_nll` reads. One compilation per architecture
  and setting, shared by every model of that kind."""
  cfg = ml_collections.ConfigDict(json.loads(cfg_json))

  def nll(params, x, key, *cond):
    return families.importance_sampled_nll(model, params, x, key, cfg, num_samples, chunk,
                                           cond=cond[0] if conditional else None)
  return jax.jit(nll)


@functools.lru_cache(maxsize=32)
def elbo_fn(model, cfg_json: str, conditional: bool, num_samples: int = 1,
            terms: tuple[str, ...] | None = None):
  """The jitted fn(params, x (B, ...), key, *cond) -> {name: (B,)}: the per-example terms
  of `families.elbo_terms` with `num_samples` posterior draws ('elbo', 'iw_bound', ...),
  only those named in `terms` (None: all of them)."""
  cfg = ml_collections.ConfigDict(json.loads(cfg_json))

  def elbo_terms(params, x, key, *cond):
    out = families.elbo_terms(model, params, x, cond[0] if conditional else None, key, cfg,
                              num_samples)
    return out if terms is None else {name: out[name] for name in terms}
  return jax.jit(elbo_terms)


def _batches(n: int, batch_size: int):
  return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def _run(fn, trained, x, cond, batch_size: int, seed: int, desc: str, progress: bool):
  """fn(params, x_batch, key, *cond) over x in batches; the last batch is padded to size."""
  x = trained._prep(x)  # pylint: disable=protected-access
  out = []
  bar = tqdm.tqdm(_batches(len(x), batch_size), desc=desc, disable=not progress,
                  dynamic_ncols=True, leave=False)
  for i, (start, stop) in enumerate(bar):
    pad = batch_size - (stop - start)
    xb = np.concatenate([x[start:stop], np.repeat(x[stop - 1:stop], pad, 0)]) if pad else \
        x[start:stop]
    extra = ()
    if cond is not None:
      cb = np.asarray(cond[start:stop])
      extra = (jnp.asarray(np.concatenate([cb, np.repeat(cb[-1:], pad, 0)]) if pad else cb),)
    key = jax.random.fold_in(jax.random.key(seed), i)
    out.append(np.asarray(fn(trained.params, jnp.asarray(xb), key, *extra))[:stop - start])
  bar.close()
  return np.concatenate(out) if out else np.zeros((0,), np.float32)


def importance_nll(trained, x, *, num_samples: int = 5000, chunk: int = 250,
                   batch_size: int = 100, seed: int = 0, cond=None,
                   progress: bool = False) -> np.ndarray:
  """-log p(x) per example (N,) with `num_samples` importance samples from q(z|x).

  x: (N, *input_shape) in data space. Memory is bounded by batch_size * chunk
  decodings (chunk is lowered to a divisor of num_samples). Batch i uses the key
  fold_in(key(seed), i), so a result is reproducible from `seed`.
  """
  _require_vae(trained)
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ConfigError(f"the number of importance samples must be a positive integer, got "
                      f"{num_samples!r}")
  cond = _cond(trained, cond)
  chunk = math.gcd(num_samples, max(1, min(chunk, num_samples)))
  fn = nll_fn(trained.model, trained.config.to_json(), num_samples, chunk, cond is not None)
  return _run(fn, trained, x, cond, batch_size, seed, f"NLL (k={num_samples})", progress)


def elbo(trained, x, *, batch_size: int = 500, seed: int = 0, cond=None,
         progress: bool = False) -> np.ndarray:
  """The ELBO per example (N,): one posterior sample, the prior's KL (analytic where it
  has one), beta = 1."""
  _require_vae(trained)
  cond = _cond(trained, cond)
  fn = elbo_fn(trained.model, trained.config.to_json(), cond is not None, terms=("elbo",))
  return _run(lambda *args: fn(*args)["elbo"], trained, x, cond, batch_size, seed, "ELBO",
              progress)


def active_units(trained, x, *, threshold: float = ACTIVE_UNIT_THRESHOLD,
                 cond=None) -> tuple[int, np.ndarray]:
  """(number of active units, per-unit variance (latent_dim,)) of the posterior mean
  E_q[z | x] across the examples x (N, *input_shape); active means variance > threshold."""
  _require_vae(trained)
  means = trained.encode(x, _cond(trained, cond)).astype(np.float64)
  variance = means.var(axis=0)
  return int(np.sum(variance > threshold)), variance


def summary(values) -> tuple[float, float]:
  """(mean, standard error of the mean) of per-example values (N,)."""
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError("no values to summarise")
  sem = values.std(ddof=1) / math.sqrt(values.size) if values.size > 1 else 0.0
  return float(values.mean()), float(sem)


def likelihood_metrics(trained, x, *, num_samples: int, cond=None, seed: int = 0,
                       chunk: int = 250, batch_size: int = 100,
                       progress: bool = True) -> dict[str, float]:
  """NLL (k = num_samples), ELBO and active units over every example of x, with the
  standard errors over examples: {'nll', 'nll_stderr', 'nll_samples', 'elbo',
  'elbo_stderr', 'active_units', 'num_examples'}."""
  nll = importance_nll(trained, x, num_samples=num_samples, chunk=chunk,
                       batch_size=batch_size, seed=seed, cond=cond, progress=progress)
  bound = elbo(trained, x, seed=seed, cond=cond, progress=progress)
  nll_mean, nll_sem = summary(nll)
  elbo_mean, elbo_sem = summary(bound)
  return {"nll": nll_mean, "nll_stderr": nll_sem, "nll_samples": num_samples,
          "elbo": elbo_mean, "elbo_stderr": elbo_sem,
          "active_units": active_units(trained, x, cond=cond)[0], "num_examples": len(nll)}
