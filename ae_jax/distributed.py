"""Multi-process (multi-host) start-up and the helpers that move data between processes.

One training run spans `jax.process_count()` processes, each driving its local devices.
`initialize_from_flags_or_env` starts JAX's distributed runtime from command-line flags,
the `AE_JAX_*` environment variables below, or what a cluster scheduler sets, and must
run before anything touches the JAX backend.

Settings, first found wins:
  1. the arguments (the `ae-jax train` flags `--coordinator-address`, `--num-processes`,
     `--process-id`);
  2. `AE_JAX_COORDINATOR_ADDRESS`, `AE_JAX_NUM_PROCESSES`, `AE_JAX_PROCESS_ID`;
  3. `JAX_COORDINATOR_ADDRESS` (read by JAX itself);
  4. what `jax.distributed.initialize` detects: Slurm (`SLURM_*`), Open MPI
     (`OMPI_*`), Cloud TPU pods, Kubernetes (`--distributed` / `AE_JAX_DISTRIBUTED=1`).

The training batch size is GLOBAL: each process loads `batch_size / process_count`
examples of every global batch, the contiguous rows `process_slice` selects, so the
processes together train on exactly the batches one process would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import traceback
from typing import Any, Iterator, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from ae_jax.errors import ConfigError, DataError

ENV_COORDINATOR = "AE_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "AE_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "AE_JAX_PROCESS_ID"
ENV_AUTO = "AE_JAX_DISTRIBUTED"
JAX_ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"

_TRUE = ("1", "true", "yes", "auto")


@dataclasses.dataclass(frozen=True)
class Settings:
  """Where the processes meet: `coordinator_address` is host:port of process 0."""
  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  cluster: str | None = None      # 'slurm' | 'openmpi' when a multi-task job is detected
  auto_detect: bool = False       # call jax.distributed.initialize() to detect the rest

  @property
  def explicit(self) -> bool:
    return any(v is not None for v in (self.coordinator_address, self.num_processes,
                                        self.process_id))

  @property
  def wanted(self) -> bool:
    """Whether the run spans several processes (or asks JAX to find out)."""
    if self.num_processes == 1:
      return False
    return self.explicit or self.cluster is not None or self.auto_detect


def _int_setting(value, name: str) -> int | None:
  if value is None or value == "":
    return None
  try:
    number = int(value)
  except (TypeError, ValueError):
    raise ConfigError(f"{name} must be an integer, got {value!r}") from None
  return number


def detect_cluster(environ: Mapping[str, str] = os.environ) -> str | None:
  """'slurm' or 'openmpi' inside a job step of more than one task, else None.

  For Slurm the step's task count (`SLURM_STEP_NUM_TASKS`, set by `srun`) decides when
  it is there, so a batch script's own single process is not taken for a cluster.
  """
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID")
  if all(k in environ for k in slurm):
    tasks = environ.get("SLURM_STEP_NUM_TASKS", environ["SLURM_NTASKS"])
    if _int_setting(tasks, "SLURM_STEP_NUM_TASKS / SLURM_NTASKS") > 1:
      return "slurm"
  if ("OMPI_MCA_orte_hnp_uri" in environ and
      _int_setting(environ.get("OMPI_COMM_WORLD_SIZE", "1"), "OMPI_COMM_WORLD_SIZE") > 1):
    return "openmpi"
  return None


def resolve_settings(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, *, auto_detect: bool = False,
                     environ: Mapping[str, str] = os.environ) -> Settings:
  """Merge arguments, `AE_JAX_*` / `JAX_COORDINATOR_ADDRESS` and cluster detection.

  Raises ConfigError for values that are not integers, out of range, or incomplete
  (several processes but no coordinator address, outside a detected cluster).
  """
  address = (coordinator_address or environ.get(ENV_COORDINATOR) or
             environ.get(JAX_ENV_COORDINATOR) or None)
  count = _int_setting(num_processes if num_processes is not None else
                       environ.get(ENV_NUM_PROCESSES), "the number of processes "
                       f"(--num-processes / {ENV_NUM_PROCESSES})")
  index = _int_setting(process_id if process_id is not None else environ.get(ENV_PROCESS_ID),
                       f"the process id (--process-id / {ENV_PROCESS_ID})")
  auto = auto_detect or environ.get(ENV_AUTO, "").lower() in _TRUE
  settings = Settings(address, count, index, detect_cluster(environ), auto)
  if count is not None and count < 1:
    raise ConfigError(f"the number of processes must be >= 1, got {count}")
  if index is not None and (index < 0 or (count is not None and index >= count)):
    raise ConfigError(f"the process id must be in [0, {count}) (one per process, 0 on the "
                      f"coordinator host), got {index}")
  if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
    raise ConfigError(f"the coordinator address must be host:port of process 0, got {address!r}")
  if settings.wanted and settings.cluster is None and not auto:
    missing = [name for name, value in (
        (f"--coordinator-address / {ENV_COORDINATOR}", address),
        (f"--num-processes / {ENV_NUM_PROCESSES}", count),
        (f"--process-id / {ENV_PROCESS_ID}", index)) if value is None]
    if missing:
      raise ConfigError("a multi-process run needs the coordinator address, the number of "
                        f"processes and this process's id; missing: {', '.join(missing)}")
  return settings


def initialize_from_flags_or_env(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None, *,
                                 auto_detect: bool = False) -> bool:
  """Start JAX's distributed runtime when the settings ask for several processes.

  Call it first, before any JAX computation or `jax.devices()`; it starts the backend.
  Returns True when the runtime is running (started now or before), False for an
  ordinary single-process run. On CPU the cross-process collectives use gloo unless
  another implementation is set.
  """
  if jax.distributed.is_initialized():
    return True
  settings = resolve_settings(coordinator_address, num_processes, process_id,
                              auto_detect=auto_detect)
  if not settings.wanted:
    return False
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=settings.coordinator_address,
                               num_processes=settings.num_processes,
                               process_id=settings.process_id)
  except RuntimeError as e:
    if "before" in str(e).lower():
      raise ConfigError("the JAX backend was used before the distributed runtime was "
                        "started; call ae_jax.distributed.initialize_from_flags_or_env() "
                        "first in the program") from None
    raise
  if jax.default_backend() == "cpu":
    _open_gloo_groups()
  return True


def _open_gloo_groups() -> None:
  """Run a collective over all devices and one over the first device of each process.

  Gloo sets up a group of devices at its first collective and waits only 30 s for all
  processes to join; later collectives of the group wait as long as needed. Right
  after start-up the processes are in step, so the groups that training (all devices)
  and Orbax (one device per process) use are set up here, before uneven start-up work
  on a busy host can put the processes further apart than that.
  """
  multihost_utils.sync_global_devices("ae_jax.distributed: started")
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("all",))
  ones = jax.make_array_from_process_local_data(NamedSharding(mesh, P("all")),
                                                np.ones(jax.local_device_count(), np.int32))
  total = jax.jit(jax.shard_map(lambda v: jax.lax.psum(v, "all"), mesh=mesh,
                                in_specs=P("all"), out_specs=P()))(ones)
  if int(total.addressable_data(0)[0]) != jax.device_count():
    raise RuntimeError(f"a test sum over {jax.device_count()} devices gave "
                       f"{total.addressable_data(0)}; the processes do not agree on the devices")


@contextlib.contextmanager
def run_context(coordinator_address: str | None = None, num_processes: int | None = None,
                process_id: int | None = None, *, auto_detect: bool = False) -> Iterator[bool]:
  """`with run_context(): ...` around a multi-process program, from Python.

  Starts the runtime as `initialize_from_flags_or_env` does (yields whether it runs),
  leaves it with `shutdown` at the end, and on an exception prints the traceback and
  ends the process at once (`exit_after_error`), so no process is left hanging.
  """
  running = initialize_from_flags_or_env(coordinator_address, num_processes, process_id,
                                         auto_detect=auto_detect)
  try:
    yield running
  except BaseException:
    if is_running():
      traceback.print_exc()
      exit_after_error(1)
    raise
  shutdown()


def shutdown() -> None:
  """Leave the distributed runtime; every process calls it at the end of a run.

  Without it the interpreter can hang at exit, tearing down the runtime's client.
  """
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()


def is_running() -> bool:
  """Whether this process is part of a multi-process run (the runtime is started)."""
  return jax.distributed.is_initialized()


def exit_after_error(code: int) -> None:
  """In a multi-process run, end this process at once with exit status `code`.

  A process leaving on an error cannot join the runtime's orderly shutdown (its peers
  may be waiting in a collective), and the runtime's client left behind would hang the
  interpreter's exit. JAX's coordination service tells the peers that it is gone.
  Does nothing in a single-process run.
  """
  if is_running():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def is_main_process() -> bool:
  """True on the process that logs, writes metrics and draws figures (process 0)."""
  return jax.process_index() == 0


def check_config(cfg) -> None:
  """ConfigError for settings a multi-process run cannot honour."""
  if jax.process_count() == 1:
    return
  t = cfg.train
  if t.parallel not in ("pmap", "shard_map"):
    raise ConfigError(f"train.parallel={t.parallel!r} runs on one device; a run over "
                      f"{jax.process_count()} processes needs 'pmap' or 'shard_map'")
  if t.num_devices not in (0, jax.local_device_count()):
    raise ConfigError(f"train.num_devices={t.num_devices}: a multi-process run uses every "
                      "local device of every process; set train.num_devices=0")


def process_slice(batch: dict[str, Any], index: int | None = None,
                  count: int | None = None) -> dict[str, Any]:
  """This process's rows of a global batch: rows [i*B/n, (i+1)*B/n) of every (B, ...) array.

  With one process the batch comes back unchanged. The slices of processes 0..n-1,
  concatenated in order, are the global batch.
  """
  index = jax.process_index() if index is None else index
  count = jax.process_count() if count is None else count
  if count == 1:
    return batch

  def take(v):
    v = np.asarray(v)
    if v.shape[0] % count:
      raise DataError(f"a global batch of {v.shape[0]} examples cannot be split over "
                      f"{count} processes; choose a batch size that is a multiple of {count}")
    size = v.shape[0] // count
    return v[index * size:(index + 1) * size]

  return {k: take(v) for k, v in batch.items()}


def replicated_sharding(mesh: jax.sharding.Mesh | None = None) -> NamedSharding:
  """A sharding that holds a full copy on every device of every process."""
  if mesh is None:
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("all",))
  return NamedSharding(mesh, P())


def to_global(tree, sharding: NamedSharding | None = None):
  """Identical host-local arrays on every process -> global replicated arrays.

  For Orbax (which saves only global arrays in a multi-process run) and for `jit`
  over devices of several processes. Leaves already on `sharding` are kept as they are.
  """
  if jax.process_count() == 1:
    return tree
  sharding = sharding or replicated_sharding()

  def convert(leaf):
    if isinstance(leaf, jax.Array) and leaf.sharding == sharding:
      return leaf
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(convert(jax.random.key_data(leaf)),
                                      impl=jax.random.key_impl(leaf))
    # Through host memory: a device-to-device put across processes needs DCN transfers.
    value = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
    return jax.device_put(value, sharding)

  return jax.tree.map(convert, tree)


def to_local(tree):
  """Global replicated arrays -> copies on this process's first device (no communication)."""
  device = jax.local_devices()[0]

  def convert(leaf):
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return jax.device_put(leaf.addressable_data(0), device)
    return leaf

  return jax.tree.map(convert, tree)
