"""Shared test setup: 8 virtual CPU devices (set before jax is imported), one compilation
cache for the session, fixtures, and the `shared_data` marker.

Many tests train the same small programs again (a run, then its resumed half; the same
preset in several files): a persistent compilation cache in a fresh temporary folder,
removed when the session ends, compiles each distinct program once per session. The
`backend_compile_duration` events that tests count fire on cache hits too. Programs are
compiled with few XLA optimizations (JAX_DISABLE_MOST_OPTIMIZATIONS=1, also for the
processes tests start), since compiling the tests' tiny programs costs more than running
them; set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test with full optimization.

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
# Few XLA optimizations (LLVM at -O0) for the session and the processes tests start: the
# tests' programs are tiny, so compiling them costs far more than running them.
# JAX_DISABLE_MOST_OPTIMIZATIONS=0 compiles as a user's run does.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

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


if os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "1":  # also when jax was imported first
  jax.config.update("jax_disable_most_optimizations", True)
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


# AE_JAX_COMPILE_STATS=1: per test, the seconds spent tracing, lowering and compiling
# programs and the persistent cache's hits and misses; the tests that compile most are
# listed at the end of the session (to see which tests compile more than they run).
_STATS = {} if os.environ.get("AE_JAX_COMPILE_STATS") == "1" else None
_CURRENT = ["(collection)"]
if _STATS is not None:
  from jax import monitoring

  def _add(key, amount):
    row = _STATS.setdefault(_CURRENT[0], {})
    row[key] = row.get(key, 0.0) + amount

  def _on_duration(event, duration, **_):
    for key in ("jaxpr_trace", "jaxpr_to_mlir_module", "backend_compile"):
      if event.endswith(f"/{key}_duration"):
        _add(key, duration)

  def _on_event(event, **_):
    if event.endswith(("/cache_hits", "/cache_misses")):
      _add(event.rsplit("/", 1)[1], 1)

  monitoring.register_event_duration_secs_listener(_on_duration)
  monitoring.register_event_listener(_on_event)

  @pytest.hookimpl(hookwrapper=True)
  def pytest_runtest_protocol(item, nextitem):
    _CURRENT[0] = item.nodeid
    yield
    _CURRENT[0] = "(between tests)"

  def pytest_terminal_summary(terminalreporter):
    total = lambda r: r.get("jaxpr_trace", 0) + r.get("jaxpr_to_mlir_module", 0) + r.get(
        "backend_compile", 0)
    rows = sorted(_STATS.items(), key=lambda kv: -total(kv[1]))
    write = terminalreporter.write_line
    write("compile seconds (trace + lower + backend) and persistent cache hits/misses:")
    for name in ("jaxpr_trace", "jaxpr_to_mlir_module", "backend_compile", "cache_hits",
                 "cache_misses"):
      write(f"  all tests {name}: {sum(r.get(name, 0) for r in _STATS.values()):.1f}")
    for nodeid, r in rows[:25]:
      write(f"  {total(r):6.1f}s (trace {r.get('jaxpr_trace', 0):.1f} lower "
            f"{r.get('jaxpr_to_mlir_module', 0):.1f} compile {r.get('backend_compile', 0):.1f})"
            f" hits {int(r.get('cache_hits', 0))} misses {int(r.get('cache_misses', 0))}"
            f"  {nodeid}")


@pytest.fixture
def fewer_optimizations():
  """Compile with few XLA optimizations for one test: for the experiment smoke runs, whose
  many small programs take longer to compile than to run; already so for the whole session
  unless JAX_DISABLE_MOST_OPTIMIZATIONS=0. Restored afterwards."""
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
