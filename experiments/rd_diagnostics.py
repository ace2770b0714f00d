"""Why the dense rate_distortion curve is flat: checks on the validation split only.

  python -m experiments.rd_diagnostics            # a few minutes
  python -m experiments.rd_diagnostics --smoke    # seconds

On the 7,000 / 1,000 training / validation split of `experiments.rate_distortion` (the
test split is not read), for `--epochs` epochs each:
- the dense MLP model at the smallest lambda of the curve, at three learning rates in one
  vmapped sweep: validation PSNR with rounded latents and with the continuous latents
  (no quantisation at all), bits per image, the share of symbols outside the coding
  alphabet (escapes) and of likelihoods at their lower bound;
- the plain `ae` family with the same MLP and latent size (no bottleneck, no noise);
- the gdn transform at two lambdas, one vmapped sweep.
The scale of the two loss terms is printed beside: lambda * bpp against the MSE.
"""

import time

import numpy as np

from ae_jax import codec as codec_lib, entropy, vmap_trials
from ae_jax import results as _io
from ae_jax.applications import metrics
from ae_jax.fit import fit
from experiments import rate_distortion as rd

NAME = "rd_diagnostics"
DENSE_LAMBDA = 0.0003  # the smallest lambda of the flat dense curve


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--gdn-epochs", type=int, default=5)
  p.add_argument("--lambdas", type=float, nargs="+", default=[0.001, 0.004],
                 help="gdn lambdas")
  args = p.parse_args(argv)
  rd.with_defaults(args)
  if args.smoke:
    args.epochs, args.gdn_epochs = 1, 1
  return args


def latent_checks(trained, x) -> dict:
  """Continuous-latent PSNR, escapes and bound hits of a rate_distortion model on x."""
  codec = codec_lib.Codec.from_trained(trained)
  model, params = codec.model, codec.params
  xs = trained._prep(x)  # pylint: disable=protected-access
  y = model.apply(params, xs, method=model.analysis)
  out = model.apply(params, y.reshape(len(xs), -1), method=model.decode)
  continuous = trained.scaler.inverse_transform(np.asarray(model.to_data(out)))
  symbols = codec.symbols(x)
  tables = codec.stream_tables
  index = symbols - tables.lower
  escapes = float(np.mean((index < 0) | (index >= tables.sizes)))
  y_hat = model.apply(params, symbols, method=model.dequantize).reshape(y.shape)
  likelihood = model.apply(params, y_hat, method=lambda m, v: m.bottleneck.likelihood(v))
  bound_hits = float(np.mean(np.asarray(likelihood) <= entropy.LIKELIHOOD_BOUND))
  return {"psnr_rounded": float(metrics.psnr(np.clip(codec.reconstruct(x), 0, 1), x).mean()),
          "psnr_continuous": float(metrics.psnr(np.clip(continuous, 0, 1), x).mean()),
          "bytes": float(codec.bytes_per_example(x).mean()),
          "ideal_bytes": float(codec_lib.ideal_bits(codec, x).mean() / 8),
          "escape_fraction": escapes, "bound_fraction": bound_hits,
          "latent_std": float(np.asarray(y).std())}


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  train, val, _ = rd.splits(args)
  rows = []
  lam = DENSE_LAMBDA
  t0 = time.time()
  runs = vmap_trials.fit_trials(rd.rd_config(args, args.epochs),
                                [{"objective.rd_lambda": lam, "optim.learning_rate": lr}
                                 for lr in (5e-4, 2e-3, 5e-3)], train_data=train)
  for run in runs:
    ev = run.trained.evaluate(val.x)
    rows.append({"model": "dense MLP rate_distortion", "lambda": lam,
                 "lr": run.overrides["optim.learning_rate"], "epochs": args.epochs,
                 "val mse": ev["mse"], "lambda*bpp": lam * ev["bpp"],
                 **latent_checks(run.trained, val.x), "train s": time.time() - t0})
    print(rows[-1], flush=True)
  t0 = time.time()
  cfg = rd.rd_config(args, args.epochs)
  cfg.model.family = "ae"
  ae = fit(cfg, progress=False, train_data=train)
  recon = np.clip(ae.reconstruct(val.x), 0, 1)
  rows.append({"model": "plain ae (same MLP, no bottleneck)", "lr": args.lr,
               "epochs": args.epochs, "val mse": float(np.mean((recon - val.x) ** 2)),
               "psnr_continuous": float(metrics.psnr(recon, val.x).mean()),
               "train s": time.time() - t0})
  print(rows[-1], flush=True)
  t0 = time.time()
  gcfg = rd.rd_config(args, args.gdn_epochs, transform="gdn")
  runs = vmap_trials.fit_trials(gcfg, [{"objective.rd_lambda": lam} for lam in args.lambdas],
                                train_data=train)
  train_s = time.time() - t0
  for lam_, run in zip(args.lambdas, runs):
    ev = run.trained.evaluate(val.x)
    rows.append({"model": "gdn rate_distortion", "lambda": lam_, "lr": args.lr,
                 "epochs": args.gdn_epochs, "val mse": ev["mse"], "lambda*bpp": lam_ * ev["bpp"],
                 **latent_checks(run.trained, val.x), "train s": train_s})
    print(rows[-1], flush=True)
  _io.write_results(out, {"rows": rows}, {"Diagnostics (validation, 1,000 images)": rows},
                    title="Why the dense rate_distortion curve is flat", echo=True)
  return rows


if __name__ == "__main__":
  main()
