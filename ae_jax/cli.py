"""The `ae-jax` command line: train, evaluate, encode, reconstruct, sample, sweep, detect.

Config values are overridden in the ml_collections style, `--config.model.latent_dim=16`;
`--config` names a preset (see `ae_jax.configs.PRESETS`) or a .json / .py config file.
Paths are used as given, never passed through a shell.
"""

import argparse
import json
import pathlib
import sys
import traceback
import warnings

import numpy as np

from ae_jax.configs.overrides import (apply_overrides, load_config, parse_value,  # noqa: F401
                                     set_value)
from ae_jax.errors import AeJaxError, ConfigError

DEFAULT_WORKDIR = "workdir"


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
    if name == "evaluate":
      s.add_argument("--nll-samples", type=int, default=0, metavar="K",
                     help="VAE families: add the importance-sampled NLL (K samples), the "
                     "ELBO and active units over the whole split, with standard errors")
    if name == "sample":
      s.add_argument("--num", type=int, default=16)
      s.add_argument("--seed", type=int, default=0)
  from ae_jax.anomaly import command as detect_command
  detect_command.add_parser(sub)
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
    if evals and cfg.train.patience:
      print(f"validation loss: {min(r['loss'] for r in evals):.5g} (the best evaluation, "
            f"kept as the final model; last {evals[-1]['loss']:.5g})")
    elif evals:
      print(f"validation loss: {evals[-1]['loss']:.5g}")
    for name, path in trained.figure_paths.items():
      print(f"{name}: {path}")
    return 0
  if args.command == "detect":
    return args.run_command(args)
  if args.command == "sweep":
    from ae_jax import sweep
    return sweep.run_cli(args, apply_overrides(load_config(args.config), extra))
  from ae_jax.trained import Trained
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
    if args.nll_samples:
      from ae_jax import likelihood
      metrics.update(likelihood.likelihood_metrics(trained, data.x, num_samples=args.nll_samples,
                                                   cond=data.y))
    out = _out(args, trained, "evaluate.json")
    out.write_text(json.dumps({"data": data.name, **metrics}, indent=2))
    print(json.dumps(metrics, indent=2))
    print(f"wrote {out}")
  elif args.command == "encode":
    z = trained.encode(data.x, data.y if trained.conditional else None)
    out = _out(args, trained, "latents.npy")
    np.save(out, z)
    print(f"wrote latents {z.shape} to {out}")
  elif args.command == "reconstruct":
    cond = data.y if trained.conditional else None
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
