"""The sparse family's dictionary settings against hand-computed values: TopK over ReLU,
BatchTopK, JumpReLU and its straight-through gradients, AuxK's choice of dead latents and
its loss, decoder-norm weighted L1, unit-norm decoder rows after every step, tied and
data-dependent initialisation, dead / dense fractions, and the config checks."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import data as data_lib
from ae_jax import families, fit, parallel, train
from ae_jax.errors import ConfigError
from ae_jax.families import sparse
from _helpers import set_fields


def dictionary_cfg(cfg, sparsity="topk", latent_dim=16, k=3, **extra):
  cfg.model.family = "sparse"
  cfg.model.dictionary = True
  cfg.model.sparsity = sparsity
  cfg.model.latent_dim = latent_dim
  cfg.model.k = k
  cfg.model.recon_loss = "mse"
  cfg.train.parallel = "jit"
  cfg.train.num_devices = 1
  return set_fields(cfg, **extra)


def state_for(cfg, shape, data=None, steps=10):
  model = families.build_model(cfg, shape)
  state = train.create_train_state(cfg, model, shape, jax.random.key(0), steps, data=data)
  return model, state


def step_fn(cfg, model):
  fam = families.get_family("sparse")
  return parallel.compile_step(functools.partial(train.train_step, model=model, family=fam,
                                                 config=cfg), "jit")


# ---- activations ----------------------------------------------------------------------

def test_topk_keeps_largest_positive_pre_activations():
  pre = jnp.array([[3.0, -1.0, 2.0, 5.0], [-2.0, -3.0, -1.0, 0.5]])
  want = np.array([[3.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 0.5]])
  np.testing.assert_array_equal(sparse.topk(pre, 2), want)


def test_batch_topk_keeps_k_times_batch_entries():
  pre = jnp.array([[9.0, 1.0, 8.0, 7.0], [0.5, 0.2, 6.0, 0.1], [5.0, 4.0, 3.0, 2.0]])
  codes, threshold = sparse.batch_topk(pre, 2)  # the 6 largest of the batch
  want = np.array([[9.0, 0, 8.0, 7.0], [0, 0, 6.0, 0], [5.0, 4.0, 0, 0]])
  np.testing.assert_array_equal(codes, want)
  assert int(jnp.sum(codes != 0)) == 2 * 3
  assert float(threshold) == 4.0
  rng = np.random.default_rng(0)
  big = jnp.asarray(rng.uniform(0.1, 1.0, (8, 32)), jnp.float32)
  codes, _ = sparse.batch_topk(big, 5)
  assert int(jnp.sum(codes != 0)) == 5 * 8
  assert not np.array_equal(np.sum(codes != 0, -1), np.full(8, 5))  # per-example L0 varies


def test_batch_topk_never_keeps_negative_entries():
  pre = jnp.array([[1.0, -1.0], [-2.0, -3.0]])
  codes, threshold = sparse.batch_topk(pre, 2)
  np.testing.assert_array_equal(codes, [[1.0, 0.0], [0.0, 0.0]])
  assert float(threshold) == 1.0


def test_jumprelu_forward_and_straight_through_gradients():
  pre = jnp.array([[0.5, 1.2, 3.0], [0.95, -1.0, 1.04]])
  theta = jnp.array([1.0, 1.0, 2.0])
  eps = jnp.asarray(0.2)
  np.testing.assert_allclose(sparse.jumprelu(pre, theta, eps),
                             [[0.0, 1.2, 3.0], [0.0, 0.0, 0.0]])
  # d/dtheta of sum(jumprelu) = sum over examples of -(theta/eps) rect((pre - theta)/eps),
  # rect = 1 on |u| < 1/2, i.e. |pre - theta| < 0.1: only 0.95 (column 0) -> -(1/0.2) = -5.
  g_theta = jax.grad(lambda t: jnp.sum(sparse.jumprelu(pre, t, eps)))(theta)
  np.testing.assert_allclose(g_theta, [-5.0, 0.0, 0.0], rtol=1e-6)
  g_pre = jax.grad(lambda p: jnp.sum(sparse.jumprelu(p, theta, eps)))(pre)
  np.testing.assert_array_equal(g_pre, [[0.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(sparse.step_l0(pre, theta, eps), [2.0, 0.0])
  g_theta = jax.grad(lambda t: jnp.sum(sparse.step_l0(pre, t, eps)))(theta)
  np.testing.assert_allclose(g_theta, [-5.0, 0.0, 0.0], rtol=1e-6)  # -(1/eps) for 0.95
  g_pre = jax.grad(lambda p: jnp.sum(sparse.step_l0(p, theta, eps)))(pre)
  np.testing.assert_array_equal(g_pre, np.zeros((2, 3)))


def test_auxk_picks_exactly_the_top_dead_latents():
  pre = jnp.array([[5.0, 4.0, 3.0, 2.0, 1.0, -1.0],
                   [0.1, 9.0, -2.0, 0.3, 0.2, 0.4]])
  dead = jnp.array([False, True, False, True, True, True])
  want = np.array([[0.0, 4.0, 0.0, 2.0, 0.0, 0.0],   # dead 1, 3 beat 4 (1.0); 5 negative
                   [0.0, 9.0, 0.0, 0.0, 0.0, 0.4]], np.float32)  # dead 1 and 5
  np.testing.assert_array_equal(sparse.auxk_codes(pre, dead, 2), want)
  np.testing.assert_array_equal(sparse.auxk_codes(pre, jnp.zeros(6, bool), 2), np.zeros((2, 6)))


def test_geometric_median_by_hand():
  np.testing.assert_allclose(sparse.geometric_median(np.array([[0.0], [1], [2], [3], [100]])),
                             [2.0], atol=1e-4)
  square = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0], [50.0, 50.0]])
  got = sparse.geometric_median(square)
  # On the diagonal (t, t), the summed distance has zero slope where
  # 2 (2t - 2) / sqrt(2t^2 - 4t + 4) = sqrt(2), i.e. t = 1 + 1/sqrt(3): the outlier at
  # (50, 50) moves the median only that far from the square's centre; the mean is 10.8.
  np.testing.assert_allclose(got, [1 + 1 / np.sqrt(3)] * 2, atol=1e-4)
  np.testing.assert_allclose(sparse.geometric_median(np.array([[1.0, 2.0]] * 3)), [1.0, 2.0])


# ---- the module and its initialisation --------------------------------------------------

def test_dictionary_init_is_tied_unit_norm_and_biases_from_data(cfg):
  x = np.random.default_rng(0).uniform(size=(50, 6)).astype(np.float32)
  x[:5] += 40.0  # outliers: the geometric median stays with the bulk, the mean does not
  for how in ("zeros", "mean", "geometric_median"):
    c = dictionary_cfg(cfg, latent_dim=12, model__pre_bias_init=how)
    _, state = state_for(c, (6,), data=x)
    p = state.params["params"]
    chex.assert_shape(p["W_dec"], (12, 6))
    np.testing.assert_allclose(np.linalg.norm(p["W_dec"], axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p["W_enc"], p["W_dec"].T)
    want = {"zeros": np.zeros(6), "mean": x.mean(0), "geometric_median":
            sparse.geometric_median(x)}[how]
    np.testing.assert_allclose(p["b_pre"], want, rtol=1e-5)
  assert np.all(np.abs(sparse.geometric_median(x) - 0.5) < 0.3) and np.all(x.mean(0) > 3)


def test_dictionary_forward_by_hand(cfg):
  c = dictionary_cfg(cfg, latent_dim=3, k=1)
  model, state = state_for(c, (2,))
  params = jax.tree.map(np.asarray, state.params)
  params["params"].update(W_enc=np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], np.float32),
                          W_dec=np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], np.float32),
                          b_enc=np.array([0.0, 0.0, -1.0], np.float32),
                          b_pre=np.array([1.0, 1.0], np.float32))
  x = jnp.array([[3.0, 2.0]])
  res = model.apply(params, x)
  np.testing.assert_allclose(res["pre"], [[2.0, 1.0, 2.0]])   # (x - b_pre) W_enc + b_enc
  np.testing.assert_allclose(res["z"], [[2.0, 0.0, 0.0]])     # top-1, ties to the lower index
  np.testing.assert_allclose(res["out"], [[3.0, 1.0]])        # z W_dec + b_pre


def test_firing_rate_thresholds_by_hand():
  pre = np.array([[3.0, -1.0], [1.0, -2.0], [4.0, -3.0], [1.5, -4.0], [9.0, -5.0]])
  # rate 0.4 of 5 rows: m = 2 rows must lie above, so the 3rd largest value: 3 and -3.
  np.testing.assert_array_equal(sparse.firing_rate_thresholds(pre, 0.4), [3.0, -3.0])
  np.testing.assert_array_equal(sparse.firing_rate_thresholds(pre, 0.0), [9.0, -1.0])
  with pytest.raises(ValueError, match="no row below"):
    sparse.firing_rate_thresholds(pre, 1.0)


def test_jumprelu_thresholds_from_data_set_the_initial_l0(cfg):
  """Latents 0, 1 read x0, x1; latents 2, 3 read -x0, -x1 (negative on all this data)."""
  c = dictionary_cfg(cfg, sparsity="jumprelu", latent_dim=4, model__jump_init_l0=1.0,
                     model__jump_threshold_init=0.25, model__pre_bias_init="zeros")
  model, state = state_for(c, (2,))
  params = jax.tree.map(np.asarray, state.params)
  params["params"]["W_enc"] = np.array([[1, 0, -1, 0], [0, 1, 0, -1]], np.float32)
  x = np.array([[1, 8], [2, 7], [3, 6], [4, 5], [5, 4], [6, 3], [7, 2], [8, 1]], np.float32)
  new = sparse.init_from_data(params, x, c)
  # Rate 1/4 of 8 rows = 2 rows above: the 3rd largest of 1..8 is 6 for latents 0 and 1;
  # latents 2 and 3 (3rd largest -3) take the floor model.jump_threshold_init = 0.25.
  np.testing.assert_allclose(np.exp(new["params"]["log_threshold"]), [6.0, 6.0, 0.25, 0.25],
                             rtol=1e-6)
  z = np.asarray(model.apply(new, jnp.asarray(x), method=model.encode))
  np.testing.assert_array_equal((z != 0).sum(0), [2, 2, 0, 0])
  # The floored latents never fire: mean L0 = 2 latents x 2 rows / 8 rows = 0.5, not 1.
  np.testing.assert_allclose((z != 0).sum(1).mean(), 0.5)
  # Off (0) or another sparsity: the thresholds stay at model.jump_threshold_init.
  c.model.jump_init_l0 = 0.0
  np.testing.assert_allclose(np.exp(sparse.init_from_data(params, x, c)["params"]
                                    ["log_threshold"]), 0.25, rtol=1e-6)


def test_jumprelu_threshold_lr_scale(cfg):
  """log_threshold stores log(theta) / s, so Adam's first step (lr * sign of the gradient)
  moves log(theta) by s * lr: 4x as far with s = 4 as with s = 1, in the same direction."""
  x = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
  moved = {}
  for scale in (1.0, 4.0):
    c = dictionary_cfg(cfg, sparsity="jumprelu", latent_dim=6, model__jump_threshold_init=0.5,
                       model__jump_bandwidth=10.0, model__jump_threshold_lr_scale=scale,
                       objective__l0_weight=0.1)
    c.optim.learning_rate = 0.01
    model, state = state_for(c, (4,))
    stored = np.asarray(state.params["params"]["log_threshold"])
    np.testing.assert_allclose(stored, np.log(0.5) / scale, rtol=1e-6)
    np.testing.assert_allclose(model.apply(state.params, method=model.threshold), 0.5, rtol=1e-6)
    state, _ = step_fn(c, model)(state, {"x": jnp.asarray(x)}, jax.random.key(0))
    theta = np.asarray(model.apply(state.params, method=model.threshold))
    moved[scale] = np.log(theta) - np.log(0.5)
  np.testing.assert_allclose(np.abs(moved[1.0]), 0.01, rtol=1e-3)
  np.testing.assert_allclose(moved[4.0], 4 * moved[1.0], rtol=1e-3)
  # The data thresholds are stored the same way: exp(s * stored) is the data's threshold.
  c = dictionary_cfg(cfg, sparsity="jumprelu", latent_dim=2, model__jump_init_l0=1.0,
                     model__jump_threshold_lr_scale=4.0, model__pre_bias_init="zeros")
  model, state = state_for(c, (2,))
  params = jax.tree.map(np.asarray, state.params)
  params["params"]["W_enc"] = np.eye(2, dtype=np.float32)
  data = np.array([[1, 4], [2, 3], [3, 2], [4, 1]], np.float32)  # rate 1/2: 2 rows above 2
  new = sparse.init_from_data(params, data, c)
  np.testing.assert_allclose(new["params"]["log_threshold"], np.log(2.0) / 4, rtol=1e-6)
  np.testing.assert_allclose(model.apply(new, method=model.threshold), [2.0, 2.0], rtol=1e-6)


def test_l0_coefficient_warm_up(cfg):
  c = dictionary_cfg(cfg, sparsity="jumprelu", latent_dim=3, objective__l0_weight=0.2,
                     objective__l0_warmup_steps=4, model__jump_threshold_init=0.5)
  # Linear from 0: (step + 1) / 4 of the weight, the full weight from step 3 on and in
  # evaluation (step None).
  for step, want in ((0, 0.05), (1, 0.1), (3, 0.2), (10, 0.2), (None, 0.2)):
    np.testing.assert_allclose(sparse.l0_weight_at(c, step), want, rtol=1e-6)
  model, state = state_for(c, (2,))
  params = jax.tree.map(np.asarray, state.params)
  params["params"]["W_enc"] = np.array([[1, 0, 1], [0, 1, 1]], np.float32)
  batch = {"x": jnp.array([[1.0, 0.2]])}  # pre (1, 0.2, 1.2): 2 latents above 0.5
  fam = families.get_family("sparse")
  keys = jax.random.split(jax.random.key(0), 1)
  warm = fam.terms(model, params, batch, keys, jnp.asarray(0), c, True)
  full = fam.terms(model, params, batch, keys, None, c, False)
  np.testing.assert_allclose(warm["l0_penalty"], [2.0])
  np.testing.assert_allclose(full["loss"] - warm["loss"], [(0.2 - 0.05) * 2.0], rtol=1e-5)
  c.objective.l0_warmup_steps = 0
  np.testing.assert_allclose(sparse.l0_weight_at(c, 0), 0.2)


# ---- objective terms --------------------------------------------------------------------

def test_l1_weighted_by_decoder_norms(cfg):
  c = dictionary_cfg(cfg, sparsity="l1", latent_dim=2, objective__l1_decoder_norm=True,
                     objective__l1_weight=0.5)
  model, state = state_for(c, (2,))
  params = jax.tree.map(np.asarray, state.params)
  params["params"].update(W_enc=np.eye(2, dtype=np.float32),
                          W_dec=np.array([[3.0, 4.0], [0.0, 2.0]], np.float32))
  batch = {"x": jnp.array([[1.0, 2.0]])}
  fam = families.get_family("sparse")
  terms = fam.terms(model, params, batch, jax.random.split(jax.random.key(0), 1), 0, c, True)
  # z = relu(x) = (1, 2); norms (5, 2): L1 = 1*5 + 2*2 = 9; recon = z W_dec = (3, 8).
  np.testing.assert_allclose(terms["l1"], [9.0])
  mse = ((3 - 1) ** 2 + (8 - 2) ** 2) / 2
  np.testing.assert_allclose(terms["loss"], [mse + 0.5 * 9.0], rtol=1e-6)


def test_auxk_loss_by_hand(cfg):
  """Two examples, latents 0..3, latents 2 and 3 dead: e = x - x_hat, e_hat from the top-1
  dead latent, loss += w * |e - e_hat|^2 / |e - mean e|^2 * Var(x) per feature."""
  c = dictionary_cfg(cfg, latent_dim=4, k=1, objective__auxk=1, objective__auxk_weight=0.25,
                     model__dead_window=10)
  model, state = state_for(c, (2,))
  params = jax.tree.map(np.asarray, state.params)
  params["params"].update(W_enc=np.array([[1, 0, 1, 0], [0, 1, 0, 0.5]], np.float32),
                          W_dec=np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32))
  params["sae_stats"]["since_fired"] = np.array([0, 0, 10, 50], np.float32)
  x = np.array([[2.0, 1.0], [1.0, 3.0]], np.float32)
  fam = families.get_family("sparse")
  terms = fam.terms(model, params, {"x": jnp.asarray(x)},
                    jax.random.split(jax.random.key(0), 2), 0, c, True)
  means = fam.finalize(jax.tree.map(lambda v: jnp.mean(v, 0), terms), c)
  # pre = x W_enc: ex0 (2, 1, 2, 0.5), ex1 (1, 3, 1, 1.5). Top-1 (ties to the lower
  # index): ex0 latent 0 -> x_hat (2, 0); ex1 latent 1 -> (0, 3); e = (0, 1), (1, 0).
  # Dead {2, 3}: ex0 latent 2 (2 > 0.5) -> e_hat (2, 0); ex1 latent 3 (1.5 > 1) -> (0, 1.5).
  e = np.array([[0.0, 1.0], [1.0, 0.0]])
  e_hat = np.array([[2.0, 0.0], [0.0, 1.5]])
  aux_sq = np.mean(np.sum((e - e_hat) ** 2, -1))
  err_var = np.mean(np.sum(e ** 2, -1)) - np.sum(e.mean(0) ** 2)
  x_var = np.mean(np.sum(x ** 2, -1)) - np.sum(x.mean(0) ** 2)
  mse = np.mean(np.mean(e ** 2, -1))
  np.testing.assert_allclose(means["auxk"], aux_sq / err_var, rtol=1e-6)
  np.testing.assert_allclose(means["loss"], mse + 0.25 * aux_sq / err_var * x_var / 2, rtol=1e-6)
  np.testing.assert_allclose(means["dead_window_fraction"], 0.5)


def test_finalize_dead_and_dense_fractions(cfg):
  c = dictionary_cfg(cfg, latent_dim=5)
  firing = jnp.array([0.0, 0.05, 0.1, 0.5, 1.0])
  means = {"loss": jnp.asarray(1.0), "firing": firing, "sq_err": jnp.asarray(1.0),
           "sq_norm": jnp.asarray(5.0), "x_mean": jnp.array([1.0, 1.0])}
  out = families.get_family("sparse").finalize(means, c)
  np.testing.assert_allclose(out["dead_fraction"], 0.2)
  np.testing.assert_allclose(out["dense_fraction"], 0.4)  # above 10 %: 0.5 and 1.0
  np.testing.assert_allclose(out["fvu"], 1.0 / 3.0)


# ---- after every step -------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", ["topk", "batch_topk", "jumprelu"])
def test_unit_norm_decoder_after_every_step(cfg, sparsity):
  c = dictionary_cfg(cfg, sparsity=sparsity, latent_dim=24, k=2, model__unit_decoder=True,
                     objective__auxk=4)
  c.optim.learning_rate = 0.05
  x = np.random.default_rng(1).uniform(size=(32, 8)).astype(np.float32)
  model, state = state_for(c, (8,), data=x)
  step = step_fn(c, model)
  for i in range(5):
    before = np.asarray(state.params["params"]["W_dec"])
    state, metrics = step(state, {"x": jnp.asarray(x[i * 6:i * 6 + 6])}, jax.random.key(i))
    w = np.asarray(state.params["params"]["W_dec"])
    assert not np.allclose(w, before)
    np.testing.assert_allclose(np.linalg.norm(w, axis=-1), 1.0, rtol=1e-5)
    assert np.isfinite(float(metrics["loss"]))


def test_post_update_counts_examples_since_fired_and_batch_threshold(cfg):
  c = dictionary_cfg(cfg, sparsity="batch_topk", latent_dim=3)
  c.train.batch_size = 8
  model, state = state_for(c, (2,))
  params = jax.tree.map(np.asarray, state.params)
  params["sae_stats"]["since_fired"] = np.array([5.0, 100.0, 0.0], np.float32)
  means = {"firing": jnp.array([0.0, 0.25, 0.0]), "batch_threshold": jnp.asarray(2.0)}
  new = sparse.post_update(params, params, means, c)
  np.testing.assert_array_equal(new["sae_stats"]["since_fired"], [13.0, 0.0, 8.0])
  np.testing.assert_allclose(new["sae_stats"]["threshold_sum"], 0.01 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(model.apply(new, method=model.batch_threshold), 2.0, rtol=1e-6)
  # Evaluation gates with that threshold instead of the batch top-k.
  params = jax.tree.map(np.asarray, new)
  params["params"].update(W_enc=np.array([[1, 0, 1], [0, 1, 1]], np.float32))
  z = model.apply(params, jnp.array([[3.0, 1.0]]), method=model.encode)
  np.testing.assert_allclose(z, [[3.0, 0.0, 4.0]])


def test_training_logs_and_evaluate_reports_sparsity_metrics(cfg, digits):
  c = dictionary_cfg(cfg, latent_dim=128, k=4, model__unit_decoder=True, objective__auxk=16,
                     model__pre_bias_init="mean", model__dead_window=256)
  c.train.num_steps, c.train.batch_size, c.train.log_every, c.train.eval_every = 60, 32, 20, 30
  c.train.figures = False
  train_data = data_lib.sources.make_array_data(digits.reshape(len(digits), -1), None, "d")
  trained = fit.fit(c, train_data=train_data, progress=False)
  logged = [r for r in trained.history if r["split"] == "train"][-1]
  for key in ("l0", "fvu", "dead_fraction", "dense_fraction", "dead_window_fraction", "auxk"):
    assert key in logged, key
  assert logged["l0"] <= 4.0
  ev = trained.evaluate(digits.reshape(len(digits), -1)[:200])
  for key in ("l0", "fvu", "dead_fraction", "dense_fraction"):
    assert key in ev and np.isfinite(ev[key]), key
  assert "auxk" not in ev  # AuxK is a training term
  assert 0 < ev["fvu"] < 1


# ---- config checks ----------------------------------------------------------------------

@pytest.mark.parametrize("change, match", [
    ({"model.sparsity": "batch_topk"}, "model.dictionary=True"),
    ({"objective.auxk": 4, "model.sparsity": "topk"}, "model.dictionary=True"),
    ({"model.unit_decoder": True}, "model.dictionary=True"),
    ({"model.dictionary": True, "model.sparsity": "topk", "objective.l1_decoder_norm": True},
     "needs model.sparsity='l1'"),
    ({"model.dictionary": True, "model.pre_bias_init": "median"}, "pre_bias_init"),
    ({"model.dictionary": True, "model.dead_window": 0}, "dead_window"),
    ({"model.dictionary": True, "objective.auxk": 100}, "objective.auxk"),
    ({"model.sparsity": "sparsemax"}, "model.sparsity"),
    ({"model.dictionary": True, "model.sparsity": "jumprelu", "model.jump_init_l0": 16.0},
     "jump_init_l0"),
    ({"model.dictionary": True, "model.sparsity": "jumprelu",
      "model.jump_threshold_lr_scale": 0.0}, "jump_threshold_lr_scale"),
    ({"model.dictionary": True, "model.sparsity": "jumprelu", "objective.l0_warmup_steps": -1},
     "l0_warmup_steps"),
])
def test_bad_sparse_settings_are_rejected(cfg, change, match):
  cfg.model.family = "sparse"
  cfg.model.latent_dim = 16
  for dotted, value in change.items():
    section, field = dotted.split(".")
    cfg[section][field] = value
  with pytest.raises(ConfigError, match=match):
    families.build_model(cfg, (8,))


@pytest.mark.slow
def test_experiment_smoke(tmp_path):
  from experiments import sparse_dictionary  # noqa: PLC0415
  result = sparse_dictionary.main(["--smoke", "--out", str(tmp_path), "--calibration-runs", "1"])
  methods = {r["method"] for r in result["rows"]}
  assert methods == set(sparse_dictionary.METHODS)
  assert {r["data"] for r in result["rows"]} == {"acts", "pixels"}
  for r in result["rows"]:
    assert np.isfinite(r["test FVU"]) and 0 <= r["dead (train split)"] <= 1
    if r["method"].startswith("TopK"):
      assert r["test L0"] <= 8
  assert len(result["seeds"]) == 2 * 2
  assert (tmp_path / "firing_frequencies.png").exists() and (tmp_path / "table.md").exists()


def test_calibration_secant_in_log_log():
  from experiments import sparse_dictionary  # noqa: PLC0415
  step = sparse_dictionary.next_coefficient
  run = lambda coef, l0: {"coef": coef, "val": {"l0": l0}}
  # One run: L0 ~ 1 / coefficient, so halving L0 from 32 to 16 doubles the coefficient.
  np.testing.assert_allclose(step([run(0.01, 32.0)], 16.0), 0.02, rtol=1e-9)
  # L0 = 0.0016 / c^2 (slope -2 in log-log): the secant lands on the root c = 0.01 sqrt(2).
  np.testing.assert_allclose(step([run(0.01, 16.0), run(0.02, 4.0)], 8.0), 0.01 * np.sqrt(2),
                             rtol=1e-9)
  # A flat response falls back to slope -1; the step is capped at 30x (L0 far below the
  # target: a coefficient 30 times smaller).
  np.testing.assert_allclose(step([run(0.01, 16.0), run(0.02, 16.0)], 8.0), 0.02, rtol=1e-9)
  np.testing.assert_allclose(step([run(0.01, 0.001)], 16.0), 0.01 / 30, rtol=1e-9)
  # A known first slope of -0.25: doubling L0 takes a coefficient 2^4 = 16 times smaller.
  np.testing.assert_allclose(step([run(0.016, 8.0)], 16.0, first_slope=-0.25), 0.001,
                             rtol=1e-9)


def test_calibration_interpolates_inside_the_tightest_bracket():
  from experiments import sparse_dictionary  # noqa: PLC0415
  step = sparse_dictionary.next_coefficient
  run = lambda coef, l0: {"coef": coef, "val": {"l0": l0}}
  # Above 16: 0.001 -> 64 and 0.002 -> 20; below: 0.004 -> 8. The tightest bracket is
  # (0.002, 20)-(0.004, 8); on the log-log line through them L0 = 20 (c / 0.002)^s with
  # s = log(8 / 20) / log 2, so L0 = 16 at c = 0.002 * 0.8^(1 / s).
  got = step([run(0.001, 64.0), run(0.004, 8.0), run(0.002, 20.0)], 16.0)
  np.testing.assert_allclose(got, 0.002 * 0.8 ** (np.log(2) / np.log(0.4)), rtol=1e-9)
  # A root at the bracket's edge: kept 2 % of the log width inside it.
  np.testing.assert_allclose(step([run(0.001, 16.1), run(0.002, 1.0)], 16.0),
                             0.001 * 2 ** 0.02, rtol=1e-9)
  # Runs out of order (L0 rising with the coefficient, noise): the geometric middle.
  np.testing.assert_allclose(step([run(0.001, 8.0), run(0.004, 64.0)], 16.0), 0.002, rtol=1e-9)


def test_calibration_reaches_a_steep_monotone_target():
  """L0(c) = 300 / (1 + (c / 0.001)^2): flat for small c, slope -2 in log-log for large c
  (like the pixels' L1), L0 = 32 at c = 0.001 sqrt(8.375). From a guess 11x too small."""
  from experiments import sparse_dictionary  # noqa: PLC0415
  l0 = lambda c: 300.0 / (1.0 + (c / 1e-3) ** 2)
  measure = lambda c: {"val": {"l0": l0(c)}}
  tried = sparse_dictionary.calibrate(measure, 32.0, 2.5e-4, runs=8, tolerance=0.05,
                                      first_slope=-2.0)
  assert abs(tried[-1]["val"]["l0"] - 32.0) <= 0.05 * 32.0 and len(tried) <= 6
  np.testing.assert_allclose(tried[-1]["coef"], 1e-3 * np.sqrt(8.375), rtol=0.05)
  for i in range(2, len(tried)):   # once bracketed, every next try lies inside the bracket
    before = tried[:i]
    hi = [t["coef"] for t in before if t["val"]["l0"] > 32.0]
    lo = [t["coef"] for t in before if t["val"]["l0"] < 32.0]
    if hi and lo:
      assert max(hi) < tried[i]["coef"] < min(lo)
  assert len(sparse_dictionary.calibrate(measure, 32.0, 2.5e-4, runs=2, tolerance=0.05)) == 2
  with pytest.raises(ConfigError, match="calibration-runs"):
    sparse_dictionary.calibrate(measure, 32.0, 2.5e-4, runs=0, tolerance=0.05)


def test_experiment_pools_pixels_and_resolves_relative_settings():
  from experiments import sparse_dictionary as sd  # noqa: PLC0415
  img = np.arange(16, dtype=np.float32).reshape(1, 16)  # a 4x4 image 0..15, row-major
  splits = sd.Splits("m", img, img, img, np.zeros(1), np.zeros(1), np.zeros(1))
  pooled = sd.pool_pixels(splits, 4, 2)
  # 2x2 blocks: (0+1+4+5)/4 = 2.5, (2+3+6+7)/4 = 4.5, 10.5, 12.5.
  np.testing.assert_allclose(pooled.train, [[2.5, 4.5, 10.5, 12.5]])
  assert sd.pool_pixels(splits, 4, 1) is splits
  with pytest.raises(ConfigError, match="must divide"):
    sd.pool_pixels(splits, 4, 3)
  kw = dict(expansion=8, k=16, coef=None, epochs=1, batch_size=256, learning_rate=1e-3, seed=0,
            eval_every=1, kind="acts", n_train=7000)
  c = sd.sae_config("TopK + AuxK", 128, overrides={"model.dead_window": -2}, **kw)
  assert (c.model.dead_window, c.objective.auxk) == (14000, 64)
  c = sd.sae_config("JumpReLU", 128, overrides={"model.jump_init_l0": -1.0}, **kw)
  assert c.model.jump_init_l0 == 16.0 and c.model.sparsity == "jumprelu"
  c = sd.sae_config("JumpReLU", 128, **kw)   # the paper's start, warm-up over 3 epochs
  assert (c.model.jump_init_l0, c.model.jump_threshold_init) == (0.0, 1e-3)
  assert (c.objective.l0_warmup_steps, c.model.dead_window, c.objective.auxk) == (
      3 * 7000 // 256, 7000, 64)
  with pytest.raises(ConfigError, match="n_train"):
    sd.sae_config("TopK + AuxK", 128, overrides={"model.dead_window": -1},
                  **{**kw, "n_train": 0})
