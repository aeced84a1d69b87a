"""Mask R-CNN on torchvision's detection models with our backbones (default detection backend).

ViT (ViTDet, detectron2 ``modeling/backbone/vit.py`` + ``configs/common/models/mask_rcnn_vitdet.py``):
patch embedding, absolute position embeddings resized bicubically to the patch grid (the CLS
position is dropped and the CLS token is not used), the timm blocks run on the (B, h, w, C) grid
with non-overlapping window attention (``window_size``, zero padding to whole windows) except the
global blocks; no final norm. A simple feature pyramid is built from the LAST block: scale 4 =
ConvT(C, C/2) + LN + GELU + ConvT(C/2, C/4); 2 = ConvT(C, C/2); 1 = identity; 0.5 = max-pool; each
followed by 1x1 conv + LN and 3x3 conv + LN to 256 channels, plus a stride-2 max-pool P6
(LastLevelMaxPool). RPN with 2 convs, box head 4 conv (LN) + 1 fc, mask head 4 conv (LN).
Not reproduced: ViTDet's decomposed relative position biases (timm blocks have none).

ResNet-50 (timm ``resnet50``): ``C4`` (detectron2 ``mask_rcnn_c4.py``, MoCo's detection configs):
stem..res4 as the backbone (stride 16), RoIAlign 14x14, res5 + average pool as the box head,
the same res5 + one 2x transposed conv as the mask head; or ``FPN`` (torchvision
``FeaturePyramidNetwork`` over res2-res5 + P6). BatchNorm frozen (``norm: frozen``) or trained
(``norm: bn``, MoCo uses SyncBN), ``freeze_at`` stages frozen.

Images are normalised with the ImageNet statistics and padded to a multiple of
``size_divisible`` (= ``image_size``: ViTDet's square padding). Training inputs arrive already
jittered (LSJ), so the model's own resize is skipped in training; at test the longer side is
resized to ``image_size`` (detectron2 ``ResizeShortestEdge(image_size, max_size=image_size)``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d

from ...errors import UserError
from .common import IMAGENET_MEAN, IMAGENET_STD, LayerNorm2d

# ----------------------------------------------------------------------------------- ViTDet backbone

def window_partition(x: torch.Tensor, size: int):
    """(B, H, W, C) -> (B * nW, size * size, C) windows, zero-padded to whole windows."""
    b, h, w, c = x.shape
    ph, pw = (size - h % size) % size, (size - w % size) % size
    if ph or pw:
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
    hp, wp = h + ph, w + pw
    x = x.view(b, hp // size, size, wp // size, size, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, size * size, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, size: int, padded: tuple[int, int], hw: tuple[int, int]):
    hp, wp = padded
    h, w = hw
    b = windows.shape[0] // ((hp // size) * (wp // size))
    x = windows.view(b, hp // size, wp // size, size, size, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, hp, wp, -1)[:, :h, :w].contiguous()


class ViTDetNet(nn.Module):
    """The ViTDet trunk over a timm ViT (see the module docstring); returns (B, C, h, w)."""

    def __init__(self, backbone, window_size: int, global_blocks: list[int]):
        super().__init__()
        if not backbone.is_vit:
            raise UserError(f"{backbone.arch}: the ViTDet backbone needs a ViT; use model.backbone: resnet_c4 "
                            "or resnet_fpn for a ConvNet")
        self.backbone = backbone
        self.vit = backbone.model
        depth = len(self.vit.blocks)
        bad = [i for i in global_blocks if not 0 <= int(i) < depth]
        if bad:
            raise UserError(f"recipe key 'model.global_blocks': {bad} outside 0..{depth - 1}")
        self.window_size = int(window_size)
        self.windowed = [self.window_size > 0 and i not in set(int(g) for g in global_blocks)
                         for i in range(depth)]
        if backbone.family == "beit" and any(self.windowed):
            raise UserError(f"{backbone.arch}: ViTDet's window attention is defined for plain ViTs, not for a BEiT's "
                            "relative position bias; set model.window_size=0 (global attention in every block)")
        self.embed_dim = backbone.embed_dim
        self.stride = backbone.patch_size

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        pos = self.vit.pos_embed
        if pos is None:
            return 0
        if not getattr(self.vit, "no_embed_class", False):
            pos = pos[:, self.backbone.num_prefix:]
        side = int(round(pos.shape[1] ** 0.5))
        grid = pos.reshape(1, side, side, -1)
        if (side, side) != (h, w):
            grid = F.interpolate(grid.permute(0, 3, 1, 2), size=(h, w), mode="bicubic",
                                 align_corners=False).permute(0, 2, 3, 1)
        return grid

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vit = self.vit
        x = self.backbone.embed_patches(images)  # (B, h, w, C)
        b, h, w, c = x.shape
        x = getattr(vit, "norm_pre", nn.Identity())(x + self.abs_pos(h, w))
        if self.backbone.family == "beit":  # global attention only (checked above), no CLS token
            shared = self.backbone.shared_bias((h, w), prefix=False)
            x = x.reshape(b, h * w, c)
            for block in vit.blocks:
                x = self.backbone.run_block(block, x, (h, w), shared)
            return x.transpose(1, 2).reshape(b, c, h, w).contiguous()
        for block, windowed in zip(vit.blocks, self.windowed):
            if windowed:
                shortcut = x
                y, padded = window_partition(block.norm1(x), self.window_size)
                y = window_unpartition(block.attn(y), self.window_size, padded, (h, w))
                x = shortcut + block.drop_path1(block.ls1(y))
                x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
            else:
                x = block(x.reshape(b, h * w, c)).reshape(b, h, w, c)
        return x.permute(0, 3, 1, 2).contiguous()


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid (detectron2 ``SimpleFeaturePyramid``, norm LN) + P6."""

    def __init__(self, dim: int, out_channels: int = 256, scales=(4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        stages = []
        for scale in scales:
            scale = float(scale)
            if scale == 4.0:
                layers = [nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2), nn.GELU(),
                          nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2)]
                out_dim = dim // 4
            elif scale == 2.0:
                layers, out_dim = [nn.ConvTranspose2d(dim, dim // 2, 2, 2)], dim // 2
            elif scale == 1.0:
                layers, out_dim = [], dim
            elif scale == 0.5:
                layers, out_dim = [nn.MaxPool2d(2, 2)], dim
            else:
                raise UserError(f"recipe key 'model.scales': {scale} is not one of 4, 2, 1, 0.5")
            layers += [nn.Conv2d(out_dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        out = OrderedDict((str(i), stage(x)) for i, stage in enumerate(self.stages))
        out["pool"] = F.max_pool2d(out[str(len(self.stages) - 1)], kernel_size=1, stride=2)
        return out


class ViTDetBackbone(nn.Module):
    def __init__(self, backbone, cfg: dict):
        super().__init__()
        self.net = ViTDetNet(backbone, int(cfg["window_size"]), list(cfg["global_blocks"]))
        self.pyramid = SimpleFeaturePyramid(backbone.embed_dim, int(cfg["fpn_channels"]), cfg["scales"])
        self.out_channels = int(cfg["fpn_channels"])
        self.featmap_names = [str(i) for i in range(len(cfg["scales"]))]

    def forward(self, images):
        return self.pyramid(self.net(images))


# ----------------------------------------------------------------------------------- ResNet backbones

def freeze_bn(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d replaced by a FrozenBatchNorm2d holding its statistics (detectron2 FrozenBN)."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            freeze_bn(child)
    return module


def _resnet_parts(backbone, cfg: dict):
    if backbone.is_vit:
        raise UserError(f"{backbone.arch}: model.backbone '{cfg['backbone']}' needs a ResNet; use vitdet for a ViT")
    m = backbone.model
    if cfg["norm"] == "frozen":
        freeze_bn(m)
    elif cfg["norm"] != "bn":
        raise UserError(f"recipe key 'model.norm': {cfg['norm']!r}; valid: frozen, bn")
    stem = nn.Sequential(m.conv1, m.bn1, m.act1, m.maxpool)
    stages = [stem, m.layer1, m.layer2, m.layer3, m.layer4]
    for stage in stages[:int(cfg["freeze_at"])]:
        for p in stage.parameters():
            p.requires_grad_(False)
    return stages


class ResNetC4Backbone(nn.Module):
    def __init__(self, backbone, cfg: dict):
        super().__init__()
        stages = _resnet_parts(backbone, cfg)
        self.body = nn.Sequential(*stages[:4])
        self.res5 = stages[4]
        self.out_channels = backbone.model.feature_info[3]["num_chs"]
        self.res5_channels = backbone.model.feature_info[4]["num_chs"]
        self.featmap_names = ["0"]

    def forward(self, images):
        return OrderedDict([("0", self.body(images))])


class Res5Head(nn.Module):
    """res5 on pooled RoI features; ``pool`` = global average pool (box head)."""

    def __init__(self, res5: nn.Module, pool: bool):
        super().__init__()
        self.res5 = res5
        self.pool = pool

    def forward(self, x):
        x = self.res5(x)
        return x.mean(dim=(2, 3)) if self.pool else x


class ResNetFPNBackbone(nn.Module):
    def __init__(self, backbone, cfg: dict):
        super().__init__()
        self.stages = nn.ModuleList(_resnet_parts(backbone, cfg))
        channels = [backbone.model.feature_info[i]["num_chs"] for i in range(1, 5)]
        self.channels = channels
        self.fpn = FeaturePyramidNetwork(channels, int(cfg["fpn_channels"]), extra_blocks=LastLevelMaxPool())
        self.out_channels = int(cfg["fpn_channels"])
        self.featmap_names = ["0", "1", "2", "3"]

    def forward(self, images):
        x = self.stages[0](images)
        feats = OrderedDict()
        for i, stage in enumerate(self.stages[1:]):
            x = stage(x)
            feats[str(i)] = x
        return self.fpn(feats)


# ------------------------------------------------------------------------------------------ the model

class DetTransform(GeneralizedRCNNTransform):
    """torchvision's transform without its resize in training (inputs come jittered by LSJ)."""

    def resize(self, image, target=None):
        if self.training:
            return image, target
        return super().resize(image, target)


BACKBONES = ("vitdet", "resnet_c4", "resnet_fpn")


def build_maskrcnn(backbone, num_classes: int, cfg: dict, test_cfg: dict) -> tuple[MaskRCNN, list[nn.Module]]:
    """Mask R-CNN for ``num_classes`` foreground classes; returns (model, the non-backbone modules)."""
    kind = cfg["backbone"]
    if kind == "auto":
        kind = "vitdet" if backbone.is_vit else cfg["convnet_backbone"]
    sizes = [int(s) for s in cfg["anchor_sizes"]]
    ratios = tuple(float(r) for r in cfg["aspect_ratios"])
    k = num_classes + 1
    rpn_cfg = cfg["rpn"]
    if kind == "vitdet":
        body = ViTDetBackbone(backbone, cfg)
        levels = len(body.featmap_names) + 1
        if len(sizes) != levels:
            raise UserError(f"recipe key 'model.anchor_sizes': {len(sizes)} sizes for {levels} pyramid levels")
        anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * levels)
        rpn_head = RPNHead(body.out_channels, len(ratios), conv_depth=int(rpn_cfg["conv_depth"]))
        c = body.out_channels
        box_pool = MultiScaleRoIAlign(body.featmap_names, 7, 0)
        box_head = FastRCNNConvFCHead((c, 7, 7), [c] * int(cfg["box_convs"]), [int(cfg["box_fc"])],
                                      norm_layer=LayerNorm2d)
        box_predictor = FastRCNNPredictor(int(cfg["box_fc"]), k)
        mask_pool = MultiScaleRoIAlign(body.featmap_names, 14, 0)
        mask_head = MaskRCNNHeads(c, [c] * int(cfg["mask_convs"]), 1, norm_layer=LayerNorm2d)
        mask_predictor = MaskRCNNPredictor(c, c, k)
    elif kind == "resnet_fpn":
        body = ResNetFPNBackbone(backbone, cfg)
        anchors = AnchorGenerator(tuple((s,) for s in sizes), (ratios,) * len(sizes))
        rpn_head = RPNHead(body.out_channels, len(ratios), conv_depth=int(rpn_cfg["conv_depth"]))
        c = body.out_channels
        box_pool = MultiScaleRoIAlign(body.featmap_names, 7, 0)
        box_head = FastRCNNConvFCHead((c, 7, 7), [c] * int(cfg["box_convs"]), [int(cfg["box_fc"])])
        box_predictor = FastRCNNPredictor(int(cfg["box_fc"]), k)
        mask_pool = MultiScaleRoIAlign(body.featmap_names, 14, 0)
        mask_head = MaskRCNNHeads(c, [c] * int(cfg["mask_convs"]), 1)
        mask_predictor = MaskRCNNPredictor(c, c, k)
    elif kind == "resnet_c4":
        body = ResNetC4Backbone(backbone, cfg)
        anchors = AnchorGenerator((tuple(sizes),), (ratios,))
        rpn_head = RPNHead(body.out_channels, len(sizes) * len(ratios), conv_depth=int(rpn_cfg["conv_depth"]))
        box_pool = MultiScaleRoIAlign(["0"], 14, 0)
        box_head = Res5Head(body.res5, pool=True)
        box_predictor = FastRCNNPredictor(body.res5_channels, k)
        mask_pool = MultiScaleRoIAlign(["0"], 14, 0)
        mask_head = Res5Head(body.res5, pool=False)  # shares res5 with the box head, as detectron2 C4
        mask_predictor = MaskRCNNPredictor(body.res5_channels, 256, k)
    else:
        raise UserError(f"recipe key 'model.backbone': {kind!r}; valid: auto, {', '.join(BACKBONES)}")
    size = int(cfg["image_size"])
    model = MaskRCNN(
        body, num_classes=None, min_size=size, max_size=size, image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD), rpn_anchor_generator=anchors, rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=int(rpn_cfg["pre_nms_topk"][0]), rpn_pre_nms_top_n_test=int(rpn_cfg["pre_nms_topk"][1]),
        rpn_post_nms_top_n_train=int(rpn_cfg["post_nms_topk"][0]),
        rpn_post_nms_top_n_test=int(rpn_cfg["post_nms_topk"][1]),
        rpn_nms_thresh=float(rpn_cfg["nms_thresh"]), rpn_batch_size_per_image=int(rpn_cfg["batch_size_per_image"]),
        box_roi_pool=box_pool, box_head=box_head, box_predictor=box_predictor,
        box_score_thresh=float(test_cfg["score_thresh"]), box_nms_thresh=float(test_cfg["nms_thresh"]),
        box_detections_per_img=int(test_cfg["detections_per_image"]),
        box_batch_size_per_image=int(cfg["roi_batch_size_per_image"]),
        box_positive_fraction=float(cfg["roi_positive_fraction"]),
        mask_roi_pool=mask_pool, mask_head=mask_head, mask_predictor=mask_predictor)
    model.transform = DetTransform(size, size, list(IMAGENET_MEAN), list(IMAGENET_STD), size_divisible=size)
    heads = [m for m in (getattr(body, "pyramid", None), getattr(body, "fpn", None), model.rpn, model.roi_heads)
             if m is not None]
    # heads may hold backbone modules (res5 in C4): the optimiser groups skip parameters already seen
    return model, heads
