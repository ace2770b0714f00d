"""A per-example function run over a batch in fixed-size chunks, one chunk after another.

XLA:CPU runs a convolutional network slower per example as the batch grows: the
activations of a large batch leave the caches between layers. Running the whole network
on chunks of a few examples (16 by default on the CPU; `lax.map` / `lax.scan` over the
chunks) keeps them in cache; `model.batch_chunk` does it for the forward in evaluation,
encode and decode, and `train.microbatch` accumulates the gradient over micro-batches
inside the train step (benchmarks/RESULTS.md, session 7).

`map_chunks` concatenates per-example outputs, `sum_chunks` adds up outputs that are sums
over the examples. A batch of B = n * chunk + r examples runs as n chunks under one loop
plus one call on the last r examples, so every chunk but the remainder has the same shape
and nothing is padded.

Settings follow one convention: -1 auto, 0 off, n > 0 examples per chunk.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from ae_jax.errors import ConfigError

# Examples per chunk that the auto setting (-1) picks for convolutional networks on the
# CPU backend, chosen on `benchmarks.torch_compare --batch-chunks` (RESULTS.md, session 7).
AUTO_BATCH_CHUNK = 16
AUTO_MICROBATCH = 16


def check_setting(name: str, value) -> int:
  """`value` if it is a valid chunk setting (-1 auto, 0 off, n > 0), else a ConfigError."""
  if not isinstance(value, int) or isinstance(value, bool) or value < -1:
    raise ConfigError(f"{name} must be -1 (auto), 0 (off) or a positive number of examples "
                      f"per chunk, got {value!r}")
  return value


def resolve(name: str, value, *, auto: int, auto_applies: bool) -> int:
  """The chunk size of a setting: `value` if > 0, 0 if 0, and for -1 `auto` where
  `auto_applies` (a convolutional network on the CPU backend), else 0."""
  value = check_setting(name, value)
  if value == -1:
    return auto if auto_applies else 0
  return value


def _batch_size(batched) -> int:
  sizes = {jnp.shape(leaf)[0] for leaf in jax.tree.leaves(batched)}
  if len(sizes) != 1:
    raise ValueError(f"chunked inputs must share one leading batch size, got {sorted(sizes)}")
  return sizes.pop()


def _plan(chunk: int, batched):
  """None where f should run once on the whole batch (chunk <= 0, no arrays, or a batch no
  larger than chunk); else (n, r, head, tail) for B = n * chunk + r: the first n * chunk
  examples reshaped to (n, chunk, ...), and the last r."""
  if chunk <= 0 or not jax.tree.leaves(batched):
    return None
  b = _batch_size(batched)
  if b <= chunk:
    return None
  n, r = divmod(b, chunk)
  head = jax.tree.map(lambda v: v[:n * chunk].reshape(n, chunk, *v.shape[1:]), batched)
  tail = jax.tree.map(lambda v: v[n * chunk:], batched)
  return n, r, head, tail


def map_chunks(f: Callable[..., Any], chunk: int, *batched) -> Any:
  """f(*batched) computed `chunk` examples at a time.

  Every leaf of `batched` (pytrees; None entries pass through) has the batch as its
  leading axis, and so has every leaf f returns: the outputs of the chunks are
  concatenated back. f must treat examples independently (no batch statistics).
  chunk <= 0, or a batch no larger than chunk, calls f once on the whole batch.
  """
  plan = _plan(chunk, batched)
  if plan is None:
    return f(*batched)
  n, r, head, tail = plan
  out = jax.lax.map(lambda args: f(*args), head)
  out = jax.tree.map(lambda v: v.reshape(n * chunk, *v.shape[2:]), out)
  if r:
    out = jax.tree.map(lambda a, t: jnp.concatenate([a, t]), out, f(*tail))
  return out


def sum_chunks(f: Callable[..., Any], chunk: int, *batched) -> Any:
  """The sum over chunks of f(*chunk_of_batched), run `chunk` examples at a time.

  f returns a pytree of sums over its examples (a loss sum and its gradient, per-term
  sums); the chunks' outputs are added up in a `lax.scan` carry, so memory does not grow
  with the number of chunks. chunk <= 0, or a batch no larger than chunk, calls f once.
  """
  plan = _plan(chunk, batched)
  if plan is None:
    return f(*batched)
  n, r, head, tail = plan
  first = jax.tree.map(lambda v: v[0], head)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(f, *first))

  def body(total, args):
    return jax.tree.map(jnp.add, total, f(*args)), None

  total, _ = jax.lax.scan(body, zeros, head)
  if r:
    total = jax.tree.map(jnp.add, total, f(*tail))
  return total

