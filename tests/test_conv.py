"""ae_jax.conv against flax's nn.Conv / nn.ConvTranspose: same parameters, outputs and
gradients for the strides, kernel sizes, paddings and ranks the networks use."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ae_jax import conv as fastconv
from ae_jax import families, train
from ae_jax.configs import default
from ae_jax.errors import ConfigError
from ae_jax.networks import NETWORKS

# (rank, kernel, stride, padding, C_in, C_out): the networks' 3x3 stride-2 'SAME' layers
# and their stride-1 output conv in both ranks, then even kernels, kernels smaller than
# the stride (phases without taps), 'VALID', and C_out below and above C_in (the kernel
# gradient picks its im2col operand by that); last, one output channel at stride 1.
CASES = [(rank, 3, 2, "SAME", 3, 5) for rank in (1, 2)] + [
    (rank, 3, 1, "SAME", 6, 2) for rank in (1, 2)] + [
    (2, 3, 2, "SAME", 6, 2), (2, 3, 1, "SAME", 3, 5), (2, 4, 2, "SAME", 3, 5),
    (1, 2, 2, "SAME", 6, 2), (2, 1, 2, "SAME", 3, 5), (1, 5, 3, "SAME", 3, 5),
    (2, 3, 2, "VALID", 3, 5), (1, 4, 3, "VALID", 6, 2)] + [
    # one output channel at stride 1: the forward's shift-add formulation
    (rank, 3, 1, "SAME", 6, 1) for rank in (1, 2)] + [
    (1, 4, 1, "SAME", 3, 1), (2, 2, 1, "VALID", 3, 1)]
SIZES = {1: (11,), 2: (9, 7)}


def _pair(kind, rank, k, s, pad, cout, impl, batch_chunk=-1):
  args = dict(features=cout, kernel_size=(k,) * rank, strides=(s,) * rank, padding=pad)
  ref = nn.Conv(**args) if kind == "conv" else nn.ConvTranspose(**args)
  cls = fastconv.Conv if kind == "conv" else fastconv.ConvTranspose
  return ref, cls(**args, impl=impl, batch_chunk=batch_chunk)


def _loss(module):
  def loss(params, x):
    y = module.apply(params, x)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)
  return loss


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("rank,k,s,pad,cin,cout", CASES)
def test_matches_flax(kind, rank, k, s, pad, cin, cout):
  x = jax.random.normal(jax.random.key(1), (2, *SIZES[rank], cin))
  ref, new = _pair(kind, rank, k, s, pad, cout, "fast")
  params = ref.init(jax.random.key(0), x)
  # Same names, shapes and initial values: checkpoints move between the two.
  chex.assert_trees_all_equal(params, new.init(jax.random.key(0), x))
  # A nonzero bias so that its gradient is checked too.
  params = jax.tree.map(lambda p: p + 0.1, params)
  y_ref, y_new = ref.apply(params, x), new.apply(params, x)
  chex.assert_equal_shape([y_ref, y_new])
  np.testing.assert_allclose(y_new, y_ref, rtol=1e-5, atol=1e-5)
  g_ref = jax.jit(jax.grad(_loss(ref), argnums=(0, 1)))(params, x)
  g_new = jax.jit(jax.grad(_loss(new), argnums=(0, 1)))(params, x)
  chex.assert_trees_all_close(g_new, g_ref, rtol=1e-4, atol=1e-5)
  assert float(jnp.abs(g_new[1]).max()) > 0  # the input gradient is not trivially zero


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("form", [f for f in fastconv.CORRELATIONS
                                  if f != fastconv._CORRELATION])  # pylint: disable=protected-access
def test_every_correlation_form_matches_flax(form, kind, monkeypatch):
  """Each form of the fast path's correlations (XLA's convolution or im2col + one matmul;
  the conv forward, the transposed convolution's input gradient) gives Flax's outputs
  and gradients for every case (the default form: test_matches_flax)."""
  monkeypatch.setattr(fastconv, "_CORRELATION", form)
  for rank, k, s, pad, cin, cout in CASES:
    x = jax.random.normal(jax.random.key(1), (2, *SIZES[rank], cin))
    ref, new = _pair(kind, rank, k, s, pad, cout, "fast")
    params = jax.tree.map(lambda p: p + 0.1, ref.init(jax.random.key(0), x))
    case = f"{form}: rank {rank}, k {k}, s {s}, {pad}, {cin} -> {cout}"
    np.testing.assert_allclose(jax.jit(new.apply)(params, x), ref.apply(params, x),
                               rtol=1e-5, atol=1e-5, err_msg=case)
    g_ref = jax.jit(jax.grad(_loss(ref), argnums=(0, 1)))(params, x)
    g_new = jax.jit(jax.grad(_loss(new), argnums=(0, 1)))(params, x)
    chex.assert_trees_all_close(g_new, g_ref, rtol=1e-4, atol=1e-5, custom_message=case)


@pytest.mark.parametrize("form", fastconv.TRANSPOSE_FORWARDS)
def test_every_transposed_forward_matches_lax_conv_transpose(form, monkeypatch):
  """Each formulation of the transposed forward (the default is one of them) gives
  `lax.conv_transpose`'s output for every case, phases without taps included."""
  monkeypatch.setattr(fastconv, "_TRANSPOSE_FORWARD", form)
  for rank, k, s, pad, cin, cout in CASES:
    x = jax.random.normal(jax.random.key(3), (2, *SIZES[rank], cin))
    w = jax.random.normal(jax.random.key(4), ((k,) * rank) + (cin, cout))
    want = jax.lax.conv_transpose(x, w, (s,) * rank, pad,
                                  dimension_numbers=fastconv._DIMS[rank])
    got = jax.jit(lambda x, w: fastconv.conv_transpose(x, w, (s,) * rank, pad))(x, w)
    chex.assert_equal_shape([got, want])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4,
                               err_msg=f"{form}: rank {rank}, k {k}, s {s}, {pad}")


@pytest.mark.parametrize("kind", ["conv", "transpose"])
@pytest.mark.parametrize("rank,k,s,pad,cin,cout", CASES[:4] + CASES[-2:])
@pytest.mark.parametrize("batch,chunk", [(4, 2), (5, 2)])
def test_batch_chunks_match_flax(kind, rank, k, s, pad, cin, cout, batch, chunk):
  """Chunked forward and backward (an even split, and one zero-padded to 3 chunks of 2)
  give Flax's outputs and gradients, the kernel gradient summed over the chunks."""
  x = jax.random.normal(jax.random.key(5), (batch, *SIZES[rank], cin))
  ref, new = _pair(kind, rank, k, s, pad, cout, "fast", batch_chunk=chunk)
  params = jax.tree.map(lambda p: p + 0.1, ref.init(jax.random.key(0), x))
  y_new = jax.jit(new.apply)(params, x)
  chex.assert_shape(y_new, ref.apply(params, x).shape)
  np.testing.assert_allclose(y_new, ref.apply(params, x), rtol=1e-5, atol=1e-5)
  g_ref = jax.jit(jax.grad(_loss(ref), argnums=(0, 1)))(params, x)
  g_new = jax.jit(jax.grad(_loss(new), argnums=(0, 1)))(params, x)
  chex.assert_trees_all_close(g_new, g_ref, rtol=1e-4, atol=1e-5)


def test_map_chunks_by_hand():
  """Per-example outputs are concatenated back, summed outputs added over the chunks,
  and a zero-padded last chunk changes neither."""
  x = jnp.arange(10.0).reshape(5, 2)
  f = lambda xc: (2 * xc, jnp.sum(xc, axis=0))
  for chunk in (0, 1, 2, 3, 5, 8):
    per, total = fastconv._map_chunks(f, chunk, (x,), n_summed=1)
    np.testing.assert_array_equal(per, 2 * x)
    np.testing.assert_array_equal(total, [20.0, 25.0])


def test_resolve_chunk():
  fast_default = fastconv.AUTO_BATCH_CHUNK if jax.default_backend() == "cpu" else 0
  assert fastconv.resolve_chunk(-1, "auto") == fast_default
  assert fastconv.resolve_chunk(-1, "fast") == fastconv.AUTO_BATCH_CHUNK
  assert fastconv.resolve_chunk(-1, "xla") == 0
  assert fastconv.resolve_chunk(0, "fast") == 0
  assert fastconv.resolve_chunk(16, "fast") == 16
  for bad in (-2, 1.5, "64"):
    with pytest.raises(ConfigError, match="batch_chunk"):
      fastconv.resolve_chunk(bad, "fast")
  cfg = default.get_config()
  cfg.model.network = "conv2d"
  cfg.model.conv_batch_chunk = -5
  with pytest.raises(ConfigError, match="batch_chunk"):
    NETWORKS.get("conv2d")(cfg.model, (8, 8, 1), 4)


@pytest.mark.parametrize("kind", ["conv", "transpose"])
def test_jit_and_xla_path_agree(kind):
  x = jax.random.normal(jax.random.key(2), (3, 8, 8, 4))
  _, fast = _pair(kind, 2, 3, 2, "SAME", 6, "fast")
  _, xla = _pair(kind, 2, 3, 2, "SAME", 6, "xla")
  params = fast.init(jax.random.key(0), x)
  eager = fast.apply(params, x)
  jitted = jax.jit(fast.apply)(params, x)
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(jax.jit(xla.apply)(params, x), eager, rtol=1e-5, atol=1e-5)
  g_fast = jax.jit(jax.grad(_loss(fast)))(params, x)
  g_xla = jax.jit(jax.grad(_loss(xla)))(params, x)
  chex.assert_trees_all_close(g_fast, g_xla, rtol=1e-4, atol=1e-5)


def test_batch_axes_like_flax():
  """No batch axis, and two batch axes, are handled as nn.Conv handles them."""
  ref, new = _pair("conv", 2, 3, 2, "SAME", 4, "fast")
  x = jax.random.normal(jax.random.key(3), (2, 3, 6, 6, 2))
  params = ref.init(jax.random.key(0), x)
  for xi in (x, x[0, 0]):
    y_new = new.apply(params, xi)
    np.testing.assert_allclose(y_new, ref.apply(params, xi), rtol=1e-5, atol=1e-5)
  chex.assert_shape(new.apply(params, x[0, 0]), (3, 3, 4))


def test_same_padding_hand_values():
  # 28 -> 14 with a 3-kernel at stride 2: 13*2 + 3 - 28 = 1 extra row, placed high.
  assert fastconv.same_padding(28, 3, 2) == (0, 1)
  assert fastconv.same_padding(7, 3, 1) == (1, 1)
  assert fastconv.transpose_padding(3, 2, "SAME") == (2, 1)
  assert fastconv.transpose_padding(3, 2, "VALID") == (2, 2)


@pytest.mark.parametrize("network,shape", [("conv2d", (8, 8, 1)), ("conv1d", (16, 2))])
def test_networks_same_params_and_outputs(network, shape):
  """The conv networks build the same parameter tree with either path, and agree."""
  cfg = default.get_config()
  cfg.model.network = network
  cfg.model.channels = (4, 8)
  cfg.model.latent_dim = 3
  x = jax.random.uniform(jax.random.key(4), (2, *shape))
  out = {}
  for impl, chunk in (("xla", -1), ("fast", -1), ("fast_chunked", 1)):
    cfg.model.conv_impl, cfg.model.conv_batch_chunk = impl.split("_")[0], chunk
    model = families.build_model(cfg, shape)
    # Compiled: run eagerly, each primitive of init and apply compiles alone.
    params = jax.jit(lambda k: train.init_params(model, shape, k))(jax.random.key(0))
    recon = jax.jit(lambda p, x: model.apply(p, x, method=model.reconstruct))(params, x)
    out[impl] = (params, recon)
  chex.assert_trees_all_equal(out["xla"][0], out["fast"][0])
  chex.assert_trees_all_equal(out["xla"][0], out["fast_chunked"][0])
  np.testing.assert_allclose(out["fast"][1], out["xla"][1], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out["fast_chunked"][1], out["xla"][1], rtol=1e-5, atol=1e-5)


def test_auto_resolves_per_backend():
  want = "fast" if jax.default_backend() == "cpu" else "xla"
  assert fastconv.resolve_impl("auto") == want
  assert fastconv.resolve_impl("xla") == "xla"
  assert fastconv.resolve_impl("fast") == "fast"


def test_bad_setting_is_a_config_error():
  cfg = default.get_config()
  cfg.model.network = "conv2d"
  cfg.model.conv_impl = "cudnn"
  with pytest.raises(ConfigError, match="conv_impl 'cudnn'.*auto, xla, fast"):
    NETWORKS.get("conv2d")(cfg.model, (8, 8, 1), 4)
  x = jnp.zeros((1, 8, 8, 1))
  with pytest.raises(ConfigError, match="conv_impl"):
    fastconv.Conv(2, (3, 3), impl="fastest").init(jax.random.key(0), x)
  with pytest.raises(ConfigError, match="padding"):
    fastconv.ConvTranspose(2, (3, 3), padding="CIRCULAR", impl="fast").init(
        jax.random.key(0), x)


@pytest.mark.slow
def test_conv_profile_smoke(tmp_path):
  from benchmarks import conv_profile  # pylint: disable=g-import-not-at-top
  out = tmp_path / "conv_profile.json"
  payload = conv_profile.main(["--smoke", "--batches", "2", "--no-train", "--out", str(out)])
  rows = payload["rows"]
  assert len(rows) == len(conv_profile.LAYERS) * len(conv_profile.OPS)
  assert all(r["xla_ms"] > 0 and r["fast_ms"] > 0 for r in rows)
  assert out.exists() and payload["environment"]["cpu_isa"] is not None
  # the whole conv28 forward and train step per transposed-forward formulation
  before = fastconv._TRANSPOSE_FORWARD
  rows = conv_profile.main(["--smoke", "--batches", "2", "--no-layers", "--no-train",
                            "--forwards", "subpixel,shuffle"])["rows"]
  assert {(r["layer"], r["op"]) for r in rows} == {
      (f"conv28 {what}", form) for what in ("forward", "train_step")
      for form in ("subpixel", "shuffle")}
  assert all(r["fast_eps"] > 0 for r in rows)
  assert fastconv._TRANSPOSE_FORWARD == before   # restored after each build
  with pytest.raises(SystemExit):
    conv_profile.main(["--smoke", "--forwards", "winograd"])
  # ... and per forward of the last, one-output-channel convolution
  rows = conv_profile.main(["--smoke", "--batches", "2", "--no-layers", "--no-train",
                            "--single-channel", "shift_add,conv"])["rows"]
  assert {r["op"] for r in rows} == {"last conv: shift_add", "last conv: conv"}
  assert fastconv._SINGLE_CHANNEL_FORWARD == "shift_add"
  with pytest.raises(SystemExit):
    conv_profile.main(["--smoke", "--single-channel", "fft"])


def test_single_channel_forward_setting_switches_the_formulation(monkeypatch):
  x = jax.random.normal(jax.random.key(1), (3, 9, 7, 6))
  w = jax.random.normal(jax.random.key(2), (3, 3, 6, 1))
  pads = ((1, 1), (1, 1))
  ref = lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  for form in fastconv.SINGLE_CHANNEL_FORWARDS:
    monkeypatch.setattr(fastconv, "_SINGLE_CHANNEL_FORWARD", form)
    hlo = jax.jit(lambda x, w: fastconv.conv(x, w, (1, 1), pads)).lower(x, w).as_text()
    assert ("convolution" in hlo) == (form == "conv"), form
    np.testing.assert_allclose(fastconv.conv(x, w, (1, 1), pads), ref, rtol=1e-5, atol=1e-5)
