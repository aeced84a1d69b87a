"""Seeding of Python's, NumPy's and torch's global generators, in one place."""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's and NumPy's generators (with the low 32 bits, all NumPy takes) and torch's."""
    random.seed(seed % 2**32)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded(seed: int):
    """Seed python, numpy and torch (CPU) for the block, restoring the outer states after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_everything(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def sample_seed(*keys: int) -> int:
    """A 32-bit seed derived from integer keys, e.g. (run seed, epoch, sample index)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])
