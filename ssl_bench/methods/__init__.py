"""Pretraining methods, one module each, all run by ``ssl_bench.engine``.

A method is an ``nn.Module`` subclass of ``Method`` registered in ``METHODS``; its own
recipe section (``recipe[<name>]``, defaults in ``ssl_bench/defaults/pretrain/<name>.yaml``)
holds every value it uses. The engine owns everything else: data order, optimiser and
schedules, EMA updates, precision, DDP, checkpoints, logging and export.

What a method provides::

    @METHODS.register("mymethod")
    class MyMethod(Method):
        def __init__(self, recipe):            # build student (self.backbone), heads, teachers
        def transform(self):                   # picklable callable(PIL image) -> dict of tensors
        def loss(self, batch):                 # -> (scalar loss, {"name": float tensor, ...})
        def ema_pairs(self):                   # [(online module, teacher module), ...]
        def export(self):                      # -> (Backbone to save, metadata dict)

and may override ``no_weight_decay(name, param)``, ``extra_param_groups()``,
``clip_parameters()`` and ``train(mode)``. The engine sets ``self.step`` /
``self.total_steps`` before every ``loss`` call (for in-method schedules such as MSN's
sharpening). ``forward(batch)`` is ``loss(batch)`` so that DDP wraps the whole method.
"""

from __future__ import annotations

from typing import Callable, Iterable

from torch import Tensor, nn

from ..backbones import Backbone
from ..registry import Registry

METHODS: Registry = Registry("method", __name__)


class Method(nn.Module):
    """Base class of the pretraining methods (see the module docstring)."""

    name = "method"
    #: parameter names (exact, on the method) that never get weight decay, beyond the default rule
    no_decay_names: tuple[str, ...] = ()
    #: attribute names of the heads the method is defined with (a projector, a decoder): work it cannot
    #: avoid, so ``ssl-bench bench pretrain`` counts their forward (and backward) in its ideal step
    essential_heads: tuple[str, ...] = ()

    def __init__(self, recipe: dict):
        super().__init__()
        self.recipe = recipe
        self.cfg = recipe[self.name]
        self.step = 0
        self.total_steps = 1

    # ----- what every method defines -------------------------------------------------------
    def transform(self) -> Callable:
        raise NotImplementedError

    def loss(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return []

    def export(self) -> tuple[Backbone, dict]:
        raise NotImplementedError

    # ----- optional hooks ------------------------------------------------------------------
    def forward(self, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        return self.loss(batch)

    def no_weight_decay(self, name: str, param: nn.Parameter) -> bool:
        """Default rule (MSN, BEiT/ConMIM): biases, norms and other 1-d parameters."""
        return param.ndim <= 1 or name.endswith(".bias") or name in self.no_decay_names

    def extra_param_groups(self) -> list[dict]:
        """Groups the engine must not build from the default rule, e.g. MSN's prototypes:
        dicts with ``params`` and optionally ``weight_decay`` (fixed) / ``lr_scale``."""
        return []

    def clip_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters whose gradient norm is clipped (default: all trainable ones)."""
        return [p for p in self.parameters() if p.requires_grad]

    @staticmethod
    def freeze(module: nn.Module) -> nn.Module:
        for p in module.parameters():
            p.requires_grad_(False)
        return module
