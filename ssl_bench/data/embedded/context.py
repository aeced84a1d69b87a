"""Shared state of one ``prepare`` run and the process pool that renders items in parallel.

The context (sources, profile, output root) is a module global set before the pool forks, so worker
processes inherit it without pickling 50 MB of Fashion-MNIST. Every item draws from its own seeded
generator, so the output does not depend on the number of workers or on scheduling.
"""

from __future__ import annotations

import multiprocessing
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ...progress import progress
from .compose import Sprite, background, make_sprite, paste
from .sources import FashionMNIST


@dataclass
class Context:
    root: Path
    profile: dict
    seed: int
    fm: FashionMNIST
    backgrounds: dict[str, np.ndarray]
    names: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Fashion-MNIST class names, label order."""
        return list(self.profile["fashion_mnist"]["classes"])

    @property
    def wnids(self) -> list[str]:
        base = int(self.profile["wnid_base"])
        return [f"n{base + k:08d}" for k in range(len(self.classes))]

    def bg_names(self, kind: str | None = None) -> list[str]:
        return [n for n, spec in self.profile["backgrounds"].items() if kind is None or spec["kind"] == kind]

    def background(self, rng: np.random.Generator, width: int, height: int, name: str | None = None) -> np.ndarray:
        names = self.bg_names()
        if name is None:
            name = names[int(rng.integers(0, len(names)))]
        p = self.profile
        return background(self.backgrounds[name], width, height, rng, tuple(p["background_crop"]),
                          tuple(p["tint_range"]))

    def sprite(self, fm_split: str, fm_index: int, size: int, rng: np.random.Generator,
               colour: np.ndarray | None = None) -> Sprite:
        p = self.profile
        return make_sprite(self.fm.images[fm_split][fm_index], size, rng,
                           threshold=int(p["fashion_mnist"]["mask_threshold"]), tint=tuple(p["tint_range"]),
                           colour=colour)

    def object_image(self, fm_split: str, fm_index: int, size: int, scale: Sequence[float],
                     rng: np.random.Generator) -> np.ndarray:
        """One object (longer side = scale x size) fully inside a size x size background crop."""
        img = self.background(rng, size, size)
        s = max(8, int(round(rng.uniform(*scale) * size)))
        sp = self.sprite(fm_split, fm_index, s, rng)
        x = int(rng.integers(0, size - sp.w + 1))
        y = int(rng.integers(0, size - sp.h + 1))
        paste(img, sp, x, y)
        return img

    def fm_choice(self, fm_split: str, k: int, rng: np.random.Generator) -> int:
        idx = self.fm.by_class(fm_split, k)
        return int(idx[int(rng.integers(0, len(idx)))])


def slug(name: str, sep: str = "_") -> str:
    """'T-shirt/top' -> 't_shirt_top'."""
    return re.sub(r"[^a-z0-9]+", sep, name.lower()).strip(sep)


_CTX: Context | None = None


def set_context(ctx: Context | None) -> None:
    global _CTX
    _CTX = ctx


def get_context() -> Context:
    assert _CTX is not None, "embedded generator context not set"
    return _CTX


def run_tasks(fn: Callable, tasks: list, workers: int, desc: str, unit: str = "img") -> list:
    """``[fn(t) for t in tasks]``, in order, on ``workers`` forked processes (1 = in this process)."""
    if workers <= 1 or len(tasks) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(t) for t in progress(tasks, desc=desc, total=len(tasks), unit=unit)]
    n = min(workers, len(tasks))
    chunksize = max(1, len(tasks) // (n * 16))
    with multiprocessing.get_context("fork").Pool(n) as pool:
        return list(progress(pool.imap(fn, tasks, chunksize), desc=desc, total=len(tasks), unit=unit))
