"""Two processes on 127.0.0.1 (2 emulated CPU devices each, gloo collectives) train as one.

One run on JAX's distributed runtime is started with `ae-jax train`, SIGKILLed (both
processes) after its first checkpoint, and restarted from Python (`fit` in
`distributed.run_context`, settings in AE_JAX_* variables). The reference is one process
with 4 devices training the same global batches inside pytest, computed while the two
processes start up. The pmap run always runs; the shard_map run with AE_JAX_SLOW_TESTS=1.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import chex
import jax
import numpy as np
import pytest

from ae_jax import checkpoint as ckpt_lib
from ae_jax import configs, distributed
from ae_jax.data import pipeline, sources
from ae_jax.errors import ConfigError
from ae_jax.families import build_model
from ae_jax.fit import Trained, fit
from ae_jax.train import create_train_state

NUM_STEPS = 12
EVERY = 4
LAUNCH_TIMEOUT_S = 300
# Run once the file argv[1] exists. The imports, which do not touch the JAX backend, are
# done while waiting, so a restart can be staged in advance.
GATE = """
import json, pathlib, sys, time
import ae_jax.cli, ae_jax.fit
go = pathlib.Path(sys.argv[1])
while not go.exists():
  time.sleep(0.05)
"""
# `ae-jax train ARGS`.
GATED_CLI = GATE + "sys.exit(ae_jax.cli.main(sys.argv[2:]))\n"
# The Python API, started from the AE_JAX_* environment: fit(config, workdir) with
# overrides (JSON), then Trained.evaluate on the data file, written as JSON.
GATED_API = GATE + """
from ae_jax import configs, data, distributed
with distributed.run_context():
  workdir, overrides, out = sys.argv[2:]
  cfg = configs.get_preset("tiny")
  for key, value in json.loads(overrides).items():
    ae_jax.cli.set_value(cfg, key, value)
  trained = ae_jax.fit.fit(cfg, workdir, progress=False)
  metrics = trained.evaluate(data.load(cfg.data.name))
  pathlib.Path(out).write_text(json.dumps({"step": trained.step, "evaluate": metrics}))
"""


def _overrides(data_file, mode):
  return {"data.name": str(data_file), "model.family": "denoising", "train.parallel": mode,
          "train.num_steps": NUM_STEPS, "train.checkpoint_every": EVERY,
          "train.log_every": EVERY, "train.eval_every": EVERY}


def _config(data_file, mode):
  cfg = configs.get_preset("tiny")
  for key, value in _overrides(data_file, mode).items():
    section, name = key.split(".")
    cfg[section][name] = value
  return cfg


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


class _Launch:
  """Processes 0 and 1 of one run, each in its own process group.

  `api=False`: `ae-jax train` with the --coordinator-address/--num-processes/--process-id
  flags; `api=True`: `fit` from Python, settings in AE_JAX_* variables, and
  `Trained.evaluate` written to `name.process<i>.json`. The processes import everything
  at once but start only when `go()` is called.
  """

  def __init__(self, workdir, data_file, mode, cache_dir, name, api=False):
    self.workdir = pathlib.Path(workdir)
    root = self.workdir.parent
    self.go_file = root / f"{name}.go"
    self.logs = [root / f"{name}.process{i}.log" for i in range(2)]
    self.outputs = [root / f"{name}.process{i}.json" for i in range(2)]
    address = f"127.0.0.1:{_free_port()}"
    # One compilation cache for all launches: a restarted run compiles nothing.
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    overrides = _overrides(data_file, mode)
    self.procs = []
    for i, log in enumerate(self.logs):
      if api:
        command = [GATED_API, str(self.go_file), str(self.workdir), json.dumps(overrides),
                   str(self.outputs[i])]
        env = dict(env, AE_JAX_COORDINATOR_ADDRESS=address, AE_JAX_NUM_PROCESSES="2",
                   AE_JAX_PROCESS_ID=str(i))
      else:
        command = [GATED_CLI, str(self.go_file), "train", "--config", "tiny", "--workdir",
                   str(self.workdir), "--no-progress", "--coordinator-address", address,
                   "--num-processes", "2", "--process-id", str(i),
                   *(f"--config.{k}={v}" for k, v in overrides.items())]
      self.procs.append(subprocess.Popen(
          [sys.executable, "-c", *command], stdout=log.open("w"), stderr=subprocess.STDOUT,
          env=env, start_new_session=True))

  def go(self) -> "_Launch":
    self.go_file.touch()
    return self

  def failed(self) -> bool:
    return any(p.poll() not in (None, 0) for p in self.procs)

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    for p in self.procs:
      p.wait()

  def wait(self, timeout=LAUNCH_TIMEOUT_S) -> str | None:
    """None when both processes exit cleanly, else the end of their logs (both stopped)."""
    deadline = time.time() + timeout
    while time.time() < deadline and not self.failed():
      if all(p.poll() == 0 for p in self.procs):
        return None
      time.sleep(0.1)
    self.kill()
    return f"exit codes {[p.returncode for p in self.procs]}\n{self.tail()}"

  def tail(self) -> str:
    return "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.logs)


def _saved_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.is_dir():
    return []
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def _rows(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]


def _params_at(workdir, step):
  """The parameters of checkpoint `step` in a workdir."""
  cfg, meta, _ = ckpt_lib.load_config(workdir)
  shape = tuple(meta["input_shape"])
  state = create_train_state(cfg, build_model(cfg, shape), shape, jax.random.key(0), 1)
  manager = ckpt_lib.open_manager(workdir)
  try:
    return ckpt_lib.restore(manager, step, state)[0].params
  finally:
    manager.close()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  rng = np.random.RandomState(0)
  x = (rng.rand(200, 12) * (rng.rand(200, 1) > 0.5)).astype(np.float32)
  path = tmp_path_factory.mktemp("data") / "toy.npy"
  np.save(path, x)
  return path


def _scenario(mode, data_file, root):
  """Start two processes, SIGKILL both after their first checkpoint, start them again.

  The first start is `ae-jax train`, the second the Python API (see `_Launch`).
  Returns a dict: workdir, steps (checkpointed when killed), rows (of metrics.jsonl
  then), evaluations (Trained.evaluate of each restarted process), one (the
  one-process reference's workdir), reference (its Trained).
  """
  workdir, cache = root / "two", root / "jax_cache"
  first = _Launch(workdir, data_file, mode, cache, "first").go()
  restart = _Launch(workdir, data_file, mode, cache, "resumed", api=True)
  killed, stop = {}, threading.Event()

  def kill_after_first_checkpoint():
    deadline = time.time() + LAUNCH_TIMEOUT_S
    while not (_saved_steps(workdir) or first.failed() or stop.is_set() or
               time.time() > deadline):
      time.sleep(0.02)
    first.kill()
    killed["steps"] = _saved_steps(workdir)
    killed["rows"] = _rows(workdir) if (workdir / "metrics.jsonl").exists() else []

  watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
  watcher.start()
  try:
    cfg = _config(data_file, mode)
    cfg.train.num_devices = 4
    reference = fit(cfg, root / "one", progress=False)
    watcher.join()
    if not killed["steps"]:
      pytest.fail(f"the two processes wrote no checkpoint:\n{first.tail()}")
    error = restart.go().wait()
    if error:
      pytest.fail(f"the restarted processes failed: {error}")
  finally:
    stop.set()
    watcher.join()
    first.kill()
    restart.kill()
  evaluations = [json.loads(out.read_text()) for out in restart.outputs]
  return dict(workdir=workdir, steps=killed["steps"], rows=killed["rows"],
              evaluations=evaluations, one=root / "one", reference=reference)


@pytest.fixture(scope="module")
def pmap_run(data_file, tmp_path_factory):
  return _scenario("pmap", data_file, tmp_path_factory.mktemp("pmap"))


@pytest.fixture(scope="module")
def shard_map_run(data_file, tmp_path_factory):
  return _scenario("shard_map", data_file, tmp_path_factory.mktemp("shard_map"))


def test_union_of_process_batches_is_the_single_process_batch():
  data = sources.make_array_data(np.arange(90, dtype=np.float32)[:, None], None, "toy")
  whole = iter(pipeline.make_train_loader(data, batch_size=12, seed=1))
  parts = [iter(pipeline.make_process_train_loader(data, global_batch_size=12, seed=1,
                                                   process_index=i, process_count=3))
           for i in range(3)]
  for _ in range(20):  # past two epochs
    np.testing.assert_array_equal(np.concatenate([next(p)["x"] for p in parts]),
                                  next(whole)["x"])
  state = parts[0].get_state()
  assert state == parts[2].get_state()  # one saved state serves every process


def test_eval_slices_cover_every_example_once():
  batch = {"x": np.arange(8)[:, None], "mask": np.ones(8)}
  got = [distributed.process_slice(batch, i, 4)["x"][:, 0] for i in range(4)]
  np.testing.assert_array_equal(np.concatenate(got), np.arange(8))
  with pytest.raises(Exception, match="multiple of 3"):
    distributed.process_slice(batch, 0, 3)


def test_settings_from_flags_env_and_errors():
  env = {"AE_JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "AE_JAX_NUM_PROCESSES": "2",
         "AE_JAX_PROCESS_ID": "1"}
  s = distributed.resolve_settings(environ=env)
  assert (s.coordinator_address, s.num_processes, s.process_id, s.wanted) == (
      "10.0.0.1:1234", 2, 1, True)
  s = distributed.resolve_settings("h:1", 4, 3, environ=env)  # flags win
  assert (s.coordinator_address, s.num_processes, s.process_id) == ("h:1", 4, 3)
  assert not distributed.resolve_settings(environ={}).wanted
  assert not distributed.resolve_settings(num_processes=1, environ={}).wanted
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}
  assert distributed.resolve_settings(environ=slurm).cluster == "slurm"
  batch_step = dict(slurm, SLURM_STEP_NUM_TASKS="1")  # a batch script, not an srun step
  assert not distributed.resolve_settings(environ=batch_step).wanted
  with pytest.raises(ConfigError, match="missing: --coordinator-address"):
    distributed.resolve_settings(num_processes=2, process_id=0, environ={})
  with pytest.raises(ConfigError, match=r"in \[0, 2\)"):
    distributed.resolve_settings("h:1", 2, 2, environ={})
  with pytest.raises(ConfigError, match="must be an integer"):
    distributed.resolve_settings(environ={"AE_JAX_NUM_PROCESSES": "two"})
  assert not distributed.initialize_from_flags_or_env(num_processes=1)
  with distributed.run_context(num_processes=1) as running:
    assert not running
  assert jax.process_count() == 1


def _check_two_train_like_one(run):
  step = run["steps"][-1]
  # The newest checkpoint written collectively by the two processes before the kill.
  chex.assert_trees_all_close(_params_at(run["workdir"], step), _params_at(run["one"], step),
                              rtol=1e-5, atol=1e-6)
  rows = [r for r in run["rows"] if r["step"] <= step]
  ref_rows = [r for r in _rows(run["one"]) if r["step"] <= step]
  assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in ref_rows]
  assert any(r["split"] == "eval" for r in rows)  # evaluated over both processes' slices
  np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in ref_rows],
                             rtol=1e-5)


def _check_resume(run, data_file):
  steps, reference = run["steps"], run["reference"]
  assert steps[-1] < NUM_STEPS, f"killed too late to test resuming: checkpoints {steps}"
  trained = Trained.load(run["workdir"])
  assert trained.step == reference.step == NUM_STEPS
  chex.assert_trees_all_close(trained.params, reference.params, rtol=1e-5, atol=1e-6)
  rows, ref_rows = _rows(run["workdir"]), _rows(run["one"])  # process 0 wrote each row once
  assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in ref_rows]
  np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in ref_rows],
                             rtol=1e-5)
  expected = reference.evaluate(sources.load(str(data_file)))
  for got in run["evaluations"]:  # every process's Trained evaluates all of the data
    assert got["step"] == NUM_STEPS
    for name, value in expected.items():
      np.testing.assert_allclose(got["evaluate"][name], value, rtol=1e-5)


def test_two_processes_train_like_one_pmap(pmap_run):
  _check_two_train_like_one(pmap_run)


def test_killed_processes_resume_like_an_uninterrupted_run_pmap(pmap_run, data_file):
  _check_resume(pmap_run, data_file)


SLOW = pytest.mark.skipif(
    os.environ.get("AE_JAX_SLOW_TESTS") != "1",
    reason="a second two-process run (shard_map) doubles this file's time; "
           "set AE_JAX_SLOW_TESTS=1 to run it")


@pytest.mark.slow
@SLOW
def test_two_processes_train_like_one_shard_map(shard_map_run):
  _check_two_train_like_one(shard_map_run)


@pytest.mark.slow
@SLOW
def test_killed_processes_resume_like_an_uninterrupted_run_shard_map(shard_map_run,
                                                                     data_file):
  _check_resume(shard_map_run, data_file)


def test_an_error_ends_both_processes_instead_of_hanging(tmp_path):
  bad = tmp_path / "nan.npy"
  np.save(bad, np.full((64, 12), np.nan, np.float32))
  launch = _Launch(tmp_path / "bad", bad, "pmap", tmp_path / "cache", "bad").go()
  deadline = time.time() + 120
  while any(p.poll() is None for p in launch.procs) and time.time() < deadline:
    time.sleep(0.1)
  hung = [p.poll() is None for p in launch.procs]
  launch.kill()
  assert not any(hung), f"a process hung after the error:\n{launch.tail()}"
  assert all(p.returncode > 0 for p in launch.procs), launch.tail()
  assert "NaN/inf in the training split" in launch.logs[0].read_text()
