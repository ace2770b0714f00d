"""The machine's achievable matmul FLOP/s: a large square product in JAX and in numpy.

`python -m benchmarks.peak [--size 4096] [--torch] [--smoke] [--out peak.json]`

float32 through JAX (XLA) and numpy (its BLAS), bfloat16 through JAX; with `--torch` also
PyTorch's float32 and bfloat16 products (oneDNN: on a CPU with AMX it multiplies bfloat16
on the AMX tiles), which shows what the CPU can do beside what XLA makes of it. `measure(...)` is reused by the encode/decode benchmark for the fraction
of peak that each row reaches; `peak_flops(results, dtype)` picks the best figure.
"""

from __future__ import annotations

import re
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common


def jax_matmul_call(size: int, dtype=jnp.float32):
  """(blocking call of a compiled (size x size) @ (size x size) product, compile seconds)."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.uniform(key_a, (size, size), jnp.float32).astype(dtype)
  b = jax.random.uniform(key_b, (size, size), jnp.float32).astype(dtype)
  compiled, _, compile_s = common.aot_compile(jnp.matmul, a, b)
  return common.blocking(compiled, a, b), compile_s


def numpy_matmul_call(size: int):
  """A call of numpy's float32 (size x size) product (its BLAS), into a preallocated output."""
  rng = np.random.default_rng(0)
  a = rng.random((size, size), dtype=np.float32)
  b = rng.random((size, size), dtype=np.float32)
  out = np.empty_like(a)
  return lambda: np.matmul(a, b, out=out)


def torch_matmul_call(size: int, dtype: str):
  """A call of PyTorch's (size x size) product in `dtype` into a preallocated output (the
  `[compare]` extra; PyTorch picks its own kernel, e.g. oneDNN's AMX matmul for bfloat16)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
  gen = torch.Generator().manual_seed(0)
  a = torch.rand((size, size), generator=gen).to(torch_dtype)
  b = torch.rand((size, size), generator=gen).to(torch_dtype)
  out = torch.empty_like(a)
  return lambda: torch.matmul(a, b, out=out)


def _timed(call, compile_s, repeats: int, budget_s: float, min_repeats: int) -> dict:
  timing = common.time_calls(call, repeats=repeats, min_repeats=min_repeats,
                             budget_s=budget_s, warmup=1, min_repeat_s=0.0)
  return {"compile_s": compile_s, **timing.summary()}


def bf16_native() -> bool:
  """Whether the device multiplies bfloat16 in hardware. XLA runs bfloat16 everywhere,
  but a CPU without AVX512-BF16 or AMX emulates it, usually slower than float32."""
  if jax.devices()[0].platform != "cpu":
    return True
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      flags = f.read()
  except OSError:
    return False
  return "avx512_bf16" in flags or "amx_bf16" in flags


_DEFINITION = re.compile(r"%([\w.\-]+) = (\w+)\[")
_DOT = re.compile(r"= \w+\[[^\]]*\]\S* dot\(([^)]*)\)")


def dot_operand_dtypes(dtype, size: int = 64) -> list[str]:
  """Element types that the compiled program's dot instructions actually multiply, for a
  `dtype` matmul: read from XLA's optimised HLO (`compiled.as_text()`). ['f32'] for a
  bfloat16 product means the compiler converted the operands to float32 first (no
  bfloat16 arithmetic, whatever the CPU offers)."""
  a = jnp.ones((size, size), dtype)
  return hlo_dot_operand_dtypes(jax.jit(jnp.matmul).lower(a, a).compile().as_text())


def hlo_dot_operand_dtypes(text: str) -> list[str]:
  """Sorted element types of the operands of every `dot` in HLO text."""
  types = dict(_DEFINITION.findall(text))
  found = set()
  for operands in _DOT.findall(text):
    for name in re.findall(r"%([\w.\-]+)", operands):
      if name in types:
        found.add(types[name])
  return sorted(found)


def measure(size: int = 4096, *, repeats: int = 5, budget_s: float = 6.0, min_repeats: int = 2,
            dtypes=("float32", "bfloat16"), with_numpy: bool = True,
            with_torch: bool = False) -> list[dict]:
  """One row per (library, dtype): FLOP/s of a (size x size) @ (size x size) product.
  PyTorch's rows (`with_torch`) are for comparison only: `peak_flops` ignores them, so
  fractions of peak stay fractions of what JAX and numpy reach."""
  flops = 2.0 * size ** 3
  rows = []
  for dtype in dtypes:
    rows.append({"library": "jax", "dtype": dtype, "size": size,
                 **_timed(*jax_matmul_call(size, jnp.dtype(dtype)), repeats, budget_s,
                          min_repeats)})
    if dtype == "float32" and with_numpy:
      rows.append({"library": "numpy", "dtype": dtype, "size": size,
                   **_timed(numpy_matmul_call(size), None, repeats, budget_s, min_repeats)})
    if with_torch:
      rows.append({"library": "torch", "dtype": dtype, "size": size,
                   **_timed(torch_matmul_call(size, dtype), None, repeats, budget_s,
                            min_repeats)})
  native = bf16_native()
  for row in rows:
    if row["library"] == "jax":
      row["dot_operand_dtypes"] = dot_operand_dtypes(jnp.dtype(row["dtype"]))
    # bfloat16 in hardware needs both the CPU's instructions and a compiled dot that uses them
    row["hardware_dtype"] = row["dtype"] == "float32" or (
        native and row.get("dot_operand_dtypes") == ["bf16"])
    row["flops"] = flops
    row["gflops_per_s"] = flops / row["median_s"] / 1e9
    row["gflops_per_s_best"] = flops / row["min_s"] / 1e9
  return rows


def peak_flops(rows: list[dict], dtype: str = "float32") -> float:
  """Achievable FLOP/s for `dtype`: the best median over JAX and numpy (float32's if
  none); PyTorch's comparison rows do not count."""
  own = [r["gflops_per_s"] for r in rows if r["dtype"] == dtype and r["library"] != "torch"]
  if not own:
    own = [r["gflops_per_s"] for r in rows
           if r["dtype"] == "float32" and r["library"] != "torch"]
  return max(own) * 1e9


COLUMNS = [("library", "library"), ("dtype", "dtype"), ("size", "size"),
           ("GFLOP/s (median)", "gflops_per_s"), ("GFLOP/s (best)", "gflops_per_s_best"),
           ("median ms", "median_ms"), ("repeats", "repeats"),
           ("compiled dot multiplies", "dot_operand_dtypes")]


def main(argv=None) -> dict:
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=None, help="matrix size (default 4096)")
  parser.add_argument("--torch", action="store_true",
                      help="also time PyTorch's float32 and bfloat16 products (needs the "
                      "[compare] extra), for what the CPU can do beside what XLA makes of it")
  args = common.parse(parser, argv)
  size = args.size or (256 if args.smoke else 4096)
  repeats = args.repeats or (2 if args.smoke else 7)
  t0 = time.perf_counter()
  rows = measure(size, repeats=repeats, budget_s=args.budget or (0.5 if args.smoke else 8.0),
                 min_repeats=2 if args.smoke else 3, with_torch=args.torch)
  for row in rows:
    row["median_ms"] = row["median_s"] * 1e3
  payload = {"benchmark": "peak", "command": common.command_line(),
             "environment": common.environment(), "rows": rows,
             "peak_gflops_per_s": {d: peak_flops(rows, d) / 1e9 for d in {r["dtype"] for r in rows}},
             "wall_s": time.perf_counter() - t0}
  common.write_json(args.out, payload)
  print(common.rows_table(rows, COLUMNS))
  return payload


if __name__ == "__main__":
  main()
