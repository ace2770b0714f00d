"""`vae` and `cvae`: variational autoencoders with a Gaussian posterior.

The objective is the negative ELBO with a Bernoulli (`recon_loss='bce'`) or Gaussian
likelihood and an analytic KL to the standard normal prior, weighted by beta (with an
optional warm-up during training; evaluation uses the target beta and also reports the
ELBO, beta = 1). With `objective.iw_samples = k > 1` the loss is the importance-weighted
bound of Burda et al. (IWAE). `cvae` conditions encoder and decoder on one-hot labels.

The prior is `model.prior`: 'standard' (N(0, I)) or 'vamp', the VampPrior of Tomczak and
Welling: p(z) = 1/K sum_k q(z | u_k), the mixture of the posteriors of K =
`model.vamp_components` learned pseudo-inputs u_k (clipped to the data range [0, 1]).
With the VampPrior the KL has no closed form and is the one-sample estimate
log q(z|x) - log p(z); importance weights and the NLL use the chosen prior.

With `model.latent2_dim = L2 > 0` the model has two stochastic layers, as in Burda et
al.'s two-layer IWAE: q(z1|x) q(z2|z1) and p(z2) p(z1|z2) p(x|z1), z1 of
`model.latent_dim` units, z2 of L2, both conditionals diagonal Gaussians computed by
`model.latent2_widths` hidden layers (`model.activation`) from the layer below (above).
The importance weights are p(x|z1) p(z1|z2) p(z2) / (q(z1|x) q(z2|z1)), the KL is their
one-sample estimate, and `encode` gives the posterior mean of z1.

A learned Gaussian scale (`model.learn_sigma`) is bounded below by
`model.min_log_sigma` (default -6, sigma >= 0.0025): without a floor the likelihood of
constant pixels is unbounded and an NLL in nats means nothing.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import losses
from ae_jax.families.base import (FAMILIES, Family, Terms, apply, common_kwargs, networks,
                                  require)
from ae_jax.families.common import Autoencoder
from ae_jax.networks import get_activation

FIELDS = {
    "model.learn_sigma": False,     # Gaussian likelihood: learn a per-feature sigma
    "model.min_log_sigma": -6.0,    # floor of the learned log sigma
    "objective.beta": 1.0,
    "objective.beta_warmup_steps": 0,
    "objective.iw_samples": 1,      # > 1: importance-weighted bound (IWAE)
    "objective.binarize": False,    # train on x ~ Bernoulli(x), a fresh draw per step
    "objective.output_sigma": 1.0,  # fixed Gaussian likelihood sigma
    "model.prior": "standard",      # standard | vamp (VampPrior, vae family)
    "model.vamp_components": 500,   # VampPrior: number of pseudo-inputs K
    "model.latent2_dim": 0,         # > 0: a second stochastic layer z2 above z (vae family)
    "model.latent2_widths": (100, 100),   # hidden widths of q(z2|z1) and p(z1|z2)
}
PRIORS = ("standard", "vamp")
# VampPrior pseudo-inputs start near the mean pixel of binary MNIST (Tomczak and Welling).
PSEUDO_INPUT_MEAN, PSEUDO_INPUT_STD = 0.05, 0.01
CVAE_FIELDS = {**FIELDS, "model.num_classes": 10}


class VAE(Autoencoder):
  """Gaussian posterior q(z|x) = N(mean, diag(exp(logvar))), standard normal prior.

  `encode` gives the posterior mean (a deterministic code); `__call__` takes
  `eps` (B, S, noise_dim) standard-normal draws and returns S reparameterised
  samples per example with their decodings (B, S, *input_shape).
  `learn_sigma` adds a per-feature learned log-sigma, floored at `min_log_sigma`.
  """
  learn_sigma: bool = False
  output_shape: tuple = ()
  min_log_sigma: float = -6.0
  prior: str = "standard"
  vamp_components: int = 0
  latent2_dim: int = 0          # > 0: a second stochastic layer (see the module docstring)
  latent2_widths: tuple = ()
  activation: str = "tanh"      # of the latent2_widths layers

  @property
  def noise_dim(self) -> int:
    """Standard-normal draws per posterior sample: z1's units, plus z2's if any."""
    return self.latent_dim + self.latent2_dim

  def setup(self):
    self.to_mean = nn.Dense(self.latent_dim, name="to_mean")
    self.to_logvar = nn.Dense(self.latent_dim, name="to_logvar")
    if self.latent2_dim:
      self.q_z2 = GaussianLayer(self.latent2_widths, self.latent2_dim, self.activation)
      self.p_z1 = GaussianLayer(self.latent2_widths, self.latent_dim, self.activation)
    if self.learn_sigma:
      self.log_sigma = self.param("log_sigma", nn.initializers.zeros, self.output_shape)
    if self.prior == "vamp":
      init = lambda key, shape: (PSEUDO_INPUT_MEAN
                                 + PSEUDO_INPUT_STD * jax.random.normal(key, shape))
      self.pseudo_raw = self.param("pseudo_inputs", init,
                                   (self.vamp_components, *self.output_shape))

  def pseudo_inputs(self):
    """The VampPrior's K pseudo-inputs (K, *input_shape), clipped to [0, 1]."""
    return jnp.clip(self.pseudo_raw, 0.0, 1.0)

  def prior_components(self, train: bool = False):
    """(means, logvars), each (K, latent_dim): the posteriors of the pseudo-inputs."""
    return self.posterior(self.pseudo_inputs(), None, train)

  def log_prior(self, z, train: bool = False):
    """log p(z) for z (..., latent_dim); returns (...)."""
    if self.prior != "vamp":
      return losses.diag_gaussian_log_density(z, 0.0, jnp.zeros_like(z))
    means, logvars = self.prior_components(train)
    return mixture_log_density(z, means, logvars)

  def sample_prior(self, key, num: int):
    """`num` draws (num, latent_dim) from the prior (with two stochastic layers, of z1:
    z2 ~ N(0, I), then z1 ~ p(z1 | z2))."""
    if self.latent2_dim:
      k2, k1 = jax.random.split(key)
      mean, logvar = self.p_z1(jax.random.normal(k2, (num, self.latent2_dim)))
      return mean + jnp.exp(0.5 * logvar) * jax.random.normal(k1, mean.shape)
    if self.prior != "vamp":
      return jax.random.normal(key, (num, self.latent_dim))
    k_comp, k_eps = jax.random.split(key)
    eps = jax.random.normal(k_eps, (num, self.latent_dim))
    means, logvars = self.prior_components()
    k = jax.random.randint(k_comp, (num,), 0, self.vamp_components)
    return means[k] + jnp.exp(0.5 * logvars[k]) * eps

  def posterior(self, x, cond=None, train: bool = False):
    h = self.features(x, cond, train)
    return self.to_mean(h), self.to_logvar(h)

  def encode(self, x, cond=None, train: bool = False):
    return self.posterior(x, cond, train)[0]

  def __call__(self, x, cond=None, eps=None, train: bool = False) -> dict[str, Any]:
    mean, logvar = self.posterior(x, cond, train)
    if eps is None:
      eps = jnp.zeros((x.shape[0], 1, self.noise_dim), mean.dtype)
    z = mean[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps[..., :self.latent_dim]
    b, s = z.shape[:2]
    flat_cond = None if cond is None else jnp.repeat(cond, s, axis=0)
    out = self.decode(z.reshape(b * s, -1), flat_cond, train)
    result = {"mean": mean, "logvar": logvar, "z": z, "out": out.reshape(b, s, *out.shape[1:])}
    if self.prior == "vamp":
      result["log_pz"] = self.log_prior(z, train)
    if self.latent2_dim:
      result.update(self.upper_layer(z, mean, logvar, eps[..., self.latent_dim:]))
    if self.learn_sigma:
      result["log_sigma"] = jnp.maximum(self.log_sigma, self.min_log_sigma)
    return result

  def upper_layer(self, z, mean, logvar, eps2):
    """The second stochastic layer for samples z (B, S, L) of z1 ~ q(z1|x) = N(mean,
    exp(logvar)) and standard-normal eps2 (B, S, L2): z2 = the reparameterised draw from
    q(z2|z1), 'log_pz' = log p(z2) + log p(z1|z2), 'log_qz' = log q(z1|x) + log q(z2|z1)."""
    mean2, logvar2 = self.q_z2(z)
    z2 = mean2 + jnp.exp(0.5 * logvar2) * eps2
    prior_mean, prior_logvar = self.p_z1(z2)
    log_p = (losses.diag_gaussian_log_density(z2, 0.0, jnp.zeros_like(z2))
             + losses.diag_gaussian_log_density(z, prior_mean, prior_logvar))
    log_q = (losses.diag_gaussian_log_density(z, mean[:, None], logvar[:, None])
             + losses.diag_gaussian_log_density(z2, mean2, logvar2))
    return {"z2": z2, "log_pz": log_p, "log_qz": log_q}


class GaussianLayer(nn.Module):
  """Dense layers of `widths` (`activation`), then the mean and log-variance (..., size)
  of a diagonal Gaussian: a conditional of the second stochastic layer."""
  widths: tuple
  size: int
  activation: str = "tanh"

  @nn.compact
  def __call__(self, h):
    act = get_activation(self.activation)
    for width in self.widths:
      h = act(nn.Dense(width)(h))
    return nn.Dense(self.size, name="mean")(h), nn.Dense(self.size, name="logvar")(h)


def _build(conditional: bool):
  def build(cfg, input_shape):
    enc, dec = networks(cfg, input_shape)
    common = common_kwargs(cfg, conditional)
    prior = cfg.model.get("prior", "standard")
    latent2 = cfg.model.get("latent2_dim", 0)
    return VAE(enc, dec, learn_sigma=bool(cfg.model.learn_sigma) and not common["logits"],
               output_shape=tuple(input_shape), min_log_sigma=cfg.model.min_log_sigma,
               prior=prior, vamp_components=cfg.model.vamp_components if prior == "vamp" else 0,
               latent2_dim=latent2,
               latent2_widths=tuple(cfg.model.latent2_widths) if latent2 else (),
               activation=cfg.model.activation, **common)
  return build


def mixture_log_density(z, means, logvars):
  """log (1/K sum_k N(z; means[k], diag(exp(logvars[k])))) for z (..., L); means and
  logvars (K, L). Written with matrix products, so memory is (..., K), not (..., K, L)."""
  inv = jnp.exp(-logvars)                                                # (K, L)
  const = jnp.sum(jnp.square(means) * inv + logvars + losses.LOG_2PI, axis=-1)  # (K,)
  quad = jnp.square(z) @ inv.T - 2.0 * z @ (means * inv).T               # (..., K)
  return jax.nn.logsumexp(-0.5 * (quad + const), axis=-1) - math.log(means.shape[0])


def log_likelihood(cfg, res, x):
  """log p(x | z) for every sample: res['out'] is (B, S, *shape); returns (B, S)."""
  if cfg.model.recon_loss == "bce":
    per = losses.bernoulli_log_likelihood
  else:
    log_sigma = res.get("log_sigma", jnp.log(cfg.objective.output_sigma))
    per = lambda out, xi: losses.gaussian_log_likelihood(out, xi, log_sigma)
  return jax.vmap(lambda outs, xi: jax.vmap(lambda o: per(o, xi))(outs))(res["out"], x)


def log_weights(cfg, res, x):
  """Importance log-weights log p(x|z) + log p(z) - log q(z|x), shape (B, S)."""
  return log_likelihood(cfg, res, x) + log_prior(res) - log_posterior(res)


def log_prior(res):
  """log p(z) of every sample (B, S): the model's prior (res['log_pz']) or N(0, I)."""
  z = res["z"]
  if "log_pz" in res:
    return res["log_pz"]
  return losses.diag_gaussian_log_density(z, 0.0, jnp.zeros_like(z))


def log_posterior(res):
  """log q(z | x) of every sample (B, S) (with two stochastic layers, of both: res['log_qz'])."""
  if "log_qz" in res:
    return res["log_qz"]
  return losses.diag_gaussian_log_density(res["z"], res["mean"][:, None],
                                          res["logvar"][:, None])


def kl_term(res):
  """KL(q(z|x) || p(z)) per example (B,): analytic for N(0, I); for another prior (or two
  stochastic layers) the estimate log q(z|x) - log p(z) averaged over the samples."""
  if "log_pz" in res:
    return jnp.mean(log_posterior(res) - res["log_pz"], axis=-1)
  return losses.batched(losses.gaussian_kl)(res["mean"], res["logvar"])


def beta_at(cfg, step):
  """beta at optimizer step `step` (linear warm-up), or the target beta when step is None."""
  warm = cfg.objective.beta_warmup_steps
  if step is not None and warm and warm > 0:
    return cfg.objective.beta * jnp.minimum(1.0, (step + 1) / warm)
  return jnp.asarray(cfg.objective.beta, jnp.float32)


def draw_eps(keys, samples: int, noise_dim: int):
  """Standard-normal draws (B, samples, noise_dim), one key per example."""
  return jax.vmap(lambda k: jax.random.normal(k, (samples, noise_dim)))(keys)


def noise_dim(cfg) -> int:
  """Draws per posterior sample of `cfg`'s model: latent_dim (+ latent2_dim)."""
  return cfg.model.latent_dim + cfg.model.get("latent2_dim", 0)


def binarize(keys, x):
  """Dynamic binarisation: x ~ Bernoulli(x) per pixel, one key per example; x (B, ...)."""
  draw = jax.vmap(lambda k, xi: jax.random.bernoulli(jax.random.fold_in(k, 1), xi))
  return draw(keys, jnp.clip(x, 0.0, 1.0)).astype(x.dtype)


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  x = batch["x"]
  if cfg.objective.get("binarize", False):
    x = binarize(keys, x)
  samples = cfg.objective.iw_samples
  res = apply(model, params, x, batch, keys, cfg, train,
              eps=draw_eps(keys, samples, noise_dim(cfg)))
  kl = kl_term(res)
  if samples == 1:
    rec = -log_likelihood(cfg, res, x)[:, 0]
    return {"loss": rec + beta_at(cfg, step) * kl, "recon": rec, "kl": kl,
            "elbo": -(rec + kl)}
  log_w = log_weights(cfg, res, x)
  bound = jax.nn.logsumexp(log_w, axis=-1) - math.log(samples)
  return {"loss": -bound, "iw_bound": bound, "kl": kl, "elbo": jnp.mean(log_w, axis=-1)}


def validate(cfg, input_shape):
  del input_shape
  m, o = cfg.model, cfg.objective
  require(m.recon_loss in ("bce", "gaussian", "mse"),
          f"a VAE needs model.recon_loss 'bce' (Bernoulli) or 'gaussian'; got {m.recon_loss!r}")
  require(o.beta >= 0, f"objective.beta must be >= 0, got {o.beta}")
  require(isinstance(o.iw_samples, int) and o.iw_samples >= 1,
          f"objective.iw_samples must be an integer >= 1, got {o.iw_samples!r}")
  require(o.output_sigma > 0, f"objective.output_sigma must be > 0, got {o.output_sigma}")
  require(not o.get("binarize", False) or m.recon_loss == "bce",
          "objective.binarize draws binary pixels: it needs model.recon_loss 'bce'")
  require(m.get("prior", "standard") in PRIORS,
          f"model.prior must be one of {', '.join(PRIORS)}; got {m.get('prior')!r}")
  if m.get("prior") == "vamp":
    require(isinstance(m.vamp_components, int) and m.vamp_components >= 1,
            f"model.vamp_components must be an integer >= 1, got {m.vamp_components!r}")
    require(m.family != "cvae", "the VampPrior (model.prior='vamp') is for family 'vae'; "
            "a cvae's pseudo-inputs would need labels")
  latent2 = m.get("latent2_dim", 0)
  require(isinstance(latent2, int) and latent2 >= 0,
          f"model.latent2_dim must be an integer >= 0 (0: one stochastic layer), got {latent2!r}")
  if latent2:
    require(m.family == "vae" and m.get("prior", "standard") == "standard",
            "two stochastic layers (model.latent2_dim > 0) are for family 'vae' with "
            "model.prior 'standard' (z2's prior is N(0, I)); set model.latent2_dim = 0")
    widths = m.latent2_widths
    require(all(isinstance(w, int) and w > 0 for w in widths),
            f"model.latent2_widths must be positive integers, got {tuple(widths)!r}")
    get_activation(m.activation)
  if m.family == "cvae":
    require(m.num_classes > 1, "family 'cvae' needs model.num_classes > 1 and labels in the data")


def elbo_terms(model, params, x, cond, key, cfg, num_samples: int = 1):
  """Monte Carlo ELBO per example (B,) with `num_samples` samples and the same draws
  that `iw_bound` uses for the same key, plus the analytic-KL ELBO."""
  keys = jax.random.split(key, x.shape[0])
  res = model.apply(params, x, cond, eps=draw_eps(keys, num_samples, model.noise_dim))
  log_w = log_weights(cfg, res, x)
  kl = kl_term(res)
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
    res = model.apply(params, x, cond, eps=draw_eps(ks, chunk, model.noise_dim))
    lse = jax.nn.logsumexp(log_weights(cfg, res, x), axis=-1)
    return jnp.logaddexp(carry, lse), None

  total, _ = jax.lax.scan(body, jnp.full((x.shape[0],), -jnp.inf), keys)
  return -(total - math.log(num_samples))


_HPARAMS = ("objective.beta", "objective.output_sigma")
FAMILIES.register("vae")(Family("vae", _build(False), terms, fields=FIELDS, validate=validate,
                                hparams=_HPARAMS, can_sample=True))
FAMILIES.register("cvae")(Family("cvae", _build(True), terms, fields=CVAE_FIELDS,
                                 validate=validate, hparams=_HPARAMS, conditional=True,
                                 can_sample=True))
