"""Import the ``lvis`` package (0.5.3) under NumPy 2.

``lvis.eval.LVISEval.accumulate`` uses ``np.float``, an alias NumPy 1.24 removed. ``import_lvis()`` puts the
missing alias back (``np.float = float``, exactly what it meant) before importing lvis, and returns the
module. The alias is only added when absent, so a NumPy that still has it is left untouched.
"""

from __future__ import annotations

import logging
import types

import numpy as np

#: The removed NumPy aliases lvis 0.5.3 uses, and the builtins they stood for.
_ALIASES = {"float": float}


def add_numpy_aliases() -> list[str]:
    """Add the removed aliases lvis needs; returns the names added."""
    added = []
    for name, value in _ALIASES.items():
        if name not in np.__dict__:
            setattr(np, name, value)
            added.append(name)
    return added


def import_lvis() -> types.ModuleType:
    """``lvis`` with ``LVIS``, ``LVISResults`` and ``LVISEval`` usable on NumPy 2.

    Importing lvis also calls ``logging.basicConfig`` (a root handler at WARNING); that is undone when the
    root logger had no handler before, so lvis does not reconfigure the logging of the whole program."""
    add_numpy_aliases()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import lvis
    if not handlers:
        for h in list(root.handlers):
            root.removeHandler(h)
        root.setLevel(level)
    return lvis


def load_lvis(path) -> "object":
    """``lvis.LVIS(path)``."""
    return import_lvis().LVIS(str(path))
