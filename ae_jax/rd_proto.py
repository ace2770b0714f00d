"""Rate-distortion family: encoder -> entropy bottleneck -> decoder, loss D + lambda * R.

The latent y = Dense(encoder(x)) of `model.latent_dim` channels goes through
`ae_jax.entropy.EntropyBottleneck`: in training it is y + u, u ~ U(-1/2, 1/2) per
example (drawn from the example's key), for the rate; the decoder sees either the same
noisy latent (`model.rd_quantization = 'noise'`) or the rounded one with a
straight-through gradient ('ste'). In evaluation both are the rounded latent, so the
rate is that of the real symbols under the model. Terms per example:

  distortion  mean squared error of the data-space reconstruction (objective.rd_distortion
              'mse') or the model's recon_loss ('recon')
  bits        -sum log2 P(y_hat), the rate of one example in bits
  bpp         bits per input value (per pixel for grey images)
  aux         the quantile fit of the bottleneck (its gradient reaches only the quantiles)
  loss        distortion + objective.rd_lambda * bpp + aux

`objective.rd_lambda` is a traced hyperparameter: a whole rate-distortion curve trains
in one vmapped sweep (`ae_jax.vmap_trials.fit_trials`).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import losses
from ae_jax.entropy import EntropyBottleneck

FIELDS = {
    "model.rd_quantization": "ste",       # ste | noise: what the decoder sees in training
    "model.rd_filters": (3, 3, 3),        # hidden widths of each channel's density
    "objective.rd_lambda": 0.01,          # weight of the rate (bits per input value)
    "objective.rd_distortion": "mse",     # mse (data space) | recon (model.recon_loss)
}
HPARAMS = ("objective.rd_lambda",)


class RateDistortionAutoencoder(nn.Module):
  """x (B, *shape) -> y (B, latent_dim) -> symbols -> y_hat -> reconstruction (B, *shape)."""
  encoder: nn.Module
  decoder: nn.Module
  latent_dim: int
  logits: bool = False
  filters: tuple[int, ...] = (3, 3, 3)
  straight_through: bool = True
  num_classes: int = 0

  def setup(self):
    self.to_latent = nn.Dense(self.latent_dim, name="to_latent")
    self.bottleneck = EntropyBottleneck(self.latent_dim, filters=tuple(self.filters),
                                        name="bottleneck")

  def encode(self, x, cond=None, train: bool = False):
    """Continuous latents (B, latent_dim) before quantisation."""
    del cond
    return self.to_latent(self.encoder(x, train=train))

  def quantize(self, y):
    """Integer symbols (B, latent_dim) int32 of latents y."""
    return self.bottleneck.quantize(y)

  def dequantize(self, symbols):
    """Latent values (B, latent_dim) of integer symbols."""
    return self.bottleneck.dequantize(symbols)

  def decode(self, y_hat, cond=None, train: bool = False):
    """Raw decoder output (logits if `logits`) (B, *shape) of quantised latents."""
    del cond
    return self.decoder(y_hat, train=train)

  def to_data(self, out):
    return jax.nn.sigmoid(out) if self.logits else out

  def reconstruct(self, x, cond=None):
    """The test-time reconstruction: encode, round, decode, in data space."""
    y_hat = self.dequantize(self.quantize(self.encode(x, cond)))
    return self.to_data(self.decode(y_hat, cond))

  def aux_loss(self):
    return self.bottleneck.aux_loss()

  def __call__(self, x, cond=None, train: bool = False, noise=None) -> dict[str, Any]:
    """With `noise` (B, latent_dim) in U(-1/2, 1/2): the training relaxation; without:
    test-time rounding. Returns z (latents), y_hat (what the decoder saw), out, bits."""
    y = self.encode(x, cond, train)
    rate = self.bottleneck(y, noise)
    y_hat = rate["y_hat"]
    if noise is not None and self.straight_through:
      rounded = self.dequantize(self.quantize(y))
      y_hat = y + jax.lax.stop_gradient(rounded - y)
    return {"z": y, "y_hat": y_hat, "out": self.decode(y_hat, cond, train),
            "bits": rate["bits"]}


def uniform_noise(keys, latent_dim: int):
  """U(-1/2, 1/2) draws (B, latent_dim), one row per example key."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 7), (latent_dim,),
                                               minval=-0.5, maxval=0.5))(keys)


def rd_terms(model, params, batch, keys, cfg, train: bool, rngs=None):
  """Per-example terms (see the module docstring) of a batch {'x': (B, *shape)}."""
  x = batch["x"]
  noise = uniform_noise(keys, model.latent_dim) if train else None
  res = model.apply(params, x, None, train=train, noise=noise, rngs=rngs or {})
  recon = model.to_data(res["out"])
  sq = jnp.square(recon.reshape(x.shape[0], -1) - x.reshape(x.shape[0], -1))
  mse = jnp.mean(sq, axis=-1)
  if cfg.objective.rd_distortion == "mse":
    distortion = mse
  else:
    distortion = losses.batched(losses.RECON_LOSSES.get(cfg.model.recon_loss))(res["out"], x)
  bpp = res["bits"] / math.prod(x.shape[1:])
  aux = model.apply(params, method=RateDistortionAutoencoder.aux_loss)
  loss = distortion + cfg.objective.rd_lambda * bpp + aux
  psnr = -10.0 * jnp.log10(jnp.maximum(mse, 1e-10))
  return {"loss": loss, "distortion": distortion, "mse": mse, "psnr": psnr,
          "bits": res["bits"], "bpp": bpp, "aux": jnp.broadcast_to(aux, mse.shape)}
