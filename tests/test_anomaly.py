"""Tests of the autoencoder anomaly detector: threshold rules, scores, persistence."""

import json

import numpy as np
import pytest

from ae_jax import anomaly
from ae_jax.anomaly import THRESHOLDS, AutoencoderDetector
from ae_jax.errors import CheckpointError, ConfigError, DataError


# ---- threshold rules against hand-computed values ----------------------------------

def test_percentile_threshold():
  scores = np.arange(1.0, 11.0)
  # 80th percentile of 1..10: position 0.8 * 9 = 7.2 between 8 and 9.
  assert THRESHOLDS.get("percentile")(scores, contamination=0.2) == pytest.approx(8.2)


def test_mean_std_threshold():
  scores = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, population std sqrt(1.25)
  assert THRESHOLDS.get("mean_std")(scores, k=1.0) == pytest.approx(2.5 + 1.118034, abs=1e-6)
  assert THRESHOLDS.get("mean_std")(scores, k=2.0) == pytest.approx(2.5 + 2.236068, abs=1e-6)


def test_max_threshold():
  assert THRESHOLDS.get("max")(np.array([0.3, 7.5, 2.0])) == 7.5


def test_f1_best_threshold():
  # Ranked: 0.9 (1), 0.8 (1), 0.4 (0), 0.35 (1), 0.1 (0). Flagging the top 4 gives
  # precision 3/4, recall 1, F1 6/7, the best; so flag scores > 0.1.
  val_scores = np.array([0.1, 0.4, 0.35, 0.8, 0.9])
  val_labels = np.array([0, 0, 1, 1, 1])
  t = THRESHOLDS.get("f1_best")(None, val_scores=val_scores, val_labels=val_labels)
  assert t == pytest.approx(0.1)
  # Separable labels: the best threshold flags exactly the anomalies.
  t = THRESHOLDS.get("f1_best")(None, val_scores=np.array([1.0, 2.0, 5.0, 6.0]),
                                val_labels=np.array([0, 0, 1, 1]))
  assert t == pytest.approx(2.0)


def test_threshold_errors():
  with pytest.raises(ConfigError, match="valid threshold rule names are: f1_best, log_tukey, "
                                        "max, mean_std, percentile, tukey"):
    AutoencoderDetector(threshold="otsu")
  with pytest.raises(ConfigError, match="needs labels"):
    THRESHOLDS.get("f1_best")(np.ones(3))
  with pytest.raises(ConfigError, match="valid anomaly score names"):
    AutoencoderDetector(score="psnr")
  with pytest.raises(ConfigError, match="needs family='vae'"):
    AutoencoderDetector(score="elbo")
  with pytest.raises(ConfigError, match="contamination"):
    AutoencoderDetector(contamination=0.7)
  with pytest.raises(ConfigError, match="cvae"):
    AutoencoderDetector(family="cvae")


# ---- a detector on two clusters with planted outliers -------------------------------

def two_clusters(seed=0, n=400, outliers=12):
  """(x (n + outliers, 6), y): two Gaussian clusters, a constant column, planted outliers."""
  rng = np.random.default_rng(seed)
  centers = np.array([[3.0, 3.0, 0.0, 0.0, 1.0], [-3.0, -3.0, 0.0, 0.0, -1.0]])
  normal = centers[rng.integers(0, 2, n)] + 0.5 * rng.normal(size=(n, 5))
  planted = rng.uniform(-6, 6, size=(outliers, 5))
  planted[:, 2:4] = rng.choice([-5.0, 5.0], size=(outliers, 2))
  x = np.concatenate([normal, planted])
  x = np.concatenate([x, np.full((len(x), 1), 7.0)], axis=1)  # a constant column
  y = np.r_[np.zeros(n, int), np.ones(outliers, int)]
  return x.astype(np.float32), y


@pytest.fixture(scope="module")
def fitted():
  x, y = two_clusters()
  det = AutoencoderDetector(ensemble=2, max_steps=200, epochs=200, contamination=0.05,
                            widths=(32, 16), latent_dim=2, batch_size=64, seed=0)
  return det.fit(x), x, y


def test_flags_planted_outliers(fitted):
  det, x, y = fitted
  from sklearn.metrics import roc_auc_score
  scores = det.decision_function(x)
  assert np.all(np.isfinite(scores))
  assert roc_auc_score(y, scores) > 0.97
  pred = det.predict(x)
  assert pred[y == 1].mean() >= 0.9
  assert pred[y == 0].mean() <= 0.15
  x_new, y_new = two_clusters(seed=1)
  assert roc_auc_score(y_new, det.decision_function(x_new)) > 0.97


def test_predict_agrees_with_scores_and_threshold(fitted):
  det, x, _ = fitted
  scores = det.decision_function(x)
  np.testing.assert_array_equal(det.predict(x), (scores > det.threshold_).astype(int))
  np.testing.assert_allclose(det.decision_scores_, scores, rtol=1e-6)
  np.testing.assert_array_equal(det.labels_, (det.decision_scores_ > det.threshold_))
  # The default rule is Tukey's fence Q3 + 1.5 IQR of the held-out (reference) scores.
  assert det.threshold == "tukey"
  q1, q3 = np.percentile(np.asarray(det.reference_scores_, np.float64), [25, 75])
  assert det.threshold_ == pytest.approx(q3 + 1.5 * (q3 - q1), rel=1e-6)


def test_batched_scoring_equals_unbatched(fitted):
  det, x, _ = fitted
  whole = det.decision_function(x)
  features = det.feature_scores(x)
  det.score_batch_size = 7
  try:
    np.testing.assert_allclose(det.decision_function(x), whole, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(det.feature_scores(x), features, rtol=1e-5, atol=1e-7)
  finally:
    det.score_batch_size = 4096
  assert features.shape == x.shape


def test_save_load_round_trip(fitted, tmp_path):
  det, x, _ = fitted
  path = det.save(tmp_path / "det")
  assert sorted(p.name for p in path.iterdir()) == ["arrays.npz", "detector.json"]
  json.loads((path / "detector.json").read_text())
  with np.load(path / "arrays.npz", allow_pickle=False) as arrays:
    assert all(arrays[k].dtype != object for k in arrays.files)
  back = AutoencoderDetector.load(path)
  assert back.threshold_ == det.threshold_
  np.testing.assert_allclose(back.decision_function(x), det.decision_function(x), rtol=1e-6)
  np.testing.assert_array_equal(back.predict(x), det.predict(x))
  np.testing.assert_allclose(back.feature_scores(x[:5]), det.feature_scores(x[:5]), rtol=1e-6)


def test_load_rejects_mismatched_arrays(fitted, tmp_path):
  det, _, _ = fitted
  path = det.save(tmp_path / "det")
  meta = json.loads((path / "detector.json").read_text())
  meta["params"]["ensemble"] = 3
  (path / "detector.json").write_text(json.dumps(meta))
  with pytest.raises(CheckpointError, match="has shape"):
    AutoencoderDetector.load(path)
  with pytest.raises(CheckpointError, match="no saved detector"):
    AutoencoderDetector.load(tmp_path / "nothing")


def test_input_checks(fitted):
  det, x, _ = fitted
  with pytest.raises(DataError, match="shape"):
    det.decision_function(x[:, :3])
  bad = x[:4].copy()
  bad[2, 1] = np.nan
  with pytest.raises(DataError, match="NaN"):
    det.decision_function(bad)
  with pytest.raises(DataError, match="not fitted"):
    AutoencoderDetector().decision_function(x)


def test_same_seed_same_scores_and_early_stopping():
  x, _ = two_clusters(n=200, outliers=4)
  kw = dict(ensemble=1, max_steps=1000, epochs=1000, widths=(16,), latent_dim=2,
            batch_size=32, learning_rate=0.05, patience=1, eval_every=10, seed=3)
  a = AutoencoderDetector(**kw).fit(x)
  b = AutoencoderDetector(**kw).fit(x)
  np.testing.assert_array_equal(a.decision_scores_, b.decision_scores_)
  evals = [r["loss"] for r in a.history_[0] if r["split"] == "eval"]
  assert a.history_[0][-1]["step"] < 1000, "patience=1 stops at the first evaluation " \
      "without improvement"
  assert evals[-1] >= min(evals[:-1])


def test_f1_best_uses_labels_of_the_validation_part():
  x, y = two_clusters(n=300, outliers=30)
  det = AutoencoderDetector(threshold="f1_best", ensemble=1, max_steps=60, widths=(16,),
                            latent_dim=2, val_fraction=0.3, seed=0).fit(x, y)
  _, val_idx = _split(len(x), 0.3, 0)
  expected = THRESHOLDS.get("f1_best")(None, val_scores=det.decision_scores_[val_idx],
                                       val_labels=y[val_idx])
  assert det.threshold_ == pytest.approx(expected)
  with pytest.raises(ConfigError, match="needs labels"):
    AutoencoderDetector(threshold="f1_best", ensemble=1, max_steps=5).fit(x)


def _split(n, fraction, seed):
  order = np.random.default_rng(seed).permutation(n)
  n_val = int(round(n * fraction))
  return np.sort(order[n_val:]), np.sort(order[:n_val])


def test_sequences_per_timestep_scores_and_vae_elbo():
  rng = np.random.default_rng(0)
  t = np.linspace(0, 2 * np.pi, 16)
  x = (np.sin(t)[None, :] * rng.uniform(0.8, 1.2, (96, 1))
       + 0.05 * rng.normal(size=(96, 16))).astype(np.float32)
  det = AutoencoderDetector(family="vae", network="conv1d", score="elbo", channels=(4,),
                            latent_dim=2, ensemble=1, max_steps=10, score_samples=2,
                            val_fraction=0.0).fit(x)
  spiked = x[:2].copy()
  spiked[:, 5] += 6.0
  per_step = det.timestep_scores(spiked)
  assert per_step.shape == (2, 16)
  assert np.all(per_step.argmax(axis=1) == 5)
  whole = det.decision_function(x)
  det.score_batch_size = 5
  np.testing.assert_allclose(det.decision_function(x), whole, rtol=1e-5)
  assert det.reconstruct(x[:3]).shape == (3, 16, 1)


def test_scaler_handles_constant_columns():
  x = np.zeros((50, 3), np.float32)
  x[:, 0] = np.arange(50)
  for method in anomaly.SCALINGS:
    scaler = anomaly.fit_scaler(method, x)
    z = scaler.transform(x)
    assert np.all(np.isfinite(z)), method
    np.testing.assert_allclose(scaler.inverse_transform(z), x, atol=1e-4)


@pytest.mark.slow
def test_adbench_script_smoke_on_any_folder(tmp_path, fewer_optimizations):
  from experiments import anomaly_adbench
  rng = np.random.default_rng(0)
  folder = tmp_path / "sets"
  folder.mkdir()
  for name, d in (("1_toy", 4), ("2_other", 7)):
    x = rng.normal(size=(150, d))
    y = np.zeros(150, int)
    y[:8] = 1
    x[:8] += 4.0
    np.savez(folder / f"{name}.npz", X=x, y=y)
  result = anomaly_adbench.main(["--smoke", "--data-dir", str(folder), "--out",
                                 str(tmp_path / "out"), "--cache", ""])
  assert {r["set"] for r in result["rows"]} == {"1_toy", "2_other"}
  assert (tmp_path / "out" / "table.md").exists()
  assert (tmp_path / "out" / "roc_auc_per_set.png").exists()
  flags = {f["detector"]: f for f in result["flags"]}
  assert set(flags) == {anomaly_adbench.OURS}
  assert all(0.0 <= flags[anomaly_adbench.OURS][f"f1@{r}"] <= 1.0
             for r in ("percentile", "mean_std", "max", "tukey"))


def test_adbench_runs_the_chosen_tabular_configuration_unless_told_otherwise():
  from experiments import anomaly_adbench
  assert json.loads(anomaly_adbench.parse([]).detector) == anomaly_adbench.CHOSEN
  assert anomaly_adbench.CHOSEN == {"scaling": "robust", "trim": 0.2, "score": "mse",
                                   "activation": "tanh"}
  assert json.loads(anomaly_adbench.parse(["--detector", "{}"]).detector) == {}
  # every argument of the configuration is one the detector takes
  AutoencoderDetector(**anomaly_adbench.CHOSEN)


def test_adbench_runs_an_ensemble_variant_with_the_configuration_under_each_member(
    tmp_path, monkeypatch):
  """A variant {"members": [...]} is an EnsembleDetector; --detector (CHOSEN) is laid under
  each member (jobs run with the smoke budget)."""
  from experiments import anomaly_adbench
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 5))
  y = np.zeros(200, int)
  y[:10] = 1
  x[:10] += 5.0
  np.savez(tmp_path / "3_toy.npz", X=x, y=y)
  captured, real_jobs = {}, anomaly_adbench.run_jobs

  def jobs(js, workers):
    captured["ours"] = js[0][3]["ours"]
    return real_jobs([(p, d, s, {**a, "smoke": True}) for p, d, s, a in js], workers)

  monkeypatch.setattr(anomaly_adbench, "run_jobs", jobs)
  variants = {"AE mix": {"members": [{}, {"activation": "relu", "score": "gaussian"}]}}
  result = anomaly_adbench.main(["--data-dir", str(tmp_path), "--variants",
                                 json.dumps(variants), "--anchors", "--seeds", "1",
                                 "--out", str(tmp_path / "out"), "--cache", ""])
  mix = captured["ours"]["AE mix"]["members"]
  assert mix[0] == anomaly_adbench.CHOSEN
  assert mix[1] == {**anomaly_adbench.CHOSEN, "activation": "relu", "score": "gaussian"}
  rows = {r["detector"]: r for r in result["rows"]}
  assert set(rows) == {anomaly_adbench.OURS, "AE mix"}
  assert len(rows["AE mix"]["steps"]) == 2 and rows["AE mix"]["roc_auc"] > 0.9


def test_ecg_rule_metrics_leave_a_rule_empty_where_it_does_not_apply():
  # IForest-like scores can be <= 0, where log_tukey is undefined: that rule is left empty
  # (None) and the others are still computed, instead of the whole experiment stopping.
  from experiments import anomaly_ecg5000
  reference = np.array([-0.2, -0.1, 0.0, 0.1, 0.2])
  val_scores, val_y = np.array([-0.1, 0.5, 0.05, 0.9]), np.array([0, 1, 0, 1])
  scores, test_y = np.array([-0.3, 0.0, 0.6, 1.0]), np.array([0, 0, 1, 1])
  row = {"detector": "IForest"}
  anomaly_ecg5000.add_rule_metrics(row, reference, val_scores, val_y, scores, test_y, 0.1)
  assert row["accuracy@log_tukey"] is None and row["val_accuracy@log_tukey"] is None
  assert row["accuracy@max"] == 1.0  # threshold 0.2: flags exactly the two anomalies
  assert row["accuracy@f1_best"] == 1.0 and row["val_accuracy@f1_best"] == 1.0
  assert all(isinstance(row[f"accuracy@{r}"], float)
             for r in anomaly_ecg5000.RULES if r != "log_tukey")


def test_ecg_anchors_run_the_seeds_of_ours_in_every_protocol(tmp_path, monkeypatch):
  """The PyOD anchors run every seed our detectors run, on the same splits, and the
  summary averages each over them (detectors stubbed: this checks the script's loop)."""
  from experiments import anomaly_ecg5000 as ecg
  calls = []

  def splits(protocol, seed, smoke):
    return ("fit", seed), ("val", seed), ("test", seed), np.array([0, 1])

  def detector(args, network, score, protocol, seed, split):
    calls.append((protocol, f"AE-{network}", seed, split[0][1]))
    return {"protocol": protocol, "detector": f"AE-{network}", "seed": seed,
            "roc_auc": 0.5 + seed / 10}, None, np.array([0.1, 0.9])

  def anchor(args, name, protocol, seed, split):
    calls.append((protocol, name, seed, split[0][1]))
    return {"protocol": protocol, "detector": name, "seed": seed,
            "roc_auc": 0.4 + seed / 10}, np.array([0.2, 0.8])

  for name, fn in {"protocol_splits": splits, "run_detector": detector, "run_anchor": anchor,
                   "beat_figure": lambda *a: None, "histogram_figure": lambda *a: None,
                   "rule_thresholds": lambda *a: {}}.items():
    monkeypatch.setattr(ecg, name, fn)
  monkeypatch.setattr(ecg.common, "roc_figure", lambda *a: None)
  monkeypatch.setattr(ecg.common, "pyod_missing", lambda: None)
  result = ecg.main(["--protocols", "ucr", "random80", "--networks", "mlp", "--seeds", "3",
                     "--seed", "4", "--anchors", "IForest", "KNN", "--out", str(tmp_path),
                     "--cache", ""])
  for protocol in ("ucr", "random80"):
    for name in ("AE-mlp", "IForest", "KNN"):
      runs = [(seed, split) for p, d, seed, split in calls if (p, d) == (protocol, name)]
      assert runs == [(4, 4), (5, 5), (6, 6)], (protocol, name, runs)  # same seeds and splits
  summary = {(s["protocol"], s["detector"]): s for s in result["summary"]}
  assert summary["random80", "KNN"]["seeds"] == 3
  assert summary["random80", "KNN"]["roc_auc"] == pytest.approx(0.4 + 0.5)  # mean of 0.8..1.0


def test_ecg_script_runs_an_ensemble_of_members_as_one_row_of_ours():
  """`--members` adds the EnsembleDetector row 'AE-ensemble' (no single detectors unless
  --networks asks), fitted on the fit beats and scored on the test beats (synthetic)."""
  from experiments import anomaly_ecg5000 as ecg
  members = [{"score": "mse", "widths": [16]}, {"score": "gaussian", "latent_dim": 3}]
  args = ecg.parse(["--members", json.dumps(members), "--ensemble", "1", "--max-steps", "40",
                    "--threshold", "max"])
  assert args.networks == [] and args.members == members
  assert ecg.parse(["--members", json.dumps(members), "--networks", "mlp"]).networks == ["mlp"]
  rng = np.random.default_rng(0)
  basis = rng.normal(size=(2, 10))
  normal = lambda n: (rng.normal(size=(n, 2)) @ basis + 0.05 * rng.normal(size=(n, 10))
                      ).astype(np.float32)
  test_x = np.concatenate([normal(60), 3 * rng.normal(size=(20, 10)).astype(np.float32)])
  test_y = np.r_[np.zeros(60, int), np.ones(20, int)]
  val_x = np.concatenate([normal(20), 3 * rng.normal(size=(5, 10)).astype(np.float32)])
  splits = normal(250), (val_x, np.r_[np.zeros(20, int), np.ones(5, int)]), test_x, test_y
  row, det, scores = ecg.run_detector(args, None, None, "ucr", 0, splits)
  assert row["detector"] == "AE-ensemble" and len(row["steps"]) == 2
  assert [m.score for m in det.members_] == ["mse", "gaussian"]
  assert det.threshold == "max" and row["roc_auc"] > 0.95
  np.testing.assert_array_equal(scores, det.decision_function(test_x))
  assert row["accuracy@max"] == pytest.approx(np.mean((scores > det.threshold_) == test_y))


@pytest.mark.slow
@pytest.mark.shared_data("ecg5000")
def test_ecg5000_script_smoke(tmp_path, fewer_optimizations):
  from experiments import anomaly_ecg5000
  anomaly_ecg5000.main(["--smoke", "--out", str(tmp_path), "--cache", ""])
  assert (tmp_path / "table.md").exists() and (tmp_path / "result.json").exists()


@pytest.mark.slow
@pytest.mark.shared_data("mnist_t10k")
def test_mnist_one_class_script_smoke(tmp_path, fewer_optimizations):
  from experiments import anomaly_mnist
  anomaly_mnist.main(["--smoke", "--out", str(tmp_path), "--cache", ""])
  assert (tmp_path / "table.md").exists() and (tmp_path / "result.json").exists()


def test_registries_complete_on_package_import_and_array_batches_resume():
  import ae_jax.anomaly as pkg
  from ae_jax import data as data_lib
  assert set(pkg.SCORES.names()) >= {"gaussian", "mse", "mae", "elbo", "nll"}
  assert set(pkg.THRESHOLDS.names()) == {"f1_best", "log_tukey", "max", "mean_std",
                                         "percentile", "tukey"}
  x = np.arange(40, dtype=np.float32).reshape(20, 2)
  loader = data_lib.ArrayBatches(data_lib.sources.make_array_data(x, None, "t"),
                                 batch_size=6, seed=1)
  it = iter(loader)
  for _ in range(4):  # crosses an epoch boundary (3 batches of 6 per epoch)
    next(it)
  state = it.get_state()
  expected = [next(it)["x"] for _ in range(3)]
  again = iter(loader)
  again.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(again)["x"], want)
  seen = np.concatenate([next(iter(loader))["x"]])
  assert seen.shape == (6, 2) and len(np.unique(seen[:, 0])) == 6
  with pytest.raises(DataError, match="batch_size"):
    data_lib.ArrayBatches(data_lib.sources.make_array_data(x, None, "t"), batch_size=21,
                          seed=0)


def test_tukey_threshold():
  # Quartiles of 1..9 (linear interpolation): 3 and 7; fence 7 + 1.5 * 4 = 13.
  assert THRESHOLDS.get("tukey")(np.arange(1.0, 10.0)) == pytest.approx(13.0)


def test_log_tukey_threshold():
  # log scores 0..8 (e^0 .. e^8): quartiles 2 and 6, fence exp(6 + 1.5 * 4) = e^12.
  assert THRESHOLDS.get("log_tukey")(np.exp(np.arange(9.0))) == pytest.approx(np.exp(12.0))
  with pytest.raises(DataError, match="positive"):
    THRESHOLDS.get("log_tukey")(np.array([0.0, 1.0, 2.0]))


def test_knn_distance_skips_the_nearest_and_averages_the_next_k():
  from ae_jax.anomaly import scores
  codes = np.array([[0.0], [1.0], [3.0], [10.0]], np.float32)
  z = np.array([[0.0], [2.0]], np.float32)
  got = np.asarray(scores.knn_distance(z, codes, k=2))
  # z=0: squared distances 0, 1, 9, 100 -> skip 0, mean(1, 9) = 5.
  # z=2: squared distances 4, 1, 1, 64 -> sorted 1, 1, 4, 64 -> skip one, mean(1, 4) = 2.5.
  np.testing.assert_allclose(got, [5.0, 2.5], rtol=1e-6)


@pytest.mark.parametrize("score", ["knn", "latent_knn"])
def test_latent_knn_scores_flag_outliers_and_survive_save_load(score, tmp_path):
  x, y = two_clusters()
  det = AutoencoderDetector(score=score, ensemble=2, max_steps=200, epochs=200,
                            contamination=0.05, widths=(32, 16), latent_dim=2, seed=0).fit(x)
  from sklearn.metrics import roc_auc_score
  scores = det.decision_function(x)
  assert roc_auc_score(y, scores) > 0.95
  m = det.stats_.codes.shape
  assert m[0] == 2 and m[2] == 2 and m[1] == len(det.holdout_indices(len(x))[0])
  # Training codes are whitened: about zero mean and unit covariance.
  c = np.asarray(det.stats_.codes[0], np.float64)
  np.testing.assert_allclose(c.mean(0), 0.0, atol=1e-3)
  np.testing.assert_allclose(np.cov(c.T, bias=True), np.eye(2), atol=1e-2)
  back = AutoencoderDetector.load(det.save(tmp_path / "det"))
  np.testing.assert_allclose(back.decision_function(x), scores, rtol=1e-5)


def test_auto_network_follows_the_rank_of_the_examples():
  from ae_jax.anomaly.detector import network_for
  assert network_for("auto", (6,)) == "mlp"
  assert network_for("auto", (16, 1)) == "conv1d"
  assert network_for("auto", (8, 8, 1)) == "conv2d"
  assert network_for("mlp", (8, 8, 1)) == "mlp"
  with pytest.raises(DataError, match="auto"):
    network_for("auto", (2, 2, 2, 2))
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(64, 8, 8, 1)).astype(np.float32)
  det = AutoencoderDetector(network="auto", channels=(4,), latent_dim=2, ensemble=1,
                            max_steps=3, val_fraction=0.0, scaling="none").fit(images)
  assert det.config_.model.network == "conv2d"
  assert det.decision_function(images[:5]).shape == (5,)


def test_trimmed_ae_leaves_the_worst_examples_out_of_the_training_loss():
  import jax
  from ae_jax import configs
  from ae_jax.families import build_model, get_family
  from ae_jax.train import init_params
  cfg = configs.get_preset("default")
  cfg.model.family, cfg.model.widths, cfg.model.latent_dim = "trimmed_ae", (8,), 2
  cfg.model.dropout = 0.0
  cfg.objective.trim = 0.25
  model = build_model(cfg, (4,))
  params = init_params(model, (4,), jax.random.key(0))
  x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
  x[3] += 20.0  # the two worst-reconstructed examples
  x[6] -= 30.0
  keys = jax.random.split(jax.random.key(1), 8)
  plain = get_family("ae").terms(model, params, {"x": x}, keys, 0, cfg, True)["loss"]
  trimmed = get_family("trimmed_ae").terms(model, params, {"x": x}, keys, 0, cfg, True)
  keep = np.asarray(plain) <= np.quantile(np.asarray(plain), 0.75)
  assert not keep[3] and not keep[6] and keep.sum() == 6
  np.testing.assert_allclose(float(np.mean(trimmed["loss"])), float(np.mean(plain[keep])),
                             rtol=1e-5)
  evaluated = get_family("trimmed_ae").terms(model, params, {"x": x}, keys, None, cfg, False)
  np.testing.assert_allclose(evaluated["loss"], plain, rtol=1e-6)
  with pytest.raises(ConfigError, match="trim"):
    AutoencoderDetector(trim=0.6)
  with pytest.raises(ConfigError, match="family='ae'"):
    AutoencoderDetector(trim=0.1, family="vae", score="elbo")


def test_combined_score_standardises_both_terms_on_the_held_out_examples(tmp_path):
  from ae_jax.anomaly import scores
  x, y = two_clusters()
  det = AutoencoderDetector(score="combined", ensemble=1, max_steps=200, epochs=200,
                            contamination=0.05, widths=(32, 16), latent_dim=2, seed=0).fit(x)
  _, held = det.holdout_indices(len(x))
  assert len(held) >= anomaly.detector.MIN_HELD_OUT
  p0 = __import__("jax").tree.map(lambda a: a[0], det.params_)
  st0 = __import__("jax").tree.map(lambda a: a[0], det.stats_)
  terms = np.asarray(scores.score_terms(det.model_, p0, det.scaler_.transform(x[held]), st0),
                     np.float64)
  np.testing.assert_allclose(np.asarray(st0.term_mean), terms.mean(0), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(st0.term_std), terms.std(0), rtol=1e-4)
  # On the held-out examples each standardised term has mean 0, so their sum has too.
  got = det.decision_function(x[held])
  np.testing.assert_allclose(got.mean(), 0.0, atol=1e-3)
  want = ((terms - terms.mean(0)) / terms.std(0)).sum(-1)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)
  from sklearn.metrics import roc_auc_score
  assert roc_auc_score(y, det.decision_function(x)) > 0.95
  back = AutoencoderDetector.load(det.save(tmp_path / "det"))
  np.testing.assert_allclose(back.decision_function(x), det.decision_function(x),
                             rtol=1e-5, atol=1e-5)


def test_mse_gaussian_score_is_the_standardised_sum_of_the_mse_and_gaussian_scores():
  x, y = two_clusters()
  kw = dict(ensemble=1, max_steps=200, epochs=200, contamination=0.05, widths=(32, 16),
            latent_dim=2, seed=0)
  det = AutoencoderDetector(score="mse_gaussian", **kw).fit(x)
  # the same seed trains the same network, whatever the score: the members' scores are
  # the detectors with score 'mse' and 'gaussian'
  mse = AutoencoderDetector(score="mse", **kw).fit(x)
  gauss = AutoencoderDetector(score="gaussian", **kw).fit(x)
  _, held = det.holdout_indices(len(x))
  terms = np.stack([mse.decision_function(x[held]), gauss.decision_function(x[held])], -1)
  np.testing.assert_allclose(np.asarray(det.stats_.term_mean[0]), terms.mean(0), rtol=1e-3)
  np.testing.assert_allclose(np.asarray(det.stats_.term_std[0]), terms.std(0), rtol=1e-3)
  both = np.stack([mse.decision_function(x), gauss.decision_function(x)], -1)
  want = ((both - terms.mean(0)) / terms.std(0)).sum(-1)
  np.testing.assert_allclose(det.decision_function(x), want, rtol=1e-3, atol=1e-3)
  from sklearn.metrics import roc_auc_score
  assert roc_auc_score(y, det.decision_function(x)) > 0.95
  # the same terms, the larger standardised one
  top = AutoencoderDetector(score="mse_gaussian_max", **kw).fit(x)
  np.testing.assert_allclose(top.decision_function(x),
                             ((both - terms.mean(0)) / terms.std(0)).max(-1), rtol=1e-3,
                             atol=1e-3)
  # a score without terms keeps the neutral term statistics (nothing is fitted for them)
  np.testing.assert_array_equal(np.asarray(mse.stats_.term_mean), 0.0)
  np.testing.assert_array_equal(np.asarray(mse.stats_.term_std), 1.0)


def test_eval_every_spreads_evaluations_over_an_epoch_or_the_budget():
  # 300 training examples at batch 64 = 4 steps an epoch; 500 epochs capped at 1,000 steps
  def every(value):
    det = AutoencoderDetector(eval_every=value, epochs=500, max_steps=1000)
    cfg = det._build_config((5,), 300)  # pylint: disable=protected-access
    assert cfg.train.num_steps == 1000 and cfg.train.log_every == cfg.train.eval_every
    return cfg.train.eval_every
  assert every(None) == every("epoch") == 4          # once an epoch
  assert every("budget") == 50                       # 20 evaluations over 1,000 steps
  assert every(7) == 7
  for bad in (0, -3, "often", 2.5, True):
    with pytest.raises(ConfigError, match="eval_every must be a positive integer, None or "
                                          "one of \\('epoch', 'budget'\\)"):
      AutoencoderDetector(eval_every=bad)


def test_activation_reaches_the_network_and_bad_names_are_refused():
  """activation= sets the hidden layers' activation (model.activation): the same seed and
  data score differently under tanh than under relu; get_params carries it (saved
  detectors rebuild with it); an unknown name is refused with the valid ones."""
  assert AutoencoderDetector()._build_config((5,), 300).model.activation == "relu"  # pylint: disable=protected-access
  det = AutoencoderDetector(activation="tanh", ensemble=1, max_steps=30, val_fraction=0.0)
  assert det._build_config((5,), 300).model.activation == "tanh"  # pylint: disable=protected-access
  assert det.get_params()["activation"] == "tanh"
  x = np.random.default_rng(0).normal(size=(120, 5)).astype(np.float32)
  relu = AutoencoderDetector(ensemble=1, max_steps=30, val_fraction=0.0).fit(x)
  tanh = det.fit(x)
  assert tanh.models_[0].config.model.activation == "tanh"
  assert not np.allclose(tanh.decision_scores_, relu.decision_scores_)
  with pytest.raises(ConfigError, match="activation must be one of .*relu.*tanh"):
    AutoencoderDetector(activation="swishy")
