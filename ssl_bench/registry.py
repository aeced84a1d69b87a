"""Name -> implementation registries, filled by decorators in one module per entry.

A method, protocol or benchmark is added by writing one module in its package that
decorates its class (or module functions) with ``REGISTRY.register("name")``; the
package is imported on first lookup, so nothing else has to change. The decorator is the
one place the name is written: a registered class gets it as its ``name`` attribute.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

from .errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of implementations discovered from one package."""

    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package
        self._entries: dict[str, T] = {}
        self._discovered = False

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = obj
            if isinstance(obj, type):
                obj.name = name
            return obj
        return decorator

    def _discover(self) -> None:
        if self._discovered:
            return
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            if not module.name.startswith("_"):
                importlib.import_module(f"{self.package}.{module.name}")
        self._discovered = True

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        self._discover()
        if name not in self._entries:
            valid = ", ".join(self.names()) or "(none installed)"
            raise UserError(f"unknown {self.kind} '{name}'; valid {self.kind}s: {valid}")
        return self._entries[name]
