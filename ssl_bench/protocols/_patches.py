"""Patch-feature maps of a frozen ViT, as the DAVIS, prompt and linear segmentation protocols read them.

* ``layer_spec`` / ``dense_features``: which tokens form the patch-feature map. ``layer: last`` is
  the last block's output after the final norm (DINO ``get_intermediate_layers(n=1)``); an integer
  k is the output of block k (1-based, as the papers count), before the final norm.
* ``normalise``: uint8 RGB (H, W, 3) -> normalised float (3, H, W) tensor.
"""

from __future__ import annotations

import re

import numpy as np
import torch
from torch.nn import functional as F

from ..backbones import Backbone
from ..errors import NotApplicable, UserError


def require_vit(backbone: Backbone, protocol: str) -> None:
    if not backbone.is_vit:
        raise NotApplicable(f"protocol {protocol}: needs patch tokens of a ViT; {backbone.arch} is a ConvNet")


def layer_spec(value, depth: int, key: str = "layer") -> int | None:
    """None for 'last' (final block after the final norm), else a 0-based block index."""
    if value in ("last", None):
        return None
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not (1 <= value <= depth or -depth <= value <= -1):
        raise UserError(f"recipe key '{key}': expected 'last' or a block number 1..{depth} (1-based), got {value!r}")
    return value - 1 if value > 0 else depth + value


def block_indices(values, depth: int, key: str = "blocks") -> list[int]:
    """1-based block numbers from a recipe -> 0-based indices (checked against the depth)."""
    if not isinstance(values, list) or not values:
        raise UserError(f"recipe key '{key}': expected a non-empty list of block numbers 1..{depth}, got {values!r}")
    out = []
    for v in values:
        if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= depth:
            raise UserError(f"recipe key '{key}': block {v!r} is not in 1..{depth} (1-based, this backbone has "
                            f"{depth} blocks)")
        out.append(v - 1)
    return out


@torch.no_grad()
def dense_features(backbone: Backbone, images: torch.Tensor, layer: int | None) -> torch.Tensor:
    """(B, C, h, w) patch-feature map of ``layer`` (see ``layer_spec``)."""
    if layer is None:
        return backbone.patch_grid(images)[0]
    return backbone.patch_grid(images, blocks=[layer])[0]


def normalise(rgb: np.ndarray, mean, std) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> (3, H, W) float tensor, (x / 255 - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (B, C, h, w) map, align_corners=False (DINO / mmseg convention)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
