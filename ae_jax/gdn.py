"""Generalized divisive normalization and the convolutional transforms of learned
image compression (Ballé, Laparra, Simoncelli, "End-to-end optimized image
compression", 2017).

GDN normalises each pixel's channel vector x (C,) by a learned mixture of the squares of
its channels,

    GDN(x)_i  = x_i / sqrt(beta_i + sum_j gamma_ij x_j^2),
    IGDN(x)_i = x_i * sqrt(beta_i + sum_j gamma_ij x_j^2)     (the synthesis side),

with beta > 0 and gamma >= 0 kept by a lower bound whose gradient still passes when it
pushes the parameter back above the bound (Ballé's `lower_bound`).

`AnalysisTransform` maps images (B, H, W, 1) to spatial latents (B, H/4, W/4, M) by two
stride-2 convolutions with GDN and a stride-1 convolution; `SynthesisTransform` mirrors
it with inverse GDN and stride-2 transposed convolutions. Their convolutions are
`ae_jax.conv` layers (the fast CPU path of the `conv2d` network).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import conv as conv_lib


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def lower_bound(x, bound: float):
  """max(x, bound), whose gradient passes where x >= bound or where it would raise x."""
  return jnp.maximum(x, bound)


def _lower_bound_fwd(x, bound):
  return jnp.maximum(x, bound), x


def _lower_bound_bwd(bound, x, g):
  return (jnp.where((x >= bound) | (g < 0), g, 0.0).astype(g.dtype),)


lower_bound.defvjp(_lower_bound_fwd, _lower_bound_bwd)


class GDN(nn.Module):
  """GDN over the last axis of x (..., C) -> (..., C); `inverse` gives IGDN.

  Parameters: `beta` (C,) initialised to 1 and bounded below by `beta_min`; `gamma`
  (C, C) initialised to `gamma_init` times the identity and bounded below by 0
  (gamma[i, j] weighs channel j in the norm of channel i).
  """
  inverse: bool = False
  beta_min: float = 1e-6
  gamma_init: float = 0.1

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    beta = self.param("beta", nn.initializers.ones, (channels,))
    gamma = self.param("gamma", lambda key, shape: self.gamma_init * jnp.eye(shape[0]),
                       (channels, channels))
    beta = lower_bound(beta, self.beta_min)
    gamma = lower_bound(gamma, 0.0)
    norm = jnp.sqrt(beta + jnp.square(x) @ gamma.T)
    return x * norm if self.inverse else x / norm


class AnalysisTransform(nn.Module):
  """Images (B, H, W, C_in) -> latents (B, H/4, W/4, latent_channels):
  Conv(k, /2) GDN Conv(k, /2) GDN Conv(k) with `channels` hidden channels."""
  channels: int = 32
  latent_channels: int = 16
  kernel_size: int = 5
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    k = (self.kernel_size, self.kernel_size)
    conv = functools.partial(conv_lib.Conv, kernel_size=k, padding="SAME", impl=self.conv_impl)
    h = GDN()(conv(self.channels, strides=2)(x))
    h = GDN()(conv(self.channels, strides=2)(h))
    return conv(self.latent_channels)(h)


class SynthesisTransform(nn.Module):
  """Latents (B, h, w, M) -> raw outputs (B, 4h, 4w, out_channels): the mirror of
  `AnalysisTransform`, Conv(k) IGDN ConvT(k, x2) IGDN ConvT(k, x2)."""
  out_channels: int = 1
  channels: int = 32
  kernel_size: int = 5
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, y, train: bool = False):
    del train
    k = (self.kernel_size, self.kernel_size)
    h = conv_lib.Conv(self.channels, k, padding="SAME", impl=self.conv_impl)(y)
    h = GDN(inverse=True)(h)
    h = conv_lib.ConvTranspose(self.channels, k, strides=2, padding="SAME",
                               impl=self.conv_impl)(h)
    h = GDN(inverse=True)(h)
    return conv_lib.ConvTranspose(self.out_channels, k, strides=2, padding="SAME",
                                  impl=self.conv_impl)(h)
