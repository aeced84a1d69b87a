"""Evaluation protocols, one module each, registered by name.

A protocol is a ``Protocol`` subclass registered with ``@PROTOCOLS.register("name")`` (which
gives the class its ``name``); its package defaults live in
``ssl_bench/defaults/protocols/<name>.yaml``; its ``schema`` (``ssl_bench.schema``) declares the
dataset formats and metrics of its records, their units and directions, its headline metrics
and its place in leaderboards. ``run`` returns the result records (``dataset``, ``metric``,
``value`` and optional extras); ``evaluate`` refuses to store a record the schema does not declare.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from ..checkpoints import Checkpoint
from ..registry import Registry
from ..schema import Schema


@dataclass
class EvalContext:
    """Everything one evaluation needs.

    ``shared``: what the protocols of one ``evaluate_many`` call share in memory (the same dict
    in each of their contexts): dataset manifests and extracted features, by their keys.
    """

    checkpoint: Checkpoint
    data: Path
    recipe: dict
    results_dir: Path
    device: torch.device
    shared: dict = field(default_factory=dict)


class Protocol(ABC):
    """Base class of every protocol."""

    name: ClassVar[str]  # set by PROTOCOLS.register
    schema: ClassVar[Schema]

    @abstractmethod
    def run(self, ctx: EvalContext) -> list[dict]:
        """Evaluate ``ctx.checkpoint`` and return its result records."""


PROTOCOLS: Registry[type[Protocol]] = Registry("protocol", __name__)


def schema_of(protocol: str) -> Schema | None:
    """The schema of the protocol named ``protocol``; None when no protocol has that name."""
    return PROTOCOLS.get(protocol).schema if protocol in PROTOCOLS.names() else None
