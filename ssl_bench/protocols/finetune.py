"""Full fine-tuning (MAE main_finetune.py, after BEiT run_class_finetuning.py).

AdamW (betas 0.9, 0.999), lr = blr x batch / 256, weight decay 0.05 except 1-D parameters
and the position embedding / class token, layer-wise lr decay through timm's
``param_groups_layer_decay`` (scale = decay^(L + 1 - layer id): the patch embedding and
tokens are layer 0, block i layer i + 1, the head L + 1), drop path, RandAugment
(``rand-m9-mstd0.5-inc1``) and random erasing through timm's ``create_transform``, mixup 0.8
/ cutmix 1.0 through ``timm.data.Mixup`` with label smoothing 0.1 and
``SoftTargetCrossEntropy``, warmup then cosine per iteration to min_lr; ViT head: global
average pool + a fresh LayerNorm (``fc_norm``) replacing the final norm, the classifier
initialised trunc-normal(std 2e-5). Reported: max val top-1 over epochs and the last epoch's.
"""

from __future__ import annotations

from ..schema import Schema
from . import PROTOCOLS
from ._common import open_split
from ._finetuning import FINETUNE_METRICS, FineTuning, layer_decay_groups


def finetune_param_groups(model, recipe: dict) -> tuple[list[dict], float]:
    """Layer-decay groups of the classifier, each with its base and final lr, and the peak lr:
    lr = blr x batch / 256 (MAE main_finetune.py), scaled per group (MAE util/lr_sched.py:
    lr * param_group["lr_scale"])."""
    optim = recipe["optim"]
    lr = float(optim["blr"]) * int(recipe["train_batch_size"]) / 256.0
    min_lr = float(recipe["schedule"]["min_lr"])
    groups = layer_decay_groups(model, weight_decay=float(optim["weight_decay"]), layer_decay=float(optim["layer_decay"]))
    for group in groups:
        group["base_lr"], group["min_lr"] = lr * group["lr_scale"], min_lr * group["lr_scale"]
    return groups, lr


@PROTOCOLS.register("finetune")
class FineTune(FineTuning):
    """End-to-end fine-tuning on the full training set (MAE / BEiT recipe)."""

    schema = Schema(datasets=("imagenet",), metrics=FINETUNE_METRICS, headline=("top1",), order=50)

    def train_set(self, data, recipe: dict, transform):
        return open_split(data.root, recipe["train_split"], transform)

    def param_groups(self, model, recipe: dict) -> tuple[list[dict], dict]:
        groups, lr = finetune_param_groups(model, recipe)
        return groups, {"lr": lr, "layer_decay": float(recipe["optim"]["layer_decay"])}
