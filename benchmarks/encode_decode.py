"""Forward hot path: encode alone, decode alone and the round trip, per family, network,
dtype and batch size, with FLOPs per example and the fraction of the measured peak.

`python -m benchmarks.encode_decode [--smoke] [--out encode_decode.json]`
`  [--families ae,vae,sparse] [--networks mlp,conv28,conv32] [--batches 1,64,256,4096]`
`  [--ops encode,decode,roundtrip] [--dtypes float32,bfloat16] [--peak-json peak.json]`

Every row is compiled ahead of time (`jax.jit(f).lower(params, x).compile()`), with the
lowering and the compilation timed apart; params and inputs are on the device before
the clock starts and the timed loop runs under `jax.transfer_guard("disallow")`, so a
hidden host<->device copy fails the row instead of being timed. bfloat16 rows set the
model's `compute_dtype`: parameters stay float32 and are cast inside the call.
"""

from __future__ import annotations

import json
import time

import jax

from benchmarks import architectures, common, peak

OPS = ("encode", "decode", "roundtrip")
DTYPES = ("float32", "bfloat16")
BATCHES = (1, 64, 256, 4096)


def bench_row(fn, params, x, *, batch: int, repeats: int, min_repeats: int, budget_s: float,
              peak_flops: float, peak_calls=None) -> dict:
  """Compile `fn(params, x)` ahead of time and time it; one result row.

  `peak_calls` ({name: (call, flops)}): matmuls timed in turns with the row, so that
  the row's fraction of peak compares figures taken under the same load.
  """
  compiled, lower_s, compile_s = common.aot_compile(fn, params, x)
  flops = common.xla_flops(compiled)
  source = "xla_cost_analysis"
  if flops is None:
    flops, source = common.jaxpr_flops(fn, params, x), "jaxpr"
  calls = {"row": common.blocking(compiled, params, x)}
  for name, (call, _) in (peak_calls or {}).items():
    calls[name] = call
  with jax.transfer_guard("disallow"):
    timings = common.time_interleaved(calls, repeats=repeats, min_repeats=min_repeats,
                                      budget_s=budget_s)
  summary = timings["row"].summary()
  median = summary["median_s"]
  extra = {}
  if peak_calls:
    same_load = {name: peak_calls[name][1] / timings[name].summary()["median_s"]
                 for name in peak_calls}
    extra = {"interleaved_peak_gflops_per_s": {k: v / 1e9 for k, v in same_load.items()},
             "fraction_of_interleaved_peak": flops / median / max(same_load.values())}
  return {
      "batch": batch, "lower_s": lower_s, "compile_s": compile_s, **summary,
      "examples_per_s": batch / median,
      "examples_per_s_q25": batch / summary["q75_s"],
      "examples_per_s_q75": batch / summary["q25_s"],
      "flops_per_example": flops / batch, "flops_source": source,
      "gflops_per_s": flops / median / 1e9,
      "fraction_of_peak": flops / median / peak_flops, **extra,
  }


def run(families, networks, batches, ops, dtypes, *, repeats: int, min_repeats: int,
        budget_s: float, peaks: list[dict], interleave_from: int = 0, peak_size: int = 4096,
        log=print) -> list[dict]:
  rows = []
  peak_calls = None
  if interleave_from:
    jax_call, _ = peak.jax_matmul_call(peak_size)
    flops = 2.0 * peak_size ** 3
    peak_calls = {"jax_matmul": (jax_call, flops),
                  "numpy_matmul": (peak.numpy_matmul_call(peak_size), flops)}
  for network in networks:
    for family in families:
      for dtype in dtypes:
        model, params, _ = architectures.build(family, network, dtype)
        fns = architectures.forward_fns(model)
        for op in ops:
          for batch in batches:
            x = architectures.op_input(op, network, batch)
            row = {"family": family, "network": network, "dtype": dtype, "op": op,
                   **bench_row(fns[op], params, x, batch=batch, repeats=repeats,
                               min_repeats=min_repeats, budget_s=budget_s,
                               peak_flops=peak.peak_flops(peaks, dtype),
                               peak_calls=(peak_calls if interleave_from and dtype == "float32"
                                           and batch >= interleave_from else None))}
            rows.append(row)
            same = row.get("fraction_of_interleaved_peak")
            log(f"{network:6s} {family:6s} {dtype:8s} {op:9s} b={batch:<5d} "
                f"{row['examples_per_s']:>12,.0f} ex/s  {row['fraction_of_peak']:6.1%} of peak"
                + (f" ({same:6.1%} of the peak timed in turns)" if same else "")
                + f"  compile {row['compile_s']:.2f}s")
  return rows


def summary_rows(rows: list[dict]) -> list[dict]:
  """One line per (network, family, dtype, batch) with the three ops side by side."""
  table = {}
  for r in rows:
    key = (r["network"], r["family"], r["dtype"], r["batch"])
    line = table.setdefault(key, dict(zip(("network", "family", "dtype", "batch"), key)))
    line[f"{r['op']}_eps"] = r["examples_per_s"]
    line[f"{r['op']}_peak"] = 100 * r["fraction_of_peak"]
    line[f"{r['op']}_compile"] = r["compile_s"]
    if "fraction_of_interleaved_peak" in r:
      line[f"{r['op']}_peak_same_load"] = 100 * r["fraction_of_interleaved_peak"]
  return list(table.values())


COLUMNS = [("network", "network"), ("family", "family"), ("dtype", "dtype"), ("batch", "batch"),
           ("encode ex/s", "encode_eps"), ("decode ex/s", "decode_eps"),
           ("round trip ex/s", "roundtrip_eps"), ("round trip % peak", "roundtrip_peak"),
           ("round trip % peak timed in turns", "roundtrip_peak_same_load"),
           ("round trip compile s", "roundtrip_compile")]


def main(argv=None) -> dict:
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--families", type=common.str_list, default=None)
  parser.add_argument("--networks", type=common.str_list, default=None)
  parser.add_argument("--batches", type=common.int_list, default=None)
  parser.add_argument("--ops", type=common.str_list, default=list(OPS))
  parser.add_argument("--dtypes", type=common.str_list, default=list(DTYPES))
  parser.add_argument("--peak-json", default=None,
                      help="reuse the peak rows of an earlier `benchmarks.peak` JSON")
  parser.add_argument("--peak-size", type=int, default=None, help="matmul size for the peak")
  parser.add_argument("--interleave-peak-from", type=int, default=0,
                      help="for float32 rows of at least this batch, time the peak matmuls "
                           "(JAX and numpy) in turns with the row (0 = off)")
  args = common.parse(parser, argv)
  smoke = args.smoke
  families = args.families or (["ae", "vae"] if smoke else list(architectures.FAMILIES))
  networks = args.networks or (["mlp", "conv28"] if smoke else list(architectures.NETWORKS))
  batches = args.batches or ([1, 8] if smoke else list(BATCHES))
  repeats = args.repeats or (2 if smoke else 15)
  min_repeats = 2 if smoke else 3
  budget_s = args.budget or (0.05 if smoke else 1.5)
  t0 = time.perf_counter()

  if args.peak_json:
    with open(args.peak_json, encoding="utf-8") as f:
      peaks = json.load(f)["rows"]
  else:
    peaks = peak.measure(args.peak_size or (256 if smoke else 4096), repeats=2 if smoke else 5,
                         budget_s=0.2 if smoke else 6.0, min_repeats=2, dtypes=args.dtypes)
  print("peak: " + ", ".join(f"{r['library']} {r['dtype']} {r['gflops_per_s']:.1f} GFLOP/s"
                             for r in peaks))
  rows = run(families, networks, batches, args.ops, args.dtypes, repeats=repeats,
             min_repeats=min_repeats, budget_s=budget_s, peaks=peaks,
             interleave_from=args.interleave_peak_from,
             peak_size=args.peak_size or (256 if smoke else 4096))
  payload = {
      "benchmark": "encode_decode", "command": common.command_line(),
      "environment": common.environment(), "smoke": smoke,
      "peak": peaks,
      "peak_gflops_per_s": {d: peak.peak_flops(peaks, d) / 1e9 for d in args.dtypes},
      "rows": rows, "wall_s": time.perf_counter() - t0,
  }
  common.write_json(args.out, payload)
  print(common.rows_table(summary_rows(rows), COLUMNS))
  return payload


if __name__ == "__main__":
  main()
