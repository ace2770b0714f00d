"""Shared test setup: 8 virtual CPU devices (set before jax is imported), one compilation
cache for the session, fixtures, and the `shared_data` marker.

Many tests train the same small programs again (a run, then its resumed half; the same
preset in several files): a persistent compilation cache in a fresh temporary folder,
removed when the session ends, compiles each distinct program once per session. The
`backend_compile_duration` events that tests count fire on cache hits too.

`@pytest.mark.shared_data("mnist_t10k", ...)` skips a test, with a reason, unless each named
folder exists in the shared data folder (`AE_JAX_DATA_DIR`, default ../shared/data), so a
fresh clone without that folder still passes. `requires_shared_data(*names)` does the same
from inside a test and returns the folder.
"""

import os
import shutil
import tempfile

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ae_jax import configs  # noqa: E402
from ae_jax.data import data_dir  # noqa: E402


def missing_shared_data(*names: str) -> str | None:
  """Why the shared data folders `names` are not usable here, or None when they are."""
  root = data_dir()
  if root is None:
    return ("no shared data folder (set AE_JAX_DATA_DIR to it, or put it at "
            "../shared/data beside the project)")
  absent = [n for n in names if not (root / n).exists()]
  if absent:
    return f"shared data {', '.join(absent)} not in {root} (set AE_JAX_DATA_DIR)"
  return None


def requires_shared_data(*names: str):
  """Skip the calling test unless the shared folders `names` exist; returns the data folder."""
  reason = missing_shared_data(*names)
  if reason:
    pytest.skip(reason)
  return data_dir()


_CACHE_DIR = tempfile.mkdtemp(prefix="ae_jax_test_compile_cache_")
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "shared_data(*folders): needs these folders of the shared data "
      "(AE_JAX_DATA_DIR or ../shared/data); skipped with a reason when they are absent")


def pytest_unconfigure(config):
  shutil.rmtree(_CACHE_DIR, ignore_errors=True)


def pytest_runtest_setup(item):
  for mark in item.iter_markers("shared_data"):
    requires_shared_data(*mark.args)


@pytest.fixture
def fewer_optimizations():
  """Compile with few XLA optimizations for one test: for the experiment smoke runs, whose
  many small programs take longer to compile than to run. Restored afterwards."""
  old = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def cfg():
  """A fresh copy of the 'tiny' preset; tests may change it freely."""
  return configs.get_preset("tiny")


@pytest.fixture(scope="session")
def digits_data():
  """scikit-learn digits as (images (N, 8, 8, 1) float32 in [0, 1], labels (N,) int32)."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  return x, digits.target.astype(np.int32)


@pytest.fixture(scope="session")
def digits(digits_data):
  """Digits images (N, 8, 8, 1) float32 in [0, 1]."""
  return digits_data[0]


@pytest.fixture(scope="session")
def digits_labels(digits_data):
  """Digits labels (N,) int32."""
  return digits_data[1]
