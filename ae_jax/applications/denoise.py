"""Denoising: corruptions with fixed keys, the config of a denoiser and classical filters.

The learned denoiser is the `spatial_denoising` family (ae_jax/families/spatial_denoising.py):
the `denoising` objective with a fully convolutional module that keeps a spatial latent.
Inpainting and super-resolution train the same family with other corruptions.

Images are (N, H, W, C) in [0, 1]; signals are (N, T, C).
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import configs
from ae_jax.corruption import CORRUPTIONS
from ae_jax.families.spatial_denoising import SpatialAutoencoder  # noqa: F401  (re-export)
from ae_jax.networks import (SubpixelDecoder, SubpixelEncoder, depth_to_space,  # noqa: F401
                             space_to_depth)


def corrupt_fixed(x: np.ndarray, noise: str, level: float, seed: int, **options) -> np.ndarray:
  """Corrupt every example of x (N, ...) with a registered corruption and fixed keys.

  `options` are the objective fields the corruption reads (noise_clip, block_size, ...).
  """
  cfg = ml_collections.ConfigDict({"noise_clip": True, "clip_min": 0.0, "clip_max": 1.0,
                                   **options})
  fn = CORRUPTIONS.get(noise)
  keys = jax.random.split(jax.random.key(seed), len(x))
  run = jax.jit(jax.vmap(lambda k, xi: fn(k, xi, level, cfg)))
  return np.asarray(run(keys, jnp.asarray(x, jnp.float32)))


def denoiser_config(noise: str, level: float, *, latent_dim: int = 784,
                    channels: Sequence[int] = (32, 64), epochs: int = 10,
                    batch_size: int = 64, learning_rate: float = 2e-3,
                    **objective) -> ml_collections.ConfigDict:
  """Config of a `spatial_denoising` model trained for `epochs` with a cosine schedule."""
  c = configs.get_preset("default")
  c.model.family = "spatial_denoising"
  c.model.network = "conv2d"
  c.model.channels = tuple(channels)
  c.model.latent_dim = latent_dim
  c.model.recon_loss = "mse"
  c.objective.noise = noise
  c.objective.noise_level = level
  for name, value in objective.items():
    c.objective[name] = value
  return configs.set_offline_training(c, learning_rate=learning_rate, batch_size=batch_size,
                                      epochs=epochs)


# ---- classical baselines -----------------------------------------------------------------

def median_filter(x: np.ndarray, size: int) -> np.ndarray:
  """size x size median filter of each image (N, H, W, C), edges reflected."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  return ndimage.median_filter(x, size=(1, size, size, 1), mode="reflect")


def nl_means(x: np.ndarray, h: float, patch_size: int = 5, patch_distance: int = 5,
             fast_mode: bool = False) -> np.ndarray:
  """scikit-image non-local means of each image (N, H, W, 1) with filter strength h (in
  pixel units, no noise-variance correction); needs the compare extra."""
  from skimage.restoration import denoise_nl_means  # pylint: disable=g-import-not-at-top
  return np.stack([
      denoise_nl_means(img[..., 0], h=h, patch_size=patch_size,
                       patch_distance=patch_distance, fast_mode=fast_mode)[..., None]
      for img in x]).astype(np.float32)


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
  """Centred moving average of each signal (N, T, C) over `window` samples, edges nearest."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  return ndimage.uniform_filter1d(x, window, axis=1, mode="nearest")


def savgol(x: np.ndarray, window: int, order: int) -> np.ndarray:
  """Savitzky-Golay filter of each signal (N, T, C) along time."""
  from scipy import signal  # pylint: disable=g-import-not-at-top
  return signal.savgol_filter(x, window, order, axis=1, mode="interp")


def choose_setting(filter_fn: Callable[..., np.ndarray], grid: Sequence[dict],
                   clean: np.ndarray, noisy: np.ndarray,
                   score: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[dict, float]:
  """The setting of `grid` whose filter output scores highest (mean score) on (clean, noisy)."""
  best, best_score = None, -np.inf
  for setting in grid:
    value = float(np.mean(score(clean, filter_fn(noisy, **setting))))
    if value > best_score:
      best, best_score = dict(setting), value
  return best, best_score
