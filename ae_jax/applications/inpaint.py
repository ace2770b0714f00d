"""Inpainting: square holes, classical fills and the learned fill.

The model is the `spatial_denoising` family (see `ae_jax.applications.denoise`) trained
with the `block` corruption (one zeroed block_size^2 square inside the central
region^2 window per image). Masks are 1 on the hole. Images are (N, H, W, C) in [0, 1].
"""

import jax
import numpy as np

from ae_jax.corruption import block_mask


def hole_masks(n: int, shape, block_size: int, region: int | None, seed: int) -> np.ndarray:
  """(n, *shape) 0/1 masks with one hole each, the same holes that
  `denoise.corrupt_fixed(x, 'block', 0, seed, block_size=..., block_region=...)` cuts."""
  keys = jax.random.split(jax.random.key(seed), n)
  make = jax.jit(jax.vmap(lambda k: block_mask(k, tuple(shape), block_size, region)))
  return np.asarray(make(keys))


def cut(x, masks) -> np.ndarray:
  """The images with their holes set to 0, as the `block` corruption leaves them."""
  return np.asarray(x, np.float32) * (1 - masks)


def paste(x_cut, fill, masks) -> np.ndarray:
  """Known pixels from x_cut, hole pixels from fill (clipped to [0, 1])."""
  return np.where(masks > 0, np.clip(fill, 0, 1), x_cut).astype(np.float32)


def mean_fill(x_cut, masks) -> np.ndarray:
  """Each hole filled with the mean of its image's known pixels."""
  known = 1 - masks
  axes = tuple(range(1, x_cut.ndim))
  means = (x_cut * known).sum(axes, keepdims=True) / known.sum(axes, keepdims=True)
  return paste(x_cut, np.broadcast_to(means, x_cut.shape), masks)


def biharmonic(x_cut, masks) -> np.ndarray:
  """scikit-image biharmonic inpainting of each (H, W, 1) image; needs the compare extra."""
  from skimage.restoration import inpaint_biharmonic  # pylint: disable=g-import-not-at-top
  out = np.stack([inpaint_biharmonic(img[..., 0], m[..., 0] > 0)[..., None]
                  for img, m in zip(x_cut, masks)])
  return paste(x_cut, out, masks)


def model_fill(trained, x_cut, masks) -> np.ndarray:
  """Holes filled with a trained model's reconstruction of the cut images."""
  return paste(x_cut, trained.reconstruct(x_cut), masks)
