"""Input corruptions for denoising and inpainting, drawn per example from a PRNG key.

Each corruption takes (key, x, level, cfg) for ONE example x (no batch axis) and
returns the corrupted example; `block_mask` also serves inpainting. Chosen by name
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
