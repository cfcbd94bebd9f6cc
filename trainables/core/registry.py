"""Name -> constructor registries, so data sets, models, methods and attacks are created by name."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value that is not allowed; the message names the key and what is allowed."""


class Registry(Generic[T]):
    """A named collection of entries; `register` is used as a decorator in each entry's module."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str, key: str | None = None) -> T:
        """The entry called `name`; an unknown name raises ConfigError naming `key` and the choices."""
        if not isinstance(name, str) or name not in self._entries:
            where = f"{key}: " if key else ""
            shown = repr(name) if len(repr(name)) <= 60 else f"{repr(name)[:57]}..."
            raise ConfigError(f"{where}unknown {self.kind} {shown}; allowed: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
