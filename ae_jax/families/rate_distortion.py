"""`rate_distortion`: learned compression, encoder -> entropy bottleneck -> decoder,
trained on distortion + lambda * rate (Ballé et al.'s end-to-end optimised compression
with the factorized prior).

The latent y = Dense(encoder(x)) of `model.latent_dim` channels goes through
`ae_jax.entropy.EntropyBottleneck`. In training the rate is that of y + u,
u ~ U(-1/2, 1/2) drawn from each example's key; the decoder sees the same noisy latent
(`model.rd_quantization = 'noise'`) or the latent rounded on the median grid with a
straight-through gradient ('ste'; from scratch it can stall while every latent still
rounds to 0, since the decoder then sees exact zeros). In evaluation both are the rounded latent, so the
rate is that of the real integer symbols under the model. Terms per example:

  distortion  MSE of the data-space reconstruction (objective.rd_distortion 'mse'), or
              the model's recon_loss ('recon')
  mse, psnr   of the data-space reconstruction
  bits        -sum log2 P(y_hat): the rate of one example in bits
  bpp         bits per input value (bits per pixel for grey images)
  aux         the bottleneck's quantile fit (its gradient reaches only the quantiles)
  loss        distortion + objective.rd_lambda * bpp + aux

`objective.rd_lambda` is traced (`hparams`), so a whole rate-distortion curve trains in
one vmapped sweep (`ae_jax.vmap_trials.fit_trials`). Real bitstreams: `ae_jax.codec`.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import losses
from ae_jax.entropy import EntropyBottleneck
from ae_jax.families.base import (FAMILIES, Family, Terms, apply, check_recon_loss,
                                  common_kwargs, networks, require)
from ae_jax.families.common import Autoencoder

FIELDS = {
    "model.rd_quantization": "noise",     # noise | ste: what the decoder sees in training
    "model.rd_filters": (3, 3, 3),        # hidden widths of each channel's density network
    "model.rd_latent_scale": 10.0,        # y = scale * Dense(h); the decoder sees y_hat / scale
    "objective.rd_lambda": 0.01,          # weight of the rate, in bits per input value
    "objective.rd_distortion": "mse",     # mse (data space) | recon (model.recon_loss)
}


class RateDistortionAutoencoder(Autoencoder):
  """x (B, *shape) -> y (B, latent_dim) -> integer symbols -> y_hat -> x_hat (B, *shape).

  `analysis` gives the continuous latents, `symbols` their integers round(y - median),
  `encode` the test-time latents median + symbols (what the decoder sees), `decode` the
  raw output of y_hat and `reconstruct` the test-time reconstruction in data space.
  """
  filters: tuple[int, ...] = (3, 3, 3)
  straight_through: bool = False
  latent_scale: float = 10.0

  def setup(self):
    self.to_latent = nn.Dense(self.latent_dim, name="to_latent")
    self.bottleneck = EntropyBottleneck(self.latent_dim, filters=tuple(self.filters),
                                        name="bottleneck")

  def analysis(self, x, cond=None, train: bool = False):
    """Continuous latents (B, latent_dim) before quantisation, in units of the
    quantisation step (`latent_scale` times the Dense output: a unit step is small
    against the features' spread from the start, and Adam moves latents as fast)."""
    return self.latent_scale * self.to_latent(self.features(x, cond, train))

  def symbols(self, x, cond=None):
    """Integer symbols (B, latent_dim) int32 of examples x."""
    return self.bottleneck.quantize(self.analysis(x, cond))

  def dequantize(self, symbols):
    """Latent values (B, latent_dim) float32 of integer symbols."""
    return self.bottleneck.dequantize(symbols)

  def encode(self, x, cond=None, train: bool = False):
    """Test-time latents: the rounded y on each channel's median grid, (B, latent_dim)."""
    return self.dequantize(self.bottleneck.quantize(self.analysis(x, cond, train)))

  def decode(self, y_hat, cond=None, train: bool = False):
    """Raw decoder output (B, *shape) of (quantised) latents (B, latent_dim)."""
    return self.decoder(self.latent_in(y_hat / self.latent_scale, cond), train=train)

  def aux_loss(self):
    return self.bottleneck.aux_loss()

  def __call__(self, x, cond=None, train: bool = False, noise=None) -> dict[str, Any]:
    """With `noise` (B, latent_dim) in U(-1/2, 1/2): the training relaxation; without:
    test-time rounding. Returns z (continuous latents), y_hat (what the decoder saw),
    out (raw decoder output) and bits (B,)."""
    y = self.analysis(x, cond, train)
    rate = self.bottleneck(y, noise)
    y_hat = rate["y_hat"]
    if noise is not None and self.straight_through:
      rounded = self.dequantize(self.bottleneck.quantize(y))
      y_hat = y + jax.lax.stop_gradient(rounded - y)
    return {"z": y, "y_hat": y_hat, "out": self.decode(y_hat, cond, train),
            "bits": rate["bits"]}


def build(cfg, input_shape):
  enc, dec = networks(cfg, input_shape)
  return RateDistortionAutoencoder(enc, dec, filters=tuple(cfg.model.rd_filters),
                                   straight_through=cfg.model.rd_quantization == "ste",
                                   latent_scale=float(cfg.model.rd_latent_scale),
                                   **common_kwargs(cfg))


def uniform_noise(keys, latent_dim: int):
  """U(-1/2, 1/2) draws (B, latent_dim), one row from each example's key."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 7), (latent_dim,),
                                               minval=-0.5, maxval=0.5))(keys)


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  del step
  x = batch["x"]
  kw = {"noise": uniform_noise(keys, model.latent_dim)} if train else {}
  res = apply(model, params, x, batch, keys, cfg, train, **kw)
  flat = x.reshape(x.shape[0], -1)
  recon = model.to_data(res["out"]).reshape(flat.shape)
  mse = jnp.mean(jnp.square(recon - flat), axis=-1)
  if cfg.objective.rd_distortion == "mse":
    distortion = mse
  else:
    distortion = losses.batched(losses.RECON_LOSSES.get(cfg.model.recon_loss))(res["out"], x)
  bpp = res["bits"] / math.prod(x.shape[1:])
  aux = jnp.broadcast_to(model.apply(params, method=RateDistortionAutoencoder.aux_loss),
                         mse.shape)
  return {"loss": distortion + cfg.objective.rd_lambda * bpp + aux,
          "distortion": distortion, "mse": mse,
          "psnr": -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
          "bits": res["bits"], "bpp": bpp, "aux": aux}


def validate(cfg, input_shape):
  del input_shape
  m, o = cfg.model, cfg.objective
  check_recon_loss(cfg)
  require(m.rd_quantization in ("ste", "noise"),
          f"model.rd_quantization must be 'ste' or 'noise', got {m.rd_quantization!r}")
  require(all(isinstance(f, int) and f > 0 for f in m.rd_filters),
          f"model.rd_filters must be positive integers, got {m.rd_filters!r}")
  require(m.rd_latent_scale > 0,
          f"model.rd_latent_scale must be > 0, got {m.rd_latent_scale}")
  require(o.rd_distortion in ("mse", "recon"),
          f"objective.rd_distortion must be 'mse' or 'recon', got {o.rd_distortion!r}")
  require(o.rd_lambda >= 0, f"objective.rd_lambda must be >= 0, got {o.rd_lambda}")


FAMILIES.register("rate_distortion")(Family(
    "rate_distortion", build, terms, fields=FIELDS, validate=validate,
    hparams=("objective.rd_lambda",)))
