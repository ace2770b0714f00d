"""Config mechanics below the command line: loading, merging, typed overrides, dotted keys.

One place for what the command line, sweeps, vmapped trials and the anomaly detector do
to configs; none of them imports `ae_jax.cli`.
- `load_config(spec)`: a preset name, a JSON file (as written to workdir/config.json) or a
  .py file with `get_config()`;
- `get_value(cfg, "a.b")` / `has_key` / `set_value(cfg, "a.b", value)`: dotted access,
  `set_value` type checked (strings are parsed into the field's type, unknown keys and
  values of the wrong type raise ConfigError);
- `with_overrides(cfg, {"a.b": v})`: a copy with overrides applied;
- `apply_overrides(cfg, ["--config.a.b=v", ...])`: the ml_collections command-line form.
"""

import ast
import importlib.util
import json
import pathlib

import ml_collections

from ae_jax.errors import ConfigError


def load_config(spec: str) -> ml_collections.ConfigDict:
  """A preset name, a JSON file (as written to workdir/config.json) or a .py with get_config()."""
  from ae_jax import configs
  path = pathlib.Path(spec)
  if spec in configs.PRESETS:
    return configs.get_preset(spec)
  if path.suffix == ".json" and path.is_file():
    base = configs.get_preset("default")
    try:
      loaded = json.loads(path.read_text())
    except json.JSONDecodeError as e:
      raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    return merge(base, loaded, str(path))
  if path.suffix == ".py" and path.is_file():
    module_spec = importlib.util.spec_from_file_location("user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config()
  raise ConfigError(f"--config {spec!r} is neither a preset ({', '.join(configs.PRESETS)}) "
                    "nor an existing .json or .py config file")


def flatten(d: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}: the dotted keys of a nested dict's leaves."""
  flat = {}
  for k, v in d.items():
    if isinstance(v, dict):
      flat.update(flatten(v, f"{prefix}{k}."))
    else:
      flat[f"{prefix}{k}"] = v
  return flat


def merge(base: ml_collections.ConfigDict, loaded: dict,
          where: str = "config file") -> ml_collections.ConfigDict:
  """`base` with every leaf of the nested dict `loaded` set on it (type checked), in place."""
  for key, value in flatten(loaded).items():
    set_value(base, key, value, where)
  return base


def parse_value(text: str, current):
  """Parse a command-line string into the type of the current value."""
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"expected true/false, got {text!r}")
  if isinstance(current, (tuple, list)):
    value = ast.literal_eval(text if text.strip().startswith(("(", "[")) else f"({text},)")
    return tuple(value)
  if isinstance(current, str):
    return text
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def get_value(cfg: ml_collections.ConfigDict, key: str):
  """The value at a dotted key; KeyError / AttributeError when it is not there."""
  node = cfg
  for part in key.split("."):
    node = node[part]
  return node


def has_key(cfg: ml_collections.ConfigDict, key: str) -> bool:
  """Whether the dotted key names a field of cfg."""
  try:
    get_value(cfg, key)
    return True
  except (KeyError, AttributeError, TypeError):
    return False


def set_value(cfg: ml_collections.ConfigDict, key: str, value, where: str = "command line"):
  """Set a dotted key, raising ConfigError for unknown keys or values of the wrong type."""
  parts = key.split(".")
  node = cfg
  for i, part in enumerate(parts[:-1]):
    if part not in node:
      raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r} ({where}); valid "
                        f"keys here: {', '.join(sorted(node.keys()))}")
    node = node[part]
  leaf = parts[-1]
  if leaf not in node:
    raise ConfigError(f"unknown config key {key!r} ({where}); valid keys here: "
                      f"{', '.join(sorted(node.keys()))}")
  current = node[leaf]
  if isinstance(value, str) and not isinstance(current, str):
    try:
      value = parse_value(value, current)
    except (ValueError, SyntaxError) as e:
      raise ConfigError(f"config.{key}: cannot read {value!r} as {type(current).__name__} "
                        f"({e})") from None
  if isinstance(current, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config.{key} = {value!r} has the wrong type: expected "
                      f"{type(current).__name__} ({e})") from None


def with_overrides(cfg: ml_collections.ConfigDict, overrides: dict,
                   where: str = "trial overrides") -> ml_collections.ConfigDict:
  """A copy of cfg with dotted-key overrides {'optim.learning_rate': 3e-3} applied."""
  out = ml_collections.ConfigDict(cfg.to_dict())
  for key, value in overrides.items():
    set_value(out, key, value, where)
  return out


def apply_overrides(cfg: ml_collections.ConfigDict,
                    overrides: list[str]) -> ml_collections.ConfigDict:
  """Apply `--config.a.b=VALUE` arguments to cfg in place (values parsed by type)."""
  for item in overrides:
    if not item.startswith("--config."):
      raise ConfigError(f"unrecognised argument {item!r}; overrides look like "
                        "--config.model.latent_dim=16")
    body = item[len("--config."):]
    if "=" not in body:
      raise ConfigError(f"override {item!r} has no value; write --config.{body}=VALUE")
    key, value = body.split("=", 1)
    set_value(cfg, key, value)
  return cfg
