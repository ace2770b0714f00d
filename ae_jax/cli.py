"""The `ae-jax` command line: train, evaluate, encode, reconstruct, sample, sweep,
compress, decompress.

Config values are overridden in the ml_collections style, `--config.model.latent_dim=16`;
`--config` names a preset (see `ae_jax.configs.PRESETS`) or a .json / .py config file.
Paths are used as given, never passed through a shell.
"""

import argparse
import ast
import importlib.util
import json
import pathlib
import sys
import traceback
import warnings

import ml_collections
import numpy as np

from ae_jax.errors import AeJaxError, ConfigError

DEFAULT_WORKDIR = "workdir"


def load_config(spec: str) -> ml_collections.ConfigDict:
  """A preset name, a JSON file (as written to workdir/config.json) or a .py with get_config()."""
  from ae_jax import configs
  path = pathlib.Path(spec)
  if spec in configs.PRESETS:
    return configs.get_preset(spec)
  if path.suffix == ".json" and path.is_file():
    base = configs.get_preset("default")
    try:
      loaded = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    return _merge(base, loaded, str(path))
  if path.suffix == ".py" and path.is_file():
    module_spec = importlib.util.spec_from_file_location("user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()
  raise ConfigError(f"--config {spec!r} is neither a preset ({', '.join(configs.PRESETS)}) "
                    "nor an existing .json or .py config file")


def _merge(base: ml_collections.ConfigDict, loaded: dict, where: str) -> ml_collections.ConfigDict:
  flat = {}

  def walk(prefix, d):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(f"{prefix}{k}.", v)
      else:
        flat[f"{prefix}{k}"] = v
  walk("", loaded)
  for key, value in flat.items():
    set_value(base, key, value, where)
  return base


def parse_value(text: str, current):
  """Parse a command-line string into the type of the current value."""
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"expected true/false, got {text!r}")
  if isinstance(current, (tuple, list)):
    value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
    return tuple(value)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def set_value(cfg: ml_collections.ConfigDict, key: str, value, where: str = "command line"):
  """Set a dotted key, raising ConfigError for unknown keys or values of the wrong type."""
  parts = key.split(".")
  node = cfg
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r} ({where}); valid "
                        f"keys here: {', '.join(sorted(node.keys()))}")
    node = node[part]
  leaf = parts[-1]
  if leaf not in node:
    raise ConfigError(f"unknown config key {key!r} ({where}); valid keys here: "
                      f"{', '.join(sorted(node.keys()))}")
  current = node[leaf]
  if isinstance(value, str) and not isinstance(current, str):
    try:
      value = parse_value(value, current)
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f"config.{key}: cannot read {value!r} as {type(current).__name__} "
                        f"({e})") from None
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{key} = {value!r} has the wrong type: expected "
                      f"{type(current).__name__} ({e})") from None


def apply_overrides(cfg, overrides: list[str]) -> ml_collections.ConfigDict:
  for item in overrides:
    if not item.startswith("--config."):
      raise ConfigError(f"unrecognised argument {item!r}; overrides look like "
                        "--config.model.latent_dim=16")
    body = item[len("--config."):]
    if "=" not in body:
      raise ConfigError(f"override {item!r} has no value; write --config.{body}=VALUE")
    key, value = body.split("=", 1)
    set_value(cfg, key, value)
  return cfg


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="ae-jax", description=__doc__.splitlines()[0])
  sub = p.add_subparsers(dest="command")
  t = sub.add_parser("train", help="train (or resume) a model in a workdir")
  t.add_argument("--config", default="default", help="preset name or config file")
  t.add_argument("--workdir", default=DEFAULT_WORKDIR)
  t.add_argument("--no-progress", action="store_true")
  t.add_argument("--stop-after", type=int, default=None,
                 help="stop after this step (with a checkpoint); for tests")
  cluster = t.add_argument_group(
      "multi-process training (see docs/cluster.md); default: the AE_JAX_* environment")
  cluster.add_argument("--coordinator-address", default=None,
                       help="host:port of process 0, the same on every process")
  cluster.add_argument("--num-processes", type=int, default=None,
                       help="number of processes (one per host, usually)")
  cluster.add_argument("--process-id", type=int, default=None,
                       help="this process's id, 0 .. num-processes - 1")
  cluster.add_argument("--distributed", action="store_true",
                       help="let JAX detect the cluster (Cloud TPU, Slurm, Open MPI, Kubernetes)")
  w = sub.add_parser("sweep", help="hyperparameter search: grid, random or tpe (docs/sweeps.md)")
  w.add_argument("--config", default="default", help="base config: preset name or config file")
  w.add_argument("--space", default="", help='JSON file {"optim.learning_rate": [1e-3, 3e-3], '
                 '"model.latent_dim": {"loguniform": [2, 32]}}')
  w.add_argument("--param", action="append", default=[], metavar="KEY=VALUES",
                 help="one search dimension as KEY=JSON or KEY=v1,v2 (repeatable, adds to --space)")
  w.add_argument("--metric", default="val_loss", help="val_loss | recon_mse | roc_auc")
  w.add_argument("--direction", default=None, help="min | max (default: the metric's own)")
  w.add_argument("--mode", default="grid", help="grid | random | tpe (tpe needs optuna)")
  w.add_argument("--trials", type=int, default=None, help="budget in trials")
  w.add_argument("--timeout", type=float, default=None, help="budget in seconds")
  w.add_argument("--seeds", type=int, default=1, help="seeds per trial (mean ± std)")
  w.add_argument("--seed", type=int, default=0, help="seed of the random/tpe sampler")
  w.add_argument("--no-vmap", action="store_true", help="train trials one by one")
  w.add_argument("--chunk", type=int, default=64, help="trials per vmapped group")
  w.add_argument("--eval-data", default="", help="dataset spec for recon_mse / roc_auc")
  w.add_argument("--eval-split", default="", help="split of --eval-data")
  w.add_argument("--normal-class", type=int, default=None,
                 help="roc_auc: the label of normal examples (others are anomalies)")
  w.add_argument("--out", default="sweep", help="sweep directory (resumes if it exists)")
  for name, help_text in (("evaluate", "reconstruction metrics on a dataset"),
                          ("encode", "write latents (N, latent_dim) to .npy"),
                          ("reconstruct", "write reconstructions to .npy and a PNG grid"),
                          ("sample", "write VAE samples to .npy and a PNG grid")):
    s = sub.add_parser(name, help=help_text)
    s.add_argument("--workdir", default=DEFAULT_WORKDIR, help="a workdir written by train")
    s.add_argument("--best", action="store_true", help="use the best checkpoint, not the last")
    if name != "sample":
      s.add_argument("--data", default="", help="dataset spec; default: the run's own data")
      s.add_argument("--split", default="", help="split of --data")
    s.add_argument("--out", default="", help="output file (default: in the workdir)")
    if name == "sample":
      s.add_argument("--num", type=int, default=16)
      s.add_argument("--seed", type=int, default=0)
  for name, help_text in (("compress", "code .npy / image examples into a bitstream file "
                                     "(a rate_distortion workdir)"),
                          ("decompress", "decode a bitstream file to .npy (or one image file)")):
    s = sub.add_parser(name, help=help_text)
    s.add_argument("--workdir", default=DEFAULT_WORKDIR, help="a workdir written by train")
    s.add_argument("--best", action="store_true", help="use the best checkpoint, not the last")
    s.add_argument("--input", required=True, help="compress: .npy or image; decompress: bitstream")
    s.add_argument("--out", default="", help="output file (default: beside the input)")
  return p


def _data_for(trained, args):
  from ae_jax import data as data_lib
  cfg = trained.config
  spec = args.data or cfg.data.name
  split = args.split or (cfg.data.split if not args.data else "") or None
  return data_lib.load(spec, split)


def _out(args, trained, default: str) -> pathlib.Path:
  return pathlib.Path(args.out) if args.out else pathlib.Path(trained.workdir) / default


def run(argv: list[str]) -> int:
  args, extra = _parser().parse_known_args(argv)
  if args.command is None:
    args, extra = _parser().parse_known_args(["train", *argv])
  if args.command not in ("train", "sweep") and extra:
    raise ConfigError(f"unrecognised arguments: {' '.join(extra)}")
  if args.command == "train":
    from ae_jax import distributed
    cfg = apply_overrides(load_config(args.config), extra)
    distributed.initialize_from_flags_or_env(args.coordinator_address, args.num_processes,
                                             args.process_id, auto_detect=args.distributed)
    from ae_jax.fit import fit
    trained = fit(cfg, args.workdir, progress=not args.no_progress, stop_after=args.stop_after)
    is_main = distributed.is_main_process()
    distributed.shutdown()
    if not is_main:
      return 0
    print(f"trained {cfg.model.family}/{cfg.model.network} on {cfg.data.name} to step "
          f"{trained.step}; workdir: {trained.workdir}")
    evals = [r for r in trained.history if r["split"] == "eval"]
    if evals:
      print(f"validation loss: {evals[-1]['loss']:.5g}")
    for name, path in trained.figure_paths.items():
      print(f"{name}: {path}")
    return 0
  if args.command == "sweep":
    from ae_jax import sweep
    return sweep.run_cli(args, apply_overrides(load_config(args.config), extra))
  if args.command in ("compress", "decompress"):
    from ae_jax import codec
    return codec.run_cli(args)
  from ae_jax.fit import Trained
  trained = Trained.load(args.workdir, best=args.best)
  if args.command == "sample":
    samples = trained.sample(args.num, args.seed)
    out = _out(args, trained, "samples.npy")
    np.save(out, samples)
    print(f"wrote {samples.shape} samples to {out}")
    if samples.ndim == 4:
      from ae_jax import figures
      png = figures.image_rows([samples], ["sample"], out.with_suffix(".png"))
      print(f"figure: {png}")
    return 0
  data = _data_for(trained, args)
  if args.command == "evaluate":
    metrics = trained.evaluate(data)
    out = _out(args, trained, "evaluate.json")
    out.write_text(json.dumps({"data": data.name, **metrics}, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out}")
  elif args.command == "encode":
    z = trained.encode(data.x, data.y if trained.config.model.family == "cvae" else None)
    out = _out(args, trained, "latents.npy")
    np.save(out, z)
    print(f"wrote latents {z.shape} to {out}")
  elif args.command == "reconstruct":
    cond = data.y if trained.config.model.family == "cvae" else None
    x_hat = trained.reconstruct(data.x, cond)
    out = _out(args, trained, "reconstructions.npy")
    np.save(out, x_hat)
    from ae_jax import figures
    png = figures.reconstruction_grid(data.x[:8], x_hat[:8], out.with_suffix(".png"))
    print(f"wrote reconstructions {x_hat.shape} to {out}; figure: {png}")
  return 0


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  try:
    return run(argv)
  except AeJaxError as e:
    print(f"ae-jax: error: {e}", file=sys.stderr)
    _exit_if_distributed(2)
    return 2
  except Exception:
    _exit_if_distributed(1, traceback.format_exc())
    raise


def _exit_if_distributed(code: int, message: str = "") -> None:
  """After an error in a multi-process run, print `message` and end the process now."""
  distributed = sys.modules.get("ae_jax.distributed")
  if distributed is not None and distributed.is_running():
    print(message, file=sys.stderr, end="")
    distributed.exit_after_error(code)


if __name__ == "__main__":
  warnings.simplefilter("default")
  sys.exit(main())
