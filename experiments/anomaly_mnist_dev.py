"""MNIST one-class, development protocol: choose the detector without the test images.

The fixed 8,000-image TRAIN split of `mnist_t10k` is cut once (seed `--dev-seed`) into a
development fit part (6,000) and a development validation part (2,000); the 2,000 TEST
images are never loaded. Each digit in turn is the normal class: every variant is fitted
on the fit-part images of that digit (the detector holds out its own 10 % of them for
early stopping and its threshold) and scores all 2,000 validation images, anomaly =
another digit. This mirrors `experiments.anomaly_mnist` at 3/4 of its training size.

A variant (name -> AutoencoderDetector arguments) is trained once per digit and then
read with every score of `--scores` that shares its training statistics (mse, gaussian,
knn, latent_knn: squared residuals); `--pairs` also reports the mean of two variants'
scores, each standardised by the mean and std of its scores on the detector's held-out
normal images (an ensemble whose members differ in network, not only in seed).

  python -m experiments.anomaly_mnist_dev --variants '{"conv": {"network": "auto"}}'
  python -m experiments.anomaly_mnist_dev --smoke
"""

import json
import shlex

import numpy as np

from ae_jax import results as _io
from experiments import _anomaly_common as common

NAME = "anomaly_mnist_dev"
DEFAULT_VARIANTS = {"mlp": {"network": "mlp"}, "conv": {"network": "auto"}}


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--data", default="mnist_t10k")
  p.add_argument("--dev-seed", type=int, default=0, help="seed of the fit / validation cut")
  p.add_argument("--dev-val", type=int, default=2000, help="validation images (of 8,000)")
  p.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
  p.add_argument("--variants", default=json.dumps(DEFAULT_VARIANTS),
                 help="JSON {name: AutoencoderDetector arguments}; scaling 'none' unless set")
  p.add_argument("--scores", nargs="+", default=["mse", "gaussian", "knn", "latent_knn"])
  p.add_argument("--pairs", nargs="*", default=[],
                 help="'a/score+b/score' means of two standardised variant scores")
  p.add_argument("--anchors", nargs="*", default=["KNN", "PCA"])
  p.add_argument("--cache", default="results/.jax_cache")
  args = p.parse_args(argv)
  args.variants = json.loads(args.variants)
  if args.smoke:
    args.digits, args.dev_val = [0, 1], 300
    args.variants = {n: {**v, "ensemble": 1, "max_steps": 5, "channels": [4, 8]}
                     for n, v in args.variants.items()}
  return args


def dev_split(train, n_val: int, seed: int):
  """(fit part, validation part) of the TRAIN split: n_val images drawn by seed."""
  order = np.random.default_rng(seed).permutation(len(train))
  return train.take(np.sort(order[n_val:])), train.take(np.sort(order[:n_val]))


def choose(table: list[dict], variants: dict) -> tuple[str, list[str]]:
  """The rule fixed before any run: the single-detector row 'variant/score' with the best
  mean ROC-AUC on the development validation images (pairs and anchors are not
  candidates, the detector trains one network per ensemble). Returns its name and the
  `experiments.anomaly_mnist` arguments that run it on the TEST split, with the
  detector's default ensemble size (the variants' own `ensemble` is dropped)."""
  rows = [r for r in table if "/" in r["detector"] and "+" not in r["detector"]]
  if not rows:
    raise ValueError("no variant/score rows in the table to choose from")
  best = max(rows, key=lambda r: r["mean ROC-AUC"])
  variant, score = best["detector"].split("/")
  kw = {k: v for k, v in variants[variant].items() if k != "ensemble"}
  network = kw.pop("network", "mlp")
  args = ["--network", network, "--scores", score]
  return best["detector"], args + (["--detector", json.dumps(kw)] if kw else [])


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  if args.cache:
    common.enable_compile_cache(args.cache)
  train, _ = _io.load_splits(args.data)
  fit_part, val_part = dev_split(train, args.dev_val, args.dev_seed)
  if args.smoke:
    fit_part = fit_part.take(np.arange(600))
  rows = []
  for digit in args.digits:
    fit_x = fit_part.x[fit_part.y == digit]
    y = (val_part.y != digit).astype(int)
    std_scores = {}
    for name, kw in args.variants.items():
      seconds, steps, read = common.fit_variant({"scaling": "none", "seed": args.seed, **kw},
                                                fit_x, args.scores)
      for score, (d, ref) in read.items():
        s = d.decision_function(val_part.x)
        std_scores[f"{name}/{score}"] = (s - ref.mean()) / max(ref.std(), 1e-12)
        rows.append({"digit": digit, "detector": f"{name}/{score}", "fit_s": seconds,
                     "steps": steps, **common.ranking_metrics(y, s)})
        print(json.dumps(rows[-1]), flush=True)
    for pair in args.pairs:
      a, b = pair.split("+")
      s = (std_scores[a] + std_scores[b]) / 2
      rows.append({"digit": digit, "detector": pair, **common.ranking_metrics(y, s)})
      print(json.dumps(rows[-1]), flush=True)
    for name in args.anchors:
      _, (s,), seconds = common.fit_anchor(name, args.seed, fit_x, val_part.x)
      rows.append({"digit": digit, "detector": name, "fit_s": seconds,
                   **common.ranking_metrics(y, s)})
      print(json.dumps(rows[-1]), flush=True)
  names = list(dict.fromkeys(r["detector"] for r in rows))
  table = [{"detector": n,
            "mean ROC-AUC": float(np.mean([r["roc_auc"] for r in rows if r["detector"] == n])),
            "mean PR-AUC": float(np.mean([r["pr_auc"] for r in rows if r["detector"] == n])),
            "per digit": " ".join(f"{r['roc_auc']:.3f}" for r in rows if r["detector"] == n),
            "fit s per digit": float(np.mean([r.get("fit_s", np.nan) for r in rows
                                              if r["detector"] == n]))} for n in names]
  result = {"args": vars(args), "rows": rows, "table": table,
            "protocol": f"TRAIN split of {args.data} cut by seed {args.dev_seed} into "
                        f"{len(fit_part)} fit / {len(val_part)} validation images; TEST unused"}
  _, md = _io.write_results(out, result, {"development validation, mean over digits": table},
                            title="MNIST one-class, development protocol")
  print(md.read_text())
  name, test_args = choose(table, args.variants)
  result["chosen"] = {"detector": name, "anomaly_mnist_args": test_args}
  _io.write_json(out / "result.json", {**result, "command": _io.command(),
                                       "environment": _io.environment()})
  print(f"chosen: {name}; on TEST: python -m experiments.anomaly_mnist "
        + " ".join(shlex.quote(a) for a in test_args))
  return result


if __name__ == "__main__":
  main()
