"""The benchmarks run in smoke mode and write the JSON their readers expect.

No timing assertions: the figures depend on the machine and its load. Each benchmark's
`main(argv)` is called in this process (8 emulated CPU devices from conftest), with the
smallest arguments that still reach every code path.
"""

import functools
import importlib.util
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ae_jax import parallel, train  # noqa: E402
from benchmarks import (architectures, common, encode_decode, peak, time_to_quality,  # noqa: E402
                        torch_compare, train_step)

HAS_TORCH = importlib.util.find_spec("torch") is not None
ENV_KEYS = {"device_kind", "platform", "jax", "flax", "numpy", "torch", "time"}
TIMING_KEYS = {"median_s", "q25_s", "q75_s", "min_s", "max_s", "repeats"}


def _load(path):
  payload = json.loads(path.read_text())
  assert ENV_KEYS <= set(payload["environment"])
  assert payload["command"].startswith("python -m ")
  return payload


@pytest.mark.slow
def test_peak_smoke(tmp_path):
  out = tmp_path / "peak.json"
  peak.main(["--smoke", "--out", str(out)])
  payload = _load(out)
  libs = {(r["library"], r["dtype"]) for r in payload["rows"]}
  assert {("jax", "float32"), ("numpy", "float32"), ("jax", "bfloat16")} <= libs
  for row in payload["rows"]:
    assert TIMING_KEYS | {"gflops_per_s", "flops", "size", "compile_s"} <= set(row)
    assert row["gflops_per_s"] > 0
    if row["library"] == "jax":
      assert row["dot_operand_dtypes"] and isinstance(row["hardware_dtype"], bool)
  assert peak.peak_flops(payload["rows"], "float32") > 0


def test_peak_torch_rows_are_timed_but_not_counted_as_peak():
  pytest.importorskip("torch")
  rows = peak.measure(64, repeats=2, budget_s=0.2, min_repeats=2, with_numpy=False,
                      with_torch=True)
  assert {(r["library"], r["dtype"]) for r in rows} == {
      ("jax", "float32"), ("jax", "bfloat16"), ("torch", "float32"), ("torch", "bfloat16")}
  assert all(r["gflops_per_s"] > 0 for r in rows)
  # a PyTorch row far above JAX's does not become the peak that fractions are taken of
  fast = [dict(r, gflops_per_s=1e9) if r["library"] == "torch" else r for r in rows]
  jax_f32 = next(r["gflops_per_s"] for r in rows if r["library"] == "jax"
                 and r["dtype"] == "float32")
  assert peak.peak_flops(fast, "float32") == pytest.approx(jax_f32 * 1e9)


def test_dot_operand_dtypes_reads_what_the_compiled_dot_multiplies():
  converted = """
%fused (param_0: f32[4,4], param_1: f32[4,4]) -> f32[4,4] {
  %param_0 = f32[4,4]{1,0} parameter(0)
  %param_1 = f32[4,4]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,4]{1,0} dot(%param_0, %param_1), lhs_contracting_dims={1}
}
ENTRY %main (a: bf16[4,4], b: bf16[4,4]) -> bf16[4,4] {
  %a = bf16[4,4]{1,0} parameter(0)
  %wrapped_convert = f32[4,4]{1,0} fusion(%a), kind=kLoop
"""
  native = """
  %a.1 = bf16[4,4]{1,0} parameter(0)
  %b.1 = bf16[4,4]{1,0} parameter(1)
  ROOT %dot_general.0 = f32[4,4]{1,0} dot(%a.1, %b.1), lhs_contracting_dims={1}
"""
  assert peak.hlo_dot_operand_dtypes(converted) == ["f32"]
  assert peak.hlo_dot_operand_dtypes(native) == ["bf16"]
  assert peak.hlo_dot_operand_dtypes("no products here") == []
  # this JAX on this backend: a float32 product multiplies float32
  assert peak.dot_operand_dtypes(jnp.float32, size=8) == ["f32"]


@pytest.mark.slow
def test_encode_decode_smoke(tmp_path):
  out = tmp_path / "encode_decode.json"
  encode_decode.main(["--smoke", "--families", "sparse", "--networks", "mlp", "--batches", "2",
                      "--out", str(out)])
  payload = _load(out)
  rows = payload["rows"]
  assert {(r["op"], r["dtype"]) for r in rows} == {
      (o, d) for o in encode_decode.OPS for d in encode_decode.DTYPES}
  for row in rows:
    assert TIMING_KEYS | {"family", "batch", "lower_s", "compile_s", "examples_per_s",
                          "flops_per_example", "fraction_of_peak"} <= set(row)
    assert row["flops_per_example"] > 0
  assert set(payload["peak_gflops_per_s"]) == {"float32", "bfloat16"}


@pytest.mark.slow
def test_train_step_smoke(tmp_path):
  out = tmp_path / "train_step.json"
  train_step.main(["--smoke", "--devices", "2", "--steps-per-call", "2",
                   "--inputs", "prefetch", "--out", str(out)])
  payload = _load(out)
  assert "emulated CPU devices that share" in payload["note"]
  assert {(r["mode"], r["devices"]) for r in payload["rows"]} == {
      ("jit", 1), ("pmap", 2), ("shard_map", 2)}
  for row in payload["rows"]:
    assert TIMING_KEYS | {"steps_per_s", "examples_per_s", "compile_s", "steps_per_call",
                          "donate", "inputs", "batch"} <= set(row)
    assert row["steps_per_call"] == 2
  assert len(payload["shard_map_over_pmap"]) == 1


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (the [compare] extra)")
def test_torch_compare_smoke(tmp_path):
  out = tmp_path / "torch_compare.json"
  torch_compare.main(["--smoke", "--networks", "mlp", "--variants", "eager,compile",
                      "--compile-backend", "eager", "--scan-steps", "1", "--batch-chunks=-1,3",
                      "--out", str(out)])
  payload = _load(out)
  assert {(r["task"], r["batch"]) for r in payload["rows"]} == {("forward", 8), ("train", 8)}
  assert payload["batch_chunks"] == [-1, 3]
  for row in payload["rows"]:
    assert {"jax", "jax_bc3", "torch_eager", "torch_compile"} <= set(row["variants"])
    assert row["jax_over_torch_eager"] > 0 and row["jax_over_best_torch"] > 0


def test_torch_compare_without_torch_exits_cleanly(monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)
  assert torch_compare.main(["--smoke"]) is None
  assert "skipped" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.shared_data("mnist_t10k")
def test_time_to_quality_smoke(tmp_path):
  out = tmp_path / "time_to_quality.json"
  time_to_quality.main(["--smoke", "--out", str(out)])
  payload = _load(out)
  sides = {r["side"]: r for r in payload["results"]}
  assert "jax" in sides and ("torch" in sides) == HAS_TORCH
  for result in sides.values():
    assert {"time_to_target_s", "reached", "final_test_elbo", "curve"} <= set(result)
    assert result["curve"] and np.isfinite(result["final_test_elbo"])
  assert payload["target_elbo"] < 0


@pytest.mark.skipif(not HAS_TORCH, reason="PyTorch not installed (the [compare] extra)")
def test_torch_twins_are_the_same_networks():
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  for network in architectures.NETWORKS:
    _, params, _ = architectures.build("ae", network)
    assert torch_models.parameter_count(torch_models.autoencoder(network)) == sum(
        p.size for p in jax.tree.leaves(params))
  model, params, _ = architectures.build("ae", "mlp")
  x = architectures.example_batch("mlp", 3)
  twin = torch_models.mlp_autoencoder_from_flax(params)
  np.testing.assert_allclose(twin(torch.from_numpy(x)).detach().numpy(),
                             np.asarray(model.apply(params, x, method=model.reconstruct)),
                             atol=1e-5)


def test_steps_per_call_matches_single_steps():
  cfg, model, family, state = architectures.train_state("ae", "mlp", batch_size=4)
  step = functools.partial(train.train_step, model=model, family=family, config=cfg)
  xs = architectures.example_batch("mlp", 12).reshape(3, 4, 784)
  rng = jax.random.key(0)
  one = parallel.compile_step(step, "jit", donate_state=False)
  expected = state
  for x in xs:
    expected, _ = one(expected, {"x": x}, rng)
  stacked = parallel.compile_step(step, "shard_map", num_devices=2, donate_state=False,
                                  steps_per_call=3)
  got, metrics = stacked(state, {"x": xs}, rng)
  assert int(got.step) == 3 and metrics["loss"].shape == (3,)
  for a, b in zip(jax.tree.leaves(expected.params), jax.tree.leaves(got.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_timing_summary_and_flops_count():
  calls = []
  timing = common.time_calls(lambda: calls.append(1), repeats=4, min_repeats=4, budget_s=0.0,
                             min_repeat_s=0.0, warmup=1)
  assert timing.summary()["repeats"] == 4 and len(calls) == 5
  model, params, _ = architectures.build("ae", "mlp")
  fn = architectures.forward_fns(model)["roundtrip"]
  flops = common.jaxpr_flops(fn, params, np.zeros((1, 784), np.float32))
  macs = 784 * 512 + 512 * 256 + 256 * 32 + 32 * 256 + 256 * 512 + 512 * 784
  assert flops == 2 * macs
