"""EnsembleDetector: members that differ in more than the seed, standardised and combined."""

import chex
import numpy as np
import pytest

from ae_jax import cli
from ae_jax.anomaly import THRESHOLDS, AutoencoderDetector, EnsembleDetector, load_detector
from ae_jax.anomaly.detector import MIN_HELD_OUT
from ae_jax.errors import CheckpointError, ConfigError, DataError

# Two members that differ in sizes, score and ensemble size: their raw scores live on
# different scales (mean squared residual vs the Gaussian score of residuals and codes).
MEMBERS = [{"score": "mse", "ensemble": 1, "max_steps": 60},
           {"score": "gaussian", "widths": [16], "latent_dim": 3, "ensemble": 2,
            "max_steps": 60}]


def _data(seed=0, n=300, d=6, outliers=20):
  """(fit x (n, d) on a 2-d plane, test x, test labels): outliers leave the plane."""
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(2, d))
  plane = lambda m: rng.normal(size=(m, 2)) @ basis + 0.05 * rng.normal(size=(m, d))
  far = rng.normal(size=(outliers, d)) * 3.0
  x_test = np.concatenate([plane(100), far]).astype(np.float32)
  return plane(n).astype(np.float32), x_test, np.r_[np.zeros(100), np.ones(outliers)]


@pytest.fixture(scope="module")
def fitted():
  x, x_test, y_test = _data()
  return EnsembleDetector(MEMBERS, seed=3).fit(x), x, x_test, y_test


def test_scores_are_the_mean_of_members_standardised_on_the_held_out_part(fitted):
  det, x, x_test, _ = fitted
  _, held = det.holdout_indices(len(x))
  assert len(held) >= MIN_HELD_OUT
  # Every member holds out the same examples, as a lone detector with the same seed does.
  for member in det.members_:
    np.testing.assert_array_equal(member.holdout_indices(len(x))[1], held)
    assert member.seed == 3
  by_hand = []
  for member in det.members_:
    ref = member.decision_function(x[held]).astype(np.float64)
    by_hand.append((member.decision_function(x_test) - ref.mean()) / ref.std())
  got = det.decision_function(x_test)
  chex.assert_shape(got, (len(x_test),))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, np.mean(by_hand, 0), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(det.member_scores(x_test), np.stack(by_hand), rtol=1e-4, atol=1e-5)
  # The members' raw scales differ by far more than their standardised ones.
  raw = [m.decision_function(x_test).mean() for m in det.members_]
  assert max(raw) / min(raw) > 3.0
  # The combined held-out scores have mean 0; the rule's threshold is read on them.
  np.testing.assert_allclose(det.reference_scores_.mean(), 0.0, atol=1e-5)
  np.testing.assert_allclose(det.threshold_, THRESHOLDS.get("tukey")(det.reference_scores_))
  np.testing.assert_array_equal(det.predict(x_test), (got > det.threshold_).astype(int))


def test_flags_outliers_off_the_plane(fitted):
  from sklearn.metrics import roc_auc_score
  det, _, x_test, y_test = fitted
  assert roc_auc_score(y_test, det.decision_function(x_test)) > 0.95
  flags = det.predict(x_test)
  assert flags[y_test == 1].mean() > 0.9 and flags[y_test == 0].mean() < 0.2


def test_max_combination_and_mean_differ_only_in_the_reduction(fitted):
  det, x, x_test, _ = fitted
  z = det.member_scores(x_test)
  other = EnsembleDetector(MEMBERS, seed=3, combine="max").fit(x)
  np.testing.assert_allclose(other.member_scores(x_test), z, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(other.decision_function(x_test), z.max(0), rtol=1e-4, atol=1e-5)


def test_save_load_round_trip(fitted, tmp_path):
  det, _, x_test, _ = fitted
  det.feature_names_in_ = [f"f{i}" for i in range(x_test.shape[1])]
  det.save(tmp_path / "ens")
  back = load_detector(tmp_path / "ens")
  assert isinstance(back, EnsembleDetector)
  assert back.get_params() == det.get_params()
  assert back.feature_names_in_ == det.feature_names_in_
  np.testing.assert_array_equal(back.decision_function(x_test), det.decision_function(x_test))
  assert back.threshold_ == det.threshold_
  np.testing.assert_array_equal(back.labels_, det.labels_)
  assert isinstance(load_detector(tmp_path / "ens" / "member_0"), AutoencoderDetector)
  (tmp_path / "ens" / "ensemble.npz").unlink()
  with pytest.raises(CheckpointError, match="no saved ensemble"):
    EnsembleDetector.load(tmp_path / "ens")


def test_bad_configuration_and_input_get_clear_errors(fitted):
  det, _, x_test, _ = fitted
  with pytest.raises(ConfigError, match="at least two"):
    EnsembleDetector([{"score": "mse"}])
  with pytest.raises(ConfigError, match=r"member 1 sets \['seed'\]"):
    EnsembleDetector([{}, {"seed": 4}])
  with pytest.raises(ConfigError, match=r"member 0: unknown .*\['widht'\]"):
    EnsembleDetector([{"widht": [8]}, {}])
  with pytest.raises(ConfigError, match="member 1: .*score"):
    EnsembleDetector([{}, {"score": "nope"}])
  with pytest.raises(ConfigError, match="combine"):
    EnsembleDetector([{}, {}], combine="median")
  with pytest.raises(DataError, match="not fitted"):
    EnsembleDetector([{}, {}]).decision_function(x_test)
  with pytest.raises(DataError, match="shape"):
    det.decision_function(x_test[:, :4])
  with pytest.raises(DataError, match="NaN"):
    det.decision_function(np.where(np.eye(len(x_test), x_test.shape[1]) > 0, np.nan, x_test))


def test_f1_best_reads_labels_of_the_held_out_part():
  x, _, _ = _data(seed=1)
  y = np.zeros(len(x), int)
  det = EnsembleDetector(MEMBERS, threshold="f1_best")
  with pytest.raises(ConfigError, match="needs labels"):
    det.fit(x)
  _, held = det.holdout_indices(len(x))
  y[held[:5]] = 1
  det.fit(x, y)
  assert det.threshold_ == THRESHOLDS.get("f1_best")(
      det.reference_scores_, val_scores=det.decision_scores_[held], val_labels=y[held])


def test_detect_command_fits_saves_and_loads_an_ensemble(tmp_path, capsys):
  x, x_test, y_test = _data(seed=2)
  np.savez(tmp_path / "fit.npz", x=x)
  np.savez(tmp_path / "new.npz", x=x_test, label=y_test.astype(int))
  members = '[{"score": "mse", "ensemble": 1}, {"widths": [16], "latent_dim": 3}]'
  args = ["detect", "--fit", str(tmp_path / "fit.npz"), "--score", str(tmp_path / "new.npz"),
          "--labels", "label", "--max-steps", "60", "--ensemble", "1", "--members", members]
  assert cli.main([*args, "--out", str(tmp_path / "a.npz"), "--save",
                   str(tmp_path / "det")]) == 0
  assert ("2 detectors: ae/mlp/mse x1, ae/mlp/gaussian x1; the mean of their standardised "
          "scores") in capsys.readouterr().out
  assert cli.main(["detect", "--load", str(tmp_path / "det"), "--score",
                   str(tmp_path / "new.npz"), "--out", str(tmp_path / "b.npz")]) == 0
  with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
    np.testing.assert_array_equal(a["scores"], b["scores"])
    np.testing.assert_array_equal(a["flags"], b["flags"])
  det = load_detector(tmp_path / "det")
  assert [m.score for m in det.members_] == ["mse", "gaussian"]
  assert [m.max_steps for m in det.members_] == [60, 60]
  for bad, message in (("[{", "not valid JSON"), ('{"score": "mse"}', "list of dicts"),
                       ('[{"seed": 1}, {}]', "member 0 sets ['seed']")):
    assert cli.main([*args, "--members", bad, "--out", str(tmp_path / "c.npz")]) == 2
    assert message in capsys.readouterr().err
  assert not (tmp_path / "c.npz").exists()
  assert cli.main(["detect", "--load", str(tmp_path / "det"), "--score",
                   str(tmp_path / "new.npz"), "--members", members]) == 2
  assert "--members set up" in capsys.readouterr().err
  assert cli.main(["detect", "--fit", str(tmp_path / "fit.npz"), "--combine", "max"]) == 2
  assert "--combine applies" in capsys.readouterr().err
