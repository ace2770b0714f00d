"""The factorized-prior entropy bottleneck and the range-coded bitstreams."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import bitstream, entropy
from ae_jax.errors import DataError

EB = entropy.EntropyBottleneck


def logistic_params(channels: int, median: float = 0.0, tail: float = 1e-9):
  """A one-layer bottleneck (filters=()) whose cdf is sigmoid(y - median) per channel,
  with quantiles at the logistic's tail_mass/2 points and its median."""
  t = math.log(2.0 / tail - 1.0)
  one = math.log(math.expm1(1.0))  # softplus(one) == 1
  return {"matrix0": jnp.full((channels, 1, 1), one), "bias0": jnp.full((channels, 1, 1), -median),
          "quantiles": jnp.tile(jnp.asarray([median - t, median, median + t]), (channels, 1))}


def sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def test_init_shapes_and_outputs():
  model = EB(5)
  y = jax.random.normal(jax.random.key(0), (7, 5))
  params = jax.jit(model.init)(jax.random.key(1), y)["params"]
  chex.assert_shape(params["matrix0"], (5, 3, 1))
  chex.assert_shape(params["matrix1"], (5, 3, 3))
  chex.assert_shape(params["matrix3"], (5, 1, 3))
  chex.assert_shape(params["quantiles"], (5, 3))
  out = jax.jit(model.apply)({"params": params}, y)
  chex.assert_shape(out["y_hat"], (7, 5))
  chex.assert_shape(out["likelihood"], (7, 5))
  chex.assert_shape(out["bits"], (7,))
  chex.assert_type(out["y_hat"], jnp.float32)
  chex.assert_tree_all_finite(out)


def test_likelihood_of_a_unit_bin_of_the_logistic():
  model = EB(1, filters=())
  v = {"params": logistic_params(1)}
  likelihood = jax.jit(lambda y: model.apply(v, y, method=EB.likelihood))  # compiled once
  p0 = likelihood(jnp.zeros((1, 1)))
  np.testing.assert_allclose(p0[0, 0], sigmoid(0.5) - sigmoid(-0.5), rtol=1e-6)  # 0.2449187
  out = jax.jit(model.apply)(v, jnp.zeros((1, 1)))
  np.testing.assert_allclose(out["bits"][0], -math.log2(0.24491866), rtol=1e-5)  # 2.0296 bits
  # Far in the upper tail the sign trick keeps the difference accurate.
  p20 = likelihood(jnp.full((1, 1), 20.0))
  np.testing.assert_allclose(p20[0, 0], math.exp(-19.5) - math.exp(-20.5), rtol=1e-3)
  # The bound: 1e-9 at most 1e-9 below.
  p50 = likelihood(jnp.full((1, 1), 50.0))
  assert p50[0, 0] == pytest.approx(entropy.LIKELIHOOD_BOUND)


def test_cdf_is_monotone_and_bins_sum_to_one():
  model = EB(3)
  grid = jnp.arange(-400.0, 401.0)[:, None] * jnp.ones((1, 3))

  @jax.jit  # one program: run eagerly, each primitive compiles alone
  def run(grid):
    params = model.init(jax.random.key(2), grid)["params"]
    params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(3), p.shape),
                          params)
    return (model.apply({"params": params}, grid, method=EB.cdf_logits),
            model.apply({"params": params}, grid, method=EB.likelihood))

  logits, likelihood = run(grid)
  assert bool(jnp.all(jnp.diff(logits, axis=0) > 0))
  total = jnp.sum(likelihood, axis=0)
  np.testing.assert_allclose(total, np.ones(3), atol=1e-4)


def test_quantize_on_the_median_grid_and_training_noise():
  model = EB(2, filters=())
  v = {"params": logistic_params(2, median=0.3)}
  y = jnp.asarray([[1.2, -0.9]])
  sym = model.apply(v, y, method=EB.quantize)
  np.testing.assert_array_equal(sym, [[1, -1]])          # round(0.9), round(-1.2)
  chex.assert_type(sym, jnp.int32)
  np.testing.assert_allclose(model.apply(v, y)["y_hat"], [[1.3, -0.7]], rtol=1e-6)
  noise = jnp.asarray([[0.25, -0.4]])
  np.testing.assert_allclose(model.apply(v, y, noise)["y_hat"], y + noise)


def test_aux_loss_fits_only_the_quantiles():
  model = EB(1, filters=())
  params = logistic_params(1)
  aux = lambda p: model.apply({"params": p}, method=EB.aux_loss)
  assert float(aux(params)) == pytest.approx(0.0, abs=1e-4)
  moved = dict(params, quantiles=params["quantiles"] + jnp.asarray([[1.0, 0.5, -2.0]]))
  assert float(aux(moved)) == pytest.approx(3.5, rel=1e-4)  # |1| + |0.5| + |-2|
  grads = jax.grad(aux)(moved)
  np.testing.assert_array_equal(grads["matrix0"], 0.0)
  np.testing.assert_array_equal(grads["bias0"], 0.0)
  np.testing.assert_allclose(grads["quantiles"], [[1.0, 1.0, -1.0]])


def test_rate_gradient_reaches_the_density():
  model = EB(2)
  y = jax.random.normal(jax.random.key(4), (16, 2))
  params = jax.jit(model.init)(jax.random.key(5), y)["params"]
  # Compiled: run eagerly, each primitive of the gradient compiles alone.
  grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, y)["bits"])))(params)
  assert float(jnp.abs(grads["matrix1"]).sum()) > 0
  np.testing.assert_array_equal(grads["quantiles"], 0.0)


def test_coding_tables_of_the_logistic():
  model = EB(2, filters=())
  tables = entropy.coding_tables(model, logistic_params(2, tail=1e-3))
  # Alphabet: floor(-t) .. ceil(t) with t = log(2 / 1e-3 - 1) = 7.6004.
  np.testing.assert_array_equal(tables.lower, [-8, -8])
  np.testing.assert_array_equal(tables.sizes, [17, 17])
  chex.assert_shape(tables.counts, (2, 18))
  assert tables.counts[0, 8] == math.floor((sigmoid(0.5) - sigmoid(-0.5)) * 2 ** 16) + 1
  bits = entropy.ideal_bits(tables, np.zeros((1, 2), np.int64))
  np.testing.assert_allclose(bits, [2 * -math.log2(0.24491866)], rtol=1e-3)
  again = entropy.CodingTables.from_arrays(tables.to_arrays())
  assert again.digest() == tables.digest()


@pytest.fixture(scope="module")
def trained_tables():
  model = EB(12)
  y = 2.0 * jax.random.normal(jax.random.key(6), (300, 12))
  params = jax.jit(model.init)(jax.random.key(7), y)["params"]
  symbols = np.asarray(jax.jit(lambda p, y: model.apply({"params": p}, y, method=EB.quantize))(
      params, y))
  return entropy.coding_tables(model, params), symbols


def test_bitstream_round_trip_every_example(trained_tables):
  tables, symbols = trained_tables
  symbols = symbols.copy()
  symbols[0, 0] = tables.lower[0] + tables.sizes[0] + 40     # escaped above
  symbols[1, 5] = tables.lower[5] - 70_000                   # escaped below, many bits
  symbols[2, :] = tables.lower                               # first symbol of every alphabet
  data = bitstream.encode(symbols, tables)
  back = bitstream.decode(data, tables)
  chex.assert_type(back, jnp.int32)
  np.testing.assert_array_equal(back, symbols)
  np.testing.assert_array_equal(bitstream.decode(bitstream.encode(symbols[:1], tables), tables),
                                symbols[:1])
  empty = bitstream.decode(bitstream.encode(symbols[:0], tables), tables)
  chex.assert_shape(empty, (0, 12))


def test_bytes_are_the_file_length_and_near_the_ideal_rate(trained_tables):
  tables, symbols = trained_tables
  sizes = bitstream.stream_bytes(symbols[:40], tables)
  for row, size in zip(symbols[:3], sizes):
    assert len(bitstream.encode(row[None], tables)) == size
  assert bitstream.header_bytes(1) == 3  # magic and version, N, 1 check byte
  payload = sizes - 3
  ideal = entropy.ideal_bits(tables, symbols[:40]) / 8
  assert np.all(payload >= np.floor(ideal)) and np.all(payload <= ideal + 4)
  whole = bitstream.encode(symbols[:40], tables)
  assert len(whole) == sum(payload) + bitstream.header_bytes(40, payload)


def test_bad_bitstreams_raise_data_error(trained_tables):
  tables, symbols = trained_tables
  data = bitstream.encode(symbols[:4], tables)
  flipped = bytearray(data)
  flipped[len(data) // 2] ^= 0x10
  other_params = jax.jit(EB(12).init)(jax.random.key(9), symbols[:1] * 1.0)["params"]
  other = entropy.coding_tables(EB(12), other_params)
  cases = {
      "truncated": (data[:-3], "check failed"),
      "corrupt": (bytes(flipped), "check failed"),
      "other model": (data, "check failed") if other.digest() != tables.digest() else None,
      "magic": (b"\x00" + data[1:], "not an ae_jax bitstream"),
      "version": (b"\xa9" + data[1:], "version 9"),
      "version 1": (b"\xae\x01" + data[1:], "version 1 is not supported"),
      "empty": (b"", "too short"),
      "not bytes": ("abc", "must be bytes"),
  }
  for name, case in cases.items():
    if case is None:
      continue
    blob, message = case
    with pytest.raises(DataError, match=message):
      bitstream.decode(blob, other if name == "other model" else tables)


def test_bad_symbols_raise_data_error(trained_tables):
  tables, symbols = trained_tables
  with pytest.raises(DataError, match=r"must be \(N, 12\)"):
    bitstream.encode(symbols[:, :5], tables)
  with pytest.raises(DataError, match="integers"):
    bitstream.encode(symbols.astype(np.float32), tables)
  far = symbols[:1].copy()
  far[0, 0] = tables.lower[0] - 2 ** 21
  with pytest.raises(DataError, match="out of range"):
    bitstream.encode(far, tables)


def test_solve_quantiles_finds_the_logistic_tails():
  model = EB(2, filters=(), tail_mass=1e-3)
  params = logistic_params(2, median=1.5)
  params["quantiles"] = jnp.zeros((2, 3))
  solved = entropy.solve_quantiles(model, params)
  t = math.log(2.0 / 1e-3 - 1.0)
  np.testing.assert_allclose(solved["quantiles"], [[1.5 - t, 1.5, 1.5 + t]] * 2, atol=1e-4)
  assert float(model.apply({"params": solved}, method=EB.aux_loss)) == pytest.approx(0, abs=1e-3)


def test_the_one_byte_check_refuses_nearly_every_damaged_stream(trained_tables):
  """Every single-bit flip and every truncation of a 4-example stream: the check byte lets
  about 1 in 256 through by chance; none may decode silently beyond a few."""
  tables, symbols = trained_tables
  data = bitstream.encode(symbols[:4], tables)
  damaged = [data[:n] for n in range(len(data))]
  for i in range(len(data)):
    for bit in range(8):
      flipped = bytearray(data)
      flipped[i] ^= 1 << bit
      damaged.append(bytes(flipped))
  passed = 0
  for blob in damaged:
    try:
      bitstream.decode(blob, tables)
      passed += 1
    except DataError:
      pass
  assert passed <= 0.01 * len(damaged), (passed, len(damaged))
