"""Benchmarks (``ssl-bench bench NAME``), one module each.

A benchmark module defines ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> int``; it prints figures and ratios measured in one run.
"""

import importlib
import pkgutil


def benchmark_modules() -> dict:
    """Every benchmark module, by name."""
    return {info.name: importlib.import_module(f"{__name__}.{info.name}")
            for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")}
