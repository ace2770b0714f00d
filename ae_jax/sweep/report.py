"""What a sweep leaves behind: trials.jsonl records, the sorted markdown table, the
importance of each swept key, the metric figure, sweep.json and best_config.json."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Sequence

import ml_collections
import numpy as np

from ae_jax import results
from ae_jax.configs.overrides import with_overrides
from ae_jax.sweep.run import METRICS, _better
from ae_jax.sweep.space import LogUniform, Choice, Space, space_to_json

TRIALS_FILE = "trials.jsonl"


@dataclasses.dataclass
class SweepResult:
  """All rows (finished trials, best first), the best row and config, and what was written."""
  rows: list[dict]
  best: dict | None
  best_config: ml_collections.ConfigDict | None
  importance: dict[str, float]
  out: pathlib.Path
  ran: int
  stopped_by_time: bool
  vectorised: bool
  paths: dict[str, pathlib.Path]


def read_rows(out) -> list[dict]:
  """The finished trials recorded in OUT/trials.jsonl (a torn last line is ignored)."""
  path = pathlib.Path(out) / TRIALS_FILE
  rows = []
  if path.exists():
    for line in path.read_text().splitlines():
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def _append(out: pathlib.Path, rows: list[dict]) -> None:
  path = out / TRIALS_FILE
  torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
  with path.open("a") as f:
    if torn:
      f.write("\n")
    for row in rows:
      f.write(json.dumps(row) + "\n")


def _short(value) -> str:
  return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---- summary: table, importance, figure, best config ------------------------------------

def importance(rows: list[dict], space: Space) -> dict[str, float]:
  """How much each swept key explains the metric, in [0, 1], over the finished trials.

  Keys swept over a list of values: the share of the metric's variance between the
  groups of equal value (eta squared). Keys drawn from a uniform or log-uniform: the
  squared Spearman rank correlation with the metric.
  """
  ok = [r for r in rows if r["status"] == "ok" and math.isfinite(r["value"])]
  y = np.asarray([r["value"] for r in ok], np.float64)
  out = {}
  for key, dim in space.items():
    values = [json.dumps(r["overrides"].get(key)) for r in ok]
    if len(ok) < 2 or len(set(values)) < 2 or np.var(y) == 0:
      out[key] = 0.0
      continue
    if isinstance(dim, (list, Choice)):
      groups = {}
      for v, target in zip(values, y):
        groups.setdefault(v, []).append(target)
      between = sum(len(g) * (np.mean(g) - y.mean()) ** 2 for g in groups.values())
      out[key] = float(between / (np.var(y) * len(y)))
    else:
      from scipy.stats import spearmanr
      x = np.asarray([r["overrides"][key] for r in ok], np.float64)
      rho = spearmanr(x, y).statistic
      out[key] = 0.0 if not np.isfinite(rho) else float(rho ** 2)
  return out


def markdown_table(rows: list[dict], space_keys: Sequence[str], metric: str, seeds: int) -> str:
  """Rows sorted best first: rank, key, swept values, metric (mean ± std over seeds), the
  other metrics, steps, wall time and status."""
  others = sorted({k for r in rows for k in r.get("metrics", {})} - {metric})
  head = ["rank", *space_keys, metric + (f" (mean ± std, {seeds} seeds)" if seeds > 1 else ""),
          *others, "steps", "wall s", "status", "trial"]
  table = []
  for i, r in enumerate(rows, 1):
    if r["status"] == "ok":
      value = (results.format_mean_std(r["values"], ddof=1) if seeds > 1 else f"{r['value']:.5g}")
    else:
      value = "failed"
    cells = [str(i), *(_short(r["overrides"].get(k)) for k in space_keys), value,
             *(_fmt(r.get("metrics", {}).get(k)) for k in others), str(r["steps"]),
             f"{r['wall_s']:.2f}" + (" (v)" if r.get("vectorised") else ""), r["status"],
             f"`{r['key']}`"]
    table.append(dict(zip(head, cells)))
  return results.markdown_table(table, head, fmt=str)


def _fmt(v) -> str:
  return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def metric_figure(rows, space, key: str, metric: str, path, second: str | None = None):
  """The metric against `key` (one point per trial, ± std over seeds), best marked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ok = [r for r in rows if r["status"] == "ok" and math.isfinite(r["value"])]
  fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
  raw = [r["overrides"].get(key) for r in ok]
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
  if numeric:
    x = np.asarray(raw, np.float64)
    positive = bool(np.all(x > 0))
    if isinstance(space[key], LogUniform) or (positive and x.max() / max(x.min(), 1e-300) >= 10):
      ax.set_xscale("log")
  else:
    labels = sorted({json.dumps(v) for v in raw})
    x = np.asarray([labels.index(json.dumps(v)) for v in raw], np.float64)
    ax.set_xticks(range(len(labels)), [lab.strip('"') for lab in labels])
  y = np.asarray([r["value"] for r in ok])
  err = np.asarray([r.get("std") or 0.0 for r in ok])
  color = None
  if second is not None and ok:
    sv = [r["overrides"].get(second) for r in ok]
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in sv):
      color = np.asarray(sv, np.float64)
      if np.all(color > 0) and color.max() / color.min() >= 10:
        color = np.log10(color)
        second = f"log10 {second}"
    else:
      names = sorted({json.dumps(v) for v in sv})
      color = np.asarray([names.index(json.dumps(v)) for v in sv], np.float64)
  if np.any(err > 0):
    ax.errorbar(x, y, yerr=err, fmt="none", ecolor="0.6", capsize=2, zorder=1)
  if color is not None:
    sc = ax.scatter(x, y, c=color, cmap="viridis", s=28, zorder=2)
    fig.colorbar(sc, ax=ax, label=second)
  else:
    ax.scatter(x, y, s=28, zorder=2)
  if len(y):
    best = int(np.argmin(y) if METRICS.get(metric, "min") == "min" else np.argmax(y))
    ax.scatter([x[best]], [y[best]], marker="*", s=260, facecolors="none", edgecolors="red",
               linewidths=1.5, zorder=3, label="best")
    ax.legend(loc="best")
  ax.set_xlabel(key)
  ax.set_ylabel(metric)
  ax.set_title(f"{metric} vs {key} ({len(ok)} trials)")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return pathlib.Path(path)


def _finish(cfg, space, rows, out, metric, direction, mode, seeds, ran, stopped, vectorised,
            wall) -> SweepResult:
  rows = sorted(rows, key=lambda r: _better(direction)(r["value"]))
  best = rows[0] if rows and rows[0]["status"] == "ok" and math.isfinite(rows[0]["value"]) \
      else None
  imp = importance(rows, space)
  ranked = sorted(space, key=lambda k: -imp.get(k, 0.0))
  paths = {}
  table = out / "table.md"
  table.write_text(f"Sweep of {metric} ({direction}imise), mode {mode}, {len(rows)} trials"
                   + (f", {seeds} seeds each" if seeds > 1 else "") + ".\n\n"
                   + markdown_table(rows, list(space), metric, seeds))
  paths["table"] = table
  best_cfg = None
  if best is not None:
    best_cfg = with_overrides(cfg, best["overrides"])
    (out / "best_config.json").write_text(best_cfg.to_json(indent=2))
    paths["best_config"] = out / "best_config.json"
    paths["figure"] = metric_figure(rows, space, ranked[0], metric,
                                    out / "metric_vs_top_param.png",
                                    ranked[1] if len(ranked) > 1 else None)
  summary = {"metric": metric, "direction": direction, "mode": mode, "seeds": seeds,
             "space": space_to_json(space), "trials": len(rows), "ran_now": ran,
             "stopped_by_time": stopped, "vectorised": vectorised, "wall_s": wall,
             "importance": imp, "most_important": ranked[0] if ranked else None, "best": best}
  (out / "sweep.json").write_text(json.dumps(summary, indent=2))
  paths["summary"] = out / "sweep.json"
  return SweepResult(rows, best, best_cfg, imp, out, ran, stopped, vectorised, paths)
