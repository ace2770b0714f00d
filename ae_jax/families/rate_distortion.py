"""`rate_distortion`: learned compression, encoder -> entropy bottleneck -> decoder,
trained on distortion + lambda * rate (Ballé et al.'s end-to-end optimised compression
with the factorized prior).

Two transforms (`model.rd_transform`):
  dense  y = Dense(encoder(x)) of `model.latent_dim` channels, the encoder and decoder
         being `model.network` (mlp, conv2d, ...);
  gdn    Ballé's convolutional transforms with GDN (`ae_jax.gdn`): images (H, W, C) ->
         spatial latents (H/4, W/4, model.rd_latent_channels), `model.rd_channels`
         hidden channels, `model.rd_kernel` kernels; the flat latent has
         H/4 * W/4 * rd_latent_channels values, one density per latent channel.
The latent goes through `ae_jax.entropy.EntropyBottleneck`. In training the rate is that of y + u,
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

`model.rd_init = 'pca'` starts a linear dense transform (`model.widths` empty) from the
KLT of a sample of the training data (the `init_from_data` hook, `pca_init`): latent i
is the projection on the i-th principal direction in units of `model.rd_init_step`, and
the decoder maps the latents back (to pixels with a linear output; with logits, a least
squares fit of the clipped data's logits).
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import losses
from ae_jax.errors import ConfigError
from ae_jax.entropy import EntropyBottleneck
from ae_jax.families.base import (FAMILIES, Family, Terms, apply, check_recon_loss,
                                  common_kwargs, networks, require)
from ae_jax.families.common import Autoencoder
from ae_jax.gdn import AnalysisTransform, SynthesisTransform

FIELDS = {
    "model.rd_quantization": "noise",     # noise | ste: what the decoder sees in training
    "model.rd_filters": (3, 3, 3),        # hidden widths of each channel's density network
    "model.rd_latent_scale": 10.0,        # y = scale * Dense(h); the decoder sees y_hat / scale
    "model.rd_transform": "dense",        # dense (model.network + Dense) | gdn (conv + GDN)
    "model.rd_channels": 32,              # gdn: hidden channels
    "model.rd_latent_channels": 16,       # gdn: channels of the (H/4, W/4) latent
    "model.rd_kernel": 5,                 # gdn: kernel size
    "model.rd_init": "random",            # random | pca: dense linear transform from the KLT
    "model.rd_init_step": 0.4,            # pca: quantisation step in data units of a projection
    "objective.rd_lambda": 0.01,          # weight of the rate, in bits per input value
    "objective.rd_distortion": "mse",     # mse (data space) | recon (model.recon_loss)
}


class RateDistortionAutoencoder(Autoencoder):
  """x (B, *shape) -> y (B, *latent) -> integer symbols -> y_hat -> x_hat (B, *shape).

  `latent_shape` () means y = Dense(encoder(x)) of (latent_dim,) values; otherwise the
  encoder gives the spatial latent (B, *latent_shape) itself (latent_dim = its size)
  and the decoder takes it. `analysis` gives the continuous latents (B, *latent),
  `symbols` their integers round(y - median) flattened to (B, latent_dim), `encode` the
  flat test-time latents median + symbols (what the decoder sees), `decode` the raw
  output of flat latents (B, latent_dim) and `reconstruct` the test-time reconstruction
  in data space.
  """
  filters: tuple[int, ...] = (3, 3, 3)
  straight_through: bool = False
  latent_scale: float = 10.0
  latent_shape: tuple[int, ...] = ()

  @property
  def bottleneck_channels(self) -> int:
    """Channels of the entropy model: the last latent axis."""
    return self.latent_shape[-1] if self.latent_shape else self.latent_dim

  @property
  def positions(self) -> int:
    """Latent values that share one channel's density (1 for a dense latent)."""
    return self.latent_dim // self.bottleneck_channels

  def setup(self):
    if not self.latent_shape:
      self.to_latent = nn.Dense(self.latent_dim, name="to_latent")
    self.bottleneck = EntropyBottleneck(self.bottleneck_channels, filters=tuple(self.filters),
                                        name="bottleneck")

  def _latent(self, flat):
    """Flat latents (B, latent_dim) -> (B, *latent_shape)."""
    return flat.reshape(flat.shape[0], *self.latent_shape) if self.latent_shape else flat

  def analysis(self, x, cond=None, train: bool = False):
    """Continuous latents (B, *latent) before quantisation, in units of the
    quantisation step (`latent_scale` times the transform's output: a unit step is small
    against the features' spread from the start, and Adam moves latents as fast)."""
    if self.latent_shape:
      return self.latent_scale * self.encoder(x, train=train)
    return self.latent_scale * self.to_latent(self.features(x, cond, train))

  def symbols(self, x, cond=None):
    """Integer symbols (B, latent_dim) int32 of examples x."""
    q = self.bottleneck.quantize(self.analysis(x, cond))
    return q.reshape(q.shape[0], -1)

  def dequantize(self, symbols):
    """Flat latent values (B, latent_dim) float32 of integer symbols (B, latent_dim)."""
    y_hat = self.bottleneck.dequantize(self._latent(symbols))
    return y_hat.reshape(y_hat.shape[0], -1)

  def encode(self, x, cond=None, train: bool = False):
    """Test-time latents: the rounded y on each channel's median grid, (B, latent_dim)."""
    q = self.bottleneck.quantize(self.analysis(x, cond, train))
    return self.dequantize(q.reshape(q.shape[0], -1))

  def decode(self, y_hat, cond=None, train: bool = False):
    """Raw decoder output (B, *shape) of flat (quantised) latents (B, latent_dim)."""
    if self.latent_shape:
      return self.decoder(self._latent(y_hat) / self.latent_scale, train=train)
    return self.decoder(self.latent_in(y_hat / self.latent_scale, cond), train=train)

  def aux_loss(self):
    return self.bottleneck.aux_loss()

  def __call__(self, x, cond=None, train: bool = False, noise=None) -> dict[str, Any]:
    """With `noise` (B, latent_dim) in U(-1/2, 1/2): the training relaxation; without:
    test-time rounding. Returns z (continuous latents), y_hat (what the decoder saw),
    both flat (B, latent_dim), out (raw decoder output) and bits (B,)."""
    y = self.analysis(x, cond, train)
    y_flat = y.reshape(y.shape[0], -1)
    rate = self.bottleneck(y, None if noise is None else self._latent(noise))
    y_hat = rate["y_hat"].reshape(y_flat.shape)
    if noise is not None and self.straight_through:
      rounded = self.bottleneck.dequantize(self.bottleneck.quantize(y)).reshape(y_flat.shape)
      y_hat = y_flat + jax.lax.stop_gradient(rounded - y_flat)
    bits = rate["bits"].reshape(y.shape[0], -1).sum(-1)
    return {"z": y_flat, "y_hat": y_hat, "out": self.decode(y_hat, cond, train), "bits": bits}


def latent_shape(cfg, input_shape) -> tuple[int, ...]:
  """The spatial latent shape (H/4, W/4, rd_latent_channels) of the gdn transform, () for
  the dense one."""
  if cfg.model.rd_transform != "gdn":
    return ()
  return (*(s // 4 for s in input_shape[:-1]), int(cfg.model.rd_latent_channels))


def build(cfg, input_shape):
  kw = common_kwargs(cfg)
  shape = latent_shape(cfg, input_shape)
  if shape:
    m = cfg.model
    impl = m.get("conv_impl", "auto")
    enc = AnalysisTransform(int(m.rd_channels), int(m.rd_latent_channels), int(m.rd_kernel),
                            conv_impl=impl)
    dec = SynthesisTransform(input_shape[-1], int(m.rd_channels), int(m.rd_kernel),
                             conv_impl=impl)
    kw["latent_dim"] = math.prod(shape)
  else:
    enc, dec = networks(cfg, input_shape)
  return RateDistortionAutoencoder(enc, dec, filters=tuple(cfg.model.rd_filters),
                                   straight_through=cfg.model.rd_quantization == "ste",
                                   latent_scale=float(cfg.model.rd_latent_scale),
                                   latent_shape=shape, **kw)


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


LOGIT_CLIP = 0.02  # pca init with logits: data clipped to [c, 1 - c] before the logit


def pca_init(params, x, cfg):
  """Params whose dense linear transform is the KLT of x (N, ...), the scaled sample.

  With mean mu and principal directions V (latent_dim, D) of the flattened sample and
  step s = model.rd_init_step: the latents are y = V (x - mu) / s (to_latent gets
  V^T / (latent_scale s) and -V mu / (latent_scale s)); the decoder sees y / latent_scale
  and gives mu + V^T (s y) with a linear output, or with logits the least-squares map
  from those inputs to logit(clip(x, LOGIT_CLIP, 1 - LOGIT_CLIP)).
  """
  m = cfg.model
  if m.get("rd_init", "random") != "pca":
    return params
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  k = int(m.latent_dim)
  if k > min(flat.shape):
    raise ConfigError(f"model.rd_init='pca' needs latent_dim <= min(sample size, input "
                      f"size) = {min(flat.shape)}, got {k}")
  mu = flat.mean(0)
  _, _, vt = np.linalg.svd(flat - mu, full_matrices=False)
  v = vt[:k]  # (k, D)
  unit = float(m.rd_latent_scale) * float(m.rd_init_step)
  inner = dict(params["params"])
  inner["to_latent"] = {"kernel": jnp.asarray(v.T / unit, jnp.float32),
                        "bias": jnp.asarray(-(v @ mu) / unit, jnp.float32)}
  codes = (flat - mu) @ v.T / unit  # what the decoder sees (before quantisation)
  if m.recon_loss == "bce":
    clipped = np.clip(flat, LOGIT_CLIP, 1.0 - LOGIT_CLIP)
    target = np.log(clipped) - np.log1p(-clipped)
    design = np.concatenate([codes, np.ones((len(codes), 1))], 1)
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    kernel, bias = solution[:-1], solution[-1]
  else:
    kernel, bias = unit * v, mu
  (name,) = inner["decoder"].keys()
  inner["decoder"] = {name: {"kernel": jnp.asarray(kernel, jnp.float32),
                             "bias": jnp.asarray(bias, jnp.float32)}}
  return {**params, "params": inner}


def validate(cfg, input_shape):
  m, o = cfg.model, cfg.objective
  check_recon_loss(cfg)
  require(m.rd_transform in ("dense", "gdn"),
          f"model.rd_transform must be 'dense' or 'gdn', got {m.rd_transform!r}")
  if m.rd_transform == "gdn":
    require(len(input_shape) == 3 and all(s % 4 == 0 for s in input_shape[:2]),
            f"model.rd_transform='gdn' needs images (H, W, C) with H and W divisible by 4 "
            f"(two stride-2 layers), got examples of shape {tuple(input_shape)}; pad the "
            "images or use rd_transform='dense'")
    for name in ("rd_channels", "rd_latent_channels", "rd_kernel"):
      require(isinstance(m[name], int) and m[name] > 0,
              f"model.{name} must be a positive integer, got {m[name]!r}")
  require(m.rd_quantization in ("ste", "noise"),
          f"model.rd_quantization must be 'ste' or 'noise', got {m.rd_quantization!r}")
  require(all(isinstance(f, int) and f > 0 for f in m.rd_filters),
          f"model.rd_filters must be positive integers, got {m.rd_filters!r}")
  require(m.rd_init in ("random", "pca"),
          f"model.rd_init must be 'random' or 'pca', got {m.rd_init!r}")
  if m.rd_init == "pca":
    require(m.rd_transform == "dense" and m.network == "mlp" and not tuple(m.widths),
            "model.rd_init='pca' starts a linear transform: it needs rd_transform='dense', "
            f"network='mlp' and no hidden widths (got rd_transform={m.rd_transform!r}, "
            f"network={m.network!r}, widths={tuple(m.widths)})")
    require(m.rd_init_step > 0, f"model.rd_init_step must be > 0, got {m.rd_init_step}")
    require(m.recon_loss in ("bce", "mse"),
            f"model.rd_init='pca' needs recon_loss 'bce' (logits) or 'mse', got {m.recon_loss!r}")
  require(m.rd_latent_scale > 0,
          f"model.rd_latent_scale must be > 0, got {m.rd_latent_scale}")
  require(o.rd_distortion in ("mse", "recon"),
          f"objective.rd_distortion must be 'mse' or 'recon', got {o.rd_distortion!r}")
  require(o.rd_lambda >= 0, f"objective.rd_lambda must be >= 0, got {o.rd_lambda}")


FAMILIES.register("rate_distortion")(Family(
    "rate_distortion", build, terms, fields=FIELDS, validate=validate,
    hparams=("objective.rd_lambda",), init_from_data=pca_init))
