"""Input filters a checkpoint can require at evaluation time (``eval.input_filter``).

MSCN (Jing et al., "Masked Siamese ConvNets", Section 4.3 and Appendix A.2) trains on
high-pass-filtered images and applies the same filter to the linear-probe train and test
inputs. A checkpoint records it as ``eval: {input_filter: {name: highpass, sigma: 5}}``;
protocols build the filter with ``build_filter(spec)`` and apply it after normalisation::

    from ssl_bench.filters import build_filter
    filt = build_filter(checkpoint.eval["input_filter"])   # None when the spec is None
    x = filt(x) if filt else x                              # (C,H,W) or (B,C,H,W)

The high-pass filter is ``x - GaussianBlur_sigma(x)`` per channel: a separable Gaussian
kernel of size ``2 * ceil(3 sigma) + 1`` (+-3 sigma; clipped to what reflect padding allows
on small images), reflect padding, i.e. torchvision's ``gaussian_blur`` subtracted from the
input. Zero then means "no information", which MSCN's masks rely on.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn

FILTERS = ("highpass",)


def gaussian_kernel_size(sigma: float, height: int, width: int) -> int:
    """Odd kernel size covering +-3 sigma, no larger than reflect padding allows (pad < side)."""
    size = 2 * math.ceil(3 * float(sigma)) + 1
    largest = 2 * (min(height, width) - 1) + 1
    return max(1, min(size, largest))


def highpass(images: Tensor, sigma: float = 5.0) -> Tensor:
    """``images - gaussian_blur(images, sigma)`` for (C, H, W) or (..., C, H, W) float tensors."""
    if sigma <= 0:
        raise ValueError(f"highpass sigma must be positive, got {sigma}")
    size = gaussian_kernel_size(sigma, images.shape[-2], images.shape[-1])
    if size == 1:
        return torch.zeros_like(images)
    return images - TF.gaussian_blur(images, [size, size], [float(sigma), float(sigma)])


class HighPass(nn.Module):
    """``highpass`` as a transform / module (picklable, usable in a ``T.Compose``)."""

    def __init__(self, sigma: float = 5.0):
        super().__init__()
        self.sigma = float(sigma)

    def forward(self, images: Tensor) -> Tensor:
        return highpass(images, self.sigma)

    def spec(self) -> dict:
        return {"name": "highpass", "sigma": self.sigma}

    def __repr__(self) -> str:
        return f"HighPass(sigma={self.sigma})"


def build_filter(spec: dict | None) -> Callable[[Tensor], Tensor] | None:
    """The filter a checkpoint's ``eval.input_filter`` names, or None for no filter."""
    if not spec:
        return None
    name = spec.get("name")
    if name in (None, "none"):
        return None
    if name == "highpass":
        return HighPass(spec.get("sigma", 5.0))
    raise ValueError(f"unknown input filter {name!r}; valid: {', '.join(FILTERS)}")
