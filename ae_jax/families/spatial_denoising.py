"""`spatial_denoising`: the `denoising` objective with a fully convolutional module.

The module keeps a spatial latent: sub-pixel convolutions down to a (H/2^L, W/2^L, c)
feature map, no dense layer, and the mirror image up. `model.latent_dim` is the number of
latent values, so the latent has c = latent_dim / (number of latent positions) channels.
Denoising, inpainting (`block` corruption) and super-resolution (`downsample`) train it.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import ml_collections

from ae_jax.corruption import CORRUPTIONS
from ae_jax.errors import ConfigError
from ae_jax.families import denoising
from ae_jax.families.base import FAMILIES, Family
from ae_jax.networks import SubpixelDecoder, SubpixelEncoder, check_subpixel


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


def build_spatial(cfg: ml_collections.ConfigDict, input_shape: tuple) -> SpatialAutoencoder:
  """The `spatial_denoising` module for examples of shape (*spatial, C)."""
  m = cfg.model
  CORRUPTIONS.get(cfg.objective.noise)
  check_subpixel("family 'spatial_denoising'", input_shape, m.channels)
  factor = 2 ** len(m.channels)
  positions = math.prod(s // factor for s in input_shape[:-1])
  if m.latent_dim % positions:
    raise ConfigError(f"model.latent_dim={m.latent_dim} must be a multiple of the "
                      f"{positions} latent positions")
  return SpatialAutoencoder(tuple(m.channels), m.latent_dim // positions, tuple(input_shape),
                            kernel_size=m.kernel_size, activation=m.activation,
                            logits=m.recon_loss == "bce")




FAMILIES.register("spatial_denoising")(Family(
    "spatial_denoising", build_spatial, denoising.terms, fields=denoising.FIELDS,
    validate=denoising.validate, hparams=("objective.noise_level",)))
