"""One results toolkit for the experiments and the benchmarks.

Every figure in a results file is stored with the machine it came from and the command
that made it. This module is the one place for that:
  environment() -> dict: versions, backend and device, CPU model and ISA flags (`lscpu`),
    CPU count, load, XLA flags, time.
  cpu_info() -> {'model', 'isa'}: the CPU model name and its vector ISA flags.
  command(argv=None) -> str: the `python -m module args` that reproduces this run.
  write_json(path, obj, indent=2, announce=False) -> Path | None: JSON with numpy
    scalars/arrays and paths converted, non-finite floats as null (None path: nothing).
  markdown_table(rows, columns=None, digits=4, fmt=None) -> str: rows (dicts) as a GitHub
    table; columns are keys or (header, key) pairs.
  mean_std(values, ddof) -> (mean, std) over seeds ignoring None/NaN; the ddof is always
    given (1: sample std, 0: population std); std 0 for one value.
  format_mean_std(values, ddof, digits=4) -> 'mean ± std' ('mean' for one value).
The experiments' common `main()` preamble:
  parser(name, description, data=None, epochs=None, batch_size=None) -> ArgumentParser
    with --smoke, --out, --seed (and --data / --epochs / --batch-size when given defaults).
  setup(args, name, smoke=None, data=None) -> (out folder, train, test): the output
    folder, the dataset's fixed splits, each cut to `smoke` = (n_train, n_test) with --smoke.
  load_splits(spec) -> (train, test); smoke_subset(data, n); out_dir(args, name).
  write_results(out, result, tables, title="", echo=False) -> (json_path, md_path).
  timed(fn, *args, **kwargs) -> (fn's value, seconds).
"""

import argparse
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import numpy as np

# Vector and matrix ISA extensions that decide how fast XLA:CPU and PyTorch run.
ISA_PREFIXES = ("sse4", "avx", "fma", "f16c", "amx", "asimd", "sve", "neon", "bf16", "vnni")


# ---- the machine -----------------------------------------------------------------------

def _lscpu() -> dict[str, str]:
  if shutil.which("lscpu") is None:
    return {}
  try:
    text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                          env={**os.environ, "LC_ALL": "C"}).stdout
  except (OSError, subprocess.SubprocessError):
    return {}
  out = {}
  for line in text.splitlines():
    key, sep, value = line.partition(":")
    if sep:
      out.setdefault(key.strip(), value.strip())
  return out


def _proc_cpuinfo() -> dict[str, str]:
  out = {}
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      key, sep, value = line.partition(":")
      if sep and key.strip() in ("model name", "flags", "Features"):
        out.setdefault(key.strip(), value.strip())
  except OSError:
    pass
  return out


def cpu_info() -> dict[str, Any]:
  """{'model': the CPU model name, 'isa': its vector ISA flags (sorted)}, from `lscpu`
  (else /proc/cpuinfo, else the platform module)."""
  info, proc = _lscpu(), _proc_cpuinfo()
  model = info.get("Model name") or proc.get("model name") or platform.processor()
  flags = (info.get("Flags") or proc.get("flags") or proc.get("Features") or "").split()
  isa = sorted({f for f in flags if f.startswith(ISA_PREFIXES)})
  return {"model": model, "isa": isa}


def package_version(name: str) -> str | None:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return None


def environment() -> dict[str, Any]:
  """Device, versions and host facts to store beside every figure."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  cpu = cpu_info()
  return {
      "backend": jax.default_backend(),
      "device": devices[0].device_kind,
      "device_kind": devices[0].device_kind,
      "platform": devices[0].platform,
      "device_count": len(devices),
      "jax": jax.__version__,
      "jaxlib": package_version("jaxlib"),
      "flax": package_version("flax"),
      "optax": package_version("optax"),
      "numpy": package_version("numpy"),
      "torch": package_version("torch"),
      "python": platform.python_version(),
      "os": platform.platform(),
      "machine": platform.machine(),
      "processor": cpu["model"],
      "cpu_model": cpu["model"],
      "cpu_isa": cpu["isa"],
      "cpu_count": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
  }


def command(argv: Sequence[str] | None = None) -> str:
  """`python -m <module> <args>` for the running script (`python <file>` when run as a file)."""
  argv = sys.argv if argv is None else argv
  main = sys.modules.get("__main__")
  spec = getattr(main, "__spec__", None)
  head = f"python -m {spec.name}" if spec is not None and spec.name else f"python {argv[0]}"
  return " ".join([head, *(shlex.quote(a) for a in argv[1:])])


# ---- files and tables --------------------------------------------------------------------

def _plain(obj):
  if isinstance(obj, dict):
    return {str(k): _plain(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_plain(v) for v in obj]
  if isinstance(obj, np.ndarray):
    return _plain(obj.tolist())
  if isinstance(obj, np.generic):
    return _plain(obj.item())
  if isinstance(obj, pathlib.Path):
    return str(obj)
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  if obj is None or isinstance(obj, (str, int, float, bool)):
    return obj
  try:
    return _plain(float(obj))
  except (TypeError, ValueError):
    return str(obj)


def write_json(path, obj, *, indent: int = 2, announce: bool = False) -> pathlib.Path | None:
  """Write obj as JSON to path (parents created); None path writes nothing."""
  if path is None:
    return None
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(_plain(obj), indent=indent) + "\n")
  if announce:
    print(f"wrote {path}")
  return path


def _cell(value, digits: int) -> str:
  if value is None:
    return "–"
  if isinstance(value, (bool, np.bool_)):
    return "yes" if value else "no"
  if isinstance(value, (float, np.floating)):
    return f"{value:.{digits}g}" if np.isfinite(value) else "–"
  return str(value)


def markdown_table(rows: Iterable[dict], columns: Sequence | None = None, digits: int = 4,
                   fmt: Callable[[Any], str] | None = None) -> str:
  """A GitHub markdown table, one line a row.

  columns: keys, or (header, key) pairs; default: the rows' keys in first-seen order.
  fmt: the text of a cell's value; default: floats with `digits` significant digits,
  None and non-finite as '–', booleans as yes/no.
  """
  rows = list(rows)
  if columns is None:
    columns = list(dict.fromkeys(k for r in rows for k in r))
  pairs = [c if isinstance(c, tuple) else (c, c) for c in columns]
  fmt = fmt or (lambda v: _cell(v, digits))
  lines = ["| " + " | ".join(h for h, _ in pairs) + " |", "|" + "---|" * len(pairs)]
  for r in rows:
    lines.append("| " + " | ".join(fmt(r.get(k)) for _, k in pairs) + " |")
  return "\n".join(lines) + "\n"


# ---- statistics over seeds ---------------------------------------------------------------

def mean_std(values, ddof: int) -> tuple[float, float]:
  """Mean and standard deviation with `ddof` (1: sample, 0: population) of the finite
  values; None and NaN are left out; std is 0 for one value, (nan, nan) for none."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
  if v.size == 0:
    return math.nan, math.nan
  return float(v.mean()), float(v.std(ddof=ddof)) if v.size > ddof else 0.0


def format_mean_std(values, ddof: int, digits: int = 4) -> str:
  """'mean ± std' with `digits` significant digits; one value prints alone."""
  values = list(values)
  mean, std = mean_std(values, ddof)
  if len(values) == 1 or math.isnan(std):
    return f"{mean:.{digits}g}"
  return f"{mean:.{digits}g} ± {std:.2g}"


# ---- the experiments' main() preamble -----------------------------------------------------

def parser(name: str, description: str, *, data: str | None = None, epochs: int | None = None,
           batch_size: int | None = None) -> argparse.ArgumentParser:
  """An argument parser with the flags every experiment takes (--smoke, --out, --seed),
  and --data / --epochs / --batch-size where a default is given."""
  p = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
  p.add_argument("--smoke", action="store_true",
                 help="tiny data and a few steps: checks the script runs, in seconds")
  p.add_argument("--out", default=None, help=f"output folder (default results/{name}/)")
  p.add_argument("--seed", type=int, default=0)
  if data is not None:
    p.add_argument("--data", default=data, help="mnist_t10k or tfds:<name>")
  if epochs is not None:
    p.add_argument("--epochs", type=int, default=epochs)
  if batch_size is not None:
    p.add_argument("--batch-size", type=int, default=batch_size)
  return p


def load_splits(spec: str, train_split: str = "train", test_split: str = "test"):
  """(train, test) ArrayData of a dataset with a fixed test split: 'mnist_t10k' (the fixed
  8,000 / 2,000 split), 'tfds:<name>' (its train and test splits) or a named source."""
  from ae_jax import data  # pylint: disable=g-import-not-at-top
  if spec.startswith("tfds:"):
    name = spec.split(":")[1]
    return data.load(f"tfds:{name}:{train_split}"), data.load(f"tfds:{name}:{test_split}")
  return data.load(spec, train_split), data.load(spec, test_split)


def smoke_subset(data, n: int):
  """The first n examples of an ArrayData."""
  return data.take(np.arange(min(n, len(data))))


def out_dir(args: argparse.Namespace, name: str) -> pathlib.Path:
  """args.out or results/<name>/, created."""
  path = pathlib.Path(args.out) if args.out else pathlib.Path("results") / name
  path.mkdir(parents=True, exist_ok=True)
  return path


def setup(args: argparse.Namespace, name: str, smoke: tuple[int, int] | None = None,
          data: str | None = None, splits: tuple[str, str] = ("train", "test")):
  """(out folder, train, test): out_dir, the fixed splits of `data` (default args.data)
  and, with --smoke, the first smoke = (n_train, n_test) examples of each."""
  out = out_dir(args, name)
  train, test = load_splits(data or args.data, *splits)
  if args.smoke and smoke is not None:
    train, test = smoke_subset(train, smoke[0]), smoke_subset(test, smoke[1])
  return out, train, test


def write_results(out, result: dict, tables: dict[str, list[dict]], title: str = "",
                  digits: int = 4,
                  echo: bool | Sequence[str] = False) -> tuple[pathlib.Path, pathlib.Path]:
  """Write out/result.json (result, command, environment) and out/table.md (the command,
  then one section per {heading: rows} of `tables`); returns both paths. `echo` prints
  the tables (True: all, or the headings named) to stdout as well."""
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
  for heading, rows in tables.items():
    if echo is True or (echo and heading in echo):
      print(markdown_table(rows, digits=digits))
  return json_path, md_path


def timed(fn: Callable, *args, **kwargs) -> tuple[Any, float]:
  """(fn(*args, **kwargs), its wall time in seconds)."""
  start = time.time()
  value = fn(*args, **kwargs)
  return value, time.time() - start
