"""Search spaces: distributions, their JSON form, grid and random points, trial keys.

A space maps dotted config keys to values: a list is a set of values (the grid's axis, or
a uniform choice in random/tpe mode); `uniform(lo, hi)`, `loguniform(lo, hi)` and
`choice([...])` are distributions (a sampled value is rounded when the field is an int).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from ae_jax.configs.overrides import get_value, has_key, with_overrides
from ae_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Uniform:
  """Uniform on [low, high]."""
  low: float
  high: float

  def sample(self, rng: np.random.Generator) -> float:
    return float(rng.uniform(self.low, self.high))

  def to_json(self) -> dict:
    return {"uniform": [self.low, self.high]}


@dataclasses.dataclass(frozen=True)
class LogUniform:
  """log-uniform on [low, high], low > 0: as likely in [1e-4, 1e-3] as in [1e-3, 1e-2]."""
  low: float
  high: float

  def __post_init__(self):
    if not 0 < self.low <= self.high:
      raise ConfigError(f"loguniform needs 0 < low <= high, got [{self.low}, {self.high}]")

  def sample(self, rng: np.random.Generator) -> float:
    return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

  def to_json(self) -> dict:
    return {"loguniform": [self.low, self.high]}


@dataclasses.dataclass(frozen=True)
class Choice:
  """One of `values`, each equally likely."""
  values: tuple

  def sample(self, rng: np.random.Generator):
    return self.values[int(rng.integers(len(self.values)))]

  def to_json(self) -> dict:
    return {"choice": list(self.values)}


def uniform(low: float, high: float) -> Uniform:
  return Uniform(float(low), float(high))


def loguniform(low: float, high: float) -> LogUniform:
  return LogUniform(float(low), float(high))


def choice(values: Sequence) -> Choice:
  if not values:
    raise ConfigError("choice needs at least one value")
  return Choice(tuple(values))


DISTRIBUTIONS = {"uniform": uniform, "loguniform": loguniform, "choice": choice}
Space = dict[str, Any]


def parse_entry(key: str, spec) -> Any:
  """One JSON entry: a list (values), a one-key dict naming a distribution, or a scalar."""
  if isinstance(spec, (list, tuple)):
    if not spec:
      raise ConfigError(f"search space {key!r}: the list of values is empty")
    return list(spec)
  if isinstance(spec, dict):
    if len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
      raise ConfigError(f"search space {key!r}: a distribution is one of "
                        f"{{{', '.join(repr(d) + ': ...' for d in DISTRIBUTIONS)}}}, got {spec!r}")
    name, args = next(iter(spec.items()))
    if name == "choice":
      return choice(args)
    if not isinstance(args, (list, tuple)) or len(args) != 2:
      raise ConfigError(f"search space {key!r}: {name} takes [low, high], got {args!r}")
    if args[0] > args[1]:
      raise ConfigError(f"search space {key!r}: {name} needs low <= high, got {args!r}")
    return DISTRIBUTIONS[name](*args)
  if isinstance(spec, (Uniform, LogUniform, Choice)):
    return spec
  return [spec]


def parse_space(spec: dict) -> Space:
  """A space from its JSON form {key: [values] | {"uniform"|"loguniform": [lo, hi]} |
  {"choice": [values]} | value}; Python objects (`uniform(...)`, lists) pass through."""
  if not isinstance(spec, dict) or not spec:
    raise ConfigError("a search space is a non-empty JSON object {config key: values}")
  return {key: parse_entry(key, value) for key, value in spec.items()}


def load_space(path) -> Space:
  path = pathlib.Path(path)
  try:
    return parse_space(json.loads(path.read_text()))
  except FileNotFoundError:
    raise ConfigError(f"search space file {path} does not exist") from None
  except json.JSONDecodeError as e:
    raise ConfigError(f"search space file {path} is not valid JSON: {e}") from None


def parse_param(text: str) -> tuple[str, Any]:
  """`key=JSON` (e.g. `optim.learning_rate=[1e-3,3e-3]`,
  `model.latent_dim={"loguniform":[2,32]}`) or `key=v1,v2,...` into (key, entry)."""
  if "=" not in text:
    raise ConfigError(f"--param {text!r}: write KEY=VALUES, e.g. optim.learning_rate=[1e-3,3e-3]")
  key, value = text.split("=", 1)
  try:
    spec = json.loads(value)
  except json.JSONDecodeError:
    spec = [_literal(v) for v in value.split(",")]
  return key.strip(), parse_entry(key.strip(), spec)


def _literal(text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text.strip()


def space_to_json(space: Space) -> dict:
  return {k: (v if isinstance(v, list) else v.to_json()) for k, v in space.items()}


def _cast(cfg, key: str, value):
  """A sampled value in the type of the config field: ints are rounded."""
  current = get_value(cfg, key)
  if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
    return int(round(value))
  return value


def _sample(cfg, key, dim, rng):
  if isinstance(dim, list):
    return dim[int(rng.integers(len(dim)))]
  value = _cast(cfg, key, dim.sample(rng))
  if isinstance(dim, (Uniform, LogUniform)) and isinstance(value, int):
    value = min(max(value, math.ceil(dim.low)), math.floor(dim.high))
  return value


def grid_points(space: Space) -> list[dict]:
  """Every combination of the lists, in the order the keys are given (last varies fastest)."""
  axes = []
  for key, dim in space.items():
    if isinstance(dim, Choice):
      dim = list(dim.values)
    if not isinstance(dim, list):
      raise ConfigError(f"grid mode needs a list of values for {key!r}, not {dim.to_json()}; "
                        "give values or use --mode random")
    axes.append(dim)
  return [dict(zip(space, combo)) for combo in itertools.product(*axes)]


def random_points(cfg, space: Space, num: int, seed: int = 0) -> list[dict]:
  """`num` independent draws from the space; the same seed gives the same points."""
  rng = np.random.default_rng(seed)
  return [{k: _sample(cfg, k, dim, rng) for k, dim in space.items()} for _ in range(num)]


def _plain(value):
  if isinstance(value, (tuple, list)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


def trial_key(overrides: dict, seeds: int = 1) -> str:
  """A stable 12-hex-digit hash of a trial's overrides (and its seed count when > 1)."""
  body = {"overrides": {k: _plain(v) for k, v in overrides.items()}}
  if seeds > 1:
    body["seeds"] = seeds
  text = json.dumps(body, sort_keys=True, allow_nan=True)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


def check_space(cfg, space: Space) -> None:
  """Every key must name a config field that accepts each of the space's values."""
  for key, dim in space.items():
    if isinstance(dim, (list, Choice)):
      values = list(dim) if isinstance(dim, list) else list(dim.values)
    elif has_key(cfg, key):
      values = [_cast(cfg, key, dim.low), _cast(cfg, key, dim.high)]
    else:
      values = [dim.low]
    for value in values:
      with_overrides(cfg, {key: value})
