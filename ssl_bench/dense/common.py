"""Small shared pieces of the dense protocols: norms, optimiser groups, schedules."""

from __future__ import annotations

import copy
import math
import random

import numpy as np
import torch
from torch import nn

from ..errors import UserError

#: ImageNet statistics (mmseg/mmdet data preprocessors, detectron2 ``constants.imagenet_rgb256_*``).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an (N, C, H, W) map (detectron2 ``LayerNorm`` / mmdet ``LN2d``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def seed_all(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


def layer_decay_groups(backbone, heads: list[nn.Module], *, weight_decay: float, layer_decay: float,
                       extra_no_decay: tuple[str, ...] = ()) -> list[dict]:
    """AdamW parameter groups: the backbone through timm's ``param_groups_layer_decay``
    (ViT: scale = layer_decay ** (L + 1 - layer_id), embeddings id 0, block i id i + 1, as BEiT and
    ViTDet; ResNet: timm's stage grouping), no decay on
    1-D parameters and the model's ``no_weight_decay()`` names such as pos_embed), every head
    parameter at scale 1 with the same 1-D rule. Each group carries ``lr_scale``."""
    from timm.optim import param_groups_layer_decay

    model = backbone.model
    no_wd = set(getattr(model, "no_weight_decay", lambda: set())()) | set(extra_no_decay)
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_wd,
                                      layer_decay=layer_decay)
    if backbone.is_vit:
        # timm 1.0 puts the final norm in the last block's group, so its top layer id is L and block i
        # gets decay ** (L - (i + 1)); BEiT/MAE (mmseg LayerDecayOptimizerConstructor) and ViTDet
        # (get_vit_lr_decay_rate) give decay ** (L + 1 - (i + 1)), the heads alone at scale 1
        for group in groups:
            group["lr_scale"] *= layer_decay
    seen = {id(p) for g in groups for p in g["params"]}
    decay, no_decay = [], []
    for head in heads:
        for p in head.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if p.ndim <= 1 else decay).append(p)
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "lr_scale": 1.0})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0})
    return groups


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


def warmup_factor(it: int, warmup_iters: int, warmup_ratio: float) -> float:
    """Linear warmup from ``warmup_ratio`` to 1 over ``warmup_iters`` (mmengine LinearLR,
    detectron2 WarmupParamScheduler 'linear')."""
    if warmup_iters <= 0 or it >= warmup_iters:
        return 1.0
    alpha = it / warmup_iters
    return warmup_ratio * (1 - alpha) + alpha


def poly_factor(it: int, total: int, power: float = 1.0, min_ratio: float = 0.0) -> float:
    """mmengine PolyLR: (1 - it / total) ** power, floored at ``min_ratio`` (eta_min / lr)."""
    progress = min(it, total) / max(total, 1)
    return (1 - min_ratio) * (1 - progress) ** power + min_ratio


def multistep_factor(it: int, milestones: list[int], values: list[float]) -> float:
    """fvcore MultiStepParamScheduler: values[k] after the k-th milestone."""
    k = sum(1 for m in milestones if it >= m)
    return float(values[min(k, len(values) - 1)])


def lr_factor(it: int, sched: dict, total: int) -> float:
    """The schedule of a recipe's ``schedule`` mapping at iteration ``it``."""
    kind = sched.get("kind", "poly")
    warm = warmup_factor(it, int(sched.get("warmup_iters", 0)), float(sched.get("warmup_ratio", 1e-6)))
    if kind == "poly":
        return warm * poly_factor(it, total, float(sched.get("power", 1.0)), float(sched.get("min_ratio", 0.0)))
    if kind == "multistep":
        milestones = [int(round(float(m) * total)) if float(m) < 1 else int(m) for m in sched["milestones"]]
        return warm * multistep_factor(it, milestones, [float(v) for v in sched["values"]])
    raise UserError(f"recipe key 'schedule.kind': {kind!r}; valid: poly, multistep")


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
