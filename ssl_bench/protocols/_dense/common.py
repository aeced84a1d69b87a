"""Small shared pieces of the dense protocols: a 2-D LayerNorm, the optimiser, lr setting, drop path."""

from __future__ import annotations

import copy
import math
from typing import Iterator

import torch
from timm.layers import DropPath
from torch import nn

from ...errors import UserError
from ...progress import progress
from ...schedules import lr_factor
from .._finetuning import layer_decay_groups

#: ImageNet statistics (mmseg/mmdet data preprocessors, detectron2 ``constants.imagenet_rgb256_*``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map (detectron2 ``LayerNorm`` / mmdet ``LN2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def trainable_backbone(checkpoint, drop_path: float = 0.0) -> "object":
    """A private, trainable copy of the checkpoint's backbone (the loaded one stays untouched), with
    stochastic depth ``drop_path`` (``set_drop_path``)."""
    backbone = copy.deepcopy(checkpoint.backbone)
    backbone.train()
    for p in backbone.parameters():
        p.requires_grad_(True)
    set_drop_path(backbone, drop_path)
    return backbone


def set_drop_path(backbone, rate: float) -> None:
    """Stochastic depth with the linear rule (rate_i = rate * i / (depth - 1)) on a timm ViT."""
    if not rate or not backbone.is_vit:
        return

    blocks = backbone.model.blocks
    for i, block in enumerate(blocks):
        r = rate * i / max(len(blocks) - 1, 1)
        block.drop_path1 = DropPath(r) if r > 0 else nn.Identity()
        block.drop_path2 = DropPath(r) if r > 0 else nn.Identity()


def build_adamw(groups: list[dict], optim: dict) -> torch.optim.Optimizer:
    """AdamW (``optim.kind: adamw``, the ViT protocols) or SGD with momentum (``sgd``, MoCo R50-C4)."""
    kind = optim.get("kind", "adamw")
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=float(optim["lr"]), momentum=float(optim.get("momentum", 0.9)),
                               foreach=True)
    if kind != "adamw":
        raise UserError(f"recipe key 'optim.kind': {kind!r}; valid: adamw, sgd")
    betas = tuple(float(b) for b in optim.get("betas", (0.9, 0.999)))
    return torch.optim.AdamW(groups, lr=float(optim["lr"]), betas=betas, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = base_lr * group.get("lr_scale", 1.0) * factor
    return base_lr * factor


def check_finite(loss: torch.Tensor, it: int, what: str) -> None:
    if not math.isfinite(float(loss.detach())):
        raise UserError(f"{what}: the loss became {float(loss)} at iteration {it}; lower 'optim.lr' "
                        "or raise 'schedule.warmup_iters'")


def train_iterations(backend, backbone, batches: Iterator, recipe: dict, device: torch.device, *, desc: str,
                     what: str) -> list[float]:
    """Iteration-based training of a dense model (its ``backend``: ``heads()``, ``train(mode)``,
    ``loss(inputs, targets)``): the recipe's optimiser over layer-decay groups of the backbone and
    the heads, its lr schedule per iteration, bf16 autocast; ``batches`` yields (inputs, targets) on
    ``device``. Returns the loss of every iteration."""
    optim, sched = recipe["optim"], recipe["schedule"]
    iters = int(sched["iters"])
    groups = layer_decay_groups(backbone.model, weight_decay=float(optim["weight_decay"]),
                                layer_decay=float(optim["layer_decay"]), heads=backend.heads())
    optimizer = build_adamw(groups, optim)
    backend.train(True)
    losses = []
    bar = progress(range(iters), desc=desc, unit="it")
    for it in bar:
        set_lr(optimizer, float(optim["lr"]), lr_factor(it, sched, iters))
        inputs, targets = next(batches)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(recipe["bf16"])):
            loss = backend.loss(inputs, targets)
        check_finite(loss.detach(), it, what)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    backend.train(False)
    return losses
