"""`sparse`: an autoencoder whose code is pushed to be sparse.

Two architectures. The default runs the configured network (`model.network`) with a
sparse code on its latent layer; `model.dictionary=True` is the sparse autoencoder of
interpretability research, a linear dictionary (see `SparseDictionary`):

  pre = (x - b_pre) W_enc + b_enc,  z = act(pre),  x_hat = z W_dec + b_pre.

`model.sparsity` chooses the code and its penalty:
  l1          ReLU code, `objective.l1_weight` * |z|_1 per example; with
              `objective.l1_decoder_norm` each |z_i| is weighted by its decoder row's
              norm (Anthropic's recipe: the penalty cannot be dodged by shrinking codes
              and growing the decoder);
  kl          sigmoid code, `objective.kl_weight` * KL(rho || rho_hat), rho_hat each unit's
              mean activation over the GLOBAL batch;
  topk        the `model.k` largest ReLU pre-activations of each example (so at most k);
  batch_topk  (dictionary) the k*B largest ReLU pre-activations of a training batch of B
              (on several devices: of each device's slice); evaluation gates each
              pre-activation with the running mean of the training batches' smallest
              kept value (`sae_stats`), so an example's code does not depend on its batch;
  jumprelu    (dictionary) z = pre * H(pre - theta) with a learned per-latent threshold,
              `objective.l0_weight` * L0 penalty, straight-through gradients to theta
              through a rectangle kernel of width `model.jump_bandwidth`.
Dictionary settings: `model.unit_decoder` re-projects the decoder rows onto the unit
sphere after every optimizer step (a projection, in the family's `post_update` hook);
`objective.auxk` > 0 adds OpenAI's AuxK loss, the top `auxk` dead latents (not fired in
the last `model.dead_window` training examples) reconstructing the residual, weighted by
`objective.auxk_weight`; `model.tied_init` starts the encoder as the decoder's transpose;
`model.pre_bias_init` sets b_pre to the training data's mean or geometric median before
the first step (the `init_from_data` hook); with `model.jump_init_l0` > 0 the same hook
sets each JumpReLU threshold so that its latent fires on jump_init_l0 / latent_dim of the
sample (the initial L0 is then jump_init_l0 and no latent starts dead).
JumpReLU's thresholds are stored as log(threshold) / `model.jump_threshold_lr_scale`, so
that an optimizer step moves log(threshold) that many times further than it moves the
other parameters (Adam's step is about the learning rate whatever the gradient's scale);
`objective.l0_warmup_steps` warms the L0 coefficient up linearly from 0, as the JumpReLU
paper does (Rajamanoharan et al., 2024).
Reported: L0, fraction of variance unexplained (FVU), dead latents (never fired in the
batch or evaluation set; `dead_window_fraction`: not fired within the window, in
training), dense latents (firing on more than 10 % of the examples).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import losses
from ae_jax.families.base import (FAMILIES, Family, Terms, activity_terms, apply,
                                  check_recon_loss, common_kwargs, finalize_activity,
                                  networks, recon_terms, require)
from ae_jax.families.common import Autoencoder

FIELDS = {
    "model.sparsity": "l1",         # l1 | kl | topk | batch_topk | jumprelu
    "model.k": 4,                   # top-k active latents (batch_topk: on average)
    "model.dictionary": False,      # a linear dictionary SAE instead of model.network
    "model.unit_decoder": False,    # dictionary: unit-norm decoder rows after every step
    "model.tied_init": True,        # dictionary: encoder initialised as the decoder's transpose
    "model.pre_bias_init": "zeros", # dictionary: zeros | mean | geometric_median of the data
    "model.dead_window": 4096,      # dictionary: a latent not fired in this many examples is dead
    "model.jump_threshold_init": 1e-3,  # jumprelu: initial threshold (floor with jump_init_l0)
    "model.jump_init_l0": 0.0,      # jumprelu: > 0 = thresholds from the data for this initial L0
    "model.jump_bandwidth": 1e-3,   # jumprelu: width of the straight-through kernel
    "model.jump_threshold_lr_scale": 1.0,  # jumprelu: the thresholds learn this much faster
    "objective.l1_weight": 1e-3,
    "objective.l1_decoder_norm": False,  # weight |z_i| by the norm of decoder row i
    "objective.l0_weight": 1e-3,    # jumprelu: weight of the L0 penalty
    "objective.l0_warmup_steps": 0, # jumprelu: l0_weight rises linearly from 0 over these steps
    "objective.auxk": 0,            # dictionary: k of the AuxK loss on dead latents; 0 = off
    "objective.auxk_weight": 1 / 32,
    "objective.kl_rho": 0.05,
    "objective.kl_weight": 0.1,
}


class SparseAutoencoder(Autoencoder):
  """Autoencoder whose code is `relu` (L1 penalty), `sigmoid` (KL target rate) or `topk`.

  With `topk`, at most k units of each code are nonzero: the k largest
  pre-activations are kept where positive and the rest set to zero.
  """
  code: str = "relu"
  k: int = 0

  def encode(self, x, cond=None, train: bool = False):
    pre = self.to_latent(self.features(x, cond, train))
    if self.code == "relu":
      return nn.relu(pre)
    if self.code == "sigmoid":
      return nn.sigmoid(pre)
    return topk(pre, self.k)


DENSE_FREQUENCY = 0.1      # a latent firing on more than this share of examples is "dense"
THRESHOLD_DECAY = 0.99     # BatchTopK: decay of the running mean of the batch threshold
STATS = "sae_stats"        # the variable collection of the dictionary's training statistics


# ---- activations ---------------------------------------------------------------------

def topk(pre, k: int):
  """Keep the k largest entries of the last axis that are positive, zero the others:
  top-k over ReLU pre-activations (ties broken by index). pre (..., L) -> (..., L)."""
  _, idx = jax.lax.top_k(pre, k)
  keep = jnp.put_along_axis(jnp.zeros_like(pre), idx, 1.0, axis=-1, inplace=False)
  return nn.relu(pre) * keep


def batch_topk(pre, k: int):
  """BatchTopK: over a batch pre (B, L), keep the k*B largest positive entries of the
  whole batch (an example may keep more or fewer than k), zero the others. Returns the
  codes (B, L) and the smallest kept value (the batch's threshold; 0 if none kept)."""
  flat = nn.relu(pre).reshape(-1)
  values, idx = jax.lax.top_k(flat, k * pre.shape[0])
  codes = jnp.zeros_like(flat).at[idx].set(values).reshape(pre.shape)
  kept = values > 0
  threshold = jnp.where(jnp.any(kept), jnp.min(jnp.where(kept, values, jnp.inf)), 0.0)
  return codes, threshold


def _rectangle(u):
  return ((u > -0.5) & (u < 0.5)).astype(u.dtype)


def _sum_to(g, shape):
  return g.reshape(-1, *shape).sum(0)


@jax.custom_vjp
def jumprelu(pre, threshold, bandwidth):
  """pre * H(pre - threshold), pre (..., L), threshold (L,) > 0. Gradient to pre: the
  gate H; to the threshold the straight-through pseudo-derivative
  -(threshold / bandwidth) * rect((pre - threshold) / bandwidth) (Rajamanoharan et al.)."""
  return pre * (pre > threshold).astype(pre.dtype)


def _jumprelu_fwd(pre, threshold, bandwidth):
  return jumprelu(pre, threshold, bandwidth), (pre, threshold, bandwidth)


def _jumprelu_bwd(res, g):
  pre, threshold, bandwidth = res
  gate = (pre > threshold).astype(pre.dtype)
  d_theta = -(threshold / bandwidth) * _rectangle((pre - threshold) / bandwidth) * g
  return g * gate, _sum_to(d_theta, threshold.shape), jnp.zeros_like(bandwidth)


jumprelu.defvjp(_jumprelu_fwd, _jumprelu_bwd)


@jax.custom_vjp
def step_l0(pre, threshold, bandwidth):
  """Number of entries with pre > threshold over the last axis, (..., L) -> (...). No
  gradient to pre; to the threshold -(1 / bandwidth) * rect((pre - threshold) / bandwidth)."""
  return jnp.sum((pre > threshold).astype(pre.dtype), axis=-1)


def _step_fwd(pre, threshold, bandwidth):
  return step_l0(pre, threshold, bandwidth), (pre, threshold, bandwidth)


def _step_bwd(res, g):
  pre, threshold, bandwidth = res
  d_theta = -(1.0 / bandwidth) * _rectangle((pre - threshold) / bandwidth) * g[..., None]
  return jnp.zeros_like(pre), _sum_to(d_theta, threshold.shape), jnp.zeros_like(bandwidth)


step_l0.defvjp(_step_fwd, _step_bwd)


def auxk_codes(pre, dead, k_aux: int):
  """The AuxK codes: the k_aux largest positive pre-activations among the dead latents
  of each example, zero elsewhere. pre (B, L), dead (L,) bool -> (B, L)."""
  masked = jnp.where(dead, nn.relu(pre), 0.0)
  return topk(masked, min(k_aux, pre.shape[-1]))


def geometric_median(x, iterations: int = 100, eps: float = 1e-8):
  """The point minimising the summed Euclidean distance to the rows of x (N, D), by
  Weiszfeld's iteration started from the mean. Returns (D,)."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  point = x.mean(0)
  for _ in range(iterations):
    w = 1.0 / np.maximum(np.linalg.norm(x - point, axis=1), eps)
    new = (w[:, None] * x).sum(0) / w.sum()
    if np.linalg.norm(new - point) <= 1e-10 * max(1.0, np.linalg.norm(point)):
      point = new
      break
    point = new
  return point.astype(np.float32)


def firing_rate_thresholds(pre, rate: float) -> np.ndarray:
  """Per-latent thresholds at which each latent fires on round(rate * N) of the N rows of
  pre (N, L): the latent's (m+1)-th largest value, m = round(rate * N), so that exactly m
  values lie strictly above it when there are no ties. Returns (L,)."""
  pre = np.asarray(pre)
  m = int(round(rate * len(pre)))
  if not 0 <= m < len(pre):
    raise ValueError(f"rate {rate} of {len(pre)} rows leaves no row below the threshold")
  return -np.sort(-pre, axis=0)[m]


def unit_rows(w, eps: float = 1e-12):
  """w (L, D) with every row scaled to unit Euclidean norm."""
  return w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), eps)


# ---- the module ----------------------------------------------------------------------

class SparseDictionary(nn.Module):
  """A sparse autoencoder as a linear dictionary:

    pre = (x - b_pre) W_enc + b_enc,  z = act(pre),  x_hat = z W_dec + b_pre,

  x flattened to (B, D), W_enc (D, L), W_dec (L, D) whose rows are the dictionary
  atoms (drawn as random unit directions; the encoder starts as their transpose when
  `tied_init`). `act` is relu, sigmoid, topk, batch_topk (training; evaluation gates
  with the running threshold in `sae_stats`) or jumprelu (a learned per-latent
  threshold exp(log_threshold)). The `sae_stats` collection holds, per latent, the
  examples seen since it last fired and BatchTopK's running threshold; the family's
  `post_update` writes them after every optimizer step.
  """
  input_shape: tuple
  latent_dim: int
  activation: str = "relu"
  k: int = 4
  tied_init: bool = True
  jump_threshold_init: float = 1e-3
  jump_bandwidth: float = 1e-3
  jump_threshold_lr_scale: float = 1.0
  logits: bool = False
  num_classes: int = 0

  def setup(self):
    d = math.prod(self.input_shape)
    self.w_dec = self.param("W_dec", lambda rng, shape: unit_rows(jax.random.normal(rng, shape)),
                            (self.latent_dim, d))
    if self.tied_init:
      self.w_enc = self.param("W_enc", lambda rng, shape: self.w_dec.T, (d, self.latent_dim))
    else:
      self.w_enc = self.param("W_enc", nn.initializers.lecun_normal(), (d, self.latent_dim))
    self.b_enc = self.param("b_enc", nn.initializers.zeros, (self.latent_dim,))
    self.b_pre = self.param("b_pre", nn.initializers.zeros, (d,))
    if self.activation == "jumprelu":
      self.log_threshold = self.param(
          "log_threshold",
          nn.initializers.constant(math.log(self.jump_threshold_init)
                                   / self.jump_threshold_lr_scale),
          (self.latent_dim,))
    self.since_fired = self.variable(STATS, "since_fired", jnp.zeros, (self.latent_dim,))
    self.threshold_sum = self.variable(STATS, "threshold_sum", jnp.zeros, ())
    self.threshold_weight = self.variable(STATS, "threshold_weight", jnp.zeros, ())

  def pre_activations(self, x, cond=None, train: bool = False):
    del cond, train
    return (x.reshape(x.shape[0], -1) - self.b_pre) @ self.w_enc + self.b_enc

  def threshold(self):
    """JumpReLU's thresholds (L,): exp(jump_threshold_lr_scale * log_threshold)."""
    return jnp.exp(self.jump_threshold_lr_scale * self.log_threshold)

  def batch_threshold(self):
    """BatchTopK's evaluation threshold: the running mean of the training batches'."""
    return self.threshold_sum.value / jnp.maximum(self.threshold_weight.value, 1e-12)

  def activate(self, pre, train: bool = False):
    """(codes, batch threshold or None) of pre-activations (B, L)."""
    if self.activation == "relu":
      return nn.relu(pre), None
    if self.activation == "sigmoid":
      return nn.sigmoid(pre), None
    if self.activation == "topk":
      return topk(pre, self.k), None
    if self.activation == "jumprelu":
      return jumprelu(pre, self.threshold(), jnp.asarray(self.jump_bandwidth, pre.dtype)), None
    if train:
      return batch_topk(pre, self.k)
    return jumprelu(pre, self.batch_threshold(), jnp.asarray(1.0, pre.dtype)), None

  def encode(self, x, cond=None, train: bool = False):
    return self.activate(self.pre_activations(x, cond, train), train)[0]

  def decode(self, z, cond=None, train: bool = False):
    del cond, train
    out = z @ self.w_dec + self.b_pre
    return out.reshape(z.shape[0], *self.input_shape)

  def to_data(self, out):
    return jax.nn.sigmoid(out) if self.logits else out

  def reconstruct(self, x, cond=None):
    return self.to_data(self.decode(self.encode(x, cond), cond))

  def __call__(self, x, cond=None, train: bool = False):
    pre = self.pre_activations(x, cond, train)
    z, batch_thr = self.activate(pre, train)
    res = {"pre": pre, "z": z, "out": self.decode(z, cond, train), "W_dec": self.w_dec}
    if batch_thr is not None:
      res["batch_threshold"] = batch_thr
    if self.activation == "jumprelu":
      res["threshold"] = self.threshold()
    return res


# ---- the objective ----------------------------------------------------------------------

def _per_example(value, batch: int):
  return jnp.broadcast_to(jnp.asarray(value, jnp.float32), (batch,))


def l0_weight_at(cfg, step):
  """JumpReLU's L0 coefficient at optimizer step `step`: objective.l0_weight * min(1,
  (step + 1) / l0_warmup_steps) during the warm-up, the full weight after it, without
  warm-up, and when step is None (evaluation)."""
  warm = cfg.objective.get("l0_warmup_steps", 0)
  if step is not None and warm and warm > 0:
    return cfg.objective.l0_weight * jnp.minimum(1.0, (step + 1) / warm)
  return cfg.objective.l0_weight


def dictionary_terms(model, params, x, res, cfg, train: bool,
                     step=None) -> tuple[dict, jax.Array]:
  """The dictionary's extra per-example terms (penalties, AuxK, statistics for
  `post_update`) and the penalty to add to each example's loss (B,); `res` is the
  module's output on x (B, ...); `step` the optimizer step (None in evaluation)."""
  b = x.shape[0]
  m, o = cfg.model, cfg.objective
  z, pre = res["z"], res["pre"]
  terms, extra_loss = {}, 0.0
  dead = params[STATS]["since_fired"] >= m.dead_window
  terms["dead_window_fraction"] = _per_example(jnp.mean(dead), b)
  if m.sparsity == "l1" and o.l1_decoder_norm:
    norms = jnp.linalg.norm(res["W_dec"], axis=-1)
    terms["l1"] = jnp.sum(jnp.abs(z) * norms, axis=-1)
    extra_loss += o.l1_weight * terms["l1"]
  if m.sparsity == "jumprelu":
    terms["l0_penalty"] = step_l0(pre, res["threshold"], jnp.asarray(m.jump_bandwidth, pre.dtype))
    extra_loss += l0_weight_at(cfg, step) * terms["l0_penalty"]
  if "batch_threshold" in res:
    terms["batch_threshold"] = _per_example(res["batch_threshold"], b)
  if o.auxk and train:
    flat_x = x.reshape(b, -1)
    recon = model.to_data(res["out"]).reshape(b, -1)
    err = jax.lax.stop_gradient(flat_x - recon)
    err_hat = auxk_codes(pre, dead, o.auxk) @ res["W_dec"]
    terms["auxk_sq_err"] = jnp.sum(jnp.square(err - err_hat), -1) * jnp.any(dead)
    terms["err_sq"] = jnp.sum(jnp.square(err), -1)
    terms["err_mean"] = err
  return terms, extra_loss


def finalize_dictionary(means: dict, cfg) -> dict:
  """The AuxK loss (OpenAI's normalised form, a batch statistic):
  auxk = |e - e_hat|^2 / |e - mean e|^2, added as auxk_weight * auxk * Var(x) per feature
  so that it keeps its weight relative to an MSE reconstruction term."""
  means = dict(means)
  if "auxk_sq_err" in means:
    err_var = means["err_sq"] - jnp.sum(jnp.square(means["err_mean"]))
    x_var = means["sq_norm"] - jnp.sum(jnp.square(means["x_mean"]))
    auxk = means["auxk_sq_err"] / jnp.maximum(err_var, 1e-12)
    means["auxk"] = auxk
    means["loss"] = (means["loss"]
                     + cfg.objective.auxk_weight * auxk * x_var / means["x_mean"].shape[-1])
  return means


def post_update(params, previous, means, cfg):
  """After every optimizer step: decoder rows back to unit norm (model.unit_decoder), and
  the statistics: examples since each latent last fired (from the step's global firing
  rates, counting train.batch_size examples per step) and BatchTopK's running threshold."""
  if not cfg.model.get("dictionary", False):
    return params
  new = dict(params)
  inner = dict(new["params"])
  if cfg.model.unit_decoder:
    inner["W_dec"] = unit_rows(inner["W_dec"])
  stats = previous[STATS]
  since = jnp.where(means["firing"] > 0, 0.0,
                    jnp.minimum(stats["since_fired"] + cfg.train.batch_size, 2.0 ** 24))
  t_sum, t_weight = stats["threshold_sum"], stats["threshold_weight"]
  if "batch_threshold" in means:
    t_sum = THRESHOLD_DECAY * t_sum + (1 - THRESHOLD_DECAY) * means["batch_threshold"]
    t_weight = THRESHOLD_DECAY * t_weight + (1 - THRESHOLD_DECAY)
  new["params"] = inner
  new[STATS] = {"since_fired": since, "threshold_sum": t_sum, "threshold_weight": t_weight}
  return new


def init_from_data(params, x, cfg):
  """Data-dependent initialisation from x (N, ...), a sample of the (scaled) training data:
  the pre-encoder bias b_pre to its mean or geometric median (model.pre_bias_init), then,
  for JumpReLU with model.jump_init_l0 > 0, each latent's threshold to the value it exceeds
  on jump_init_l0 / latent_dim of the sample (`firing_rate_thresholds` of the
  pre-activations under the new b_pre), never below model.jump_threshold_init."""
  m = cfg.model
  how = m.get("pre_bias_init", "zeros")
  init_l0 = m.get("jump_init_l0", 0.0) if m.get("sparsity") == "jumprelu" else 0.0
  if not m.get("dictionary", False) or (how == "zeros" and not init_l0):
    return params
  flat = np.asarray(x, np.float32).reshape(len(x), -1)
  inner = dict(params["params"])
  if how != "zeros":
    inner["b_pre"] = jnp.asarray(flat.mean(0) if how == "mean" else geometric_median(flat))
  if init_l0:
    pre = ((flat - np.asarray(inner["b_pre"])) @ np.asarray(inner["W_enc"])
           + np.asarray(inner["b_enc"]))
    theta = firing_rate_thresholds(pre, init_l0 / pre.shape[-1])
    inner["log_threshold"] = jnp.log(jnp.asarray(
        np.maximum(theta, m.jump_threshold_init), jnp.float32)) / m.get(
            "jump_threshold_lr_scale", 1.0)
  new = dict(params)
  new["params"] = inner
  return new


SPARSITIES = ("l1", "kl", "topk", "batch_topk", "jumprelu")
PRE_BIAS_INITS = ("zeros", "mean", "geometric_median")


def validate(cfg, input_shape) -> None:
  """The sparse family's config checks (ConfigError naming the field and the fix)."""
  del input_shape
  check_recon_loss(cfg)
  m, o = cfg.model, cfg.objective
  require(m.sparsity in SPARSITIES,
          f"model.sparsity must be one of {', '.join(SPARSITIES)}; got {m.sparsity!r}")
  if m.sparsity in ("topk", "batch_topk"):
    require(isinstance(m.k, int) and 0 < m.k <= m.latent_dim,
            f"model.k must be an integer in [1, latent_dim={m.latent_dim}], got {m.k!r}")
  require(o.l1_weight >= 0, f"objective.l1_weight must be >= 0, got {o.l1_weight}")
  require(0 < o.kl_rho < 1, f"objective.kl_rho must be in (0, 1), got {o.kl_rho}")
  require(o.l0_weight >= 0, f"objective.l0_weight must be >= 0, got {o.l0_weight}")
  require(o.auxk_weight >= 0, f"objective.auxk_weight must be >= 0, got {o.auxk_weight}")
  require(isinstance(o.auxk, int) and 0 <= o.auxk <= m.latent_dim,
          f"objective.auxk (k of the auxiliary loss; 0 = off) must be an integer in "
          f"[0, latent_dim={m.latent_dim}], got {o.auxk!r}")
  require(m.pre_bias_init in PRE_BIAS_INITS,
          f"model.pre_bias_init must be one of {', '.join(PRE_BIAS_INITS)}; got "
          f"{m.pre_bias_init!r}")
  require(isinstance(m.dead_window, int) and m.dead_window > 0,
          f"model.dead_window (examples) must be a positive integer, got {m.dead_window!r}")
  require(0 <= m.jump_init_l0 < m.latent_dim,
          f"model.jump_init_l0 (the initial L0 of JumpReLU's data-set thresholds; 0 = off) "
          f"must be in [0, latent_dim={m.latent_dim}), got {m.jump_init_l0!r}")
  require(m.jump_threshold_init > 0 and m.jump_bandwidth > 0 and m.jump_threshold_lr_scale > 0,
          "model.jump_threshold_init, model.jump_bandwidth and model.jump_threshold_lr_scale "
          f"must be > 0, got {m.jump_threshold_init}, {m.jump_bandwidth} and "
          f"{m.jump_threshold_lr_scale}")
  require(isinstance(o.l0_warmup_steps, int) and o.l0_warmup_steps >= 0,
          "objective.l0_warmup_steps (steps over which the L0 coefficient rises from 0) must "
          f"be an integer >= 0, got {o.l0_warmup_steps!r}")
  if o.l1_decoder_norm:
    require(m.sparsity == "l1", "objective.l1_decoder_norm weights the L1 penalty: it needs "
            f"model.sparsity='l1', got {m.sparsity!r}")
  if m.dictionary:
    require(not m.dropout, "model.dropout does not apply to a linear dictionary "
            f"(model.dictionary=True); set it to 0, got {m.dropout}")
  else:
    needs = [name for name, on in (
        (f"model.sparsity={m.sparsity!r}", m.sparsity in ("batch_topk", "jumprelu")),
        ("model.unit_decoder", m.unit_decoder), ("objective.l1_decoder_norm", o.l1_decoder_norm),
        ("objective.auxk", o.auxk > 0),
        (f"model.pre_bias_init={m.pre_bias_init!r}", m.pre_bias_init != "zeros")) if on]
    require(not needs, f"{', '.join(needs)} work on a linear dictionary's decoder: set "
            "model.dictionary=True (or turn them off)")


# ---- the family ----------------------------------------------------------------------

_CODES = {"l1": "relu", "kl": "sigmoid", "topk": "topk", "batch_topk": "batch_topk",
          "jumprelu": "jumprelu"}


def build(cfg, input_shape):
  m = cfg.model
  if m.dictionary:
    return SparseDictionary(tuple(input_shape), m.latent_dim, _CODES[m.sparsity], k=m.k,
                            tied_init=m.tied_init, jump_threshold_init=m.jump_threshold_init,
                            jump_bandwidth=m.jump_bandwidth,
                            jump_threshold_lr_scale=m.jump_threshold_lr_scale,
                            logits=m.recon_loss == "bce")
  enc, dec = networks(cfg, input_shape)
  return SparseAutoencoder(enc, dec, code=_CODES[m.sparsity], k=m.k, **common_kwargs(cfg))


def terms(model, params, batch, keys, step, cfg, train) -> Terms:
  x = batch["x"]
  res = apply(model, params, x, batch, keys, cfg, train)
  z, out = res["z"], res["out"]
  result = recon_terms(cfg, out, x)
  flat_x = x.reshape(x.shape[0], -1)
  recon_x = model.to_data(out).reshape(flat_x.shape)
  result["sq_err"] = jnp.sum(jnp.square(recon_x - flat_x), -1)
  result["sq_norm"] = jnp.sum(jnp.square(flat_x), -1)
  result["x_mean"] = flat_x
  if cfg.model.sparsity == "kl":
    result["code"] = z
    active = (z > 0.5).astype(jnp.float32)
  else:
    active = (z != 0).astype(jnp.float32)
  result.update(activity_terms(z, active))
  if cfg.model.dictionary:
    extra, extra_loss = dictionary_terms(model, params, x, res, cfg, train, step)
    result.update(extra)
    result["loss"] = result["loss"] + extra_loss
  if cfg.model.sparsity == "l1" and "l1" not in result:
    l1 = jnp.sum(jnp.abs(z), axis=-1)
    result["l1"] = l1
    result["loss"] = result["loss"] + cfg.objective.l1_weight * l1
  return result


def finalize(means, cfg):
  means = finalize_dictionary(finalize_activity(dict(means), DENSE_FREQUENCY), cfg)
  variance = means["sq_norm"] - jnp.sum(jnp.square(means["x_mean"]))
  means["fvu"] = means["sq_err"] / jnp.maximum(variance, 1e-12)
  if cfg.model.sparsity == "kl":
    kl = losses.sparsity_kl(cfg.objective.kl_rho, means["code"])
    means["sparsity_kl"] = kl
    means["loss"] = means["loss"] + cfg.objective.kl_weight * kl
  return means


def batch_coupled(cfg) -> bool:
  """The KL penalty of mean activations, the batch-wide top-k and AuxK's normalisation
  are batch statistics: such a loss cannot be accumulated over micro-batches."""
  m = cfg.model
  return m.sparsity in ("kl", "batch_topk") or cfg.objective.auxk > 0


FAMILIES.register("sparse")(Family(
    "sparse", build, terms, finalize, fields=FIELDS, validate=validate,
    batch_coupled=batch_coupled,
    hparams=("objective.l1_weight", "objective.kl_weight", "objective.kl_rho",
             "objective.l0_weight", "objective.auxk_weight"),
    post_update=post_update, init_from_data=init_from_data))
