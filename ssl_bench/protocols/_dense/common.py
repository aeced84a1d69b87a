"""Small shared pieces of the dense protocols: a 2-D LayerNorm, the optimiser, lr setting, drop path."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ...errors import UserError

#: ImageNet statistics (mmseg/mmdet data preprocessors, detectron2 ``constants.imagenet_rgb256_*``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map (detectron2 ``LayerNorm`` / mmdet ``LN2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def trainable_backbone(checkpoint) -> "object":
    """A private, trainable copy of the checkpoint's backbone (the loaded one stays untouched)."""
    backbone = copy.deepcopy(checkpoint.backbone)
    backbone.train()
    for p in backbone.parameters():
        p.requires_grad_(True)
    return backbone


def set_drop_path(backbone, rate: float) -> None:
    """Stochastic depth with the linear rule (rate_i = rate * i / (depth - 1)) on a timm ViT."""
    if not rate or not backbone.is_vit:
        return
    from timm.layers import DropPath

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


def choice(recipe: dict, key: str, valid: tuple[str, ...]) -> str:
    value = recipe.get(key)
    if value not in valid:
        raise UserError(f"recipe key '{key}': {value!r}; valid: {', '.join(valid)}")
    return value
