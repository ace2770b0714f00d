"""Load test of anomaly scoring: 1,000,000 flat examples of dimension 32 through a
trained `AutoencoderDetector`, streamed from a memory-mapped .npy file in chunks.

Reports examples/s and the process's peak resident memory (ru_maxrss) before scoring,
after scoring and the growth; the data on disk never has to fit in memory at once.

  python -m benchmarks.detector_load [--rows 1000000] [--smoke] [--out results/detector_load.json]
"""

import argparse
import pathlib
import platform
import resource
import tempfile
import time

import jax
import numpy as np

from ae_jax import results
from ae_jax.anomaly import AutoencoderDetector


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_rows(path: pathlib.Path, rows: int, dim: int, seed: int) -> np.ndarray:
  """A (rows, dim) float32 .npy of Gaussian inliers with 1% shifted outliers, in chunks."""
  out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
  rng = np.random.default_rng(seed)
  for start in range(0, rows, 100_000):
    stop = min(start + 100_000, rows)
    block = rng.normal(size=(stop - start, dim)).astype(np.float32)
    block[rng.random(stop - start) < 0.01] += 4.0
    out[start:stop] = block
  out.flush()
  return np.load(path, mmap_mode="r")


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rows", type=int, default=1_000_000)
  p.add_argument("--dim", type=int, default=32)
  p.add_argument("--chunk", type=int, default=65_536, help="rows handed over per call")
  p.add_argument("--smoke", action="store_true", help="20,000 rows, a short fit")
  p.add_argument("--out", default="results/detector_load.json")
  args = p.parse_args(argv)
  rows = 20_000 if args.smoke else args.rows

  rng = np.random.default_rng(0)
  train = rng.normal(size=(5_000, args.dim)).astype(np.float32)
  detector = AutoencoderDetector(ensemble=1, max_steps=50 if args.smoke else 500, seed=0)
  t = time.perf_counter()
  detector.fit(train)
  fit_s = time.perf_counter() - t

  with tempfile.TemporaryDirectory() as tmp:
    data = write_rows(pathlib.Path(tmp) / "rows.npy", rows, args.dim, seed=1)
    detector.decision_function(data[: args.chunk])  # compile outside the timing
    rss_before = peak_rss_mib()
    scores = np.empty(rows, np.float32)
    t = time.perf_counter()
    for start in range(0, rows, args.chunk):
      scores[start:start + args.chunk] = detector.decision_function(
          data[start:start + args.chunk])
    score_s = time.perf_counter() - t
    rss_after = peak_rss_mib()
    flagged = float(np.mean(scores > detector.threshold_))

  result = {
      "benchmark": "detector_load", "rows": rows, "dim": args.dim, "chunk": args.chunk,
      "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "python": platform.python_version(), "fit_s": round(fit_s, 2),
      "score_s": round(score_s, 2), "examples_per_s": round(rows / score_s),
      "peak_rss_mib_before_scoring": round(rss_before, 1),
      "peak_rss_mib_after_scoring": round(rss_after, 1),
      "peak_rss_growth_mib": round(rss_after - rss_before, 1),
      "data_mib_on_disk": round(rows * args.dim * 4 / 2**20, 1),
      "share_flagged": round(flagged, 4), "all_finite": bool(np.isfinite(scores).all()),
      "command": results.command(), "environment": results.environment(),
  }
  results.write_json(args.out, result)
  print(results.markdown_table([{
      "rows × dim": f"{rows:,} × {args.dim}", "data on disk MiB": result["data_mib_on_disk"],
      "score s": result["score_s"], "examples/s": f"{result['examples_per_s']:,}",
      "peak RSS MiB before → after scoring": f"{result['peak_rss_mib_before_scoring']} → "
                                             f"{result['peak_rss_mib_after_scoring']}"}],
      fmt=str), end="")
  return result


if __name__ == "__main__":
  main()
