"""What every family shares: the `Family` record, its registry, validation and the
helpers that apply a model and turn its outputs into per-example loss terms.

A family's `terms(model, params, batch, keys, step, cfg, train)` returns a dict of
PER-EXAMPLE arrays (leading axis B); `loss` must be among them. `keys` holds one PRNG key
per example, folded from the example's GLOBAL index; `step` is the optimizer step, or
None during evaluation (targets such as the full beta apply); `train` is False during
evaluation (no dropout). The trainer reduces the terms with weights in one place and then
calls `finalize(means, cfg)` on the GLOBAL means for terms that depend on batch
statistics (sparsity KL, FVU, codebook perplexity). The trainer never knows which family
it trains.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import batching, losses
from ae_jax.errors import ConfigError
from ae_jax.networks import NETWORKS, PARAM_INITS, chunking_pays
from ae_jax.registry import Registry

Terms = dict[str, jax.Array]


def _identity(means, cfg):
  del cfg
  return means


def _never(cfg) -> bool:
  del cfg
  return False


def check_recon_loss(cfg, input_shape=None):
  """The default check: `model.recon_loss` names one of `losses.RECON_LOSSES`."""
  del input_shape
  losses.RECON_LOSSES.get(cfg.model.recon_loss)


@dataclasses.dataclass(frozen=True)
class Family:
  """Everything about one family: how to build its module, its per-example loss terms,
  its config fields and checks, and the properties that code outside asks for."""
  name: str
  build: Callable[[ml_collections.ConfigDict, tuple], nn.Module]
  terms: Callable[..., Terms]
  finalize: Callable[[dict, ml_collections.ConfigDict], dict] = _identity
  # Dotted config fields this family adds, with their defaults ({"model.sparsity": "l1"}).
  fields: dict[str, Any] = dataclasses.field(default_factory=dict)
  validate: Callable[[ml_collections.ConfigDict, tuple], None] = check_recon_loss
  # Dotted fields of the objective that may be traced (vmapped across trials).
  hparams: tuple[str, ...] = ()
  conditional: bool = False     # needs labels: `batch["y"]` is passed to the model
  can_sample: bool = False      # has a prior to sample latents from (`Trained.sample`)
  undercomplete: bool = False   # warn when latent_dim is not smaller than the input
  # post_update(params, previous, means, cfg) -> params: runs after every optimizer step
  # on the new parameters (`previous`: those the step started from; `means`: the step's
  # GLOBAL finalized means, per-unit vectors included), e.g. a projection of a weight.
  post_update: Callable | None = None
  # init_from_data(params, x, cfg) -> params: data-dependent initialisation from a sample
  # x (N, *input_shape) of the scaled training data, before the first step.
  init_from_data: Callable | None = None
  # batch_coupled(cfg) -> bool: the training loss of one example depends on the others of
  # its batch (batch statistics in `finalize`, a batch-wide top-k or quantile in `terms`),
  # so the gradient cannot be accumulated over micro-batches (`train.microbatch`).
  batch_coupled: Callable[[ml_collections.ConfigDict], bool] = _never


FAMILIES: Registry[Family] = Registry("family")


def get_family(name: str) -> Family:
  return FAMILIES.get(name)


def require(cond: bool, message: str) -> None:
  """Raise a ConfigError with `message` unless `cond` holds."""
  if not cond:
    raise ConfigError(message)


def build_model(cfg: ml_collections.ConfigDict, input_shape) -> nn.Module:
  """Validate `cfg` against the example shape and build the family's module."""
  family = get_family(cfg.model.family)
  validate_config(cfg, tuple(input_shape))
  return family.build(cfg, tuple(input_shape))


def validate_config(cfg: ml_collections.ConfigDict, input_shape: tuple) -> None:
  """Range and consistency checks that must fail before anything is compiled: the shared
  model fields here, then the family's own `validate`."""
  import math  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top
  m = cfg.model
  family = get_family(m.family)
  NETWORKS.get(m.network)
  require(isinstance(m.latent_dim, int) and m.latent_dim > 0,
          f"model.latent_dim must be a positive integer, got {m.latent_dim!r}")
  require(0.0 <= m.dropout < 1.0, f"model.dropout must be in [0, 1), got {m.dropout}")
  require(m.get("init", "flax") in PARAM_INITS,
          f"model.init must be one of {', '.join(PARAM_INITS)}, got {m.get('init')!r}")
  batching.check_setting("model.batch_chunk", m.get("batch_chunk", -1))
  input_size = math.prod(input_shape)
  if family.undercomplete and m.latent_dim >= input_size:
    warnings.warn(
        f"model.latent_dim={m.latent_dim} is not smaller than the input size {input_size}: "
        "an undercomplete autoencoder can learn the identity; lower model.latent_dim",
        UserWarning, stacklevel=3)
  family.validate(cfg, tuple(input_shape))


def networks(cfg, input_shape):
  """The (encoder, decoder) pair of `cfg.model.network`."""
  return NETWORKS.get(cfg.model.network)(cfg.model, input_shape, cfg.model.latent_dim)


def common_kwargs(cfg, conditional: bool = False) -> dict:
  """Constructor arguments every `Autoencoder` subclass takes."""
  return dict(latent_dim=cfg.model.latent_dim, logits=cfg.model.recon_loss == "bce",
              num_classes=cfg.model.num_classes if conditional else 0)


def batch_chunk(cfg) -> int:
  """Examples per chunk of the model's forward in evaluation, encode and decode
  (`model.batch_chunk`: -1 auto = `batching.AUTO_BATCH_CHUNK` for a convolutional network
  on the CPU backend and off elsewhere, 0 off, n > 0)."""
  m = cfg.model
  return batching.resolve("model.batch_chunk", m.get("batch_chunk", -1),
                          auto=batching.AUTO_BATCH_CHUNK,
                          auto_applies=chunking_pays(m.network))


def in_chunks(cfg, fn: Callable) -> Callable:
  """`fn(params, *batched)` (a deterministic forward: encode, decode, reconstruct) run
  `batch_chunk(cfg)` examples at a time; every array of `batched` and of the output has
  the batch as its leading axis."""
  chunk = batch_chunk(cfg)
  return lambda params, *batched: batching.map_chunks(
      lambda *b: fn(params, *b), chunk, *batched)


def condition(model, batch):
  """The labels for a conditional model, else None."""
  return batch["y"] if getattr(model, "num_classes", 0) else None


def apply(model, params, x, batch, keys, cfg, train: bool, **kw):
  """Apply `model` to x (B, ...) as the objective needs it.

  Evaluation (`train=False`) is deterministic: no dropout. In training with dropout, the
  model runs once per example under `vmap`, each with a dropout key derived from the
  example's own key, so the masks depend on the example's global index and not on how
  the batch is split over devices. Extra keyword arrays (`eps`) have a leading B axis.
  """
  cond = condition(model, batch)
  if not train:
    return _apply_in_chunks(model, params, x, cond, cfg, kw)
  if not cfg.model.get("dropout", 0.0):
    return model.apply(params, x, cond, train=True, **kw)

  def one(xi, ci, ki, kwi):
    ci = None if ci is None else ci[None]
    out = model.apply(params, xi[None], ci, train=True,
                      rngs={"dropout": jax.random.fold_in(ki, 2)},
                      **{k: v[None] for k, v in kwi.items()})
    return {k: v if k in SHARED_OUTPUTS else v[0] for k, v in out.items()}

  outs = jax.vmap(one, in_axes=(0, None if cond is None else 0, 0, 0))(x, cond, keys, kw)
  return {k: v[0] if k in SHARED_OUTPUTS else v for k, v in outs.items()}


# Model outputs that do not depend on the example (a learned likelihood scale).
SHARED_OUTPUTS = frozenset({"log_sigma"})


def _apply_in_chunks(model, params, x, cond, cfg, kw):
  """The deterministic forward `batch_chunk(cfg)` examples at a time. Outputs that do not
  depend on the example are broadcast along the chunk for the loop and taken once."""
  def one(xc, cc, kwc):
    out = model.apply(params, xc, cc, train=False, **kwc)
    return {k: jnp.broadcast_to(v, (xc.shape[0], *jnp.shape(v))) if k in SHARED_OUTPUTS
            else v for k, v in out.items()}

  out = batching.map_chunks(one, batch_chunk(cfg), x, cond, kw)
  return {k: v[0] if k in SHARED_OUTPUTS else v for k, v in out.items()}


def recon_terms(cfg, out, x) -> Terms:
  """Per-example reconstruction loss of `cfg.model.recon_loss` as `loss` and `recon`."""
  rec = losses.batched(losses.RECON_LOSSES.get(cfg.model.recon_loss))(out, x)
  return {"loss": rec, "recon": rec}


def activity_terms(z, active) -> Terms:
  """L0 and firing per latent; `finalize_activity` turns firing into dead/dense shares."""
  return {"l0": jnp.sum(active, axis=-1), "firing": active}


def finalize_activity(means: dict, dense_threshold: float = 0.5) -> dict:
  """Dead latents (never active in the batch or evaluation) and dense latents (active on
  more than `dense_threshold` of the examples), as counts and fractions."""
  if "firing" in means:
    means = dict(means)
    firing = means["firing"]
    means["dead_latents"] = jnp.sum(firing <= 0).astype(jnp.float32)
    means["dead_fraction"] = means["dead_latents"] / firing.shape[-1]
    means["dense_fraction"] = jnp.mean((firing > dense_threshold).astype(jnp.float32))
  return means


def scalar_metrics(means: dict[str, Any]) -> dict[str, jax.Array]:
  """Drop the per-unit vectors that only serve `finalize` (firing, code, x_mean, ...)."""
  return {k: v for k, v in means.items() if jnp.ndim(v) == 0}
