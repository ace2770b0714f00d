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

`model.rd_prior = 'hyperprior'` replaces the factorized prior of y by the scale hyperprior
(Ballé, Minnen, Singh, Hwang, Johnston 2018): the hyper-analysis h_a maps |y| (flattened)
through an MLP of `model.rd_hyper_widths` to a hyper-latent z of `model.rd_hyper_dim`
values, which goes through the factorized `EntropyBottleneck`; the hyper-synthesis h_s
maps z_hat through the mirrored MLP to a positive scale sigma = max(softplus(h_s(z_hat)),
0.11) per latent (softplus, not exp: no overflow for large z), and y is coded with a
zero-mean Gaussian of that scale (`ae_jax.entropy.gaussian_likelihood`): symbols
round(y), uniform noise in training. The rate is bits(z) + bits(y | z); the term
`side_bits` reports bits(z). For coding, the scales are quantised to a fixed table
(`ae_jax.entropy.scale_index`).

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
from ae_jax.entropy import (EntropyBottleneck, SCALE_BOUND, gaussian_likelihood, lower_bound,
                            scale_index)
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
    "model.rd_prior": "factorized",       # factorized | hyperprior (scale hyperprior of y)
    "model.rd_hyper_dim": 32,             # hyperprior: size of the hyper-latent z
    "model.rd_hyper_widths": (128,),      # hyperprior: hidden widths of h_a (h_s mirrors them)
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

  With `hyper_dim` > 0 (the scale hyperprior), `bottleneck` models the hyper-latent z
  (hyper_dim,) instead of y, y's symbols are round(y), and `symbols` gives the side
  symbols of z followed by those of y, (B, hyper_dim + latent_dim); `scale_indices`
  maps the side symbols to each latent's coding table.
  """
  filters: tuple[int, ...] = (3, 3, 3)
  straight_through: bool = False
  latent_scale: float = 10.0
  latent_shape: tuple[int, ...] = ()
  hyper_dim: int = 0
  hyper_widths: tuple[int, ...] = (128,)

  @property
  def side_symbols(self) -> int:
    """Leading symbols of `symbols` that are side information (z), 0 without one."""
    return self.hyper_dim

  @property
  def bottleneck_channels(self) -> int:
    """Channels of the factorized entropy model: z's size with the hyperprior, else the
    last latent axis."""
    if self.hyper_dim:
      return self.hyper_dim
    return self.latent_shape[-1] if self.latent_shape else self.latent_dim

  @property
  def positions(self) -> int:
    """Values that share one channel's density in the factorized part (1 for a dense
    latent and for z)."""
    if self.hyper_dim:
      return 1
    return self.latent_dim // self.bottleneck_channels

  def setup(self):
    if not self.latent_shape:
      self.to_latent = nn.Dense(self.latent_dim, name="to_latent")
    self.bottleneck = EntropyBottleneck(self.bottleneck_channels, filters=tuple(self.filters),
                                        name="bottleneck")
    if self.hyper_dim:
      self.hyper_analysis = HyperTransform((*self.hyper_widths, self.hyper_dim),
                                           name="hyper_analysis")
      self.hyper_synthesis = HyperTransform((*reversed(self.hyper_widths), self.latent_dim),
                                            name="hyper_synthesis")

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

  def hyper_latent(self, y_flat):
    """The hyper-latent z = h_a(|y|), (B, latent_dim) -> (B, hyper_dim)."""
    return self.hyper_analysis(jnp.abs(y_flat))

  def scales(self, z_hat):
    """The Gaussian scale of every latent, max(softplus(h_s(z_hat)), SCALE_BOUND),
    (B, hyper_dim) -> (B, latent_dim)."""
    scale = jax.nn.softplus(self.hyper_synthesis(z_hat))
    return lower_bound(scale, jnp.asarray(SCALE_BOUND, scale.dtype))

  def scale_indices(self, side):
    """Coding table index (B, latent_dim) int32 of each latent from the side symbols
    (B, hyper_dim) of z: what encoder and decoder both compute."""
    return scale_index(self.scales(self.bottleneck.dequantize(side)))

  def symbols(self, x, cond=None):
    """Integer symbols of examples x: (B, latent_dim) int32, or with the hyperprior the
    side symbols of z then round(y), (B, hyper_dim + latent_dim)."""
    y = self.analysis(x, cond)
    if self.hyper_dim:
      y = y.reshape(y.shape[0], -1)
      side = self.bottleneck.quantize(self.hyper_latent(y))
      return jnp.concatenate([side, jnp.round(y).astype(jnp.int32)], axis=-1)
    q = self.bottleneck.quantize(y)
    return q.reshape(q.shape[0], -1)

  def dequantize(self, symbols):
    """Flat latent values (B, latent_dim) float32 of integer symbols (those of `symbols`)."""
    if self.hyper_dim:
      return symbols[:, self.hyper_dim:].astype(jnp.float32)
    y_hat = self.bottleneck.dequantize(self._latent(symbols))
    return y_hat.reshape(y_hat.shape[0], -1)

  def encode(self, x, cond=None, train: bool = False):
    """Test-time latents (B, latent_dim): the rounded y on each channel's median grid, or
    round(y) with the hyperprior."""
    y = self.analysis(x, cond, train)
    if self.hyper_dim:
      return jnp.round(y.reshape(y.shape[0], -1))
    q = self.bottleneck.quantize(y)
    return self.dequantize(q.reshape(q.shape[0], -1))

  def decode(self, y_hat, cond=None, train: bool = False):
    """Raw decoder output (B, *shape) of flat (quantised) latents (B, latent_dim)."""
    if self.latent_shape:
      return self.decoder(self._latent(y_hat) / self.latent_scale, train=train)
    return self.decoder(self.latent_in(y_hat / self.latent_scale, cond), train=train)

  def aux_loss(self):
    return self.bottleneck.aux_loss()

  def __call__(self, x, cond=None, train: bool = False, noise=None,
               hyper_noise=None) -> dict[str, Any]:
    """With `noise` (B, latent_dim) in U(-1/2, 1/2) (and with the hyperprior
    `hyper_noise` (B, hyper_dim)): the training relaxation; without: test-time rounding.
    Returns z (continuous latents), y_hat (what the decoder saw), both flat
    (B, latent_dim), out (raw decoder output) and bits (B,); with the hyperprior also
    side_bits (B,), the part of bits spent on the hyper-latent."""
    y = self.analysis(x, cond, train)
    y_flat = y.reshape(y.shape[0], -1)
    if self.hyper_dim:
      return self._hyperprior(y_flat, cond, train, noise, hyper_noise)
    rate = self.bottleneck(y, None if noise is None else self._latent(noise))
    y_hat = rate["y_hat"].reshape(y_flat.shape)
    if noise is not None and self.straight_through:
      rounded = self.bottleneck.dequantize(self.bottleneck.quantize(y)).reshape(y_flat.shape)
      y_hat = y_flat + jax.lax.stop_gradient(rounded - y_flat)
    bits = rate["bits"].reshape(y.shape[0], -1).sum(-1)
    return {"z": y_flat, "y_hat": y_hat, "out": self.decode(y_hat, cond, train), "bits": bits}

  def _hyperprior(self, y, cond, train, noise, hyper_noise):
    rounded = jnp.round(y)
    noisy = rounded if noise is None else y + noise
    side = self.bottleneck(self.hyper_latent(y), hyper_noise if noise is not None else None)
    p = gaussian_likelihood(noisy, self.scales(side["y_hat"]))
    y_hat = noisy
    if noise is not None and self.straight_through:
      y_hat = y + jax.lax.stop_gradient(rounded - y)
    bits = side["bits"] - jnp.sum(jnp.log2(p), axis=-1)
    return {"z": y, "y_hat": y_hat, "out": self.decode(y_hat, cond, train), "bits": bits,
            "side_bits": side["bits"]}


class HyperTransform(nn.Module):
  """Dense layers of `widths` with ReLU between them (none after the last): the
  hyper-analysis and hyper-synthesis MLPs, (B, F) -> (B, widths[-1])."""
  widths: tuple[int, ...]

  @nn.compact
  def __call__(self, h):
    for i, width in enumerate(self.widths):
      h = nn.Dense(width)(h)
      if i < len(self.widths) - 1:
        h = nn.relu(h)
    return h


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
  hyper = cfg.model.rd_prior == "hyperprior"
  return RateDistortionAutoencoder(enc, dec, filters=tuple(cfg.model.rd_filters),
                                   straight_through=cfg.model.rd_quantization == "ste",
                                   latent_scale=float(cfg.model.rd_latent_scale),
                                   latent_shape=shape,
                                   hyper_dim=int(cfg.model.rd_hyper_dim) if hyper else 0,
                                   hyper_widths=tuple(cfg.model.rd_hyper_widths), **kw)


def uniform_noise(keys, latent_dim: int, salt: int = 7):
  """U(-1/2, 1/2) draws (B, latent_dim), one row from each example's key (folded with
  `salt`: 7 for y, 8 for the hyper-latent z)."""
  return jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, salt), (latent_dim,),
                                               minval=-0.5, maxval=0.5))(keys)


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  del step
  x = batch["x"]
  kw = {"noise": uniform_noise(keys, model.latent_dim)} if train else {}
  if train and model.hyper_dim:
    kw["hyper_noise"] = uniform_noise(keys, model.hyper_dim, salt=8)
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
  out = {"loss": distortion + cfg.objective.rd_lambda * bpp + aux,
         "distortion": distortion, "mse": mse,
         "psnr": -10.0 * jnp.log10(jnp.maximum(mse, 1e-10)),
         "bits": res["bits"], "bpp": bpp, "aux": aux}
  if "side_bits" in res:
    out["side_bits"] = res["side_bits"]
  return out


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
  require(m.rd_prior in ("factorized", "hyperprior"),
          f"model.rd_prior must be 'factorized' or 'hyperprior', got {m.rd_prior!r}")
  if m.rd_prior == "hyperprior":
    require(isinstance(m.rd_hyper_dim, int) and not isinstance(m.rd_hyper_dim, bool)
            and m.rd_hyper_dim > 0,
            f"model.rd_hyper_dim must be a positive integer, got {m.rd_hyper_dim!r}")
    widths = m.rd_hyper_widths
    require(isinstance(widths, (tuple, list))
            and all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths),
            "model.rd_hyper_widths must be a tuple of positive integers (hidden widths of "
            f"the hyper-analysis and hyper-synthesis MLPs; () for linear ones), got {widths!r}")
  require(m.rd_latent_scale > 0,
          f"model.rd_latent_scale must be > 0, got {m.rd_latent_scale}")
  require(o.rd_distortion in ("mse", "recon"),
          f"objective.rd_distortion must be 'mse' or 'recon', got {o.rd_distortion!r}")
  require(o.rd_lambda >= 0, f"objective.rd_lambda must be >= 0, got {o.rd_lambda}")


FAMILIES.register("rate_distortion")(Family(
    "rate_distortion", build, terms, fields=FIELDS, validate=validate,
    hparams=("objective.rd_lambda",), init_from_data=pca_init))
