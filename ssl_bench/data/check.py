"""Validator registry: ``VALIDATORS[format](folder) -> list of problems`` (empty = OK).

Each problem is one line starting with the offending file (``path:LINE: ...`` for line-based files,
``path: annotations[3].bbox: ...`` for JSON). Validators never stop at the first problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import UserError
from . import ade20k, coco, davis, imagefolder
from .common import MANIFEST_NAME, read_manifest
from .resolve import FORMATS, check_format_name, resolve

VALIDATORS: dict[str, Callable[[Path], list[str]]] = {
    "imagenet": imagefolder.check_imagenet,
    "coco": coco.check_coco,
    "lvis": coco.check_lvis,
    "ade20k": ade20k.check_ade20k,
    "davis": davis.check_davis,
    "imagenet-c": imagefolder.check_imagenet_c,
    "imagenet-r": imagefolder.check_imagenet_r,
    "imagenet-sketch": imagefolder.check_imagenet_sketch,
    "imagenet-a": imagefolder.check_imagenet_a,
}
assert tuple(VALIDATORS) == FORMATS


def check(root: Path, fmt: str) -> tuple[Path, list[str]]:
    """Validate the ``fmt`` dataset at ``root`` (resolved like the protocols do). When ``root`` cannot be
    resolved, ``root`` itself is validated so the problems say what is missing. Returns (folder, problems)."""
    check_format_name(fmt)
    root = Path(root)
    if not root.is_dir():
        return root, [f"{root}: no such directory"]
    try:
        folder = resolve(root, fmt)
    except UserError:
        if read_manifest(root) is not None:
            raise
        folder = root
    return folder, VALIDATORS[fmt](folder)


def manifest_formats(root: Path) -> list[str]:
    """The formats listed by the manifest at ``root``, in FORMATS order."""
    manifest = read_manifest(Path(root))
    if manifest is None:
        raise UserError(f"{Path(root) / MANIFEST_NAME}: missing; --format all needs a tree made by "
                        f"`ssl-bench data prepare` (or give one --format)")
    return [f for f in FORMATS if f in manifest["sets"]]
