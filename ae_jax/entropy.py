"""Learned entropy models of quantised latents: the factorized prior of Ballé et al. and
the Gaussian conditional of their scale hyperprior.

`EntropyBottleneck` models each latent channel (the last axis) with its own learned,
monotone cumulative density c(y) = sigmoid(f(y)), where f is a small per-channel network
whose matrices are kept positive (softplus) so that f is increasing (Ballé, Minnen, Singh,
Hwang, Johnston, "Variational image compression with a scale hyperprior", 2018,
appendix 6.1). The probability of the unit bin around y is

    P(y) = c(y + 1/2) - c(y - 1/2),

the rate of a latent is -log2 P, and in training the latent is quantised by additive
uniform noise u ~ U(-1/2, 1/2) (so the noisy rate is an upper bound of the rounded one in
expectation). At test time a latent is rounded on the grid of its channel's learned
median m: symbol k = round(y - m), value m + k. Three learned quantiles per channel
(the tail_mass/2 tails and the median) are fitted by `aux_loss` and bound the alphabet of
the coding tables (`coding_tables`); values outside it are escaped by the bitstream.

The scale hyperprior's Gaussian conditional (`gaussian_likelihood`, `scale_table`,
`scale_index`, `gaussian_tables`) is at the end of this file.

Shapes: latents are (..., C); every per-channel parameter has a leading C axis.
"""

import dataclasses
import functools
import hashlib
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LIKELIHOOD_BOUND = 1e-9


def _softplus_inverse(x: float) -> float:
  return math.log(math.expm1(x))


def _uniform_centered(key, shape, dtype=jnp.float32):
  return jax.random.uniform(key, shape, dtype, -0.5, 0.5)


def logits_cumulative(layers, x):
  """f(x) of every channel: layers is a list of (matrix, bias, factor) with matrix
  (C, out, in) (unconstrained), bias (C, out, 1), factor (C, out, 1) or None (last layer);
  x (C, 1, N) -> (C, 1, N)."""
  for matrix, bias, factor in layers:
    x = jnp.matmul(jax.nn.softplus(matrix), x) + bias
    if factor is not None:
      x = x + jnp.tanh(factor) * jnp.tanh(x)
  return x


class EntropyBottleneck(nn.Module):
  """Factorized-prior entropy model of latents (..., C), one density per channel.

  Attributes:
    channels: C, the size of the latents' last axis.
    filters: hidden widths of each channel's density network (Ballé: (3, 3, 3)).
    init_scale: the initial density spreads over about [-init_scale, init_scale].
    tail_mass: probability left outside the coding alphabet [lower, upper] quantiles.
  """
  channels: int
  filters: tuple[int, ...] = (3, 3, 3)
  init_scale: float = 10.0
  tail_mass: float = 1e-9

  def setup(self):
    channels = self.channels
    widths = (1, *self.filters, 1)
    scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
    layers = []
    for i in range(len(self.filters) + 1):
      value = _softplus_inverse(1.0 / scale / widths[i + 1])
      matrix = self.param(f"matrix{i}", nn.initializers.constant(value),
                          (channels, widths[i + 1], widths[i]))
      bias = self.param(f"bias{i}", _uniform_centered, (channels, widths[i + 1], 1))
      factor = (self.param(f"factor{i}", nn.initializers.zeros, (channels, widths[i + 1], 1))
                if i < len(self.filters) else None)
      layers.append((matrix, bias, factor))
    self.layers = layers
    init = lambda key, shape: jnp.tile(
        jnp.asarray([-self.init_scale, 0.0, self.init_scale], jnp.float32), (shape[0], 1))
    self.quantiles = self.param("quantiles", init, (channels, 3))

  def cdf_logits(self, y, stop_gradient: bool = False):
    """f(y) per channel for latents (..., C) -> (..., C)."""
    channels = self.channels
    layers = self.layers
    if stop_gradient:
      layers = jax.lax.stop_gradient(layers)
    flat = jnp.moveaxis(y.reshape(-1, channels), -1, 0)[:, None, :]
    return jnp.moveaxis(logits_cumulative(layers, flat)[:, 0, :], 0, -1).reshape(y.shape)

  def likelihood(self, y):
    """P(unit bin around y) per value, (..., C) -> (..., C), bounded below by 1e-9."""
    lower = self.cdf_logits(y - 0.5)
    upper = self.cdf_logits(y + 0.5)
    # Subtract in the tail where both sigmoids are small, for precision.
    sign = jax.lax.stop_gradient(jnp.where(lower + upper > 0, -1.0, 1.0))
    p = jnp.abs(jax.nn.sigmoid(sign * upper) - jax.nn.sigmoid(sign * lower))
    return jnp.maximum(p, LIKELIHOOD_BOUND)

  def medians(self):
    """The learned median of each channel, (C,)."""
    return jax.lax.stop_gradient(self.quantiles[:, 1])

  def quantize(self, y):
    """Integer symbols round(y - median), (..., C) -> (..., C) int32."""
    return jnp.round(y - self.medians()).astype(jnp.int32)

  def dequantize(self, symbols):
    """Latent values median + symbol, (..., C) int -> (..., C) float32."""
    return symbols.astype(jnp.float32) + self.medians()

  def aux_loss(self):
    """Fits the quantiles: sum over channels of |f(q) - (-t, 0, t)|, t = log(2/tail - 1).

    Only the quantiles get its gradient (the density is held fixed); add it to the loss.
    """
    q = self.quantiles
    target = math.log(2.0 / self.tail_mass - 1.0)
    logits = self.cdf_logits(q.T, stop_gradient=True)  # (3, C)
    return jnp.sum(jnp.abs(logits - jnp.asarray([-target, 0.0, target])[:, None]))

  def __call__(self, y, noise=None):
    """Quantise latents y (..., C) and give their likelihoods.

    With `noise` (U(-1/2, 1/2) draws of y's shape) this is the training relaxation
    y + noise; without, test-time rounding on the median grid. Returns a dict with
    'y_hat' (..., C) the quantised latents, 'likelihood' (..., C) and 'bits' (...,) the
    rate -sum log2 P over the channel axis.
    """
    if noise is None:
      y_hat = self.dequantize(self.quantize(y))
    else:
      y_hat = y + noise
    p = self.likelihood(y_hat)
    return {"y_hat": y_hat, "likelihood": p, "bits": -jnp.sum(jnp.log2(p), axis=-1)}


def bottleneck_params(params) -> dict:
  """The EntropyBottleneck's own parameter dict inside a model's params (found by its
  'quantiles' leaf)."""
  def find(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
      if "quantiles" in tree:
        return tree
      for value in tree.values():
        found = find(value)
        if found is not None:
          return found
    return None
  found = find(params.get("params", params))
  if found is None:
    raise ValueError("these params hold no EntropyBottleneck (no 'quantiles' leaf)")
  return found


def solve_quantiles(module: EntropyBottleneck, eb_params, iterations: int = 60,
                    bound: float = 1e4):
  """The bottleneck's params with 'quantiles' (C, 3) set to the exact tail_mass/2, 1/2 and
  1 - tail_mass/2 points of each learned density, found by bisection of the monotone
  f(q) = (-t, 0, t), t = log(2/tail_mass - 1), within [-bound, bound].

  `aux_loss` moves the quantiles there by gradient steps during training; solving them
  afterwards makes the coding alphabet and the rounding grid exact whatever the number
  of steps."""
  channels = eb_params["quantiles"].shape[0]
  t = math.log(2.0 / module.tail_mass - 1.0)
  target = jnp.asarray([-t, 0.0, t])[:, None] * jnp.ones((1, channels))
  f = jax.jit(lambda q: module.apply({"params": eb_params}, q, method=EntropyBottleneck.cdf_logits))
  low, high = jnp.full((3, channels), -bound), jnp.full((3, channels), bound)
  for _ in range(iterations):
    mid = 0.5 * (low + high)
    above = f(mid) > target
    low, high = jnp.where(above, low, mid), jnp.where(above, mid, high)
  return dict(eb_params, quantiles=(0.5 * (low + high)).T.astype(jnp.float32))


@dataclasses.dataclass(frozen=True)
class CodingTables:
  """What encoder and decoder share to entropy-code symbols of C channels.

  lower: (C,) int32, the smallest symbol of each channel's alphabet; its symbols are
    lower .. lower + sizes - 1, coded as indices 0 .. sizes - 1.
  sizes: (C,) int32 alphabet size per channel (without the escape).
  counts: (C, S + 1) float64 integer-valued quantised probabilities, S = max(sizes);
    column j < sizes[c] is symbol lower[c] + j, column S is the escape of values outside
    the alphabet; unused columns are 0.
  medians: (C,) float32 the latent value of symbol 0.
  """
  lower: np.ndarray
  sizes: np.ndarray
  counts: np.ndarray
  medians: np.ndarray

  @property
  def escape(self) -> int:
    return self.counts.shape[1] - 1

  def digest(self) -> bytes:
    """Bytes that identify the tables (checked by the bitstream's checksum); computed
    once per tables object."""
    if "_digest" not in self.__dict__:
      h = hashlib.sha256()
      for a in (self.lower, self.sizes, self.counts, self.medians):
        h.update(np.ascontiguousarray(a).tobytes())
      self.__dict__["_digest"] = h.digest()
    return self.__dict__["_digest"]

  def tile(self, positions: int) -> "CodingTables":
    """The tables of a flattened spatial latent (positions, C) -> (positions * C,): value
    p * C + c is coded with channel c's table."""
    if positions == 1:
      return self
    return CodingTables(np.tile(self.lower, positions), np.tile(self.sizes, positions),
                        np.tile(self.counts, (positions, 1)), np.tile(self.medians, positions))

  def to_arrays(self) -> dict[str, np.ndarray]:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

  @classmethod
  def from_arrays(cls, arrays) -> "CodingTables":
    return cls(**{f.name: np.asarray(arrays[f.name]) for f in dataclasses.fields(cls)})


def coding_tables(module: EntropyBottleneck, eb_params, precision: int = 16,
                  max_size: int = 4096) -> CodingTables:
  """Quantised probability tables of each channel's symbols from a trained bottleneck.

  eb_params: the bottleneck's parameter dict (`bottleneck_params`). The alphabet of channel
  c runs from floor(lower quantile - median) to ceil(upper quantile - median) (at most
  `max_size` symbols); each symbol gets count floor(P * 2**precision) + 1 (never zero) and
  the escape gets the probability outside the alphabet the same way.
  """
  variables = {"params": eb_params}
  q = np.asarray(eb_params["quantiles"], np.float64)
  med = q[:, 1].astype(np.float32)
  lower = np.floor(q[:, 0] - med).astype(np.int64)
  upper = np.ceil(q[:, 2] - med).astype(np.int64)
  lower = np.minimum(lower, 0)
  upper = np.maximum(upper, 0)
  sizes = np.minimum(upper - lower + 1, max_size)
  width = int(sizes.max())
  grid = lower[None, :] + np.arange(width)[:, None]  # (S, C)
  values = jnp.asarray(grid + med[None, :], jnp.float32)
  likelihood = jax.jit(lambda v, y: module.apply(v, y, method=EntropyBottleneck.likelihood))
  p = np.asarray(likelihood(variables, values), np.float64)  # one program, not op by op
  valid = np.arange(width)[:, None] < sizes[None, :]
  p = np.where(valid, p, 0.0)
  escape = np.clip(1.0 - p.sum(0), 0.0, 1.0)
  counts = quantised_counts(p.T, valid.T, escape, precision)
  return CodingTables(lower.astype(np.int32), sizes.astype(np.int32), counts, med)


def quantised_counts(p, valid, escape, precision: int) -> np.ndarray:
  """Integer counts (rows, S + 1) of per-row symbol probabilities p (rows, S) (only where
  `valid`) and escape probabilities (rows,): floor(P * 2**precision) + 1, never zero for a
  valid symbol or the escape (the last column)."""
  scale = float(2 ** precision)
  rows, width = p.shape
  counts = np.zeros((rows, width + 1), np.float64)
  counts[:, :width] = np.where(valid, np.floor(p * scale) + 1.0, 0.0)
  counts[:, width] = np.floor(escape * scale) + 1.0
  return counts


def ideal_bits(tables: CodingTables, symbols) -> np.ndarray:
  """Bits an ideal coder spends on symbols (N, C) with these tables (escapes counted as
  their escape symbol only), (N,)."""
  symbols = np.asarray(symbols, np.int64)
  rows = np.broadcast_to(np.arange(symbols.shape[-1]), symbols.shape)  # channel c: row c
  return ideal_bits_indexed(tables, symbols, rows)


# ---- the Gaussian conditional of the scale hyperprior --------------------------------
#
# Ballé, Minnen, Singh, Hwang, Johnston 2018, section 3: given the hyper-latent, each
# latent y is modelled as a zero-mean Gaussian of scale sigma convolved with a unit-width
# uniform, so the probability of the integer symbol k = round(y) is
#
#     P(k) = Phi((k + 1/2) / sigma) - Phi((k - 1/2) / sigma).
#
# For entropy coding the scales are quantised to a fixed, log-spaced table (as CompressAI's
# `get_scale_table`): latent i is coded with the table of the smallest table scale >= its
# sigma (`scale_index`), so encoder and decoder need only that integer per latent.

SCALE_BOUND = 0.11      # smallest scale (CompressAI's GaussianConditional scale_bound)
SCALE_MAX = 256.0       # largest table scale
SCALE_LEVELS = 64       # table scales, log-spaced from SCALE_BOUND to SCALE_MAX
GAUSSIAN_TAIL_MASS = 1e-9  # probability of each table left to the escape code


def scale_table(low: float = SCALE_BOUND, high: float = SCALE_MAX,
                levels: int = SCALE_LEVELS) -> np.ndarray:
  """The coding scales exp(linspace(log low, log high, levels)), (levels,) float64."""
  return np.exp(np.linspace(math.log(low), math.log(high), levels))


@jax.custom_vjp
def lower_bound(x, bound):
  """max(x, bound) whose gradient still passes below the bound when it points upwards
  (CompressAI's LowerBound): a value stuck under the bound can be pulled back."""
  return jnp.maximum(x, bound)


def _lower_bound_fwd(x, bound):
  return jnp.maximum(x, bound), (x, bound)


def _lower_bound_bwd(res, g):
  x, bound = res
  passes = (x >= bound) | (g < 0)
  return g * passes.astype(g.dtype), jnp.zeros_like(bound)


lower_bound.defvjp(_lower_bound_fwd, _lower_bound_bwd)


def _standard_cdf(x):
  """Phi(x) through erfc, exact in the lower tail."""
  return 0.5 * jax.scipy.special.erfc(-x / math.sqrt(2.0))


def gaussian_likelihood(y, scale):
  """P(unit bin around y) under N(0, scale^2), elementwise; scale is bounded below by
  SCALE_BOUND and the probability by LIKELIHOOD_BOUND (both passing upward gradients).
  Computed on -|y| (the lower tail) for precision."""
  scale = lower_bound(scale, jnp.asarray(SCALE_BOUND, scale.dtype))
  values = jnp.abs(y)
  p = _standard_cdf((0.5 - values) / scale) - _standard_cdf((-0.5 - values) / scale)
  return lower_bound(p, jnp.asarray(LIKELIHOOD_BOUND, p.dtype))


def scale_index(scale, table: np.ndarray | None = None):
  """Index of the coding table of each scale: the smallest i with scale <= table[i]
  (float32 comparison), the last table for larger scales; (...) -> (...) int32."""
  table = scale_table() if table is None else table
  edges = jnp.asarray(table[:-1], jnp.float32)
  return jnp.sum(scale[..., None] > edges, axis=-1).astype(jnp.int32)


@functools.lru_cache(maxsize=8)
def gaussian_tables(low: float = SCALE_BOUND, high: float = SCALE_MAX,
                    levels: int = SCALE_LEVELS, tail_mass: float = GAUSSIAN_TAIL_MASS,
                    precision: int = 16) -> CodingTables:
  """Coding tables of zero-mean Gaussian symbols, one row per table scale, in numpy
  float64 (so every encoder and decoder builds bit-identical tables).

  Row k codes symbols -c .. c, c = ceil(scale_k * z), z the standard normal's
  1 - tail_mass/2 quantile; counts floor(P * 2**precision) + 1 as `coding_tables`, the
  escape column the mass outside. Cached: the same object (and digest) for the same
  arguments.
  """
  from scipy import special  # pylint: disable=g-import-not-at-top
  scales = scale_table(low, high, levels)
  center = np.ceil(scales * -special.ndtri(tail_mass / 2)).astype(np.int64)
  sizes = 2 * center + 1
  width = int(sizes.max())
  k = np.arange(width)[None, :] - center[:, None]            # (levels, S) symbols
  upper = special.ndtr((0.5 - np.abs(k)) / scales[:, None])
  lower = special.ndtr((-0.5 - np.abs(k)) / scales[:, None])
  valid = np.arange(width)[None, :] < sizes[:, None]
  p = np.where(valid, upper - lower, 0.0)
  escape = 2.0 * special.ndtr((-0.5 - center) / scales)
  counts = quantised_counts(p, valid, escape, precision)
  return CodingTables((-center).astype(np.int32), sizes.astype(np.int32), counts,
                      np.zeros(levels, np.float32))


def ideal_bits_indexed(tables: CodingTables, symbols, indices) -> np.ndarray:
  """Bits an ideal coder spends on symbols (N, C) when symbol (n, c) is coded with table
  row indices[n, c] (escapes counted as their escape symbol only), (N,)."""
  symbols = np.asarray(symbols, np.int64)
  indices = np.asarray(indices, np.int64)
  index = symbols - tables.lower[indices]
  inside = (index >= 0) & (index < tables.sizes[indices])
  index = np.where(inside, index, tables.escape)
  p = tables.counts / tables.counts.sum(1, keepdims=True)
  return -np.log2(p[indices, index]).sum(-1)
