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


def _check_terms_by_hand(cfg, model, params, n, latents):
  """`vae_lib.terms` with 1 and 4 samples against numpy: `latents(x, eps)` gives, for the
  same standard-normal draws eps (B, S, model.noise_dim), the decoded latent z (B, S, L)
  with log q and log p of every sample (B, S); p(x|z) = N(z W + b, 0.5^2)."""
  x = np.random.RandomState(2).normal(size=(3, D)).astype(np.float32)
  keys = jax.random.split(jax.random.key(5), 3)
  for samples in (1, 4):
    cfg.objective.iw_samples = samples
    got = jax.jit(lambda p, x, k: vae_lib.terms(model, p, {"x": x}, k, None, cfg, False))(
        params, jnp.asarray(x), keys)
    eps = np.asarray(vae_lib.draw_eps(keys, samples, model.noise_dim), np.float64)
    z, log_q, log_p = latents(x, eps)
    out = z @ n["W"] + n["b"]
    log_px = np.sum(-0.5 * ((x[:, None] - out) / 0.5) ** 2 - np.log(0.5)
                    - 0.5 * np.log(2 * np.pi), -1)
    log_w = log_px + log_p - log_q
    np.testing.assert_allclose(got["kl"], np.mean(log_q - log_p, -1), rtol=1e-4, atol=1e-4)
    if samples == 1:
      np.testing.assert_allclose(got["elbo"], log_w[:, 0], rtol=1e-4, atol=1e-3)
      np.testing.assert_allclose(got["loss"], -log_w[:, 0], rtol=1e-4, atol=1e-3)
    else:
      bound = logsumexp(log_w, -1) - np.log(samples)
      np.testing.assert_allclose(got["iw_bound"], bound, rtol=1e-4, atol=1e-3)
      np.testing.assert_allclose(got["loss"], -bound, rtol=1e-4, atol=1e-3)


def test_vamp_terms_use_the_mixture_in_kl_and_iw_bound():
  cfg, model, params, n = _linear_vamp()

  def latents(x, eps):                                          # eps (B, S, L)
    mean, logvar = x @ n["A"] + n["a"], x @ n["B"] + n["bv"]
    z = mean[:, None] + np.exp(0.5 * logvar)[:, None] * eps
    return z, _np_log_normal(z, mean[:, None], logvar[:, None]), _np_vamp_log_prior(z, n)

  _check_terms_by_hand(cfg, model, params, n, latents)


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


# ---- two stochastic layers (Burda et al.'s two-layer IWAE) ----------------------------

L2 = 1


def _linear_two_layer(seed=0):
  """A two-stochastic-layer VAE whose every map is linear (no hidden layers), with random
  weights; returns (cfg, model, params, numpy copies {A, a, B, bv, C, c, E, e, F, f, G, g,
  W, b}): q(z1|x) = N(xA + a, exp(xB + bv)), q(z2|z1) = N(z1 C + c, exp(z1 E + e)),
  p(z1|z2) = N(z2 F + f, exp(z2 G + g)), p(x|z1) = N(z1 W + b, 0.5^2)."""
  cfg = _cfg(prior="standard")
  cfg.model.latent2_dim, cfg.model.latent2_widths = L2, ()
  model = families.build_model(cfg, (D,))
  params = model.init(jax.random.key(0), np.zeros((1, D), np.float32))
  rng = np.random.RandomState(seed)
  shapes = {"A": (D, L), "a": (L,), "B": (D, L), "bv": (L,), "C": (L, L2), "c": (L2,),
            "E": (L, L2), "e": (L2,), "F": (L2, L), "f": (L,), "G": (L2, L), "g": (L,),
            "W": (L, D), "b": (D,)}
  n = {k: 0.4 * rng.normal(size=s) for k, s in shapes.items()}
  f32 = lambda v: np.asarray(v, np.float32)
  dense = lambda k, b: {"kernel": f32(n[k]), "bias": f32(n[b])}
  p = jax.tree.map(np.asarray, params)["params"]
  assert set(p) == {"decoder", "to_mean", "to_logvar", "q_z2", "p_z1"}   # linear encoder
  p["to_mean"], p["to_logvar"] = dense("A", "a"), dense("B", "bv")
  p["q_z2"] = {"mean": dense("C", "c"), "logvar": dense("E", "e")}
  p["p_z1"] = {"mean": dense("F", "f"), "logvar": dense("G", "g")}
  p["decoder"] = {"Dense_0": dense("W", "b")}
  return cfg, model, {"params": p}, n


def test_two_layer_terms_match_hand_computed_weights():
  cfg, model, params, n = _linear_two_layer()
  assert model.noise_dim == L + L2

  def latents(x, eps):                                          # eps (B, S, L + L2)
    mean1, logvar1 = x @ n["A"] + n["a"], x @ n["B"] + n["bv"]
    z1 = mean1[:, None] + np.exp(0.5 * logvar1)[:, None] * eps[..., :L]
    mean2, logvar2 = z1 @ n["C"] + n["c"], z1 @ n["E"] + n["e"]
    z2 = mean2 + np.exp(0.5 * logvar2) * eps[..., L:]
    log_q = (_np_log_normal(z1, mean1[:, None], logvar1[:, None])
             + _np_log_normal(z2, mean2, logvar2))
    log_p = (_np_log_normal(z2, 0.0, np.zeros_like(z2))
             + _np_log_normal(z1, z2 @ n["F"] + n["f"], z2 @ n["G"] + n["g"]))
    return z1, log_q, log_p

  _check_terms_by_hand(cfg, model, params, n, latents)


def test_two_layer_importance_nll_is_the_linear_gaussian_marginal():
  """Linear Gaussian layers (row vectors, z1 = z2 F + f + noise, x = z1 W + b + noise):
  p(x) is Gaussian, mean f W + b, covariance W^T (F^T F + diag(exp g)) W + 0.25 I.
  q(z1|x) ignores x (the prior's z1 marginal, made diagonal) and q(z2|z1) is the exact
  p(z2|z1), so the estimate converges quickly."""
  cfg, model, params, n = _linear_two_layer(seed=3)
  p = params["params"]
  for k in ("F", "W"):
    n[k] = n[k] * 0.5
  v1 = np.exp(n["g"])                                   # p(z1|z2)'s variances (no kernel)
  cov_z1 = n["F"].T @ n["F"] + np.diag(v1)
  # exact p(z2 | z1) = N((z1 - f) V^-1 F^T S, S), S = (I + F V^-1 F^T)^-1, V = diag(v1)
  s = np.linalg.inv(np.eye(L2) + n["F"] @ np.diag(1 / v1) @ n["F"].T)
  post_kernel = np.diag(1 / v1) @ n["F"].T @ s          # (L, L2)
  f32 = lambda v: np.asarray(v, np.float32)
  p["p_z1"] = {"mean": {"kernel": f32(n["F"]), "bias": f32(n["f"])},
               "logvar": {"kernel": f32(np.zeros((L2, L))), "bias": f32(n["g"])}}
  p["q_z2"] = {"mean": {"kernel": f32(post_kernel), "bias": f32(-n["f"] @ post_kernel)},
               "logvar": {"kernel": f32(np.zeros((L, L2))), "bias": f32(np.log(np.diag(s)))}}
  p["to_mean"] = {"kernel": f32(np.zeros((D, L))), "bias": f32(n["f"])}
  p["to_logvar"] = {"kernel": f32(np.zeros((D, L))), "bias": f32(np.log(np.diag(cov_z1)))}
  p["decoder"] = {"Dense_0": {"kernel": f32(n["W"]), "bias": f32(n["b"])}}
  trained = Trained(cfg, model, params, data_lib.Scaler("none").fit(np.zeros((1, D))), (D,))
  mean_x = n["f"] @ n["W"] + n["b"]
  cov = n["W"].T @ cov_z1 @ n["W"] + 0.25 * np.eye(D)
  x = mean_x + 0.3 * np.random.RandomState(4).normal(size=(4, D))
  diff = x - mean_x
  exact = 0.5 * (np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
                 + np.linalg.slogdet(cov)[1] + D * np.log(2 * np.pi))
  got = likelihood.importance_nll(trained, x.astype(np.float32), num_samples=20000, chunk=2000)
  np.testing.assert_allclose(got, exact, atol=0.05)
  # the ELBO (averaged over many draws) lies below log p(x), the IW bound close to it
  terms = families.elbo_terms(model, params, jnp.asarray(x, jnp.float32), None,
                              jax.random.key(1), cfg, num_samples=4000)
  assert np.all(np.asarray(terms["mc_elbo"]) < -exact)
  np.testing.assert_allclose(terms["iw_bound"], -exact, atol=0.05)
  # prior samples of z1: z2 ~ N(0, I), then z1 ~ p(z1 | z2)
  draws = np.asarray(model.apply(params, jax.random.key(0), 40000, method=model.sample_prior))
  assert draws.shape == (40000, L)
  np.testing.assert_allclose(draws.mean(0), n["f"], atol=0.03)
  np.testing.assert_allclose(np.cov(draws.T), cov_z1, atol=0.05)


def test_two_layer_config_errors():
  cfg = _cfg(prior="standard")
  cfg.model.latent2_dim = -1
  with pytest.raises(ConfigError, match="latent2_dim must be an integer >= 0"):
    families.build_model(cfg, (D,))
  cfg = _cfg(prior="vamp")
  cfg.model.latent2_dim = 2
  with pytest.raises(ConfigError, match="two stochastic layers.*'standard'"):
    families.build_model(cfg, (D,))
  cfg = _cfg(prior="standard")
  cfg.model.family, cfg.model.latent2_dim = "cvae", 2
  with pytest.raises(ConfigError, match="two stochastic layers.*'vae'"):
    families.build_model(cfg, (D,))
  cfg = _cfg(prior="standard")
  cfg.model.latent2_dim, cfg.model.latent2_widths = 2, (8, 0)
  with pytest.raises(ConfigError, match="latent2_widths must be positive"):
    families.build_model(cfg, (D,))


def test_two_layer_iwae_trains_and_samples():
  """A tiny two-layer IWAE (k = 3) lowers its NLL, moves both upper conditionals and
  samples images in [0, 1]; the one-layer model of the same config has neither."""
  x = (np.random.RandomState(0).random_sample((96, 3, 3, 1)) < 0.4).astype(np.float32)
  cfg = configs.get_preset("tiny")
  cfg.model.family, cfg.model.recon_loss, cfg.model.latent_dim = "vae", "bce", 3
  cfg.model.latent2_dim, cfg.model.latent2_widths, cfg.model.activation = 2, (6,), "tanh"
  cfg.objective.iw_samples = 3
  cfg.train.parallel, cfg.train.figures, cfg.data.val_fraction = "jit", False, 0.0
  cfg.train.num_steps, cfg.train.batch_size, cfg.optim.learning_rate = 60, 32, 1e-2
  data = data_lib.sources.make_array_data(x, None, "bin", "image")
  trained = fit(cfg, None, train_data=data, progress=False)
  init = create_train_state(cfg, trained.model, (3, 3, 1), jax.random.key(cfg.seed), 60)
  for name in ("q_z2", "p_z1"):
    moved = jax.tree.map(lambda a, b: np.max(np.abs(np.asarray(a) - np.asarray(b))),
                         init.params["params"][name], trained.params["params"][name])
    assert max(jax.tree.leaves(moved)) > 1e-3
  first = likelihood.importance_nll(
      Trained(cfg, trained.model, init.params, trained.scaler, (3, 3, 1)), x, num_samples=50)
  last = likelihood.importance_nll(trained, x, num_samples=50)
  assert last.mean() < first.mean() - 0.5
  samples = trained.sample(4, seed=1)
  assert samples.shape == (4, 3, 3, 1) and np.all((samples >= 0) & (samples <= 1))
  cfg.model.latent2_dim = 0
  one_layer = families.build_model(cfg, (3, 3, 1)).init(jax.random.key(0), x[:1])
  assert not {"q_z2", "p_z1"} & set(one_layer["params"])
