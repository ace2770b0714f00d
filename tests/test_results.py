"""The results toolkit that experiments and benchmarks share."""

import json
import math

import numpy as np
import pytest

from ae_jax import results


def test_mean_std_takes_an_explicit_ddof():
  values = [1.0, 2.0, 4.0, None, math.nan]
  mean, sample = results.mean_std(values, ddof=1)
  _, population = results.mean_std(values, ddof=0)
  assert mean == pytest.approx(7 / 3)
  assert sample == pytest.approx(np.std([1, 2, 4], ddof=1))
  assert population == pytest.approx(np.std([1, 2, 4], ddof=0))
  assert results.mean_std([3.0], ddof=1) == (3.0, 0.0)
  assert all(math.isnan(v) for v in results.mean_std([None], ddof=0))
  with pytest.raises(TypeError):
    results.mean_std([1.0, 2.0])  # pylint: disable=no-value-for-parameter
  assert results.format_mean_std([1.0, 3.0], ddof=1) == "2 ± 1.4"
  assert results.format_mean_std([0.5], ddof=1) == "0.5"


def test_markdown_table_and_json(tmp_path):
  table = results.markdown_table([{"a": 1.23456, "b": None}, {"a": True, "c": "x"}])
  assert table.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.235 | – | – |",
                                "| yes | – | x |"]
  pairs = results.markdown_table([{"k": 2.0}], [("key", "k")], fmt=lambda v: f"<{v}>")
  assert pairs.splitlines()[2] == "| <2.0> |"
  path = results.write_json(tmp_path / "sub" / "r.json",
                            {"x": np.float32(0.5), "n": math.nan, "a": np.arange(2),
                             "p": tmp_path})
  assert json.loads(path.read_text()) == {"x": 0.5, "n": None, "a": [0, 1], "p": str(tmp_path)}
  assert results.write_json(None, {}) is None


def test_environment_names_the_cpu():
  env = results.environment()
  assert env["cpu_model"] and env["cpu_model"] == env["processor"]
  assert isinstance(env["cpu_isa"], list) and env["cpu_isa"] == sorted(env["cpu_isa"])
  assert all(f.startswith(results.ISA_PREFIXES) for f in env["cpu_isa"])
  assert {"jax", "backend", "device", "cpu_count", "python"} <= set(env)
