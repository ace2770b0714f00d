"""Autoencoder families: a module builder plus an objective, chosen by name.

A family's `terms(model, params, batch, keys, step, cfg, dropout_rng)` returns a dict of
PER-EXAMPLE arrays (leading axis B, one PRNG key per example in `keys`); `loss` must be
among them. The trainer reduces them with weights in one place and then calls
`finalize(means, cfg)` for terms that depend on batch statistics (sparsity KL, FVU,
codebook perplexity). The trainer never knows which family it trains.
"""

import dataclasses
import math
import warnings
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import losses
from ae_jax.corruption import CORRUPTIONS
from ae_jax.errors import ConfigError
from ae_jax.models import VAE, VQVAE, Autoencoder, SparseAutoencoder
from ae_jax.networks import NETWORKS
from ae_jax.registry import Registry
import sae_parts_draft as sae

Terms = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Family:
  """How to build a family's module and compute its per-example loss terms."""
  name: str
  build: Callable[[ml_collections.ConfigDict, tuple], nn.Module]
  terms: Callable[..., Terms]
  finalize: Callable[[dict, ml_collections.ConfigDict], dict] = lambda means, cfg: means
  conditional: bool = False
  # Properties that code outside asks for instead of a family's name.
  can_sample: bool = False      # has a prior to sample latents from (`Trained.sample`)
  # Dotted config fields of the objective that may be traced (vmapped across trials).
  hparams: tuple[str, ...] = ()
  # post_update(params, previous, means, cfg) -> params: runs after every optimizer step
  # on the new parameters (previous: those the step started from; means: the step's
  # global means of the terms, per-unit vectors included), e.g. a projection.
  post_update: Callable | None = None
  # init_from_data(params, x, cfg) -> params: data-dependent initialisation from a
  # sample x (N, *input_shape) of the scaled training data, before the first step.
  init_from_data: Callable | None = None


FAMILIES: Registry[Family] = Registry("family")


def get_family(name: str) -> Family:
  return FAMILIES.get(name)


def build_model(cfg: ml_collections.ConfigDict, input_shape) -> nn.Module:
  """Validate `cfg` against the example shape and build the family's module."""
  family = get_family(cfg.model.family)
  validate_config(cfg, tuple(input_shape))
  return family.build(cfg, tuple(input_shape))


def _require(cond: bool, message: str):
  if not cond:
    raise ConfigError(message)


def validate_config(cfg: ml_collections.ConfigDict, input_shape: tuple) -> None:
  """Range and consistency checks that must fail before anything is compiled."""
  m, o = cfg.model, cfg.objective
  get_family(m.family)
  NETWORKS.get(m.network)
  _require(isinstance(m.latent_dim, int) and m.latent_dim > 0,
           f"model.latent_dim must be a positive integer, got {m.latent_dim!r}")
  _require(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
  input_size = math.prod(input_shape)
  if m.family in ("ae", "denoising") and m.latent_dim >= input_size:
    warnings.warn(
        f"model.latent_dim={m.latent_dim} is not smaller than the input size {input_size}: "
        "an undercomplete autoencoder can learn the identity; lower model.latent_dim",
        UserWarning, stacklevel=3)
  if m.family == "sparse":
    sae.validate(cfg, input_shape)
  if m.family == "denoising":
    CORRUPTIONS.get(o.noise)
    _require(o.noise_level >= 0, f"objective.noise_level must be >= 0, got {o.noise_level}")
    if o.noise in ("salt_pepper", "masking"):
      _require(o.noise_level <= 1, f"objective.noise_level is a rate for {o.noise!r} noise "
               f"and must be in [0, 1], got {o.noise_level}")
    if o.noise == "block":
      smallest = min(input_shape[:-1]) if len(input_shape) > 1 else input_shape[0]
      _require(0 < o.block_size <= smallest,
               f"objective.block_size must be in [1, {smallest}], got {o.block_size}")
  if m.family in ("vae", "cvae"):
    _require(m.recon_loss in ("bce", "gaussian", "mse"),
             f"a VAE needs model.recon_loss 'bce' (Bernoulli) or 'gaussian'; got {m.recon_loss!r}")
    _require(o.beta >= 0, f"objective.beta must be >= 0, got {o.beta}")
    _require(isinstance(o.iw_samples, int) and o.iw_samples >= 1,
             f"objective.iw_samples must be an integer >= 1, got {o.iw_samples!r}")
    _require(o.output_sigma > 0, f"objective.output_sigma must be > 0, got {o.output_sigma}")
    _require(not o.get("binarize", False) or m.recon_loss == "bce",
             "objective.binarize draws binary pixels: it needs model.recon_loss 'bce'")
  else:
    losses.RECON_LOSSES.get(m.recon_loss)
  if m.family == "cvae":
    _require(m.num_classes > 1, "family 'cvae' needs model.num_classes > 1 and labels in the data")
  if m.family == "vqvae":
    _require(m.latent_dim % m.code_dim == 0,
             f"model.latent_dim={m.latent_dim} must be a multiple of model.code_dim={m.code_dim}")
    _require(m.num_codes >= 2, f"model.num_codes must be >= 2, got {m.num_codes}")


def _networks(cfg, input_shape):
  return NETWORKS.get(cfg.model.network)(cfg.model, input_shape, cfg.model.latent_dim)


def _common(cfg):
  return dict(latent_dim=cfg.model.latent_dim, logits=cfg.model.recon_loss == "bce",
              num_classes=cfg.model.num_classes if cfg.model.family == "cvae" else 0)


def _cond(model, batch):
  return batch["y"] if model.num_classes else None


def _apply(model, params, x, batch, dropout_rng, **kw):
  return model.apply(params, x, _cond(model, batch), train=True,
                     rngs={"dropout": dropout_rng}, **kw)


def recon_terms(cfg, out, x) -> Terms:
  rec = losses.batched(losses.RECON_LOSSES.get(cfg.model.recon_loss))(out, x)
  return {"loss": rec, "recon": rec}


def activity_terms(z, active) -> Terms:
  """L0 and firing per latent; `finalize_activity` turns firing into a dead-latent share."""
  return {"l0": jnp.sum(active, axis=-1), "firing": active}


def finalize_activity(means: dict) -> dict:
  if "firing" in means:
    means = dict(means)
    means["dead_latents"] = jnp.sum(means["firing"] <= 0).astype(jnp.float32)
    means["dead_fraction"] = means["dead_latents"] / means["firing"].shape[-1]
  return means


# ---- ae ----------------------------------------------------------------------------

def _build_ae(cfg, input_shape):
  enc, dec = _networks(cfg, input_shape)
  return Autoencoder(enc, dec, **_common(cfg))


def _ae_terms(model, params, batch, keys, step, cfg, dropout_rng) -> Terms:
  del keys, step
  x = batch["x"]
  out = _apply(model, params, x, batch, dropout_rng)["out"]
  return recon_terms(cfg, out, x)


FAMILIES.register("ae")(Family("ae", _build_ae, _ae_terms))


# ---- sparse ------------------------------------------------------------------------

_SPARSE_CODES = {"l1": "relu", "kl": "sigmoid", "topk": "topk", "batch_topk": "batch_topk",
                 "jumprelu": "jumprelu"}


def _build_sparse(cfg, input_shape):
  m = cfg.model
  if m.dictionary:
    return sae.SparseDictionary(tuple(input_shape), m.latent_dim, _SPARSE_CODES[m.sparsity],
                                k=m.k, tied_init=m.tied_init,
                                jump_threshold_init=m.jump_threshold_init,
                                jump_bandwidth=m.jump_bandwidth, logits=m.recon_loss == "bce")
  enc, dec = _networks(cfg, input_shape)
  return SparseAutoencoder(enc, dec, code=_SPARSE_CODES[cfg.model.sparsity],
                           k=cfg.model.k, **_common(cfg))


def _sparse_terms(model, params, batch, keys, step, cfg, dropout_rng) -> Terms:
  del keys, step
  x = batch["x"]
  res = _apply(model, params, x, batch, dropout_rng)
  z, out = res["z"], res["out"]
  terms = recon_terms(cfg, out, x)
  if cfg.model.dictionary:
    extra, extra_loss = sae.dictionary_terms(model, params, x, res, cfg, True)
    terms.update(extra)
    terms["loss"] = terms["loss"] + extra_loss
  flat_x = x.reshape(x.shape[0], -1)
  recon_x = (jax.nn.sigmoid(out) if model.logits else out).reshape(flat_x.shape)
  terms["sq_err"] = jnp.sum(jnp.square(recon_x - flat_x), -1)
  terms["sq_norm"] = jnp.sum(jnp.square(flat_x), -1)
  terms["x_mean"] = flat_x
  if cfg.model.sparsity == "kl":
    terms["code"] = z
    active = (z > 0.5).astype(jnp.float32)
  else:
    active = (z != 0).astype(jnp.float32)
  terms.update(activity_terms(z, active))
  if cfg.model.sparsity == "l1" and "l1" not in terms:
    l1 = jnp.sum(jnp.abs(z), axis=-1)
    terms["l1"] = l1
    terms["loss"] = terms["loss"] + cfg.objective.l1_weight * l1
  return terms


def _sparse_finalize(means, cfg):
  means = sae.finalize_dictionary(finalize_activity(dict(means)), cfg)
  variance = means["sq_norm"] - jnp.sum(jnp.square(means["x_mean"]))
  means["fvu"] = means["sq_err"] / jnp.maximum(variance, 1e-12)
  if cfg.model.sparsity == "kl":
    kl = losses.sparsity_kl(cfg.objective.kl_rho, means["code"])
    means["sparsity_kl"] = kl
    means["loss"] = means["loss"] + cfg.objective.kl_weight * kl
  return means


FAMILIES.register("sparse")(Family("sparse", _build_sparse, _sparse_terms, _sparse_finalize,
                                   hparams=("objective.l1_weight", "objective.kl_weight",
                                            "objective.kl_rho"),
                                   post_update=sae.post_update,
                                   init_from_data=sae.init_from_data))


# ---- denoising ---------------------------------------------------------------------

def corrupt(cfg, keys, x):
  """Corrupt each example of x (B, ...) with its own key, as cfg.objective.noise says."""
  fn = CORRUPTIONS.get(cfg.objective.noise)
  return jax.vmap(lambda k, xi: fn(k, xi, cfg.objective.noise_level, cfg.objective))(keys, x)


def _denoising_terms(model, params, batch, keys, step, cfg, dropout_rng) -> Terms:
  del step
  x = batch["x"]
  noisy = corrupt(cfg, keys, x)
  out = _apply(model, params, noisy, batch, dropout_rng)["out"]
  return recon_terms(cfg, out, x)


FAMILIES.register("denoising")(Family("denoising", _build_ae, _denoising_terms,
                                      hparams=("objective.noise_level",)))


# ---- vae / cvae --------------------------------------------------------------------

def _build_vae(cfg, input_shape):
  enc, dec = _networks(cfg, input_shape)
  common = _common(cfg)
  common["logits"] = cfg.model.recon_loss == "bce"
  return VAE(enc, dec, learn_sigma=bool(cfg.model.learn_sigma) and not common["logits"],
             output_shape=tuple(input_shape), **common)


def log_likelihood(cfg, res, x):
  """log p(x | z) for every sample: res['out'] is (B, S, *shape); returns (B, S)."""
  if cfg.model.recon_loss == "bce":
    per = lambda out, xi: losses.bernoulli_log_likelihood(out, xi)
  else:
    log_sigma = res.get("log_sigma", jnp.log(cfg.objective.output_sigma))
    per = lambda out, xi: losses.gaussian_log_likelihood(out, xi, log_sigma)
  return jax.vmap(lambda outs, xi: jax.vmap(lambda o: per(o, xi))(outs))(res["out"], x)


def log_weights(cfg, res, x):
  """Importance log-weights log p(x|z) + log p(z) - log q(z|x), shape (B, S)."""
  log_px = log_likelihood(cfg, res, x)
  z = res["z"]
  log_pz = losses.diag_gaussian_log_density(z, 0.0, jnp.zeros_like(z))
  log_qz = losses.diag_gaussian_log_density(z, res["mean"][:, None], res["logvar"][:, None])
  return log_px + log_pz - log_qz


def beta_at(cfg, step):
  warm = cfg.objective.beta_warmup_steps
  if warm and warm > 0:
    return cfg.objective.beta * jnp.minimum(1.0, (step + 1) / warm)
  return jnp.asarray(cfg.objective.beta, jnp.float32)


def draw_eps(keys, samples: int, latent_dim: int):
  return jax.vmap(lambda k: jax.random.normal(k, (samples, latent_dim)))(keys)


def binarize(keys, x):
  """Dynamic binarisation: x ~ Bernoulli(x) per pixel, one key per example; x (B, ...)."""
  draw = jax.vmap(lambda k, xi: jax.random.bernoulli(jax.random.fold_in(k, 1), xi))
  return draw(keys, jnp.clip(x, 0.0, 1.0)).astype(x.dtype)


def _vae_terms(model, params, batch, keys, step, cfg, dropout_rng) -> Terms:
  x = batch["x"]
  if cfg.objective.get("binarize", False):
    x = binarize(keys, x)
  samples = cfg.objective.iw_samples
  res = _apply(model, params, x, batch, dropout_rng,
               eps=draw_eps(keys, samples, cfg.model.latent_dim))
  kl = losses.batched(losses.gaussian_kl)(res["mean"], res["logvar"])
  if samples == 1:
    rec = -log_likelihood(cfg, res, x)[:, 0]
    elbo = -(rec + kl)
    loss = rec + beta_at(cfg, step) * kl
    return {"loss": loss, "recon": rec, "kl": kl, "elbo": elbo}
  bound = jax.nn.logsumexp(log_weights(cfg, res, x), axis=-1) - math.log(samples)
  return {"loss": -bound, "iw_bound": bound, "kl": kl}


_VAE_HPARAMS = ("objective.beta", "objective.output_sigma")
FAMILIES.register("vae")(Family("vae", _build_vae, _vae_terms, can_sample=True,
                                hparams=_VAE_HPARAMS))
FAMILIES.register("cvae")(Family("cvae", _build_vae, _vae_terms, conditional=True,
                                 can_sample=True, hparams=_VAE_HPARAMS))


def elbo_terms(model, params, x, cond, key, cfg, num_samples: int = 1):
  """Monte Carlo ELBO per example (B,) with `num_samples` samples and the same draws
  that `iw_bound` uses for the same key, plus the analytic-KL ELBO."""
  keys = jax.random.split(key, x.shape[0])
  res = model.apply(params, x, cond, eps=draw_eps(keys, num_samples, model.latent_dim))
  log_w = log_weights(cfg, res, x)
  kl = losses.batched(losses.gaussian_kl)(res["mean"], res["logvar"])
  analytic = jnp.mean(log_likelihood(cfg, res, x), -1) - kl
  return {"mc_elbo": jnp.mean(log_w, -1), "elbo": analytic,
          "iw_bound": jax.nn.logsumexp(log_w, -1) - math.log(num_samples)}


def importance_sampled_nll(model, params, x, key, cfg, num_samples: int = 5000,
                           chunk: int = 500, cond=None):
  """-log p(x) estimated with `num_samples` draws from q(z|x), per example (B,).

  Samples are drawn `chunk` at a time and combined with a running logsumexp, so
  memory is bounded by B * chunk decodings.
  """
  if num_samples % chunk:
    chunk = math.gcd(num_samples, chunk)
  keys = jax.random.split(key, num_samples // chunk)

  def body(carry, k):
    ks = jax.random.split(k, x.shape[0])
    res = model.apply(params, x, cond, eps=draw_eps(ks, chunk, model.latent_dim))
    lse = jax.nn.logsumexp(log_weights(cfg, res, x), axis=-1)
    return jnp.logaddexp(carry, lse), None

  total, _ = jax.lax.scan(body, jnp.full((x.shape[0],), -jnp.inf), keys)
  return -(total - math.log(num_samples))


# ---- vqvae -------------------------------------------------------------------------

def _build_vqvae(cfg, input_shape):
  enc, dec = _networks(cfg, input_shape)
  return VQVAE(enc, dec, num_codes=cfg.model.num_codes, code_dim=cfg.model.code_dim,
               **_common(cfg))


def _vqvae_terms(model, params, batch, keys, step, cfg, dropout_rng) -> Terms:
  del keys, step
  x = batch["x"]
  res = _apply(model, params, x, batch, dropout_rng)
  terms = recon_terms(cfg, res["out"], x)
  sg = jax.lax.stop_gradient
  ze, q = res["z_e"], res["q"]
  codebook = jnp.mean(jnp.square(sg(ze) - q), axis=(1, 2))
  commit = jnp.mean(jnp.square(ze - sg(q)), axis=(1, 2))
  terms["codebook"] = codebook
  terms["commitment"] = commit
  terms["loss"] = terms["loss"] + codebook + cfg.objective.commitment * commit
  terms["code_hist"] = jnp.mean(jax.nn.one_hot(res["indices"], model.num_codes), axis=1)
  return terms


def _vqvae_finalize(means, cfg):
  del cfg
  means = dict(means)
  p = means["code_hist"]
  means["perplexity"] = jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(p), 0.0)))
  return means


FAMILIES.register("vqvae")(Family("vqvae", _build_vqvae, _vqvae_terms, _vqvae_finalize,
                                  hparams=("objective.commitment",)))


def scalar_metrics(means: dict[str, Any]) -> dict[str, jax.Array]:
  """Drop the per-unit vectors that only serve `finalize` (firing, code, x_mean, ...)."""
  return {k: v for k, v in means.items() if jnp.ndim(v) == 0}
