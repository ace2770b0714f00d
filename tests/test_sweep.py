"""Sweeps and vectorised trials: grid picks the known best, vmap equals one by one,
resume, optuna optional, seeds, the `ae-jax sweep` command."""

import json
import shutil
import sys

import chex
import numpy as np
import pytest

from ae_jax import cli, configs, sweep, vmap_trials
from ae_jax.data import sources
from ae_jax.errors import ConfigError
from ae_jax.fit import fit

GRID = {"optim.learning_rate": [1e-5, 3e-2], "objective.l1_weight": [0.0, 1.0]}
BEST = {"optim.learning_rate": 3e-2, "objective.l1_weight": 0.0}


def _synthetic(n=320, dim=12, rank=3, seed=0):
  """Vectors in [0, 1] on a rank-3 subspace: (n, dim)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(n, rank))
  w = rng.normal(size=(rank, dim)) / np.sqrt(rank)
  x = np.clip(0.5 + 0.15 * z @ w, 0.0, 1.0)
  return sources.make_array_data(x, None, "synthetic")


def _base():
  cfg = configs.get_preset("tiny")
  cfg.model.family = "sparse"
  cfg.model.widths = (16,)
  cfg.model.latent_dim = 4
  cfg.optim.name = "adamw"
  cfg.optim.schedule = "cosine"
  cfg.train.parallel = "jit"
  cfg.train.batch_size = 32
  cfg.train.num_steps = 30
  cfg.train.eval_every = 30
  cfg.train.log_every = 10
  cfg.data.val_fraction = 0.2
  return cfg


@pytest.fixture(scope="module")
def data():
  return _synthetic()


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory, data):
  out = tmp_path_factory.mktemp("grid")
  return sweep.sweep(_base(), GRID, out=out, mode="grid", train_data=data, log=None)


def test_grid_runs_four_trials_and_picks_known_best(grid_sweep):
  result = grid_sweep
  assert len(result.rows) == 4 and result.ran == 4 and result.vectorised
  assert result.best["overrides"] == BEST
  values = [r["value"] for r in result.rows]
  assert values == sorted(values) and all(np.isfinite(values))
  lines = (result.out / sweep.TRIALS_FILE).read_text().splitlines()
  assert len(lines) == 4
  row = json.loads(lines[0])
  assert {"key", "overrides", "value", "steps", "wall_s", "metrics"} <= row.keys()
  assert row["steps"] == 30
  table = (result.out / "table.md").read_text()
  assert "| 1 | 0.03 | 0 |" in table
  assert result.paths["figure"].stat().st_size > 1000
  assert set(result.importance) == set(GRID)
  best_cfg = cli.load_config(str(result.out / "best_config.json"))
  assert best_cfg.optim.learning_rate == 3e-2 and best_cfg.objective.l1_weight == 0.0
  assert best_cfg.model.family == "sparse" and best_cfg.model.widths == (16,)


def test_resume_skips_finished_trials(grid_sweep, tmp_path, data):
  out = tmp_path / "resumed"
  shutil.copytree(grid_sweep.out, out)
  path = out / sweep.TRIALS_FILE
  before = path.read_text()
  path.write_text(before + before.splitlines()[0][:30])  # a torn write of a fifth row
  wider = {"optim.learning_rate": [1e-5, 3e-2, 1e-3, 1e-2], "objective.l1_weight": [0.0, 1.0]}
  again = sweep.sweep(_base(), wider, out=out, mode="grid", train_data=data, log=None)
  assert again.ran == 4 and len(again.rows) == 8
  assert sweep.read_rows(out)[:4] == sweep.read_rows(grid_sweep.out)
  new = {r["overrides"]["optim.learning_rate"] for r in sweep.read_rows(out)[4:]}
  assert new == {1e-3, 1e-2}
  done = sweep.sweep(_base(), wider, out=out, mode="grid", train_data=data, log=None)
  assert done.ran == 0 and len(done.rows) == 8
  changed = _base()
  changed.model.latent_dim = 3
  with pytest.raises(ConfigError, match="another base config"):
    sweep.sweep(changed, wider, out=out, mode="grid", train_data=data, log=None)


def test_vmapped_trials_equal_trials_one_by_one(data):
  """Trials differing in learning rate, weight decay, L1 weight and seed (adamw, cosine)
  give the parameters and evaluations of the same trials run one by one through `fit`."""
  trials = [{"optim.learning_rate": 3e-2, "objective.l1_weight": 0.0, "seed": 0},
            {"optim.learning_rate": 1e-2, "optim.weight_decay": 0.1,
             "objective.l1_weight": 0.05, "seed": 1},
            {"optim.learning_rate": 3e-3, "objective.l1_weight": 0.01, "seed": 2},
            {"optim.learning_rate": 1e-3, "objective.l1_weight": 0.2, "seed": 3}]
  runs = vmap_trials.fit_trials(_base(), trials, train_data=data)
  for run in runs[:2]:
    alone = sweep.run_trial(_base(), run.overrides, train_data=data)
    assert run.error is None and run.trained.step == alone.trained.step == 30
    chex.assert_trees_all_close(run.trained.params, alone.trained.params, atol=1e-5, rtol=1e-4)
    evals = [[r["loss"] for r in t.history if r["split"] == "eval"]
             for t in (run.trained, alone.trained)]
    np.testing.assert_allclose(evals[0], evals[1], rtol=1e-4)
  assert len({r.val_loss for r in runs}) == 4


def test_fit_seeds_mean_std(data):
  runs = vmap_trials.fit_seeds(_base(), 4, train_data=data)
  assert [r.config.seed for r in runs] == [0, 1, 2, 3]
  losses = [r.val_loss for r in runs]
  assert len(set(losses)) == 4 and all(np.isfinite(losses))
  mean, std = vmap_trials.mean_std(losses)
  assert mean == pytest.approx(np.mean(losses)) and std == pytest.approx(np.std(losses, ddof=1))
  assert "±" in vmap_trials.format_mean_std(losses)
  assert vmap_trials.format_mean_std([0.5]) == "0.5"


def test_without_optuna_grid_and_random_work_and_tpe_says_how_to_install(
    monkeypatch, tmp_path, data):
  monkeypatch.setitem(sys.modules, "optuna", None)
  space = {"optim.learning_rate": sweep.loguniform(1e-4, 3e-2),
           "objective.l1_weight": sweep.uniform(0.0, 0.1)}
  with pytest.raises(ConfigError, match=r'pip install -e "\.\[sweep\]"'):
    sweep.sweep(_base(), space, out=tmp_path / "tpe", mode="tpe", trials=2, train_data=data,
                log=None)
  rng = np.random.default_rng(1)
  outliers = rng.uniform(0.0, 1.0, size=(40, data.x.shape[1])).astype(np.float32)
  labelled = sources.make_array_data(np.concatenate([data.x[:80], outliers]),
                                     np.repeat([0, 1], [80, 40]), "labelled")
  result = sweep.sweep(_base(), space, out=tmp_path / "random", mode="random", trials=4,
                       metric="roc_auc", metric_data=labelled, train_data=data, log=None)
  assert len(result.rows) == 4 and result.best is not None
  lrs = [r["overrides"]["optim.learning_rate"] for r in result.rows]
  assert all(1e-4 <= lr <= 3e-2 for lr in lrs) and len(set(lrs)) == 4
  aucs = [r["value"] for r in result.rows]
  assert aucs == sorted(aucs, reverse=True) and aucs[0] > 0.7


def test_tpe_with_optuna(tmp_path, data):
  pytest.importorskip("optuna")
  space = {"optim.learning_rate": sweep.loguniform(1e-4, 3e-2),
           "objective.l1_weight": [0.0, 0.05]}
  result = sweep.sweep(_base(), space, out=tmp_path, mode="tpe", trials=3, train_data=data,
                       log=None)
  assert len(result.rows) == 3 and result.best is not None
  again = sweep.sweep(_base(), space, out=tmp_path, mode="tpe", trials=4, train_data=data,
                      log=None)
  assert again.ran == 1 and len(again.rows) == 4


def test_space_parsing_and_stable_keys():
  cfg = configs.get_preset("tiny")
  space = sweep.parse_space({"optim.learning_rate": [1e-3, 3e-3],
                             "model.latent_dim": {"loguniform": [2, 32]},
                             "model.family": {"choice": ["ae", "vae"]}})
  assert isinstance(space["model.latent_dim"], sweep.LogUniform)
  points = sweep.random_points(cfg, space, 8, seed=1)
  assert points == sweep.random_points(cfg, space, 8, seed=1)
  assert all(isinstance(p["model.latent_dim"], int) and 2 <= p["model.latent_dim"] <= 32
             for p in points)
  with pytest.raises(ConfigError, match="grid mode needs a list"):
    sweep.grid_points(space)
  assert len(sweep.grid_points({"a": [1, 2], "b": [3, 4, 5]})) == 6
  assert sweep.parse_param("optim.learning_rate=[1e-3,3e-3]") == (
      "optim.learning_rate", [1e-3, 3e-3])
  assert sweep.parse_param("model.family=ae,vae") == ("model.family", ["ae", "vae"])
  assert sweep.parse_param('model.latent_dim={"uniform":[2,8]}')[1] == sweep.uniform(2, 8)
  assert sweep.trial_key({"b": 2, "a": 1e-3}) == sweep.trial_key({"a": 1e-3, "b": 2})
  assert sweep.trial_key({"a": 1e-3, "b": 2}) == "4c868a6334b3"
  with pytest.raises(ConfigError, match="unknown config key"):
    sweep.check_space(cfg, {"optim.lr": [1e-3]})
  assert not vmap_trials.can_vmap(cfg, ["model.latent_dim"])
  assert vmap_trials.can_vmap(cfg, ["optim.learning_rate", "seed", "objective.beta"])


def test_cli_sweep_then_train_best_config(tmp_path, capsys, data):
  np.save(tmp_path / "x.npy", data.x)
  base = _base()
  base.data.name = str(tmp_path / "x.npy")
  (tmp_path / "base.json").write_text(base.to_json())
  (tmp_path / "space.json").write_text('{"optim.learning_rate": [1e-2, 3e-2]}')
  out = tmp_path / "sweep"
  code = cli.main(["sweep", "--config", str(tmp_path / "base.json"), "--space",
                   str(tmp_path / "space.json"), "--seeds", "2", "--out", str(out)])
  assert code == 0
  table = (out / "table.md").read_text()
  rows = [line for line in table.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
  assert len(rows) == 2 and all("±" in line for line in rows) and "2 seeds" in table
  assert "ae-jax train --config" in capsys.readouterr().out
  code = cli.main(["train", "--config", str(out / "best_config.json"), "--workdir",
                   str(tmp_path / "w"), "--no-progress", "--config.train.num_steps=2"])
  assert code == 0
  assert cli.main(["sweep", "--config", "tiny", "--out", str(out)]) == 2
  assert "search space" in capsys.readouterr().err


def test_vmappable_fields_are_the_families_hparams():
  from ae_jax.families import FAMILIES, get_family
  union = {k for name in FAMILIES for k in get_family(name).hparams}
  assert set(vmap_trials.objective_hparams()) == union
  assert set(vmap_trials.VMAPPABLE) == {"seed", *vmap_trials.OPTIM_HPARAMS, *union}
  assert vmap_trials.objective_hparams("sparse") == get_family("sparse").hparams
  assert vmap_trials.objective_hparams("ae") == ()
  cfg = _base()
  cfgs = [vmap_trials.with_overrides(cfg, {"objective.l1_weight": w}) for w in (0.0, 0.1)]
  _, _, _, hparams = vmap_trials.trial_state(cfg, cfgs, (12,), 5)
  assert set(hparams) == set(get_family("sparse").hparams)
  np.testing.assert_allclose(hparams["objective.l1_weight"], [0.0, 0.1])
