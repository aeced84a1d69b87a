"""lightly's MSN built with the settings of one of our MSN recipes, for
``ssl-bench bench pretrain --method msn --against lightly``.

lightly (https://github.com/lightly-ai/lightly) is not a dependency of ssl-bench: install it for
this bench only (``pip install --no-deps lightly==1.6.0``). Only the submodules the MSN step
needs are imported: ``MaskedVisionTransformerTIMM`` around the recipe's timm ViT,
``MSNProjectionHead``, ``MSNLoss`` and ``update_momentum``. Everything lightly leaves to its user
(optimiser, parameter groups, clipping, autocast) is the recipe's, through the engine's own
helpers, so the two steps differ only in the modules and the loss.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import timm
import torch
from torch import nn

from ..backbones import timm_kwargs
from ..engine.step import Schedules, apply_schedules, build_optimizer
from ..errors import UserError
from ..methods.msn import MSN

#: the release the README's figures were measured with
LIGHTLY = "lightly==1.6.0"
INSTALL = f"pip install --no-deps {LIGHTLY}"


def import_lightly() -> SimpleNamespace:
    """lightly's MSN parts, or a ``UserError`` naming the fix: lightly missing, or a module that
    importing it pulls in (``--no-deps`` installs none of lightly's dependencies)."""
    try:
        import lightly
        from lightly.loss.msn_loss import MSNLoss
        from lightly.models.modules.heads import MSNProjectionHead
        from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
        from lightly.models.utils import deactivate_requires_grad, update_momentum
    except ModuleNotFoundError as err:
        missing = err.name or str(err)
        if missing == "lightly":
            raise UserError(f"--against lightly: lightly is not installed; {INSTALL}") from None
        if missing.startswith("lightly."):
            raise UserError(f"--against lightly: the installed lightly has no module {missing}; {INSTALL}") from None
        raise UserError(f"--against lightly: importing lightly needs the module '{missing}', which is not "
                        f"installed; install the package that provides it ({INSTALL} brings none of "
                        "lightly's dependencies)") from None
    except ImportError as err:
        raise UserError(f"--against lightly: the installed lightly lacks a part of its MSN ({err}); {INSTALL}") from None
    return SimpleNamespace(version=lightly.__version__, MSNLoss=MSNLoss, MSNProjectionHead=MSNProjectionHead,
                           MaskedVisionTransformerTIMM=MaskedVisionTransformerTIMM,
                           deactivate_requires_grad=deactivate_requires_grad, update_momentum=update_momentum)


class LightlyMSN(nn.Module):
    """lightly's MSN modules at a recipe's sizes: online and target ``MaskedVisionTransformerTIMM``
    around the recipe's timm ViT, online and target ``MSNProjectionHead``, learnable prototypes.
    Parameter groups and clipped parameters follow our MSN's rules (the official code's)."""

    extra_param_groups = MSN.extra_param_groups
    no_weight_decay = MSN.no_weight_decay
    clip_parameters = MSN.clip_parameters

    def __init__(self, lightly: SimpleNamespace, recipe: dict):
        super().__init__()
        c, bb = recipe["msn"], recipe["backbone"]
        if not c["use_bn"]:
            raise UserError("--against lightly: msn.use_bn false has no lightly equivalent "
                            "(MSNProjectionHead always has BatchNorm)")
        vit = timm.create_model(bb["arch"], num_classes=0, **timm_kwargs(
            bb["arch"], img_size=c["rand_size"], patch_size=bb["patch_size"], drop_path_rate=bb["drop_path_rate"]))
        # the same trained parameters as ours: a learned position embedding (lightly's default is a
        # fixed sin-cos one); initial values do not change the work of a step
        self.backbone = lightly.MaskedVisionTransformerTIMM(vit, weight_initialization="skip",
                                                            antialias=c["pos_antialias"],
                                                            pos_embed_initialization="learn")
        self.head = lightly.MSNProjectionHead(vit.num_features, c["hidden_dim"], c["output_dim"])
        self.prototypes = nn.Parameter(torch.empty(c["num_proto"], c["output_dim"]))
        nn.init.uniform_(self.prototypes, -c["output_dim"] ** -0.5, c["output_dim"] ** -0.5)  # as our MSN
        self.target_backbone, self.target_head = copy.deepcopy(self.backbone), copy.deepcopy(self.head)
        lightly.deactivate_requires_grad(self.target_backbone)
        lightly.deactivate_requires_grad(self.target_head)


def build_lightly_step(lightly: SimpleNamespace, recipe: dict, batch: dict, device: torch.device):
    """A function running one training step of lightly's MSN on the views of ``batch`` (our MSN
    transform's: target, anchors with the shared kept patches, focal views) as lightly's MSN
    example feeds them (one tensor per view, focal views concatenated in the step), the
    recipe's optimiser, hyper-parameters, clipping, EMA momentum and autocast precision, the
    schedules held at step 0 as in our bench step. Returns (step function, the model)."""
    c = recipe["msn"]
    model = LightlyMSN(lightly, recipe).to(device).train()
    optimizer = build_optimizer(model, recipe, fused=False)  # torch's default AdamW, as lightly's example builds it
    schedules = Schedules(recipe, ipe=1000)
    apply_schedules(optimizer, schedules.lr(0), schedules.weight_decay(0))
    momentum = schedules.momentum(0)
    criterion = lightly.MSNLoss(temperature=c["temperature"],
                                sinkhorn_iterations=c["sinkhorn_iters"] if c["use_sinkhorn"] else 0,
                                regularization_weight=c["memax_weight"])
    bf16 = recipe["precision"] == "bf16"
    clip_grad = recipe["optim"]["clip_grad"]

    target = batch["target"].contiguous()
    anchors, focal = _views(batch["anchors"]), _views(batch.get("focal"))
    # lightly indexes the whole token sequence: CLS (0) kept, patch i is token i + 1
    keep = batch["keep"][0] + 1
    idx_keep = (torch.cat([keep.new_zeros(1), keep]).expand(len(anchors) * target.shape[0], -1)
                if c["patch_drop"] > 0 else None)

    def step():
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            outputs = [model.head(model.backbone(images=_joined(anchors), idx_keep=idx_keep))]
            if focal:
                outputs.append(model.head(model.backbone(images=_joined(focal))))
            with torch.no_grad():
                targets_out = model.target_head(model.target_backbone(images=target))
            loss = criterion(torch.cat(outputs), targets_out, model.prototypes,
                             target_sharpen_temperature=c["start_sharpen"])  # our schedule's value at step 0
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(model.clip_parameters(), clip_grad)
        optimizer.step()
        lightly.update_momentum(model.backbone, model.target_backbone, momentum)
        lightly.update_momentum(model.head, model.target_head, momentum)

    return step, model


def _views(views: torch.Tensor | None) -> list[torch.Tensor]:
    """(B, V, 3, H, W) views of a batch -> V tensors (B, 3, H, W), as lightly's collate gives them."""
    return [] if views is None else [views[:, i].contiguous() for i in range(views.shape[1])]


def _joined(views: list[torch.Tensor]) -> torch.Tensor:
    """Views of one size in one batch, view-major (lightly's example: ``torch.concat(views)``)."""
    return views[0] if len(views) == 1 else torch.cat(views)
