"""The benchmarked models, built through ae_jax's own config, families and train state.

Networks (examples of shape `INPUT_SHAPES[name]`, latent size 32):
  mlp:    784-512-256-32 encoder and its mirror 32-256-512-784 as decoder.
  conv28: 28x28x1 images; stride-2 3x3 convolutions with 32, 64 channels, Dense to the
          latent; Dense to 7x7x64, transposed convolutions 64, 32, a 3x3 conv to 1 channel.
  conv32: the same layers on 32x32x3 images (8x8x64 smallest map).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import batching, families, train
from ae_jax.configs import default
from benchmarks import common

FAMILIES = ("ae", "vae", "sparse")
NETWORKS = ("mlp", "conv28", "conv32")
INPUT_SHAPES = {"mlp": (784,), "conv28": (28, 28, 1), "conv32": (32, 32, 3)}
LATENT_DIM = 32
MLP_WIDTHS = (512, 256)
CONV_CHANNELS = (32, 64)


def config(family: str = "ae", network: str = "mlp", dtype: str = "float32",
           batch_size: int = 256, conv_impl: str = "auto",
           conv_batch_chunk: int = -1, batch_chunk: int = -1,
           microbatch: int = -1) -> ml_collections.ConfigDict:
  """The ae_jax config of one benchmarked model (Adam 1e-3, MSE, or BCE for the VAE);
  `conv_impl` is `model.conv_impl` (ae_jax.conv.IMPLS), `conv_batch_chunk` is
  `model.conv_batch_chunk`, `batch_chunk` is `model.batch_chunk` (the whole forward in
  chunks) and `microbatch` is `train.microbatch` (-1 auto, 0 off, n examples each)."""
  c = default.get_config()
  c.model.family = family
  c.model.network = "mlp" if network == "mlp" else "conv2d"
  c.model.latent_dim = LATENT_DIM
  c.model.widths = MLP_WIDTHS
  c.model.channels = CONV_CHANNELS
  c.model.compute_dtype = dtype
  c.model.conv_impl = conv_impl
  c.model.conv_batch_chunk = conv_batch_chunk
  c.model.batch_chunk = batch_chunk
  c.train.microbatch = microbatch
  c.model.recon_loss = "bce" if family == "vae" else "mse"
  c.model.sparsity = "l1"
  c.train.batch_size = batch_size
  return c


def build(family: str = "ae", network: str = "mlp", dtype: str = "float32", seed: int = 0,
          conv_batch_chunk: int = -1):
  """(model, params, input_shape) of one benchmarked model; params are float32.

  The parameters come from `host_init`: compiling the real initialiser takes seconds
  per conv model on a CPU, and a speed benchmark needs only values of the right scale.
  """
  shape = INPUT_SHAPES[network]
  model = families.build_model(config(family, network, dtype,
                                       conv_batch_chunk=conv_batch_chunk), shape)
  return model, host_init(model, shape, seed), shape


def host_init(model, input_shape, seed: int = 0):
  """Parameters of `model` drawn with numpy, as Flax's defaults draw them: kernels
  N(0, 1/fan_in) (LeCun normal), biases 0, scales 1. Shapes come from `jax.eval_shape`
  of `ae_jax.train.init_params`, so nothing is compiled."""
  shapes = jax.eval_shape(lambda rng: train.init_params(model, input_shape, rng),
                          jax.random.key(0))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name == "bias":
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name == "scale":
      return jnp.ones(leaf.shape, leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
    return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) / np.sqrt(fan_in), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def train_state(family: str = "ae", network: str = "mlp", dtype: str = "float32",
                batch_size: int = 256, seed: int = 0, real_init: bool = False,
                conv_impl: str = "auto", conv_batch_chunk: int = -1, microbatch: int = -1):
  """(config, model, family, TrainState) ready for `ae_jax.train.train_step`
  (`microbatch`: `train.microbatch`).

  With `real_init` the state comes from `ae_jax.train.create_train_state` (the
  codebase's own initialiser, slow to compile); otherwise from `host_init`.
  """
  cfg = config(family, network, dtype, batch_size, conv_impl, conv_batch_chunk,
               microbatch=microbatch)
  shape = INPUT_SHAPES[network]
  model = families.build_model(cfg, shape)
  if real_init:
    state = jax.jit(lambda rng: train.create_train_state(cfg, model, shape, rng, 1000))(
        jax.random.key(seed))
  else:
    state = train.TrainState.create(apply_fn=model.apply, params=host_init(model, shape, seed),
                                    tx=train.make_optimizer(cfg, 1000))
  return cfg, model, families.get_family(family), state


def example_batch(network: str, batch: int, seed: int = 0) -> np.ndarray:
  """Uniform [0, 1) inputs (batch, *shape), float32, on the host."""
  rng = np.random.default_rng(seed)
  return rng.random((batch, *INPUT_SHAPES[network]), dtype=np.float32)


def forward_fns(model, batch_chunk: int = 0):
  """{'encode': f(params, x), 'decode': f(params, z), 'roundtrip': f(params, x)}, each run
  `batch_chunk` examples at a time (`ae_jax.batching.map_chunks`; 0 = the whole batch)."""
  def chunked(method):
    return lambda p, v: batching.map_chunks(lambda c: model.apply(p, c, method=method),
                                            batch_chunk, v)
  return {"encode": chunked(model.encode), "decode": chunked(model.decode),
          "roundtrip": chunked(model.reconstruct)}


def op_input(op: str, network: str, batch: int, seed: int = 0):
  """The device input of `op`: images/vectors for encode and roundtrip, latents for decode."""
  if op == "decode":
    z = np.random.default_rng(seed).standard_normal((batch, LATENT_DIM), dtype=np.float32)
    return jnp.asarray(z)
  return jnp.asarray(example_batch(network, batch, seed))


def compiled_roundtrip(network: str, batch: int, conv_batch_chunk: int = -1,
                       batch_chunk: int = -1, seed: int = 0):
  """(compiled f(params, x), params, x, compile seconds): the ae round trip of `network`
  at `batch`, run `model.batch_chunk` examples at a time (-1 auto, 0 off) with
  `model.conv_batch_chunk` inside, compiled ahead of time. Models trace `ae_jax.conv`'s
  settings when this is called, so a caller may set them around it."""
  cfg = config("ae", network, conv_batch_chunk=conv_batch_chunk, batch_chunk=batch_chunk)
  shape = INPUT_SHAPES[network]
  model = families.build_model(cfg, shape)
  params = host_init(model, shape, seed)
  fn = forward_fns(model, families.batch_chunk(cfg))["roundtrip"]
  x = op_input("roundtrip", network, batch, seed)
  compiled, _, compile_s = common.aot_compile(fn, params, x)
  return compiled, params, x, compile_s
