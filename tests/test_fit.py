"""The training loop: mock tfds data, exact resume, evaluation coverage, CLI smoke."""

import json
import os
import pathlib
import subprocess
import sys

import chex
import jax
import numpy as np
import pytest

from ae_jax import cli, data as data_lib
from ae_jax.fit import Trained, fit
from ae_jax.prepare import prepare_data


def _small(cfg, **train):
  cfg.train.parallel = "jit"
  cfg.train.update(train)
  return cfg


def test_two_epoch_fit_under_tfds_mock_data(cfg):
  tfds = pytest.importorskip("tensorflow_datasets")
  cfg.data.name = "tfds:mnist"
  cfg.train.num_epochs = 2
  cfg.train.batch_size = 16
  with tfds.testing.mock_data(num_examples=80):
    trained = fit(_small(cfg), progress=False)
  # 80 examples, 10% held out -> 72 train -> 4 steps per epoch.
  assert trained.step == 2 * (72 // 16)
  assert trained.input_shape == (28, 28, 1)
  train_rows = [r for r in trained.history if r["split"] == "train"]
  assert train_rows and all(np.isfinite(r["loss"]) for r in train_rows)


def test_fit_reduces_loss_and_writes_outputs(cfg, tmp_path):
  cfg.train.num_steps = 120
  cfg.train.figures = True
  trained = fit(_small(cfg), tmp_path, progress=False)
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_losses = [r["loss"] for r in rows if r["split"] == "train"]
  assert train_losses[-1] < 0.7 * train_losses[0]
  assert any(r["split"] == "eval" for r in rows)
  assert (tmp_path / "loss_curve.png").stat().st_size > 1000
  assert (tmp_path / "reconstructions.png").stat().st_size > 1000
  assert (tmp_path / "best").is_dir() and (tmp_path / "checkpoints").is_dir()
  again = Trained.load(tmp_path)
  chex.assert_trees_all_equal(again.params, trained.params)
  x = data_lib.load("digits").x[:5]
  np.testing.assert_array_equal(again.encode(x), trained.encode(x))


@pytest.mark.parametrize("mode", ["jit", "pmap"])
def test_stop_and_resume_equals_uninterrupted(cfg, tmp_path, mode):
  cfg.train.parallel = mode
  cfg.train.num_steps = 30
  cfg.train.checkpoint_every = 10
  cfg.train.eval_every = 10
  cfg.model.family = "denoising"  # randomness in the step must resume too
  whole = fit(cfg, tmp_path / "whole", progress=False)
  first = fit(cfg, tmp_path / "split", progress=False, stop_after=17)
  assert first.step == 17
  resumed = fit(cfg, tmp_path / "split", progress=False)
  assert resumed.step == 30
  chex.assert_trees_all_equal(resumed.params, whole.params)
  rows = [json.loads(line) for line in (tmp_path / "split/metrics.jsonl").read_text().splitlines()]
  whole_rows = [json.loads(line) for line in
                (tmp_path / "whole/metrics.jsonl").read_text().splitlines()]
  strip = lambda rs: [(r["step"], r["split"], r["loss"]) for r in rs]
  assert [r for r in strip(rows) if r[0] > 17] == [r for r in strip(whole_rows) if r[0] > 17]


def test_scaler_is_fitted_on_the_training_split_only(cfg):
  cfg.data.scaling = "standard"
  cfg.train.num_steps = 2
  rng = np.random.RandomState(0)
  x = rng.normal(3.0, 2.0, (100, 6)).astype(np.float32)
  val = rng.normal(-50.0, 9.0, (40, 6)).astype(np.float32)
  train_data = data_lib.sources.make_array_data(x, None, "train")
  eval_data = data_lib.sources.make_array_data(val, None, "val")
  trained = fit(_small(cfg), train_data=train_data, eval_data=eval_data, progress=False)
  np.testing.assert_allclose(trained.scaler.offset, x.mean(0), rtol=1e-5)
  np.testing.assert_allclose(trained.scaler.scale, x.std(0), rtol=1e-4)


def test_evaluation_scores_every_example_exactly_once(cfg):
  cfg.train.num_steps = 5
  trained = fit(_small(cfg), progress=False)
  x = data_lib.load("digits").x[:37]  # not a multiple of any batch size used
  per_example = []
  for i in range(len(x)):
    per_example.append(trained.evaluate(x[i:i + 1])["loss"])
  for bs in (8, 16, 64):
    trained.config.train.batch_size = bs
    got = trained.evaluate(x)["loss"]
    np.testing.assert_allclose(got, np.mean(per_example), rtol=1e-5)


def _early_stopping(cfg, **train):
  cfg.train.num_steps = 400
  cfg.train.eval_every = 5
  cfg.train.checkpoint_every = 5
  cfg.train.patience = 2
  cfg.optim.learning_rate = 0.5  # diverging validation loss makes patience run out
  cfg.optim.name = "sgd"
  return _small(cfg, **train)


def _evals(trained):
  return [(r["step"], r["loss"]) for r in trained.history if r["split"] == "eval"]


def test_early_stopping_returns_and_saves_the_best_parameters(cfg, tmp_path):
  trained = fit(_early_stopping(cfg), tmp_path, progress=False)
  evals = _evals(trained)
  best_step, best_loss = min(evals, key=lambda e: e[1])
  assert best_step < evals[-1][0] == trained.step < 400  # stopped before the last step
  best = Trained.load(tmp_path, best=True)
  chex.assert_trees_all_equal(trained.params, best.params)
  # The final checkpoint (what `ae-jax evaluate` loads without --best) is the best model.
  chex.assert_trees_all_equal(Trained.load(tmp_path).params, best.params)
  _, val, _ = prepare_data(trained.config)
  np.testing.assert_allclose(
      trained.evaluate(trained.scaler.inverse_transform(val.x))["loss"], best_loss, rtol=1e-4)
  # Without a workdir too.
  chex.assert_trees_all_equal(fit(_early_stopping(cfg), progress=False).params, best.params)


@pytest.mark.parametrize("patience, restore_best", [(2, False), (0, True)])
def test_best_parameters_survive_a_kill_and_resume(cfg, tmp_path, patience, restore_best):
  cfg = _early_stopping(cfg, patience=patience)
  if not patience:
    cfg.train.num_steps = 60
  whole = fit(cfg, tmp_path / "whole", progress=False, restore_best=restore_best)
  evals = _evals(whole)
  best_step = min(evals, key=lambda e: e[1])[0]
  assert best_step < evals[-1][0], "the test needs a run whose last evaluation is not its best"
  kill = best_step + (evals[-1][0] - best_step) // 2
  first = fit(cfg, tmp_path / "split", progress=False, stop_after=kill,
              restore_best=restore_best)
  assert first.step == kill
  resumed = fit(cfg, tmp_path / "split", progress=False, restore_best=restore_best)
  assert resumed.step == whole.step
  chex.assert_trees_all_equal(resumed.params, whole.params)
  chex.assert_trees_all_equal(resumed.params, Trained.load(tmp_path / "whole", best=True).params)
  if patience:
    # A finished early-stopped run resumed again trains no further.
    again = fit(cfg, tmp_path / "split", progress=False)
    assert again.step == whole.step
    chex.assert_trees_all_equal(again.params, whole.params)


def _cli(*args, cwd):
  """`python -m ae_jax.cli ARGS` as a real process (one CPU device)."""
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "ae_jax.cli", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def _main(capsys, *args):
  """`ae-jax ARGS` in this process: (exit code, stdout, stderr)."""
  code = cli.main(list(args))
  out, err = capsys.readouterr()
  return code, out, err


_TRAIN_ARGS = ("train", "--config", "tiny", "--no-progress", "--config.model.family=vae",
               "--config.model.recon_loss=bce", "--config.train.figures=true")


def test_cli_smoke(tmp_path, capsys):
  """`ae-jax train` into a path with spaces, then the commands that read its workdir, all
  in this process; `python -m ae_jax.cli` as a real process exits with main's code (the
  whole run as a real process: test_cli_smoke_in_a_real_process, slow)."""
  wd = tmp_path / "run dir with spaces"
  code, stdout, err = _main(capsys, *_TRAIN_ARGS, "--workdir", str(wd))
  assert code == 0, err
  _check_cli_workdir(wd, stdout, capsys)
  out = _cli("train", "--config", "tiny", "--workdir", str(tmp_path / "w"),
             "--config.model.latent_dimm=3", cwd=tmp_path)
  assert out.returncode == 2 and "unknown config key 'model.latent_dimm'" in out.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_cli_smoke_in_a_real_process(tmp_path, capsys):
  """`ae-jax train` as a real process (one CPU device) into a path with spaces, then the
  commands that read its workdir (in this process: what they read and write is tested)."""
  wd = tmp_path / "run dir with spaces"
  out = _cli(*_TRAIN_ARGS, "--workdir", str(wd), cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  _check_cli_workdir(wd, out.stdout, capsys)


def _check_cli_workdir(wd, stdout, capsys):
  assert "loss_curve" in stdout and (wd / "loss_curve.png").exists()
  for command in ("evaluate", "encode", "reconstruct", "sample"):
    code, _, err = _main(capsys, command, "--workdir", str(wd))
    assert code == 0, (command, err)
  assert np.load(wd / "latents.npy").shape == (1797, 4)
  assert np.load(wd / "reconstructions.npy").shape == (1797, 8, 8, 1)
  assert np.load(wd / "samples.npy").shape == (16, 8, 8, 1)
  assert json.loads((wd / "evaluate.json").read_text())["data"] == "digits"
  config = json.loads((wd / "config.json").read_text())
  assert config["model"]["family"] == "vae"


def test_cli_early_stopping_saves_the_best_model_as_the_final_one(tmp_path, capsys):
  wd = tmp_path / "w"
  code, stdout, err = _main(
      capsys, "train", "--config", "tiny", "--workdir", str(wd), "--no-progress",
      "--config.train.parallel=jit", "--config.train.num_steps=400",
      "--config.train.eval_every=5", "--config.train.checkpoint_every=5",
      "--config.train.patience=2", "--config.optim.name=sgd",
      "--config.optim.learning_rate=0.5")
  assert code == 0, err
  evals = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
  evals = [r["loss"] for r in evals if r["split"] == "eval"]
  assert min(evals) < evals[-1]
  for name, extra in (("final", []), ("best", ["--best"])):
    got, _, err = _main(capsys, "evaluate", "--workdir", str(wd), "--out",
                        str(tmp_path / f"{name}.json"), *extra)
    assert got == 0, err
  final = json.loads((tmp_path / "final.json").read_text())
  best = json.loads((tmp_path / "best.json").read_text())
  assert final == best
  assert f"validation loss: {min(evals):.5g} (the best evaluation" in stdout


def test_cli_rejects_bad_overrides_with_a_clear_message(tmp_path, capsys):
  code, _, err = _main(capsys, "train", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                       "--config.model.latent_dimm=3")
  assert code == 2
  assert "unknown config key 'model.latent_dimm'" in err
  assert "latent_dim" in err and "Traceback" not in err
  code, _, err = _main(capsys, "train", "--config", "tiny", "--workdir", str(tmp_path / "w"),
                       "--config.model.family=transformer")
  assert code == 2 and "valid family names are" in err
  assert not (tmp_path / "w").exists()
