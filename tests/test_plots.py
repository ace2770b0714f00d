"""ae_jax.plots: each figure has its panels, labels and numbers; PNGs are small."""

import numpy as np
import pytest
from PIL import Image

from ae_jax import plots


def _images(n=8, seed=0):
  return np.random.default_rng(seed).random((n, 8, 8, 1)).astype(np.float32)


def test_image_grids_have_one_row_per_entry_and_save_small_pngs(tmp_path):
  x = _images()
  fig = plots.before_after(x, x, x, extra={"biharmonic": x}, n=5)
  assert len(fig.axes) == 4 * 5
  assert [fig.axes[5 * r].get_ylabel() for r in range(4)] == [
      "input", "autoencoder", "biharmonic", "original"]
  path = plots.save(fig, tmp_path / "sub" / "grid.png")
  with Image.open(path) as img:
    assert img.mode == "P" and img.size[0] > 300
  assert path.stat().st_size < 150_000
  assert len(plots.denoising(x, x, x, n=3).axes) == 9
  assert len(plots.samples_and_interpolation(x[:6], x[:8]).axes) == 16


def test_sequences_are_drawn_as_curves():
  seqs = np.random.default_rng(0).normal(size=(5, 140, 1))
  fig = plots.reconstructions(seqs, seqs + 0.1, n=3)
  assert len(fig.axes) == 3
  assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_xlabel() == "time step"
  np.testing.assert_allclose(fig.axes[1].lines[1].get_ydata(), seqs[1, :, 0] + 0.1)


def test_activation_histogram_reports_l0_and_dead_latents():
  z = np.array([[1.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0], [1.0, 0.0, 0.0, 0.0]])
  fig = plots.activation_histogram(z)
  # L0 = (2 + 1 + 1) / 3; latents 1 and 2 never fire.
  assert fig.texts[0].get_text() == "L0 = 1.33 of 4 latents, 2 dead"
  heights = [p.get_height() for p in fig.axes[1].patches]
  np.testing.assert_allclose(heights, [2 / 3, 2 / 3, 0, 0])


def test_roc_legend_gives_the_auc_and_scatter_checks_its_input():
  labels = np.array([0, 0, 1, 1])
  scores = np.array([0.1, 0.4, 0.35, 0.8])  # 3 of the 4 (anomaly, normal) pairs ordered
  fig = plots.roc_curves({"det": (labels, scores)})
  assert fig.axes[0].get_legend().get_texts()[0].get_text() == "det (AUC 0.750)"
  assert fig.axes[0].get_xlabel() == "false positive rate"
  z = np.random.default_rng(0).normal(size=(20, 2))
  fig = plots.latent_scatter({"AE": z, "PCA": z}, np.arange(20) % 10)
  assert [a.get_title() for a in fig.axes[:2]] == ["AE", "PCA"]
  with pytest.raises(ValueError, match=r"\(N, 2\).*'PCA'.*\(20, 3\)"):
    plots.latent_scatter({"PCA": np.zeros((20, 3))})


def test_score_histogram_rate_distortion_and_bars():
  scores = np.array([1.0, 2.0, 3.0, 100.0])
  fig = plots.score_histogram(scores, np.array([0, 0, 0, 1]), threshold=10.0)
  ax = fig.axes[0]
  assert ax.lines[0].get_xdata()[0] == pytest.approx(1.0)  # log10(10)
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
      "normal (3)", "anomalous (1)", "threshold"]
  fig = plots.rate_distortion({"JPEG": ([300, 100, 200], [30, 20, 25])})
  np.testing.assert_array_equal(fig.axes[0].lines[0].get_xdata(), [100, 200, 300])
  assert fig.axes[0].get_ylabel() == "PSNR (dB)"
  fig = plots.grouped_bars({"b=1": {"jax": 10.0, "torch": 20.0}, "b=64": {"jax": 30.0}},
                           ylabel="examples / s")
  assert len(fig.axes[0].patches) == 4 and fig.axes[0].get_ylabel() == "examples / s"
