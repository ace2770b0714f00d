"""Vectorised trials: T trials trained together under vmap against the same T trials one
after another.

`python -m benchmarks.vmap_trials [--smoke] [--out vmap_trials.json] [--trials 1,4,16,64]`
`  [--e2e-trials 4,16] [--steps 300] [--variants lr,lr_seed] [--widths 128,64]`

Model and data: the default config's MLP autoencoder (8x8 digits, widths 128-64, latent
16, batch 64, Adam), the trials differing in learning rate (`lr`: log-spaced 1e-4 to
1e-2, one shared batch stream) or in learning rate and seed (`lr_seed`: every trial its
own initialisation and batch order, batches stacked (T, B, ...)).

Two figures per T:
- step: one call of the vmapped step (`ae_jax.vmap_trials`, T trials) against T calls of
  the one-trial step that `fit` compiles (`ae_jax.train.train_step` under jit), both
  compiled ahead, inputs on the device, timed in turns; speed-up = T * one / vmapped.
- end to end (T in --e2e-trials): `vmap_trials.fit_trials` of T trials for --steps steps
  against T runs of `ae_jax.fit.fit` one after another (each compiles, trains and
  evaluates: what a sweep does with trials that cannot be vmapped), compile included.
"""

from __future__ import annotations

import functools
import math
import pathlib
import time

import jax
import numpy as np

from ae_jax import configs, vmap_trials
from ae_jax import data as data_lib
from ae_jax.families import build_model, get_family
from ae_jax.fit import fit, prepare_data
from ae_jax.train import create_train_state, train_step
from benchmarks import common

VARIANTS = ("lr", "lr_seed")


def base_config(widths, steps: int):
  cfg = configs.get_preset("default")
  cfg.model.widths = tuple(widths)
  cfg.train.parallel = "jit"
  cfg.train.num_steps = steps
  cfg.train.eval_every = max(steps // 2, 1)
  cfg.train.log_every = max(steps // 4, 1)
  cfg.train.figures = False
  return cfg


def trial_overrides(variant: str, num: int) -> list[dict]:
  lrs = np.logspace(-4, -2, num) if num > 1 else np.asarray([1e-3])
  return [{"optim.learning_rate": float(lr), **({"seed": i} if variant == "lr_seed" else {})}
          for i, lr in enumerate(lrs)]


def step_row(cfg, train, variant: str, num: int, *, repeats, min_repeats, budget_s) -> dict:
  """Seconds per step of one trial (jit) and of T trials (jit(vmap)), timed in turns."""
  overrides = trial_overrides(variant, num)
  cfgs = [vmap_trials.with_overrides(cfg, o) for o in overrides]
  input_shape = tuple(train.x.shape[1:])
  steps = cfg.train.num_steps
  bs = cfg.train.batch_size
  rng = np.random.default_rng(0)
  shared = {"x": train.x[rng.choice(len(train), bs, replace=False)]}
  stacked = {"x": np.stack([train.x[rng.choice(len(train), bs, replace=False)]
                            for _ in range(num)])}

  model = build_model(cfg, input_shape)
  one = jax.jit(functools.partial(train_step, model=model, family=get_family(cfg.model.family),
                                  config=cfg), donate_argnums=(0,))
  one_state = create_train_state(cfg, model, input_shape, jax.random.key(0), steps)
  one_batch = jax.device_put(shared)
  one_rng = jax.random.key(1)
  t0 = time.perf_counter()
  one_c = one.lower(one_state, one_batch, one_rng).compile()
  one_compile = time.perf_counter() - t0

  prog, state, rngs, hparams = vmap_trials.trial_state(cfg, cfgs, input_shape, steps)
  axis = 0 if variant == "lr_seed" else None
  batch = jax.device_put(stacked if axis == 0 else shared)
  t0 = time.perf_counter()
  many_c = prog.step(axis).lower(state, batch, rngs, hparams).compile()
  many_compile = time.perf_counter() - t0

  holder = {"one": one_state, "many": state}

  def call_one():
    holder["one"], m = one_c(holder["one"], one_batch, one_rng)
    jax.block_until_ready((holder["one"], m))

  def call_many():
    holder["many"], m = many_c(holder["many"], batch, rngs, hparams)
    jax.block_until_ready((holder["many"], m))

  timings = common.time_interleaved({"one": call_one, "many": call_many}, repeats=repeats,
                                    min_repeats=min_repeats, budget_s=budget_s)
  t_one = timings["one"].summary()["median_s"]
  t_many = timings["many"].summary()["median_s"]
  return {"variant": variant, "trials": num, "batch": bs,
          "one_trial_step_ms": 1e3 * t_one, "vmapped_step_ms": 1e3 * t_many,
          "sequential_step_ms": 1e3 * num * t_one,
          "trial_steps_per_s_sequential": 1.0 / t_one,
          "trial_steps_per_s_vmapped": num / t_many,
          "step_speedup": num * t_one / t_many,
          "one_compile_s": one_compile, "vmapped_compile_s": many_compile,
          "one_timing": timings["one"].summary(), "vmapped_timing": timings["many"].summary()}


def e2e_row(cfg, data, variant: str, num: int) -> dict:
  """Wall seconds of T trials: fit one after another vs fit_trials together."""
  overrides = trial_overrides(variant, num)
  vmap_trials._PROGRAMS.clear()  # pylint: disable=protected-access
  t0 = time.perf_counter()
  runs = vmap_trials.fit_trials(cfg, overrides, train_data=data)
  jax.block_until_ready(runs[-1].trained.params)
  t_vmap = time.perf_counter() - t0
  t0 = time.perf_counter()
  alone = [fit(vmap_trials.with_overrides(cfg, o), train_data=data, progress=False)
           for o in overrides]
  t_seq = time.perf_counter() - t0
  gap = max(abs(r.val_loss - _last_eval(a)) / max(abs(_last_eval(a)), 1e-12)
            for r, a in zip(runs, alone))
  return {"variant": variant, "trials": num, "steps": cfg.train.num_steps,
          "sequential_fit_s": t_seq, "vmapped_fit_trials_s": t_vmap,
          "e2e_speedup": t_seq / t_vmap, "max_rel_val_loss_gap": gap}


def _last_eval(trained) -> float:
  return [r["loss"] for r in trained.history if r["split"] == "eval"][-1]


STEP_COLUMNS = [("variant", "variant"), ("T", "trials"), ("one trial ms", "one_trial_step_ms"),
                ("T one by one ms", "sequential_step_ms"), ("vmapped T ms", "vmapped_step_ms"),
                ("speed-up", "step_speedup"),
                ("trial-steps/s one by one", "trial_steps_per_s_sequential"),
                ("trial-steps/s vmapped", "trial_steps_per_s_vmapped"),
                ("compile one s", "one_compile_s"), ("compile vmapped s", "vmapped_compile_s")]
E2E_COLUMNS = [("variant", "variant"), ("T", "trials"), ("steps", "steps"),
               ("fit x T s", "sequential_fit_s"), ("fit_trials s", "vmapped_fit_trials_s"),
               ("speed-up", "e2e_speedup"), ("max rel. val-loss gap", "max_rel_val_loss_gap")]


def main(argv=None) -> dict:
  parser = common.base_parser(__doc__.splitlines()[0])
  parser.add_argument("--trials", type=common.int_list, default=None)
  parser.add_argument("--e2e-trials", type=common.int_list, default=None)
  parser.add_argument("--steps", type=int, default=None, help="steps per trial, end to end")
  parser.add_argument("--variants", type=common.str_list, default=list(VARIANTS))
  parser.add_argument("--widths", type=common.int_list, default=[128, 64])
  args = parser.parse_args(argv)
  smoke = args.smoke
  bad = set(args.variants) - set(VARIANTS)
  if bad:
    parser.error(f"unknown --variants {sorted(bad)}; valid: {', '.join(VARIANTS)}")
  trials = args.trials or ([2] if smoke else [1, 4, 16, 64])
  e2e_trials = args.e2e_trials if args.e2e_trials is not None else ([2] if smoke else [4, 16])
  steps = args.steps or (6 if smoke else 300)
  repeats = args.repeats or (2 if smoke else 15)
  budget_s = args.budget or (0.05 if smoke else 2.0)
  min_repeats = 2 if smoke else 3

  env = common.environment()
  print(f"device {env['device_kind']} ({env['platform']}), {env['cpu_count']} CPUs")
  cfg = base_config(args.widths, steps)
  data = data_lib.load("digits")
  train, _, _ = prepare_data(cfg, data, None)
  t0 = time.perf_counter()
  step_rows, e2e_rows = [], []
  for variant in args.variants:
    for num in trials:
      row = step_row(cfg, train, variant, num, repeats=repeats, min_repeats=min_repeats,
                     budget_s=budget_s)
      step_rows.append(row)
      print(f"step  {variant:8s} T={num:<5d} one {row['one_trial_step_ms']:.3f} ms, "
            f"vmapped {row['vmapped_step_ms']:.3f} ms: x{row['step_speedup']:.1f}")
    for num in e2e_trials:
      row = e2e_row(cfg, data, variant, num)
      e2e_rows.append(row)
      print(f"e2e   {variant:8s} T={num:<5d} fit x T {row['sequential_fit_s']:.1f} s, "
            f"fit_trials {row['vmapped_fit_trials_s']:.1f} s: x{row['e2e_speedup']:.1f}")
  payload = {"benchmark": "vmap_trials", "command": common.command_line(), "environment": env,
             "smoke": smoke, "model": {"widths": list(args.widths), "latent_dim":
                                       cfg.model.latent_dim, "batch": cfg.train.batch_size,
                                       "data": "digits (8x8x1)", "optimizer": cfg.optim.name},
             "step_rows": step_rows, "e2e_rows": e2e_rows,
             "wall_s": time.perf_counter() - t0}
  table = ("Per step (median of timed repeats):\n\n" + common.rows_table(step_rows, STEP_COLUMNS)
           + "\n\nEnd to end (compile, train, evaluate):\n\n"
           + common.rows_table(e2e_rows, E2E_COLUMNS) + "\n")
  payload["table"] = table
  common.write_json(args.out, payload)
  if args.out is not None:
    path = pathlib.Path(args.out).with_suffix(".md")
    path.write_text(f"`{payload['command']}` on {env['device_kind']}\n\n{table}")
    print(f"wrote {path}")
  print(table)
  return payload


if __name__ == "__main__":
  main()
