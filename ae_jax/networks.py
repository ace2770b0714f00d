"""Encoder and decoder networks (Flax linen) for vectors, images and sequences.

An encoder maps a batch `x` of shape (B, *input_shape) to features (B, F); a family's
bottleneck turns features into a latent. A decoder maps a latent (B, L) back to
(B, *output_shape). Networks are chosen by name through `NETWORKS`.
"""

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import conv as conv_lib
from ae_jax.errors import ConfigError
from ae_jax.registry import Registry

ACTIVATIONS: dict[str, Callable] = {
    "relu": nn.relu,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "tanh": jnp.tanh,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
    "sigmoid": nn.sigmoid,
}


def get_activation(name: str) -> Callable:
  if name not in ACTIVATIONS:
    raise ConfigError(f"unknown activation {name!r}; valid activations are: "
                      f"{', '.join(sorted(ACTIVATIONS))}")
  return ACTIVATIONS[name]


def dense_layers(module, h, train: bool):
  """Dense -> (LayerNorm) -> activation -> (Dropout) for each of `module.widths`, created in
  the scope of `module` (call from its compact `__call__`): h (B, F) -> (B, widths[-1])."""
  act = get_activation(module.activation)
  for width in module.widths:
    h = nn.Dense(width, dtype=module.dtype)(h)
    if module.layer_norm:
      h = nn.LayerNorm(dtype=module.dtype)(h)
    h = act(h)
    if module.dropout > 0:
      h = nn.Dropout(module.dropout, deterministic=not train)(h)
  return h


class MLPEncoder(nn.Module):
  """Flattens (B, ...) inputs and applies Dense layers of the given widths."""
  widths: Sequence[int]
  activation: str = "relu"
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    return dense_layers(self, x.reshape(x.shape[0], -1), train)


class MLPDecoder(nn.Module):
  """Maps (B, L) latents through Dense layers to (B, *output_shape)."""
  widths: Sequence[int]
  output_shape: Sequence[int]
  activation: str = "relu"
  layer_norm: bool = False
  dropout: float = 0.0
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, z, train: bool = False):
    h = dense_layers(self, z, train)
    out = nn.Dense(math.prod(self.output_shape), dtype=self.dtype)(h)
    return out.reshape(z.shape[0], *self.output_shape)


class ConvEncoder(nn.Module):
  """Strided convolutions over (B, *spatial, C), then flatten to (B, F).

  Works for images (two spatial axes) and sequences (one); each layer halves
  every spatial size (`stride`), so sizes must be divisible by stride**len(channels).
  """
  channels: Sequence[int]
  kernel_size: int = 3
  stride: int = 2
  activation: str = "relu"
  layer_norm: bool = False
  dtype: jnp.dtype | None = None
  conv_impl: str = "auto"  # ae_jax.conv.IMPLS
  conv_batch_chunk: int = -1  # ae_jax.conv.resolve_chunk: -1 auto, 0 off, n examples

  @nn.compact
  def __call__(self, x, train: bool = False):
    act = get_activation(self.activation)
    ndim = x.ndim - 2
    h = x
    for ch in self.channels:
      h = conv_lib.Conv(ch, (self.kernel_size,) * ndim, strides=(self.stride,) * ndim,
                        padding="SAME", dtype=self.dtype, impl=self.conv_impl,
                        batch_chunk=self.conv_batch_chunk)(h)
      if self.layer_norm:
        h = nn.LayerNorm(dtype=self.dtype)(h)
      h = act(h)
    return h.reshape(h.shape[0], -1)


class ConvDecoder(nn.Module):
  """Dense to the smallest feature map, then transposed convolutions up to output_shape."""
  channels: Sequence[int]
  output_shape: Sequence[int]
  kernel_size: int = 3
  stride: int = 2
  activation: str = "relu"
  layer_norm: bool = False
  dtype: jnp.dtype | None = None
  conv_impl: str = "auto"  # ae_jax.conv.IMPLS
  conv_batch_chunk: int = -1  # ae_jax.conv.resolve_chunk: -1 auto, 0 off, n examples

  @nn.compact
  def __call__(self, z, train: bool = False):
    act = get_activation(self.activation)
    *spatial, out_ch = self.output_shape
    ndim = len(spatial)
    factor = self.stride ** len(self.channels)
    small = [s // factor for s in spatial]
    first = self.channels[-1]
    h = nn.Dense(math.prod(small) * first, dtype=self.dtype)(z)
    h = act(h).reshape(z.shape[0], *small, first)
    for ch in reversed(self.channels):
      h = conv_lib.ConvTranspose(ch, (self.kernel_size,) * ndim,
                                 strides=(self.stride,) * ndim, padding="SAME",
                                 dtype=self.dtype, impl=self.conv_impl,
                                 batch_chunk=self.conv_batch_chunk)(h)
      if self.layer_norm:
        h = nn.LayerNorm(dtype=self.dtype)(h)
      h = act(h)
    return conv_lib.Conv(out_ch, (self.kernel_size,) * ndim, padding="SAME", dtype=self.dtype,
                         impl=self.conv_impl, batch_chunk=self.conv_batch_chunk)(h)


class DilatedConv1D(nn.Module):
  """A stride-1 1-D convolution whose kernel taps are `dilation` steps apart, 'SAME' padded.

  Written as one matmul of the dilated taps side by side in the channels (no convolution
  op, so its gradients are matmuls and slices, fast on CPU); `kernel` has Flax's `nn.Conv`
  layout (kernel_size, C_in, features) and initialiser, and the result equals
  `lax.conv_general_dilated(x, kernel, (1,), 'SAME', rhs_dilation=(dilation,))` + bias.
  """
  features: int
  kernel_size: int = 3
  dilation: int = 1
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x):
    _, steps, channels = x.shape
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, channels, self.features))
    bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
    span = (self.kernel_size - 1) * self.dilation
    xp = jnp.pad(x, ((0, 0), (span // 2, span - span // 2), (0, 0)))
    taps = jnp.concatenate([xp[:, t * self.dilation:t * self.dilation + steps]
                            for t in range(self.kernel_size)], axis=-1)
    dtype = self.dtype or x.dtype
    w = kernel.reshape(-1, self.features).astype(dtype)
    return taps.astype(dtype) @ w + bias.astype(dtype)


def dilated_layers(module, h, layers):
  """DilatedConv1D -> (LayerNorm) -> activation for each (i, channels) of `layers`, layer i
  dilated 2**i, created in the scope of `module` (call from its compact `__call__`)."""
  act = get_activation(module.activation)
  for i, ch in layers:
    h = DilatedConv1D(ch, module.kernel_size, 2 ** i, dtype=module.dtype)(h)
    if module.layer_norm:
      h = nn.LayerNorm(dtype=module.dtype)(h)
    h = act(h)
  return h


class TCNEncoder(nn.Module):
  """Dilated stride-1 convolutions over sequences (B, T, C), layer i dilated 2**i (a
  temporal convolutional network: the receptive field doubles per layer, the length is
  kept, so any T works), then flatten to (B, T * channels[-1])."""
  channels: Sequence[int]
  kernel_size: int = 3
  activation: str = "relu"
  layer_norm: bool = False
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = dilated_layers(self, x, enumerate(self.channels))
    return h.reshape(h.shape[0], -1)


class TCNDecoder(nn.Module):
  """Dense to (T, channels[-1]), the encoder's dilated convolutions in reverse order
  (dilations 2**(n-1) ... 1), then a 1-wide convolution to the output channels."""
  channels: Sequence[int]
  output_shape: Sequence[int]
  kernel_size: int = 3
  activation: str = "relu"
  layer_norm: bool = False
  dtype: jnp.dtype | None = None

  @nn.compact
  def __call__(self, z, train: bool = False):
    act = get_activation(self.activation)
    steps, out_ch = self.output_shape
    h = nn.Dense(steps * self.channels[-1], dtype=self.dtype)(z)
    h = act(h).reshape(z.shape[0], steps, self.channels[-1])
    h = dilated_layers(self, h, reversed(list(enumerate(self.channels))))
    return DilatedConv1D(out_ch, 1, dtype=self.dtype)(h)


NETWORKS: Registry = Registry("network")


def _check_conv_shape(name: str, input_shape, spatial_rank: int, cfg) -> None:
  if len(input_shape) != spatial_rank + 1:
    want = "(H, W, C)" if spatial_rank == 2 else "(T, C)"
    raise ConfigError(
        f"network {name!r} expects examples of shape {want}, got {tuple(input_shape)}; "
        f"use network='mlp' for flat vectors or reshape the data")
  factor = cfg.stride ** len(cfg.channels)
  bad = [s for s in input_shape[:-1] if s % factor]
  if bad:
    raise ConfigError(
        f"network {name!r} with {len(cfg.channels)} stride-{cfg.stride} layers needs spatial "
        f"sizes divisible by {factor}, got {tuple(input_shape[:-1])}; change model.channels "
        f"(fewer layers) or pad the inputs")


def _dtype(cfg):
  name = cfg.get("compute_dtype", "float32")
  return None if name in (None, "float32") else jnp.dtype(name)


@NETWORKS.register("mlp")
def mlp(cfg: ml_collections.ConfigDict, input_shape, decoder_input: int):
  """MLP encoder with cfg.widths and its mirror as decoder."""
  del decoder_input
  kw = dict(activation=cfg.activation, layer_norm=cfg.layer_norm, dropout=cfg.dropout,
            dtype=_dtype(cfg))
  return (MLPEncoder(tuple(cfg.widths), **kw),
          MLPDecoder(tuple(reversed(cfg.widths)), tuple(input_shape), **kw))


def _conv(name: str, rank: int):
  def build(cfg: ml_collections.ConfigDict, input_shape, decoder_input: int):
    del decoder_input
    _check_conv_shape(name, input_shape, rank, cfg)
    kw = dict(kernel_size=cfg.kernel_size, stride=cfg.stride, activation=cfg.activation,
              layer_norm=cfg.layer_norm, dtype=_dtype(cfg),
              conv_impl=cfg.get("conv_impl", "auto"),
              conv_batch_chunk=cfg.get("conv_batch_chunk", -1))
    # A bad setting fails here, not at the first call.
    conv_lib.resolve_chunk(kw["conv_batch_chunk"], kw["conv_impl"])
    return (ConvEncoder(tuple(cfg.channels), **kw),
            ConvDecoder(tuple(cfg.channels), tuple(input_shape), **kw))
  build.__doc__ = f"Strided conv encoder and transposed-conv decoder over {rank}-D inputs."
  build.convolutional = True
  return build


def convolutional(name: str) -> bool:
  """Whether network `name` is built of the convolutions of `ae_jax.conv`, whose CPU speed
  per example falls with the batch (the auto settings of `ae_jax.batching` chunk it)."""
  return bool(getattr(NETWORKS.get(name), "convolutional", False))


PARAM_INITS = ("flax", "torch")   # model.init


def torch_style_init(params, rng):
  """`params` with every layer (a dict holding a `kernel` of rank >= 2, and its `bias`)
  redrawn as PyTorch's `nn.Linear` / `nn.Conv` draw theirs by default: kernel and bias
  uniform in [-1/sqrt(fan_in), 1/sqrt(fan_in)], fan_in = the product of all kernel axes
  but the last (inputs x kernel window). That is sqrt(3) smaller kernels than Flax's
  LeCun normal and non-zero biases. (For a transposed convolution PyTorch counts the
  output channels in fan_in; this counts the inputs, as for every other layer.) Everything
  else (norm scales, codebooks, pseudo-inputs) is kept; each layer's draw comes from `rng`
  folded with its position in the tree."""
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  # (layer path, leaf name) of every leaf, e.g. ("params/encoder/Dense_0", "kernel")
  where = [(jax.tree_util.keystr(path[:-1], simple=True, separator="/"),
            jax.tree_util.keystr(path[-1:], simple=True)) for path, _ in flat]
  fan_in = {layer: math.prod(leaf.shape[:-1]) for (layer, name), (_, leaf) in zip(where, flat)
            if name == "kernel" and leaf.ndim >= 2}
  leaves = []
  for i, ((layer, name), (_, leaf)) in enumerate(zip(where, flat)):
    fan = fan_in.get(layer) if name in ("kernel", "bias") else None
    if fan is None:
      leaves.append(leaf)
      continue
    bound = 1.0 / math.sqrt(fan)
    leaves.append(jax.random.uniform(jax.random.fold_in(rng, i), leaf.shape, leaf.dtype,
                                     -bound, bound))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def initial_params(cfg, params, rng):
  """The freshly initialised `params` under `cfg.model.init` ('flax' keeps them)."""
  if cfg.model.get("init", "flax") == "torch":
    return torch_style_init(params, jax.random.fold_in(rng, 0x70C4))
  return params


def chunking_pays(name: str) -> bool:
  """Whether the auto settings of `ae_jax.batching` (`model.batch_chunk`,
  `train.microbatch`) chunk network `name` on the current backend: a convolutional
  network on the CPU, where chunks keep each convolution's working set in the caches."""
  return convolutional(name) and jax.default_backend() == "cpu"


NETWORKS.register("conv2d")(_conv("conv2d", 2))
NETWORKS.register("conv1d")(_conv("conv1d", 1))


# ---- sub-pixel convolutions -------------------------------------------------------------

def space_to_depth(h, factor: int = 2):
  """(B, *spatial, C) -> (B, *spatial / factor, C * factor^d): each block becomes channels."""
  b, *spatial, c = h.shape
  split = [v for s in spatial for v in (s // factor, factor)]
  h = h.reshape(b, *split, c)
  d = len(spatial)
  order = [0] + [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)] + [1 + 2 * d]
  return h.transpose(order).reshape(b, *(s // factor for s in spatial), c * factor ** d)


def depth_to_space(h, factor: int = 2):
  """(B, *spatial, C) -> (B, *spatial * factor, C / factor^d), the inverse of space_to_depth."""
  b, *spatial, c = h.shape
  d = len(spatial)
  h = h.reshape(b, *spatial, *(factor,) * d, c // factor ** d)
  order = [0] + [v for i in range(d) for v in (1 + i, 1 + d + i)] + [1 + 2 * d]
  return h.transpose(order).reshape(b, *(s * factor for s in spatial), c // factor ** d)


class SubpixelEncoder(nn.Module):
  """Halves the resolution once per entry of `channels` with a space-to-depth step and a
  convolution, then one more convolution: (B, *spatial, C) -> (B, *spatial / 2^L, c_L),
  flattened to (B, F) when `flatten`. No strided convolutions: on CPU they cost several
  times more than these reshapes."""
  channels: Sequence[int]
  kernel_size: int = 3
  activation: str = "relu"
  flatten: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    act = get_activation(self.activation)
    k = (self.kernel_size,) * (x.ndim - 2)
    h = x
    for ch in self.channels:
      h = act(nn.Conv(ch, k)(space_to_depth(h)))
    h = act(nn.Conv(self.channels[-1], k)(h))
    return h.reshape(h.shape[0], -1) if self.flatten else h


class SubpixelDecoder(nn.Module):
  """The mirror of `SubpixelEncoder`: a convolution, then per level a convolution and a
  sub-pixel (depth-to-space) step. Takes a latent vector (B, L), mapped by a dense layer
  to the smallest feature map, or, with `from_vector=False`, that feature map itself.
  Returns (B, *output_shape) raw outputs."""
  channels: Sequence[int]
  output_shape: Sequence[int]
  kernel_size: int = 3
  activation: str = "relu"
  from_vector: bool = True

  @nn.compact
  def __call__(self, z, train: bool = False):
    del train
    act = get_activation(self.activation)
    *spatial, out_ch = self.output_shape
    ndim = len(spatial)
    k, one = (self.kernel_size,) * ndim, (1,) * ndim
    h = z
    if self.from_vector:
      small = [s // 2 ** len(self.channels) for s in spatial]
      h = act(nn.Dense(math.prod(small) * self.channels[-1])(z))
      h = h.reshape(z.shape[0], *small, self.channels[-1])
    h = act(nn.Conv(self.channels[-1], k)(h))
    outs = [*reversed(self.channels[:-1]), out_ch]
    for i, (ch, out) in enumerate(zip(reversed(self.channels), outs)):
      h = depth_to_space(nn.Conv(out * 2 ** ndim, one)(act(nn.Conv(ch, k)(h))))
      if i < len(outs) - 1:
        h = act(h)
    return h


def check_subpixel(name: str, input_shape, channels) -> None:
  if len(input_shape) not in (2, 3):
    raise ConfigError(f"{name} needs (T, C) or (H, W, C) examples, got {tuple(input_shape)}; "
                      "use network='mlp' for flat vectors")
  factor = 2 ** len(channels)
  if any(s % factor for s in input_shape[:-1]):
    raise ConfigError(f"{name} with {len(channels)} resolutions needs spatial sizes "
                      f"divisible by {factor}, got {tuple(input_shape[:-1])}; change "
                      "model.channels")


@NETWORKS.register("subpixel")
def subpixel(cfg: ml_collections.ConfigDict, input_shape, decoder_input: int):
  """`SubpixelEncoder` and `SubpixelDecoder` over 1-D or 2-D inputs (dense bottleneck)."""
  del decoder_input
  check_subpixel("network 'subpixel'", input_shape, cfg.channels)
  kw = dict(kernel_size=cfg.kernel_size, activation=cfg.activation)
  return (SubpixelEncoder(tuple(cfg.channels), **kw),
          SubpixelDecoder(tuple(cfg.channels), tuple(input_shape), **kw))


@NETWORKS.register("tcn1d")
def tcn1d(cfg: ml_collections.ConfigDict, input_shape, decoder_input: int):
  """Dilated (temporal) convolutions over sequences (T, C) with cfg.channels and
  cfg.kernel_size; any length T (no striding)."""
  del decoder_input
  if len(input_shape) != 2:
    raise ConfigError(f"network 'tcn1d' expects sequences of shape (T, C), got "
                      f"{tuple(input_shape)}; use network='mlp' for flat vectors")
  kw = dict(kernel_size=cfg.kernel_size, activation=cfg.activation,
            layer_norm=cfg.layer_norm, dtype=_dtype(cfg))
  return (TCNEncoder(tuple(cfg.channels), **kw),
          TCNDecoder(tuple(cfg.channels), tuple(input_shape), **kw))
