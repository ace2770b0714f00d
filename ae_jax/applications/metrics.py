"""Quality metrics for restored images and signals.

Images are (N, H, W, C) arrays with values in [0, 1]; every function returns one value
per example (N,), so callers choose how to average (the experiments report the mean of
per-image values, the usual convention for PSNR and SSIM).
"""

import dm_pix
import jax
import jax.numpy as jnp
import numpy as np

MAX_PSNR_DB = 100.0


def _images(a) -> jax.Array:
  a = jnp.asarray(a, jnp.float32)
  return a[..., None] if a.ndim == 3 else a


@jax.jit
def _psnr(a, b):
  return jnp.minimum(dm_pix.psnr(a, b), MAX_PSNR_DB)


@jax.jit
def _ssim(a, b):
  return dm_pix.ssim(a, b, max_val=1.0)


def psnr(a, b) -> np.ndarray:
  """PSNR in dB (peak 1.0) of each image pair, (N, H, W[, C]) -> (N,); capped at 100 dB."""
  return np.asarray(_psnr(_images(a), _images(b)))


def ssim(a, b) -> np.ndarray:
  """SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, k1 0.01, k2 0.03, peak 1.0)
  of each image pair, (N, H, W[, C]) -> (N,)."""
  return np.asarray(_ssim(_images(a), _images(b)))


def masked_mse(a, b, mask) -> np.ndarray:
  """Mean squared error over the positions where mask == 1, per example (N,)."""
  a, b, mask = (np.asarray(v, np.float64).reshape(len(v), -1) for v in (a, b, mask))
  count = mask.sum(1)
  if np.any(count == 0):
    raise ValueError("every example needs at least one masked position")
  return (np.square(a - b) * mask).sum(1) / count


def masked_psnr(a, b, mask) -> np.ndarray:
  """PSNR in dB (peak 1.0) over the masked positions only, per example (N,); capped at 100."""
  mse = masked_mse(a, b, mask)
  return np.minimum(10.0 * np.log10(1.0 / np.maximum(mse, 1e-30)), MAX_PSNR_DB)


def pooled_psnr(a, b, mask=None) -> float:
  """PSNR of the error pooled over all examples (and masked positions): one number."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  mask = np.ones_like(a) if mask is None else np.broadcast_to(np.asarray(mask, np.float64), a.shape)
  mse = float((np.square(a - b) * mask).sum() / mask.sum())
  return min(10.0 * np.log10(1.0 / max(mse, 1e-30)), MAX_PSNR_DB)


def snr_db(clean, estimate) -> np.ndarray:
  """Output SNR of each signal, 10 log10(sum clean^2 / sum (estimate - clean)^2), (N,)."""
  clean = np.asarray(clean, np.float64).reshape(len(clean), -1)
  err = np.asarray(estimate, np.float64).reshape(clean.shape) - clean
  return 10.0 * np.log10(np.sum(clean ** 2, 1) / np.maximum(np.sum(err ** 2, 1), 1e-30))
