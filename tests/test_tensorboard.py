"""TensorBoard event files written by `fit` (train.tensorboard=true), read back with
TensorBoard's own event reader."""

import json
import math

import numpy as np
import pytest

pytest.importorskip("tensorboardX")
pytest.importorskip("tensorboard")

from ae_jax.errors import ConfigError  # noqa: E402
from ae_jax.fit import fit  # noqa: E402
from ae_jax.tensorboard import LOGDIR, read_events  # noqa: E402


def _board_config(cfg, family="ae"):
  cfg.model.family = family
  cfg.model.recon_loss = "bce" if family == "vae" else "mse"
  cfg.train.parallel = "jit"
  cfg.train.num_steps = 40
  cfg.train.log_every = 10
  cfg.train.eval_every = 10
  cfg.train.checkpoint_every = 10
  cfg.train.figures = False
  cfg.train.tensorboard = True
  cfg.train.tensorboard_images_every = 2
  cfg.optim.schedule = "cosine"
  cfg.optim.learning_rate = 2e-3
  return cfg


def _rows(workdir, split):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def test_scalars_and_images_match_the_metrics_log(cfg, tmp_path):
  fit(_board_config(cfg, "vae"), tmp_path, progress=False)
  events = read_events(tmp_path / LOGDIR)
  scalars = events["scalars"]
  train, evals = _rows(tmp_path, "train"), _rows(tmp_path, "eval")
  assert [s for s, _ in scalars["train/loss"]] == [10, 20, 30, 40]
  for name in ("loss", "grad_norm", "recon", "kl"):
    np.testing.assert_allclose([v for _, v in scalars[f"train/{name}"]],
                               [r[name] for r in train], rtol=1e-6)
  np.testing.assert_allclose([v for _, v in scalars["eval/loss"]], [r["loss"] for r in evals],
                             rtol=1e-6)
  assert "train/finite" not in scalars
  # Cosine decay over 40 steps; the update that produced step s used optax's count s - 1.
  want = [2e-3 * 0.5 * (1 + math.cos(math.pi * (s - 1) / 40)) for s in (10, 20, 30, 40)]
  np.testing.assert_allclose([v for _, v in scalars["train/learning_rate"]], want, rtol=1e-5,
                             atol=1e-9)
  # Images on the 1st and 3rd of the 4 evaluations (every 2), reconstructions and samples.
  for tag in ("images/reconstructions", "images/samples"):
    got = events["images"][tag]
    assert [s for s, _ in got] == [10, 30]
    for _, img in got:
      assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3
      assert img.shape[0] > 50 and img.shape[1] > 200 and img.std() > 10


def test_resume_purges_events_past_the_restored_step(cfg, tmp_path):
  _board_config(cfg)
  fit(cfg, tmp_path, progress=False, stop_after=20)
  fit(cfg, tmp_path, progress=False)
  events = read_events(tmp_path / LOGDIR)
  assert [s for s, _ in events["scalars"]["train/loss"]] == [10, 20, 30, 40]
  assert "images/samples" not in events["images"]  # a plain autoencoder has no prior
  np.testing.assert_allclose([v for _, v in events["scalars"]["train/loss"]],
                             [r["loss"] for r in _rows(tmp_path, "train")], rtol=1e-6)


def test_off_by_default_and_bad_settings_are_refused(cfg, tmp_path):
  assert cfg.train.tensorboard is False
  cfg.train.num_steps = 10
  cfg.train.parallel = "jit"
  cfg.train.figures = False
  fit(cfg, tmp_path / "off", progress=False)
  assert not (tmp_path / "off" / LOGDIR).exists()
  cfg.train.tensorboard = True
  with pytest.raises(ConfigError, match="workdir"):
    fit(cfg, None, progress=False)
  cfg.train.tensorboard_images_every = 0
  with pytest.raises(ConfigError, match="tensorboard_images_every"):
    fit(cfg, tmp_path / "bad", progress=False)
