"""Registries that map a name to a constructor, so a new variant is one file plus one line."""

from typing import Callable, Generic, Iterator, TypeVar

from ae_jax.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
  """A named table of objects; `get` on an unknown name lists the valid ones."""

  def __init__(self, kind: str):
    self.kind = kind
    self._items: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: `@REG.register("name")` stores the decorated object under `name`."""

    def add(obj: T) -> T:
      if name in self._items:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._items[name] = obj
      return obj

    return add

  def get(self, name: str) -> T:
    if name not in self._items:
      raise ConfigError(
          f"unknown {self.kind} {name!r}; valid {self.kind} names are: "
          f"{', '.join(sorted(self._items))}")
    return self._items[name]

  def names(self) -> list[str]:
    return sorted(self._items)

  def __contains__(self, name: str) -> bool:
    return name in self._items

  def __iter__(self) -> Iterator[str]:
    return iter(sorted(self._items))
