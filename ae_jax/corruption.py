"""Input corruptions for denoising and inpainting, drawn per example from a PRNG key.

Each corruption takes (key, x, level, cfg) for ONE example x (no batch axis) and
returns the corrupted example; `block_mask` also serves inpainting, `downsample` serves
super-resolution and `noise_wander` models ECG noise. Chosen by name
through `CORRUPTIONS`.
"""

import jax
import jax.numpy as jnp

from ae_jax.registry import Registry

CORRUPTIONS: Registry = Registry("corruption")


def _clip(x, cfg):
  if cfg.get("noise_clip", True):
    return jnp.clip(x, cfg.get("clip_min", 0.0), cfg.get("clip_max", 1.0))
  return x


@CORRUPTIONS.register("gaussian")
def gaussian(key, x, level, cfg):
  """x + level * N(0, 1), clipped to [clip_min, clip_max] when noise_clip is set."""
  return _clip(x + level * jax.random.normal(key, x.shape, x.dtype), cfg)


@CORRUPTIONS.register("salt_pepper")
def salt_pepper(key, x, level, cfg):
  """Each value becomes clip_max (salt) or clip_min (pepper) with total probability level."""
  k_hit, k_salt = jax.random.split(key)
  hit = jax.random.bernoulli(k_hit, level, x.shape)
  salt = jax.random.bernoulli(k_salt, 0.5, x.shape)
  value = jnp.where(salt, cfg.get("clip_max", 1.0), cfg.get("clip_min", 0.0)).astype(x.dtype)
  return jnp.where(hit, value, x)


@CORRUPTIONS.register("masking")
def masking(key, x, level, cfg):
  """Each value is set to 0 with probability level (masking noise)."""
  del cfg
  keep = jax.random.bernoulli(key, 1.0 - level, x.shape)
  return jnp.where(keep, x, jnp.zeros_like(x))


def block_mask(key, shape, block_size: int, region: int | None = None):
  """A 0/1 mask (1 = hidden) with one block_size^d block at a random place.

  shape is (*spatial, C) for images and sequences or (D,) for vectors. With
  `region`, the block lies inside the centred region^d window (e.g. a 10x10 hole
  inside the central 20x20).
  """
  spatial = shape[:-1] if len(shape) > 1 else shape
  keys = jax.random.split(key, len(spatial))
  hidden = jnp.ones((), bool)
  for axis, (size, k) in enumerate(zip(spatial, keys)):
    lo, hi = 0, size
    if region is not None:
      lo = (size - region) // 2
      hi = lo + region
    start = jax.random.randint(k, (), lo, hi - block_size + 1)
    idx = jnp.arange(size)
    inside = (idx >= start) & (idx < start + block_size)
    expand = [1] * len(spatial)
    expand[axis] = size
    hidden = hidden & inside.reshape(expand)
  if len(shape) > 1:
    hidden = jnp.broadcast_to(hidden[..., None], shape)
  return hidden.astype(jnp.float32)


@CORRUPTIONS.register("block")
def block(key, x, level, cfg):
  """Zero one random block of side cfg.block_size (level is unused)."""
  del level
  mask = block_mask(key, x.shape, cfg.block_size, cfg.get("block_region", None))
  return x * (1 - mask).astype(x.dtype)


@CORRUPTIONS.register("noise_wander")
def noise_wander(key, x, level, cfg):
  """Signal noise for one (T, C) example: Gaussian of std level x the example's std plus
  baseline wander, a sine of random phase, period `wander_period` (default T) samples
  and amplitude `wander` (default 0.3) x the example's std. No clipping."""
  k_noise, k_phase = jax.random.split(key)
  std = jnp.std(x)
  period = cfg.get("wander_period", None) or x.shape[0]
  phase = jax.random.uniform(k_phase, (), x.dtype, 0.0, 2 * jnp.pi)
  t = jnp.arange(x.shape[0], dtype=x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
  wander = cfg.get("wander", 0.3) * std * jnp.sin(2 * jnp.pi * t / period + phase)
  return x + level * std * jax.random.normal(k_noise, x.shape, x.dtype) + wander


def box_downsample(x, factor: int = 2):
  """Mean of each factor x factor block: (N, H, W, C) -> (N, H/f, W/f, C)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4))


def repeat_upsample(x, factor: int = 2):
  """Nearest-neighbour upsampling by repetition: (N, h, w, C) -> (N, h*f, w*f, C)."""
  return x.repeat(factor, axis=1).repeat(factor, axis=2)


@CORRUPTIONS.register("downsample")
def downsample(key, x, level, cfg):
  """One (H, W, C) image -> its 2x2 (cfg.factor) box average repeated back to (H, W, C)."""
  del key, level
  factor = cfg.get("factor", 2)
  small = box_downsample(x[None], factor)
  return jnp.asarray(repeat_upsample(small, factor)[0])
