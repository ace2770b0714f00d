"""Soak test of the real training loop: memory and compile count over many steps.

Runs `ae_jax.fit.fit` for --steps steps (default 10,000) of a small MLP autoencoder on
digits while a thread samples the process's resident memory, and a JAX monitoring
listener counts backend compilations. A healthy loop compiles everything in its first
steps and then holds both flat.

  python -m benchmarks.train_soak [--steps 10000] [--smoke] [--out results/train_soak.json]
"""

import argparse
import pathlib
import platform
import threading
import time

import jax
from jax import monitoring

from ae_jax import configs, results
from ae_jax.fit import fit


def rss_mib() -> float:
  """Current resident set size of this process in MiB (Linux /proc)."""
  for line in pathlib.Path("/proc/self/status").read_text().splitlines():
    if line.startswith("VmRSS:"):
      return int(line.split()[1]) / 1024
  return float("nan")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=10_000)
  p.add_argument("--smoke", action="store_true", help="100 steps")
  p.add_argument("--out", default="results/train_soak.json")
  args = p.parse_args(argv)
  steps = 100 if args.smoke else args.steps

  cfg = configs.get_preset("default")
  cfg.train.num_steps = steps
  cfg.train.parallel = "jit"
  cfg.train.eval_every = max(steps // 10, 1)
  cfg.train.log_every = max(steps // 100, 1)
  cfg.train.figures = False

  compiles: list[float] = []
  samples: list[tuple[float, float]] = []
  t0 = time.time()
  listener = lambda name, *a, **kw: compiles.append(time.time() - t0) if name.endswith(
      "backend_compile_duration") else None
  monitoring.register_event_duration_secs_listener(listener)
  stop = threading.Event()

  def sample():
    while not stop.is_set():
      samples.append((time.time() - t0, rss_mib()))
      stop.wait(0.25)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  trained = fit(cfg, progress=False)
  stop.set()
  thread.join()
  monitoring.unregister_event_duration_listener(listener)
  wall = time.time() - t0

  train_rows = [r for r in trained.history if r["split"] == "train"]
  # After 20% of the steps the first evaluation has run and everything is compiled.
  warm = next(r["timestamp"] for r in train_rows if r["step"] >= steps // 5) - t0
  late = [m for t, m in samples if t >= warm]
  result = {
      "benchmark": "train_soak", "steps": steps, "device": jax.devices()[0].device_kind,
      "jax": jax.__version__, "python": platform.python_version(), "wall_s": round(wall, 2),
      "steps_per_s": round(steps / wall, 1),
      "compiles_total": len(compiles),
      "compiles_after_first_20pct": sum(t > warm for t in compiles),
      "rss_mib_at_20pct": round(late[0], 1) if late else None,
      "rss_mib_end": round(samples[-1][1], 1),
      "rss_mib_max_after_20pct": round(max(late), 1) if late else None,
      "rss_growth_after_20pct_mib": round(samples[-1][1] - late[0], 1) if late else None,
      "final_loss": train_rows[-1]["loss"],
      "command": results.command(), "environment": results.environment(),
  }
  results.write_json(args.out, result)
  print(results.markdown_table([{
      "steps": steps, "wall s": result["wall_s"], "steps/s": result["steps_per_s"],
      "compiles (total / after 20%)": f"{len(compiles)} / {result['compiles_after_first_20pct']}",
      "RSS MiB at 20% → end (max)": f"{result['rss_mib_at_20pct']} → {result['rss_mib_end']} "
                                    f"({result['rss_mib_max_after_20pct']})"}], fmt=str), end="")
  return result


if __name__ == "__main__":
  main()
