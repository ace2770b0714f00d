"""Chunked forwards (`model.batch_chunk`) and micro-batched train steps (`train.microbatch`)."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ae_jax import batching, families, parallel, train
from ae_jax.data import sources
from ae_jax.errors import ConfigError
from ae_jax.fit import fit
from ae_jax.prepare import validate_train_config

SHAPE = (8, 8, 1)


def conv_cfg(cfg, **fields):
  """The tiny preset as a small conv2d autoencoder on 8x8x1 images."""
  cfg.model.network = "conv2d"
  cfg.model.channels = (4, 8)
  cfg.model.latent_dim = 4
  for key, value in fields.items():
    section, name = key.split("__")
    cfg[section][name] = value
  return cfg


def state_of(cfg, shape=SHAPE, seed=0):
  model = families.build_model(cfg, shape)
  state = train.create_train_state(cfg, model, shape, jax.random.key(seed), 10)
  return model, families.get_family(cfg.model.family), state


# ---- the helpers ------------------------------------------------------------------------

@pytest.mark.parametrize("b", [1, 5, 16, 17, 40])
def test_map_chunks_traces_fixed_chunks_and_matches(b):
  seen = []

  def f(x, y):
    seen.append(x.shape[0])
    return {"sum": x.sum(-1) + y, "twice": 2 * x}

  x = jnp.arange(b * 3, dtype=jnp.float32).reshape(b, 3)
  y = jnp.arange(b, dtype=jnp.float32)
  got = batching.map_chunks(f, 16, x, y)
  np.testing.assert_array_equal(got["sum"], np.asarray(x).sum(-1) + np.asarray(y))
  np.testing.assert_array_equal(got["twice"], 2 * np.asarray(x))
  # Whole chunks of 16 under one loop, then the remainder once; nothing padded.
  want = [b] if b <= 16 else [16] + ([b % 16] if b % 16 else [])
  assert seen == want


def test_sum_chunks_adds_chunks_with_remainder():
  x = jnp.arange(23, dtype=jnp.float32)
  got = batching.sum_chunks(lambda v: {"s": v.sum(), "sq": jnp.sum(v * v)}, 8, x)
  assert float(got["s"]) == 253.0  # 0 + 1 + ... + 22
  assert float(got["sq"]) == float(sum(i * i for i in range(23)))


def test_map_chunks_passes_none_and_rejects_mixed_batches():
  out = batching.map_chunks(lambda x, c: x if c is None else x + 1, 2, jnp.ones((5, 2)), None)
  chex.assert_shape(out, (5, 2))
  with pytest.raises(ValueError, match="one leading batch size"):
    batching.map_chunks(lambda x, y: x, 2, jnp.ones((5,)), jnp.ones((4,)))


@pytest.mark.parametrize("value", [-2, 1.5, True, "8", None])
def test_bad_settings_are_config_errors(cfg, value):
  for name in ("model.batch_chunk", "train.microbatch"):
    with pytest.raises(ConfigError, match=f"{name} must be -1 .auto., 0 .off. or a positive"):
      batching.check_setting(name, value)
  # Through the config checks (the config's own typing refuses non-integers on assignment).
  cfg.model.batch_chunk = -2
  with pytest.raises(ConfigError, match="model.batch_chunk must be -1"):
    families.validate_config(cfg, (64,))
  cfg.model.batch_chunk, cfg.train.microbatch = -1, -2
  with pytest.raises(ConfigError, match="train.microbatch must be -1"):
    validate_train_config(cfg, 100, 1)


def test_auto_settings(cfg):
  assert jax.default_backend() == "cpu"
  assert families.batch_chunk(cfg) == 0  # mlp
  assert train.microbatch_size(cfg, families.get_family("ae")) == 0
  conv_cfg(cfg)
  assert families.batch_chunk(cfg) == batching.AUTO_BATCH_CHUNK
  assert train.microbatch_size(cfg, families.get_family("ae")) == batching.AUTO_MICROBATCH
  cfg.model.batch_chunk, cfg.train.microbatch = 0, 0
  assert families.batch_chunk(cfg) == 0
  assert train.microbatch_size(cfg, families.get_family("ae")) == 0
  cfg.model.batch_chunk, cfg.train.microbatch = 7, 5
  assert families.batch_chunk(cfg) == 7
  assert train.microbatch_size(cfg, families.get_family("ae")) == 5


@pytest.mark.parametrize("family,fields", [
    ("sparse", {"model__sparsity": "kl"}),
    ("sparse", {"model__sparsity": "batch_topk", "model__dictionary": True}),
    ("sparse", {"model__sparsity": "topk", "model__dictionary": True, "objective__auxk": 2}),
    ("trimmed_ae", {"objective__trim": 0.1}),
])
def test_batch_coupled_family_refuses_microbatch(cfg, family, fields):
  conv_cfg(cfg, **fields)
  cfg.model.family = family
  fam = families.get_family(family)
  assert fam.batch_coupled(cfg)
  assert train.microbatch_size(cfg, fam) == 0  # auto falls back to off
  cfg.train.microbatch = 8
  with pytest.raises(ConfigError, match="cannot be accumulated over micro-batches"):
    validate_train_config(cfg, 100, 1)


def test_uncoupled_settings_are_not_batch_coupled(cfg):
  cfg.model.family = "sparse"
  cfg.model.sparsity = "topk"
  assert not families.get_family("sparse").batch_coupled(cfg)
  cfg.model.family, cfg.objective.trim = "trimmed_ae", 0.0
  assert not families.get_family("trimmed_ae").batch_coupled(cfg)
  for name in ("ae", "vae", "denoising", "vqvae", "contractive", "rate_distortion"):
    assert not families.get_family(name).batch_coupled(cfg), name


# ---- the chunked forward ----------------------------------------------------------------

@pytest.mark.parametrize("b", [32, 37])
def test_chunked_forward_equals_whole_batch(cfg, b):
  conv_cfg(cfg, model__batch_chunk=16)
  model, family, state = state_of(cfg)
  x = jax.random.uniform(jax.random.key(1), (b, *SHAPE))
  enc = lambda p, v: model.apply(p, v, method=model.encode)
  dec = lambda p, z: model.apply(p, z, method=model.decode)
  z = families.in_chunks(cfg, enc)(state.params, x)
  chex.assert_trees_all_close(z, enc(state.params, x), atol=1e-5)
  if b % 16:
    chex.assert_trees_all_close(families.in_chunks(cfg, dec)(state.params, z),
                                dec(state.params, z), atol=1e-5)
    # Evaluation (the objective's forward goes through the chunks) gives the same sums.
    batch = {"x": x, "mask": jnp.ones((b,))}
    eval_sums = lambda: train.eval_step(state.params, batch, jax.random.key(2), model=model,
                                        family=family, config=cfg)
    chunked = eval_sums()
    cfg.model.batch_chunk = 0
    chex.assert_trees_all_close(chunked, eval_sums(), rtol=1e-5)


def test_chunked_eval_keeps_shared_outputs(cfg):
  """A VAE with a learned likelihood scale (an output shared by all examples)."""
  cfg.model.family = "vae"
  cfg.model.recon_loss = "gaussian"
  cfg.model.learn_sigma = True
  cfg.model.batch_chunk = 4
  model, family, state = state_of(cfg, (64,))
  batch = {"x": jax.random.uniform(jax.random.key(1), (10, 64)), "mask": jnp.ones((10,))}
  chunked = train.eval_step(state.params, batch, jax.random.key(2), model=model, family=family,
                            config=cfg)
  cfg.model.batch_chunk = 0
  plain = train.eval_step(state.params, batch, jax.random.key(2), model=model, family=family,
                          config=cfg)
  chex.assert_trees_all_close(chunked, plain, rtol=1e-5, atol=1e-5)


# ---- the micro-batched train step -------------------------------------------------------

def grads_and_metrics(cfg, model, family, state, batch, micro):
  """(gradient, metrics) of one train step with train.microbatch = micro, SGD at rate 1
  and no momentum, so that the parameter change is minus the gradient."""
  cfg.train.microbatch = micro
  step = functools.partial(train.train_step, model=model, family=family, config=cfg)
  sgd = state.replace(tx=optax.sgd(1.0), opt_state=optax.sgd(1.0).init(state.params))
  new, metrics = jax.jit(functools.partial(step, axis_name=None))(sgd, batch,
                                                                   jax.random.key(3))
  return jax.tree.map(lambda a, b: a - b, sgd.params, new.params), metrics


@pytest.mark.parametrize("family,network", [("ae", "conv2d"), ("vae", "mlp")])
def test_microbatched_gradient_equals_full_gradient(cfg, family, network):
  """A conv AE, and a VAE whose noise comes from each example's key."""
  conv_cfg(cfg)
  cfg.model.family, cfg.model.network = family, network
  cfg.model.recon_loss = "bce" if family == "vae" else "mse"
  model, fam, state = state_of(cfg)
  x = jax.random.uniform(jax.random.key(1), (22, *SHAPE))
  mask = jnp.ones((22,)).at[-3:].set(0.0)  # a padded last batch: weights count
  batch = {"x": x, "mask": mask}
  full, full_metrics = grads_and_metrics(cfg, model, fam, state, batch, 0)
  micro, micro_metrics = grads_and_metrics(cfg, model, fam, state, batch, 8)  # 8 + 8 + 6
  chex.assert_trees_all_close(micro, full, rtol=2e-5, atol=1e-6)
  assert set(micro_metrics) == set(full_metrics)
  chex.assert_trees_all_close(micro_metrics, full_metrics, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(jax.tree.leaves(full)[0]))) > 0


def test_parallel_modes_agree_with_microbatch(cfg):
  conv_cfg(cfg, train__microbatch=3)
  model, family, state = state_of(cfg)
  batch = {"x": np.asarray(jax.random.uniform(jax.random.key(1), (16, *SHAPE)))}
  step = functools.partial(train.train_step, model=model, family=family, config=cfg)
  results = {}
  for mode in ("jit", "pmap", "shard_map"):
    fn = parallel.compile_step(step, mode, num_devices=2, donate_state=False)
    results[mode] = fn(state, batch, jax.random.key(3))  # 8 per device: 3 + 3 + 2
  cfg.train.microbatch = 0
  plain = jax.jit(functools.partial(step, axis_name=None))(state, batch, jax.random.key(3))
  for mode, (new, metrics) in results.items():
    chex.assert_trees_all_close(new.params, plain[0].params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(metrics, plain[1], rtol=1e-5, atol=1e-6)


def test_training_with_microbatch_lowers_the_loss(cfg, digits):
  conv_cfg(cfg, train__microbatch=6, train__parallel="jit", train__num_steps=30,
           train__eval_every=30, train__log_every=10, model__batch_chunk=20)
  data = sources.make_array_data(digits[:400], None, "digits")
  trained = fit(cfg, train_data=data, eval_data=data, progress=False)
  losses = [r["loss"] for r in trained.history if "loss" in r]
  assert losses[-1] < 0.8 * losses[0]
  assert np.all(np.isfinite(trained.reconstruct(digits[:45])))


def test_vmapped_trials_agree_with_microbatch(cfg):
  """The train step vmapped over a trial axis (as `ae_jax.vmap_trials` runs it)."""
  cfg.train.microbatch = 5
  model = families.build_model(cfg, (64,))
  family = families.get_family("ae")
  first = train.create_train_state(cfg, model, (64,), jax.random.key(0), 10)
  params = jax.tree.map(lambda p: 1.1 * p + 0.01, first.params)
  second = first.replace(params=params, opt_state=first.tx.init(params))
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), first, second)
  batch = {"x": jax.random.uniform(jax.random.key(1), (12, 64))}  # 5 + 5 + 2

  def run():
    step = functools.partial(train.train_step, model=model, family=family, config=cfg)
    return jax.jit(jax.vmap(step, in_axes=(0, None, None)))(stacked, batch, jax.random.key(3))
  micro = run()
  cfg.train.microbatch = 0
  chex.assert_trees_all_close(micro, run(), rtol=1e-5, atol=1e-6)
