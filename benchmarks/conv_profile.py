"""Where the conv28 train step spends its time: each convolution of the conv28 autoencoder
timed alone, forward, input gradient and kernel gradient, XLA's formulation against
`ae_jax.conv`'s fast path, in turns; then the whole train step with each path.

`python -m benchmarks.conv_profile [--smoke] [--batches 64,256] [--out conv_profile.json]`
`python -m benchmarks.conv_profile --forwards phase_add,subpixel,col2im --batches 64,256 --no-layers`
  also times the whole conv28 forward (round trip, the default chunks) and train step
  with each formulation of the transposed convolutions' forward (`ae_jax.conv.
  TRANSPOSE_FORWARDS`), in turns: how the default formulation was chosen.

Layers (NHWC, 3x3 kernels): enc1 28x28x1 -> 14x14x32 stride 2; enc2 14x14x32 -> 7x7x64
stride 2; dec1 7x7x64 -> 14x14x64 transposed stride 2; dec2 14x14x64 -> 28x28x32
transposed stride 2; out 28x28x32 -> 28x28x1 stride 1. Each op is compiled ahead of
time alone (`jax.vjp` with a fixed cotangent for the gradients); GFLOP/s count the
useful multiply-adds only (no dilation zeros).
"""

from __future__ import annotations

import contextlib
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ae_jax import conv as fastconv
from ae_jax import parallel, train
from benchmarks import architectures, common

# name: (input spatial, C_in, C_out, stride, transposed)
LAYERS = {
    "enc1": (28, 1, 32, 2, False),
    "enc2": (14, 32, 64, 2, False),
    "dec1": (7, 64, 64, 2, True),
    "dec2": (14, 64, 32, 2, True),
    "out": (28, 32, 1, 1, False),
}
OPS = ("forward", "grad_input", "grad_kernel")


def layer_fn(name: str, impl: str):
  """f(x, w) of one conv28 layer with the given path ('xla' or 'fast')."""
  _, _, _, s, transposed = LAYERS[name]
  strides = (s, s)
  if transposed:
    if impl == "xla":
      return lambda x, w: lax.conv_transpose(x, w, strides, "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return lambda x, w: fastconv.conv_transpose(x, w, strides, "SAME")
  pads = tuple(fastconv.same_padding(LAYERS[name][0], 3, s) for _ in range(2))
  if impl == "xla":
    return lambda x, w: lax.conv_general_dilated(x, w, strides, pads,
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return lambda x, w: fastconv.conv(x, w, strides, pads)


def op_fn(f, op):
  if op == "forward":
    return lambda x, w, dy: f(x, w)
  if op == "grad_input":
    return lambda x, w, dy: jax.vjp(lambda x: f(x, w), x)[1](dy)[0]
  return lambda x, w, dy: jax.vjp(lambda w: f(x, w), w)[1](dy)[0]


def layer_inputs(name, batch):
  n, cin, cout, s, transposed = LAYERS[name]
  rng = np.random.default_rng(0)
  out = n * s if transposed else -(-n // s)
  x = jnp.asarray(rng.standard_normal((batch, n, n, cin), np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) / np.sqrt(9 * cin))
  dy = jnp.asarray(rng.standard_normal((batch, out, out, cout), np.float32))
  useful = 2 * 9 * cin * cout * batch * (n * n if transposed else out * out)
  return x, w, dy, useful


def profile_layers(batches, impls, repeats, budget_s, log=print):
  rows = []
  for batch in batches:
    for name in LAYERS:
      x, w, dy, flops = layer_inputs(name, batch)
      for op in OPS:
        calls, compile_s = {}, {}
        for impl in impls:
          compiled, _, compile_s[impl] = common.aot_compile(op_fn(layer_fn(name, impl), op),
                                                            x, w, dy)
          calls[impl] = common.blocking(compiled, x, w, dy)
        timings = common.time_interleaved(calls, repeats=repeats, min_repeats=2,
                                          budget_s=budget_s)
        row = {"batch": batch, "layer": name, "op": op}
        for impl, t in timings.items():
          ms = t.summary()["median_s"] * 1e3
          row[f"{impl}_ms"] = ms
          row[f"{impl}_gflops"] = flops / ms / 1e6
        if "xla" in impls and "fast" in impls:
          row["speedup"] = row["xla_ms"] / row["fast_ms"]
        rows.append(row)
        log("  ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in row.items()))
  return rows


def _train_call(batch: int, conv_impl: str = "auto"):
  """(a call of the compiled conv28 train step, seconds of its first call, which compiles
  it: a setting read at trace time must hold until then)."""
  cfg, model, family, state = architectures.train_state("ae", "conv28", "float32", batch,
                                                        conv_impl=conv_impl)
  step = functools.partial(train.train_step, model=model, family=family, config=cfg)
  run = parallel.compile_step(step, "jit")
  holder = {"state": state, "batch": {"x": jnp.asarray(
      architectures.example_batch("conv28", batch))}, "rng": jax.random.key(0)}

  def call():
    holder["state"], m = run(holder["state"], holder["batch"], holder["rng"])
    jax.block_until_ready((holder["state"], m))
  t0 = time.perf_counter()
  call()
  return call, time.perf_counter() - t0


def profile_train(batches, impls, repeats, budget_s, log=print):
  rows = []
  for batch in batches:
    calls = {}
    for impl in impls:
      calls[impl], first_s = _train_call(batch, conv_impl=impl)
      log(f"train step b={batch} {impl}: first call {first_s:.1f} s")
    timings = common.time_interleaved(calls, repeats=repeats, min_repeats=2, budget_s=budget_s)
    row = {"batch": batch, "layer": "train_step", "op": "all"}
    for impl, t in timings.items():
      ms = t.summary()["median_s"] * 1e3
      row[f"{impl}_ms"] = ms
      row[f"{impl}_eps"] = batch / ms * 1e3
    if "xla" in impls and "fast" in impls:
      row["speedup"] = row["xla_ms"] / row["fast_ms"]
    rows.append(row)
    log("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                  for k, v in row.items()))
  return rows


def _forward_call(batch: int):
  """A blocking call of the compiled conv28 round trip (`ae_jax.conv`'s settings as they
  are when it is called)."""
  compiled, params, x, _ = architectures.compiled_roundtrip("conv28", batch)
  return common.blocking(compiled, params, x)


@contextlib.contextmanager
def _setting(name: str, form: str):
  """`ae_jax.conv`'s module setting `name` set to `form` while models are traced in the
  block."""
  saved = getattr(fastconv, name)
  setattr(fastconv, name, form)
  try:
    yield
  finally:
    setattr(fastconv, name, saved)


# flag -> (`ae_jax.conv` setting it switches, its forms, row label): the whole conv28
# forward and train step, timed in turns with each form
FORMS = {
    "--forwards": ("_TRANSPOSE_FORWARD", fastconv.TRANSPOSE_FORWARDS, ""),
    "--single-channel": ("_SINGLE_CHANNEL_FORWARD", fastconv.SINGLE_CHANNEL_FORWARDS,
                         "last conv: "),
    "--correlation": ("_CORRELATION", fastconv.CORRELATIONS, "correlation: "),
}


def profile_forwards(batches, forms, repeats, budget_s, setting="_TRANSPOSE_FORWARD",
                     label="", log=print):
  """conv28 forward and train step per form in `forms` of the `ae_jax.conv` setting named
  `setting` (by default the transposed forward), timed in turns; rows' op is label + form."""
  rows = []
  for batch in batches:
    calls = {}
    for form in forms:
      with _setting(setting, form):
        calls[("forward", form)] = _forward_call(batch)
        calls[("train_step", form)], _ = _train_call(batch)
    timings = common.time_interleaved(calls, repeats=repeats, min_repeats=2, budget_s=budget_s)
    for (what, form), t in timings.items():
      ms = t.summary()["median_s"] * 1e3
      rows.append({"batch": batch, "layer": f"conv28 {what}", "op": label + form,
                   "fast_ms": ms, "fast_eps": batch / ms * 1e3})
      log(f"conv28 {what} b={batch} {label}{form}: {batch / ms * 1e3:,.0f} ex/s")
  return rows


def main(argv=None) -> dict:
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--batches", type=common.int_list, default=None)
  parser.add_argument("--impls", type=common.str_list, default=["xla", "fast"])
  parser.add_argument("--no-train", action="store_true", help="skip the whole-step timing")
  parser.add_argument("--no-layers", action="store_true", help="skip the per-layer timing")
  parser.add_argument("--forwards", type=common.str_list, default=[],
                      help="transposed-forward formulations to time on the whole conv28 "
                      f"forward and train step ({', '.join(fastconv.TRANSPOSE_FORWARDS)})")
  parser.add_argument("--single-channel", type=common.str_list, default=[],
                      help="forwards of the last (one-output-channel) convolution to time on "
                      "the whole conv28 forward and train step "
                      f"({', '.join(fastconv.SINGLE_CHANNEL_FORWARDS)})")
  parser.add_argument("--correlation", type=common.str_list, default=[],
                      help="forms of the other correlations (conv forwards, the transposed "
                      "convolutions' input gradients) to time on the whole conv28 forward "
                      f"and train step ({', '.join(fastconv.CORRELATIONS)})")
  args = common.parse(parser, argv)
  chosen = {flag: getattr(args, flag[2:].replace("-", "_")) for flag in FORMS}
  for flag, forms in chosen.items():
    known = FORMS[flag][1]
    unknown = [f for f in forms if f not in known]
    if unknown:
      parser.error(f"{flag}: unknown formulation(s) {unknown}; choose from {', '.join(known)}")
  batches = args.batches or ([4] if args.smoke else [64, 256])
  repeats = args.repeats or (2 if args.smoke else 5)
  budget_s = args.budget or (0.05 if args.smoke else 0.5)
  t0 = time.perf_counter()
  rows = [] if args.no_layers else profile_layers(batches, args.impls, repeats, budget_s)
  for flag, forms in chosen.items():
    if forms:
      setting, _, label = FORMS[flag]
      rows += profile_forwards(batches, forms, repeats, budget_s, setting=setting, label=label)
  if not args.no_train:
    rows += profile_train(batches, args.impls, repeats, budget_s)
  payload = {"benchmark": "conv_profile", "command": common.command_line(),
             "environment": common.environment(), "smoke": args.smoke, "dtype": "float32",
             "rows": rows, "wall_s": time.perf_counter() - t0}
  common.write_json(args.out, payload)
  cols = [("batch", "batch"), ("layer", "layer"), ("op", "op")]
  for impl in args.impls:
    cols += [(f"{impl} ms", f"{impl}_ms"), (f"{impl} GFLOP/s", f"{impl}_gflops"),
             (f"{impl} ex/s", f"{impl}_eps")]
  cols.append(("xla/fast time", "speedup"))
  cols = [c for c in cols if c[1] in ("batch", "layer", "op") or any(c[1] in r for r in rows)]
  print(common.rows_table(rows, cols))
  return payload


if __name__ == "__main__":
  main()
