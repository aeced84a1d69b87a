"""The memory layout of the images the training step's convolutions read (recipe key ``conv_layout``).

oneDNN's CPU convolutions run faster on channels-last (NHWC) input than on torch's default NCHW.
Forward + backward, 2 threads, 2026-12-04: ResNet-18 at 64 px, batch 128: 0.67 against 0.78 s;
ResNet-50 at 96 px, batch 32: 1.09 against 1.21 s; the conv stem of ``vit_tiny_convstem`` on MSN
tiny's views: 70 against 95 ms; a plain ViT's patch projection: no difference (25.1 against
25.0 ms). So only ConvNets and conv stems get it (``Backbone.conv_input``). Only the input is
laid out channels-last: the layout carries through the convolutions, and the parameters stay as
they are, so checkpoints do not change. ``conv_layout: auto`` takes ``channels_last`` on CPU and
leaves CUDA to torch's default (``contiguous``) until measured there (``ssl-bench bench pretrain
--set conv_layout=channels_last``).
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

from .errors import UserError

LAYOUTS = ("channels_last", "contiguous")
_ACTIVE = contextvars.ContextVar("ssl_bench_channels_last", default=False)


def resolve_conv_layout(choice: str, device: torch.device) -> str:
    """The layout the recipe value ``choice`` (``auto`` or one of ``LAYOUTS``) means on ``device``."""
    if choice == "auto":
        return "channels_last" if device.type == "cpu" else "contiguous"
    if choice not in LAYOUTS:
        raise UserError(f"conv_layout: {choice!r} is not valid; use auto, {' or '.join(LAYOUTS)}")
    return choice


@contextlib.contextmanager
def conv_layout(layout: str):
    """A context in which ``conv_input`` gives images the resolved ``layout``."""
    token = _ACTIVE.set(layout == "channels_last")
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def conv_input(images: torch.Tensor) -> torch.Tensor:
    """``images`` (B, C, H, W) channels-last inside ``conv_layout("channels_last")``, else as they are."""
    if _ACTIVE.get() and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images
