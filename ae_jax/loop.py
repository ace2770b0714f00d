"""The step loop that `ae_jax.fit.fit` and `ae_jax.vmap_trials.fit_trials` share.

The loop advances a state one compiled step at a time and keeps the step metrics on the
device until a step that needs them on the host: a log step, an evaluation step or a step
the caller marks (a checkpoint). The caller supplies what differs (one model or a stack of
trials): how metrics are checked and logged, how to evaluate and what to do after a step.
"""

from typing import Any, Callable

import jax


def run_steps(state, step_fn: Callable, next_batch: Callable[[], Any], *, start: int,
              stop_at: int, last_step: int, log_every: int, eval_every: int,
              evaluates: bool, on_metrics: Callable[[list[tuple[int, Any]]], None],
              on_eval: Callable[[int, Any], bool] | None = None,
              sync: Callable[[int], bool] = lambda step: False,
              after_step: Callable[[int, Any, bool, bool], None] | None = None,
              on_step: Callable[[], None] = lambda: None):
  """Steps start + 1 .. stop_at; returns (state, last step run).

  Args:
    state: the train state; `step_fn(state, batch) -> (state, metrics)`.
    next_batch: the next training batch (host arrays).
    start / stop_at: the step already done, the last step to run now.
    last_step: the run's final step (evaluated even when not a multiple of eval_every).
    log_every / eval_every: metrics reach the host every log_every steps (and at
      stop_at); with `evaluates`, `on_eval(step, state)` runs every eval_every steps and
      at last_step and returns True to stop (early stopping).
    on_metrics: called with [(step, host metrics), ...] of every step since the last
      call, oldest first, at each log, evaluation and `sync(step)` step; it may raise to
      stop training (non-finite loss).
    after_step: `after_step(step, state, synced, stop)` after each step (after its
      evaluation), e.g. to write a checkpoint; `synced` is `sync(step)`.
    on_step: called once per step (a progress bar).
  """
  pending: list[tuple[int, Any]] = []
  step = start
  for step in range(start + 1, stop_at + 1):
    state, metrics = step_fn(state, next_batch())
    pending.append((step, metrics))
    is_log = step % log_every == 0 or step == stop_at
    is_eval = evaluates and (step % eval_every == 0 or step == last_step)
    synced = sync(step)
    if is_log or is_eval or synced:
      on_metrics(_to_host(pending))
    on_step()
    stop = bool(on_eval(step, state)) if is_eval and on_eval is not None else False
    if after_step is not None:
      after_step(step, state, synced, stop)
    if stop:
      break
  if pending:
    on_metrics(_to_host(pending))
  return state, step


def _to_host(pending: list) -> list[tuple[int, Any]]:
  rows = [(s, jax.device_get(m)) for s, m in pending]
  pending.clear()
  return rows

