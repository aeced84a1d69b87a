"""Bring your own checkpoint: strict, audited import of published key layouts.

``import_state(path, arch, layout="auto", encoder=None, allow_missing=(), allow_unused=(),
img_size=None)`` maps the encoder of a foreign ``.pth`` into a ``Backbone(arch)`` (seeded, so
the same file always gives the same network) and returns it with its audit. The layouts:
``timm``, ``torchvision``, ``efficientnet_pytorch`` (``classifiers.py``) and ``msn``, ``mae``,
``siameseim``, ``dino``, ``ibot``, ``moco_v3``, ``dinov2``, ``conmim`` (``ssl_releases.py``); ``auto``
recognises them from the keys. ``ssl-bench import`` (``command.py``) writes the result as one of
our checkpoints plus ``import_audit.json``; ``foreign:ARCH:PATH`` goes through the same code.
"""

from __future__ import annotations

from pathlib import Path

from . import classifiers, ssl_releases
from .core import Imported, Layout, read_foreign
from .core import import_state as _import_state

#: name -> layout, in the order ``auto`` tries them (timm, the fallback, last)
LAYOUTS: dict[str, Layout] = {layout.name: layout for layout in (*ssl_releases.LAYOUTS, *classifiers.LAYOUTS)}


def import_state(path: Path, arch: str, **options) -> Imported:
    """See ``core.import_state``; ``options``: layout, encoder, allow_missing, allow_unused, img_size."""
    return _import_state(path, arch, LAYOUTS, **options)


__all__ = ["LAYOUTS", "Imported", "Layout", "import_state", "read_foreign"]
