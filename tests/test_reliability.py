"""The reliability promises: clear errors before compiling, NaN guard, crash safety,
damaged-checkpoint fallback, determinism, and no pickle."""

import contextlib
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from ae_jax import data as data_lib
from ae_jax import families
from ae_jax.checkpoint import LATEST_DIR
from ae_jax.errors import CheckpointError, ConfigError, DataError, NonFiniteError
from ae_jax.fit import Trained, fit

PACKAGE = pathlib.Path(families.__file__).parent.parent  # the ae_jax package


# ---- a family whose loss turns NaN on chosen steps ---------------------------------

def _nan_terms(model, params, batch, keys, step, cfg, train):
  terms = families.get_family("ae").terms(model, params, batch, keys, step, cfg, train)
  if step is None:  # evaluation
    return terms
  lo, hi = cfg.objective.nan_from, cfg.objective.nan_until
  bad = (step >= lo) & (step < hi)
  terms["loss"] = terms["loss"] + jnp.where(bad, jnp.nan, 0.0)
  return terms


if "test_nan" not in families.FAMILIES:
  families.FAMILIES.register("test_nan")(
      families.Family("test_nan", families.get_family("ae").build, _nan_terms))


def _nan_cfg(cfg, lo, hi):
  cfg.model.family = "test_nan"
  cfg.objective.nan_from = lo
  cfg.objective.nan_until = hi
  cfg.train.parallel = "jit"
  return cfg


@contextlib.contextmanager
def count_compiles():
  events = []
  listener = lambda name, *a, **kw: events.append(name) if name.endswith(
      "backend_compile_duration") else None
  monitoring.register_event_duration_secs_listener(listener)
  try:
    yield events
  finally:
    monitoring.unregister_event_duration_listener(listener)


def _arrays(x, y=None, name="test"):
  return data_lib.sources.make_array_data(np.asarray(x, np.float32), y, name)


# ---- 1. bad input: clear errors raised before anything compiles --------------------

def test_nonfinite_data_names_split_and_index_before_compiling(cfg):
  x = np.random.RandomState(0).rand(64, 5).astype(np.float32)
  x[9, 2] = np.nan
  x[30, 0] = np.inf
  with count_compiles() as compiles, pytest.raises(DataError) as err:
    fit(cfg, train_data=_arrays(x), progress=False)
  assert "NaN/inf in the training split" in str(err.value)
  assert "index 9" in str(err.value) and "data.nonfinite" in str(err.value)
  assert not compiles


@pytest.mark.parametrize("policy,expected_n", [("drop", 62), ("impute", 64)])
def test_nonfinite_policies_drop_or_impute(cfg, policy, expected_n):
  x = np.random.RandomState(0).rand(64, 5).astype(np.float32)
  x[9, 2] = np.nan
  x[30, 0] = np.inf
  cfg.data.nonfinite = policy
  cfg.data.val_fraction = 0.0
  cfg.train.num_steps = 2
  cfg.train.parallel = "jit"
  from ae_jax.fit import prepare_data
  train, _, _ = prepare_data(cfg, _arrays(x))
  assert len(train) == expected_n and np.isfinite(train.x).all()
  assert np.isfinite(fit(cfg, train_data=_arrays(x), progress=False).history[-1]["loss"])


def test_wrong_shape_for_network_says_expected_and_got(cfg):
  cfg.model.network = "conv2d"
  with count_compiles() as compiles, pytest.raises(ConfigError) as err:
    fit(cfg, train_data=_arrays(np.zeros((64, 20))), progress=False)
  assert "expects examples of shape (H, W, C), got (20,)" in str(err.value)
  assert not compiles
  cfg.model.network = "conv2d"
  cfg.model.channels = (8, 8, 8)
  with pytest.raises(ConfigError, match="divisible by 8, got \\(12, 12\\)"):
    fit(cfg, train_data=_arrays(np.zeros((64, 12, 12, 1))), progress=False)


def test_trained_model_rejects_inputs_of_another_shape(cfg):
  cfg.train.num_steps = 2
  cfg.train.parallel = "jit"
  trained = fit(cfg, progress=False)
  with pytest.raises(DataError, match=r"expected examples of shape \(8, 8, 1\), got \(64,\)"):
    trained.encode(np.zeros((3, 64)))


def test_empty_data_and_too_few_examples_for_a_batch(cfg):
  with pytest.raises(DataError, match="empty"):
    fit(cfg, train_data=_arrays(np.zeros((0, 4))), progress=False)
  cfg.data.val_fraction = 0.0
  cfg.train.batch_size = 16
  with count_compiles() as compiles, pytest.raises(DataError) as err:
    fit(cfg, train_data=_arrays(np.zeros((10, 4))), progress=False)
  assert "10 examples, fewer than one batch of 16" in str(err.value)
  assert not compiles
  cfg.train.batch_size = 12  # 8 emulated devices under pmap
  cfg.train.parallel = "pmap"
  with pytest.raises(ConfigError, match="not a multiple of the 8 devices"):
    fit(cfg, train_data=_arrays(np.zeros((40, 4))), progress=False)


def test_unknown_names_list_the_valid_ones(cfg):
  cfg.model.family = "transformer"
  with pytest.raises(ConfigError, match="valid family names are: ae, contractive, cvae, denoising"):
    fit(cfg, progress=False)
  cfg.model.family = "ae"
  cfg.model.network = "resnet"
  with pytest.raises(ConfigError, match="valid network names are: conv1d, conv2d, mlp"):
    fit(cfg, progress=False)
  cfg.model.network = "mlp"
  cfg.data.name = "imagenet_local"
  with pytest.raises(ConfigError, match="digits"):
    fit(cfg, progress=False)


def test_out_of_range_and_wrong_type_config_values(cfg):
  from ae_jax.cli import set_value
  with pytest.raises(ConfigError, match="latent_dim = 'sixteen' has the wrong type: expected int"):
    set_value(cfg, "model.latent_dim", "sixteen")
  cfg.model.family = "denoising"
  cfg.objective.noise_level = -0.1
  with count_compiles() as compiles, pytest.raises(ConfigError, match="noise_level must be >= 0"):
    fit(cfg, progress=False)
  assert not compiles
  cfg.model.family = "sparse"
  cfg.model.sparsity = "topk"
  cfg.model.k = 99
  with pytest.raises(ConfigError, match=r"model.k must be an integer in \[1, latent_dim=4\]"):
    fit(cfg, progress=False)
  cfg.model.family = "ae"
  cfg.train.batch_size = 0
  with pytest.raises(ConfigError, match="train.batch_size must be a positive integer"):
    fit(cfg, progress=False)


def test_overcomplete_latent_warns(cfg):
  cfg.model.latent_dim = 128
  cfg.train.num_steps = 1
  cfg.train.parallel = "jit"
  with pytest.warns(UserWarning, match="not smaller than the input size 64"):
    fit(cfg, progress=False)


def test_checkpoint_of_another_architecture_is_refused(cfg, tmp_path):
  cfg.train.num_steps = 4
  cfg.train.parallel = "jit"
  fit(cfg, tmp_path, progress=False)
  cfg.model.latent_dim = 6
  with pytest.raises(CheckpointError) as err:
    fit(cfg, tmp_path, progress=False)
  assert "model.latent_dim: checkpoint 4 vs config 6" in str(err.value)
  assert "use a new workdir" in str(err.value)


def test_corrupt_data_file_is_a_data_error(tmp_path):
  path = tmp_path / "x.npz"
  np.savez(path, X=np.zeros((10, 3)))
  path.write_bytes(path.read_bytes()[:40])
  with pytest.raises(DataError, match="x.npz"):
    data_lib.load(str(path))


# ---- 2. NaN guard ------------------------------------------------------------------

def test_nonfinite_step_stops_with_step_and_intact_checkpoint(cfg, tmp_path):
  cfg = _nan_cfg(cfg, 5, 10**9)  # the 6th step (state.step == 5) is the first bad one
  cfg.train.num_steps = 20
  cfg.train.checkpoint_every = 2
  cfg.train.log_every = 1
  with pytest.raises(NonFiniteError) as err:
    fit(cfg, tmp_path, progress=False)
  message = str(err.value)
  assert "non-finite loss or gradient at step 6" in message
  assert "last good checkpoint is step 4" in message and "left intact" in message
  restored = Trained.load(tmp_path)
  assert restored.step == 4
  chex.assert_tree_all_finite(restored.params)
  cfg.train.num_steps = 4
  reference = fit(cfg, progress=False)
  chex.assert_trees_all_equal(restored.params, reference.params)


def test_skip_bad_steps_mode_and_its_limit(cfg):
  cfg = _nan_cfg(cfg, 5, 8)  # three bad steps
  cfg.train.num_steps = 12
  cfg.train.nonfinite = "skip"
  cfg.train.max_skipped_steps = 2
  with pytest.raises(NonFiniteError, match="3 non-finite steps were skipped"):
    fit(cfg, progress=False)
  cfg.train.max_skipped_steps = 5
  trained = fit(cfg, progress=False)
  assert trained.step == 12
  chex.assert_tree_all_finite(trained.params)


# ---- 3. crash safety ---------------------------------------------------------------

def _train_cmd(workdir, steps):
  return [sys.executable, "-m", "ae_jax.cli", "train", "--config", "tiny", "--workdir",
          str(workdir), "--no-progress", f"--config.train.num_steps={steps}",
          "--config.train.checkpoint_every=5", "--config.train.parallel=jit",
          "--config.model.family=denoising"]


def _env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return env


@pytest.mark.slow
def test_sigkill_during_training_then_resume_is_bit_exact(tmp_path):
  steps = 100
  # The uninterrupted reference trains in a process of its own beside the killed one.
  whole_log = tmp_path / "whole.log"
  with whole_log.open("w") as log:
    whole = subprocess.Popen(_train_cmd(tmp_path / "whole", steps), env=_env(), stdout=log,
                             stderr=subprocess.STDOUT)
  proc = subprocess.Popen(_train_cmd(tmp_path / "killed", steps), env=_env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    ckpt_dir = tmp_path / "killed" / LATEST_DIR
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      done = [p for p in ckpt_dir.glob("*") if p.name.isdigit()] if ckpt_dir.exists() else []
      if any(int(p.name) >= 10 for p in done):
        break
      time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name) for p in ckpt_dir.glob("*") if p.name.isdigit())
    assert killed_at < steps
    resumed = subprocess.run(_train_cmd(tmp_path / "killed", steps), env=_env(),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert whole.wait(timeout=300) == 0, whole_log.read_text()[-3000:]
  finally:
    for p in (proc, whole):
      if p.poll() is None:
        p.kill()
        p.wait()
  a, b = Trained.load(tmp_path / "killed"), Trained.load(tmp_path / "whole")
  assert a.step == b.step == steps
  chex.assert_trees_all_equal(a.params, b.params)


def _garble(step_dir: pathlib.Path, how: str):
  files = [p for p in step_dir.rglob("*") if p.is_file()]
  assert files
  for p in files:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3] if how == "truncate" else bytes(
        (b ^ 0x5A) for b in data))


@pytest.mark.parametrize("how", ["truncate", "garble"])
def test_damaged_latest_checkpoint_falls_back_to_previous(cfg, tmp_path, how):
  cfg.train.num_steps = 10
  cfg.train.checkpoint_every = 5
  cfg.train.parallel = "jit"
  fit(cfg, tmp_path, progress=False)
  _garble(tmp_path / LATEST_DIR / "10", how)
  with pytest.warns(RuntimeWarning, match="step 10 .* falling back to the previous one"):
    restored = Trained.load(tmp_path)
  assert restored.step == 5
  cfg.train.num_steps = 5
  chex.assert_trees_all_equal(restored.params, fit(cfg, progress=False).params)
  cfg.train.num_steps = 10
  with pytest.warns(RuntimeWarning, match="falling back"):
    resumed = fit(cfg, tmp_path, progress=False)
  assert resumed.step == 10


# ---- 4. determinism ----------------------------------------------------------------

def _strip_time(history):
  return [{k: v for k, v in row.items() if k not in ("time", "timestamp")} for row in history]


def test_same_seed_gives_bit_identical_runs(cfg):
  cfg.model.family = "vae"
  cfg.model.recon_loss = "bce"
  cfg.train.num_steps = 15
  cfg.train.parallel = "jit"
  a, b = fit(cfg, progress=False), fit(cfg, progress=False)
  chex.assert_trees_all_equal(a.params, b.params)
  assert _strip_time(a.history) == _strip_time(b.history)


def test_pmap_and_shard_map_runs_agree(cfg):
  cfg.model.family = "denoising"
  cfg.train.num_steps = 10
  cfg.train.batch_size = 16
  runs = {}
  for mode in ("pmap", "shard_map"):
    cfg.train.parallel = mode
    runs[mode] = fit(cfg, progress=False)
  chex.assert_trees_all_close(runs["pmap"].params, runs["shard_map"].params,
                              rtol=1e-5, atol=1e-6)


# ---- 5. safety ---------------------------------------------------------------------

def test_no_pickle_anywhere_in_the_package():
  banned = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|joblib|cloudpickle|dill|shelve)\b"
                      r"|allow_pickle\s*=\s*True", re.M)
  offenders = [str(p) for p in PACKAGE.rglob("*.py") if banned.search(p.read_text())]
  assert not offenders, offenders


def test_loading_a_checkpoint_runs_no_code_from_it(cfg, tmp_path):
  """The checkpoint's JSON may hold any text: it is parsed as data, never executed."""
  cfg.train.num_steps = 2
  cfg.train.parallel = "jit"
  cfg.data.name = "digits"
  fit(cfg, tmp_path, progress=False)
  marker = tmp_path / "executed"
  meta_files = list((tmp_path / LATEST_DIR / "2").rglob("*meta*"))
  payload = f"__import__('pathlib').Path({str(marker)!r}).write_text('x')"
  for p in [f for f in meta_files if f.is_file()]:
    p.write_text(p.read_text().replace('"version": 1', f'"version": 1, "x": "{payload}"'))
  Trained.load(tmp_path)
  assert not marker.exists()


# ---- 6. load (the figures themselves come from the benchmark scripts) ---------------

@pytest.mark.slow
def test_train_soak_script_runs_in_smoke_mode(tmp_path):
  from benchmarks import train_soak
  result = train_soak.main(["--smoke", "--out", str(tmp_path / "soak.json")])
  assert result["steps"] == 100 and result["compiles_total"] > 0
  assert result["compiles_after_first_20pct"] == 0
  assert (tmp_path / "soak.json").exists()


@pytest.mark.slow
def test_detector_load_script_runs_in_smoke_mode(tmp_path):
  from benchmarks import detector_load
  result = detector_load.main(["--smoke", "--out", str(tmp_path / "load.json")])
  assert result["rows"] == 20_000 and result["all_finite"]
  assert 0.0 < result["share_flagged"] < 0.5


def test_evaluating_again_reuses_the_compiled_step(cfg):
  """Evaluation compiles once per architecture and config: again with other parameters,
  or with an equal config in a new object, compiles nothing; another config compiles."""
  import copy
  from ae_jax.trained import evaluate
  cfg.train.parallel = "jit"
  x = np.random.RandomState(0).rand(64, 5).astype(np.float32)
  trained = fit(cfg, train_data=_arrays(x), progress=False)
  data = _arrays(x)
  first = evaluate(trained.config, trained.model, trained.params, data)
  zeros = jax.tree.map(np.zeros_like, trained.params)
  with count_compiles() as compiles:
    again = evaluate(trained.config, trained.model, trained.params, data)
    other = evaluate(copy.deepcopy(trained.config), trained.model, zeros, data)
  assert not compiles
  assert again == first and other["loss"] != first["loss"]
  changed = copy.deepcopy(trained.config)
  changed.objective.noise_level = 0.25
  with count_compiles() as compiles:
    evaluate(changed, trained.model, trained.params, data)
  assert compiles
