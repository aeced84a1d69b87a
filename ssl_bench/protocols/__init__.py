"""Evaluation protocols, one module each, registered by name.

A protocol is a class registered with ``@PROTOCOLS.register("name")`` whose package
defaults live in ``ssl_bench/defaults/protocols/<name>.yaml``; ``run`` returns the
result records (``dataset``, ``metric``, ``value`` and optional extras).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch

from ..checkpoints import Checkpoint
from ..registry import Registry


@dataclass
class EvalContext:
    """Everything one evaluation needs."""

    checkpoint: Checkpoint
    data: Path
    recipe: dict
    results_dir: Path
    device: torch.device


class Protocol(ABC):
    """Base class of every protocol."""

    name: str = ""

    @abstractmethod
    def run(self, ctx: EvalContext) -> list[dict]:
        """Evaluate ``ctx.checkpoint`` and return its result records."""


PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", __name__)
