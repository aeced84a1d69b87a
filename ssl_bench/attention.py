"""Which scaled-dot-product-attention kernel the training step runs (recipe key ``attention``).

torch picks a kernel per call; on CPU under bf16 autocast it picks its flash kernel, whose backward
is slower than the plain matmul-softmax-matmul ("math") one for the short token sequences of our
recipes (MSN tiny step, bf16, 2026-12-03: 704 ms with math against 818 ms with torch's choice; fp32:
no difference, 1005 vs 984 ms). ``auto`` therefore takes math on CPU under bf16 and leaves every
other case (fp32, CUDA, where flash and memory-efficient kernels win) to torch.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .errors import UserError

#: recipe value -> the kernels torch may use (None: torch's own choice among all)
BACKENDS = {"torch": None, "math": SDPBackend.MATH, "flash": SDPBackend.FLASH_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}


def resolve_attention(choice: str, device: torch.device, bf16: bool) -> str:
    """The kernel name ``choice`` (``auto`` or a key of ``BACKENDS``) means on ``device``."""
    if choice == "auto":
        return "math" if device.type == "cpu" and bf16 else "torch"
    if choice not in BACKENDS:
        raise UserError(f"attention: {choice!r} is not valid; use auto or one of {', '.join(BACKENDS)}")
    return choice


def attention_kernel(name: str):
    """A context in which scaled dot-product attention runs the kernel ``name`` (resolved)."""
    backend = BACKENDS[name]
    return contextlib.nullcontext() if backend is None else sdpa_kernel(backend)
