"""Input filters a checkpoint can require at evaluation time (``eval.input_filter``).

MSCN (Jing et al., "Masked Siamese Convnets", Section 4.3 and Appendix A.2) trains on
high-pass-filtered images and applies the same filter to the linear-probe train and test
inputs. ``methods/mscn.py`` filters its views with ``highpass`` and records the filter in the
checkpoint as ``eval: {input_filter: {name: highpass, sigma: 5}}``; the protocols read that
spec (or a recipe's ``input_filter`` override) through ``normalise_filter`` and append
``build_filter(spec)`` to their transforms, after normalisation.

The high-pass filter is ``x - GaussianBlur_sigma(x)`` per channel: a separable Gaussian
kernel of size ``2 * ceil(3 sigma) + 1`` (+-3 sigma; clipped to what reflect padding allows
on small images), reflect padding, i.e. torchvision's ``gaussian_blur`` subtracted from the
input. Zero then means "no information", which MSCN's masks rely on. Written here because
torchvision has the blur but no high-pass.
"""

from __future__ import annotations

import math

import torch
import torchvision.transforms.functional as TF
from torch import Tensor, nn

from .errors import UserError


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


def normalise_filter(value, where: str = "recipe key 'input_filter'") -> dict | None:
    """None / 'none' / {} -> None; 'highpass[:SIGMA]' or {'name': 'highpass', 'sigma': 5} -> the
    checked spec ``{'name': 'highpass', 'sigma': float}``."""
    if value in (None, "none", "None", {}) or (isinstance(value, dict) and value.get("name") in (None, "none")):
        return None
    if isinstance(value, str) and value.startswith("highpass"):
        _, _, sigma = value.partition(":")
        value = {"name": "highpass", "sigma": float(sigma or 5)}
    if not isinstance(value, dict) or value.get("name") != "highpass":
        raise UserError(f"{where}: unknown input filter {value!r}; valid: none, auto, "
                        "{name: highpass, sigma: 5}")
    sigma = value.get("sigma", 5)
    if not isinstance(sigma, (int, float)) or sigma <= 0:
        raise UserError(f"{where}: highpass sigma must be a positive number, got {sigma!r}")
    return {"name": "highpass", "sigma": float(sigma)}


def build_filter(spec: dict | None) -> HighPass | None:
    """The filter a spec names (see ``normalise_filter``), or None for no filter."""
    spec = normalise_filter(spec, "input filter")
    return HighPass(spec["sigma"]) if spec else None
