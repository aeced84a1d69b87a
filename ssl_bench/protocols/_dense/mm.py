"""OpenMMLab backends: mmseg ``EncoderDecoder`` and mmdet ``MaskRCNN`` built from generated configs,
with our backbone registered in their model registries (``SslBenchSegBackbone``,
``SslBenchDetBackbone``; ``SslBenchLN2d`` for the LayerNorm-over-channels of ViTDet's heads).

Needs the optional OpenMMLab stack (``scripts/install_openmmlab.sh``). Configs follow the MAE/BEiT
UperNet config (Feature2Pyramid, UPerHead, FCNHead 0.4) and mmdet's Mask R-CNN R50-FPN base with the
ViTDet changes (2-conv RPN, Shared4Conv1FC box head and 4-conv mask head with LN); SyncBN becomes BN
(one process). Training uses our loop (same optimiser groups, schedule and data as the default
backend); inference and scoring use mmseg's own ``predict`` (slide inference + resize to the original
size) and ``IoUMetric``'s area functions, and mmdet's own ``predict`` (rescaled to the original size).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import UserError
from ...progress import progress
from .common import IMAGENET_MEAN, IMAGENET_STD, LayerNorm2d
from .maskrcnn import ResNetFPNBackbone, ViTDetBackbone

#: live backbones by key: the configs stay plain data while the modules carry our trained weights
_LIVE: dict[str, nn.Module] = {}
_KEYS = itertools.count()


def require(stack: str):
    try:
        if stack == "mmseg":
            import mmseg.models  # noqa: F401
        else:
            import mmdet.models  # noqa: F401
    except ImportError as err:
        raise UserError(f"backend={stack} needs the OpenMMLab stack ({err}); install it with "
                        "scripts/install_openmmlab.sh (optional, see README) or use backend=default") from None


def _live(module: nn.Module) -> str:
    key = f"m{next(_KEYS)}"
    _LIVE[key] = module
    return key


class SslBenchLN2d(LayerNorm2d):
    """LayerNorm over channels, as ``norm_cfg`` type for mmcv ``build_norm_layer``."""

    _abbr_ = "ln"

    def __init__(self, num_features: int, eps: float = 1e-6, **_):
        super().__init__(num_features, eps)


class SegBackboneAdapter(nn.Module):
    """Our backbone as an mmseg backbone: a tuple of (B, C, h, w) maps."""

    def __init__(self, key: str, out_indices=(3, 5, 7, 11)):
        super().__init__()
        self.backbone = _LIVE[key]
        self.out_indices = list(out_indices) if self.backbone.is_vit else [1, 2, 3, 4]

    def init_weights(self):  # keep the checkpoint's weights
        pass

    def forward(self, x):
        if self.backbone.is_vit:
            return tuple(self.backbone.patch_grid(x, blocks=self.out_indices))
        return tuple(self.backbone.model.forward_intermediates(x, indices=self.out_indices, intermediates_only=True))


class DetBackboneAdapter(nn.Module):
    """Our ViTDet trunk + simple pyramid (5 maps) or ResNet stages (4 maps, mmdet FPN after)."""

    def __init__(self, key: str):
        super().__init__()
        self.body = _LIVE[key]

    def init_weights(self):
        pass

    def forward(self, x):
        if hasattr(self.body, "pyramid"):
            return tuple(self.body(x).values())
        x = self.body.stages[0](x)
        outs = []
        for stage in self.body.stages[1:]:
            x = stage(x)
            outs.append(x)
        return tuple(outs)


def _register(registry) -> None:
    for name, cls in (("SslBenchSegBackbone", SegBackboneAdapter), ("SslBenchDetBackbone", DetBackboneAdapter),
                      ("SslBenchLN2d", SslBenchLN2d)):
        if name not in registry.module_dict:
            registry.register_module(name=name, module=cls)


def register_all() -> None:
    from mmengine.registry import MODELS as ROOT

    _register(ROOT)
    for stack in ("mmseg", "mmdet"):
        try:
            registry = __import__(f"{stack}.registry", fromlist=["MODELS"]).MODELS
        except ImportError:
            continue
        _register(registry)


# ------------------------------------------------------------------------------------ segmentation

def mmseg_model_config(backbone_key: str, backbone, num_classes: int, recipe: dict) -> dict:
    """The mmseg EncoderDecoder config (MAE/BEiT UperNet) around our backbone."""
    m, test = recipe["model"], recipe["test"]
    bn = dict(type="BN", requires_grad=True)
    if backbone.is_vit:
        channels = [backbone.embed_dim] * 4
        neck = dict(type="Feature2Pyramid", embed_dim=backbone.embed_dim, rescales=list(m["rescales"]), norm_cfg=bn)
    else:
        channels = [backbone.model.feature_info[i]["num_chs"] for i in (1, 2, 3, 4)]
        neck = None
    aux_index = int(m["aux_in_index"])
    cfg = dict(
        type="EncoderDecoder",
        backbone=dict(type="SslBenchSegBackbone", key=backbone_key, out_indices=list(m["out_indices"])),
        decode_head=dict(type="UPerHead", in_channels=channels, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=int(m["channels"]), dropout_ratio=float(m["dropout"]), num_classes=num_classes,
                         norm_cfg=bn, align_corners=False,
                         loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
        auxiliary_head=dict(type="FCNHead", in_channels=channels[aux_index], in_index=aux_index,
                            channels=int(m["aux_channels"]), num_convs=1, concat_input=False,
                            dropout_ratio=float(m["dropout"]), num_classes=num_classes, norm_cfg=bn,
                            align_corners=False,
                            loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                             loss_weight=float(m["aux_weight"]))),
        train_cfg=dict(),
        test_cfg=dict(mode=test.get("mode", "slide"), crop_size=tuple(int(v) for v in test["crop_size"]),
                      stride=tuple(int(v) for v in test["stride"])))
    if neck is not None:
        cfg["neck"] = neck
    if float(m["aux_weight"]) <= 0:
        cfg.pop("auxiliary_head")
    return cfg


def mmseg_iou(preds, labels, num_classes: int, ignore_index: int = 255) -> dict:
    """mmseg ``IoUMetric``'s own area functions, summed over the set; unrounded fractions."""
    from mmseg.evaluation.metrics import IoUMetric

    totals = None
    for pred, label in zip(preds, labels, strict=True):
        areas = IoUMetric.intersect_and_union(torch.as_tensor(pred), torch.as_tensor(label).to(torch.as_tensor(pred)),
                                              num_classes, ignore_index)
        totals = list(areas) if totals is None else [t + a for t, a in zip(totals, areas)]
    metrics = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"], nan_to_num=None)
    iou, acc = np.asarray(metrics["IoU"], np.float64), np.asarray(metrics["Acc"], np.float64)
    return {"mIoU": float(np.nanmean(iou)), "mAcc": float(np.nanmean(acc)), "aAcc": float(metrics["aAcc"]),
            "IoU": iou, "Acc": acc}


class MMSegBackend:
    """mmseg EncoderDecoder with our backbone (see the module docstring)."""

    name = "mmseg"

    def __init__(self, backbone, num_classes: int, recipe: dict):
        require("mmseg")
        from mmengine.config import ConfigDict
        from mmengine.registry import init_default_scope
        from mmseg.registry import MODELS

        init_default_scope("mmseg")
        register_all()
        self.num_classes = num_classes
        self.backbone = backbone
        self.model = MODELS.build(ConfigDict(mmseg_model_config(_live(backbone), backbone, num_classes, recipe)))
        self.model.init_weights()

    def heads(self):
        return [m for name, m in self.model.named_children() if name != "backbone"]

    def to(self, device):
        self.model.to(device)
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)

    @staticmethod
    def _samples(labels: torch.Tensor | None, shapes, ori_shapes=None):
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample

        samples = []
        for i, shape in enumerate(shapes):
            sample = SegDataSample()
            ori = ori_shapes[i] if ori_shapes is not None else shape
            sample.set_metainfo(dict(img_shape=tuple(shape), pad_shape=tuple(shape), ori_shape=tuple(ori)))
            if labels is not None:
                sample.gt_sem_seg = PixelData(data=labels[i][None])
            samples.append(sample)
        return samples

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        samples = self._samples(labels, [images.shape[-2:]] * len(images))
        losses = self.model.loss(images, samples)
        return sum(v for k, v in losses.items() if "loss" in k)

    @torch.no_grad()
    def predict_one(self, image: torch.Tensor, ori_shape) -> torch.Tensor:
        """mmseg ``predict``: its slide inference, resize to ``ori_shape``, argmax."""
        samples = self._samples(None, [image.shape[-2:]], [tuple(ori_shape)])
        return self.model.predict(image[None], samples)[0].pred_sem_seg.data[0].cpu()

    def evaluate(self, dataset, recipe: dict) -> dict:
        preds, labels = [], []
        device = next(self.model.parameters()).device
        for i in progress(range(len(dataset)), desc="segment (mmseg)", unit="img"):
            image, label = dataset[i]
            preds.append(self.predict_one(image.to(device), label.shape[-2:]))
            labels.append(label)
        return mmseg_iou(preds, labels, self.num_classes)


# --------------------------------------------------------------------------------------- detection

def mmdet_model_config(body_key: str, body, num_classes: int, recipe: dict, test_cfg: dict) -> dict:
    """The mmdet MaskRCNN config (R50-FPN base with the ViTDet head changes) around our backbone."""
    m, rpn = recipe["model"], recipe["model"]["rpn"]
    c = int(m["fpn_channels"])
    vitdet = hasattr(body, "pyramid")
    ln = dict(type="SslBenchLN2d")
    sizes = [int(s) for s in m["anchor_sizes"]]
    strides = [4, 8, 16, 32, 64]
    scale = sizes[0] / strides[0]
    if any(s / st != scale for s, st in zip(sizes, strides)):
        raise UserError("backend=mmdet: 'model.anchor_sizes' must be one octave scale times the strides 4-64 "
                        f"(e.g. [32, 64, 128, 256, 512]); got {sizes}")
    cfg = dict(
        type="MaskRCNN",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[255 * v for v in IMAGENET_MEAN],
                               std=[255 * v for v in IMAGENET_STD], bgr_to_rgb=False, pad_mask=True,
                               pad_size_divisor=int(m["image_size"])),
        backbone=dict(type="SslBenchDetBackbone", key=body_key),
        rpn_head=dict(type="RPNHead", in_channels=c, feat_channels=c, num_convs=int(rpn["conv_depth"]),
                      anchor_generator=dict(type="AnchorGenerator", scales=[scale],
                                            ratios=[float(r) for r in m["aspect_ratios"]], strides=strides),
                      bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                      loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                      loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
        roi_head=dict(
            type="StandardRoIHead",
            bbox_roi_extractor=dict(type="SingleRoIExtractor", out_channels=c, featmap_strides=[4, 8, 16, 32],
                                    roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
            bbox_head=dict(type="Shared4Conv1FCBBoxHead", in_channels=c, conv_out_channels=c,
                           fc_out_channels=int(m["box_fc"]), roi_feat_size=7, num_classes=num_classes,
                           norm_cfg=ln if vitdet else None,
                           bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                           target_stds=[0.1, 0.1, 0.2, 0.2]),
                           reg_class_agnostic=False,
                           loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                           loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
            mask_roi_extractor=dict(type="SingleRoIExtractor", out_channels=c, featmap_strides=[4, 8, 16, 32],
                                    roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0)),
            mask_head=dict(type="FCNMaskHead", num_convs=int(m["mask_convs"]), in_channels=c, conv_out_channels=c,
                           num_classes=num_classes, norm_cfg=ln if vitdet else None,
                           loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))),
        train_cfg=dict(
            rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                                   match_low_quality=True, ignore_iof_thr=-1),
                     sampler=dict(type="RandomSampler", num=int(rpn["batch_size_per_image"]), pos_fraction=0.5,
                                  neg_pos_ub=-1, add_gt_as_proposals=False),
                     allowed_border=-1, pos_weight=-1, debug=False),
            rpn_proposal=dict(nms_pre=int(rpn["pre_nms_topk"][0]), max_per_img=int(rpn["post_nms_topk"][0]),
                              nms=dict(type="nms", iou_threshold=float(rpn["nms_thresh"])), min_bbox_size=0),
            rcnn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                    match_low_quality=True, ignore_iof_thr=-1),
                      sampler=dict(type="RandomSampler", num=int(m["roi_batch_size_per_image"]),
                                   pos_fraction=float(m["roi_positive_fraction"]), neg_pos_ub=-1,
                                   add_gt_as_proposals=True),
                      mask_size=28, pos_weight=-1, debug=False)),
        test_cfg=dict(
            rpn=dict(nms_pre=int(rpn["pre_nms_topk"][1]), max_per_img=int(rpn["post_nms_topk"][1]),
                     nms=dict(type="nms", iou_threshold=float(rpn["nms_thresh"])), min_bbox_size=0),
            rcnn=dict(score_thr=float(test_cfg["score_thresh"]),
                      nms=dict(type="nms", iou_threshold=float(test_cfg["nms_thresh"])),
                      max_per_img=int(test_cfg["detections_per_image"]), mask_thr_binary=0.5)))
    if not vitdet:
        cfg["neck"] = dict(type="FPN", in_channels=list(body.channels), out_channels=c, num_outs=5)
    return cfg


class MMDetBackend:
    """mmdet MaskRCNN with our backbone (see the module docstring)."""

    name = "mmdet"

    def __init__(self, backbone, num_classes: int, recipe: dict, test_cfg: dict):
        require("mmdet")
        from mmdet.registry import MODELS
        from mmengine.config import ConfigDict
        from mmengine.registry import init_default_scope


        init_default_scope("mmdet")
        register_all()
        kind = recipe["model"]["backbone"]
        if kind == "auto":
            kind = "vitdet" if backbone.is_vit else "resnet_fpn"
        if kind == "vitdet":
            body = ViTDetBackbone(backbone, recipe["model"])
        elif kind == "resnet_fpn":
            body = ResNetFPNBackbone(backbone, recipe["model"])
            body.fpn = None  # mmdet's own FPN neck is used
        else:
            raise UserError(f"backend=mmdet supports model.backbone vitdet and resnet_fpn, not {kind!r}")
        self.size = int(recipe["model"]["image_size"])
        self.model = MODELS.build(ConfigDict(mmdet_model_config(_live(body), body, num_classes, recipe, test_cfg)))
        self.model.init_weights()

    def heads(self):
        heads = [m for name, m in self.model.named_children() if name not in ("backbone", "data_preprocessor")]
        pyramid = getattr(self.model.backbone.body, "pyramid", None)
        return heads + ([pyramid] if pyramid is not None else [])

    def to(self, device):
        self.model.to(device)
        return self

    def train(self, mode: bool = True):
        self.model.train(mode)

    def _batch(self, images, targets, ori_shapes, scale_factors, training: bool):
        from mmdet.structures import DetDataSample
        from mmdet.structures.mask import BitmapMasks
        from mmengine.structures import InstanceData

        samples = []
        for i, image in enumerate(images):
            sample = DetDataSample()
            h, w = image.shape[-2:]
            sample.set_metainfo(dict(img_shape=(h, w), ori_shape=tuple(ori_shapes[i]),
                                     scale_factor=tuple(scale_factors[i])))
            if targets is not None:
                gt = InstanceData()
                gt.bboxes = targets[i]["boxes"].float()
                gt.labels = targets[i]["labels"] - 1  # mmdet labels are 0-based
                gt.masks = BitmapMasks(targets[i]["masks"].cpu().numpy().astype(np.uint8), h, w)
                sample.gt_instances = gt
            samples.append(sample)
        data = {"inputs": [image * 255.0 for image in images], "data_samples": samples}
        return self.model.data_preprocessor(data, training)

    def loss(self, images, targets) -> torch.Tensor:
        shapes = [im.shape[-2:] for im in images]
        data = self._batch(images, targets, shapes, [(1.0, 1.0)] * len(images), True)
        losses = self.model.loss(data["inputs"], data["data_samples"])
        loss, _ = self.model.parse_losses(losses)
        return loss

    @torch.no_grad()
    def predict(self, image: torch.Tensor) -> dict:
        """Resize the longer side to ``image_size`` (as the default backend), mmdet ``predict`` with
        rescale to the original size; returned in torchvision's output format."""
        h, w = image.shape[-2:]
        factor = self.size / max(h, w)
        nh, nw = int(round(h * factor)), int(round(w * factor))
        resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        data = self._batch([resized], None, [(h, w)], [(nw / w, nh / h)], False)
        pred = self.model.predict(data["inputs"], data["data_samples"], rescale=True)[0].pred_instances
        masks = pred.masks if "masks" in pred else torch.zeros((0, h, w))
        return {"boxes": pred.bboxes.cpu(), "scores": pred.scores.cpu(), "labels": pred.labels.cpu() + 1,
                "masks": torch.as_tensor(masks).float().cpu()[:, None]}
