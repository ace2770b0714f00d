"""What every benchmark shares: command-line flags, timing, FLOPs; the environment, JSON and
tables through `ae_jax.results`, the toolkit the experiments use too.

Timing follows one recipe: inputs are on the device before the clock starts, the
function is compiled ahead of time and warmed up, every call is blocked on, and a
repeat times as many calls as fill `min_repeat_s`, so that the median and spread over
repeats describe one call.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import statistics
import sys
import time
from typing import Any, Callable, Sequence

from ae_jax import results

CPU_DEVICES_FLAG = "--xla_force_host_platform_device_count"


def emulate_cpu_devices(count: int) -> None:
  """Ask XLA for `count` CPU devices; must run before jax is first imported."""
  if "jax" in sys.modules:
    raise RuntimeError("emulate_cpu_devices must run before jax is imported")
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(CPU_DEVICES_FLAG)]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"{CPU_DEVICES_FLAG}={count}"])


# XLA:CPU's library for dots. 'ynn' is XLA's default here (YNNPACK fusions); the others
# turn those off: 'eigen' leaves dots to XLA's runtime matmul, 'xnn' and 'onednn' fuse
# them through XNNPACK or oneDNN. CPU only; set before the backend starts.
CPU_DOT_FLAGS = {
    "ynn": [],
    "eigen": ["--xla_cpu_experimental_ynn_fusion_type="],
    "xnn": ["--xla_cpu_experimental_ynn_fusion_type=",
            "--xla_cpu_experimental_xnn_fusion_type=dot"],
    "onednn": ["--xla_cpu_experimental_ynn_fusion_type=",
               "--xla_cpu_experimental_onednn_fusion_type=dot"],
}


def use_cpu_dot_library(name: str) -> None:
  """Add the XLA flags of `CPU_DOT_FLAGS[name]`; they take effect only if no JAX backend
  has started in this process yet (a warning says so otherwise)."""
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  flags = CPU_DOT_FLAGS[name]
  if not flags:
    return
  if xla_bridge.backends_are_initialized():
    print(f"warning: --xla-cpu-dot {name} ignored: the JAX backend has already started")
    return
  current = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join(current + [f for f in flags if f not in current])


def base_parser(description: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny sizes and 2 repeats: checks that the benchmark runs")
  parser.add_argument("--out", type=pathlib.Path, default=None, help="write the JSON here")
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed repeats per row (default 15, 2 with --smoke)")
  parser.add_argument("--budget", type=float, default=None,
                      help="seconds of timed calls per row before repeats are cut "
                           "(never below 3 repeats, 2 with --smoke)")
  parser.add_argument("--xla-cpu-dot", choices=sorted(CPU_DOT_FLAGS), default="ynn",
                      help="XLA:CPU dot library (default: XLA's own choice, YNNPACK)")
  return parser


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
  """Parse the flags and apply --xla-cpu-dot before JAX starts its backend."""
  args = parser.parse_args(argv)
  use_cpu_dot_library(args.xla_cpu_dot)
  return args


def int_list(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v]


def str_list(text: str) -> list[str]:
  return [v for v in text.split(",") if v]


# Environment, JSON and tables come from the one results toolkit (ae_jax.results).
environment = results.environment
package_version = results.package_version


@dataclasses.dataclass
class Timing:
  """Seconds per call of each timed repeat."""
  per_call_s: list[float]
  calls_per_repeat: int

  def summary(self) -> dict[str, float | int]:
    s = sorted(self.per_call_s)
    q = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else [s[0]] * 3
    return {"median_s": statistics.median(s), "q25_s": q[0], "q75_s": q[2],
            "min_s": s[0], "max_s": s[-1], "repeats": len(s),
            "calls_per_repeat": self.calls_per_repeat}


def time_calls(call: Callable[[], Any], *, repeats: int, min_repeats: int = 3,
               budget_s: float = 2.0, min_repeat_s: float = 0.02, warmup: int = 2) -> Timing:
  """Time `call()` (which must block until its result is ready).

  Each repeat runs enough calls to last `min_repeat_s`; repeats stop early once
  `budget_s` of timed calls have run, but never before `min_repeats`.
  """
  return time_interleaved({"call": call}, repeats=repeats, min_repeats=min_repeats,
                          budget_s=budget_s, min_repeat_s=min_repeat_s, warmup=warmup)["call"]


def time_interleaved(calls: dict[str, Callable[[], Any]], *, repeats: int, min_repeats: int = 3,
                     budget_s: float = 2.0, min_repeat_s: float = 0.02, warmup: int = 2,
                     blocks: bool = False) -> dict[str, Timing]:
  """Time several calls in turns (one repeat of each, round after round), so that a
  change in the machine's load between rounds falls on all of them alike: their
  ratios are what a shared machine can measure. `budget_s` is per call.

  With `blocks`, each call instead runs all its repeats (after its own warm-up) before
  the next starts: threads that one framework leaves spinning (PyTorch's OpenMP pool)
  then do not slow the next call of another framework in the same process.
  """
  if blocks:
    return {name: time_interleaved({name: call}, repeats=repeats, min_repeats=min_repeats,
                                   budget_s=budget_s, min_repeat_s=min_repeat_s,
                                   warmup=warmup)[name]
            for name, call in calls.items()}
  per_repeat = {}
  for name, call in calls.items():
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
      call()
    one = (time.perf_counter() - start) / max(warmup, 1)
    per_repeat[name] = max(1, min(10_000, math.ceil(min_repeat_s / max(one, 1e-7))))
  per_call = {name: [] for name in calls}
  spent, rounds = 0.0, 0
  while rounds < repeats and (rounds < min_repeats or spent < budget_s * len(calls)):
    for name, call in calls.items():
      n = per_repeat[name]
      t0 = time.perf_counter()
      for _ in range(n):
        call()
      dt = time.perf_counter() - t0
      spent += dt
      per_call[name].append(dt / n)
    rounds += 1
  return {name: Timing(per_call[name], per_repeat[name]) for name in calls}


def blocking(fn: Callable, *args) -> Callable[[], Any]:
  """A no-argument call of fn(*args) that waits for its result."""
  import jax  # pylint: disable=g-import-not-at-top
  return lambda: jax.block_until_ready(fn(*args))


def aot_compile(fn: Callable, *args, **jit_kwargs):
  """(compiled, lower_s, compile_s): jit(fn) traced and lowered, then compiled, timed apart."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  lowered = jax.jit(fn, **jit_kwargs).lower(*args)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  return compiled, t1 - t0, time.perf_counter() - t1


def xla_flops(compiled) -> float | None:
  """FLOPs of one call from XLA's cost analysis, or None where the backend gives none."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def jaxpr_flops(fn: Callable, *args) -> float:
  """FLOPs of one call counted from its jaxpr: 2 * multiply-adds of every dot and
  convolution (transposed convolutions count only real inputs, not dilation zeros)."""
  import jax  # pylint: disable=g-import-not-at-top
  return _count(jax.make_jaxpr(fn)(*args).jaxpr)


def _count(jaxpr) -> float:
  from jax.extend import core  # pylint: disable=g-import-not-at-top
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
      del rc, lb
      lhs = eqn.invars[0].aval.shape
      out = math.prod(eqn.outvars[0].aval.shape)
      total += 2.0 * out * math.prod(lhs[d] for d in lc)
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      spec = eqn.params["dimension_numbers"].rhs_spec
      window = math.prod(rhs[d] for d in spec[2:])
      cin = rhs[spec[1]]
      out = math.prod(eqn.outvars[0].aval.shape)
      dilation = math.prod(eqn.params["lhs_dilation"])
      total += 2.0 * out * window * cin / dilation
    for sub in core.jaxprs_in_params(eqn.params):
      inner = _count(sub)
      total += inner * (eqn.params.get("length", 1) if name == "scan" else 1)
  return total


def _compact(v) -> str:
  if v is None:
    return "—"
  if isinstance(v, float):
    if v == 0 or 0.01 <= abs(v) < 1e5:
      return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return f"{v:.3g}"
  return str(v)


def rows_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
  """A markdown table of `rows` with (header, key) columns; floats printed compactly."""
  return results.markdown_table(rows, list(columns), fmt=_compact).rstrip("\n")


def write_json(path: pathlib.Path | None, payload: dict) -> None:
  """The benchmark's JSON (nothing when path is None), announced on stdout."""
  results.write_json(path, payload, indent=1, announce=True)


def command_line() -> str:
  return results.command()
