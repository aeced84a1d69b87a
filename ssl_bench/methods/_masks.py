"""Mask generators shared by the methods (all draw from the seeded per-sample RNG)."""

from __future__ import annotations

import math
import random

import numpy as np
import torch


def patch_drop_keep(num_patches: int, drop_ratio: float) -> torch.Tensor:
    """Indices of the patches an MSN anchor keeps: ``floor(N * (1 - ratio))`` of them, in
    random order (msn src/deit.py ``forward_features``: ``T_H = floor(N * keep)``,
    ``randperm(N)[:T_H]``). The CLS token is kept by the backbone, not listed here."""
    keep = int(math.floor(num_patches * (1.0 - drop_ratio)))
    return torch.randperm(num_patches)[:keep]


def grid_random_mask(grid: tuple[int, int], patch_size: int, mask_patch_size: int,
                     ratio: float) -> torch.Tensor:
    """SimMIM-style random mask on a coarser grid (ConMIM ``MaskGenerator``).

    The image's patch grid ``grid`` (h, w) is covered by cells of ``mask_patch_size`` px
    (``mask_patch_size // patch_size`` patches a side); ``ceil(cells * ratio)`` cells are
    masked, chosen uniformly; returns an (h, w) bool mask, True = masked.
    """
    if mask_patch_size % patch_size:
        raise ValueError(f"mask_patch_size {mask_patch_size} must be a multiple of the patch size {patch_size}")
    scale = mask_patch_size // patch_size
    h, w = grid
    if h % scale or w % scale:
        raise ValueError(f"a {h}x{w} patch grid is not covered by {mask_patch_size}px mask cells")
    ch, cw = h // scale, w // scale
    cells = ch * cw
    count = int(np.ceil(cells * ratio))
    chosen = torch.randperm(cells)[:count]
    coarse = torch.zeros(cells, dtype=torch.bool)
    coarse[chosen] = True
    coarse = coarse.reshape(ch, cw)
    return coarse.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


def random_patch_mask(num_patches: int, ratio: float) -> torch.Tensor:
    """MAE-style random mask over patches: ``int(N * ratio)`` True entries."""
    count = int(num_patches * ratio)
    mask = torch.zeros(num_patches, dtype=torch.bool)
    mask[torch.randperm(num_patches)[:count]] = True
    return mask


def blockwise_mask(grid: tuple[int, int], num_masking: int, *, min_block: int = 16,
                   max_block: int | None = None, min_aspect: float = 0.3,
                   fixed_count: bool = True) -> torch.Tensor:
    """BEiT blockwise mask over an (h, w) patch grid; returns (h, w) bool, True = masked.

    Rectangles of area uniform in [min_block, remaining] patches and aspect log-uniform in
    [min_aspect, 1/min_aspect] are placed (10 tries each) while they add new patches without
    overshooting ``num_masking`` (BEiT masking_generator.py). With ``fixed_count`` the
    shortfall is filled with random unmasked patches so exactly ``num_masking`` are masked
    (SiameseIM util/masking_generator.py ``fixed_num_masking_patches=True``). Draws from
    python ``random`` (seeded per sample by the engine).
    """
    h, w = grid
    num_masking = min(int(num_masking), h * w)
    max_block = num_masking if max_block is None else max_block
    log_aspect = (math.log(min_aspect), math.log(1.0 / min_aspect))
    mask = np.zeros((h, w), dtype=bool)
    count = 0
    while count < num_masking:
        budget = min(num_masking - count, max_block)
        added = 0
        for _ in range(10):
            area = random.uniform(min_block, budget)
            aspect = math.exp(random.uniform(*log_aspect))
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if bw < w and bh < h:
                top, left = random.randint(0, h - bh), random.randint(0, w - bw)
                new = bh * bw - int(mask[top:top + bh, left:left + bw].sum())
                if 0 < new <= budget:
                    mask[top:top + bh, left:left + bw] = True
                    added = new
            if added:
                break
        if not added:
            break
        count += added
    if fixed_count and count < num_masking:
        free = np.flatnonzero(~mask.reshape(-1)).tolist()
        random.shuffle(free)
        mask.reshape(-1)[free[:num_masking - count]] = True
    return torch.from_numpy(mask)
