"""GDN, the convolutional transforms and the rate_distortion family's gdn transform."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import codec as codec_lib, entropy, gdn
from ae_jax.errors import ConfigError
from ae_jax.families import build_model, get_family
from ae_jax.fit import fit
from _helpers import rd_cfg


def test_gdn_and_inverse_by_hand():
  x = jnp.asarray([[1.0, 2.0]])
  params = {"params": {"beta": jnp.asarray([1.0, 0.5]),
                       "gamma": jnp.asarray([[0.1, 0.2], [0.3, 0.4]])}}
  norm = np.asarray([1.0 + 0.1 * 1 + 0.2 * 4, 0.5 + 0.3 * 1 + 0.4 * 4])  # 1.9, 2.4
  np.testing.assert_allclose(gdn.GDN().apply(params, x)[0], [1 / math.sqrt(1.9), 2 / math.sqrt(2.4)],
                             rtol=1e-6)
  np.testing.assert_allclose(gdn.GDN(inverse=True).apply(params, x)[0], [1, 2] * np.sqrt(norm),
                             rtol=1e-6)
  # Negative parameters act as their bounds: beta_min and 0.
  bounded = {"params": {"beta": jnp.asarray([-1.0, 0.5]),
                        "gamma": jnp.asarray([[-0.1, 0.2], [0.3, -0.4]])}}
  np.testing.assert_allclose(gdn.GDN().apply(bounded, x)[0],
                             [1 / math.sqrt(1e-6 + 0.8), 2 / math.sqrt(0.8)], rtol=1e-5)


def test_gdn_init_and_shapes():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 4))
  params = gdn.GDN().init(jax.random.key(1), x)
  np.testing.assert_array_equal(params["params"]["beta"], np.ones(4))
  np.testing.assert_allclose(params["params"]["gamma"], 0.1 * np.eye(4))
  y = gdn.GDN().apply(params, x)
  chex.assert_shape(y, x.shape)
  chex.assert_type(y, jnp.float32)
  np.testing.assert_allclose(y, x / jnp.sqrt(1 + 0.1 * jnp.square(x)), rtol=1e-6)


def test_lower_bound_passes_gradients_that_raise_the_value():
  below = jnp.asarray(-1.0)
  assert float(jax.grad(lambda v: gdn.lower_bound(v, 0.0))(below)) == 0.0  # would lower it
  assert float(jax.grad(lambda v: -gdn.lower_bound(v, 0.0))(below)) == -1.0  # would raise it
  assert float(jax.grad(lambda v: 3 * gdn.lower_bound(v, 0.0))(jnp.asarray(2.0))) == 3.0


def test_transform_shapes():
  enc = gdn.AnalysisTransform(channels=8, latent_channels=5, kernel_size=3)
  dec = gdn.SynthesisTransform(out_channels=1, channels=8, kernel_size=3)

  @jax.jit  # one program: run eagerly, each primitive of init and apply compiles alone
  def analysis_synthesis(x):
    y = enc.apply(enc.init(jax.random.key(0), x), x)
    return y, dec.apply(dec.init(jax.random.key(1), y), y)

  y, out = analysis_synthesis(jnp.zeros((2, 12, 16, 1)))
  chex.assert_shape(y, (2, 3, 4, 5))
  chex.assert_type(y, jnp.float32)
  chex.assert_shape(out, (2, 12, 16, 1))


def gdn_cfg(cfg, **kw):
  """`rd_cfg` with the small GDN transform (its latent size follows from the image)."""
  return rd_cfg(cfg, **{"model__rd_transform": "gdn", "model__rd_channels": 8,
                        "model__rd_latent_channels": 3, "model__rd_kernel": 3, **kw})


def test_gdn_family_terms(cfg, digits):
  cfg = gdn_cfg(cfg)
  model = build_model(cfg, (8, 8, 1))
  assert (model.latent_dim, model.positions, model.bottleneck_channels) == (12, 4, 3)
  terms = get_family("rate_distortion").terms

  @jax.jit  # one program: run eagerly, each primitive compiles alone
  def run(x):
    params = model.init(jax.random.key(0), x)
    keys = jax.random.split(jax.random.key(1), 5)
    t = terms(model, params, {"x": x}, keys, None, cfg, False)
    y_hat = model.apply(params, x, method=model.encode).reshape(5, 2, 2, 3)
    p = model.apply(params, y_hat, method=lambda m, v: m.bottleneck.likelihood(v))
    return t, p, model.apply(params, x, method=model.symbols)

  t, p, symbols = run(jnp.asarray(digits[:5]))
  for name in ("loss", "mse", "bits", "bpp"):
    chex.assert_shape(t[name], (5,))
  # The rate is the sum of -log2 P over every position and channel of the (2, 2, 3) latent.
  np.testing.assert_allclose(t["bits"], -np.log2(np.asarray(p)).sum((1, 2, 3)), rtol=1e-5)
  chex.assert_shape(symbols, (5, 12))
  chex.assert_type(symbols, jnp.int32)


def test_gdn_bad_config(cfg):
  for kw, shape, message in (({"model__rd_transform": "cnn"}, (8, 8, 1), "rd_transform"),
                             ({}, (64,), "divisible by 4"),
                             ({}, (10, 10, 1), "divisible by 4"),
                             ({"model__rd_channels": 0}, (8, 8, 1), "rd_channels"),
                             ({"model__rd_latent_channels": -1}, (8, 8, 1), "rd_latent_channels")):
    with pytest.raises(ConfigError, match=message):
      build_model(gdn_cfg(cfg.copy_and_resolve_references(), **kw), shape)


def test_tables_tile_over_positions():
  t = entropy.CodingTables(np.asarray([-1, -2], np.int32), np.asarray([3, 4], np.int32),
                           np.arange(10, dtype=np.float64).reshape(2, 5),
                           np.asarray([0.5, -0.5], np.float32))
  tiled = t.tile(3)
  np.testing.assert_array_equal(tiled.lower, [-1, -2] * 3)
  np.testing.assert_array_equal(tiled.counts[4], t.counts[0])
  np.testing.assert_array_equal(tiled.counts[5], t.counts[1])
  assert t.tile(1) is t


@pytest.mark.slow
def test_gdn_codec_round_trip_is_exact_for_every_example(cfg, digits, tmp_path):
  cfg = gdn_cfg(cfg)
  cfg.train.num_steps = 10
  path = tmp_path / "digits.npy"
  np.save(path, digits)
  cfg.data.name = str(path)
  fit(cfg, tmp_path / "work", progress=False)
  codec = codec_lib.Codec.load(tmp_path / "work")
  assert len(codec.tables.sizes) == 3 and len(codec.stream_tables.sizes) == 12
  x = digits[:32]
  data = codec.compress(x)
  out = codec.decompress(data)
  chex.assert_shape(out, (32, 8, 8, 1))
  np.testing.assert_array_equal(out, codec.reconstruct(x))
  symbols = codec.symbols(x)
  for i in range(0, 32, 8):
    # Each example's own stream holds the very same integers; the image decoded from them
    # at batch 1 matches the batch-32 decode to float rounding (XLA's CPU matmuls may sum
    # in another order at another batch size, so the last bit is not promised).
    one = codec.compress(x[i:i + 1])
    np.testing.assert_array_equal(codec.decode_symbols(one)[0], symbols[i])
    np.testing.assert_allclose(codec.decompress(one)[0], out[i], rtol=0, atol=1e-6)
  model_recon = codec.model.apply(codec.params, codec.scale(x), method=codec.model.reconstruct)
  np.testing.assert_allclose(codec.inverse(np.asarray(model_recon)), out, atol=1e-5)


def test_dense_configs_saved_before_the_gdn_fields_still_load(cfg):
  from ae_jax import checkpoint
  cfg = gdn_cfg(cfg, model__rd_transform="dense")
  saved = cfg.to_dict()
  for name in ("rd_transform", "rd_channels", "rd_latent_channels", "rd_kernel"):
    del saved["model"][name]
  old = checkpoint.with_defaults(saved)
  assert old.model.rd_transform == "dense"
  model = build_model(old, (8, 8, 1))
  params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  assert set(params) == {"encoder", "decoder", "to_latent", "bottleneck"}
  chex.assert_shape(params["to_latent"]["kernel"], (None, old.model.latent_dim))
