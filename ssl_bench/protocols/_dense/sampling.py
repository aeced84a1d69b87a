"""Repeat-factor sampling for LVIS (Gupta et al. 2019; detectron2 ``RepeatFactorTrainingSampler``).

For each category c, f(c) = fraction of training images that contain c, and
r(c) = max(1, sqrt(t / f(c))); an image's repeat factor is the maximum r(c) over the categories
annotated in it (1 for an image without annotations). Each epoch repeats image i
floor(r_i) times plus once more with probability frac(r_i) (stochastic rounding), then shuffles.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch


def repeat_factors(image_categories: list[set[int]], threshold: float) -> torch.Tensor:
    """Per-image repeat factors from the set of category ids annotated in each image."""
    count: dict[int, int] = defaultdict(int)
    for cats in image_categories:
        for c in cats:
            count[c] += 1
    n = len(image_categories)
    cat_rep = {c: max(1.0, math.sqrt(threshold / (k / n))) for c, k in count.items()}
    return torch.tensor([max((cat_rep[c] for c in cats), default=1.0) for cats in image_categories],
                        dtype=torch.float64)


def epoch_indices(factors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One epoch of indices: stochastic rounding of the factors, then a shuffle."""
    integer = torch.floor(factors)
    frac = factors - integer
    reps = integer + (torch.rand(len(factors), generator=generator, dtype=torch.float64) < frac).double()
    indices = torch.repeat_interleave(torch.arange(len(factors)), reps.long())
    return indices[torch.randperm(len(indices), generator=generator)]


def infinite_indices(n: int, generator: torch.Generator, factors: torch.Tensor | None = None):
    """Shuffled epochs forever; with ``factors``, repeat-factor epochs."""
    while True:
        order = epoch_indices(factors, generator) if factors is not None else torch.randperm(n, generator=generator)
        yield from order.tolist()
