"""Train state, optimizer and the ONE per-device train and eval steps.

`train_step(state, batch, rng, *, model, family, config, axis_name)` is written for a
single device's slice of the batch; `ae_jax.parallel` compiles it for plain `jit`,
`pmap` or `jit(shard_map)`. With `axis_name=None` it runs on one device without
collectives. Per-example randomness comes from the example's GLOBAL index, so the
same global batch gives the same numbers on 1 or N devices.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from ae_jax import batching, networks
from ae_jax.errors import ConfigError
from ae_jax.families import Family, get_family, scalar_metrics
from ae_jax.networks import chunking_pays

TrainState = train_state.TrainState


def learning_rate_schedule(cfg: ml_collections.ConfigDict, total_steps: int):
  """The learning rate of cfg.optim: a float (constant) or an optax schedule of the step."""
  o = cfg.optim
  if o.learning_rate <= 0:
    raise ConfigError(f"optim.learning_rate must be > 0, got {o.learning_rate}")
  if o.schedule == "constant":
    return o.learning_rate
  if o.schedule == "cosine":
    return optax.cosine_decay_schedule(o.learning_rate, max(total_steps, 1))
  if o.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(0.0, o.learning_rate, o.warmup_steps,
                                              max(total_steps, o.warmup_steps + 1))
  if o.schedule == "multistep":
    return multistep_schedule(o.learning_rate, o.milestones, o.milestone_gamma)
  raise ConfigError(f"unknown optim.schedule {o.schedule!r}; valid: constant, cosine, "
                    "warmup_cosine, multistep")


def multistep_schedule(learning_rate: float, milestones, gamma: float):
  """PyTorch's MultiStepLR as an optax schedule of the optimizer step: the rate is
  learning_rate * gamma**j from step milestones[j] on (0-based: the update at step
  `milestones[0]` is the first one with the decayed rate)."""
  milestones = tuple(int(m) for m in milestones)
  increasing = list(milestones) == sorted(set(milestones))
  if not milestones or any(m <= 0 for m in milestones) or not increasing:
    raise ConfigError(f"optim.milestones must be increasing positive step counts, got "
                      f"{milestones}; e.g. optim.milestones=(1000, 2000)")
  if not 0 < gamma <= 1:
    raise ConfigError(f"optim.milestone_gamma must be in (0, 1], got {gamma}")
  # optax scales from the step count equal to a boundary on; the update at step m sees count m.
  return optax.piecewise_constant_schedule(learning_rate, {m: gamma for m in milestones})


def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """optax optimizer from cfg.optim: Adam/AdamW/SGD, optional clipping and schedule."""
  o = cfg.optim
  lr = learning_rate_schedule(cfg, total_steps)
  if o.name == "adam":
    tx = optax.adam(lr)
  elif o.name == "adamw":
    tx = optax.adamw(lr, weight_decay=o.weight_decay)
  elif o.name == "sgd":
    tx = optax.sgd(lr, momentum=0.9)
  else:
    raise ConfigError(f"unknown optim.name {o.name!r}; valid: adam, adamw, sgd")
  if o.grad_clip and o.grad_clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip), tx)
  decay = o.get("ema_decay", 0.0)
  if not 0 <= decay < 1:
    raise ConfigError(f"optim.ema_decay must be in [0, 1) (0 = off; e.g. 0.999), got {decay}")
  if decay > 0:
    tx = optax.chain(tx, params_ema_slot())
  return tx


class ParamsEmaState(NamedTuple):
  """The running average of the parameters, kept in the optimizer state."""
  ema: Any


def params_ema_slot() -> optax.GradientTransformation:
  """A slot in the optimizer state for the exponential moving average of the parameters
  (Polyak averaging), starting from the initial parameters; its updates pass through
  unchanged. `train_step` writes ema <- decay * ema + (1 - decay) * params (the `params`
  collection; see _update_ema) after every step, once the family's `post_update` (a
  projection, a statistics update) has run, so the average is of the parameters the
  model really had. Living in the optimizer state, it is checkpointed, replicated over
  devices and resumed like the rest of it."""
  def init(params):   # a copy: the state's buffers are donated to the step, params' too
    return ParamsEmaState(jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    del params
    return updates, state

  return optax.GradientTransformation(init, update)


def _ema_state(opt_state):
  """The ParamsEmaState inside an optimizer state (found by its name, however the chain
  nests it), or None."""
  return optax.tree_utils.tree_get(opt_state, ParamsEmaState.__name__)


def _in_ema_state(path, _) -> bool:
  """optax.tree_utils filter: a field of ParamsEmaState itself (a model may name a
  parameter `ema` too)."""
  return (isinstance(path[-1], optax.tree_utils.NamedTupleKey)
          and path[-1].tuple_name == ParamsEmaState.__name__)


def _map_ema(opt_state, fn):
  """`opt_state` with its moving average `ema` replaced by fn(ema) (unchanged without one)."""
  found = _ema_state(opt_state)
  if found is None:
    return opt_state
  return optax.tree_utils.tree_set(opt_state, _in_ema_state, ema=fn(found.ema))


def _update_ema(state: TrainState, decay: float) -> TrainState:
  """`state` with its moving average moved towards its parameters (see params_ema_slot).
  Only the `params` collection is averaged; other collections that `post_update` keeps
  beside it (a sparse dictionary's firing counters and running threshold) are statistics,
  not weights, and are taken as they are."""
  def average(ema, new):
    return jax.tree.map(lambda e, p: decay * e + (1 - decay) * p.astype(e.dtype), ema, new)

  def move(ema):
    if isinstance(ema, dict) and "params" in ema:
      return {**state.params, "params": average(ema["params"], state.params["params"])}
    return average(ema, state.params)
  return state.replace(opt_state=_map_ema(state.opt_state, move))


def eval_params(state: TrainState):
  """The parameters to evaluate, select and save: the moving average when
  optim.ema_decay > 0, else the trained parameters themselves."""
  found = _ema_state(state.opt_state)
  return state.params if found is None else found.ema


def with_eval_params(state: TrainState, params) -> TrainState:
  """`state` whose evaluation parameters (`eval_params`) are `params`: the trained
  parameters and, when there is one, the moving average (an early-stopping run's final
  checkpoint holds its best evaluation in both)."""
  return state.replace(params=params, opt_state=_map_ema(
      state.opt_state, lambda _: jax.tree.map(jnp.copy, params)))


INIT_SAMPLE = 4096  # training examples shown to a family's data-dependent initialisation


def init_params(model, input_shape, rng, *, conditional: bool = False):
  """Initialise the model's parameters with a batch of two zero examples."""
  x = jnp.zeros((2, *input_shape), jnp.float32)
  cond = jnp.zeros((2,), jnp.int32) if conditional else None
  return model.init({"params": rng, "dropout": rng}, x, cond)


def create_train_state(cfg, model, input_shape, rng, total_steps: int, data=None) -> TrainState:
  """A fresh TrainState; `data` (N, *input_shape), a sample of the scaled training data,
  feeds the family's data-dependent initialisation when it has one."""
  params = init_params(model, input_shape, rng, conditional=bool(getattr(model, "num_classes", 0)))
  params = networks.initial_params(cfg, params, rng)
  init_from_data = get_family(cfg.model.family).init_from_data
  if data is not None and init_from_data is not None:
    params = init_from_data(params, data, cfg)
  return TrainState.create(apply_fn=model.apply, params=params,
                           tx=make_optimizer(cfg, total_steps))


def example_keys(rng, local_batch: int, axis_name: str | None):
  """One key per example, folded from the example's index in the global batch."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_batch
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(offset + jnp.arange(local_batch))


def _weighted_sums(terms, weights):
  def reduce(v):
    w = weights.reshape(weights.shape + (1,) * (v.ndim - 1)).astype(v.dtype)
    return jnp.sum(v * w, axis=0)
  return jax.tree.map(reduce, terms)


def _means(sums, count):
  return jax.tree.map(lambda s: s / jnp.maximum(count, 1e-12), sums)


def _objective(params, batch, rng, step, *, model, family: Family, config, axis_name,
               train: bool = True):
  """(this device's share of the global loss, (per-term weighted sums, weight total)).

  The loss is `finalize(global means)["loss"]`. Terms that depend on batch statistics
  (the sparsity KL of mean activations) are not linear in the examples, so each device
  cannot simply finalize its own means: it uses the first-order surrogate
  g(G) + <dg/dG, m_local - stop_gradient(m_local)>, with G the global means (stopped) and
  g the family's finalized loss. Its value is the global loss, and the pmean of the
  devices' gradients, each weighted by its share of the examples, is exactly the
  gradient of the global objective, whatever the number of devices.
  """
  x = batch["x"]
  weights = batch.get("mask", jnp.ones((x.shape[0],), jnp.float32))
  keys = example_keys(jax.random.fold_in(rng, 0), x.shape[0], axis_name)
  terms = family.terms(model, params, batch, keys, step, config, train)
  sums = _weighted_sums(terms, weights)
  count = jnp.sum(weights)
  local = _means(sums, count)
  if axis_name is None:
    global_means = jax.lax.stop_gradient(local)
  else:
    global_means = _means(*jax.lax.psum(jax.lax.stop_gradient((sums, count)), axis_name))
  finalized_loss = lambda m: family.finalize(m, config)["loss"]
  value, slope = jax.value_and_grad(finalized_loss)(global_means)
  drift = jax.tree.map(lambda a, b: jnp.sum(a * (b - jax.lax.stop_gradient(b))), slope, local)
  loss = value + sum(jax.tree.leaves(drift))
  if axis_name is not None:
    # Weight each device's mean by its share of the examples, so that the pmean of the
    # gradients is the gradient of the global weighted mean even when masks differ.
    total = jax.lax.psum(count, axis_name)
    loss = loss * count * jax.lax.psum(1, axis_name) / jnp.maximum(total, 1e-12)
  return loss, (sums, count)


def microbatch_size(config, family: Family) -> int:
  """Examples per micro-batch of the train step (`train.microbatch`: -1 auto =
  `batching.AUTO_MICROBATCH` for a convolutional network on the CPU backend, 0 off,
  n > 0). A family whose loss couples the examples of a batch refuses n > 0 and is
  never micro-batched by auto."""
  value = batching.check_setting("train.microbatch", config.train.get("microbatch", -1))
  coupled = family.batch_coupled(config)
  if value > 0 and coupled:
    raise ConfigError(
        f"train.microbatch={value}: the training loss of family {config.model.family!r} with "
        "these settings uses statistics of the whole batch (a KL penalty of mean activations, "
        "a batch-wide top-k, AuxK, a trimmed quantile), so its gradient cannot be accumulated "
        "over micro-batches; set train.microbatch=0 (or -1, which leaves it off here)")
  return batching.resolve("train.microbatch", value, auto=batching.AUTO_MICROBATCH,
                          auto_applies=not coupled and chunking_pays(config.model.network))


def _microbatched_grads(params, batch, rng, step, *, model, family: Family, config, axis_name,
                        size: int):
  """(gradient, per-term weighted sums, weight total) of this device's share of the loss,
  as `_objective` defines it, accumulated over micro-batches of `size` examples.

  Only for families that are not `batch_coupled`: their finalized loss is linear in the
  means, so its slope with respect to the means is the same at every point, and the
  gradient is the sum over micro-batches of <slope, gradient of the micro-batch's sums>
  divided by the weight total. Per-example keys come from the global index as before,
  so the terms, and the metrics made from their sums, are those of the whole batch.
  """
  x = batch["x"]
  weights = batch.get("mask", jnp.ones((x.shape[0],), jnp.float32))
  keys = example_keys(jax.random.fold_in(rng, 0), x.shape[0], axis_name)
  parts = {"batch": batch, "keys": keys, "weights": weights}

  def sums_of(p, part):
    terms = family.terms(model, p, part["batch"], part["keys"], step, config, True)
    return _weighted_sums(terms, part["weights"])

  shapes = jax.eval_shape(sums_of, params, jax.tree.map(lambda v: v[:1], parts))
  slope = jax.grad(lambda m: family.finalize(m, config)["loss"])(
      jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes))

  def part_grads(part):
    def weighted(p):
      sums = sums_of(p, part)
      return sum(jax.tree.leaves(jax.tree.map(lambda a, g: jnp.sum(a * g), sums, slope))), sums
    (_, sums), grads = jax.value_and_grad(weighted, has_aux=True)(params)
    return grads, sums

  grads, sums = batching.sum_chunks(part_grads, size, parts)
  count = jnp.sum(weights)
  if axis_name is None:
    scale = 1.0 / jnp.maximum(count, 1e-12)
  else:
    # As in `_objective`: each device's loss is its mean times its share of the examples.
    scale = jax.lax.psum(1, axis_name) / jnp.maximum(jax.lax.psum(count, axis_name), 1e-12)
  return jax.tree.map(lambda g: g * scale, grads), sums, count


def _global_means(sums, count, family, config, axis_name):
  if axis_name is not None:
    sums, count = jax.lax.psum((sums, count), axis_name)
  return family.finalize(_means(sums, count), config)


def _pmean(x, axis_name):
  return x if axis_name is None else jax.lax.pmean(x, axis_name)


def train_step(state: TrainState, batch: dict[str, Any], rng, *, model, family: Family,
               config: ml_collections.ConfigDict, axis_name: str | None = None):
  """One optimizer step on this device's slice of the global batch.

  batch: {'x': (b, *shape), optional 'y': (b,), optional 'mask': (b,)}.
  Returns the new state and global metrics (loss, family terms, grad_norm, finite).
  With `microbatch_size(config, family)` > 0 and smaller than this device's batch, the
  gradient is accumulated over micro-batches of that many examples (same value within
  float32 rounding, less memory, and on the CPU faster for conv networks).
  With config.train.nonfinite == 'skip' a step whose loss or gradient is not finite
  leaves the parameters and optimizer state unchanged.
  """
  rng = jax.random.fold_in(rng, state.step)
  micro = microbatch_size(config, family)
  if 0 < micro < batch["x"].shape[0]:
    grads, sums, count = _microbatched_grads(state.params, batch, rng, state.step, model=model,
                                             family=family, config=config,
                                             axis_name=axis_name, size=micro)
  else:
    objective = functools.partial(_objective, batch=batch, rng=rng, step=state.step,
                                  model=model, family=family, config=config,
                                  axis_name=axis_name)
    (_, (sums, count)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
  grads = _pmean(grads, axis_name)
  means = _global_means(sums, count, family, config, axis_name)
  metrics = scalar_metrics(means)
  grad_norm = optax.tree.norm(grads)
  finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
  metrics["grad_norm"] = grad_norm
  metrics["finite"] = finite.astype(jnp.float32)
  new_state = state.apply_gradients(grads=grads)
  if family.post_update is not None:
    new_state = new_state.replace(
        params=family.post_update(new_state.params, state.params, means, config))
  if config.optim.get("ema_decay", 0.0) > 0:
    new_state = _update_ema(new_state, config.optim.ema_decay)
  if config.train.nonfinite == "skip":
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state,
                             state.replace(step=state.step + 1))
  return new_state, metrics


def eval_step(params, batch: dict[str, Any], rng, *, model, family: Family,
              config: ml_collections.ConfigDict, axis_name: str | None = None):
  """Weighted per-term sums and the weight total of one (padded, masked) batch, summed
  over devices: the host adds them over batches and calls `finalize_eval` at the end.

  Deterministic: the model runs with `train=False` (no dropout) and the objective at its
  target values (`step=None`: the full beta, not its warm-up). Noise the metric itself
  needs (corruptions, posterior samples) comes from each example's fixed key.
  """
  _, (sums, count) = _objective(params, batch, rng, None, model=model, family=family,
                                config=config, axis_name=axis_name, train=False)
  if axis_name is not None:
    sums, count = jax.lax.psum((sums, count), axis_name)
  return sums, count


def finalize_eval(family: Family, config, sums, count) -> dict[str, float]:
  """Metrics of a whole evaluation from the summed `eval_step` outputs."""
  means = family.finalize(jax.tree.map(lambda s: s / max(float(count), 1e-12), sums), config)
  return {k: float(v) for k, v in scalar_metrics(means).items()}
