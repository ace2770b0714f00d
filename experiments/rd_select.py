"""Choosing the rate_distortion settings on validation: init, output, learning rate.

  python -m experiments.rd_select                 # a few minutes
  python -m experiments.rd_select --smoke         # seconds

On the 7,000 / 1,000 training / validation split of `experiments.rate_distortion` (the
test split is not read), each variant "<init>,<output>,<learning rate>" (init random |
pca, output sigmoid | linear) trains the linear dense codec at every `--lambdas` in one
vmapped sweep for `--epochs` epochs; the table gives each lambda's mean validation bytes
(the real bitstream of each image on its own, header included) and PSNR, the PSNR with
the continuous latents (no quantisation: what the transform alone can give) and the
validation PSNR interpolated (in log bytes) at the budgets of the experiment.
"""

import time

import numpy as np

from ae_jax import vmap_trials
from ae_jax import results as _io
from ae_jax.codec import Codec
from experiments import rate_distortion as rd
from experiments.rd_diagnostics import latent_checks

NAME = "rd_select"


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--variants", nargs="+",
                 default=["random,sigmoid,2e-3", "pca,sigmoid,2e-3", "pca,linear,2e-3"])
  p.add_argument("--epochs", type=int, default=20)
  p.add_argument("--lambdas", type=float, nargs="+", default=[0.004, 0.016, 0.032])
  args = p.parse_args(argv)
  rd.with_defaults(args)
  if args.smoke:
    args.epochs, args.lambdas = 1, [0.004, 0.03]
    args.variants = ["random,sigmoid,2e-3", "pca,linear,2e-3"]
  return args


def at_budget(points, budget: float):
  """Validation PSNR interpolated in log bytes at `budget` (None outside the curve)."""
  pts = sorted((p["val bytes"], p["val PSNR"]) for p in points)
  b = np.log([p[0] for p in pts])
  if not pts or not b[0] <= np.log(budget) <= b[-1]:
    return None
  return float(np.interp(np.log(budget), b, [p[1] for p in pts]))


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  train, val, _ = rd.splits(args)
  rows, summary = [], []
  for variant in args.variants:
    init, output, lr = variant.split(",")
    args.init, args.output, args.lr = init, output, float(lr)
    if args.smoke:
      args.latent, args.widths = 16, []
    t0 = time.time()
    runs = vmap_trials.fit_trials(rd.rd_config(args, args.epochs),
                                  [{"objective.rd_lambda": lam} for lam in args.lambdas],
                                  train_data=train)
    train_s = time.time() - t0
    points = []
    for lam, run in zip(args.lambdas, runs):
      if run.error:
        print(f"{variant} lambda {lam}: {run.error}")
        continue
      codec = Codec.from_trained(run.trained)
      recon = codec.reconstruct(val.x)
      points.append({"variant": variant, "lambda": lam, "epochs": args.epochs,
                     "val bytes": float(codec.bytes_per_example(val.x).mean()),
                     "val PSNR": rd.quality(recon, val.x)["psnr"],
                     "val PSNR continuous": latent_checks(run.trained, val.x)["psnr_continuous"],
                     "train s": train_s})
      print(points[-1], flush=True)
    rows += points
    summary.append({"variant": variant, "epochs": args.epochs,
                    **{f"val PSNR at {b} B": at_budget(points, b) for b in (64, 128)}})
  _io.write_results(out, {"rows": rows, "summary": summary},
                    {"Per lambda (validation, 1,000 images)": rows,
                     "At the budgets (validation, interpolated in log bytes)": summary},
                    title="rate_distortion settings on validation", echo=True)
  return rows


if __name__ == "__main__":
  main()
