"""Config mechanics below the command line: loading, merging, typed overrides, dotted keys."""

import json

import pytest

from ae_jax import configs
from ae_jax.configs import overrides
from ae_jax.errors import ConfigError


def test_dotted_get_set_and_typed_strings():
  cfg = configs.get_preset("tiny")
  assert overrides.get_value(cfg, "model.latent_dim") == 4
  assert overrides.has_key(cfg, "optim.learning_rate")
  assert not overrides.has_key(cfg, "optim.lr") and not overrides.has_key(cfg, "seed.x")
  overrides.set_value(cfg, "model.widths", "8,4")
  overrides.set_value(cfg, "model.layer_norm", "yes")
  overrides.set_value(cfg, "optim.learning_rate", 1)  # an int where a float is expected
  assert cfg.model.widths == (8, 4) and cfg.model.layer_norm is True
  assert cfg.optim.learning_rate == 1.0 and isinstance(cfg.optim.learning_rate, float)
  with pytest.raises(ConfigError, match="unknown config key 'model.latent_dimm'.*latent_dim"):
    overrides.set_value(cfg, "model.latent_dimm", 3)
  with pytest.raises(ConfigError, match="cannot read 'maybe' as bool"):
    overrides.set_value(cfg, "model.layer_norm", "maybe")
  with pytest.raises(ConfigError, match="wrong type"):
    overrides.set_value(cfg, "model.latent_dim", "four")


def test_with_overrides_copies_and_apply_overrides_parses_flags():
  cfg = configs.get_preset("tiny")
  other = overrides.with_overrides(cfg, {"model.latent_dim": 7, "seed": 3})
  assert (other.model.latent_dim, other.seed) == (7, 3) and cfg.model.latent_dim == 4
  overrides.apply_overrides(cfg, ["--config.model.family=vae", "--config.train.num_steps=5"])
  assert (cfg.model.family, cfg.train.num_steps) == ("vae", 5)
  with pytest.raises(ConfigError, match="has no value"):
    overrides.apply_overrides(cfg, ["--config.seed"])
  with pytest.raises(ConfigError, match="unrecognised argument"):
    overrides.apply_overrides(cfg, ["--seed=1"])


def test_load_config_merges_a_json_file_over_the_defaults(tmp_path):
  path = tmp_path / "run.json"
  path.write_text(json.dumps({"model": {"latent_dim": 5}, "train": {"batch_size": 8}}))
  cfg = overrides.load_config(str(path))
  assert (cfg.model.latent_dim, cfg.train.batch_size) == (5, 8)
  assert cfg.model.family == configs.get_preset("default").model.family
  assert overrides.flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}
  (tmp_path / "bad.json").write_text("{")
  with pytest.raises(ConfigError, match="not valid JSON"):
    overrides.load_config(str(tmp_path / "bad.json"))
  with pytest.raises(ConfigError, match="neither a preset"):
    overrides.load_config(str(tmp_path / "missing.json"))
