"""Tests of the MNIST one-class development protocol (experiments.anomaly_mnist_dev)."""

import numpy as np
import pytest

from ae_jax.anomaly import AutoencoderDetector
from ae_jax.data.sources import make_array_data
from experiments import _anomaly_common as common
from experiments import anomaly_mnist_dev as dev


def test_dev_split_cuts_the_train_split_into_disjoint_parts():
  x = np.arange(50, dtype=np.float32).reshape(50, 1)
  train = make_array_data(x, np.arange(50) % 10, "t")
  fit_part, val_part = dev.dev_split(train, 12, seed=3)
  assert len(fit_part) == 38 and len(val_part) == 12
  got = np.concatenate([fit_part.x[:, 0], val_part.x[:, 0]])
  np.testing.assert_array_equal(np.sort(got), x[:, 0])  # every image once, in one part
  again = dev.dev_split(train, 12, seed=3)[1]
  np.testing.assert_array_equal(again.x, val_part.x)  # the seed fixes the cut


def test_rescored_detector_equals_one_fitted_with_that_score():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(120, 6)).astype(np.float32)
  kw = dict(ensemble=1, max_steps=20, widths=(8,), latent_dim=2, seed=1)
  base = AutoencoderDetector(score="gaussian", **kw).fit(x)
  direct = AutoencoderDetector(score="knn", **kw).fit(x)
  probe = rng.normal(size=(30, 6)).astype(np.float32) * 2
  np.testing.assert_allclose(common.rescored(base, "knn").decision_function(probe),
                             direct.decision_function(probe), rtol=1e-5, atol=1e-5)
  # the original keeps its own score
  np.testing.assert_allclose(base.decision_function(probe),
                             AutoencoderDetector(score="gaussian", **kw).fit(x)
                             .decision_function(probe), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="statistics"):
    common.rescored(base, "mae")
  # a score of standardised terms gets its terms' held-out statistics, as fit sets them
  combined = AutoencoderDetector(score="combined", **kw).fit(x)
  np.testing.assert_allclose(common.rescored(base, "combined", x).decision_function(probe),
                             combined.decision_function(probe), rtol=1e-4, atol=1e-4)
  assert not np.allclose(common.rescored(base, "combined", x).decision_function(probe),
                         common.rescored(base, "knn").decision_function(probe))
  with pytest.raises(ValueError, match="x_fit"):
    common.rescored(base, "combined")


@pytest.mark.slow
@pytest.mark.shared_data("mnist_t10k")
def test_dev_script_smoke_scores_every_variant_score_and_pair(tmp_path):
  result = dev.main(["--smoke", "--out", str(tmp_path), "--cache", "",
                     "--pairs", "mlp/knn+conv/knn"])
  names = {r["detector"] for r in result["table"]}
  assert names == {f"{v}/{s}" for v in ("mlp", "conv") for s in
                   ("mse", "gaussian", "knn", "latent_knn")} | {"mlp/knn+conv/knn", "KNN", "PCA"}
  assert all(0.0 <= r["mean ROC-AUC"] <= 1.0 for r in result["table"])
  assert "TEST unused" in result["protocol"]
  assert (tmp_path / "table.md").exists()


def test_choose_takes_the_best_single_detector_row_and_builds_the_test_command():
  table = [{"detector": "mlp/knn", "mean ROC-AUC": 0.93},
           {"detector": "conv/latent_knn", "mean ROC-AUC": 0.95},
           {"detector": "mlp/knn+conv/knn", "mean ROC-AUC": 0.97},  # a pair: not a candidate
           {"detector": "KNN", "mean ROC-AUC": 0.99}]  # an anchor: not a candidate
  variants = {"mlp": {"network": "mlp", "ensemble": 1},
              "conv": {"network": "auto", "channels": [8, 16], "ensemble": 1}}
  name, args = dev.choose(table, variants)
  assert name == "conv/latent_knn"
  assert args == ["--network", "auto", "--scores", "latent_knn",
                  "--detector", '{"channels": [8, 16]}']
  assert dev.choose(table[:1], variants)[1] == ["--network", "mlp", "--scores", "knn"]
  with pytest.raises(ValueError, match="no variant"):
    dev.choose(table[3:], variants)
