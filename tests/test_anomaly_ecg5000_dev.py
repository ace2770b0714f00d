"""Tests of the ECG5000 development protocol (experiments.anomaly_ecg5000_dev)."""

import json

import numpy as np
import pytest

from experiments import anomaly_ecg5000 as ecg
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
  # An incumbent already scored on TEST stays chosen unless beaten by the margin.
  assert dev.choose(table, variants, "mlp/gaussian", 0.011)[:2] == ("mlp/gaussian", "max")
  assert dev.choose(table, variants, "mlp/gaussian", 0.009)[:2] == ("wide/combined", "tukey")
  with pytest.raises(ValueError, match="incumbent 'mlp/mse' is not a row"):
    dev.choose(table, variants, "mlp/mse", 0.001)


def test_choose_prints_the_members_of_a_chosen_ensemble():
  rules = {f"accuracy@{r}": 0.5 for r in dev.LABEL_FREE_RULES}
  table = [{"detector": "mlp/mse", "roc_auc": 0.97, **rules},
           {"detector": "pair/ensemble", "roc_auc": 0.98, **rules, "accuracy@max": 0.9}]
  members = [{"score": "mse"}, {"network": "conv1d", "score": "mse"}]
  variants = {"mlp": {"network": "mlp"}, "pair": {"members": members, "combine": "max"}}
  name, rule, args = dev.choose(table, variants)
  assert (name, rule) == ("pair/ensemble", "max")
  assert args == ["--protocols", "ucr", "--members", json.dumps(members), "--threshold", "max",
                  "--combine", "max"]
  assert ecg.parse(args).members == members   # the TEST script reads what choose prints


@pytest.mark.slow
@pytest.mark.shared_data("ecg5000")
@pytest.mark.parametrize("split", ["cuts", "kfold"])
def test_dev_script_smoke_never_loads_test(tmp_path, monkeypatch, split):
  from ae_jax import data as data_lib
  loaded = []
  real = data_lib.load
  monkeypatch.setattr(data_lib, "load", lambda name, *a, **k: loaded.append((name, a)) or
                      real(name, *a, **k))
  result = dev.main(["--smoke", "--split", split, "--out", str(tmp_path), "--cache", ""])
  assert loaded == [("ecg5000", ("train+validation",))]
  table = {r["detector"]: r for r in result["table"]}
  assert set(table) >= {"mlp/combined", "mlp/gaussian", "KNN"}
  assert table["mlp/gaussian"]["cuts"] == (2 if split == "kfold" else 1)
  assert "roc_auc_minus_knn" in table["mlp/gaussian"]
  assert "TEST unused" in result["protocol"]
  if split == "kfold":   # every abnormal beat is validated in every fold
    assert "every abnormal beat" in result["protocol"]
  assert result["chosen"]["rule"] in dev.LABEL_FREE_RULES


def test_dev_folds_hold_out_each_normal_beat_once_and_validate_on_every_abnormal_beat():
  x = np.arange(40, dtype=np.float32).reshape(40, 1)
  y = np.where(np.arange(40) % 4 == 0, 3, 1)  # 10 abnormal beats, 30 normal
  parts = dev.dev_folds(x, y, 4, seed=2)
  assert len(parts) == 4
  held_normal = []
  for fit_x, val_x, val_y in parts:
    assert np.all(fit_x[:, 0] % 4 != 0)  # only normal beats are fitted on
    assert not set(fit_x[:, 0]) & set(val_x[:, 0])
    np.testing.assert_array_equal(val_y, (val_x[:, 0] % 4 == 0).astype(int))
    assert set(val_x[val_y == 1, 0]) == set(x[y != 1, 0])  # every abnormal beat
    held_normal += list(val_x[val_y == 0, 0])
    assert len(fit_x) + np.sum(val_y == 0) == 30
  assert sorted(held_normal) == sorted(x[y == 1, 0])  # each normal beat held out once
  np.testing.assert_array_equal(dev.dev_folds(x, y, 4, seed=2)[1][1], parts[1][1])
  with pytest.raises(ValueError, match="--folds"):
    dev.dev_folds(x, y, 1, seed=0)


def test_weighted_rule_accuracy_estimates_accuracy_at_another_class_balance():
  y = np.array([0, 0, 1, 1, 1, 1])
  w = dev.class_weights(y, normal_share=0.6)
  np.testing.assert_allclose(w, [0.3, 0.3, 0.1, 0.1, 0.1, 0.1])
  reference = np.array([1.0, 2.0, 3.0, 4.0])
  scores = np.array([0.5, 4.5, 4.5, 9.0, 3.0, 0.1])
  got = dev.rule_accuracies(reference, scores, y, contamination=0.5, weights=w)
  # max = 4 flags 4.5, 4.5, 9: normal beats right 1 of 2 (0.3), abnormal 2 of 4 (0.2).
  assert got["accuracy@max"] == pytest.approx(0.5)
  # percentile 50 % = 2.5 flags 4.5, 4.5, 9, 3: normal 0.3, abnormal 3 of 4 (0.3).
  assert got["accuracy@percentile"] == pytest.approx(0.6)
  with pytest.raises(ValueError, match="normal and abnormal"):
    dev.class_weights(np.array([1, 1]), 0.5)
