"""Shared helpers for experiment scripts: arguments, output folder, JSON and markdown tables.

API:
  parser(name, description) -> argparse.ArgumentParser with --smoke, --out, --seed.
  load_splits(spec) -> (train, test) ArrayData: 'mnist_t10k' (the fixed 8,000 / 2,000
    split) or 'tfds:<name>' (its train and test splits).
  smoke_subset(data, n) -> ArrayData: the first n examples.
  out_dir(args, name) -> pathlib.Path: args.out or results/<name>/, created.
  command(argv=None) -> str: the command line that reproduces this run.
  environment() -> dict: versions, backend and device kind, CPU count.
  markdown_table(rows, columns=None, digits=4) -> str: rows (list of dicts) as a table,
    floats with `digits` significant digits.
  write_json(path, obj) -> Path: JSON with numpy scalars/arrays converted.
  write_results(out, result, tables, title="") -> (json_path, md_path): writes
    out/result.json (result plus environment and command) and out/table.md (one section
    per entry of `tables`, a {heading: rows} dict, with the command above them).
"""

import argparse
import json
import os
import pathlib
import platform
import shlex
import sys
from typing import Any, Iterable, Sequence

import numpy as np


def parser(name: str, description: str) -> argparse.ArgumentParser:
  """An argument parser with the flags every experiment takes."""
  p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
  p.add_argument("--smoke", action="store_true",
                 help="tiny data and a few steps: checks the script runs, in seconds")
  p.add_argument("--out", default=None, help=f"output folder (default results/{name}/)")
  p.add_argument("--seed", type=int, default=0)
  return p


def load_splits(spec: str):
  """(train, test) ArrayData of a dataset with a fixed test split."""
  from ae_jax import data  # pylint: disable=g-import-not-at-top
  if spec.startswith("tfds:"):
    name = spec.split(":")[1]
    return data.load(f"tfds:{name}:train"), data.load(f"tfds:{name}:test")
  return data.load(spec, "train"), data.load(spec, "test")


def smoke_subset(data, n: int):
  return data.take(np.arange(min(n, len(data))))


def out_dir(args: argparse.Namespace, name: str) -> pathlib.Path:
  path = pathlib.Path(args.out) if args.out else pathlib.Path("results") / name
  path.mkdir(parents=True, exist_ok=True)
  return path


def command(argv: Sequence[str] | None = None) -> str:
  """`python -m experiments.<module> <args>` for the running script."""
  argv = sys.argv if argv is None else argv
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  head = f"python -m {spec.name}" if spec is not None and spec.name else f"python {argv[0]}"
  return " ".join([head, *(shlex.quote(a) for a in argv[1:])])


def environment() -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {"python": platform.python_version(), "jax": jax.__version__,
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
          "cpu_count": os.cpu_count(), "platform": platform.platform()}


def _plain(obj):
  if isinstance(obj, dict):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _plain(obj.tolist())
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, pathlib.Path):
    return str(obj)
  if isinstance(obj, float) and not np.isfinite(obj):
    return None
  return obj


def write_json(path, obj) -> pathlib.Path:
  path = pathlib.Path(path)
  path.write_text(json.dumps(_plain(obj), indent=2) + "\n")
  return path


def _cell(value, digits: int) -> str:
  if value is None:
    return "–"
  if isinstance(value, (bool, np.bool_)):
    return "yes" if value else "no"
  if isinstance(value, (float, np.floating)):
    return f"{value:.{digits}g}" if np.isfinite(value) else "–"
  return str(value)


def markdown_table(rows: Iterable[dict], columns: Sequence[str] | None = None,
                   digits: int = 4) -> str:
  """A GitHub markdown table; columns default to the keys of the rows in first-seen order."""
  rows = list(rows)
  if columns is None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for r in rows:
    lines.append("| " + " | ".join(_cell(r.get(c), digits) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def write_results(out, result: dict, tables: dict[str, list[dict]], title: str = "",
                  digits: int = 4) -> tuple[pathlib.Path, pathlib.Path]:
  """Write out/result.json and out/table.md; returns both paths."""
  out = pathlib.Path(out)
  cmd = command()
  json_path = write_json(out / "result.json",
                         {**result, "command": cmd, "environment": environment()})
  parts = [f"# {title}\n" if title else "", f"`{cmd}`\n"]
  for heading, rows in tables.items():
    parts.append(f"\n## {heading}\n\n" if heading else "\n")
    parts.append(markdown_table(rows, digits=digits))
  md_path = out / "table.md"
  md_path.write_text("".join(parts))
  return json_path, md_path
