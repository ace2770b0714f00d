"""Super-resolution: classical upsamplers beside the learned model.

The model is the `spatial_denoising` family (ae_jax/families/spatial_denoising.py) trained
with the `downsample` corruption (ae_jax/corruption.py, with `box_downsample` and
`repeat_upsample`): its input is the low-resolution image repeated to the
full size (a lossless view of the H/f x W/f pixels), its target the full image.
Images are (N, H, W, C) in [0, 1].
"""

import jax.numpy as jnp
import numpy as np

from ae_jax.corruption import box_downsample, downsample, repeat_upsample  # noqa: F401


_PIL_FILTERS = ("nearest", "bilinear", "bicubic", "lanczos")


def pil_upsample(small: np.ndarray, size: tuple[int, int], method: str) -> np.ndarray:
  """Resize each (h, w, 1) image of `small` to `size` (H, W) with Pillow, float32 mode."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if method not in _PIL_FILTERS:
    raise ValueError(f"method must be one of {_PIL_FILTERS}, got {method!r}")
  resample = getattr(Image.Resampling, method.upper())
  out = [np.asarray(Image.fromarray(img[..., 0].astype(np.float32), mode="F")
                    .resize((size[1], size[0]), resample)) for img in small]
  return np.clip(np.stack(out)[..., None], 0.0, 1.0).astype(np.float32)


def scipy_upsample(small: np.ndarray, factor: int, order: int) -> np.ndarray:
  """Spline upsampling of each image (N, h, w, C) by `factor` (order 3 = cubic B-spline)."""
  from scipy import ndimage  # pylint: disable=g-import-not-at-top
  out = ndimage.zoom(small, (1, factor, factor, 1), order=order, mode="nearest")
  return np.clip(out, 0.0, 1.0).astype(np.float32)
