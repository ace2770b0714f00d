"""Denoising: a fully convolutional denoising autoencoder, corruptions and classical filters.

The `spatial_denoising` family trains with the `denoising` family's objective (corrupt the
input with `objective.noise`, reconstruct the clean example) but its module keeps a
spatial latent: strided convolutions down to a (H/2^L, W/2^L, c) feature map, no dense
layer, and the mirror image up. `model.latent_dim` is the number of latent values, so the
latent has c = latent_dim / (number of latent positions) channels. Inpainting and
super-resolution train the same family with other corruptions.

Images are (N, H, W, C) in [0, 1]; signals are (N, T, C).
"""

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import configs
from ae_jax.corruption import CORRUPTIONS
from ae_jax.errors import ConfigError
from ae_jax.families import FAMILIES, Family
from ae_jax.networks import NETWORKS, get_activation


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


class SpatialAutoencoder(nn.Module):
  """Conv autoencoder with a feature-map latent, flattened to (B, latent_dim) by `encode`:
  a `SubpixelEncoder`, a 1x1 convolution to `latent_channels`, a `SubpixelDecoder`."""
  channels: Sequence[int]
  latent_channels: int
  input_shape: tuple
  kernel_size: int = 3
  activation: str = "relu"
  logits: bool = False
  num_classes: int = 0

  @property
  def latent_shape(self) -> tuple:
    factor = 2 ** len(self.channels)
    return (*(s // factor for s in self.input_shape[:-1]), self.latent_channels)

  @property
  def latent_dim(self) -> int:
    return math.prod(self.latent_shape)

  def setup(self):
    kw = dict(kernel_size=self.kernel_size, activation=self.activation)
    self.encoder = SubpixelEncoder(tuple(self.channels), flatten=False, **kw)
    self.to_code = nn.Conv(self.latent_channels, (1,) * (len(self.input_shape) - 1))
    self.decoder = SubpixelDecoder(tuple(self.channels), tuple(self.input_shape),
                                   from_vector=False, **kw)

  def encode(self, x, cond=None, train: bool = False):
    del cond
    return self.to_code(self.encoder(x, train)).reshape(x.shape[0], -1)

  def decode(self, z, cond=None, train: bool = False):
    del cond
    return self.decoder(z.reshape(z.shape[0], *self.latent_shape), train)

  def to_data(self, out):
    return jax.nn.sigmoid(out) if self.logits else out

  def reconstruct(self, x, cond=None):
    return self.to_data(self.decode(self.encode(x, cond), cond))

  def __call__(self, x, cond=None, train: bool = False):
    z = self.encode(x, cond, train)
    return {"z": z, "out": self.decode(z, cond, train)}


def _check_subpixel(name: str, input_shape, channels) -> None:
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
  _check_subpixel("network 'subpixel'", input_shape, cfg.channels)
  kw = dict(kernel_size=cfg.kernel_size, activation=cfg.activation)
  return (SubpixelEncoder(tuple(cfg.channels), **kw),
          SubpixelDecoder(tuple(cfg.channels), tuple(input_shape), **kw))


def build_spatial(cfg: ml_collections.ConfigDict, input_shape: tuple) -> SpatialAutoencoder:
  """The `spatial_denoising` module for examples of shape (*spatial, C)."""
  m = cfg.model
  CORRUPTIONS.get(cfg.objective.noise)
  _check_subpixel("family 'spatial_denoising'", input_shape, m.channels)
  factor = 2 ** len(m.channels)
  positions = math.prod(s // factor for s in input_shape[:-1])
  if m.latent_dim % positions:
    raise ConfigError(f"model.latent_dim={m.latent_dim} must be a multiple of the "
                      f"{positions} latent positions")
  return SpatialAutoencoder(tuple(m.channels), m.latent_dim // positions, tuple(input_shape),
                            kernel_size=m.kernel_size, activation=m.activation,
                            logits=m.recon_loss == "bce")


def _denoising_terms(*args):
  return FAMILIES.get("denoising").terms(*args)


FAMILIES.register("spatial_denoising")(
    Family("spatial_denoising", build_spatial, _denoising_terms))


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
