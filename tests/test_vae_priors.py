"""VAE priors and bounds: the VampPrior against hand-computed densities, the IWAE bound,
and the NLL estimator under the chosen prior (issue 13)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp

from ae_jax import configs, data as data_lib, families, likelihood
from ae_jax.errors import ConfigError
from ae_jax.families import vae as vae_lib
from ae_jax.fit import Trained, fit
from ae_jax.train import create_train_state

D, L, K = 4, 2, 3


def _cfg(prior="vamp", k=K, recon="gaussian"):
  cfg = configs.get_preset("default")
  cfg.model.family = "vae"
  cfg.model.widths = ()
  cfg.model.latent_dim = L
  cfg.model.recon_loss = recon
  cfg.model.prior = prior
  cfg.model.vamp_components = k
  cfg.objective.output_sigma = 0.5
  return cfg


def _linear_vamp(seed=0, k=K):
  """A linear-encoder VAE with a VampPrior and random weights; returns (model, params,
  numpy copies {A, a, B, bv, U, W, b})."""
  cfg = _cfg(k=k)
  model = families.build_model(cfg, (D,))
  params = model.init(jax.random.key(0), np.zeros((1, D), np.float32))
  rng = np.random.RandomState(seed)
  n = {"A": rng.normal(size=(D, L)), "a": rng.normal(size=L), "B": 0.3 * rng.normal(size=(D, L)),
       "bv": 0.3 * rng.normal(size=L), "U": rng.uniform(-0.3, 1.3, size=(k, D)),
       "W": rng.normal(size=(L, D)), "b": rng.normal(size=D)}
  f32 = lambda v: np.asarray(v, np.float32)
  p = jax.tree.map(np.asarray, params)["params"]
  p["to_mean"] = {"kernel": f32(n["A"]), "bias": f32(n["a"])}
  p["to_logvar"] = {"kernel": f32(n["B"]), "bias": f32(n["bv"])}
  p["decoder"] = {"Dense_0": {"kernel": f32(n["W"]), "bias": f32(n["b"])}}
  p["pseudo_inputs"] = f32(n["U"])
  return cfg, model, {"params": p}, n


def _np_log_normal(z, mean, logvar):
  return -0.5 * np.sum((z - mean) ** 2 / np.exp(logvar) + logvar + np.log(2 * np.pi), -1)


def _np_vamp_log_prior(z, n):
  u = np.clip(n["U"], 0, 1)                                   # (K, D)
  means, logvars = u @ n["A"] + n["a"], u @ n["B"] + n["bv"]  # (K, L)
  per = np.stack([_np_log_normal(z, means[k], logvars[k]) for k in range(len(u))], -1)
  return logsumexp(per, axis=-1) - np.log(len(u))


def test_vamp_log_prior_matches_numpy_logsumexp():
  _, model, params, n = _linear_vamp()
  z = np.random.RandomState(1).normal(size=(5, 7, L)).astype(np.float32)
  got = jax.jit(lambda p, z: model.apply(p, z, method=model.log_prior))(params, jnp.asarray(z))
  assert got.shape == (5, 7)
  np.testing.assert_allclose(got, _np_vamp_log_prior(z.astype(np.float64), n), rtol=1e-5,
                             atol=1e-5)


def test_standard_prior_log_density_and_pseudo_inputs_absent():
  cfg = _cfg(prior="standard")
  model = families.build_model(cfg, (D,))
  params = model.init(jax.random.key(0), np.zeros((1, D), np.float32))
  assert "pseudo_inputs" not in params["params"]
  z = np.array([[0.0, 0.0], [1.0, -2.0]], np.float32)
  np.testing.assert_allclose(model.apply(params, z, method=model.log_prior),
                             [-np.log(2 * np.pi), -np.log(2 * np.pi) - 2.5], rtol=1e-6)


def test_vamp_terms_use_the_mixture_in_kl_and_iw_bound():
  cfg, model, params, n = _linear_vamp()
  x = np.random.RandomState(2).normal(size=(3, D)).astype(np.float32)
  keys = jax.random.split(jax.random.key(5), 3)
  for samples in (1, 4):
    cfg.objective.iw_samples = samples
    got = jax.jit(lambda p, x, k: vae_lib.terms(model, p, {"x": x}, k, None, cfg, False))(
        params, jnp.asarray(x), keys)
    eps = np.asarray(vae_lib.draw_eps(keys, samples, L), np.float64)      # (B, S, L)
    mean, logvar = x @ n["A"] + n["a"], x @ n["B"] + n["bv"]
    z = mean[:, None] + np.exp(0.5 * logvar)[:, None] * eps
    log_q = _np_log_normal(z, mean[:, None], logvar[:, None])
    log_p = _np_vamp_log_prior(z, n)
    out = z @ n["W"] + n["b"]
    log_px = np.sum(-0.5 * ((x[:, None] - out) / 0.5) ** 2 - np.log(0.5)
                    - 0.5 * np.log(2 * np.pi), -1)
    np.testing.assert_allclose(got["kl"], np.mean(log_q - log_p, -1), rtol=1e-4, atol=1e-4)
    if samples == 1:
      np.testing.assert_allclose(got["elbo"], (log_px + log_p - log_q)[:, 0], rtol=1e-4,
                                 atol=1e-3)
    else:
      bound = logsumexp(log_px + log_p - log_q, -1) - np.log(samples)
      np.testing.assert_allclose(got["iw_bound"], bound, rtol=1e-4, atol=1e-3)
      np.testing.assert_allclose(got["loss"], -bound, rtol=1e-4, atol=1e-3)


def test_importance_nll_under_a_one_component_vamp_prior_is_the_gaussian_marginal():
  cfg, model, params, n = _linear_vamp(k=1)
  # An encoder that ignores x (zero kernels): q(z|x) is the prior's one component
  # N(m0, v0), a fair proposal when the decoder W is weak. A standard-normal prior in the
  # weights (m0 != 0) would give another number.
  p = params["params"]
  p["to_mean"]["kernel"][:] = 0.0
  p["to_logvar"]["kernel"][:] = 0.0
  p["decoder"]["Dense_0"]["kernel"] *= 0.3
  n["W"] = n["W"] * 0.3
  p["to_mean"]["bias"][:] = [1.0, -0.8]
  m0, v0 = np.array([1.0, -0.8]), np.exp(n["bv"])
  trained = Trained(cfg, model, params, data_lib.Scaler("none").fit(np.zeros((1, D))), (D,))
  x = (m0 @ n["W"] + n["b"] + 0.3 * np.random.RandomState(3).normal(size=(4, D)))
  cov = n["W"].T @ np.diag(v0) @ n["W"] + 0.25 * np.eye(D)
  diff = x - (m0 @ n["W"] + n["b"])
  exact = 0.5 * (np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
                 + np.linalg.slogdet(cov)[1] + D * np.log(2 * np.pi))
  got = likelihood.importance_nll(trained, x.astype(np.float32), num_samples=20000, chunk=2000)
  np.testing.assert_allclose(got, exact, atol=0.05)
  draws = np.asarray(model.apply(params, jax.random.key(0), 20000, method=model.sample_prior))
  np.testing.assert_allclose(draws.mean(0), m0, atol=0.05)
  np.testing.assert_allclose(draws.var(0), v0, rtol=0.05)


def test_vamp_prior_config_errors():
  cfg = _cfg(prior="gmm")
  with pytest.raises(ConfigError, match="model.prior must be one of standard, vamp"):
    families.build_model(cfg, (D,))
  cfg = _cfg(k=0)
  with pytest.raises(ConfigError, match="vamp_components"):
    families.build_model(cfg, (D,))
  cfg = _cfg()
  cfg.model.family = "cvae"
  with pytest.raises(ConfigError, match="VampPrior.*'vae'"):
    families.build_model(cfg, (D,))


def test_vamp_trains_its_pseudo_inputs(tmp_path):
  x = (np.random.RandomState(0).random_sample((96, 3, 3, 1)) < 0.4).astype(np.float32)
  cfg = configs.get_preset("tiny")
  cfg.model.family, cfg.model.recon_loss, cfg.model.latent_dim = "vae", "bce", 2
  cfg.model.prior, cfg.model.vamp_components = "vamp", 5
  cfg.train.parallel, cfg.train.figures, cfg.data.val_fraction = "jit", False, 0.0
  cfg.train.num_steps, cfg.train.batch_size, cfg.optim.learning_rate = 30, 32, 1e-2
  data = data_lib.sources.make_array_data(x, None, "bin", "image")
  trained = fit(cfg, None, train_data=data, progress=False)
  model = trained.model
  init = create_train_state(cfg, model, (3, 3, 1), jax.random.key(cfg.seed),
                            30).params["params"]["pseudo_inputs"]
  assert init.shape == (5, 3, 3, 1)
  assert np.max(np.abs(trained.params["params"]["pseudo_inputs"] - init)) > 1e-3
  samples = trained.sample(4, seed=1)
  assert samples.shape == (4, 3, 3, 1) and np.all((samples >= 0) & (samples <= 1))
