"""ECG5000 `ucr`, development protocol: choose the detector and threshold rule without TEST.

Only the labelled TRAIN+VALIDATION beats (399; label 1 = normal) are loaded; the 4,499
TEST beats are not. Two ways to split them (`--split`), both fitting every detector on
normal beats only, as `experiments.anomaly_ecg5000` fits the normal TRAIN+VALIDATION beats:

  cuts:  (session 5) `--cuts` random cuts (cut c by seed `--dev-seed` + c) into a
         development validation part (`--dev-val` beats, labelled, anomaly = label 2-5)
         and a fit part, whose normal beats (~145) are fitted on; its abnormal beats are
         unused.
  kfold: the normal beats are cut into `--folds` folds (seed `--dev-seed`); fold f fits on
         the normal beats of the other folds (~193, near the 217 the TEST protocol trains
         on) and is validated on its own normal beats and on every abnormal beat (158,
         never fitted on in any fold, so each fold sees every rare class: 9 of label 3,
         16 of label 4, 2 of label 5). ROC-AUC and PR-AUC are per fold, then averaged
         (PR-AUC thus reads a higher anomaly share than TEST's 42 %); accuracy weights
         normal and abnormal beats by their shares in TRAIN+VALIDATION (60 / 40), the
         shares of TEST, so that it estimates TEST's accuracy.

Each threshold rule reads the scores of the detector's held-out 10 % of the fit beats
(computed here even when there are fewer than the detector's MIN_HELD_OUT), as in the
test protocol.

A variant (name -> AutoencoderDetector arguments) is trained once per cut and read with
every score of `--scores` that shares its training statistics (or of its own `scores`
list: a VAE's `elbo` and `nll` apply to no other family). A variant with `members`
(a list of such argument dicts, and optionally `combine`) is an EnsembleDetector whose
members differ in more than the seed; it is read once, as `name/ensemble`. PyOD anchors
run on the same cuts with the same held-out beats.

Selection rule, fixed before any run (`choose`): the variant/score row with the best
mean development ROC-AUC over the cuts (or folds), unless `--incumbent` names a row already
scored on TEST that the best row beats by less than `--margin` (0.001; added in session
16), which then stays chosen; then, for that row, the label-free rule (every
rule but f1_best) with the best mean development accuracy. It prints the
`experiments.anomaly_ecg5000` arguments that run the choice once on TEST.

  python -m experiments.anomaly_ecg5000_dev --split kfold
  python -m experiments.anomaly_ecg5000_dev --smoke
"""

import json
import shlex

import numpy as np

from ae_jax import data as data_lib
from ae_jax import results as _io
from ae_jax.anomaly import AutoencoderDetector
from experiments import _anomaly_common as common

NAME = "anomaly_ecg5000_dev"
LABEL_FREE_RULES = common.LABEL_FREE_RULES
DEFAULT_VARIANTS = {"mlp": {"network": "mlp"},
                    "mlp-long-wide": {"network": "mlp", "widths": [512, 256], "epochs": 500,
                                      "max_steps": 3000},
                    "mlp-latent8": {"network": "mlp", "latent_dim": 8},
                    "conv1d": {"network": "conv1d"}}


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--split", default="cuts", choices=("cuts", "kfold"),
                 help="how TRAIN+VALIDATION is split (see the module docstring)")
  p.add_argument("--dev-seed", type=int, default=0, help="seed of the first cut / the folds")
  p.add_argument("--cuts", type=int, default=3, help="development cuts, averaged")
  p.add_argument("--dev-val", type=int, default=160, help="labelled validation beats per cut")
  p.add_argument("--folds", type=int, default=5, help="folds of the normal beats (kfold)")
  p.add_argument("--variants", default=json.dumps(DEFAULT_VARIANTS),
                 help="JSON {name: AutoencoderDetector arguments}")
  p.add_argument("--scores", nargs="+",
                 default=["mse", "gaussian", "knn", "latent_knn", "combined"])
  p.add_argument("--anchors", nargs="*", default=["KNN", "PyOD-AE", "PCA"])
  p.add_argument("--contamination", type=float, default=0.1)
  p.add_argument("--incumbent", default="",
                 help="variant/score row already scored on TEST: it stays chosen unless a "
                      "row beats its mean ROC-AUC by --margin (see choose)")
  p.add_argument("--margin", type=float, default=0.001,
                 help="ROC-AUC a row must gain over --incumbent to replace it")
  p.add_argument("--cache", default="results/.jax_cache")
  args = p.parse_args(argv)
  args.variants = json.loads(args.variants)
  if args.smoke:
    args.cuts, args.dev_val, args.folds = 1, 120, 2
    small = lambda v: {**v, "ensemble": 1, "max_steps": 5, "channels": [4, 8]}
    args.variants = {n: {**v, "members": [small(m) for m in v["members"]]} if "members" in v
                     else small(v) for n, v in list(args.variants.items())[:1]}
    args.anchors = ["KNN"]
  return args


def dev_cut(x, y, n_val: int, seed: int):
  """(fit beats of label 1, validation beats, their 0/1 labels (1 = anomaly)) of one cut."""
  order = np.random.default_rng(seed).permutation(len(x))
  val, fit = np.sort(order[:n_val]), np.sort(order[n_val:])
  return x[fit][y[fit] == 1], x[val], (y[val] != 1).astype(int)


def dev_folds(x, y, folds: int, seed: int):
  """[(fit beats of label 1, validation beats, their 0/1 labels (1 = anomaly))] of each
  fold: the normal beats are dealt into `folds` folds in a seeded random order; fold f
  fits on the other folds' normal beats and validates on its own normal beats and on
  every abnormal beat."""
  y = np.asarray(y)
  normal, abnormal = np.flatnonzero(y == 1), np.flatnonzero(y != 1)
  if not 2 <= folds <= len(normal):
    raise ValueError(f"--folds must be between 2 and the {len(normal)} normal beats; "
                     f"got {folds}")
  order = np.random.default_rng(seed).permutation(normal)
  out = []
  for f in range(folds):
    held = np.sort(order[f::folds])
    fit = np.sort(np.setdiff1d(normal, held))
    val = np.concatenate([held, abnormal])
    out.append((x[fit], x[val], (y[val] != 1).astype(int)))
  return out


def class_weights(y, normal_share: float) -> np.ndarray:
  """Per-example weights under which normal beats (y = 0) weigh `normal_share` in all and
  abnormal ones 1 - normal_share: accuracy then estimates it at that class balance."""
  y = np.asarray(y)
  n_norm, n_anom = int(np.sum(y == 0)), int(np.sum(y == 1))
  if not n_norm or not n_anom:
    raise ValueError("class_weights needs normal and abnormal examples")
  return np.where(y == 0, normal_share / n_norm, (1.0 - normal_share) / n_anom)


def rule_accuracies(reference, scores, y, contamination: float,
                    weights=None) -> dict[str, float | None]:
  """{'accuracy@rule': (weighted) accuracy of scores > threshold} for each label-free rule
  set on `reference`; None where a rule does not apply (log_tukey on scores <= 0)."""
  got = common.rule_metrics(reference, scores, y, contamination, weights)
  return {k: v for k, v in got.items() if k.startswith("accuracy@")}


def choose(table: list[dict], variants: dict, incumbent: str = "",
           margin: float = 0.0) -> tuple[str, str, list[str]]:
  """The rule fixed before any run: the variant/score row with the best mean development
  ROC-AUC (anchors are not candidates), then that row's label-free rule with the best
  mean development accuracy (rules that did not apply are skipped). Returns the row, the
  rule and the `experiments.anomaly_ecg5000` arguments that run it on TEST.

  With an `incumbent` row (the choice already scored on TEST), the best row replaces it
  only if its mean ROC-AUC is at least `margin` higher; otherwise the incumbent stays
  chosen, so that differences far inside the folds' noise do not send another variant to
  TEST (each look at TEST is one more chance to pick on it)."""
  rows = [r for r in table if "/" in r["detector"]]
  if not rows:
    raise ValueError("no variant/score rows in the table to choose from")
  best = max(rows, key=lambda r: r["roc_auc"])
  if incumbent:
    held = [r for r in rows if r["detector"] == incumbent]
    if not held:
      raise ValueError(f"the incumbent {incumbent!r} is not a row of this run; add its "
                       "variant and score")
    if best["roc_auc"] - held[0]["roc_auc"] < margin:
      best = held[0]
  accs = {rule: best[f"accuracy@{rule}"] for rule in LABEL_FREE_RULES
          if best.get(f"accuracy@{rule}") is not None}
  rule = max(accs, key=accs.get)
  variant, score = best["detector"].split("/")
  kw = {k: v for k, v in variants[variant].items() if k != "scores"}
  if "members" in kw:
    args = ["--protocols", "ucr", "--members", json.dumps(kw.pop("members")),
            "--threshold", rule]
    return best["detector"], rule, args + (["--combine", kw["combine"]] if "combine" in kw
                                           else [])
  network = kw.pop("network", "mlp")
  args = ["--protocols", "ucr", "--networks", network, "--scores", score, "--threshold", rule]
  return best["detector"], rule, args + (["--detector", json.dumps(kw)] if kw else [])


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  if args.cache:
    common.enable_compile_cache(args.cache)
  trainval = data_lib.load("ecg5000", "train+validation")
  anchors = [] if common.pyod_missing() else args.anchors
  rows = []
  if args.split == "kfold":
    parts = dev_folds(trainval.x, trainval.y, args.folds, args.dev_seed)
    normal_share = float(np.mean(np.asarray(trainval.y) == 1))
  else:
    parts = [dev_cut(trainval.x, trainval.y, args.dev_val, args.dev_seed + c)
             for c in range(args.cuts)]
  for cut, (fit_x, val_x, val_y) in enumerate(parts):
    w = class_weights(val_y, normal_share) if args.split == "kfold" else None
    for name, kw in args.variants.items():
      kw = dict(kw)
      scores = kw.pop("scores", args.scores)
      seconds, steps, read = common.fit_variant(
          {"seed": args.seed, "contamination": args.contamination, **kw}, fit_x, scores)
      for score, (d, ref) in read.items():
        s = d.decision_function(val_x)
        rows.append({"cut": cut, "detector": f"{name}/{score}", "fit_s": seconds,
                     "steps": steps, **common.ranking_metrics(val_y, s),
                     **rule_accuracies(ref, s, val_y, args.contamination, w)})
        print(json.dumps(rows[-1]), flush=True)
    train_idx, held = AutoencoderDetector(seed=args.seed).holdout_indices(len(fit_x))
    for name in anchors:
      _, (ref, s), seconds = common.fit_anchor(name, args.seed, fit_x[train_idx],
                                               fit_x[held], val_x)
      rows.append({"cut": cut, "detector": name, "fit_s": seconds,
                   **common.ranking_metrics(val_y, s),
                   **rule_accuracies(ref, s, val_y, args.contamination, w)})
      print(json.dumps(rows[-1]), flush=True)
  keys = ["roc_auc", "pr_auc", *[f"accuracy@{r}" for r in LABEL_FREE_RULES], "fit_s"]
  table = []
  for name in dict.fromkeys(r["detector"] for r in rows):
    rs = [r for r in rows if r["detector"] == name]
    row = {"detector": name, "cuts": len(rs)}
    for k in keys:
      vals = [r.get(k) for r in rs]
      row[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    row["roc_auc_std"] = float(np.std([r["roc_auc"] for r in rs]))
    knn = {r["cut"]: r["roc_auc"] for r in rows if r["detector"] == "KNN"}
    if knn and name != "KNN":   # paired over the cuts: the same validation beats
      diff = [r["roc_auc"] - knn[r["cut"]] for r in rs]
      row["roc_auc_minus_knn"], row["minus_knn_std"] = float(np.mean(diff)), float(np.std(diff))
    table.append(row)
  if args.split == "kfold":
    protocol = (f"ECG5000 TRAIN+VALIDATION ({len(trainval)} beats): its normal beats in "
                f"{args.folds} folds (seed {args.dev_seed}), each fold fitted on the others' "
                "normal beats and validated on its own normal beats and every abnormal "
                f"beat; accuracy weighted to {normal_share:.3f} normal; TEST unused")
  else:
    protocol = (f"ECG5000 TRAIN+VALIDATION ({len(trainval)} beats) cut {args.cuts} "
                f"times (seeds {args.dev_seed}..) into {args.dev_val} labelled "
                "validation beats and a fit part (its normal beats); TEST unused")
  result = {"args": vars(args), "rows": rows, "table": table, "protocol": protocol}
  chosen, rule, test_args = choose(table, args.variants, args.incumbent, args.margin)
  result["chosen"] = {"detector": chosen, "rule": rule, "anomaly_ecg5000_args": test_args}
  _, md = _io.write_results(out, result, {"development validation, mean over cuts": table},
                            title="ECG5000 ucr, development protocol")
  print(md.read_text())
  print(f"chosen: {chosen} at rule {rule}; on TEST: python -m experiments.anomaly_ecg5000 "
        + " ".join(shlex.quote(a) for a in test_args))
  return result


if __name__ == "__main__":
  main()
