"""Tests of the core: networks, losses, corruptions, families, train step and parallel modes."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ae_jax import configs, corruption, families, losses, parallel, train
from ae_jax.errors import ConfigError
from ae_jax.networks import NETWORKS

# Family variants: settings applied to cfg.model or cfg.objective (whichever has the key).
VARIANTS = {
    "ae": dict(family="ae"),
    "sparse_l1": dict(family="sparse", sparsity="l1"),
    "sparse_kl": dict(family="sparse", sparsity="kl"),
    "sparse_topk": dict(family="sparse", sparsity="topk", latent_dim=6, k=2),
    "denoising_gaussian": dict(family="denoising", noise="gaussian"),
    "denoising_salt_pepper": dict(family="denoising", noise="salt_pepper"),
    "denoising_masking": dict(family="denoising", noise="masking"),
    "denoising_block": dict(family="denoising", noise="block", block_size=3),
    "vae_bce": dict(family="vae", recon_loss="bce"),
    "vae_gaussian": dict(family="vae", recon_loss="gaussian"),
    "vae_gaussian_learned_sigma": dict(family="vae", recon_loss="gaussian", learn_sigma=True),
    "vae_iw": dict(family="vae", recon_loss="bce", iw_samples=3),
    "cvae": dict(family="cvae", recon_loss="bce"),
    "vqvae": dict(family="vqvae", latent_dim=8, code_dim=4, num_codes=16),
}

# Network kinds and the example shape each is tested on.
NETWORK_INPUTS = {
    "mlp_vector": ("mlp", (12,)),
    "mlp_image": ("mlp", (8, 8, 1)),
    "conv2d_gray": ("conv2d", (8, 8, 1)),
    "conv2d_rgb": ("conv2d", (16, 16, 3)),
    "conv1d_seq": ("conv1d", (16, 2)),
    "tcn1d_seq": ("tcn1d", (15, 2)),   # dilated, unstrided: any length
}


@pytest.fixture(scope="module", autouse=True)
def fast_compiles():
  """Compile with few XLA optimizations: compiling, not running, dominates these tiny
  programs. Every parallel mode compares under the same setting; restored afterwards."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def configure(cfg, variant: str, network: str = "mlp", **overrides):
  """`cfg` set to a VARIANTS entry, a network and extra overrides; returns cfg."""
  cfg.model.network = network
  cfg.model.channels = (4, 8)
  for key, value in {**VARIANTS[variant], **overrides}.items():
    section = cfg.model if key in cfg.model else cfg.objective
    setattr(section, key, value)
  return cfg


def family_of(cfg):
  return families.get_family(cfg.model.family)


def uniform(shape, seed=0):
  """Test inputs in [0, 1) from numpy (no PRNG kernels to compile)."""
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def init_key(seed=0):
  """A key for parameter init only: 'rbg' compiles flax init far faster than threefry."""
  return jax.random.key(seed, impl="rbg")


def step_fn(cfg, model):
  """The per-device train step with its collaborators bound."""
  return functools.partial(train.train_step, model=model, family=family_of(cfg), config=cfg)


# ---- shapes and dtypes ------------------------------------------------------------


def assert_struct(value, shape, dtype):
  """`value` (an array or a jax.ShapeDtypeStruct) has this shape and dtype."""
  assert (tuple(value.shape), value.dtype) == (tuple(shape), jnp.dtype(dtype)), value


def abstract_model(cfg, shape, batch=3):
  """Model, abstract params and abstract inputs (no compilation, no FLOPs)."""
  family = family_of(cfg)
  model = families.build_model(cfg, shape)
  params = jax.eval_shape(
      lambda k: train.init_params(model, shape, k, conditional=family.conditional),
      jax.random.key(0))
  x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
  y = jax.ShapeDtypeStruct((batch,), jnp.int32)
  return model, params, x, y


@pytest.mark.parametrize("net", NETWORK_INPUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_and_dtypes(cfg, variant, net):
  """Shapes and dtypes by abstract evaluation (`jax.eval_shape`) for every pair."""
  network, shape = NETWORK_INPUTS[net]
  configure(cfg, variant, network)
  family = family_of(cfg)
  model, params, x, y = abstract_model(cfg, shape)
  cls = type(model)
  b, latent = x.shape[0], cfg.model.latent_dim
  cond = y if family.conditional else None
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))

  encode = lambda p, x, c: model.apply(p, x, c, method=cls.encode)
  decode = lambda p, z, c: model.apply(p, z, c, method=cls.decode)
  z = jax.eval_shape(encode, params, x, cond)
  assert_struct(z, (b, latent), jnp.float32)
  assert_struct(jax.eval_shape(decode, params, z, cond), (b, *shape), jnp.float32)

  def terms(p, batch, key):
    keys = jax.random.split(key, b)
    return family.terms(model, p, batch, keys, jnp.asarray(0), cfg, True)

  out = jax.eval_shape(terms, params, {"x": x, "y": y}, jax.random.key(1))
  assert_struct(out["loss"], (b,), jnp.float32)

  if cfg.model.family in ("vae", "cvae"):
    eps = jax.ShapeDtypeStruct((b, 2, latent), jnp.float32)
    res = jax.eval_shape(lambda p, x, c, e: model.apply(p, x, c, eps=e), params, x, cond, eps)
    assert_struct(res["out"], (b, 2, *shape), jnp.float32)
    assert_struct(res["mean"], (b, latent), jnp.float32)
    assert ("log_sigma" in params["params"]) == bool(cfg.model.learn_sigma)
    if cfg.model.learn_sigma:
      assert_struct(params["params"]["log_sigma"], shape, jnp.float32)
  if cfg.model.family == "vqvae":
    idx = jax.eval_shape(lambda p, x: model.apply(p, x, method=cls.encode_indices), params, x)
    assert idx.shape == (b, latent // cfg.model.code_dim)


@pytest.mark.parametrize("net", ["conv2d_rgb", "conv1d_seq", "tcn1d_seq"])
def test_forward_pass_values(cfg, net):
  """A real (compiled) top-k forward pass: finite outputs, at most k active latents."""
  network, shape = NETWORK_INPUTS[net]
  configure(cfg, "sparse_topk", network)
  model = families.build_model(cfg, shape)
  params = jax.jit(lambda k: train.init_params(model, shape, k))(init_key())
  x = uniform((5, *shape))
  res = jax.jit(model.apply)(params, x)
  assert_struct(res["z"], (5, cfg.model.latent_dim), jnp.float32)
  assert_struct(res["out"], (5, *shape), jnp.float32)
  chex.assert_tree_all_finite(res)
  assert np.all(jnp.sum(res["z"] != 0, axis=-1) <= cfg.model.k)


@pytest.mark.parametrize("net", NETWORK_INPUTS)
@pytest.mark.parametrize("variant", ["ae", "sparse_topk", "vae_bce", "vqvae"])
def test_bfloat16_compute_keeps_float32_params(cfg, variant, net):
  """compute_dtype='bfloat16': encoder features and decoder output are bf16, params f32."""
  network, shape = NETWORK_INPUTS[net]
  configure(cfg, variant, network, compute_dtype="bfloat16")
  model, params, x, _ = abstract_model(cfg, shape)
  cls = type(model)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  features = jax.eval_shape(lambda p, x: model.apply(p, x, method=cls.features), params, x)
  assert features.dtype == jnp.bfloat16
  z = jax.eval_shape(lambda p, x: model.apply(p, x, method=cls.encode), params, x)
  assert z.shape == (3, cfg.model.latent_dim)
  out = jax.eval_shape(lambda p, z: model.apply(p, z, method=cls.decode), params, z)
  assert_struct(out, (3, *shape), jnp.bfloat16)


# ---- losses -----------------------------------------------------------------------


def test_mse_and_mae_by_hand():
  x_hat = jnp.array([1.0, 2.0, 3.0])
  x = jnp.array([1.0, 0.0, 0.0])
  np.testing.assert_allclose(losses.mse(x_hat, x), 13.0 / 3.0, rtol=1e-6)
  np.testing.assert_allclose(losses.mae(x_hat, x), 5.0 / 3.0, rtol=1e-6)
  np.testing.assert_allclose(losses.batched(losses.mse)(x_hat[None], x[None]), [13.0 / 3.0],
                             rtol=1e-6)


def test_bce_with_logits_matches_naive_formula_and_is_stable():
  logits = np.array([-2.0, -0.5, 0.0, 1.5, 3.0])
  x = np.array([0.0, 0.3, 1.0, 0.5, 1.0])
  sig = 1.0 / (1.0 + np.exp(-logits))
  naive = -(x * np.log(sig) + (1 - x) * np.log(1 - sig))
  np.testing.assert_allclose(losses.bce_with_logits(jnp.asarray(logits), jnp.asarray(x)),
                             naive.mean(), rtol=1e-6)
  np.testing.assert_allclose(
      losses.bernoulli_log_likelihood(jnp.asarray(logits), jnp.asarray(x)), -naive.sum(),
      rtol=1e-6)

  extreme = jnp.array([100.0, -100.0, 100.0, -100.0])
  target = jnp.array([0.0, 1.0, 1.0, 0.0])
  value, grad = jax.value_and_grad(losses.bce_with_logits)(extreme, target)
  chex.assert_tree_all_finite((value, grad))
  np.testing.assert_allclose(value, (100.0 + 100.0 + 0.0 + 0.0) / 4, rtol=1e-6)


def test_gaussian_kl_by_hand():
  mean = jnp.array([1.0, 0.0])
  logvar = jnp.array([0.0, math.log(2.0)])
  # 0.5 * [(1 + 1 - 1 - 0) + (2 + 0 - 1 - log 2)] = 1 - log(2) / 2
  np.testing.assert_allclose(losses.gaussian_kl(mean, logvar), 1.0 - 0.5 * math.log(2.0),
                             rtol=1e-6)
  np.testing.assert_allclose(losses.gaussian_kl(jnp.zeros(3), jnp.zeros(3)), 0.0, atol=1e-7)


def test_gaussian_log_likelihood_matches_scipy():
  rng = np.random.default_rng(0)
  x, mean = rng.normal(size=6), rng.normal(size=6)
  sigma = np.exp(rng.normal(size=6) * 0.3)
  want = scipy.stats.norm.logpdf(x, mean, sigma).sum()
  got = losses.gaussian_log_likelihood(jnp.asarray(mean), jnp.asarray(x),
                                       jnp.log(jnp.asarray(sigma)))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  got_scalar = losses.gaussian_log_likelihood(jnp.asarray(mean), jnp.asarray(x), math.log(0.5))
  np.testing.assert_allclose(got_scalar, scipy.stats.norm.logpdf(x, mean, 0.5).sum(), rtol=1e-5)
  got_density = losses.diag_gaussian_log_density(jnp.asarray(x), jnp.asarray(mean),
                                                 2 * jnp.log(jnp.asarray(sigma)))
  np.testing.assert_allclose(got_density, want, rtol=1e-5)


def test_sparsity_kl_by_hand():
  # Unit 1 sits at the target (0); unit 2: 0.1 log(0.1/0.5) + 0.9 log(0.9/0.5).
  want = 0.1 * math.log(0.2) + 0.9 * math.log(1.8)
  np.testing.assert_allclose(losses.sparsity_kl(0.1, jnp.array([0.1, 0.5])), want, rtol=1e-5)


def test_topk_keeps_the_k_largest_positive_entries_per_row():
  pre = jnp.asarray(np.random.default_rng(0).normal(size=(5, 10)), jnp.float32)
  for k in (1, 3, 10):
    code = families.topk(pre, k)
    top = jnp.sort(pre, axis=-1)[:, -k:]
    np.testing.assert_array_equal(jnp.sum(code != 0, axis=-1), jnp.sum(top > 0, axis=-1))
    kept = jnp.sort(jnp.where(code != 0, pre, -jnp.inf), axis=-1)[:, -k:]
    np.testing.assert_array_equal(kept, jnp.where(top > 0, top, -jnp.inf))


def test_weighted_mean_with_mask():
  values = {"a": jnp.array([1.0, 2.0, 3.0, 4.0]),
            "b": jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [100.0, 100.0]])}
  means = losses.weighted_mean(values, jnp.array([1.0, 1.0, 1.0, 0.0]))
  np.testing.assert_allclose(means["a"], 2.0)
  np.testing.assert_allclose(means["b"], [2.0, 2.0])
  weighted = losses.weighted_mean(values, jnp.array([3.0, 1.0, 0.0, 0.0]))
  np.testing.assert_allclose(weighted["a"], (3 * 1.0 + 2.0) / 4)


# ---- corruptions ------------------------------------------------------------------


def test_gaussian_noise_is_clipped(cfg):
  x = uniform((64, 64))
  noisy = corruption.gaussian(jax.random.key(1), x, 0.5, cfg.objective)
  assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0
  assert float(jnp.mean(noisy != x)) > 0.9
  cfg.objective.noise_clip = False
  raw = corruption.gaussian(jax.random.key(1), x, 0.5, cfg.objective)
  assert float(raw.min()) < 0.0 and float(raw.max()) > 1.0
  np.testing.assert_allclose(jnp.std(raw - x), 0.5, rtol=0.05)


def test_salt_pepper_rate(cfg):
  x = jnp.full((200, 200), 0.5)
  noisy = corruption.salt_pepper(jax.random.key(0), x, 0.3, cfg.objective)
  hit = noisy != 0.5
  np.testing.assert_allclose(jnp.mean(hit), 0.3, atol=0.01)
  assert set(np.unique(noisy[hit]).tolist()) == {0.0, 1.0}
  np.testing.assert_allclose(jnp.mean(noisy[hit]), 0.5, atol=0.02)


def test_masking_rate(cfg):
  noisy = corruption.masking(jax.random.key(0), jnp.ones((200, 200)), 0.25, cfg.objective)
  np.testing.assert_allclose(jnp.mean(noisy == 0), 0.25, atol=0.01)
  assert set(np.unique(noisy).tolist()) == {0.0, 1.0}


def _hidden_ranges(mask):
  """Per spatial axis, the sorted indices touched by the hidden block."""
  spatial = mask.ndim - 1
  return [np.unique(np.nonzero(mask)[axis]) for axis in range(spatial)]


def test_block_mask_covers_one_block():
  keys = jax.random.split(jax.random.key(0), 20)
  masks = np.asarray(jax.jit(jax.vmap(lambda k: corruption.block_mask(k, (8, 8, 3), 3)))(keys))
  for mask in masks:
    assert mask.sum() == 3 * 3 * 3
    for idx in _hidden_ranges(mask):
      np.testing.assert_array_equal(idx, np.arange(idx[0], idx[0] + 3))
    assert (mask == mask[..., :1]).all()
  seq = corruption.block_mask(jax.random.key(1), (16, 2), 4)
  assert float(seq.sum()) == 4 * 2


def test_block_mask_inside_region(cfg):
  keys = jax.random.split(jax.random.key(0), 50)
  masks = np.asarray(
      jax.jit(jax.vmap(lambda k: corruption.block_mask(k, (16, 16, 1), 3, region=8)))(keys))
  starts = set()
  for mask in masks:
    assert mask.sum() == 9
    for idx in _hidden_ranges(mask):
      assert idx.min() >= 4 and idx.max() < 12
      starts.add(int(idx[0]))
  assert len(starts) > 3
  cfg.objective.block_size = 3
  cfg.objective.block_region = 8
  x = jnp.ones((16, 16, 1))
  corrupted = corruption.block(jax.random.key(3), x, 0.0, cfg.objective)
  np.testing.assert_array_equal(
      corrupted, 1 - corruption.block_mask(jax.random.key(3), (16, 16, 1), 3, region=8))


# ---- training helpers -------------------------------------------------------------


def train_model(cfg, x, y, steps, batch_size=64, seed=0):
  """Trains with mode 'jit'; returns (model, final state, per-step losses)."""
  shape = x.shape[1:]
  model = families.build_model(cfg, shape)
  state = train.create_train_state(cfg, model, shape, init_key(seed), steps)
  step = parallel.compile_step(step_fn(cfg, model), "jit")
  order = np.random.default_rng(seed)
  rng = jax.random.key(seed + 1)
  history = []
  for _ in range(steps):
    idx = order.choice(len(x), batch_size, replace=False)
    state, metrics = step(state, {"x": x[idx], "y": y[idx]}, rng)
    history.append(metrics["loss"])
  return model, state, np.asarray(jax.device_get(history))


@pytest.fixture(scope="module")
def trained_vae(digits, digits_labels):
  cfg = configure(configs.get_preset("tiny"), "vae_bce", latent_dim=4)
  cfg.optim.learning_rate = 3e-3
  model, state, history = train_model(cfg, digits, digits_labels, 200)
  return cfg, model, state.params, history


# ---- bounds -----------------------------------------------------------------------


def test_iw_bound_with_one_sample_is_the_elbo(trained_vae, digits):
  cfg, model, params, _ = trained_vae
  x = jnp.asarray(digits[:32])
  t = jax.jit(lambda p, x, k: families.elbo_terms(model, p, x, None, k, cfg, num_samples=1))(
      params, x, jax.random.key(0))
  np.testing.assert_array_equal(t["iw_bound"], t["mc_elbo"])


@pytest.fixture(scope="module")
def many_sample_elbo(trained_vae, digits):
  """elbo_terms with 1000 samples on 16 digits of the trained VAE."""
  cfg, model, params, _ = trained_vae
  fn = jax.jit(lambda p, x, k: families.elbo_terms(model, p, x, None, k, cfg, num_samples=1000))
  return fn(params, jnp.asarray(digits[:16]), jax.random.key(1))


def test_analytic_elbo_matches_mc_elbo_on_average(many_sample_elbo):
  t = many_sample_elbo
  np.testing.assert_allclose(t["mc_elbo"], t["elbo"], rtol=0.02, atol=0.1)
  np.testing.assert_allclose(jnp.mean(t["mc_elbo"]), jnp.mean(t["elbo"]), rtol=0.005)
  assert bool(jnp.all(t["iw_bound"] >= t["mc_elbo"]))


def test_importance_sampled_nll_is_below_negative_elbo(trained_vae, many_sample_elbo, digits):
  cfg, model, params, _ = trained_vae
  x = jnp.asarray(digits[:16])
  elbo = many_sample_elbo["elbo"]
  nll = jax.jit(lambda p, x, k: families.importance_sampled_nll(model, p, x, k, cfg,
                                                                num_samples=1000, chunk=250))(
      params, x, jax.random.key(3))
  chex.assert_shape(nll, (16,))
  chex.assert_tree_all_finite(nll)
  assert float(jnp.mean(nll)) < float(jnp.mean(-elbo))
  assert bool(jnp.all(nll <= -elbo + 0.05))


# ---- agreement across parallel modes ----------------------------------------------


def _agreement_setup(cfg, variant, digits, digits_labels, batch_size=16):
  configure(cfg, variant)
  cfg.optim.name = "sgd"  # a linear first step; Adam's first step ~ lr * sign(g) amplifies
  cfg.optim.learning_rate = 0.1  # rounding noise in near-zero gradients
  shape = digits.shape[1:]
  model = families.build_model(cfg, shape)
  state = train.create_train_state(cfg, model, shape, init_key(), 10)
  batch = {"x": digits[:batch_size], "y": digits_labels[:batch_size]}
  return model, state, batch


def _run_modes(fn, state, batch, steps, modes=parallel.MODES):
  results = {}
  for mode in modes:
    step = parallel.compile_step(fn, mode, donate_state=False)
    s, outs = state, []
    for _ in range(steps):
      s, metrics = step(s, batch, jax.random.key(7))
      outs.append(metrics)
    results[mode] = (s.params, outs)
  return results


@pytest.mark.parametrize("variant", ["denoising_salt_pepper", "vae_bce", "sparse_topk",
                                     "sparse_kl", "ae_dropout"])
def test_parallel_modes_agree(cfg, variant, digits, digits_labels):
  """One device and eight give the same parameters and metrics: also for the sparsity KL,
  a penalty on batch statistics, and for dropout, whose masks follow each example (the
  plain autoencoder: test_parallel_modes_agree_with_uneven_mask)."""
  dropout = variant == "ae_dropout"
  model, state, batch = _agreement_setup(cfg, "ae" if dropout else variant, digits,
                                         digits_labels)
  if dropout:
    cfg.model.dropout = 0.5
    model = families.build_model(cfg, digits.shape[1:])
  results = _run_modes(step_fn(cfg, model), state, batch, steps=2)
  params, metrics = results["none"]
  for mode in ("jit", "pmap", "shard_map"):
    chex.assert_trees_all_close(results[mode][0], params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(results[mode][1], metrics, rtol=1e-5, atol=1e-6)
  assert float(metrics[1]["loss"]) != float(metrics[0]["loss"])


def test_parallel_modes_agree_with_uneven_mask(cfg, digits, digits_labels):
  """The plain autoencoder in every mode, over two steps, with a mask that leaves some
  devices fewer real examples than others, or none."""
  model, state, batch = _agreement_setup(cfg, "ae", digits, digits_labels)
  batch["mask"] = np.ones(16, np.float32)
  batch["mask"][11:] = 0.0  # devices hold 2, 2, 2, 2, 2, 1, 0, 0 real examples
  results = _run_modes(step_fn(cfg, model), state, batch, steps=2)
  params, metrics = results["none"]
  x = batch["x"][:11]
  out = model.apply(state.params, x)["out"]
  np.testing.assert_allclose(metrics[0]["loss"], jnp.mean(losses.batched(losses.mse)(out, x)),
                             rtol=1e-5)
  for mode in ("jit", "pmap", "shard_map"):
    chex.assert_trees_all_close(results[mode][0], params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(results[mode][1], metrics, rtol=1e-5, atol=1e-6)
  assert float(metrics[1]["loss"]) != float(metrics[0]["loss"])


@pytest.mark.parametrize("variant", ["vae_bce"])
def test_eval_step_agrees_across_modes(cfg, variant, digits, digits_labels):
  model, state, _ = _agreement_setup(cfg, variant, digits, digits_labels)
  x = np.zeros((16, *digits.shape[1:]), np.float32)
  x[:13] = digits[:13]
  batch = {"x": x, "y": np.zeros(16, np.int32),
           "mask": (np.arange(16) < 13).astype(np.float32)}
  fn = functools.partial(train.eval_step, model=model, family=family_of(cfg), config=cfg)
  outs = {mode: parallel.compile_step(fn, mode, donate_state=False)(
      state.params, batch, jax.random.key(5)) for mode in parallel.MODES}
  sums, count = outs["none"]
  assert float(count) == 13.0
  for mode in ("jit", "pmap", "shard_map"):
    chex.assert_trees_all_close(outs[mode], (sums, count), rtol=1e-5, atol=1e-6)
  metrics = train.finalize_eval(family_of(cfg), cfg, sums, count)
  assert math.isfinite(metrics["loss"])


# ---- evaluation is deterministic and at the target objective ----------------------


def _eval_metrics(cfg, model, params, x):
  fn = functools.partial(train.eval_step, model=model, family=family_of(cfg), config=cfg)
  sums, count = jax.jit(fn)(params, {"x": x, "y": np.zeros(len(x), np.int32)},
                            jax.random.key(5))
  return train.finalize_eval(family_of(cfg), cfg, sums, count)


def test_eval_step_runs_without_dropout(cfg, digits):
  """With dropout 0.5 the evaluation loss is the MSE of `reconstruct` (train=False),
  not a loss with a frozen dropout mask."""
  configure(cfg, "ae", dropout=0.5)
  x = digits[:32]
  model = families.build_model(cfg, x.shape[1:])
  params = train.init_params(model, x.shape[1:], init_key())
  metrics = _eval_metrics(cfg, model, params, x)
  recon = model.apply(params, x, method=model.reconstruct)
  np.testing.assert_allclose(metrics["loss"], float(jnp.mean((recon - x) ** 2)), rtol=1e-5)
  again = _eval_metrics(cfg, model, params, x)
  assert again == metrics


def test_eval_step_uses_the_target_beta_and_reports_the_elbo(cfg, digits):
  """beta warm-up shapes training only: evaluation scores recon + beta * KL at the target
  beta, and reports the ELBO (beta = 1) beside it."""
  configure(cfg, "vae_bce", beta=4.0, beta_warmup_steps=1000)
  x = digits[:32]
  model = families.build_model(cfg, x.shape[1:])
  params = train.init_params(model, x.shape[1:], init_key())
  metrics = _eval_metrics(cfg, model, params, x)
  np.testing.assert_allclose(metrics["loss"], metrics["recon"] + 4.0 * metrics["kl"],
                             rtol=1e-5)
  np.testing.assert_allclose(metrics["elbo"], -(metrics["recon"] + metrics["kl"]), rtol=1e-5)
  configure(cfg, "vae_iw")
  model = families.build_model(cfg, x.shape[1:])
  params = train.init_params(model, x.shape[1:], init_key())
  metrics = _eval_metrics(cfg, model, params, x)
  assert metrics["elbo"] <= metrics["iw_bound"] + 1e-4


def test_learned_sigma_has_a_floor(cfg):
  """On constant pixels a learned sigma would shrink without bound; the model's log sigma
  never goes below model.min_log_sigma, so the likelihood stays bounded."""
  configure(cfg, "vae_gaussian_learned_sigma")
  x = jnp.full((4, 6), 0.5)
  model = families.build_model(cfg, x.shape[1:])
  params = train.init_params(model, x.shape[1:], init_key())
  params = jax.tree_util.tree_map_with_path(
      lambda path, v: jnp.full_like(v, -50.0) if "log_sigma" in str(path) else v, params)
  out = model.apply(params, x)
  assert float(out["log_sigma"].min()) == cfg.model.min_log_sigma == -6.0
  log_px = families.log_likelihood(cfg, out, x)
  assert bool(jnp.all(jnp.isfinite(log_px)))
  assert float(log_px.max()) <= 6 * (6.0 - 0.5 * math.log(2 * math.pi)) + 1e-3


# ---- training reduces the loss ----------------------------------------------------


@pytest.mark.parametrize("variant", ["ae", "sparse_kl", "sparse_topk",
                                     "denoising_gaussian", "vae_bce", "cvae", "vqvae"])
def test_training_reduces_loss(cfg, variant, digits, digits_labels, trained_vae):
  if variant == "vae_bce":
    history = trained_vae[3]
  else:
    configure(cfg, variant, latent_dim=8 if variant != "sparse_topk" else 16)
    cfg.optim.learning_rate = 3e-3
    _, _, history = train_model(cfg, digits, digits_labels, 200)
  assert np.isfinite(history).all()
  first, final = history[0], history[-10:].mean()
  ratio = 0.7 if VARIANTS[variant]["family"] in ("vae", "cvae") else 0.5
  assert final <= ratio * first, (variant, first, final)


# ---- compilation ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [
    "jit",
    "shard_map",
])
def test_no_retracing_across_steps(cfg, mode, digits):
  chex.clear_trace_counter()
  configure(cfg, "denoising_gaussian")
  shape = digits.shape[1:]
  model = families.build_model(cfg, shape)
  family = family_of(cfg)
  state = train.create_train_state(cfg, model, shape, init_key(), 5)

  def step(state, batch, rng, *, axis_name):
    return train.train_step(state, batch, rng, model=model, family=family, config=cfg,
                            axis_name=axis_name)

  compiled = parallel.compile_step(chex.assert_max_traces(step, n=1), mode)
  for i in range(5):
    state, _ = compiled(state, {"x": digits[16 * i:16 * (i + 1)]}, jax.random.key(i))
  assert int(state.step) == 5


# ---- registry and validation errors -----------------------------------------------


def test_unknown_names_list_valid_ones(cfg):
  with pytest.raises(ConfigError, match="valid family names are: ae, ") as err:
    families.get_family("transformer")
  # Other test modules register families of their own; the core ones must all be listed.
  for name in ("cvae", "denoising", "sparse", "vae", "vqvae"):
    assert name in str(err.value)
  with pytest.raises(ConfigError, match="conv1d, conv2d, mlp"):
    NETWORKS.get("resnet")
  with pytest.raises(ConfigError, match="valid corruption names are: block") as err:
    corruption.CORRUPTIONS.get("dropout")
  for name in ("gaussian", "masking", "salt_pepper"):  # applications register more
    assert name in str(err.value)
  cfg.model.family = "gan"
  with pytest.raises(ConfigError, match="valid family names"):
    families.build_model(cfg, (8, 8, 1))
  cfg.model.family = "ae"
  cfg.model.network = "transformer"
  with pytest.raises(ConfigError, match="conv1d, conv2d, mlp"):
    families.build_model(cfg, (8, 8, 1))
  with pytest.raises(ConfigError, match="jit, pmap, shard_map"):
    parallel.compile_step(lambda s, b, r, axis_name: None, "vmap")


def test_validation_errors(cfg):
  configure(cfg, "denoising_gaussian", noise_level=-0.1)
  with pytest.raises(ConfigError, match="noise_level"):
    families.build_model(cfg, (8, 8, 1))
  cfg.objective.noise = "salt_pepper"
  cfg.objective.noise_level = 1.5
  with pytest.raises(ConfigError, match="noise_level"):
    families.build_model(cfg, (8, 8, 1))
  configure(cfg, "sparse_topk", latent_dim=4, k=5)
  with pytest.raises(ConfigError, match="model.k"):
    families.build_model(cfg, (8, 8, 1))
  configure(cfg, "ae", latent_dim=64)
  with pytest.warns(UserWarning, match="latent_dim"):
    families.build_model(cfg, (8, 8, 1))
  configure(cfg, "ae", network="conv2d", latent_dim=4)
  with pytest.raises(ConfigError, match="divisible"):
    families.build_model(cfg, (6, 6, 1))


def test_multistep_schedule_decays_at_the_milestones_like_multisteplr(cfg):
  # PyTorch's MultiStepLR(milestones=[3, 5], gamma=0.5) stepped once per update: updates
  # 0-2 at 0.1, 3-4 at 0.05, 5 on at 0.025.
  cfg.optim.learning_rate, cfg.optim.schedule = 0.1, "multistep"
  cfg.optim.milestones, cfg.optim.milestone_gamma = (3, 5), 0.5
  lr = train.learning_rate_schedule(cfg, 10)
  np.testing.assert_allclose([float(lr(s)) for s in range(7)],
                             [0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025], rtol=1e-6)
  for bad in [(), (5, 3), (0, 2)]:
    cfg.optim.milestones = bad
    with pytest.raises(ConfigError, match="milestones"):
      train.learning_rate_schedule(cfg, 10)
  cfg.optim.milestones, cfg.optim.milestone_gamma = (3,), 1.5
  with pytest.raises(ConfigError, match="milestone_gamma"):
    train.learning_rate_schedule(cfg, 10)
