"""optim.ema_decay: a moving average of the parameters, kept in the optimizer state, that
evaluation, selection, checkpoints and `Trained` use."""

import chex
import jax
import numpy as np
import optax
import pytest

from ae_jax import families, parallel, train
from ae_jax.errors import ConfigError
from ae_jax.fit import Trained, fit
from ae_jax.trained import load_state
from test_core import configure, init_key, step_fn
from test_fit import _early_stopping, _small
from test_sparse import dictionary_cfg


def _steps(cfg, digits, steps=3, mode="jit"):
  """(initial state, [params after each step], final state) of `steps` plain-AE steps."""
  shape = digits.shape[1:]
  model = families.build_model(cfg, shape)
  state0 = train.create_train_state(cfg, model, shape, init_key(), 10)
  step = parallel.compile_step(step_fn(cfg, model), mode, donate_state=False)
  state, seen = state0, []
  for i in range(steps):
    state, _ = step(state, {"x": digits[16 * i:16 * (i + 1)]}, jax.random.key(7))
    seen.append(jax.device_get(state.params))
  return state0, seen, state


def test_moving_average_against_a_hand_computed_one(cfg, digits):
  configure(cfg, "ae")
  cfg.optim.ema_decay = 0.5
  state0, seen, state = _steps(cfg, digits)
  # ema_3 = d^3 p0 + d^2 (1 - d) p1 + d (1 - d) p2 + (1 - d) p3 with d = 1/2.
  want = jax.tree.map(lambda p0, p1, p2, p3: p0 / 8 + p1 / 8 + p2 / 4 + p3 / 2,
                      state0.params, *seen)
  chex.assert_trees_all_close(train.eval_params(state), want, rtol=1e-6, atol=1e-7)
  # The average is only read: the trained parameters are those of a run without it.
  cfg.optim.ema_decay = 0.0
  _, plain, plain_state = _steps(cfg, digits)
  chex.assert_trees_all_equal(seen, plain)
  assert train.eval_params(plain_state) is plain_state.params


def test_average_is_found_in_any_chain_and_not_confused_with_a_parameter_named_ema():
  """eval_params / with_eval_params find the average wherever optax.chain nests it, and
  a model's own parameter called `ema` is neither read nor replaced as the average."""
  params = {"params": {"ema": np.ones(3, np.float32), "w": np.zeros(2, np.float32)}}
  tx = optax.chain(optax.clip_by_global_norm(1.0),
                   optax.chain(optax.adam(1e-3), train.params_ema_slot()))
  state = train.TrainState.create(apply_fn=None, params=params, tx=tx)
  chex.assert_trees_all_equal(train.eval_params(state), params)
  assert train.eval_params(state) is not state.params   # the slot holds its own copy
  other = jax.tree.map(lambda x: x + 5, params)
  moved = train.with_eval_params(state, other)
  chex.assert_trees_all_equal(train.eval_params(moved), other)
  chex.assert_trees_all_equal(moved.params, other)
  adam_state = moved.opt_state[1][0][0]
  chex.assert_trees_all_equal(adam_state.mu, jax.tree.map(np.zeros_like, params))
  plain = train.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
  assert train.eval_params(plain) is plain.params
  assert train.with_eval_params(plain, other).opt_state is plain.opt_state


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_bad_decay_is_refused(cfg, decay):
  cfg.optim.ema_decay = decay
  with pytest.raises(ConfigError, match="ema_decay"):
    train.make_optimizer(cfg, 10)


def test_parallel_modes_keep_the_same_average(cfg, digits):
  configure(cfg, "ae")
  cfg.optim.ema_decay = 0.9
  _, _, ref = _steps(cfg, digits, steps=2, mode="none")
  for mode in ("pmap", "shard_map"):
    _, _, state = _steps(cfg, digits, steps=2, mode=mode)
    chex.assert_trees_all_close(jax.device_get(train.eval_params(state)),
                                jax.device_get(train.eval_params(ref)), rtol=1e-5, atol=1e-6)


def test_average_follows_post_update_and_keeps_statistics_as_they_are(cfg, digits):
  """A sparse dictionary's decoder rows are projected back to unit norm after each step:
  the average is taken of the projected rows, and its firing counters are the current
  ones, not averaged."""
  cfg = dictionary_cfg(cfg, latent_dim=16, k=3)
  cfg.optim.ema_decay = 0.5
  x = digits.reshape(len(digits), -1)
  shape = x.shape[1:]
  model = families.build_model(cfg, shape)
  state = train.create_train_state(cfg, model, shape, jax.random.key(0), 10, data=x[:256])
  step = parallel.compile_step(step_fn(cfg, model), "jit", donate_state=False)
  p0 = state.params
  state, _ = step(state, {"x": x[:32]}, jax.random.key(1))
  ema = train.eval_params(state)
  want = jax.tree.map(lambda a, b: (a + b) / 2, p0["params"], state.params["params"])
  chex.assert_trees_all_close(ema["params"], want, rtol=1e-6, atol=1e-7)
  stats = [k for k in state.params if k != "params"]
  assert stats, "the dictionary keeps statistics beside its parameters"
  for k in stats:
    chex.assert_trees_all_equal(ema[k], state.params[k])


def test_fit_evaluates_selects_and_saves_the_average(cfg, tmp_path):
  cfg.optim.ema_decay = 0.9
  trained = fit(_small(cfg, num_steps=40, eval_every=10, checkpoint_every=20), tmp_path,
                progress=False)
  final = Trained.load(tmp_path)
  chex.assert_trees_all_equal(final.params, trained.params)
  # The trained parameters themselves are in the checkpoint too, and differ from the average.
  _, _, state, _ = load_state(tmp_path)
  chex.assert_trees_all_equal(train.eval_params(state), trained.params)
  diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state.params, trained.params)
  assert max(jax.tree.leaves(diff)) > 1e-4
  # The logged validation loss is the average's.
  last_eval = [r for r in trained.history if r["split"] == "eval"][-1]
  from ae_jax.prepare import prepare_data
  _, val, _ = prepare_data(trained.config)
  np.testing.assert_allclose(
      trained.evaluate(trained.scaler.inverse_transform(val.x))["loss"], last_eval["loss"],
      rtol=1e-4)


def test_early_stopping_keeps_the_best_average_as_the_final_model(cfg, tmp_path):
  cfg = _early_stopping(cfg)   # SGD at a rate whose validation loss diverges, patience 2
  cfg.optim.ema_decay = 0.5
  trained = fit(cfg, tmp_path, progress=False)
  assert trained.step < 400
  best = Trained.load(tmp_path, best=True)
  chex.assert_trees_all_equal(trained.params, best.params)
  chex.assert_trees_all_equal(Trained.load(tmp_path).params, best.params)


def test_finetune_starts_the_average_from_the_model(cfg, digits_data):
  """Fine-tuning a model trained with a moving average keeps averaging from its weights
  (not from a fresh initialisation): at a rate too small to move them, they stay put."""
  from ae_jax import data as data_lib
  from ae_jax.applications import generation
  cfg.train.parallel = "jit"
  cfg.train.num_steps = 20
  cfg.optim.ema_decay = 0.5
  trained = fit(cfg, progress=False)
  data = data_lib.sources.make_array_data(digits_data[0][:128], digits_data[1][:128], "d")
  tuned = generation.finetune(trained, data, epochs=1, learning_rate=1e-9)
  assert tuned.step > trained.step
  chex.assert_trees_all_close(tuned.params, trained.params, atol=1e-6)


def test_vmapped_trials_refuse_the_average(cfg):
  from ae_jax import vmap_trials
  cfg.optim.ema_decay = 0.99
  with pytest.raises(ConfigError, match="ema_decay"):
    vmap_trials.trial_optimizer(cfg, 10)
