"""ADBench tabular anomaly detection: one default autoencoder detector beside PyOD anchors.

Unsupervised protocol: every detector is fitted on all of X without labels and scores X;
ROC-AUC and PR-AUC against y, mean and std over seeds. The autoencoder detector runs
one configuration on every set (CHOSEN below; no per-set tuning). Every detector sees the same rows:
`--max-rows N` draws one random subsample of at most N rows per set (seed 0) that all
of them fit on and score. The 12 shared sets are the development sets that
configuration was chosen on, so their table is a development figure, not a held-out estimate.
Any folder of ADBench-style `.npz` files (`X`, `y` with 1 = anomaly) works: `--data-dir DIR`.

  python -m experiments.anomaly_adbench                       # the 12 shared sets, 3 seeds
  python -m experiments.anomaly_adbench --data-dir my_npz/    # any ADBench-style folder
  python -m experiments.anomaly_adbench --workers 16          # sets and seeds in parallel
  python -m experiments.anomaly_adbench --variants '{"AE knn": {"score": "knn"}}'  # compare
  python -m experiments.anomaly_adbench --variants \
      '{"AE mix": {"members": [{}, {"activation": "relu"}]}}'   # an ensemble of differing members
  python -m experiments.anomaly_adbench --smoke               # seconds, for CI
"""

import json
import os
import pathlib
import time

import numpy as np

from experiments import _anomaly_common as common
from ae_jax import results as _io
from ae_jax.anomaly.detector import CONTAMINATED

NAME = "anomaly_adbench"
ANCHORS_ISSUE = {"IForest": 0.853, "PyOD-AE": 0.813, "ECOD": 0.804}
DETERMINISTIC = ("ECOD", "KNN", "PCA")
OURS = "AE (ours)"
# The tabular configuration, chosen in session 7 on these 12 shared sets (development runs
# of 12 variants, 1 seed, then 3 seeds; experiments/RESULTS_anomaly.md): median/IQR scaling
# (features with a narrow normal range stay informative), a trimmed loss that drops each
# batch's 20 % worst-reconstructed rows (the fit data holds the anomalies), and the mean
# squared residual as the score. Session 10 added tanh hidden layers: the best of 12
# single-setting variants over session 7's pick on seed 0, then confirmed on seeds 1-3,
# which took no part in the choice (0.862 / 0.540 against 0.857 / 0.494 without it and
# IForest's 0.856 / 0.525 on the same rows). Everything else is the detector's defaults.
CHOSEN = dict(CONTAMINATED)   # ae_jax.anomaly.detector.CONTAMINATED, `detect --contaminated`


def parse(argv=None):
  p = _io.parser(NAME, __doc__.splitlines()[0])
  p.add_argument("--data-dir", default=None,
                 help="folder of ADBench-style .npz files (default: <shared data>/adbench)")
  p.add_argument("--sets", nargs="*", default=None, help="only these set names (file stems)")
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--anchors", nargs="*", default=["IForest", "ECOD", "PyOD-AE"],
                 help=f"PyOD anchors among {', '.join(common.ANCHORS)}")
  p.add_argument("--max-rows", type=int, default=None,
                 help="every detector fits and scores the same random subsample of at most "
                      "this many rows of each set (default: all rows)")
  p.add_argument("--detector", default=json.dumps(CHOSEN),
                 help="JSON of AutoencoderDetector arguments (default: the chosen tabular "
                      "configuration, CHOSEN; '{}' = the detector's own defaults)")
  p.add_argument("--variants", default="{}",
                 help='more of our detectors as JSON {"label": {arguments}}, each beside '
                      'ours; a variant\'s arguments are laid over --detector\'s; '
                      '{"label": {"members": [{...}, {...}]}} is an EnsembleDetector whose '
                      'members (each laid over --detector) differ in more than the seed')
  p.add_argument("--workers", type=int, default=1, help="processes running jobs in parallel")
  p.add_argument("--cache", default="results/.jax_cache",
                 help="JAX compilation cache folder ('' = off)")
  args = p.parse_args(argv)
  if args.smoke:
    args.seeds = 1
    args.anchors = [a for a in args.anchors if a in ("IForest", "ECOD")]
  return args


def find_sets(args) -> list[pathlib.Path]:
  if args.data_dir:
    folder = pathlib.Path(args.data_dir)
  else:
    from ae_jax.data import data_dir
    root = data_dir()
    if root is None:
      raise SystemExit("no shared data folder: pass --data-dir or set AE_JAX_DATA_DIR")
    folder = root / "adbench"
  paths = sorted(folder.glob("*.npz"), key=lambda p: _sort_key(p.stem))
  if args.sets:
    paths = [p for p in paths if p.stem in args.sets]
  if not paths:
    raise SystemExit(f"no .npz sets in {folder}")
  if args.smoke:
    paths = sorted(paths, key=lambda p: p.stat().st_size)[:2]
  return paths


def _sort_key(stem: str):
  head = stem.split("_")[0]
  return (int(head), stem) if head.isdigit() else (10**9, stem)


def load_set(path: pathlib.Path, smoke: bool, max_rows: int | None = None):
  """(x (N, D), y (N,)) of one set; at most `max_rows` rows, the same for every detector."""
  from ae_jax.data import sources
  data = sources.load_npz(path)
  if data.y is None:
    raise SystemExit(f"{path} has no labels 'y'")
  x, y = data.x.reshape(len(data), -1), (data.y != 0).astype(int)
  if max_rows and len(x) > max_rows:
    idx = np.sort(np.random.default_rng(0).permutation(len(x))[:max_rows])
    x, y = x[idx], y[idx]
  if smoke:
    idx = np.sort(np.random.default_rng(0).permutation(len(x))[:300])
    x, y = x[idx], y[idx]
    if y.min() == y.max():
      y[:10] = 1 - y[0]
  return x, y


def run_job(job) -> dict:
  """One detector on one set with one seed: {'set', 'detector', 'seed', metrics, 'time_s'}."""
  path, detector, seed, args = job
  if args["cache"]:
    common.enable_compile_cache(args["cache"])
  x, y = load_set(pathlib.Path(path), args["smoke"], args["max_rows"])
  row = {"set": pathlib.Path(path).stem, "detector": detector, "seed": seed,
         "rows": int(x.shape[0]), "features": int(x.shape[1])}
  start = time.perf_counter()
  ours = args["ours"]
  if detector in ours:
    from ae_jax.anomaly import AutoencoderDetector, EnsembleDetector
    kw = {"seed": seed, **ours[detector]}
    small = dict(ensemble=1, max_steps=5, epochs=1) if args["smoke"] else {}
    if "members" in kw:   # members that differ in more than the seed
      det = EnsembleDetector(**{**kw, "members": [{**m, **small} for m in kw["members"]]})
    else:
      det = AutoencoderDetector(**{**kw, **small})
    det.fit(x)
    scores = det.decision_function(x)
    row["steps"] = [h[-1]["step"] for h in det.history_]
    row.update(common.rule_metrics(det.reference_scores_, scores, y, det.contamination))
  else:
    _, (scores,), _ = common.fit_anchor(detector, seed, x, x)
  row["time_s"] = time.perf_counter() - start
  row.update(common.ranking_metrics(y, scores))
  return row


def run_jobs(jobs, workers: int):
  if workers <= 1:
    for job in jobs:
      yield run_job(job)
    return
  import multiprocessing as mp
  os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false "
                        "intra_op_parallelism_threads=1")
  with mp.get_context("spawn").Pool(workers) as pool:
    yield from pool.imap_unordered(run_job, jobs)


def summarise(rows, detectors, sets):
  """Per (set, detector): mean/std over seeds; per detector: mean over sets."""
  cell = {}
  for r in rows:
    cell.setdefault((r["set"], r["detector"]), []).append(r)
  per_set = []
  for s in sets:
    row = {"set": s}
    for d in detectors:
      rs = cell.get((s, d), [])
      m, sd = common.mean_std([r["roc_auc"] for r in rs])
      row[d] = f"{m:.3f} ± {sd:.3f}" if rs and d not in DETERMINISTIC else (
          f"{m:.3f}" if rs else "–")
      row[f"_{d}"] = m
    per_set.append(row)
  overall = []
  for d in detectors:
    aucs = [r[f"_{d}"] for r in per_set if np.isfinite(r[f"_{d}"])]
    aps = [common.mean_std([x["pr_auc"] for x in cell.get((s, d), [])])[0] for s in sets]
    seed_means = []
    for seed in sorted({r["seed"] for r in rows if r["detector"] == d}):
      vals = [r["roc_auc"] for r in rows if r["detector"] == d and r["seed"] == seed]
      if len(vals) == len(sets):
        seed_means.append(float(np.mean(vals)))
    spreads = [common.mean_std([x["roc_auc"] for x in cell.get((s, d), [])])[1] for s in sets]
    times = [np.mean([x["time_s"] for x in cell.get((s, d), [])]) for s in sets
             if cell.get((s, d))]
    overall.append({
        "detector": d, "sets": len(aucs), "mean ROC-AUC": float(np.mean(aucs)) if aucs else None,
        "mean PR-AUC": float(np.nanmean(aps)) if aps else None,
        "ROC-AUC of each seed's mean": ", ".join(f"{v:.3f}" for v in seed_means) or "–",
        "largest per-set std over seeds": float(np.nanmax(spreads)) if spreads else None,
        "total time s (mean over seeds)": float(np.sum(times)) if times else None,
        "issue's anchor": ANCHORS_ISSUE.get(d)})
  return per_set, overall


def _mean_of(values):
  """Mean of the values, or None if any is None (a rule that did not apply somewhere)."""
  return None if not values or any(v is None for v in values) else float(np.mean(values))


def bar_figure(path, rows, detectors, sets):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(sets) + 2), 4))
  width = 0.8 / len(detectors)
  for i, d in enumerate(detectors):
    stats = [common.mean_std([r["roc_auc"] for r in rows if r["set"] == s and
                              r["detector"] == d]) for s in sets]
    ax.bar(np.arange(len(sets)) + i * width, [m for m, _ in stats], width,
           yerr=[sd for _, sd in stats], capsize=2, label=d)
  ax.set_xticks(np.arange(len(sets)) + 0.4 - width / 2)
  ax.set_xticklabels(sets, rotation=40, ha="right", fontsize=7)
  ax.set_ylabel("ROC-AUC (mean ± std over seeds)")
  ax.set_ylim(0.3, 1.0)
  ax.legend(fontsize=7, ncol=len(detectors))
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  args = parse(argv)
  out = _io.out_dir(args, NAME)
  missing = common.pyod_missing()
  anchors = [] if missing else args.anchors
  if missing:
    print(missing)
  paths = find_sets(args)
  ours = {OURS: json.loads(args.detector)}
  for label, kw in json.loads(args.variants).items():
    if "members" in kw:   # an EnsembleDetector: --detector is laid under each member
      ours[label] = {**kw, "members": [{**json.loads(args.detector), **m}
                                       for m in kw["members"]]}
    else:
      ours[label] = {**json.loads(args.detector), **kw}
  detectors = [*ours, *anchors]
  shared = {"cache": args.cache, "smoke": args.smoke, "max_rows": args.max_rows, "ours": ours}
  jobs = []
  for path in paths:
    for d in detectors:
      for seed in range(args.seed, args.seed + (1 if d in DETERMINISTIC else args.seeds)):
        jobs.append((str(path), d, seed, shared))
  jobs.sort(key=lambda j: -pathlib.Path(j[0]).stat().st_size)
  rows = []
  start = time.perf_counter()
  for row in run_jobs(jobs, args.workers):
    rows.append(row)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                      for k, v in row.items()}), flush=True)
  wall = time.perf_counter() - start
  sets = [p.stem for p in paths]
  rows.sort(key=lambda r: (sets.index(r["set"]), detectors.index(r["detector"]), r["seed"]))
  per_set, overall = summarise(rows, detectors, sets)
  per_set_pr = [{"set": st, **{d: round(common.mean_std(
      [r["pr_auc"] for r in rows if r["set"] == st and r["detector"] == d])[0], 3)
      for d in detectors}} for st in sets]
  ours = next(o for o in overall if o["detector"] == OURS)
  iforest = next((o for o in overall if o["detector"] == "IForest"), None)
  goal = None if iforest is None else {
      "ours": ours["mean ROC-AUC"], "IForest": iforest["mean ROC-AUC"],
      "met": ours["mean ROC-AUC"] > iforest["mean ROC-AUC"]}
  timing = [{"set": r["set"], "detector": r["detector"], "seed": r["seed"], "rows": r["rows"],
             "fit+score s": r["time_s"]}
            for r in rows if r["rows"] >= 100_000]
  figure = out / "roc_auc_per_set.png"
  bar_figure(figure, rows, detectors, sets)
  result = {"args": vars(args), "rows": rows, "overall": overall,
            "per_set": [{k: v for k, v in r.items() if not k.startswith("_")} for r in per_set],
            "goal_beat_iforest": goal, "anchors_in_issue": ANCHORS_ISSUE,
            "anchor_note": missing, "wall_s": wall, "figures": {"roc_auc_per_set": figure}}
  tables = {"Mean over sets": overall,
            "ROC-AUC per set (mean ± std over seeds)":
                [{k: v for k, v in r.items() if not k.startswith("_")} for r in per_set],
            "PR-AUC per set (mean over seeds)": per_set_pr}
  flags = [{"detector": d, **{f"{m}@{r}": _mean_of([x.get(f"{m}@{r}") for x in rows
                                                    if x["detector"] == d])
                               for r in common.LABEL_FREE_RULES for m in ("f1", "accuracy")}}
           for d in shared["ours"]]
  result["flags"] = flags
  tables["Ours: F1 / accuracy of the flags at each label-free rule, mean over sets and "
         "seeds"] = flags
  if timing:
    tables["Fit + score time on large sets (seconds, streamed in batches)"] = timing
  _, md = _io.write_results(out, result, tables,
                            title="ADBench (unsupervised: fit on X, score X)", digits=3)
  print(md.read_text())
  return result


if __name__ == "__main__":
  main()
