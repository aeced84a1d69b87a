"""Progress bars for every loop over data; ``--quiet`` turns them all off."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_quiet = False


def set_quiet(quiet: bool) -> None:
    """Silence (or re-enable) every progress bar in this process."""
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


def progress(iterable: Iterable[T] | None = None, *, desc: str = "", total: int | None = None,
             unit: str = "it", leave: bool = False, **kwargs) -> tqdm:
    """A tqdm bar on stderr that honours ``--quiet``."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave,
                disable=_quiet, file=sys.stderr, dynamic_ncols=True, **kwargs)


def end_bars() -> None:
    """Close every bar still open (an exception left it so); each clears its line, so that the
    message printed next starts on a clean line. tqdm keeps its live bars in ``tqdm._instances``."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def log(message: str) -> None:
    """A status line on stderr (silenced by ``--quiet``); stdout stays for results."""
    if not _quiet:
        tqdm.write(message, file=sys.stderr)
