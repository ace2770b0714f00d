"""Tests of the denoising, feature, inpainting and super-resolution applications and a
smoke run of each of their experiment scripts."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax.applications import denoise, features, inpaint, metrics, superres
from ae_jax.data import ArrayData
from ae_jax.errors import ConfigError
from ae_jax.families import build_model


def _images(n=3, seed=0):
  return np.random.RandomState(seed).rand(n, 16, 16, 1).astype(np.float32)


# ---- metrics -------------------------------------------------------------------------

def test_psnr_known_values():
  x = _images() * 0.8
  np.testing.assert_allclose(metrics.psnr(x, x + 0.1), 20.0, atol=1e-4)
  np.testing.assert_allclose(metrics.psnr(x, x + 0.01), 40.0, atol=1e-3)
  np.testing.assert_allclose(metrics.psnr(x, x), metrics.MAX_PSNR_DB)
  assert metrics.psnr(x[..., 0], x[..., 0] + 0.1).shape == (3,)


def test_ssim_known_values():
  x = _images()
  np.testing.assert_allclose(metrics.ssim(x, x), 1.0, atol=1e-6)
  a, b, c1 = 0.2, 0.6, 0.01 ** 2
  want = (2 * a * b + c1) / (a * a + b * b + c1)
  got = metrics.ssim(np.full((1, 16, 16, 1), a), np.full((1, 16, 16, 1), b))
  np.testing.assert_allclose(got, want, rtol=1e-3)


def test_ssim_matches_scikit_image():
  skm = pytest.importorskip("skimage.metrics")
  x = _images()
  y = np.clip(x + 0.2 * np.random.RandomState(1).randn(*x.shape), 0, 1).astype(np.float32)
  want = [skm.structural_similarity(a[..., 0], b[..., 0], data_range=1.0, gaussian_weights=True,
                                    sigma=1.5, use_sample_covariance=False)
          for a, b in zip(x, y)]
  np.testing.assert_allclose(metrics.ssim(x, y), want, atol=1e-4)


def test_masked_and_pooled_psnr():
  x = np.zeros((2, 4, 4, 1))
  est = x.copy()
  mask = np.zeros_like(x)
  mask[:, :2, :2] = 1
  est[0][mask[0] > 0] = 0.1
  est[1][mask[1] > 0] = 0.01
  est[:, 3, 3] = 0.9
  np.testing.assert_allclose(metrics.masked_psnr(x, est, mask), [20.0, 40.0], atol=1e-9)
  np.testing.assert_allclose(metrics.pooled_psnr(x, est, mask),
                             -10 * np.log10((0.01 + 0.0001) / 2), atol=1e-9)
  with pytest.raises(ValueError):
    metrics.masked_psnr(x, est, np.zeros_like(x))


def test_snr_db_known_value():
  clean = np.random.RandomState(0).randn(5, 140, 1)
  np.testing.assert_allclose(metrics.snr_db(clean, 1.1 * clean), 20.0, atol=1e-9)
  np.testing.assert_allclose(metrics.snr_db(clean, 0.0 * clean), 0.0, atol=1e-9)


# ---- corruptions, masks, resampling ----------------------------------------------------

@pytest.mark.parametrize("block,region", [(10, 20), (3, None), (28, None)])
def test_hole_masks_cover_exactly_the_requested_area(block, region):
  masks = inpaint.hole_masks(64, (28, 28, 1), block, region, seed=3)
  lo, hi = (0, 28) if region is None else ((28 - region) // 2, (28 - region) // 2 + region)
  assert set(np.unique(masks)) <= {0.0, 1.0}
  for m in masks[..., 0]:
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    assert m.sum() == block * block
    assert len(rows) == len(cols) == block
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    assert m[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
    assert rows[0] >= lo and rows[-1] < hi and cols[0] >= lo and cols[-1] < hi
  if region is not None:
    starts = {(np.flatnonzero(m.any(1))[0], np.flatnonzero(m.any(0))[0]) for m in masks[..., 0]}
    assert len(starts) > 10


def test_cut_matches_block_corruption_and_fills_keep_known_pixels():
  x = np.random.RandomState(0).rand(8, 28, 28, 1).astype(np.float32)
  masks = inpaint.hole_masks(8, (28, 28, 1), 10, 20, seed=5)
  x_cut = inpaint.cut(x, masks)
  np.testing.assert_allclose(
      x_cut, denoise.corrupt_fixed(x, "block", 0.0, 5, block_size=10, block_region=20))
  filled = inpaint.mean_fill(x_cut, masks)
  np.testing.assert_array_equal(filled[masks == 0], x[masks == 0])
  means = (x * (1 - masks)).sum((1, 2, 3)) / (1 - masks).sum((1, 2, 3))
  np.testing.assert_allclose(filled[0][masks[0] > 0], means[0], rtol=1e-5)


def test_space_to_depth_round_trip_and_layout():
  x = jnp.arange(16.0).reshape(1, 4, 4, 1)
  s = denoise.space_to_depth(x)
  assert s.shape == (1, 2, 2, 4)
  np.testing.assert_array_equal(s[0, 0, 0], [0, 1, 4, 5])
  y = np.random.RandomState(0).rand(2, 12, 8, 3)
  np.testing.assert_allclose(denoise.depth_to_space(denoise.space_to_depth(y)), y)
  t = np.random.RandomState(0).rand(2, 140, 2)
  np.testing.assert_allclose(denoise.depth_to_space(denoise.space_to_depth(t)), t)


def test_downsample_corruption_is_the_repeated_box_average():
  x = np.random.RandomState(0).rand(2, 28, 28, 1).astype(np.float32)
  small = superres.box_downsample(x)
  assert small.shape == (2, 14, 14, 1)
  np.testing.assert_allclose(small[0, 3, 5, 0], x[0, 6:8, 10:12, 0].mean(), rtol=1e-6)
  low = denoise.corrupt_fixed(x, "downsample", 0.0, 0)
  np.testing.assert_allclose(low, superres.repeat_upsample(small), rtol=1e-6)
  assert superres.pil_upsample(small, (28, 28), "lanczos").shape == x.shape


def test_noise_wander_is_a_one_period_sine_plus_scaled_noise():
  beats = np.random.RandomState(0).randn(4, 140, 1).astype(np.float32) * 2.0
  wander = denoise.corrupt_fixed(beats, "noise_wander", 0.0, 1, wander=0.3) - beats
  for w, b in zip(wander[..., 0], beats[..., 0]):
    amplitude = 0.3 * b.std()
    np.testing.assert_allclose(np.abs(w).max(), amplitude, rtol=2e-3)
    np.testing.assert_allclose(w.mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(w ** 2) / 140, amplitude ** 2 / 2, rtol=1e-3)
  noise = denoise.corrupt_fixed(beats, "noise_wander", 0.5, 1, wander=0.0) - beats
  np.testing.assert_allclose(noise.std((1, 2)), 0.5 * beats.std((1, 2)), rtol=0.15)


def test_filters_and_setting_choice():
  clean = np.tile(np.sin(np.linspace(0, 4 * np.pi, 140))[None, :, None], (6, 1, 1))
  noisy = clean + 0.3 * np.random.RandomState(0).randn(*clean.shape)
  grid = [{"window": 1}, {"window": 9}]
  best, score = denoise.choose_setting(denoise.moving_average, grid, clean, noisy,
                                       metrics.snr_db)
  assert best == {"window": 9}
  assert score > metrics.snr_db(clean, noisy).mean()
  assert denoise.savgol(noisy, 11, 3).shape == noisy.shape
  img = np.zeros((1, 9, 9, 1), np.float32)
  img[0, 4, 4] = 1.0
  assert denoise.median_filter(img, 3).max() == 0.0


# ---- models --------------------------------------------------------------------------

def test_spatial_family_and_subpixel_network_shapes():
  cfg = denoise.denoiser_config("gaussian", 0.3, channels=(4, 8), latent_dim=7 * 7 * 2)
  model = build_model(cfg, (28, 28, 1))
  res = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                       jnp.zeros((3, 28, 28, 1)))
  assert res["z"].shape == (3, 98) and res["out"].shape == (3, 28, 28, 1)
  cfg.model.latent_dim = 50
  with pytest.raises(ConfigError, match="multiple"):
    build_model(cfg, (28, 28, 1))
  cfg = features.ae_config(3, channels=(4, 8))
  model = build_model(cfg, (140, 1))
  res = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                       jnp.zeros((2, 140, 1)))
  assert res["z"].shape == (2, 3) and res["out"].shape == (2, 140, 1)
  with pytest.raises(ConfigError, match="divisible"):
    build_model(cfg, (30, 30, 1))


# ---- features --------------------------------------------------------------------------

def test_pca_and_sparse_metrics():
  x = np.random.RandomState(0).rand(50, 6)
  full = features.PCA(6).fit(x)
  np.testing.assert_allclose(full.reconstruct(x), x, atol=1e-10)
  errors = [features.mse(x, features.PCA(k).fit(x).reconstruct(x)) for k in (1, 3, 5)]
  assert errors[0] > errors[1] > errors[2]
  z = np.zeros((4, 5))
  z[:, 0] = 1.0
  z[:2, 1] = -2.0
  m = features.sparse_metrics(z, x[:4], x[:4])
  assert m == {"l0": 1.5, "fvu": 0.0, "dead_latents": 3, "dead_fraction": 0.6}
  mean_only = np.broadcast_to(x[:4].mean(0), x[:4].shape)
  np.testing.assert_allclose(features.sparse_metrics(z, x[:4], mean_only)["fvu"], 1.0)


def test_linear_probe_separable():
  rs = np.random.RandomState(0)
  y = rs.randint(0, 3, 300)
  z = np.eye(3)[y] * 5 + rs.randn(300, 3) * 0.1
  assert features.linear_probe(z[:200], y[:200], z[200:], y[200:]) == 1.0


# ---- held-out protocol ----------------------------------------------------------------

def test_carve_validation_is_fixed_disjoint_and_complete():
  from experiments import _protocol
  x = np.arange(50, dtype=np.float32).reshape(50, 1)
  whole = ArrayData(x=x, y=np.arange(50) % 3, name="t", kind="vector")
  fit_part, val = _protocol.carve_validation(whole, 10)
  again_fit, again_val = _protocol.carve_validation(whole, 10)
  assert len(fit_part) == 40 and len(val) == 10
  np.testing.assert_array_equal(val.x, again_val.x)
  np.testing.assert_array_equal(fit_part.y, again_fit.y)
  seen = np.concatenate([fit_part.x[:, 0], val.x[:, 0]])
  np.testing.assert_array_equal(np.sort(seen), x[:, 0])
  np.testing.assert_array_equal(val.y, val.x[:, 0].astype(int) % 3)  # labels stay attached
  assert not np.array_equal(val.x[:, 0], x[:10, 0])  # random, not the first examples
  with pytest.raises(ValueError, match="between 1 and 49"):
    _protocol.carve_validation(whole, 50)


def test_select_picks_the_best_validation_score():
  from experiments import _protocol
  assert _protocol.select([0.2, 0.9, 0.9, 0.1]) == 1
  assert _protocol.select([0.2, 0.9, 0.1], higher=False) == 2
  assert _protocol.select([np.nan, 0.3, 0.5]) == 2
  assert _protocol.select([np.nan, 0.3, 0.5], higher=False) == 1
  with pytest.raises(ValueError, match="no finite validation score"):
    _protocol.select([np.nan])


def test_protocol_record_names_splits_tuning_budget_and_cpu():
  from experiments import _protocol
  record = _protocol.protocol("d", {"train": "7", "validation": "1", "test": "2"},
                              tuned=["a on validation"], budget={"epochs": 3},
                              untuned=["b"])
  assert record["budget"]["epochs"] == 3 and record["budget"]["cpu_seconds"] >= 0
  assert record["cpu_model"] and record["cpu_model"] != "unknown"
  from ae_jax import results  # one CPU model for the record and the environment
  assert not hasattr(_protocol, "cpu_model")
  assert record["cpu_model"] == results.cpu_info()["model"] == results.environment()["cpu_model"]
  items = [r["item"] for r in _protocol.rows(record)]
  assert items[:4] == ["data", "split: train", "split: validation", "split: test"]
  assert "chosen on validation" in items and "CPU" in items


def test_carved_splits_describe_the_three_splits_alike():
  from experiments import _protocol
  plain = _protocol.carved_splits(7000, 1000, 2000)
  assert plain == {
      "train": "7000 training images (the training split less the validation images)",
      "validation": f"1000 training images held out (seed {_protocol.VAL_SEED})",
      "test": "2000 test images, scored once"}
  noted = _protocol.carved_splits(7, 1, 2, train_note="fits PCA", val_note="one hole each",
                                  test_note="scored once per budget")
  assert noted["train"].endswith("validation images); fits PCA")
  assert noted["validation"].endswith(f"(seed {_protocol.VAL_SEED}), one hole each")
  assert noted["test"] == "2 test images, scored once per budget"


# ---- experiment scripts -------------------------------------------------------------

def test_budget_arguments_parse_epochs_and_batch():
  import argparse
  from experiments import _protocol
  p = argparse.ArgumentParser()
  _protocol.add_budget_arguments(p, [(3, 16)], "budgets")
  assert vars(p.parse_args([])) == {"dae_grid": [(3, 16)], "val_size": 1000}
  args = p.parse_args(["--dae-grid", "2:8", "5:32", "--val-size", "50"])
  assert args.dae_grid == [(2, 8), (5, 32)] and args.val_size == 50
  for bad in ("3", "3:16:2", "3:x"):
    with pytest.raises(argparse.ArgumentTypeError, match=f"'{bad}' is not EPOCHS:BATCH"):
      _protocol._budget(bad)
  # features' --ae-grid entries use the same parser: NETWORK:EPOCHS.
  network_epochs = _protocol.colon_entry("NETWORK:EPOCHS", str, int)
  assert network_epochs("subpixel:3") == ("subpixel", 3)
  with pytest.raises(argparse.ArgumentTypeError, match="'mlp' is not NETWORK:EPOCHS"):
    network_epochs("mlp")


def _script(name: str, dataset: str, figures: list[str]):
  return pytest.param(name, figures, marks=pytest.mark.shared_data(dataset), id=name)


@pytest.mark.slow
@pytest.mark.parametrize("script,figures", [
    _script("denoise", "mnist_t10k", ["denoise_grid.png"]),
    _script("denoise_ecg", "ecg5000", ["ecg_denoise.png"]),
    _script("features", "mnist_t10k", ["latent_maps.png", "reconstructions.png"]),
    _script("inpaint", "mnist_t10k", ["inpaint_grid.png"]),
    _script("superres", "mnist_t10k", ["superres_grid.png"]),
])
def test_experiment_smoke(script, figures, tmp_path, fewer_optimizations):
  module = __import__(f"experiments.{script}", fromlist=["main"])
  result = module.main(["--smoke", "--out", str(tmp_path)])
  assert result["smoke"]
  saved = json.loads((tmp_path / "result.json").read_text())
  assert saved["goals"] and "command" in saved
  record = saved["protocol"]
  assert record["tuned_on_validation"] and record["cpu_model"]
  assert {"train", "validation", "test"} <= set(record["splits"])
  assert record["budget"]["wall_seconds"] > 0
  assert any(row.get("chosen") for row in saved["validation"])
  assert "## Protocol" in (tmp_path / "table.md").read_text()
  assert (tmp_path / "table.md").read_text().count("|") > 10
  for name in figures:
    assert (tmp_path / name).stat().st_size > 1000
