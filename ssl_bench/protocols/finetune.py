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

from timm.optim import param_groups_layer_decay

from ..schema import Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._common import open_classification, open_split
from ._features import eval_transform, feature_spec
from ._finetuning import (FINETUNE_METRICS, classifier_from_checkpoint, finetune_train_transform,
                          run_finetuning)


def layer_decay_groups(model, lr: float, min_lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """timm's layer-decay parameter groups with each group's base and final lr scaled."""
    no_decay = getattr(model, "no_weight_decay", lambda: set())()
    groups = param_groups_layer_decay(model, weight_decay=weight_decay, no_weight_decay_list=no_decay,
                                      layer_decay=layer_decay)
    for group in groups:
        # MAE util/lr_sched.py: param_group["lr"] = lr * param_group["lr_scale"]
        group["base_lr"] = lr * group["lr_scale"]
        group["min_lr"] = min_lr * group["lr_scale"]
    return groups


@PROTOCOLS.register("finetune")
class FineTune(Protocol):
    """End-to-end fine-tuning on the full training set (MAE / BEiT recipe)."""

    schema = Schema(datasets=("imagenet",), metrics=FINETUNE_METRICS, headline=("top1",), order=50)

    def run(self, ctx: EvalContext) -> list[dict]:
        recipe = ctx.recipe
        spec = feature_spec(ctx.checkpoint, recipe)
        data = open_classification(ctx, recipe, eval_transform(recipe["transform"], spec.input_filter))
        train = open_split(data.root, recipe["train_split"], finetune_train_transform(recipe, spec.input_filter))
        model, kwargs = classifier_from_checkpoint(ctx.checkpoint, len(data.classes), recipe, spec.final_norm)
        optim = recipe["optim"]
        lr = float(optim["blr"]) * int(recipe["train_batch_size"]) / 256.0  # MAE main_finetune.py
        groups = layer_decay_groups(model, lr, float(recipe["schedule"]["min_lr"]), float(optim["weight_decay"]),
                                    float(optim["layer_decay"]))
        return run_finetuning(ctx, recipe, protocol=self.name, data=data, train_dataset=train, model=model,
                              param_groups=groups, optimizer=optim["name"], spec=spec, model_kwargs=kwargs,
                              extra={"lr": lr, "layer_decay": float(optim["layer_decay"]),
                                     "pool": recipe["head"]["pool"]})
