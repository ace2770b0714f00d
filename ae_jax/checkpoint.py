"""Orbax checkpoints of a training run: the last N steps, plus the best by validation loss.

A checkpoint holds the train state (params, optimizer state, step) and a JSON record
(config, input shape, fitted scaler, data-iterator state, early-stopping counters). It is
restored into a freshly built state, never unpickled: loading executes no code from
the file. A checkpoint that cannot be read (truncated, garbled) is skipped with a
warning and the previous one is used.
"""

import json
import pathlib
import shutil
import warnings
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from ae_jax.errors import CheckpointError

LATEST_DIR = "checkpoints"
BEST_DIR = "best"


def _manager(directory: pathlib.Path, keep: int, best: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False,
      best_fn=(lambda m: m["val_loss"]) if best else None, best_mode="min",
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory.absolute(), options=options,
                               item_names=("state", "meta"))


def state_tree(state) -> dict[str, Any]:
  return {"params": state.params, "opt_state": state.opt_state, "step": state.step}


class Checkpoints:
  """The checkpoints of one workdir: `save`, `restore_latest`, `save_best`."""

  def __init__(self, workdir, keep: int = 3):
    self.workdir = pathlib.Path(workdir)
    self.latest = _manager(self.workdir / LATEST_DIR, keep)
    self._best = None

  @property
  def best(self) -> ocp.CheckpointManager:
    if self._best is None:
      self._best = _manager(self.workdir / BEST_DIR, 1, best=True)
    return self._best

  def _args(self, state, meta):
    return ocp.args.Composite(state=ocp.args.StandardSave(state_tree(state)),
                              meta=ocp.args.JsonSave(meta))

  @staticmethod
  def _replace(manager: ocp.CheckpointManager, step: int) -> None:
    """A run resumed from an older step writes its steps again: drop the stale copy."""
    if step in manager.all_steps():
      manager.delete(step)

  def save(self, step: int, state, meta: dict) -> None:
    self._replace(self.latest, step)
    self.latest.save(step, args=self._args(state, meta), force=True)
    self.latest.wait_until_finished()

  def save_best(self, step: int, state, meta: dict, val_loss: float) -> None:
    self._replace(self.best, step)
    self.best.save(step, args=self._args(state, meta),
                   metrics={"val_loss": float(val_loss)}, force=True)
    self.best.wait_until_finished()

  def steps(self) -> list[int]:
    return sorted(self.latest.all_steps())

  def close(self):
    self.latest.close()
    if self._best is not None:
      self._best.close()


def read_meta(manager: ocp.CheckpointManager, step: int) -> dict:
  return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


# Model settings that do not change the parameters: a checkpoint restores across them.
_SAME_PARAMS = ("compute_dtype", "conv_impl", "conv_batch_chunk", "batch_chunk")


def check_architecture(meta: dict, cfg: ml_collections.ConfigDict, where: str) -> None:
  """Raise CheckpointError when the checkpoint's model config differs from cfg.model."""
  saved = json.loads(with_defaults(json.loads(meta["config"])).to_json())["model"]
  current = json.loads(cfg.to_json())["model"]
  diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current)
          if saved.get(k) != current.get(k) and k not in _SAME_PARAMS}
  if diff:
    detail = ", ".join(f"model.{k}: checkpoint {a!r} vs config {b!r}" for k, (a, b) in
                       sorted(diff.items()))
    raise CheckpointError(
        f"the checkpoint in {where} was written by a different architecture ({detail}); "
        "use a new workdir, or the same model config as the run that wrote it")


def restore(manager: ocp.CheckpointManager, step: int, state):
  """Restore (state, meta) of `step` into the structure of `state`."""
  target = ocp.args.Composite(
      state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                  state_tree(state))),
      meta=ocp.args.JsonRestore())
  got = manager.restore(step, args=target)
  tree = got["state"]
  new_state = state.replace(params=tree["params"], opt_state=tree["opt_state"],
                            step=tree["step"])
  return new_state, got["meta"]


def restore_newest_readable(manager: ocp.CheckpointManager, cfg, state, where: str,
                            delete_damaged: bool = False):
  """Restore the newest checkpoint that reads cleanly; warn about each one skipped.

  Returns (state, meta) or None when there is no checkpoint. A checkpoint of a
  different architecture raises CheckpointError (it is not skipped). With
  `delete_damaged`, unreadable newer steps are removed so training can write them again.
  """
  damaged = []
  result = None
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      meta = read_meta(manager, step)
    except Exception as e:  # noqa: BLE001 - any read failure means a damaged checkpoint
      warnings.warn(f"checkpoint step {step} in {where} is unreadable ({type(e).__name__}: "
                    f"{str(e)[:200]}); falling back to the previous one", RuntimeWarning)
      damaged.append(step)
      continue
    check_architecture(meta, cfg, where)
    try:
      result = restore(manager, step, state)
      break
    except Exception as e:  # noqa: BLE001
      warnings.warn(f"checkpoint step {step} in {where} is damaged ({type(e).__name__}: "
                    f"{str(e)[:200]}); falling back to the previous one", RuntimeWarning)
      damaged.append(step)
  if delete_damaged and damaged:
    for step in damaged:
      shutil.rmtree(pathlib.Path(manager.directory) / str(step), ignore_errors=True)
    manager.reload()
  return result


def with_defaults(saved: dict) -> ml_collections.ConfigDict:
  """A saved config (as a dict) with the fields added since it was written set to their
  defaults, so that older checkpoints keep loading."""
  from ae_jax import configs  # pylint: disable=g-import-not-at-top
  merged = configs.get_preset("default").to_dict()
  for section, values in saved.items():
    if isinstance(values, dict) and isinstance(merged.get(section), dict):
      merged[section] = {**merged[section], **values}
    else:
      merged[section] = values
  return ml_collections.ConfigDict(merged)


def load_config(workdir, best: bool = False) -> tuple[ml_collections.ConfigDict, dict, int]:
  """The config, meta record and step of a workdir's newest readable (or best) checkpoint."""
  workdir = pathlib.Path(workdir)
  sub = workdir / (BEST_DIR if best else LATEST_DIR)
  if not sub.is_dir():
    raise CheckpointError(f"no checkpoints in {workdir} (expected a folder {sub.name}/); "
                          "train first with `ae-jax train --workdir ...`")
  manager = _manager(sub, 1000, best=best)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        meta = read_meta(manager, step)
      except Exception as e:  # noqa: BLE001
        warnings.warn(f"checkpoint step {step} in {sub} is unreadable ({type(e).__name__}); "
                      "falling back to the previous one", RuntimeWarning)
        continue
      return with_defaults(json.loads(meta["config"])), meta, step
  finally:
    manager.close()
  raise CheckpointError(f"no readable checkpoint in {sub}")


def open_manager(workdir, best: bool = False) -> ocp.CheckpointManager:
  workdir = pathlib.Path(workdir)
  return _manager(workdir / (BEST_DIR if best else LATEST_DIR), 1000, best=best)
