"""Convolutions that are fast on XLA:CPU, with the parameters of `nn.Conv` / `nn.ConvTranspose`.

XLA:CPU runs the gradients of convolutions far below its matmul rate: an input-dilated
(`lhs_dilation`) convolution, which is how `lax.conv_transpose` and the input gradient of
a strided convolution are written, and the kernel gradient (a convolution over the batch
axis) cost 5 to 15 times the forward pass (jax#31662, openxla/xla#34273). This module
writes the same maths with operations XLA:CPU runs well:

- a transposed convolution's forward is one matmul of the input with every tap of the
  kernel and, per output phase, a sum of shifted slices, the phases interleaved
  (`_phase_add`; no `lhs_dilation`, no multiplications by inserted zeros); its input
  gradient is a strided convolution with the flipped kernel, its kernel gradient one
  matmul (im2col), as below;
- `conv` has a `jax.custom_vjp`: the input gradient is interior padding of the output
  gradient and a stride-1 convolution with the flipped kernel, the kernel gradient one
  matmul over the strided taps of the padded input (im2col);
- a stride-1 convolution to one output channel (an image autoencoder's last layer), which
  XLA:CPU's convolution runs at 13-20 GFLOP/s, is one matmul for all taps and a sum of
  shifted slices (`_shift_add`).

On the CPU the fast path also splits a large batch into chunks of `AUTO_BATCH_CHUNK`
examples, one after the other (`lax.map`), forward and backward: XLA:CPU's convolutions
run slower per example as the batch grows (their working set leaves the caches), and a
chunk of 64 images of 28x28 runs the conv28 forward 1.5x faster at batch 256 and 2.4x at
4,096 (benchmarks/RESULTS.md, session 5). `batch_chunk` sets it: -1 auto, 0 off, n > 0.

`Conv` and `ConvTranspose` hold exactly the parameters of their Flax twins (`kernel` of
shape (*kernel_size, C_in, C_out), `bias` of shape (C_out,), the same initialisers), so
checkpoints move between the two paths. `impl="auto"` takes the fast path on the CPU
backend and XLA's own convolutions on GPU and TPU; "xla" and "fast" force one.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ae_jax.errors import ConfigError

IMPLS = ("auto", "xla", "fast")
# Forward of a transposed convolution: "phase_add" (one matmul for every tap, then per
# output phase a sum of shifted slices, interleaved), "subpixel" (one stride-1 convolution
# per output phase, interleaved), "shuffle" (one stride-1 convolution giving every phase as
# channels, then depth-to-space), "col2im" (one matmul, taps overlap-added through interior
# padding) or "conv" (interior padding + stride-1 XLA convolution); chosen on the conv28
# forward and train step (`benchmarks.conv_profile --forwards`; benchmarks/RESULTS.md,
# session 10: phase_add +36-45 % forward, +14-18 % train step over subpixel at batch
# 64 / 256).
TRANSPOSE_FORWARDS = ("phase_add", "subpixel", "shuffle", "col2im", "conv")
_TRANSPOSE_FORWARD = "phase_add"
# Forward of a stride-1 convolution to one output channel: "shift_add" or XLA's "conv"
# (benchmarks.conv_profile --single-channel times both).
SINGLE_CHANNEL_FORWARDS = ("shift_add", "conv")
_SINGLE_CHANNEL_FORWARD = "shift_add"
# Every other correlation of the fast path (the forward of `conv`, the input gradient of
# `conv_transpose`): XLA's "conv", or "im2col" (the kernel's taps of the padded input,
# strided, side by side in the channels, times the kernel as one matmul)
# (benchmarks.conv_profile --correlation times both).
CORRELATIONS = ("conv", "im2col")
_CORRELATION = "conv"
_DIMS = {1: ("NHC", "HIO", "NHC"), 2: ("NHWC", "HWIO", "NHWC"), 3: ("NHWDC", "HWDIO", "NHWDC")}


def resolve_impl(impl: str) -> str:
  """'xla' or 'fast' for a setting in IMPLS; 'auto' is 'fast' on the CPU backend only."""
  if impl not in IMPLS:
    raise ConfigError(f"unknown conv_impl {impl!r}; valid settings are: {', '.join(IMPLS)} "
                      "('auto' picks 'fast' on the CPU and 'xla' on GPU/TPU)")
  if impl == "auto":
    return "fast" if jax.default_backend() == "cpu" else "xla"
  return impl


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of a 'SAME' convolution along one axis, as XLA computes it."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv_padding(padding, spatial, kernel, strides) -> tuple[tuple[int, int], ...]:
  """Explicit (low, high) pairs per spatial axis for 'SAME', 'VALID', an int or pairs."""
  if isinstance(padding, str):
    if padding.upper() == "SAME":
      return tuple(same_padding(n, k, s) for n, k, s in zip(spatial, kernel, strides))
    if padding.upper() == "VALID":
      return ((0, 0),) * len(spatial)
    raise ConfigError(f"padding {padding!r} is not supported by ae_jax.conv; use 'SAME', "
                      "'VALID', an int or (low, high) pairs")
  if isinstance(padding, int):
    return ((padding, padding),) * len(spatial)
  pairs = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
  if len(pairs) != len(spatial):
    raise ConfigError(f"padding {padding!r} gives {len(pairs)} axes, the input has "
                      f"{len(spatial)} spatial axes")
  return pairs


def transpose_padding(kernel: int, stride: int, padding) -> tuple[int, int]:
  """(low, high) edge padding of the interior-padded input of a transposed convolution,
  following `lax.conv_transpose` for 'SAME' and 'VALID'."""
  if padding == "SAME":
    total = kernel + stride - 2
    low = kernel - 1 if stride > kernel - 1 else -(-total // 2)
  elif padding == "VALID":
    total = kernel + stride - 2 + max(kernel - stride, 0)
    low = kernel - 1
  else:
    raise ConfigError(f"ConvTranspose padding {padding!r} is not supported by ae_jax.conv; "
                      "use 'SAME' or 'VALID'")
  return low, total - low


def _xla_conv(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DIMS[x.ndim - 2])


def _im2col(x, w, strides, pads):
  """The correlation of `_xla_conv` as one matmul: the strided windows of the padded x
  for every tap of w, side by side in the channels, (B, *out, taps * C), times w as a
  (taps * C, O) matrix (taps row-major, channels inner, as w's own layout)."""
  kernel, spatial = w.shape[:-2], x.shape[1:-1]
  out = [(n + lo + hi - k) // s + 1 for n, (lo, hi), k, s in zip(spatial, pads, kernel, strides)]
  taps = _taps(_pad(x, [(lo, hi, 0) for lo, hi in pads]), kernel, strides, out)
  return jnp.dot(jnp.concatenate(taps, axis=-1), w.reshape(-1, w.shape[-1]))


def _correlate(x, w, strides, pads):
  """`_xla_conv`, or `_im2col` when `_CORRELATION` says so."""
  if _CORRELATION == "im2col":
    return _im2col(x, w, strides, pads)
  return _xla_conv(x, w, strides, pads)


def _taps(xp, kernel, strides, out):
  """Strided windows of the padded input, one (B, *out, C) slice per kernel tap."""
  taps = []
  for t in itertools.product(*(range(k) for k in kernel)):
    start = (0, *t, 0)
    limit = (xp.shape[0], *(ti + (o - 1) * s + 1 for ti, o, s in zip(t, out, strides)),
             xp.shape[-1])
    taps.append(lax.slice(xp, start, limit, (1, *strides, 1)))
  return taps


def _pad(x, cfg):
  """lax.pad of the spatial axes of x (B, *spatial, C) by (low, high, interior) triples."""
  return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *cfg, (0, 0, 0)])


def _patch_grad(a, b, kernel, strides, out):
  """sum over rows of a[row, c] * tap_u(b)[row, o] for every tap u, as one matmul of a
  (B, *out, C) with the im2col patches of b -> (*kernel, C, O) indexed by tap u."""
  patches = jnp.stack(_taps(b, kernel, strides, out), axis=-2)
  rows = math.prod(patches.shape[:-2])
  g = jnp.dot(a.reshape(rows, -1).T, patches.reshape(rows, -1))
  g = g.reshape(a.shape[-1], math.prod(kernel), patches.shape[-1])
  return jnp.moveaxis(g, 0, 1).reshape(*kernel, a.shape[-1], patches.shape[-1])


def _tap_products(x, w):
  """x (B, *spatial, C) times every tap of w (*kernel, C, O) in one matmul ->
  (B, *spatial, taps, O), taps in row-major order of the kernel window."""
  taps = math.prod(w.shape[:-2])
  z = jnp.dot(x, jnp.moveaxis(w, -2, 0).reshape(w.shape[-2], taps * w.shape[-1]))
  return z.reshape(*x.shape[:-1], taps, w.shape[-1])


def _col2im(x, w, strides, lows, out):
  """y (B, *out, O) with y[s*m + low - t] += x[m] @ w[t] for every position m of x
  (B, *spatial, C) and tap t of w (*kernel, C, O): one matmul, then the taps are
  spread out by the stride (interior padding) and summed in one fused loop."""
  kernel = w.shape[:-2]
  spatial = x.shape[1:-1]
  z = _tap_products(x, w)
  y = None
  for i, t in enumerate(itertools.product(*(range(k) for k in kernel))):
    zt = z[..., i, :]
    cfg = [(lo - ti, p - (lo - ti) - (s * (n - 1) + 1), s - 1)
           for lo, ti, p, s, n in zip(lows, t, out, strides, spatial)]
    yt = _pad(zt, cfg)
    y = yt if y is None else y + yt
  return y


def _subpixel(x, w, strides, pads):
  """Transposed convolution as s**rank stride-1 convolutions of x, one per output phase.

  With z the input spread out by the stride and padded by (lo, hi), y[p] = sum_t
  z[p + t] w[t]; output p = s*m + r sees only the taps t = lo - r (mod s), each reading
  x[m + (r + t - lo) / s]. So phase r is a convolution of x with those taps, and the
  phases interleave (depth-to-space) into y: no multiplication by inserted zeros."""
  kernel, spatial = w.shape[:-2], x.shape[1:-1]
  rank = len(kernel)
  out, rows = _phase_rows(spatial, kernel, strides, pads)
  phases = []
  for r in itertools.product(*(range(s) for s in strides)):
    taps, cfg = [], []
    for ri, k, s, (lo, _), n, m in zip(r, kernel, strides, pads, spatial, rows):
      t = [ti for ti in range(k) if (ti - lo + ri) % s == 0]
      if not t:
        break
      first, last = (ri + t[0] - lo) // s, (ri + t[-1] - lo) // s
      taps.append(slice(t[0], t[-1] + 1, s))
      cfg.append((-first, m - 1 + last - (n - 1), 0))
    if len(taps) < rank:
      phases.append(jnp.zeros((x.shape[0], *rows, w.shape[-1]), x.dtype))
      continue
    sub = w[tuple(taps)]
    phases.append(_xla_conv(_pad(x, cfg), sub, (1,) * rank, ((0, 0),) * rank))
  return _interleave(jnp.stack(phases, axis=-2), strides, out)


def _phase_add(x, w, strides, pads):
  """Transposed convolution as ONE matmul of x with every tap of w, then, per output phase,
  a sum of shifted slices (the phases interleave as in `_subpixel`).

  Output p = s*m + r reads x[m + d] through tap t = s*d + lo - r, so tap t feeds phase
  r = (lo - t) mod s from offset d = (r + t - lo) / s: with u = x @ w for all taps at once,
  (B, *spatial, taps, O), phase r is the sum over its taps of u[m + d, t]. The matmul does
  exactly the useful multiplications, as the sub-pixel form does, in one large product
  instead of s**rank small convolutions; there is no interior padding, unlike `_col2im`."""
  kernel, spatial = w.shape[:-2], x.shape[1:-1]
  rank = len(kernel)
  out, rows = _phase_rows(spatial, kernel, strides, pads)
  offsets = [[(((lo - t) % s) + t - lo) // s for t in range(k)]
             for k, s, (lo, _) in zip(kernel, strides, pads)]
  lows = [max(0, -min(d)) for d in offsets]
  highs = [max(0, m - 1 + max(d) - (n - 1)) for d, m, n in zip(offsets, rows, spatial)]
  u = _pad(_tap_products(x, w), [(lo, hi, 0) for lo, hi in zip(lows, highs)] + [(0, 0, 0)])
  phases = {}
  for i, t in enumerate(itertools.product(*(range(k) for k in kernel))):
    r = tuple((lo - ti) % s for ti, s, (lo, _) in zip(t, strides, pads))
    starts = [offsets[a][t[a]] + lows[a] for a in range(rank)]
    part = u[(slice(None), *(slice(b, b + m) for b, m in zip(starts, rows)), i)]
    phases[r] = part if r not in phases else phases[r] + part
  if all(s == 1 for s in strides):   # one phase: a stride-1 correlation (`_shift_add`)
    return phases[(0,) * rank]
  zeros = jnp.zeros((x.shape[0], *rows, w.shape[-1]), x.dtype)
  stacked = [phases.get(r, zeros) for r in itertools.product(*(range(s) for s in strides))]
  return _interleave(jnp.stack(stacked, axis=-2), strides, out)


def _phase_rows(spatial, kernel, strides, pads):
  """(output size, rows per output phase) per axis of a transposed convolution."""
  out = [(n - 1) * s + 1 + lo + hi - k + 1
         for n, s, (lo, hi), k in zip(spatial, strides, pads, kernel)]
  return out, [-(-p // s) for p, s in zip(out, strides)]


def _interleave(y, strides, out):
  """Depth-to-space: y (B, *rows, prod(strides), O), phase r of output p = s*m + r in
  slot r (row-major over the axes), -> (B, *out, O), cropped to `out`."""
  rank, rows = len(strides), y.shape[1:-2]
  y = y.reshape(y.shape[0], *rows, *strides, y.shape[-1])
  perm = [0] + [a for d in range(rank) for a in (1 + d, 1 + rank + d)] + [1 + 2 * rank]
  y = y.transpose(perm).reshape(y.shape[0], *(m * s for m, s in zip(rows, strides)),
                                y.shape[-1])
  return y[(slice(None), *(slice(0, p) for p in out))]


def _shuffle(x, w, strides, pads):
  """Transposed convolution as ONE stride-1 convolution of x giving every output phase as
  channels, then depth-to-space (a "pixel shuffle").

  As in `_subpixel`, output p = s*m + r reads x[m + d] through tap t = s*d + lo - r; the
  offsets d of all phases span a window of D positions per axis (2 for a 3x3 kernel at
  stride 2), so one convolution with a (*D, C, s**rank * O) kernel, built from w with zeros
  where a phase has no tap, computes all phases at once: 16 / 9 of the useful
  multiplications for 3x3 at stride 2 (interior padding: 4x), in one call instead of four.
  """
  kernel, spatial = w.shape[:-2], x.shape[1:-1]
  rank, c_in, c_out = len(kernel), w.shape[-2], w.shape[-1]
  out, rows = _phase_rows(spatial, kernel, strides, pads)
  selects, cfg = [], []
  for k, s, (lo, _), n, m in zip(kernel, strides, pads, spatial, rows):
    offsets = [(r + t - lo) // s for r in range(s) for t in range(k) if (t - lo + r) % s == 0]
    first, size = min(offsets), max(offsets) - min(offsets) + 1
    # select[a, r, t] = 1 where tap t feeds phase r from input offset first + a
    select = np.zeros((size, s, k), np.float32)
    for a in range(size):
      for r in range(s):
        t = s * (first + a) + lo - r
        if 0 <= t < k:
          select[a, r, t] = 1.0
    selects.append(select)
    cfg.append((-first, m + size - 1 - n + first, 0))
  letters = "abcdefghijklmnopqrstuvwxyz"
  window, phase, tap = letters[:rank], letters[rank:2 * rank], letters[2 * rank:3 * rank]
  spec = ",".join(f"{a}{r}{t}" for a, r, t in zip(window, phase, tap))
  big = jnp.einsum(f"{spec},{tap}CO->{window}C{phase}O", *selects, w)
  big = big.reshape(*big.shape[:rank], c_in, math.prod(strides) * c_out)
  y = _xla_conv(_pad(x, cfg), big, (1,) * rank, ((0, 0),) * rank)
  return _interleave(y.reshape(*y.shape[:-1], math.prod(strides), c_out), strides, out)


def _flip(w):
  return jnp.flip(w, axis=tuple(range(w.ndim - 2)))


AUTO_BATCH_CHUNK = 64


def resolve_chunk(batch_chunk: int, impl: str) -> int:
  """The chunk size the fast path uses: `batch_chunk` if > 0, none (0) if 0, and for
  -1 (auto) AUTO_BATCH_CHUNK on the fast path, none on XLA's own convolutions."""
  if not isinstance(batch_chunk, int) or batch_chunk < -1:
    raise ConfigError(f"conv batch_chunk must be -1 (auto), 0 (off) or a positive number of "
                      f"examples, got {batch_chunk!r}")
  if batch_chunk == -1:
    return AUTO_BATCH_CHUNK if resolve_impl(impl) == "fast" else 0
  return batch_chunk


def _map_chunks(f, chunk: int, batched, n_summed: int = 0):
  """f(*batched) computed chunk by chunk over the leading (batch) axis of `batched`.

  f returns a tuple: per-example outputs (concatenated back along the batch) followed by
  `n_summed` outputs that are sums over the batch (added up over the chunks). A batch
  that does not split evenly is zero-padded: f must give zero per-example outputs
  and sums for all-zero examples (true of the convolutions here, which have no bias)."""
  b = batched[0].shape[0]
  if chunk <= 0 or b <= chunk:
    return f(*batched)
  n = -(-b // chunk)
  size = -(-b // n)
  pad = n * size - b
  xs = [jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)) if pad else x for x in batched]
  xs = [x.reshape(n, size, *x.shape[1:]) for x in xs]
  outs = lax.map(lambda args: f(*args), xs)
  k = len(outs) - n_summed
  per = tuple(o.reshape(n * size, *o.shape[2:])[:b] for o in outs[:k])
  return per + tuple(o.sum(axis=0) for o in outs[k:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x, w, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], chunk: int = 0):
  """Correlation of x (B, *spatial, C) with w (*kernel, C, O), explicit (low, high)
  padding per axis and the given strides -> (B, *out, O); gradients fast on the CPU;
  chunk > 0 runs forward and backward `chunk` examples at a time."""
  return _conv_fwd(x, w, strides, pads, chunk)[0]


def _conv_fwd(x, w, strides, pads, chunk=0):
  y, = _map_chunks(lambda xc: (_conv_forward(xc, w, strides, pads),), chunk, (x,))
  return y, (x, w)


def _conv_forward(x, w, strides, pads):
  """The forward of `conv`: XLA's convolution, except a stride-1 convolution to a single
  output channel (an image autoencoder's last layer), which XLA:CPU's convolution
  vectorises badly and `_shift_add` runs 1.7-2.6x faster (benchmarks/RESULTS.md, session 9;
  from 3 output channels on it is level or slower)."""
  if (_SINGLE_CHANNEL_FORWARD == "shift_add" and w.shape[-1] == 1
      and all(s == 1 for s in strides)):
    return _shift_add(x, w, pads)
  return _correlate(x, w, strides, pads)


def _shift_add(x, w, pads):
  """Stride-1 correlation as one matmul and a sum of shifted slices: u = x @ w for every
  tap at once, (B, *spatial, taps, O); then y[p] = sum over taps t of u[p + t, t], read
  from u zero-padded by `pads` (padding x with zeros pads u with zeros, u being linear).
  That is `_phase_add` at stride 1: a stride-1 transposed convolution is this correlation,
  with one output phase and tap t read at offset t - low."""
  return _phase_add(x, w, (1,) * (x.ndim - 2), pads)


def _conv_bwd(strides, pads, chunk, res, dy):
  x, w = res
  return _map_chunks(lambda xc, dyc: _conv_grads(strides, pads, xc, w, dyc), chunk, (x, dy),
                     n_summed=1)


def _conv_grads(strides, pads, x, w, dy):
  kernel, spatial, out = w.shape[:-2], x.shape[1:-1], dy.shape[1:-1]
  rank = len(kernel)
  # Input gradient: the output gradient spread out by the stride (interior padding)
  # and correlated with the flipped kernel, channels swapped; a stride-1 convolution.
  cfg = [(k - 1 - lo, n + lo - (o - 1) * s - 1, s - 1)
         for k, s, (lo, _), n, o in zip(kernel, strides, pads, spatial, out)]
  dx = _xla_conv(_pad(dy, cfg), _flip(w).swapaxes(-1, -2), (1,) * rank, ((0, 0),) * rank)
  # Kernel gradient: one matmul with im2col patches of whichever operand is smaller:
  # the strided taps of the padded input (C_in columns per tap), or, for stride 1, the
  # shifted taps of the padded output gradient (C_out columns per tap).
  xp = _pad(x, [(lo, hi, 0) for lo, hi in pads])
  if all(s == 1 for s in strides) and w.shape[-1] < w.shape[-2]:
    dyq = _pad(dy, [(k - 1, k - 1, 0) for k in kernel])
    dw = _flip(_patch_grad(xp, dyq, kernel, strides, xp.shape[1:-1]))
  else:
    dw = jnp.moveaxis(_patch_grad(dy, xp, kernel, strides, out), -1, -2)
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


def _transpose_cfg(kernel, strides, padding):
  return [(*transpose_padding(k, s, padding), s - 1) for k, s in zip(kernel, strides)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_transpose(x, w, strides: tuple[int, ...], padding="SAME", chunk: int = 0):
  """`lax.conv_transpose(x, w, strides, padding)` (kernel not flipped, as in
  `nn.ConvTranspose`): x (B, *spatial, C), w (*kernel, C, O) -> (B, *out, O), written as
  interior padding of x and a stride-1 convolution (no lhs_dilation); gradients by
  strided convolution and im2col matmul; chunk > 0 runs forward and backward `chunk`
  examples at a time."""
  return _conv_transpose_fwd(x, w, strides, padding, chunk)[0]


def _conv_transpose_fwd(x, w, strides, padding, chunk=0):
  y, = _map_chunks(lambda xc: (_transpose_forward(xc, w, strides, padding),), chunk, (x,))
  return y, (x, w)


def _transpose_forward(x, w, strides, padding):
  rank = x.ndim - 2
  cfg = _transpose_cfg(w.shape[:rank], strides, padding)
  if _TRANSPOSE_FORWARD == "subpixel":
    return _subpixel(x, w, strides, [(lo, hi) for lo, hi, _ in cfg])
  if _TRANSPOSE_FORWARD == "shuffle":
    return _shuffle(x, w, strides, [(lo, hi) for lo, hi, _ in cfg])
  if _TRANSPOSE_FORWARD == "phase_add":
    return _phase_add(x, w, strides, [(lo, hi) for lo, hi, _ in cfg])
  if _TRANSPOSE_FORWARD == "col2im":
    out = [(n - 1) * s + 1 + lo + hi - k + 1
           for n, s, (lo, hi, _), k in zip(x.shape[1:-1], strides, cfg, w.shape[:rank])]
    return _col2im(x, w, strides, [lo for lo, _, _ in cfg], out)
  return _xla_conv(_pad(x, cfg), w, (1,) * rank, ((0, 0),) * rank)


def _conv_transpose_bwd(strides, padding, chunk, res, dy):
  x, w = res
  return _map_chunks(lambda xc, dyc: _conv_transpose_grads(strides, padding, xc, w, dyc),
                     chunk, (x, dy), n_summed=1)


def _conv_transpose_grads(strides, padding, x, w, dy):
  kernel, spatial = w.shape[:-2], x.shape[1:-1]
  rank = len(kernel)
  # y[p] = sum_t z[p + t] w[t] with z[s*m + lo] = x[m], so
  # dx[m] = sum_t dy[s*m + lo - t] w[t]: a stride-s convolution of dy with the flipped
  # kernel, and dw[t] = sum_m x[m] dy[s*m + lo - t]: x against the strided taps of dy.
  cfg = []
  for k, s, (lo, _, _), n, p in zip(kernel, strides, _transpose_cfg(kernel, strides, padding),
                                    spatial, dy.shape[1:-1]):
    low = k - 1 - lo
    cfg.append((low, s * (n - 1) + k - low - p, 0))
  dyq = _pad(dy, cfg)
  dx = _correlate(dyq, _flip(w).swapaxes(-1, -2), strides, ((0, 0),) * rank)
  dw = _flip(_patch_grad(x, dyq, kernel, strides, spatial))
  return dx.astype(x.dtype), dw.astype(w.dtype)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


def _flatten_batch(x, rank):
  """x with all leading batch axes folded into one (and one added if there is none)."""
  batch = x.shape[:x.ndim - rank - 1]
  return x.reshape((-1, *x.shape[len(batch):])), batch


def _tuple(v, rank):
  return (v,) * rank if isinstance(v, int) else tuple(v)


class Conv(nn.Module):
  """`nn.Conv` twin (same `kernel`/`bias` names, shapes and initialisers).

  Inputs (*batch, *spatial, C) -> (*batch, *out, features); `impl` in IMPLS;
  `batch_chunk` (-1 auto, 0 off, n > 0) splits the batch on the fast path.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: str | int | Sequence = "SAME"
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  impl: str = "auto"
  batch_chunk: int = -1

  @nn.compact
  def __call__(self, inputs):
    kernel_size = _tuple(self.kernel_size, 1)
    rank = len(kernel_size)
    strides = _tuple(self.strides, rank)
    kernel = self.param("kernel", self.kernel_init, (*kernel_size, inputs.shape[-1],
                                                    self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    x, batch = _flatten_batch(x, rank)
    pads = conv_padding(self.padding, x.shape[1:-1], kernel_size, strides)
    if resolve_impl(self.impl) == "fast":
      y = conv(x, kernel, strides, pads, resolve_chunk(self.batch_chunk, self.impl))
    else:
      y = _xla_conv(x, kernel, strides, pads)
    if bias is not None:
      y = y + bias
    return y.reshape((*batch, *y.shape[1:]))


class ConvTranspose(nn.Module):
  """`nn.ConvTranspose` twin (same `kernel`/`bias` names, shapes and initialisers;
  `transpose_kernel=False` and no kernel dilation, as the Flax default).

  Inputs (*batch, *spatial, C) -> (*batch, *out, features); `impl` in IMPLS;
  `batch_chunk` (-1 auto, 0 off, n > 0) splits the batch on the fast path.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: str = "SAME"
  use_bias: bool = True
  dtype: jnp.dtype | None = None
  param_dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  impl: str = "auto"
  batch_chunk: int = -1

  @nn.compact
  def __call__(self, inputs):
    kernel_size = _tuple(self.kernel_size, 1)
    rank = len(kernel_size)
    strides = _tuple(1 if self.strides is None else self.strides, rank)
    kernel = self.param("kernel", self.kernel_init, (*kernel_size, inputs.shape[-1],
                                                    self.features), self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
    x, batch = _flatten_batch(x, rank)
    if resolve_impl(self.impl) == "fast":
      y = conv_transpose(x, kernel, strides, self.padding,
                         resolve_chunk(self.batch_chunk, self.impl))
    else:
      y = lax.conv_transpose(x, kernel, strides, self.padding,
                             dimension_numbers=_DIMS[rank])
    if bias is not None:
      y = y + bias
    return y.reshape((*batch, *y.shape[1:]))
