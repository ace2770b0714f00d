"""Binarized MNIST source, importance-sampled NLL, ELBO and active units (issue 13)."""

import json

import jax
import numpy as np
import pytest

from ae_jax import configs, data as data_lib, families, likelihood
from ae_jax.cli import main as cli_main
from ae_jax.data import available, data_dir, load
from ae_jax.errors import ConfigError, DataError
from ae_jax.fit import Trained, fit


# ---- the binarized_mnist source ------------------------------------------------------

def _fake_binarized(root, sizes=(6, 3, 4), value=1):
  folder = root / "binarized_mnist"
  folder.mkdir(parents=True)
  rng = np.random.RandomState(0)
  for split, n in zip(("train", "valid", "test"), sizes):
    x = (rng.random_sample((n, 784)) < 0.3).astype(np.uint8) * value
    np.savez(folder / f"{split}.npz", X=x)
  return folder


def test_binarized_mnist_reads_splits_from_data_dir(tmp_path, monkeypatch):
  folder = _fake_binarized(tmp_path)
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  train = load("binarized_mnist", "train")
  assert train.x.shape == (6, 28, 28, 1) and train.x.dtype == np.float32
  assert train.kind == "image" and train.y is None and train.name == "binarized_mnist:train"
  raw = np.load(folder / "train.npz")["X"]
  np.testing.assert_array_equal(train.x.reshape(6, 784), raw)
  assert len(load("binarized_mnist")) == 6
  assert len(load("binarized_mnist", "train+valid")) == 9
  assert len(load("binarized_mnist", "test")) == 4
  assert "binarized_mnist" in available()
  with pytest.raises(ConfigError, match="binarized_mnist split .*'valid'"):
    load("binarized_mnist", "validation")


def test_binarized_mnist_rejects_non_binary_file(tmp_path, monkeypatch):
  _fake_binarized(tmp_path, value=255)
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  with pytest.raises(DataError, match=r"values in \{0, 1\}"):
    load("binarized_mnist", "test")


def test_binarized_mnist_missing_folder_says_where(tmp_path, monkeypatch):
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  with pytest.raises(DataError, match="binarized_mnist.*does not exist"):
    load("binarized_mnist", "test")


def test_binarized_mnist_shared_data():
  if data_dir() is None or not (data_dir() / "binarized_mnist").is_dir():
    pytest.skip("no shared binarized_mnist folder (set AE_JAX_DATA_DIR or add ../shared/data)")
  sizes = {s: load("binarized_mnist", s).x.shape for s in ("train", "valid", "test")}
  assert sizes == {"train": (50000, 28, 28, 1), "valid": (10000, 28, 28, 1),
                   "test": (10000, 28, 28, 1)}
  test = load("binarized_mnist", "test")
  assert set(np.unique(test.x)) == {0.0, 1.0}
  assert 0.1 < test.x.mean() < 0.2  # about 13% of MNIST pixels are on


def test_tfds_binarized_mnist_is_not_rescaled(monkeypatch):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5):
    source = tfds.data_source("binarized_mnist", split="test")
    raw = np.stack([np.asarray(source[i]["image"]) for i in range(len(source))])
    data = load("tfds:binarized_mnist:test")
  np.testing.assert_array_equal(data.x, raw.astype(np.float32))


# ---- a linear Gaussian VAE whose encoder is the exact posterior ----------------------

def _linear_gaussian(sigma=0.5, seed=0):
  """A VAE with x = W z + b + sigma * noise and an encoder equal to the exact posterior
  (W has orthogonal columns, so the posterior covariance is diagonal). Returns
  (Trained, W, b, sigma)."""
  cfg = configs.get_preset("default")
  cfg.model.family = "vae"
  cfg.model.widths = ()
  cfg.model.latent_dim = 2
  cfg.model.recon_loss = "gaussian"
  cfg.objective.output_sigma = sigma
  shape = (5,)
  model = families.build_model(cfg, shape)
  params = model.init(jax.random.key(0), np.zeros((1, *shape), np.float32))
  rng = np.random.RandomState(seed)
  q, _ = np.linalg.qr(rng.normal(size=(5, 2)))
  w = q * np.array([2.0, 0.7])                    # (D, L), orthogonal columns
  b = rng.normal(size=5)
  post_var = 1.0 / (1.0 + np.sum(w ** 2, 0) / sigma ** 2)    # (L,)
  a = (w * post_var).T / sigma ** 2                            # (L, D): mean = a (x - b)
  p = jax.tree.map(np.asarray, params)["params"]
  p["to_mean"] = {"kernel": a.T.astype(np.float32), "bias": (-a @ b).astype(np.float32)}
  p["to_logvar"] = {"kernel": np.zeros((5, 2), np.float32),
                    "bias": np.log(post_var).astype(np.float32)}
  p["decoder"] = {"Dense_0": {"kernel": w.T.astype(np.float32),
                              "bias": b.astype(np.float32)}}
  trained = Trained(cfg, model, {"params": p}, data_lib.Scaler("none").fit(np.zeros((1, 5))),
                    shape)
  return trained, w, b, sigma


def _exact_nll(x, w, b, sigma):
  cov = w @ w.T + sigma ** 2 * np.eye(len(b))
  diff = x - b
  _, logdet = np.linalg.slogdet(cov)
  maha = np.einsum("nd,de,ne->n", diff, np.linalg.inv(cov), diff)
  return 0.5 * (maha + logdet + len(b) * np.log(2 * np.pi))


def test_importance_nll_is_exact_with_the_true_posterior():
  trained, w, b, sigma = _linear_gaussian()
  x = np.random.RandomState(1).normal(size=(7, 5)).astype(np.float32) * 2
  expected = _exact_nll(x.astype(np.float64), w, b, sigma)
  for k, chunk in ((1, 1), (12, 5), (40, 8)):        # 12 with chunk 5 -> chunks of 4
    got = likelihood.importance_nll(trained, x, num_samples=k, chunk=chunk, batch_size=3)
    assert got.shape == (7,)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)
  # With the exact posterior the ELBO is log p(x) too, in expectation over its one sample
  # (2,000 copies of one example get 2,000 independent draws).
  draws = -likelihood.elbo(trained, np.repeat(x[:1], 2000, 0), batch_size=500)
  mean, sem = likelihood.summary(draws)
  assert abs(mean - expected[0]) < 4 * sem and sem > 0


def test_importance_nll_converges_with_a_poor_posterior():
  trained, w, b, sigma = _linear_gaussian()
  p = trained.params["params"]
  p["to_logvar"]["bias"] = p["to_logvar"]["bias"] + 1.0   # too wide a proposal
  x = np.random.RandomState(2).normal(size=(4, 5)).astype(np.float32)
  expected = _exact_nll(x.astype(np.float64), w, b, sigma)
  one = likelihood.importance_nll(trained, x, num_samples=1, seed=3)
  many = likelihood.importance_nll(trained, x, num_samples=4000, chunk=500, seed=3)
  assert np.mean(np.abs(many - expected)) < 0.02 < np.mean(np.abs(one - expected))
  # -ELBO - NLL = KL(q || posterior): each posterior variance is e times too large, so
  # the gap is 2 * 0.5 * (e - 1 - log e) = e - 2 nats, in expectation over the draw.
  gap, sem = likelihood.summary(-likelihood.elbo(trained, np.repeat(x[:1], 4000, 0))
                                - expected[0])
  assert abs(gap - (np.e - 2)) < 4 * sem < 0.3


def test_active_units_counts_varying_posterior_means():
  trained, _, _, _ = _linear_gaussian()
  p = trained.params["params"]
  p["to_mean"]["kernel"][:, 1] = 0.001                    # unit 1 barely moves
  x = np.random.RandomState(0).normal(size=(500, 5)).astype(np.float32)
  count, variance = likelihood.active_units(trained, x)
  means = x.astype(np.float64) @ p["to_mean"]["kernel"] + p["to_mean"]["bias"]
  np.testing.assert_allclose(variance, means.var(0), rtol=1e-4)
  assert count == int(np.sum(means.var(0) > 0.01)) == 1


def test_summary_and_bad_input():
  mean, sem = likelihood.summary([1.0, 2.0, 3.0, 6.0])
  assert mean == 3.0 and sem == pytest.approx(np.std([1, 2, 3, 6], ddof=1) / 2)
  trained, _, _, _ = _linear_gaussian()
  with pytest.raises(ConfigError, match="positive integer"):
    likelihood.importance_nll(trained, np.zeros((2, 5)), num_samples=0)
  trained.config.model.family = "ae"
  with pytest.raises(ConfigError, match="VAE family"):
    likelihood.active_units(trained, np.zeros((2, 5)))


def test_cli_evaluate_writes_nll_over_the_whole_split(tmp_path):
  rng = np.random.RandomState(0)
  x = (rng.random_sample((130, 6)) < 0.4).astype(np.float32)
  path = tmp_path / "bin.npy"
  np.save(path, x)
  cfg = configs.get_preset("tiny")
  cfg.model.family, cfg.model.recon_loss, cfg.model.latent_dim = "vae", "bce", 2
  cfg.data.name, cfg.train.parallel, cfg.train.figures = str(path), "jit", False
  cfg.train.num_steps, cfg.train.batch_size = 4, 32
  fit(cfg, tmp_path / "run", progress=False)
  out = tmp_path / "eval.json"
  assert cli_main(["evaluate", "--workdir", str(tmp_path / "run"), "--data", str(path),
                   "--nll-samples", "20", "--out", str(out)]) == 0
  got = json.loads(out.read_text())
  assert got["num_examples"] == 130 and got["nll_samples"] == 20
  trained = Trained.load(tmp_path / "run")
  nll = likelihood.importance_nll(trained, x, num_samples=20)
  assert got["nll"] == pytest.approx(nll.mean(), rel=1e-6)
  assert got["nll_stderr"] == pytest.approx(nll.std(ddof=1) / np.sqrt(130), rel=1e-5)
  assert got["nll"] <= -got["elbo"] + 3 * got["elbo_stderr"]
  assert 0 <= got["active_units"] <= 2
  assert cli_main(["evaluate", "--workdir", str(tmp_path / "run"), "--data", str(path),
                   "--nll-samples", "-3", "--out", str(out)]) == 2


# ---- the experiment -------------------------------------------------------------------

@pytest.mark.slow
def test_experiment_smoke(tmp_path, monkeypatch, fewer_optimizations):
  if data_dir() is None or not (data_dir() / "binarized_mnist").is_dir():
    pytest.skip("no shared binarized_mnist folder (set AE_JAX_DATA_DIR or add ../shared/data)")
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  result = exp.main(["--smoke", "--out", str(tmp_path), "--models", "vae,iwae5,vamp",
                     "--peer-models", "vae,vamp", "--epochs", "1", "--also-final",
                     "--lr", "2e-3"])
  assert result["lr"] == {"vae": 2e-3, "iwae5": 2e-3, "vamp": 2e-3}
  finals = [r for r in result["rows"] if r["selection"] == "final epoch"]
  assert sorted(r["model"] for r in finals) == ["iwae5", "vae", "vamp"]
  assert all(r["impl"] == "ae_jax" for r in finals)
  rows = {(r["model"], r["impl"]): r for r in result["rows"] if r["selection"] == "best valid"}
  expected = {("vae", "ae_jax"), ("iwae5", "ae_jax"), ("vamp", "ae_jax")}
  if result["pythae_installed"]:
    expected |= {("vae", "pythae"), ("vamp", "pythae")}
  assert set(rows) == expected
  for r in rows.values():
    assert r["epochs"] == 1 and r["nll_samples"] == 20 and np.isfinite(r["test_nll"])
    assert r["lr"] == 2e-3 and np.isfinite(r["valid_nll_k100"]) and np.isfinite(r["valid_loss"])
    assert r["test_nll"] <= -r["test_elbo"] + 5     # the NLL estimate sits below -ELBO
  assert (tmp_path / "nll_vs_time.png").stat().st_size > 0
  assert (tmp_path / "table.md").read_text().count("| ae_jax |") == 6


def test_experiment_patience_stops_on_a_stalled_validation(tmp_path, monkeypatch):
  """--patience P: training stops P epochs after the best validation epoch, keeping it."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  _fake_binarized(tmp_path, sizes=(200, 10, 10))
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  train, valid = load("binarized_mnist", "train"), load("binarized_mnist", "valid")
  losses = iter([5.0, 4.0, 4.5, 4.2, 4.1, 3.0, 2.0])   # best at epoch 2, then no better
  monkeypatch.setattr(exp, "evaluate", lambda *a, **k: {"loss": next(losses)})
  monkeypatch.setattr(exp, "_curve_point", lambda *a, **k: None)
  run = exp.train_jax("vae", train, valid, train.x[:5], epochs=7, budget_s=float("inf"),
                      seed=0, curve_every=100, patience=3)
  assert (run.epochs, run.best_epoch, run.best_valid) == (5, 2, 4.0)
  # --also-final scores the last epoch's parameters, kept apart from the selected ones
  steps_per_epoch = 200 // exp.SETTINGS["vae"]["batch"]
  assert (run.trained.step, run.final.step) == (2 * steps_per_epoch, 5 * steps_per_epoch)


def test_experiment_peer_alone_trains_for_the_given_epochs(tmp_path, monkeypatch):
  """--models '' --peer-models vae: only the peer trains, for --epochs, and is scored."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  _fake_binarized(tmp_path, sizes=(200, 10, 10))
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  calls = []

  def fake_peer(name, train, valid, curve_x, *, epochs, seed, curve_every=1):
    calls.append((name, epochs, len(train)))
    return exp.Run(name, "pythae", epochs=epochs, train_seconds=1.0,
                   curve=[(1.0, epochs, 100.0)])

  monkeypatch.setattr(exp, "pythae_available", lambda: True)
  monkeypatch.setattr(exp, "train_pythae", fake_peer)
  monkeypatch.setattr(exp, "train_jax", lambda *a, **k: pytest.fail("ae_jax must not train"))
  monkeypatch.setattr(exp, "score", lambda run, *a, **k: {"model": run.name, "impl": run.impl,
                                                          "epochs": run.epochs})
  result = exp.main(["--models", "", "--peer-models", "vae", "--epochs", "3",
                     "--out", str(tmp_path / "out")])
  assert calls == [("vae", 3, 200)]
  assert result["rows"] == [{"model": "vae", "impl": "pythae", "epochs": 3}]
  assert result["speed"] == []
  assert exp.speed_row("vae", {"pythae": exp.Run("vae", "pythae")}) is None
  # --earlier: an earlier ae_jax run's curve is drawn beside the peer's and paired with it
  earlier = tmp_path / "earlier.json"
  earlier.write_text(json.dumps({
      "rows": [{"model": "vae", "impl": "ae_jax", "selection": "best valid", "train_s": 4.0},
               {"model": "vae", "impl": "ae_jax", "selection": "final epoch", "train_s": 4.0}],
      "curves": {"ae_jax:vae": [[2.0, 1, 104.0], [4.0, 2, 99.0]]}}))
  # a run from before the curve's images were drawn at random read the first 1,000: refused
  with pytest.raises(SystemExit, match="cannot be paired"):
    exp.main(["--models", "", "--peer-models", "vae", "--earlier", str(earlier)])
  # ... unless this run's curve reads those images too (--curve-images first)
  [old] = exp.earlier_runs(earlier, exp.CURVE_FIRST)
  assert (old.impl, old.name, old.curve) == ("ae_jax", "vae", [(2.0, 1, 104.0), (4.0, 2, 99.0)])
  earlier.write_text(json.dumps({**json.loads(earlier.read_text()),
                                 "curve_images": exp.CURVE_SUBSET}))
  result = exp.main(["--models", "", "--peer-models", "vae", "--epochs", "3",
                     "--earlier", str(earlier), "--out", str(tmp_path / "out2")])
  assert result["curve_images"] == exp.CURVE_SUBSET
  (speed,) = result["speed"]
  # the peer's best is 100.0 (its one curve point, at 1 s); ours first reaches it at 4 s
  assert (speed["common_curve_nll"], speed["ae_jax_s_to_reach_it"],
          speed["pythae_s_to_reach_it"]) == (100.0, 4.0, 1.0)
  assert set(result["curves"]) == {"ae_jax:vae", "pythae:vae"}
  # the same run in both is refused before anything trains
  with pytest.raises(SystemExit):
    exp.main(["--models", "vae", "--peer-models", "", "--earlier", str(earlier)])
  earlier.write_text("{}")
  with pytest.raises(SystemExit, match="--earlier"):
    exp.main(["--models", "", "--peer-models", "vae", "--earlier", str(earlier)])


def test_curve_images_are_a_fixed_random_draw_across_the_test_split(monkeypatch):
  """The test file is ordered by digit: the curve reads 1,000 images drawn from all of it,
  the same ones in every run, not its first 1,000."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  x = np.arange(10_000)[:, None]
  got = exp.curve_images(x)[:, 0]
  assert len(got) == exp.CURVE_IMAGES == len(set(got))
  np.testing.assert_array_equal(got, exp.curve_images(x)[:, 0])
  assert np.all(np.diff(got) > 0)   # file order
  # every tenth of the file (one digit each in the real file) holds about a tenth of them
  counts = np.bincount(got // 1000, minlength=10)
  assert counts.min() > 70 and counts.max() < 130, counts
  np.testing.assert_array_equal(exp.curve_images(x[:50])[:, 0], np.arange(50))
  # the first images, only to resume or pair with runs from before the draw
  np.testing.assert_array_equal(exp.curve_images(x, exp.CURVE_FIRST)[:, 0], np.arange(1000))


def test_experiment_speed_row_times_a_curve_value_both_reach(monkeypatch):
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  ours, peer = exp.Run("vae", "ae_jax"), exp.Run("vae", "pythae")
  ours.curve, ours.train_seconds = [(10.0, 1, 110.0), (20.0, 2, 104.0), (30.0, 3, 105.0)], 30.0
  peer.curve, peer.train_seconds = [(25.0, 1, 108.0), (50.0, 2, 103.0), (75.0, 3, 104.0)], 75.0
  row = exp.speed_row("vae", {"ae_jax": ours, "pythae": peer})
  # the common target is the worse best value (104.0): ours at 20 s, the peer at 50 s
  assert row["common_curve_nll"] == 104.0
  assert (row["ae_jax_s_to_reach_it"], row["pythae_s_to_reach_it"]) == (20.0, 50.0)
  assert row["ratio"] == pytest.approx(0.4)
  assert exp.speed_row("vae", {"ae_jax": ours}) is None


def test_experiment_lr_milestones_become_a_multistep_schedule_in_steps(monkeypatch):
  """--lr-milestones E1,E2 (epochs) decay the ae_jax rate at E1 * steps_per_epoch etc., as
  pythae's MultiStepLR stepped once per epoch does; bad lists are refused."""
  import pathlib
  from ae_jax import train as train_lib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  monkeypatch.setitem(exp.SETTINGS, "vae", {**exp.SETTINGS["vae"], "milestones": (2, 3),
                                            "gamma": 0.5})
  cfg = exp.config_for("vae", epochs=4, steps_per_epoch=10, seed=0)
  assert cfg.optim.schedule == "multistep" and tuple(cfg.optim.milestones) == (20, 30)
  lr = train_lib.learning_rate_schedule(cfg, 40)
  np.testing.assert_allclose([float(lr(s)) for s in (0, 19, 20, 29, 30)],
                             [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4], rtol=1e-6)
  for bad in ("3,2", "x", "0,5"):
    with pytest.raises(SystemExit):
      exp.main(["--smoke", "--lr-milestones", bad])


def test_experiment_init_flag_reaches_the_ae_jax_config(monkeypatch):
  """--init torch gives the ae_jax models PyTorch's initialisers (model.init), as pythae's
  models have; anything else is refused by the parser."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  assert exp.config_for("vae", epochs=1, steps_per_epoch=10, seed=0).model.init == "flax"
  monkeypatch.setitem(exp.SETTINGS, "vae", {**exp.SETTINGS["vae"], "init": "torch"})
  assert exp.config_for("vae", epochs=1, steps_per_epoch=10, seed=0).model.init == "torch"
  with pytest.raises(SystemExit):
    exp.main(["--smoke", "--init", "kaiming"])


def test_experiment_batch_flag_overrides_every_setting(monkeypatch):
  """--batch B sets every setting's batch (both implementations); B < 0 is refused."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  monkeypatch.setitem(exp.SETTINGS, "vae", {**exp.SETTINGS["vae"], "batch": 64})
  assert exp.config_for("vae", epochs=1, steps_per_epoch=10, seed=0).train.batch_size == 64
  with pytest.raises(SystemExit):
    exp.main(["--smoke", "--batch", "-5"])


def test_experiment_two_layer_settings_train_without_a_peer(tmp_path, monkeypatch, capsys):
  """iwae5_2l / iwae50_2l: Burda et al.'s two stochastic layers (z1 100, z2 50, 100-100
  between them); an epoch trains and scores, and a pythae peer is refused (it has none)."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  cfg = exp.config_for("iwae50_2l", epochs=1, steps_per_epoch=10, seed=0)
  assert (cfg.model.latent_dim, cfg.model.latent2_dim, tuple(cfg.model.latent2_widths),
          cfg.objective.iw_samples) == (100, 50, (100, 100), 50)
  assert exp.config_for("iwae50", epochs=1, steps_per_epoch=10, seed=0).model.latent2_dim == 0
  with pytest.raises(SystemExit):
    exp.main(["--smoke", "--models", "iwae5_2l", "--peer-models", "iwae5_2l"])
  assert "pythae has no model with two stochastic layers" in capsys.readouterr().err
  _fake_binarized(tmp_path, sizes=(40, 10, 10))
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  train, valid, test = (load("binarized_mnist", s) for s in ("train", "valid", "test"))
  run = exp.train_jax("iwae5_2l", train, valid, test.x[:5], epochs=1, budget_s=float("inf"),
                      seed=0, curve_every=1)
  assert {"q_z2", "p_z1"} <= set(run.trained.params["params"])
  row = exp.score(run, test, 10, 0, valid=valid)
  assert row["pythae_published"] is None and row["goal"] is None
  assert np.isfinite(row["test_nll"]) and row["test_nll"] <= -row["test_elbo"] + 5


def test_experiment_lr_flag_overrides_every_setting(monkeypatch):
  """--lr R sets every setting's Adam rate (both implementations); R < 0 or NaN is refused
  before any data is read."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  monkeypatch.setitem(exp.SETTINGS, "vae", {**exp.SETTINGS["vae"], "lr": 3e-4})
  assert exp.config_for("vae", epochs=1, steps_per_epoch=10, seed=0).optim.learning_rate == 3e-4
  for bad in ("-1e-3", "nan"):
    with pytest.raises(SystemExit):
      exp.main(["--smoke", "--lr", bad])


def test_experiment_ema_flag_selects_and_scores_the_moving_average(tmp_path, monkeypatch):
  """--ema D sets optim.ema_decay for ae_jax's runs, whose selected parameters are then the
  moving average (not the last step's); decays outside [0, 1) are refused."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  assert exp.config_for("vae", epochs=1, steps_per_epoch=10, seed=0).optim.ema_decay == 0.0
  _fake_binarized(tmp_path, sizes=(200, 10, 10))
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  train, valid = load("binarized_mnist", "train"), load("binarized_mnist", "valid")
  monkeypatch.setattr(exp, "_curve_point", lambda *a, **k: None)
  runs = {}
  for ema in (0.0, 0.9):
    monkeypatch.setitem(exp.SETTINGS, "vae", {**exp.SETTINGS["vae"], "ema": ema})
    assert exp.config_for("vae", epochs=1, steps_per_epoch=10, seed=0).optim.ema_decay == ema
    runs[ema] = exp.train_jax("vae", train, valid, train.x[:5], epochs=1,
                              budget_s=float("inf"), seed=0, curve_every=100)
  plain, averaged = runs[0.0].final.params, runs[0.9].final.params
  # Two steps of decay 0.9 from the shared start: 0.81 p0 + 0.09 p1 + 0.1 p2, not p2.
  gap = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), plain, averaged)
  assert max(jax.tree.leaves(gap)) > 1e-5
  for bad in ("1", "-0.5"):
    with pytest.raises(SystemExit):
      exp.main(["--smoke", "--ema", bad])


@pytest.mark.slow   # ~20 s: seven short training runs and three runs of the command
def test_experiment_resumes_a_run_in_sittings_to_the_uninterrupted_parameters(
    tmp_path, monkeypatch):
  """--workdir / --stop-after-minutes: a run stopped after every epoch and resumed by the
  same call ends where one uninterrupted run ends (parameters, moving average, selection,
  curve); other flags against the checkpoint are refused."""
  import pathlib
  monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1]))
  from experiments import vae_binarized_mnist as exp
  from ae_jax.errors import CheckpointError
  _fake_binarized(tmp_path, sizes=(200, 20, 10))
  monkeypatch.setenv("AE_JAX_DATA_DIR", str(tmp_path))
  train, valid = load("binarized_mnist", "train"), load("binarized_mnist", "valid")
  monkeypatch.setitem(exp.SETTINGS, "vae", {**exp.SETTINGS["vae"], "ema": 0.9})
  kw = dict(epochs=4, budget_s=float("inf"), seed=0, curve_every=1)
  whole = exp.train_jax("vae", train, valid, train.x[:5], **kw)
  sittings = []
  while not sittings or not sittings[-1].finished:
    sittings.append(exp.train_jax("vae", train, valid, train.x[:5], **kw,
                                  workdir=tmp_path / "w", checkpoint_every=3,
                                  stop_after_s=1e-9))
    assert len(sittings) <= 4
  last = sittings[-1]
  assert [r.epochs for r in sittings] == [1, 2, 3, 4]
  assert [r.finished for r in sittings] == [False, False, False, True]
  assert [(h["from"], h["to"]) for h in last.sittings] == [(0, 1), (1, 2), (2, 3), (3, 4)]
  for got, want in ((last.final, whole.final), (last.trained, whole.trained)):
    for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (last.best_epoch, last.best_valid) == (whole.best_epoch, whole.best_valid)
  assert [c[1:] for c in last.curve] == [c[1:] for c in whole.curve]
  # a finished run resumes without training and is the same run
  again = exp.train_jax("vae", train, valid, train.x[:5], **kw, workdir=tmp_path / "w")
  assert again.finished and again.epochs == 4 and again.best_epoch == whole.best_epoch
  with pytest.raises(CheckpointError, match="epochs: checkpoint 4, now 5"):
    exp.train_jax("vae", train, valid, train.x[:5], **{**kw, "epochs": 5},
                  workdir=tmp_path / "w")
  # a checkpoint from before the curve's draw recorded no subset: the first images
  # (--curve-images first) resume it; the random draw is refused
  signature = exp._signature
  monkeypatch.setattr(exp, "_signature", lambda *a: {
      k: v for k, v in signature(*a).items() if k != "curve_images"})
  exp.train_jax("vae", train, valid, train.x[:5], **kw, workdir=tmp_path / "old",
                stop_after_s=1e-9)
  monkeypatch.setattr(exp, "_signature", signature)
  with pytest.raises(CheckpointError, match="curve_images: checkpoint 'the first 1000"):
    exp.train_jax("vae", train, valid, train.x[:5], **kw, workdir=tmp_path / "old")
  resumed = exp.train_jax("vae", train, valid, train.x[:5], **kw, workdir=tmp_path / "old",
                          stop_after_s=1e-9, curve_subset=exp.CURVE_FIRST)
  assert resumed.epochs == 2 and [(h["from"], h["to"]) for h in resumed.sittings] == [
      (0, 1), (1, 2)]
  # the command: a sitting that stops writes what it reached; the one that ends scores
  cmd = ["--models", "vae", "--peer-models", "", "--epochs", "2", "--nll-samples", "5",
         "--workdir", str(tmp_path / "cli"), "--stop-after-minutes", "1e-9",
         "--out", str(tmp_path / "out")]
  first = exp.main(cmd)
  assert first["unfinished"] == {"vae": 1} and first["rows"] == []
  assert [c[1] for c in first["curves"]["ae_jax:vae"]] == [1]
  assert "sittings so far" in (tmp_path / "out" / "table.md").read_text()
  second = exp.main(cmd)
  assert "unfinished" not in second and [r["epochs"] for r in second["rows"]] == [2]
  assert [(h["from"], h["to"]) for h in second["sittings"]["vae"]] == [(0, 1), (1, 2)]
  # --score-unfinished: the stopped sitting also scores its best validation epoch so far
  cmd[cmd.index(str(tmp_path / "cli"))] = str(tmp_path / "cli2")
  reached = exp.main([*cmd, "--score-unfinished"])
  assert reached["unfinished"] == {"vae": 1}
  [row] = reached["rows"]
  assert row["selection"] == "best valid so far (unfinished: 1 of 2 epochs)"
  assert row["epochs"] == row["selected_epoch"] == 1 and np.isfinite(row["test_nll"])
  for bad in (["--stop-after-minutes", "5"], ["--workdir", "w", "--checkpoint-every", "0"],
              ["--workdir", "w", "--stop-after-minutes", "-1"], ["--score-unfinished"]):
    with pytest.raises(SystemExit):
      exp.main(["--smoke", *bad])
