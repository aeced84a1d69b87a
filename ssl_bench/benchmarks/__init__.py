"""Benchmarks (``ssl-bench bench NAME``), one module each.

A benchmark module defines ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``; it prints figures and ratios measured in one run. The command line
imports a benchmark module only when it is named.
"""

import importlib
import pkgutil

from ..errors import UserError


def benchmark_names() -> list[str]:
    """Every benchmark, by module name (nothing imported)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def benchmark_module(name: str):
    return importlib.import_module(f"{__name__}.{name}")


def require_images(available: int, needed: int, where, fix: str) -> None:
    """Refuse to time fewer than ``needed`` items: a figure from too little data is noise, or a
    division by zero. ``fix``: what to change (the options that set ``needed``)."""
    if available < needed:
        raise UserError(f"{where}: {available} images, but this benchmark needs at least {needed}; {fix}")
