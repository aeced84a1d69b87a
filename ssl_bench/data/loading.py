"""DataLoader construction that keeps the model fed: decode in worker processes, pinned batches when a GPU
is there, persistent workers, seeded shuffling; plus a throughput measurement of the loader alone.

JPEG decoding dominates on CPU; ``ImageFolderDataset(draft_size=...)`` lets libjpeg decode at 1/2, 1/4 or
1/8 scale when the transform shrinks the image anyway (``eval_transform`` sets it from the resize size).
"""

from __future__ import annotations

import os
import random
import time
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ssl_bench.data.common import fmt_config


def default_workers() -> int:
    """Worker processes by default: the CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init(worker_id: int) -> None:
    # one intra-op thread per worker (the workers already use every core), and distinct seeds per worker
    torch.set_num_threads(1)
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool = False, workers: int | None = None,
                pin_memory: bool | None = None, drop_last: bool = False, seed: int = 0,
                collate_fn: Callable | None = None, persistent_workers: bool | None = None,
                prefetch_factor: int | None = 4) -> DataLoader:
    """A DataLoader with ``workers`` decode processes (default: all usable cores), ``pin_memory`` when CUDA
    is available, persistent workers across epochs and a seeded shuffle order."""
    workers = default_workers() if workers is None else int(workers)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    if persistent_workers is None:
        persistent_workers = workers > 0
    kw = {}
    if workers > 0:
        kw["prefetch_factor"] = prefetch_factor
        kw["persistent_workers"] = persistent_workers
        kw["worker_init_fn"] = _worker_init
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      pin_memory=pin_memory, drop_last=drop_last, collate_fn=collate_fn,
                      generator=generator, **kw)


def eval_transform(size: int, resize: int | None = None, mean=None, std=None):
    """Resize (bicubic) the short side to ``resize`` (default size * 256/224), centre-crop ``size``,
    normalise with the ImageNet statistics of formats.yaml."""
    from torchvision import transforms as T
    cfg = fmt_config("imagenet")
    resize = resize or round(size * 256 / 224)
    return T.Compose([
        T.Resize(resize, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(mean or cfg["mean"], std or cfg["std"]),
    ])


def measure_throughput(dataset: Dataset, *, batch_size: int, workers: int, batches: int,
                       warmup: int = 2, collate_fn: Callable | None = None) -> dict:
    """Images per second of the loader alone (no model): ``batches`` timed batches after ``warmup`` ones
    (worker start-up and the first prefetch are excluded from the timing)."""
    loader = make_loader(dataset, batch_size, shuffle=True, workers=workers, collate_fn=collate_fn,
                         persistent_workers=False)
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
