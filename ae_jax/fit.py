"""The training loop: data, model, compiled step, evaluation, checkpoints, resume, figures.

`fit(config, workdir)` trains and returns a `Trained` model. Given the same workdir a
run resumes from its newest readable checkpoint with the same step, rng and data
order, and ends with the same parameters as an uninterrupted run. With early stopping
(`train.patience > 0`) or `restore_best`, the returned model, and with patience the final
checkpoint, hold the parameters of the best evaluation, also when the run was resumed.

Data preparation is in `ae_jax.prepare`, the trained model (inference, loading) in
`ae_jax.trained` and the step loop, shared with `ae_jax.vmap_trials`, in `ae_jax.loop`;
their names are re-exported here.
"""

import functools
import json
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from ae_jax import checkpoint as ckpt_lib
from ae_jax import data as data_lib
from ae_jax import distributed
from ae_jax import parallel
from ae_jax.errors import ConfigError, DataError, NonFiniteError
from ae_jax.families import FAMILIES, build_model, get_family
from ae_jax.loop import run_steps
from ae_jax.prepare import prepare_data, total_steps, validate_train_config  # noqa: F401
from ae_jax.trained import (Trained, eval_batch_size, eval_fn, evaluate,  # noqa: F401
                            run_eval, scaler_from_meta)
from ae_jax.train import INIT_SAMPLE, create_train_state, train_step  # noqa: F401
from ae_jax.train import eval_params, with_eval_params

METRICS_FILE = "metrics.jsonl"


class _MetricsLog:
  """Appends JSON lines to workdir/metrics.jsonl; on resume drops lines past the step."""

  def __init__(self, workdir: pathlib.Path | None, resume_step: int | None):
    self.path = None if workdir is None else workdir / METRICS_FILE
    self.rows: list[dict] = []
    if self.path is not None and self.path.exists():
      rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
      keep = [r for r in rows if resume_step is not None and r["step"] <= resume_step]
      self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))
      self.rows = keep

  def write(self, row: dict) -> None:
    self.rows.append(row)
    if self.path is not None:
      with self.path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def _meta(cfg, input_shape, scaler, iterator, best, bad_evals, stopped_early=False) -> dict:
  return {"config": cfg.to_json(), "input_shape": list(input_shape),
          "data_state": iterator.get_state().decode(), "best_val_loss": best,
          "bad_evals": bad_evals, "stopped_early": stopped_early, "version": 1,
          "scaler": {k: (v if isinstance(v, str) else np.asarray(v).tolist())
                     for k, v in scaler.to_state().items()}}


def _restore_best_params(ckpts, state, start: int, best: float):
  """Host params of the best checkpoint when it is the one the resumed run's record
  points at (written at or before the resumed step); None otherwise."""
  if ckpts is None or not np.isfinite(best) or not (ckpts.workdir / ckpt_lib.BEST_DIR).is_dir():
    return None
  steps = [s for s in ckpts.best.all_steps() if s <= start]
  if not steps:
    return None
  restored, _ = ckpt_lib.restore(ckpts.best, max(steps), state)
  return jax.device_get(eval_params(restored))


def fit(cfg: ml_collections.ConfigDict, workdir=None, *, train_data=None, eval_data=None,
        progress: bool = True, stop_after: int | None = None,
        restore_best: bool = False, make_loader: Callable | None = None) -> Trained:
  """Train `cfg` and return the trained model.

  Args:
    cfg: a config from `ae_jax.configs` (possibly overridden).
    workdir: where checkpoints, metrics.jsonl and figures go; None keeps nothing on disk.
      A workdir with checkpoints resumes from the newest readable one.
    train_data / eval_data: ArrayData to use instead of loading cfg.data.
    progress: show a tqdm bar.
    stop_after: stop (after checkpointing) once this step is reached; for tests of resume.
    restore_best: return the parameters of the evaluation with the lowest validation
      loss (kept in host memory) instead of the last ones; needs validation data. With
      train.patience > 0 this is always so, and the final checkpoint holds them too. A
      resumed run takes them back from the workdir's best/ checkpoint.
    make_loader: `make_loader(train_data, batch_size=, seed=)` giving an iterable whose
      iterator has get_state() -> bytes and set_state(bytes); default
      `ae_jax.data.make_train_loader` (Grain).
  """
  get_family(cfg.model.family)
  distributed.check_config(cfg)
  is_main = distributed.is_main_process()
  train, val, scaler = prepare_data(cfg, train_data, eval_data)
  input_shape = tuple(train.x.shape[1:])
  devices = parallel.resolve_devices(cfg.train.num_devices) if cfg.train.parallel in (
      "pmap", "shard_map") else jax.local_devices()[:1]
  validate_train_config(cfg, len(train), len(devices) * jax.process_count())
  model = build_model(cfg, input_shape)
  family = FAMILIES.get(cfg.model.family)
  steps = total_steps(cfg, len(train))
  state = create_train_state(cfg, model, input_shape, jax.random.key(cfg.seed), steps,
                             data=train.x[:INIT_SAMPLE])
  if jax.process_count() > 1:
    loader = data_lib.pipeline.make_process_train_loader(
        train, global_batch_size=cfg.train.batch_size, seed=cfg.seed)
  else:
    loader = (make_loader or data_lib.make_train_loader)(train, batch_size=cfg.train.batch_size,
                                                       seed=cfg.seed)
  iterator = iter(loader)
  best, bad_evals = float("inf"), 0
  keep_best = val is not None and (restore_best or bool(cfg.train.patience))
  best_params = None
  stopped_early = False

  workdir = None if workdir is None else pathlib.Path(workdir)
  ckpts = None
  if workdir is not None:
    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = ckpt_lib.Checkpoints(workdir, cfg.train.keep_checkpoints)
    got = ckpt_lib.restore_newest_readable(ckpts.latest, cfg, state, str(workdir),
                                           delete_damaged=True)
    if got is not None:
      state, meta = got
      try:
        iterator.set_state(meta["data_state"].encode())
      except ValueError as e:
        raise DataError(
            f"the checkpoint in {workdir} was written for other training data or batching "
            f"than this run's ({str(e).splitlines()[0]}); resume with the same data and "
            "train.batch_size, or use a new workdir") from None
      best, bad_evals = meta["best_val_loss"], meta["bad_evals"]
      stopped_early = bool(meta.get("stopped_early", False)) and bool(cfg.train.patience)
      if keep_best:
        best_params = _restore_best_params(ckpts, state, int(state.step), best)
  start = int(state.step)
  log = _MetricsLog(workdir if is_main else None, start)
  if workdir is not None and is_main:
    (workdir / "config.json").write_text(cfg.to_json(indent=2))

  step_fn = parallel.compile_step(
      functools.partial(train_step, model=model, family=family, config=cfg),
      cfg.train.parallel, num_devices=cfg.train.num_devices)
  evaluator = eval_fn(cfg, model, family, cfg.train.parallel, cfg.train.num_devices)
  rng = jax.random.key(cfg.seed + 1)
  last_good = start if ckpts is not None and start in ckpts.steps() else None
  skipped = 0
  # A run that stopped early is finished: resuming it trains no further.
  stop_at = start if stopped_early else steps if stop_after is None else min(steps, stop_after)
  bar = tqdm.tqdm(total=steps, initial=start, disable=not (progress and is_main), desc="train",
                  dynamic_ncols=True)
  board = _open_board(cfg, workdir, model, scaler, input_shape, val if val is not None else train,
                      steps, start) if cfg.train.get("tensorboard", False) and is_main else None
  t0 = time.time()

  def on_metrics(host_rows):
    """Check the steps' metrics (stop on the first non-finite step) and log the newest."""
    nonlocal skipped
    for s, m in host_rows:
      m = {k: float(v) for k, v in m.items()}
      if m["finite"] < 1:
        if cfg.train.nonfinite == "raise":
          where = (f"the last good checkpoint is step {last_good} in {workdir / 'checkpoints'}"
                   " (left intact)" if last_good is not None else "no checkpoint was written")
          raise NonFiniteError(
              f"non-finite loss or gradient at step {s} (loss={m['loss']}, "
              f"grad_norm={m['grad_norm']}); {where}. Lower optim.learning_rate, set "
              "optim.grad_clip, check the data scaling, or set train.nonfinite='skip'")
        skipped += 1
        if skipped > cfg.train.max_skipped_steps:
          raise NonFiniteError(
              f"{skipped} non-finite steps were skipped (the last at step {s}), more than "
              f"train.max_skipped_steps={cfg.train.max_skipped_steps}; lower "
              "optim.learning_rate or set optim.grad_clip")
    s, m = host_rows[-1]
    m = {k: float(v) for k, v in m.items()}
    log.write({"step": s, "split": "train", "time": round(time.time() - t0, 3),
               "timestamp": time.time(), **m})
    if board is not None:
      board.scalars(s, "train", m)
    bar.set_postfix(loss=f"{m['loss']:.4g}")

  def on_eval(step, state) -> bool:
    nonlocal best, bad_evals, best_params, stopped_early
    ev = run_eval(evaluator, family, cfg, eval_params(state), val,
                  eval_batch_size(cfg, getattr(evaluator, "num_devices", 1)))
    log.write({"step": step, "split": "eval", "time": round(time.time() - t0, 3),
               "timestamp": time.time(), **ev})
    if board is not None:
      board.evaluation(step, ev, distributed.to_local(eval_params(state)))
    if ev["loss"] < best:
      best, bad_evals = ev["loss"], 0
      if keep_best:
        best_params = jax.device_get(distributed.to_local(eval_params(state)))
      if ckpts is not None:
        ckpts.save_best(step, distributed.to_global(state),
                        _meta(cfg, input_shape, scaler, iterator, best, bad_evals), best)
    else:
      bad_evals += 1
    stopped_early = bool(cfg.train.patience) and bad_evals >= cfg.train.patience
    return stopped_early

  def after_step(step, state, is_ckpt, stop):
    nonlocal last_good
    finished = stop or step == steps
    if ckpts is not None and (is_ckpt or stop):
      if finished and cfg.train.patience and best_params is not None:
        # The final model of an early-stopping run is its best evaluation.
        state = with_eval_params(state, distributed.to_global(
            jax.tree.map(jnp.asarray, best_params)))
      ckpts.save(step, distributed.to_global(state),
                 _meta(cfg, input_shape, scaler, iterator, best, bad_evals, stop))
      last_good = step
    if stop:
      bar.write(f"early stopping at step {step}: no improvement of the validation loss "
                f"in {bad_evals} evaluations (best {best:.5g})")

  try:
    state, _ = run_steps(
        state, lambda s, b: step_fn(s, b, rng), lambda: parallel.host_batch(next(iterator)),
        start=start, stop_at=stop_at, last_step=steps, log_every=cfg.train.log_every,
        eval_every=cfg.train.eval_every, evaluates=val is not None, on_metrics=on_metrics,
        on_eval=on_eval,
        sync=lambda step: ckpts is not None and (step % cfg.train.checkpoint_every == 0
                                                 or step == stop_at),
        after_step=after_step, on_step=lambda: bar.update(1))
  finally:
    bar.close()
    if board is not None:
      board.close()
    if ckpts is not None:
      ckpts.close()
  params = (distributed.to_local(eval_params(state)) if best_params is None else
            jax.tree.map(jnp.asarray, best_params))
  result = Trained(cfg, model, params, scaler, input_shape, int(state.step),
                   history=log.rows, workdir=workdir)
  if workdir is not None and cfg.train.figures and jax.process_index() == 0:
    from ae_jax import figures  # matplotlib is imported only when figures are drawn
    result.figure_paths = figures.training_figures(result, val if val is not None else train)
  return result


# ---- TensorBoard (optional, train.tensorboard) -------------------------------------

def _open_board(cfg, workdir, model, scaler, input_shape, data, steps: int, start: int):
  """A `TrainingBoard` writing to workdir/tensorboard, drawing examples of `data`."""
  from ae_jax import tensorboard
  from ae_jax.train import learning_rate_schedule
  if workdir is None:
    raise ConfigError("train.tensorboard=true writes into the workdir; give a workdir or set "
                      "train.tensorboard=false")
  n = tensorboard.NUM_IMAGES
  return tensorboard.TrainingBoard(
      workdir / tensorboard.LOGDIR, Trained(cfg, model, None, scaler, input_shape),
      scaler.inverse_transform(data.x[:n]), None if data.y is None else data.y[:n],
      learning_rate=learning_rate_schedule(cfg, steps),
      can_sample=get_family(cfg.model.family).can_sample,
      images_every=cfg.train.get("tensorboard_images_every", 5), start_step=start)
