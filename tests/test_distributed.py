"""Two processes on 127.0.0.1 (2 emulated CPU devices each, gloo collectives) train as one.

The processes are real `ae-jax train` commands on JAX's distributed runtime; the
reference is one process with 4 devices training the same global batches in pytest.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from ae_jax import configs, distributed
from ae_jax.data import pipeline, sources
from ae_jax.errors import ConfigError
from ae_jax.fit import Trained, fit

NUM_STEPS = 24
CHECKPOINT_EVERY = 4
LAUNCH_TIMEOUT_S = 240


def _overrides(data_file, mode):
  return {"data.name": str(data_file), "model.family": "denoising", "train.parallel": mode,
          "train.num_steps": NUM_STEPS, "train.checkpoint_every": CHECKPOINT_EVERY,
          "train.log_every": CHECKPOINT_EVERY, "train.eval_every": 1000}


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
  """`ae-jax train` as process 0 and 1 of one run, each in its own process group."""

  def __init__(self, workdir, data_file, mode, cache_dir):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache_dir),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    overrides = [f"--config.{k}={v}" for k, v in _overrides(data_file, mode).items()]
    self.logs, self.procs = [], []
    for i in range(2):
      log = self.workdir.parent / f"{self.workdir.name}.{len(list(self.workdir.parent.glob(f'{self.workdir.name}.*')))}.log"
      self.logs.append(log)
      self.procs.append(subprocess.Popen(
          [sys.executable, "-m", "ae_jax.cli", "train", "--config", "tiny", "--workdir",
           str(self.workdir), "--no-progress", "--coordinator-address", f"127.0.0.1:{port}",
           "--num-processes", "2", "--process-id", str(i), *overrides],
          stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True))

  def kill(self):
    for p in self.procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    for p in self.procs:
      p.wait()

  def wait(self, timeout=LAUNCH_TIMEOUT_S):
    """Wait for both; a failure or a time-out stops the other one and fails the test."""
    deadline = time.time() + timeout
    while time.time() < deadline:
      codes = [p.poll() for p in self.procs]
      if all(c == 0 for c in codes):
        return
      if any(c not in (None, 0) for c in codes):
        break
      time.sleep(0.2)
    self.kill()
    logs = "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in self.logs)
    pytest.fail(f"the two-process run failed (exit codes {[p.returncode for p in self.procs]})"
                f"\n{logs}")


def _saved_steps(workdir) -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in folder.glob("*") if p.name.isdigit()) if folder.is_dir() else []


def _rows(workdir):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
  rng = np.random.RandomState(0)
  x = (rng.rand(200, 12) * (rng.rand(200, 1) > 0.5)).astype(np.float32)
  path = tmp_path_factory.mktemp("data") / "toy.npy"
  np.save(path, x)
  return path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def single_process(data_file, tmp_path_factory):
  """One process, 4 devices, the same global batches: the run both launches must match."""
  cfg = _config(data_file, "pmap")
  cfg.train.num_devices = 4
  return fit(cfg, tmp_path_factory.mktemp("single"), progress=False)


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
  with pytest.raises(ConfigError, match="missing: --coordinator-address"):
    distributed.resolve_settings(num_processes=2, process_id=0, environ={})
  with pytest.raises(ConfigError, match=r"in \[0, 2\)"):
    distributed.resolve_settings("h:1", 2, 2, environ={})
  with pytest.raises(ConfigError, match="must be an integer"):
    distributed.resolve_settings(environ={"AE_JAX_NUM_PROCESSES": "two"})
  assert not distributed.initialize_from_flags_or_env(num_processes=1)
  assert jax.process_count() == 1


def test_two_processes_train_like_one(single_process, data_file, cache_dir, tmp_path):
  launch = _Launch(tmp_path / "two", data_file, "pmap", cache_dir)
  launch.wait()
  trained = Trained.load(tmp_path / "two")
  assert trained.step == NUM_STEPS
  chex.assert_trees_all_close(trained.params, single_process.params, rtol=1e-5, atol=1e-6)
  rows = _rows(tmp_path / "two")  # written by process 0 only, once
  ref = [r for r in single_process.history]
  assert [(r["step"], r["split"]) for r in rows] == [(r["step"], r["split"]) for r in ref]
  np.testing.assert_allclose([r["loss"] for r in rows], [r["loss"] for r in ref], rtol=1e-5)
  assert rows[-1]["split"] == "eval"  # evaluation over both processes' slices


def test_killed_processes_resume_like_an_uninterrupted_run(single_process, data_file,
                                                            cache_dir, tmp_path):
  workdir = tmp_path / "killed"
  launch = _Launch(workdir, data_file, "pmap", cache_dir)
  deadline = time.time() + LAUNCH_TIMEOUT_S
  while not _saved_steps(workdir) and time.time() < deadline:
    if any(p.poll() not in (None, 0) for p in launch.procs):
      launch.wait(0)
    time.sleep(0.05)
  launch.kill()
  saved = _saved_steps(workdir)
  assert saved and saved[-1] < NUM_STEPS, f"not killed mid-run: checkpoints {saved}"
  _Launch(workdir, data_file, "pmap", cache_dir).wait()
  trained = Trained.load(workdir)
  assert trained.step == NUM_STEPS
  chex.assert_trees_all_close(trained.params, single_process.params, rtol=1e-5, atol=1e-6)
