"""Small named registries: interventions, analyzers, blend ops and site rules are looked up
by name here instead of through ``if kind == ...`` chains.

A registry is filled by the module that defines the built-in entries and, on the first
lookup, by every module of ``engine.plugins`` (each calls ``register``), so adding an entry
is one new file plus its test.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Generic, TypeVar

from engine.errors import GarageError

T = TypeVar("T")
PLUGIN_PACKAGE = "engine.plugins"
_plugins_loaded = False


def load_plugins() -> None:
    """Import every module of ``engine.plugins`` once (each registers what it adds)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    package = importlib.import_module(PLUGIN_PACKAGE)
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda info: info.name):
        importlib.import_module(f"{PLUGIN_PACKAGE}.{module.name}")


class Registry(Generic[T]):
    """Entries by name, in registration order; unknown names fail with the list of known ones."""

    def __init__(self, what: str, error: type[GarageError] = GarageError) -> None:
        self.what = what
        self.error = error
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T, *, replace: bool = False) -> T:
        """Add ``entry`` under ``name``; a second entry of the same name is refused unless ``replace``."""
        if name in self._entries and not replace:
            raise ValueError(f"{self.what} '{name}' is already registered")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> T:
        """The entry called ``name``, or the registry's error naming the ones there are."""
        if name not in self._entries:
            load_plugins()
        if name not in self._entries:
            raise self.error(f"unknown {self.what} '{name}'; use one of: {', '.join(self.names())}")
        return self._entries[name]

    def names(self, *, plugins: bool = True) -> list[str]:
        """Every registered name; ``plugins=False`` skips loading ``engine.plugins`` (stays light)."""
        if plugins:
            load_plugins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
