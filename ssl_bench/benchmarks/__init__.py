"""Benchmarks (``ssl-bench bench NAME``), one module each.

A benchmark module defines ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``; it prints figures and ratios measured in one run. The command line
imports a benchmark module only when it is named.
"""

import importlib
import pkgutil


def benchmark_names() -> list[str]:
    """Every benchmark, by module name (nothing imported)."""
    return sorted(info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_"))


def benchmark_module(name: str):
    return importlib.import_module(f"{__name__}.{name}")
