"""The one DataLoader builder (worker processes with one thread each, seeded) and a throughput
measurement of a loader alone.

JPEG decoding dominates on CPU; ``ImageFolderDataset(draft_size=...)`` lets libjpeg decode at 1/2, 1/4 or
1/8 scale when the transform shrinks the image anyway.
"""

from __future__ import annotations

import functools
import time
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from ..seeding import seed_everything


def _worker_init(worker_id: int, then: Callable[[int], None] | None = None) -> None:
    # one intra-op thread per worker (the workers already use every core); Python and NumPy
    # seeded from the worker's torch seed, so two workers never draw the same numbers
    torch.set_num_threads(1)
    seed_everything(torch.initial_seed())
    if then is not None:
        then(worker_id)


def make_loader(dataset: Dataset, batch_size: int | None = 1, *, shuffle: bool = False, sampler=None,
                batch_sampler=None, workers: int = 0, pin_memory: bool = False, drop_last: bool = False,
                generator: torch.Generator | None = None, collate_fn: Callable | None = None,
                worker_init_fn: Callable[[int], None] | None = None, persistent_workers: bool = False,
                prefetch_factor: int | None = None) -> DataLoader:
    """The DataLoader every loop over data uses: ``torch.utils.data.DataLoader`` with the same
    arguments, plus the worker set-up above (then ``worker_init_fn``). ``generator`` draws the
    shuffle order and the workers' seeds (without it torch's global generator does)."""
    kw: dict = {}
    if workers > 0:
        kw.update(prefetch_factor=prefetch_factor, persistent_workers=persistent_workers,
                  worker_init_fn=functools.partial(_worker_init, then=worker_init_fn))
    if batch_sampler is None:
        kw.update(batch_size=batch_size, shuffle=shuffle, sampler=sampler, drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=collate_fn, generator=generator, **kw)


def measure_throughput(dataset: Dataset, *, batch_size: int, workers: int, batches: int,
                       warmup: int = 2, collate_fn: Callable | None = None) -> dict:
    """Images per second of the loader alone (no model): ``batches`` timed batches after ``warmup`` ones
    (worker start-up and the first prefetch are excluded from the timing)."""
    loader = make_loader(dataset, batch_size, shuffle=True, workers=workers, collate_fn=collate_fn,
                         generator=torch.Generator().manual_seed(0),
                         pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    n = 0
    done = 0
    t0 = time.perf_counter()
    for batch in it:
        n += len(batch[0]) if isinstance(batch, (list, tuple)) else len(batch)
        done += 1
        if done >= batches:
            break
    seconds = time.perf_counter() - t0
    del it
    return {"workers": workers, "images": n, "batches": done, "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else float("nan")}
