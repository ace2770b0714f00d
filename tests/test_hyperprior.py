"""The scale hyperprior of the rate_distortion family (`model.rd_prior='hyperprior'`): the
Gaussian conditional, its scale table and coding tables, the format-3 bitstream, the
codec and `ae-jax compress` / `decompress`."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ae_jax import bitstream, cli, codec as codec_lib, entropy
from ae_jax.errors import ConfigError, DataError
from ae_jax.families import build_model, get_family
from ae_jax.families.rate_distortion import RateDistortionAutoencoder
from ae_jax.fit import fit
from _helpers import rd_cfg, rd_init as init


def hp_cfg(cfg, **fields):
  """`rd_cfg` with a small scale hyperprior (z of 4 values, one hidden layer of 16)."""
  return rd_cfg(cfg, **{"model__rd_prior": "hyperprior", "model__rd_hyper_dim": 4,
                        "model__rd_hyper_widths": (16,), **fields})


# ---- the Gaussian conditional --------------------------------------------------------

def test_gaussian_likelihood_against_scipy():
  y = jnp.asarray([0.0, 1.0, -2.0, 0.3, 40.0, 3.0])
  scale = jnp.asarray([1.0, 0.5, 2.0, 1.7, 3.0, 0.01])
  p = np.asarray(jax.jit(entropy.gaussian_likelihood)(y, scale))
  s = np.maximum(np.asarray(scale, np.float64), 0.11)  # the scale bound
  expect = stats.norm.cdf((np.abs(y) + 0.5) / s) - stats.norm.cdf((np.abs(y) - 0.5) / s)
  expect = np.maximum(expect, entropy.LIKELIHOOD_BOUND)
  np.testing.assert_allclose(p, expect, rtol=1e-5)
  # Hand values: P(0 | sigma 1) = 2 Phi(1/2) - 1 = 0.38292; far tail at the bound.
  assert p[0] == pytest.approx(0.3829249, rel=1e-5)
  assert p[4] == pytest.approx(1e-9)
  # scale 0.01 is read as 0.11: the symbol 3 lies 22.7 sigma out, at the bound too.
  assert p[5] == pytest.approx(1e-9)


def test_lower_bound_passes_only_upward_gradients():
  bound = jnp.asarray(0.11)
  grad = jax.grad(lambda x, w: jnp.sum(w * entropy.lower_bound(x, bound)))
  x = jnp.asarray([0.05, 0.05, 0.5])
  # Loss w * x: the gradient w < 0 asks x to grow, so it passes below the bound.
  np.testing.assert_allclose(grad(x, jnp.asarray([-1.0, 1.0, 1.0])), [-1.0, 0.0, 1.0])
  np.testing.assert_allclose(entropy.lower_bound(x, bound), [0.11, 0.11, 0.5])


def test_scale_table_and_index():
  table = entropy.scale_table()
  chex.assert_shape(table, (64,))
  assert table[0] == pytest.approx(0.11) and table[-1] == pytest.approx(256.0)
  ratios = table[1:] / table[:-1]
  np.testing.assert_allclose(ratios, (256 / 0.11) ** (1 / 63), rtol=1e-12)
  t32 = table.astype(np.float32)
  scales = jnp.asarray([0.01, t32[0], t32[0] * 1.0001, t32[5], t32[5] * 1.0001, t32[62] * 1.01,
                        255.9, 256.0, 1e6], jnp.float32)
  # The smallest table scale >= the scale (the last one above 256).
  np.testing.assert_array_equal(jax.jit(entropy.scale_index)(scales),
                                [0, 0, 1, 5, 6, 63, 63, 63, 63])
  chex.assert_type(entropy.scale_index(scales), jnp.int32)


def test_gaussian_tables_by_hand_and_deterministic():
  t = entropy.gaussian_tables()
  table = entropy.scale_table()
  z = -stats.norm.ppf(1e-9 / 2)  # 6.109
  centers = np.ceil(table * z).astype(int)
  np.testing.assert_array_equal(t.sizes, 2 * centers + 1)
  np.testing.assert_array_equal(t.lower, -centers)
  assert t.sizes[0] == 3 and t.sizes[-1] == 2 * math.ceil(256 * z) + 1  # 3, 3131
  chex.assert_shape(t.counts, (64, int(t.sizes.max()) + 1))
  # Row 0 (scale 0.11): symbol 0 holds all but 2 Phi(-0.5 / 0.11) of the mass.
  p0 = 1.0 - 2.0 * stats.norm.cdf(-0.5 / table[0])
  assert t.counts[0, 1] == math.floor(p0 * 2 ** 16) + 1
  k = 10  # any symbol of a wide table: floor(P * 2**16) + 1
  row = 40
  p = stats.norm.cdf((k + 0.5) / table[row]) - stats.norm.cdf((k - 0.5) / table[row])
  assert t.counts[row, k - t.lower[row]] == math.floor(p * 2 ** 16) + 1
  assert np.all(t.counts[:, -1] >= 1)                      # the escape is never impossible
  entropy.gaussian_tables.cache_clear()
  again = entropy.gaussian_tables()
  assert again is not t and again.digest() == t.digest()   # bit-identical when rebuilt


# ---- the format-3 bitstream ----------------------------------------------------------

@pytest.fixture(scope="module")
def stream_case():
  """Side tables of 3 channels (a logistic), the Gaussian tables, and symbols of 5
  examples with their table indices, with escapes in both parts."""
  t = math.log(2.0 / 1e-3 - 1.0)
  one = math.log(math.expm1(1.0))  # softplus(one) == 1: the cdf is sigmoid(y)
  logistic = {"matrix0": jnp.full((3, 1, 1), one), "bias0": jnp.zeros((3, 1, 1)),
              "quantiles": jnp.tile(jnp.asarray([-t, 0.0, t]), (3, 1))}
  side_tables = entropy.coding_tables(entropy.EntropyBottleneck(3, filters=()), logistic)
  rng = np.random.default_rng(0)
  indices = rng.integers(0, 64, size=(5, 20)).astype(np.int32)
  scales = entropy.scale_table()[indices]
  symbols = np.round(rng.standard_normal((5, 20)) * scales).astype(np.int32)
  side = rng.integers(-3, 4, size=(5, 3)).astype(np.int32)
  gauss = entropy.gaussian_tables()
  side[0, 1] = 50                                   # beyond the side alphabet
  indices[1, 2], symbols[1, 2] = 0, -7              # beyond row 0's alphabet {-1, 0, 1}
  symbols[2, 0] = gauss.lower[indices[2, 0]] - 3000
  return side_tables, gauss, side, symbols, indices


def decode_case(data, case):
  side_tables, gauss, side, symbols, indices = case
  rows = iter(indices)  # the decoder asks for each example's indices in order
  return bitstream.decode_hyperprior(data, side_tables, gauss, lambda z: next(rows), 20)


def test_hyperprior_bitstream_round_trip(stream_case):
  side_tables, gauss, side, symbols, indices = stream_case
  data = bitstream.encode_hyperprior(side, symbols, side_tables, gauss, indices)
  assert data[0] == 0xA3
  got_side, got = decode_case(data, stream_case)
  chex.assert_type(got, jnp.int32)
  np.testing.assert_array_equal(got_side, side)
  np.testing.assert_array_equal(got, symbols)
  # Examples 3 and 4 (no escapes): the payload is within a few bytes of the ideal rate.
  ideal = (entropy.ideal_bits(side_tables, side[3:])
           + entropy.ideal_bits_indexed(gauss, symbols[3:], indices[3:])) / 8
  one = np.asarray([len(bitstream.encode_hyperprior(
      side[i:i + 1], symbols[i:i + 1], side_tables, gauss, indices[i:i + 1])) - 3
                    for i in (3, 4)])
  assert np.all(one >= np.floor(ideal)) and np.all(one <= ideal + 3), (one, ideal)
  empty = bitstream.encode_hyperprior(side[:0], symbols[:0], side_tables, gauss, indices[:0])
  chex.assert_shape(decode_case(empty, stream_case)[1], (0, 20))


def test_hyperprior_bitstream_refuses_damage_and_other_formats(stream_case):
  side_tables, gauss, side, symbols, indices = stream_case
  data = bitstream.encode_hyperprior(side, symbols, side_tables, gauss, indices)
  flipped = bytearray(data)
  flipped[len(data) // 2] ^= 0x04
  for blob in (data[:-2], bytes(flipped), data[:len(data) // 2]):
    with pytest.raises(DataError, match="check failed"):
      decode_case(blob, stream_case)
  with pytest.raises(DataError, match="scale hyperprior.*this codec uses the factorized"):
    bitstream.decode(data, side_tables)
  factorized = bitstream.encode(side, side_tables)
  with pytest.raises(DataError, match="factorized prior.*this codec uses the scale hyperprior"):
    decode_case(factorized, stream_case)
  with pytest.raises(DataError, match=r"table indices must lie in \[0, 64\)"):
    bitstream.encode_hyperprior(side, symbols, side_tables, gauss, indices + 64)
  with pytest.raises(DataError, match="one index per symbol"):
    bitstream.encode_hyperprior(side, symbols, side_tables, gauss, indices[:, :5])


# ---- the model -----------------------------------------------------------------------

def test_param_tree_and_terms_by_hand(cfg, digits):
  cfg = hp_cfg(cfg)
  model, params = init(cfg)
  p = params["params"]
  assert set(p) == {"encoder", "decoder", "to_latent", "bottleneck", "hyper_analysis",
                    "hyper_synthesis"}
  chex.assert_shape(p["bottleneck"]["quantiles"], (4, 3))             # z's 4 channels
  chex.assert_shape(p["hyper_analysis"]["Dense_0"]["kernel"], (6, 16))  # |y| -> 16
  chex.assert_shape(p["hyper_analysis"]["Dense_1"]["kernel"], (16, 4))  # -> z
  chex.assert_shape(p["hyper_synthesis"]["Dense_1"]["kernel"], (16, 6))  # -> a scale per y
  x = jnp.asarray(digits[:5])
  terms = get_family("rate_distortion").terms
  keys = jax.random.split(jax.random.key(1), 5)

  @jax.jit  # one program: run eagerly, each primitive compiles alone
  def run(params, x):
    t = terms(model, params, {"x": x}, keys, None, cfg, False)
    y = model.apply(params, x, method=RateDistortionAutoencoder.analysis)
    z = model.apply(params, y, method=RateDistortionAutoencoder.hyper_latent)
    z_hat = model.apply(params, z, method=lambda m, v: m.bottleneck.dequantize(
        m.bottleneck.quantize(v)))
    side = model.apply(params, z_hat, method=lambda m, v: m.bottleneck.likelihood(v))
    scale = model.apply(params, z_hat, method=RateDistortionAutoencoder.scales)
    return t, y, side, scale, model.apply(params, x, method=RateDistortionAutoencoder.symbols)

  t, y, side, scale, symbols = run(params, x)
  chex.assert_shape(symbols, (5, 10))
  chex.assert_type(symbols, jnp.int32)
  np.testing.assert_array_equal(symbols[:, 4:], np.round(y))
  y_hat = np.round(np.asarray(y, np.float64))
  s = np.asarray(scale, np.float64)
  assert np.all(s >= 0.11)
  p_y = stats.norm.cdf((np.abs(y_hat) + 0.5) / s) - stats.norm.cdf((np.abs(y_hat) - 0.5) / s)
  side_bits = -np.log2(np.asarray(side, np.float64)).sum(-1)
  np.testing.assert_allclose(t["side_bits"], side_bits, rtol=1e-4)
  np.testing.assert_allclose(t["bits"], side_bits - np.log2(np.maximum(p_y, 1e-9)).sum(-1),
                             rtol=1e-4)
  np.testing.assert_allclose(t["loss"], t["mse"] + 0.01 * t["bits"] / 64 + t["aux"], rtol=1e-5)


def test_training_noise_reaches_y_and_z(cfg, digits):
  cfg = hp_cfg(cfg)
  model, params = init(cfg)
  x = jnp.asarray(digits[:3])
  noise = jnp.full((3, 6), 0.25)
  run = jax.jit(lambda p, hn: model.apply(p, x, noise=noise, hyper_noise=hn))
  zero, shifted = (run(params, jnp.full((3, 4), v)) for v in (0.0, 0.4))
  np.testing.assert_allclose(zero["y_hat"], zero["z"] + 0.25, rtol=1e-6)
  # Moving z's noise changes the scales, so y's rate, not what the decoder sees.
  np.testing.assert_array_equal(zero["y_hat"], shifted["y_hat"])
  assert not np.allclose(zero["bits"] - zero["side_bits"], shifted["bits"] - shifted["side_bits"])


def test_bad_config_values_raise_config_error(cfg):
  for fields, message in (({"model__rd_prior": "mean_scale"}, "rd_prior"),
                          ({"model__rd_hyper_dim": 0}, "rd_hyper_dim"),
                          ({"model__rd_hyper_dim": -4}, "rd_hyper_dim"),
                          ({"model__rd_hyper_widths": (16, -3)}, "rd_hyper_widths"),
                          ({"model__rd_hyper_widths": (0,)}, "rd_hyper_widths")):
    with pytest.raises(ConfigError, match=message):
      build_model(hp_cfg(cfg.copy_and_resolve_references(), **fields), (8, 8, 1))
  # The hyper fields are only checked with the hyperprior on.
  build_model(rd_cfg(cfg.copy_and_resolve_references(), model__rd_hyper_dim=0), (8, 8, 1))


def test_factorized_configs_are_unchanged(cfg):
  from ae_jax import checkpoint
  saved = rd_cfg(cfg).to_dict()
  for name in ("rd_prior", "rd_hyper_dim", "rd_hyper_widths"):
    del saved["model"][name]                        # a config saved before the hyperprior
  old = checkpoint.with_defaults(saved)
  assert old.model.rd_prior == "factorized"
  model, params = init(old)
  assert model.side_symbols == 0 and model.bottleneck_channels == 6
  shapes = jax.tree.map(lambda a: a.shape, params["params"])
  assert shapes == {
      "encoder": {"Dense_0": {"kernel": (64, 32), "bias": (32,)}},
      "to_latent": {"kernel": (32, 6), "bias": (6,)},
      "decoder": {"Dense_0": {"kernel": (6, 32), "bias": (32,)},
                  "Dense_1": {"kernel": (32, 64), "bias": (64,)}},
      "bottleneck": {**{f"matrix{i}": s for i, s in enumerate(
          [(6, 3, 1), (6, 3, 3), (6, 3, 3), (6, 1, 3)])},
                     **{f"bias{i}": (6, 3 if i < 3 else 1, 1) for i in range(4)},
                     **{f"factor{i}": (6, 3, 1) for i in range(3)}, "quantiles": (6, 3)}}


# ---- trained codecs ------------------------------------------------------------------

def train(tmp_path_factory, digits, base):
  path = tmp_path_factory.mktemp("data") / "digits.npy"
  np.save(path, digits)
  base.data.name = str(path)
  base.train.num_steps = 80
  base.train.eval_every = base.train.log_every = base.train.checkpoint_every = 10 ** 9
  work = tmp_path_factory.mktemp("hp") / "work"
  fit(base, work, progress=False)
  return work


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, digits):
  from ae_jax import configs
  return train(tmp_path_factory, digits, hp_cfg(configs.get_preset("tiny"),
                                                model__latent_dim=8))


def test_training_reduces_the_loss(workdir, digits):
  """80 steps against freshly initialised weights: distortion + lambda * rate (the loss less
  the quantile fit, which falls on its own) and the rate both fall."""
  import dataclasses
  from ae_jax.fit import Trained
  trained = Trained.load(workdir)
  start_params = jax.jit(trained.model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  start = dataclasses.replace(trained, params=start_params).evaluate(digits[:256])
  end = trained.evaluate(digits[:256])
  assert end["loss"] - end["aux"] < 0.8 * (start["loss"] - start["aux"]), (start, end)
  assert end["bits"] < start["bits"] and 0 < end["side_bits"] < end["bits"]


def test_codec_round_trip_is_exact_for_every_example(workdir, digits):
  codec = codec_lib.Codec.load(workdir)
  assert codec.side_symbols == 4 and len(codec.stream_tables.sizes) == 4
  x = digits[:48]
  data = codec.compress(x)
  assert data[0] == 0xA3
  out = codec.decompress(data)
  chex.assert_shape(out, (48, 8, 8, 1))
  np.testing.assert_array_equal(out, codec.reconstruct(x))
  symbols = codec.symbols(x)
  chex.assert_shape(symbols, (48, 12))
  np.testing.assert_array_equal(codec.decode_symbols(data), symbols)
  # Scale indices do not depend on the batch: each example's own stream reads the same.
  for i in (0, 17, 47):
    np.testing.assert_array_equal(codec.decode_symbols(codec.compress(x[i:i + 1]))[0],
                                  symbols[i])
  again = codec_lib.Codec.load(workdir)  # reads the saved tables
  np.testing.assert_array_equal(again.decompress(data), out)
  # The model's own test-time reconstruction decodes round(y) too.
  model_recon = codec.model.apply(codec.params, codec.scale(x),
                                  method=RateDistortionAutoencoder.reconstruct)
  np.testing.assert_allclose(out, codec.inverse(np.asarray(model_recon)), atol=1e-5)


def test_model_bits_match_the_file_length(workdir, digits):
  codec = codec_lib.Codec.load(workdir)
  x = digits[:64]
  sizes = codec.bytes_per_example(x)
  assert len(codec.compress(x[:1])) == sizes[0]
  # The model's test-time rate, -log2 P(z_hat) - log2 P(y_hat | z_hat), with the codec's weights.
  model_bits = np.asarray(jax.jit(codec.model.apply)(codec.params, codec.scale(x))["bits"])
  ideal = codec_lib.ideal_bits(codec, x)
  # File = 3 header/check bytes + payload. The payload is at least the tables' rate and
  # at most a few bytes over it (range coder words, escaped values' extra bits); the
  # tables' rate (scales rounded up to the table) is near the model's.
  payload = sizes - 3
  report = {"payload": payload, "ideal bytes": ideal / 8, "model bytes": model_bits / 8}
  assert np.all(payload >= np.floor(ideal / 8)), report
  assert np.all(payload <= ideal / 8 + 5) and np.mean(payload - ideal / 8) < 1.5, report
  assert np.all(np.abs(ideal - model_bits) <= 16) and abs(np.mean(ideal - model_bits)) < 4, report
  assert np.all(np.abs(sizes - 3 - model_bits / 8) <= 5), report
  assert abs(np.mean(sizes - 3 - model_bits / 8)) < 2, report


def test_codec_bad_streams(workdir, digits):
  codec = codec_lib.Codec.load(workdir)
  data = codec.compress(digits[:3])
  with pytest.raises(DataError, match="check failed"):
    codec.decompress(data[:-3])
  corrupt = bytearray(data)
  corrupt[4] ^= 0x80
  with pytest.raises(DataError, match="check failed"):
    codec.decompress(bytes(corrupt))
  with pytest.raises(DataError, match=r"symbols must be \(N, 12\)"):
    codec.encode_symbols(codec.symbols(digits[:2])[:, :8])


def test_rate_control_and_cli_with_a_hyperprior_codec(workdir, digits, tmp_path, capsys):
  codec = codec_lib.Codec.load(workdir)
  x = digits[100:120]
  cap = int(np.max(1 + codec.bytes_per_example(x)))
  rc = codec_lib.RateControlledCodec([codec])
  files = rc.compress(x, cap)
  np.testing.assert_array_equal(rc.decompress(files), rc.reconstruct(x, cap))
  src, blob, back = tmp_path / "x.npy", tmp_path / "x.aejx", tmp_path / "back.npy"
  np.save(src, x)
  assert cli.main(["compress", "--workdir", str(workdir), "--input", str(src),
                   "--out", str(blob)]) == 0
  assert cli.main(["decompress", "--workdir", str(workdir), "--input", str(blob),
                   "--out", str(back)]) == 0
  np.testing.assert_array_equal(np.load(back), codec.reconstruct(x))
  blob.write_bytes(blob.read_bytes()[:-1])
  capsys.readouterr()
  assert cli.main(["decompress", "--workdir", str(workdir), "--input", str(blob)]) == 2
  assert "check failed" in capsys.readouterr().err


@pytest.mark.slow
def test_gdn_hyperprior_round_trip_is_exact_for_every_example(tmp_path_factory, digits):
  from ae_jax import configs
  cfg = hp_cfg(configs.get_preset("tiny"), model__rd_transform="gdn", model__rd_channels=8,
               model__rd_latent_channels=3, model__rd_kernel=3, model__recon_loss="mse")
  work = train(tmp_path_factory, digits, cfg)
  codec = codec_lib.Codec.load(work)
  assert codec.model.latent_dim == 12 and codec.side_symbols == 4
  x = digits[:32]
  data = codec.compress(x)
  out = codec.decompress(data)
  np.testing.assert_array_equal(out, codec.reconstruct(x))
  symbols = codec.symbols(x)
  np.testing.assert_array_equal(codec.decode_symbols(data), symbols)
  for i in range(0, 32, 8):  # the same integers per example; the image to float rounding
    one = codec.compress(x[i:i + 1])
    np.testing.assert_array_equal(codec.decode_symbols(one)[0], symbols[i])
    np.testing.assert_allclose(codec.decompress(one)[0], out[i], rtol=0, atol=1e-6)


def test_experiment_flags_reach_the_config():
  from experiments import rate_distortion
  args = rate_distortion.parse(["--prior", "hyperprior", "--hyper-dim", "12",
                                "--hyper-widths", "64", "32"])
  cfg = rate_distortion.rd_config(args, 1)
  assert (cfg.model.rd_prior, cfg.model.rd_hyper_dim) == ("hyperprior", 12)
  assert cfg.model.rd_hyper_widths == (64, 32)
  assert rate_distortion.rd_config(rate_distortion.parse([]), 1).model.rd_prior == "factorized"
  with pytest.raises(ConfigError, match="rd_prior"):
    build_model(rate_distortion.rd_config(rate_distortion.parse(["--prior", "mean"]), 1),
                (28, 28, 1))
