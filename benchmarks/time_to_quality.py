"""Time to quality: wall time until the MNIST-t10k MLP VAE reaches a fixed test ELBO,
for this codebase and for a PyTorch reference trained the same way.

`python -m benchmarks.time_to_quality [--smoke] [--out time_to_quality.json]`
`  [--target -125] [--batch 100] [--steps-per-call 20] [--max-epochs 60] [--sides jax,torch]`

Data: `ae_jax.data.load('mnist_t10k', split='train')` (8,000 images) for training and
split='test' (2,000) for the test ELBO, flattened to 784 values in [0, 1]. Model: the
Bernoulli VAE 784-512-256-32 of `benchmarks.architectures`, Adam 1e-3. Both sides start
from the same parameters (the Flax initialisation is copied into the PyTorch twin) and
see the same batches in the same order; only the framework differs.

The clock runs while training (the JAX side's first call, which compiles, included) and
stops during each evaluation, which comes every epoch. The JAX side is
`ae_jax.train.train_step` through `ae_jax.parallel.compile_step(mode='jit',
steps_per_call=K)`, with host batches stacked and moved to the device by a background
thread (`ae_jax.data.prefetch`). Without torch installed the PyTorch side is skipped.
"""

from __future__ import annotations

import functools
import time

import jax
import numpy as np

from ae_jax import data as ae_data
from ae_jax import parallel, train
from benchmarks import architectures, common


def load_data(train_size: int | None = None, test_size: int | None = None):
  """(train (N, 784), test (M, 784)) float32 arrays in [0, 1]."""
  tr = ae_data.load("mnist_t10k", split="train").x
  te = ae_data.load("mnist_t10k", split="test").x
  tr = np.asarray(tr, np.float32).reshape(len(tr), -1)[:train_size]
  te = np.asarray(te, np.float32).reshape(len(te), -1)[:test_size]
  return tr, te


def epoch_orders(n: int, batch: int, seed: int):
  """Endless per-epoch index batches (drop remainder), the same for both sides."""
  rng = np.random.default_rng(seed)
  while True:
    order = rng.permutation(n)
    yield [order[i:i + batch] for i in range(0, n - batch + 1, batch)]


def _record(curve, target, steps, clock, elbo, epoch):
  curve.append({"epoch": epoch, "steps": steps, "train_s": clock, "test_elbo": elbo})
  return elbo >= target


def _result(side, curve, target, reached, extra):
  hit = next((c for c in curve if c["test_elbo"] >= target), None)
  return {"side": side, "target_elbo": target, "reached": reached,
          "time_to_target_s": hit["train_s"] if hit else None,
          "steps_to_target": hit["steps"] if hit else None,
          "epochs_to_target": hit["epoch"] if hit else None,
          "final_test_elbo": curve[-1]["test_elbo"] if curve else None,
          "total_train_s": curve[-1]["train_s"] if curve else 0.0,
          "curve": curve, **extra}


def initial_state(batch: int, seed: int = 0):
  """(config, model, family, TrainState) of the VAE, from the codebase's own initialiser."""
  return architectures.train_state("vae", "mlp", "float32", batch, seed, real_init=True)


def run_jax(x_train, x_test, init, *, target, batch, steps_per_call, max_epochs, seed=0,
            log=print) -> dict:
  cfg, model, family, state = init
  step = functools.partial(train.train_step, model=model, family=family, config=cfg)
  run = parallel.compile_step(step, "jit", steps_per_call=steps_per_call)
  evaluate = jax.jit(functools.partial(train.eval_step, model=model, family=family, config=cfg))
  state = jax.device_put(state)
  rng, eval_rng = jax.random.key(seed + 1), jax.random.key(seed + 2)
  test = {"x": jax.device_put(x_test)}

  def host_calls():
    """Batches gathered on the host, as a real input pipeline's would be."""
    for epoch_batches in epoch_orders(len(x_train), batch, seed):
      usable = len(epoch_batches) - len(epoch_batches) % steps_per_call
      for i in range(0, usable, steps_per_call):
        idx = np.stack(epoch_batches[i:i + steps_per_call])
        x = x_train[idx] if steps_per_call > 1 else x_train[idx[0]]
        yield jax.device_put({"x": x})

  calls_per_epoch = (len(x_train) // batch) // steps_per_call
  source = ae_data.prefetch(host_calls(), size=2)
  curve, clock, steps, reached, compile_s = [], 0.0, 0, False, None
  try:
    for epoch in range(1, max_epochs + 1):
      t0 = time.perf_counter()
      for _ in range(calls_per_epoch):
        t_call = time.perf_counter()
        with jax.transfer_guard("disallow"):
          state, metrics = run(state, next(source), rng)
        if compile_s is None:
          jax.block_until_ready(metrics)
          compile_s = time.perf_counter() - t_call
        steps += steps_per_call
      jax.block_until_ready(state)
      clock += time.perf_counter() - t0
      sums, count = evaluate(state.params, test, eval_rng)
      elbo = train.finalize_eval(family, cfg, sums, count)["elbo"]
      log(f"jax   epoch {epoch:3d} steps {steps:6d} train {clock:7.2f}s test ELBO {elbo:8.2f}")
      if _record(curve, target, steps, clock, elbo, epoch):
        reached = True
        break
  finally:
    source.close()
  return _result("jax", curve, target, reached,
                 {"first_call_s": compile_s, "steps_per_call": steps_per_call})


def run_torch(x_train, x_test, flax_params, *, target, batch, max_epochs, seed=0,
              log=print) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import torch_models  # pylint: disable=g-import-not-at-top
  model = torch_models.mlp_vae_from_flax(flax_params)
  opt = torch.optim.Adam(model.parameters(), lr=1e-3)
  gen = torch.Generator().manual_seed(seed)
  xt = torch.from_numpy(x_train)
  xe = torch.from_numpy(x_test)
  latent = architectures.LATENT_DIM
  orders = epoch_orders(len(x_train), batch, seed)
  curve, clock, steps, reached = [], 0.0, 0, False
  for epoch in range(1, max_epochs + 1):
    t0 = time.perf_counter()
    model.train()
    for idx in next(orders):
      x = xt[torch.from_numpy(idx)]
      eps = torch.randn(len(idx), latent, generator=gen)
      rec, kl = torch_models.vae_terms(model, x, eps)
      loss = (rec + kl).mean()
      opt.zero_grad(set_to_none=True)
      loss.backward()
      opt.step()
      steps += 1
    clock += time.perf_counter() - t0
    model.eval()
    with torch.inference_mode():
      eps = torch.randn(len(xe), latent, generator=torch.Generator().manual_seed(seed + 2))
      rec, kl = torch_models.vae_terms(model, xe, eps)
      elbo = float(-(rec + kl).mean())
    log(f"torch epoch {epoch:3d} steps {steps:6d} train {clock:7.2f}s test ELBO {elbo:8.2f}")
    if _record(curve, target, steps, clock, elbo, epoch):
      reached = True
      break
  return _result("torch", curve, target, reached, {"torch_threads": torch.get_num_threads()})


COLUMNS = [("side", "side"), ("target ELBO", "target_elbo"), ("reached", "reached"),
           ("time to target s", "time_to_target_s"), ("epochs", "epochs_to_target"),
           ("steps", "steps_to_target"), ("final test ELBO", "final_test_elbo"),
           ("train s", "total_train_s")]


def main(argv=None) -> dict:
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--target", type=float, default=None,
                      help="test ELBO to reach, nats (default -125)")
  parser.add_argument("--batch", type=int, default=None, help="batch size (default 100)")
  parser.add_argument("--steps-per-call", type=int, default=None,
                      help="JAX optimizer steps per compiled call (default 20)")
  parser.add_argument("--max-epochs", type=int, default=None)
  parser.add_argument("--sides", type=common.str_list, default=["jax", "torch"])
  parser.add_argument("--seed", type=int, default=0)
  args = common.parse(parser, argv)
  smoke = args.smoke
  target = args.target if args.target is not None else (-450.0 if smoke else -125.0)
  batch = args.batch or (32 if smoke else 100)
  steps_per_call = args.steps_per_call or (2 if smoke else 20)
  max_epochs = args.max_epochs or (2 if smoke else 60)
  x_train, x_test = load_data(256 if smoke else None, 128 if smoke else None)

  t0 = time.perf_counter()
  init = initial_state(batch, args.seed)
  flax_params = jax.device_get(init[3].params)  # the JAX side donates its state
  results = []
  if "jax" in args.sides:
    results.append(run_jax(x_train, x_test, init, target=target, batch=batch,
                           steps_per_call=steps_per_call, max_epochs=max_epochs, seed=args.seed))
  if "torch" in args.sides:
    try:
      import torch  # pylint: disable=g-import-not-at-top,unused-import
    except ImportError as e:
      print(f"torch side skipped: PyTorch is not importable ({e}); "
            "install it with `pip install -e \".[compare]\"`")
    else:
      results.append(run_torch(x_train, x_test, flax_params, target=target, batch=batch,
                               max_epochs=max_epochs, seed=args.seed))
  ratio = None
  times = {r["side"]: r["time_to_target_s"] for r in results}
  if times.get("jax") and times.get("torch"):
    ratio = times["torch"] / times["jax"]
  payload = {"benchmark": "time_to_quality", "command": common.command_line(),
             "environment": common.environment(), "smoke": smoke, "dtype": "float32",
             "batch": batch, "target_elbo": target, "train_examples": len(x_train),
             "test_examples": len(x_test), "results": results,
             "torch_time_over_jax_time": ratio, "wall_s": time.perf_counter() - t0}
  common.write_json(args.out, payload)
  print(common.rows_table(results, COLUMNS))
  if ratio is not None:
    print(f"PyTorch time / JAX time to ELBO {target}: {ratio:.2f}")
  return payload


if __name__ == "__main__":
  main()
