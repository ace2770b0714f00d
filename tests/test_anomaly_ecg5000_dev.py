"""Tests of the ECG5000 development protocol (experiments.anomaly_ecg5000_dev)."""

import numpy as np
import pytest

from experiments import anomaly_ecg5000_dev as dev


def test_dev_cut_fits_on_normal_beats_and_never_reuses_a_validation_beat():
  x = np.arange(40, dtype=np.float32).reshape(40, 1)
  y = np.where(np.arange(40) % 4 == 0, 2, 1)  # every 4th beat abnormal
  fit_x, val_x, val_y = dev.dev_cut(x, y, 10, seed=5)
  assert len(val_x) == 10 and len(fit_x) == np.sum(y == 1) - np.sum(val_y == 0)
  assert not set(fit_x[:, 0]) & set(val_x[:, 0])
  assert np.all(fit_x[:, 0] % 4 != 0)  # only normal beats are fitted on
  np.testing.assert_array_equal(val_y, (val_x[:, 0] % 4 == 0).astype(int))
  np.testing.assert_array_equal(dev.dev_cut(x, y, 10, seed=5)[1], val_x)


def test_rule_accuracies_against_hand_computed_thresholds():
  reference = np.array([1.0, 2.0, 3.0, 4.0])
  scores = np.array([0.5, 2.5, 3.5, 4.5, 9.0])
  y = np.array([0, 0, 1, 1, 1])
  got = dev.rule_accuracies(reference, scores, y, contamination=0.5)
  # percentile 50 % of reference = 2.5 -> flags 3.5, 4.5, 9: all right.
  assert got["accuracy@percentile"] == pytest.approx(1.0)
  # max = 4 -> flags 4.5, 9 -> misses 3.5: 4 of 5.
  assert got["accuracy@max"] == pytest.approx(0.8)
  # mean + std = 2.5 + 1.118 = 3.618 -> flags 4.5, 9: 4 of 5.
  assert got["accuracy@mean_std"] == pytest.approx(0.8)
  # tukey: Q1 1.75, Q3 3.25 -> fence 5.5 -> flags 9 only: 3 of 5.
  assert got["accuracy@tukey"] == pytest.approx(0.6)
  negative = dev.rule_accuracies(reference - 2.0, scores, y, contamination=0.5)
  assert negative["accuracy@log_tukey"] is None


def test_choose_takes_the_best_roc_row_then_its_most_accurate_label_free_rule():
  rules = {f"accuracy@{r}": 0.5 for r in dev.LABEL_FREE_RULES}
  table = [{"detector": "mlp/gaussian", "roc_auc": 0.97, **rules, "accuracy@max": 0.99},
           {"detector": "wide/combined", "roc_auc": 0.98, **rules, "accuracy@tukey": 0.9,
            "accuracy@log_tukey": None},
           {"detector": "KNN", "roc_auc": 0.999, **rules}]
  variants = {"mlp": {"network": "mlp"}, "wide": {"network": "mlp", "widths": [512, 256]}}
  name, rule, args = dev.choose(table, variants)
  assert (name, rule) == ("wide/combined", "tukey")
  assert args == ["--protocols", "ucr", "--networks", "mlp", "--scores", "combined",
                  "--threshold", "tukey", "--detector", '{"widths": [512, 256]}']
  with pytest.raises(ValueError, match="no variant"):
    dev.choose(table[2:], variants)


@pytest.mark.slow
@pytest.mark.shared_data("ecg5000")
def test_dev_script_smoke_never_loads_test(tmp_path, monkeypatch):
  from ae_jax import data as data_lib
  loaded = []
  real = data_lib.load
  monkeypatch.setattr(data_lib, "load", lambda name, *a, **k: loaded.append((name, a)) or
                      real(name, *a, **k))
  result = dev.main(["--smoke", "--out", str(tmp_path), "--cache", ""])
  assert loaded == [("ecg5000", ("train+validation",))]
  assert {r["detector"] for r in result["table"]} >= {"mlp/combined", "mlp/gaussian", "KNN"}
  assert "TEST unused" in result["protocol"]
  assert result["chosen"]["rule"] in dev.LABEL_FREE_RULES
