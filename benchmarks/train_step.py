"""Train step throughput: steps/s and examples/s of `ae_jax.train.train_step` compiled by
`ae_jax.parallel.compile_step` under jit (one device), pmap and jit(shard_map) over N.

`python -m benchmarks.train_step [--smoke] [--out train_step.json]`
`  [--families ae,vae,sparse] [--networks mlp,conv28,conv32] [--batches 256]`
`  [--modes jit,pmap,shard_map] [--devices 1,2,4,8] [--steps-per-call 1]`
`  [--dtypes float32] [--donate 1] [--inputs device]`

On a CPU the N devices are emulated (`--xla_force_host_platform_device_count`, set
before jax is imported): they all share this machine's cores, so more devices do not
mean more arithmetic, only more, smaller pieces of work. On a GPU or TPU, N counts the
real devices. All variants of one model are timed in turns (round robin), so their
ratios hold even when the machine's load changes during the run.

Speed options, each a column of the JSON: `--steps-per-call K` runs K optimizer steps
per compiled call (`lax.scan` over a (K, B, ...) stack of batches); `--donate 0,1`
donates the state's buffers (or not); `--inputs` feeds the step from a batch already on
the device (`device`), a fresh host numpy batch every call (`host`: the transfer is part
of the step), or host batches moved by a background thread (`prefetch`, with
`ae_jax.data.prefetch`). The timed loop of `device` and `prefetch` rows runs under
`jax.transfer_guard("disallow")`.
"""

from __future__ import annotations

import os
import sys

from benchmarks import common

if __name__ == "__main__" and "jax" not in sys.modules:
  common.emulate_cpu_devices(int(os.environ.get("AE_JAX_BENCH_CPU_DEVICES", "8")))

# pylint: disable=g-import-not-at-top,wrong-import-position
import functools
import itertools
import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from ae_jax import parallel, train
from benchmarks import architectures

MODES = ("jit", "pmap", "shard_map")
INPUTS = ("device", "host", "prefetch")
HOST_POOL = 4


class Variant:
  """One compiled step and everything it needs: state, inputs, a blocking `call()`."""

  def __init__(self, model_key, *, mode: str, devices: int, steps_per_call: int, donate: bool,
               inputs: str):
    family, network, dtype, batch = model_key
    self.key = dict(family=family, network=network, dtype=dtype, batch=batch, mode=mode,
                    devices=devices, steps_per_call=steps_per_call, donate=donate, inputs=inputs)
    cfg, model, fam, state = architectures.train_state(family, network, dtype, batch)
    step = functools.partial(train.train_step, model=model, family=fam, config=cfg)
    self.run = parallel.compile_step(step, mode, num_devices=devices if mode != "jit" else 0,
                                     donate_state=donate, steps_per_call=steps_per_call)
    if mode == "jit":
      replicated = batch_sharding = jax.devices()[0]
    else:
      mesh = parallel.data_mesh(parallel.resolve_devices(devices))
      replicated = NamedSharding(mesh, P())
      batch_sharding = NamedSharding(mesh, P(*(None,) * (steps_per_call > 1), parallel.AXIS))
    self.state = jax.device_put(state, replicated)
    self.rng = jax.device_put(jax.random.key(1), replicated)
    self.inputs = inputs
    self.batch_sharding = batch_sharding
    stack = (steps_per_call,) if steps_per_call > 1 else ()
    pool = [architectures.example_batch(network, batch, seed)
            for seed in range(HOST_POOL if inputs != "device" else 1)]
    self.host_batches = [{"x": np.stack([x] * steps_per_call) if stack else x} for x in pool]
    self.device_batch = jax.device_put(self.host_batches[0], batch_sharding)
    self.examples_per_call = batch * steps_per_call
    self.steps_per_call = steps_per_call
    self._source = None

  def _next_batch(self):
    return self.device_batch if self.inputs == "device" else next(self._source)

  def start(self):
    """Open the input stream (host batches cycle through a small pool)."""
    cycle = itertools.cycle(self.host_batches)
    if self.inputs == "host":
      self._source = cycle
    elif self.inputs == "prefetch":
      from ae_jax.data import prefetch  # pylint: disable=g-import-not-at-top
      self._source = prefetch((jax.device_put(b, self.batch_sharding) for b in cycle), size=2)

  def stop(self):
    if self.inputs == "prefetch" and self._source is not None:
      self._source.close()

  def call(self):
    guard = "allow" if self.inputs == "host" else "disallow"
    with jax.transfer_guard(guard):
      self.state, metrics = self.run(self.state, self._next_batch(), self.rng)
      jax.block_until_ready((self.state, metrics))


def variants_for(args, available: int) -> list[dict]:
  out = []
  for mode, k, donate, inputs in itertools.product(args.modes, args.steps_per_call, args.donate,
                                                   args.inputs):
    counts = [1] if mode == "jit" else [n for n in args.devices if n <= available]
    for n in counts:
      out.append(dict(mode=mode, devices=n, steps_per_call=k, donate=bool(donate),
                      inputs=inputs))
  return out


def bench_model(model_key, variant_kwargs, *, repeats, min_repeats, budget_s, log=print):
  variants = [Variant(model_key, **kw) for kw in variant_kwargs]
  first_call = {}
  for i, v in enumerate(variants):
    v.start()
    t0 = time.perf_counter()
    v.call()
    first_call[i] = time.perf_counter() - t0
  try:
    timings = common.time_interleaved({i: v.call for i, v in enumerate(variants)},
                                      repeats=repeats, min_repeats=min_repeats,
                                      budget_s=budget_s, warmup=2)
  finally:
    for v in variants:
      v.stop()
  rows = []
  for i, v in enumerate(variants):
    s = timings[i].summary()
    row = {**v.key, "first_call_s": first_call[i],
           "compile_s": max(first_call[i] - s["median_s"], 0.0), **s,
           "steps_per_s": v.steps_per_call / s["median_s"],
           "examples_per_s": v.examples_per_call / s["median_s"],
           "examples_per_s_q25": v.examples_per_call / s["q75_s"],
           "examples_per_s_q75": v.examples_per_call / s["q25_s"]}
    rows.append(row)
    log(f"{row['network']:6s} {row['family']:6s} {row['dtype']:8s} b={row['batch']:<5d} "
        f"{row['mode']:9s} n={row['devices']} K={row['steps_per_call']:<3d} "
        f"donate={int(row['donate'])} {row['inputs']:8s} {row['steps_per_s']:9.1f} steps/s "
        f"{row['examples_per_s']:>10,.0f} ex/s  compile {row['compile_s']:.2f}s")
  return rows


def pmap_vs_shard_map(rows: list[dict]) -> list[dict]:
  """shard_map's steps/s over pmap's for each matching pair of rows."""
  index = {}
  for r in rows:
    key = tuple(r[k] for k in ("family", "network", "dtype", "batch", "devices", "steps_per_call",
                                "donate", "inputs"))
    index.setdefault(key, {})[r["mode"]] = r
  out = []
  for key, modes in index.items():
    if "pmap" in modes and "shard_map" in modes:
      out.append({**dict(zip(("family", "network", "dtype", "batch", "devices", "steps_per_call",
                              "donate", "inputs"), key)),
                  "shard_map_over_pmap": modes["shard_map"]["steps_per_s"]
                                         / modes["pmap"]["steps_per_s"]})
  return out


COLUMNS = [("network", "network"), ("family", "family"), ("dtype", "dtype"), ("batch", "batch"),
           ("mode", "mode"), ("devices", "devices"), ("K", "steps_per_call"),
           ("donate", "donate"), ("inputs", "inputs"), ("steps/s", "steps_per_s"),
           ("examples/s", "examples_per_s"), ("compile s", "compile_s")]


def main(argv=None) -> dict:
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--families", type=common.str_list, default=None)
  parser.add_argument("--networks", type=common.str_list, default=None)
  parser.add_argument("--batches", type=common.int_list, default=None)
  parser.add_argument("--dtypes", type=common.str_list, default=["float32"])
  parser.add_argument("--modes", type=common.str_list, default=list(MODES))
  parser.add_argument("--devices", type=common.int_list, default=None)
  parser.add_argument("--steps-per-call", type=common.int_list, default=[1])
  parser.add_argument("--donate", type=common.int_list, default=[1])
  parser.add_argument("--inputs", type=common.str_list, default=["device"])
  args = common.parse(parser, argv)
  smoke = args.smoke
  families = args.families or (["ae"] if smoke else list(architectures.FAMILIES))
  networks = args.networks or (["mlp"] if smoke else list(architectures.NETWORKS))
  batches = args.batches or ([16] if smoke else [256])
  args.devices = args.devices or ([1, 2] if smoke else [1, 2, 4, 8])
  repeats = args.repeats or (2 if smoke else 15)
  min_repeats = 2 if smoke else 3
  budget_s = args.budget or (0.05 if smoke else 2.0)
  for name, values, valid in (("modes", args.modes, MODES), ("inputs", args.inputs, INPUTS)):
    bad = set(values) - set(valid)
    if bad:
      parser.error(f"unknown --{name} {sorted(bad)}; valid: {', '.join(valid)}")

  env = common.environment()
  available = len(jax.devices())
  note = (f"{available} devices of kind {env['device_kind']!r}" + (
      f"; these are emulated CPU devices that share {os.cpu_count()} cores"
      if env["platform"] == "cpu" and available > 1 else ""))
  print(note)
  skipped = [n for n in args.devices if n > available]
  if skipped:
    print(f"skipping device counts {skipped}: only {available} devices")
  t0 = time.perf_counter()
  rows = []
  for model_key in itertools.product(families, networks, args.dtypes, batches):
    bad = [n for n in args.devices if n <= available and model_key[3] % n]
    if bad:
      print(f"skipping {model_key}: batch {model_key[3]} does not split over {bad} devices")
      continue
    rows += bench_model(model_key, variants_for(args, available), repeats=repeats,
                        min_repeats=min_repeats, budget_s=budget_s)
  payload = {"benchmark": "train_step", "command": common.command_line(), "environment": env,
             "smoke": smoke, "note": note, "rows": rows,
             "shard_map_over_pmap": pmap_vs_shard_map(rows),
             "wall_s": time.perf_counter() - t0}
  common.write_json(args.out, payload)
  print(note)
  print(common.rows_table(rows, COLUMNS))
  return payload


if __name__ == "__main__":
  main()
