"""Compile one per-device step for `jit`, `pmap` or `jit(shard_map)`.

The step has the signature `step(state, batch, rng, *, axis_name)`; the state and rng
are replicated and the batch is split over a 1-D data axis. Every compiled function
takes the GLOBAL batch (B, ...) on the host and returns replicated outputs, so callers
never reshape, replicate or unreplicate.
"""

import functools
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ae_jax import distributed
from ae_jax.errors import ConfigError, DataError

AXIS = "data"
MODES = ("none", "jit", "pmap", "shard_map")


def resolve_devices(num_devices: int = 0) -> list:
  devices = jax.local_devices()
  if num_devices < 0 or num_devices > len(devices):
    raise ConfigError(f"train.num_devices={num_devices} but this process has {len(devices)} "
                      "local devices; use 0 for all of them")
  if jax.process_count() > 1 and num_devices not in (0, len(devices)):
    raise ConfigError(f"train.num_devices={num_devices}: a multi-process run uses every local "
                      "device of every process; set train.num_devices=0")
  return devices[:num_devices] if num_devices else devices


def data_mesh(devices) -> jax.sharding.Mesh:
  """A 1-D mesh over `devices` with an Auto axis, so unsharded inputs are accepted."""
  return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices)


def _check_divisible(batch, n, axis: int = 0):
  b = jax.tree.leaves(batch)[0].shape[axis]
  if b % n:
    raise DataError(f"the global batch of {b} examples cannot be split over {n} devices; "
                    f"set train.batch_size to a multiple of {n} (or train.num_devices)")
  return b


def scan_steps(step: Callable, batch_argnum: int = 1) -> Callable:
  """`step(state, batch, *rest, axis_name)` run over a stack of batches in one call.

  The returned function takes the batch argument stacked as (K, b, ...), runs `step`
  K times under `jax.lax.scan` with the state (argument 0) carried from one step to the
  next and the other arguments passed unchanged, and returns the final state and the
  outputs of every step stacked along a leading K axis. One compiled call then does K
  optimizer steps, which pays when dispatch, not arithmetic, dominates a step.
  """
  def stepped(*args, axis_name):
    def body(state, batch):
      step_args = list(args)
      step_args[0], step_args[batch_argnum] = state, batch
      return step(*step_args, axis_name=axis_name)
    return jax.lax.scan(body, args[0], args[batch_argnum])
  return stepped


def compile_step(step: Callable, mode: str = "pmap", *, num_devices: int = 0,
                 donate_state: bool = True, batch_argnum: int = 1,
                 steps_per_call: int = 1) -> Callable:
  """Wrap `step(state, batch, rng, *, axis_name)` for the chosen parallel mode.

  mode: 'none' (no compilation, one device), 'jit' (one device), 'pmap', 'shard_map'.
  The returned function keeps the same positional signature; argument `batch_argnum`
  is the batch, split along its leading axis; all other arguments are replicated.
  In a multi-process run (pmap, shard_map) the function spans the devices of every
  process and takes this process's part of the global batch (`distributed.process_slice`);
  its attribute `process_local` is then True and `num_devices` counts the devices of
  all processes.
  With `steps_per_call` > 1 the batch is a stack (K, B, ...) of K global batches, split
  along axis 1, and one call runs K steps (`scan_steps`); its other outputs (metrics)
  come back stacked (K, ...).
  """
  if mode not in MODES:
    raise ConfigError(f"unknown train.parallel {mode!r}; valid modes are: {', '.join(MODES)}")
  if not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ConfigError(f"steps_per_call must be an integer >= 1, got {steps_per_call!r}")
  axis = 0
  if steps_per_call > 1:
    step, axis = scan_steps(step, batch_argnum), 1
  donate = (0,) if donate_state else ()
  if mode == "none":
    return functools.partial(step, axis_name=None)
  if mode == "jit":
    return jax.jit(functools.partial(step, axis_name=None), donate_argnums=donate)
  devices = resolve_devices(num_devices)
  n = len(devices)
  multi = jax.process_count() > 1
  per_device = functools.partial(step, axis_name=AXIS)

  if mode == "pmap":
    in_axes = [None, None, None]
    in_axes[batch_argnum] = axis
    fn = jax.pmap(per_device, axis_name=AXIS, in_axes=tuple(in_axes), out_axes=None,
                  devices=None if multi else devices)

    def run(*args):
      args = list(args)
      b = _check_divisible(args[batch_argnum], n, axis)
      args[batch_argnum] = jax.tree.map(
          lambda v: v.reshape(*v.shape[:axis], n, b // n, *v.shape[axis + 1:]),
          args[batch_argnum])
      return fn(*args)

    run.lower = fn.lower
    run.num_devices = jax.device_count() if multi else n
    run.process_local = multi
    return run

  mesh = data_mesh(jax.devices() if multi else devices)
  specs = [P(), P(), P()]
  specs[batch_argnum] = P(*(None,) * axis, AXIS)
  # check_vma=False: with it on, the gradient of the replicated state is already summed
  # over devices, and the step's own pmean would leave it num_devices times too large.
  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=tuple(specs), out_specs=P(),
                             check_vma=False),
               donate_argnums=donate)
  sharding = NamedSharding(mesh, specs[batch_argnum])
  replicated = NamedSharding(mesh, P())

  def run(*args):
    args = list(args)
    _check_divisible(args[batch_argnum], n, axis)
    if multi:
      args = [jax.tree.map(lambda v: jax.make_array_from_process_local_data(sharding, v), a)
              if i == batch_argnum else distributed.to_global(a, replicated)
              for i, a in enumerate(args)]
    else:
      # Replicated inputs go onto the whole mesh (a no-op for the state a previous call
      # returned), so the first call and later calls see one sharding and trace once.
      args = [jax.device_put(a, sharding if i == batch_argnum else replicated)
              for i, a in enumerate(args)]
    return fn(*args)

  run.lower = fn.lower
  run.num_devices = jax.device_count() if multi else n
  run.process_local = multi
  return run


def host_batch(batch: dict[str, Any]) -> dict[str, np.ndarray]:
  """Drop keys the step does not take (e.g. 'index') and make arrays contiguous numpy."""
  return {k: np.asarray(v) for k, v in batch.items() if k in ("x", "y", "mask")}
