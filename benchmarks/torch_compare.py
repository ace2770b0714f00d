"""JAX side by side with PyTorch: the same MLP and conv autoencoders, forward round trip
and Adam+MSE train step, timed in turns in one process, with the JAX/PyTorch ratio.

`python -m benchmarks.torch_compare [--smoke] [--out torch_compare.json]`
`  [--networks mlp,conv28,conv32] [--tasks forward,train] [--batches 1,64,256,4096]`
`  [--train-batches 1,64,256] [--variants eager,channels_last,compile] [--scan-steps 8]`
`  [--conv-chunks -1,0] [--batch-chunks -1,0,32,64]`

JAX: the `ae` family of `benchmarks.architectures`, float32; the forward is
`model.reconstruct` compiled ahead of time; the train step is `ae_jax.train.train_step`
through `ae_jax.parallel.compile_step(mode='jit')`, once with one step per call and once
with `--scan-steps` steps per call (`lax.scan`). PyTorch: the twins in
`benchmarks.torch_models`, eager (NCHW), eager `channels_last` (conv only) and
`torch.compile` (inductor; `--compile-backend eager` only checks that it traces), with
`torch.optim.Adam`. Without torch installed, prints why and exits 0.
All variants of one row are timed in turns, so a change in the machine's load falls on
all of them alike; `--order blocks` times each variant in one block instead, which keeps
PyTorch's spinning OpenMP threads from slowing the JAX calls that follow them.
`--omp-wait-policy passive` (the default) sets OMP_WAIT_POLICY=PASSIVE before PyTorch
starts, so its idle OpenMP threads sleep instead of spinning on the cores JAX's next
call needs; `active` keeps OpenMP's spinning.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import numpy as np

from ae_jax import batching, conv as conv_lib, parallel, train
from benchmarks import architectures, common

VARIANTS = ("eager", "channels_last", "compile")
TASKS = ("forward", "train")


def _jax_forward(network, batch, chunk=-1, batch_chunk=-1):
  compiled, params, x, compile_s = architectures.compiled_roundtrip(
      network, batch, conv_batch_chunk=chunk, batch_chunk=batch_chunk)

  def call():
    with jax.transfer_guard("disallow"):
      jax.block_until_ready(compiled(params, x))
  return call, compile_s, 1


def _jax_train(network, batch, steps_per_call, chunk=-1, microbatch=-1):
  cfg, model, family, state = architectures.train_state("ae", network, "float32", batch,
                                                        conv_batch_chunk=chunk,
                                                        microbatch=microbatch)
  step = functools.partial(train.train_step, model=model, family=family, config=cfg)
  run = parallel.compile_step(step, "jit", steps_per_call=steps_per_call)
  x = architectures.example_batch(network, batch)
  if steps_per_call > 1:
    x = np.stack([x] * steps_per_call)
  holder = {"state": jax.device_put(state), "batch": {"x": jax.device_put(x)},
            "rng": jax.random.key(1)}

  def call():
    with jax.transfer_guard("disallow"):
      holder["state"], metrics = run(holder["state"], holder["batch"], holder["rng"])
      jax.block_until_ready((holder["state"], metrics))
  t0 = time.perf_counter()
  call()
  return call, time.perf_counter() - t0, steps_per_call


def _torch_setup(torch, torch_models, network, batch, variant, device):
  """(model, input) on `device`, both channels_last for that variant."""
  model = torch_models.autoencoder(network).to(device)
  x = torch_models.torch_input(network, architectures.example_batch(network, batch)).to(device)
  if variant == "channels_last":
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
  return model, x


def _synchronize(torch, device):
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def _torch_forward(torch, torch_models, network, batch, variant, backend, device):
  model, x = _torch_setup(torch, torch_models, network, batch, variant, device)
  model.eval()
  fn = torch.compile(model, dynamic=False, backend=backend) if variant == "compile" else model

  def call():
    with torch.inference_mode():
      fn(x)
    _synchronize(torch, device)
  t0 = time.perf_counter()
  call()
  return call, time.perf_counter() - t0, 1


def _torch_train(torch, torch_models, network, batch, variant, backend, device):
  model, x = _torch_setup(torch, torch_models, network, batch, variant, device)
  model.train()
  fn = torch.compile(model, dynamic=False, backend=backend) if variant == "compile" else model
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  mse = torch.nn.functional.mse_loss

  def call():
    opt.zero_grad(set_to_none=True)
    loss = mse(fn(x), x)
    loss.backward()
    opt.step()
    _synchronize(torch, device)
  t0 = time.perf_counter()
  call()
  return call, time.perf_counter() - t0, 1


def bench_row(torch, torch_models, network, task, batch, variants, scan_steps, *, repeats,
              min_repeats, budget_s, backend="inductor", device="cpu", blocks=False,
              conv_chunks=(-1,), batch_chunks=(-1,), log=print) -> dict:
  """One row: every variant timed in turns. `conv_chunks` (conv networks): the
  `model.conv_batch_chunk` settings timed, the first as `jax`, the others as
  `jax_chunk<n>` (`jax_chunk0`: no chunking). `batch_chunks`: the whole-network chunk
  settings timed, `model.batch_chunk` for the forward and `train.microbatch` for the
  train step, the first as `jax`, the others as `jax_bc<n>` (`jax_bc0`: off), each with
  the first conv chunk setting; the scanned train step uses the first of both."""
  builders = {}
  chunks = list(conv_chunks) if network != "mlp" else [-1]
  settings = [(f"jax_chunk{c}", c, batch_chunks[0]) for c in chunks[1:]]
  settings += [(f"jax_bc{b}", chunks[0], b) for b in batch_chunks[1:]]
  for name, chunk, whole in [("jax", chunks[0], batch_chunks[0]), *settings]:
    if task == "forward":
      builders[name] = functools.partial(_jax_forward, network, batch, chunk, whole)
    else:
      builders[name] = functools.partial(_jax_train, network, batch, 1, chunk, whole)
  if task != "forward":
    if scan_steps > 1:
      builders[f"jax_scan{scan_steps}"] = functools.partial(
          _jax_train, network, batch, scan_steps, chunks[0], batch_chunks[0])
  torch_fn = _torch_forward if task == "forward" else _torch_train
  for v in variants:
    if v == "channels_last" and network == "mlp":
      continue
    builders[f"torch_{v}"] = functools.partial(torch_fn, torch, torch_models, network, batch, v,
                                               backend, device)
  calls, compile_s, per_call = {}, {}, {}
  for name, build in builders.items():
    calls[name], compile_s[name], per_call[name] = build()
  timings = common.time_interleaved(calls, repeats=repeats, min_repeats=min_repeats,
                                    budget_s=budget_s, blocks=blocks)
  row = {"network": network, "task": task, "batch": batch, "variants": {}}
  for name, timing in timings.items():
    s = timing.summary()
    row["variants"][name] = {**s, "compile_s": compile_s[name],
                             "examples_per_s": batch * per_call[name] / s["median_s"],
                             "steps_per_s": per_call[name] / s["median_s"]}
  eps = {name: v["examples_per_s"] for name, v in row["variants"].items()}
  torch_eps = {k: v for k, v in eps.items() if k.startswith("torch_")}
  jax_eps = {k: v for k, v in eps.items() if k.startswith("jax")}
  for k, v in eps.items():
    row[f"{k}_eps"] = v
  if torch_eps:
    best_torch = max(torch_eps, key=torch_eps.get)
    row["best_torch"] = best_torch
    for j, v in jax_eps.items():
      if "torch_eager" in torch_eps:
        row[f"{j}_over_torch_eager"] = v / torch_eps["torch_eager"]
      row[f"{j}_over_best_torch"] = v / torch_eps[best_torch]
  log(f"{network:6s} {task:7s} b={batch:<5d} " + "  ".join(
      f"{k} {v:,.0f}" for k, v in eps.items()) + " ex/s")
  return row


def _columns(rows):
  keys = []
  for r in rows:
    for k in r:
      if k.endswith("_eps") or "_over_" in k:
        if k not in keys:
          keys.append(k)
  eps = [k for k in keys if k.endswith("_eps")]
  ratios = [k for k in keys if "_over_" in k]
  return ([("network", "network"), ("task", "task"), ("batch", "batch")]
          + [(k[:-4] + " ex/s", k) for k in eps]
          + [(k.replace("_over_", " / "), k) for k in ratios])


def main(argv=None) -> dict | None:
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--networks", type=common.str_list, default=None)
  parser.add_argument("--tasks", type=common.str_list, default=list(TASKS))
  parser.add_argument("--batches", type=common.int_list, default=None,
                      help="forward batches (default 1,64,256,4096)")
  parser.add_argument("--train-batches", type=common.int_list, default=None,
                      help="train step batches (default 1,64,256)")
  parser.add_argument("--variants", type=common.str_list, default=list(VARIANTS))
  parser.add_argument("--compile-backend", default="inductor",
                      help="torch.compile backend ('eager' only checks that tracing works)")
  parser.add_argument("--torch-device", default="cpu", help="cpu, or cuda on a GPU machine")
  parser.add_argument("--conv-chunks", type=common.int_list, default=[-1],
                      help="conv networks: model.conv_batch_chunk settings to time, the first "
                      "as 'jax', the others as 'jax_chunk<n>' (-1 auto, 0 off); "
                      "e.g. --conv-chunks=-1,0")
  parser.add_argument("--batch-chunks", type=common.int_list, default=[-1],
                      help="settings of model.batch_chunk (forward) and train.microbatch "
                      "(train step) to time, the first as 'jax', the others as 'jax_bc<n>' "
                      "(-1 auto, 0 off); e.g. --batch-chunks=-1,0,32,64")
  parser.add_argument("--order", choices=("turns", "blocks"), default="turns",
                      help="time the variants in turns (default) or each in one block")
  parser.add_argument("--scan-steps", type=int, default=None,
                      help="steps per call of the scanned JAX train step (default 8; 1 = off)")
  parser.add_argument("--omp-wait-policy", choices=("passive", "active"), default="passive",
                      help="OpenMP wait policy of PyTorch's threads (set before torch starts)")
  args = common.parse(parser, argv)
  if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    print(f"torch_compare skipped: PyTorch is not importable ({e}); "
          "install it with `pip install -e \".[compare]\"`")
    return None
  smoke = args.smoke
  networks = args.networks or (["mlp", "conv28"] if smoke else list(architectures.NETWORKS))
  batches = args.batches or ([8] if smoke else [1, 64, 256, 4096])
  train_batches = args.train_batches or ([8] if smoke else [1, 64, 256])
  scan_steps = args.scan_steps or (2 if smoke else 8)
  repeats = args.repeats or (2 if smoke else 15)
  min_repeats = 2 if smoke else 3
  budget_s = args.budget or (0.05 if smoke else 1.5)
  bad = set(args.variants) - set(VARIANTS)
  if bad:
    parser.error(f"unknown --variants {sorted(bad)}; valid: {', '.join(VARIANTS)}")

  t0 = time.perf_counter()
  rows = []
  for network in networks:
    for task in args.tasks:
      for batch in (batches if task == "forward" else train_batches):
        rows.append(bench_row(torch, torch_models, network, task, batch, args.variants,
                              scan_steps, repeats=repeats, min_repeats=min_repeats,
                              budget_s=budget_s, backend=args.compile_backend,
                              device=args.torch_device, blocks=args.order == "blocks",
                              conv_chunks=args.conv_chunks,
                              batch_chunks=args.batch_chunks))
  env = common.environment()
  env["torch_threads"] = torch.get_num_threads()
  env["torch_device"] = args.torch_device
  env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
  payload = {"benchmark": "torch_compare", "command": common.command_line(),
             "environment": env, "smoke": smoke, "dtype": "float32",
             "compile_backend": args.compile_backend, "order": args.order,
             "conv_chunks": args.conv_chunks, "auto_batch_chunk": conv_lib.AUTO_BATCH_CHUNK,
             "batch_chunks": args.batch_chunks,
             "auto_model_batch_chunk": batching.AUTO_BATCH_CHUNK,
             "auto_microbatch": batching.AUTO_MICROBATCH,
             "rows": rows,
             "wall_s": time.perf_counter() - t0}
  common.write_json(args.out, payload)
  print(common.rows_table(rows, _columns(rows)))
  return payload


if __name__ == "__main__":
  main()
