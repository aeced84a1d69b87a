"""Aggregation of repeats and the bootstrap confidence interval.

Bootstrap (percentile method), exactly::

    rng = numpy.random.default_rng(seed)
    for each evaluation j of the cell, in the order given (load_results: sorted by file):
        idx_j = rng.integers(0, n_j, size=(n_boot, n_j))     # drawn in row chunks, same stream
        stat_j = scale_j * a_j[idx_j].mean(axis=1)             # (n_boot,)
    stat = mean over j of stat_j                               # the cell's mean, resampled
    low, high = numpy.percentile(stat, [50 (1 - confidence), 50 (1 + confidence)])

``a_j`` is evaluation j's per-sample score (0/1 correctness for accuracies), ``scale_j``
100 for metrics in percent. Samples are resampled independently per evaluation, so with
several seeds the interval is that of their average.

Which way a metric is better comes from its protocol's schema (``direction``); the interval
itself does not depend on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from ..protocols import schema_of
from ..schema import NEUTRAL, Metric

DEFAULT_BOOTSTRAP = 1000      # resamples
DEFAULT_CONFIDENCE = 0.95     # two-sided percentile interval
DEFAULT_SEED = 0
_CHUNK_ELEMENTS = 1 << 22     # resample indices held at once (memory bound)


@lru_cache(maxsize=None)
def declaration(protocol: str, metric: str) -> Metric | None:
    """The protocol's schema entry for ``metric``; None when no protocol declares it."""
    schema = schema_of(protocol)
    return schema.metric(metric) if schema is not None else None


def direction(protocol: str, metric: str) -> str:
    """``higher`` or ``lower`` (is better), as the protocol's schema declares ``metric``; ``none``
    for a statistic (a std, a chosen threshold) and for a metric no protocol declares."""
    found = declaration(protocol, metric)
    return found.direction if found is not None else NEUTRAL


def bootstrap_ci(samples: Sequence[np.ndarray], *, scales: Sequence[float] | None = None,
                 n_boot: int = DEFAULT_BOOTSTRAP, confidence: float = DEFAULT_CONFIDENCE,
                 seed: int = DEFAULT_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (of the per-evaluation means) of ``samples``."""
    if not samples:
        raise ValueError("bootstrap_ci needs at least one per-sample array")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    scales = [1.0] * len(samples) if scales is None else list(scales)
    rng = np.random.default_rng(seed)
    total = np.zeros(n_boot)
    for array, scale in zip(samples, scales):
        array = np.asarray(array, dtype=np.float64).ravel()
        n = array.size
        rows = max(1, _CHUNK_ELEMENTS // n)
        stat = np.empty(n_boot)
        for start in range(0, n_boot, rows):
            stop = min(n_boot, start + rows)
            idx = rng.integers(0, n, size=(stop - start, n))
            stat[start:stop] = array[idx].mean(axis=1)
        total += scale * stat
    total /= len(samples)
    low, high = np.percentile(total, [50 * (1 - confidence), 50 * (1 + confidence)])
    return float(low), float(high)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for a single value) and count."""
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    std = float(values.std(ddof=1)) if n > 1 else float("nan")
    return float(values.mean()), std, n
