"""Name -> implementation registries, filled by decorators in one module per entry.

``METHODS`` (``ssl_bench.methods``) and ``PROTOCOLS`` (``ssl_bench.protocols``) are registries:
each entry is a class in the package's module of the same name, decorated with
``REGISTRY.register("name")``. The decorator is the one place the name is written: a registered
class gets it as its ``name`` attribute. ``get(name)`` imports that one module (so ``ssl-bench eval
--protocol knn`` loads the k-NN protocol and no other), and every public module of the package
only when the name is not found there, as ``names()`` does. Which other files a new entry needs
(defaults, recipes, a test) is listed in ``docs/architecture.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
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

    def _import_own_module(self, name: str) -> None:
        """Import ``<package>.<name>``, the module an entry of that name lives in, if there is one."""
        if name.isidentifier() and not name.startswith("_") \
                and importlib.util.find_spec(f"{self.package}.{name}") is not None:
            importlib.import_module(f"{self.package}.{name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def get(self, name: str) -> T:
        if name not in self._entries:
            self._import_own_module(name)
        if name not in self._entries:
            self._discover()  # an entry registered under another module's name
        if name not in self._entries:
            valid = ", ".join(self.names()) or "(none installed)"
            raise UserError(f"unknown {self.kind} '{name}'; valid {self.kind}s: {valid}")
        return self._entries[name]
