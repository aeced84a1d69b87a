"""``ssl-bench export``: a checkpoint's backbone in detectron2 / mmdet / mmseg key layout, plus a
ready-to-edit config of the matching protocol.

Key layouts (what each project names the backbone's weights; the tests pin them):

detectron2 (``detectron2/modeling/backbone/vit.py``, ``resnet.py``; a full-model state dict in a
``{"model": ...}`` .pth, loaded by ``train.init_checkpoint`` without matching heuristics):
  ViT -> ``backbone.net.`` + ``patch_embed.proj.{weight,bias}``, ``pos_embed`` (CLS position kept,
  ``pretrain_use_cls_token=True``), ``blocks.<i>.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``.
  Dropped: ``cls_token`` (ViTDet uses no CLS token) and ``norm.*`` (its ViT has no final norm).
  ResNet C4 -> ``backbone.stem.conv1`` (+ ``.norm``), ``backbone.res{2,3,4}.<j>.conv{1,2,3}`` (+ ``.norm``),
  ``.shortcut`` (+ ``.norm``); res5 -> ``roi_heads.res5.<j>...`` (Res5ROIHeads). ResNet FPN -> the same
  under ``backbone.bottom_up.`` (res5 included). Dropped: ``num_batches_tracked`` (FrozenBN has none).
  The mapping of the ResNet names is MoCo's ``detection/convert-pretrain-to-detectron2.py``.
mmdet: ViT -> the ViTDet project's ``ViT`` (``projects/ViTDet/vitdet/vit.py``): the same names as
  detectron2's ``net`` without prefix, in ``{"model": ...}`` (its ``init_weights`` reads that key);
  same drops. ResNet -> mmdet ``ResNet`` (``style='pytorch'``): torchvision names, all kept, in
  ``{"state_dict": ...}``.
mmseg: BEiT -> mmseg ``BEiT`` (``tools/model_converters/beit2mmseg.py``): the ViT names below with
  the attention kept as ``layers.<i>.attn.{qkv.weight,q_bias,v_bias,relative_position_bias_table,proj.*}``
  and ``layers.<i>.gamma_{1,2}``; no ``pos_embed``. Dropped: ``norm.*`` (as for a ViT).
mmseg: ViT -> mmseg ``VisionTransformer`` (``tools/model_converters/vit2mmseg.py``): ``cls_token``,
  ``pos_embed``, ``patch_embed.projection.*``, ``layers.<i>.{ln1,ln2}``,
  ``layers.<i>.attn.attn.{in_proj_weight,in_proj_bias,out_proj.*}``, ``layers.<i>.ffn.layers.0.0.*``
  (fc1), ``layers.<i>.ffn.layers.1.*`` (fc2). Dropped: ``norm.*`` (``final_norm=False``: the UperNet
  features are block outputs before any final norm, as our protocol). ResNet -> mmseg ``ResNet``:
  torchvision names, all kept. Both in ``{"state_dict": ...}``, backbone-level keys (``init_cfg``).

Every source key is either written under exactly one target key or listed as dropped with its
reason; anything else (layer scale, register tokens, qk-norm ...) is refused with a UserError, and
so are backbones the target projects cannot build: a conv-stem ViT (their ViTs embed patches
with one 16x16 convolution) and a BEiT for detectron2 / mmdet (ViTDet's ViT has no layer scale
or relative position bias table). ``export.json`` in the output folder records the whole mapping.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import torch

from .errors import UserError

FORMATS = ("detectron2", "mmdet", "mmseg")

_VIT_BLOCK = re.compile(r"^blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$")
_BEIT_EXTRA = re.compile(r"^blocks\.(\d+)\.(gamma_1|gamma_2|attn\.q_bias|attn\.v_bias|attn\.relative_position_bias_table)$")
_RESNET = re.compile(r"^(conv1|bn1)\.(.+)$|^layer([1-4])\.(\d+)\.(conv[1-3]|bn[1-3]|downsample\.[01])\.(.+)$")
_BN_STATS = ("weight", "bias", "running_mean", "running_var")

DROP_CLS = "ViTDet's ViT uses no CLS token (its position stays in pos_embed, pretrain_use_cls_token=True)"
DROP_NORM_D2 = "ViTDet's ViT has no final norm (features come from the last block)"
DROP_NORM_MMSEG = "final_norm=False: UperNet features are block outputs before any final norm"
DROP_BN_COUNT = "detectron2 FrozenBN keeps no num_batches_tracked"


def _vit_d2_name(key: str) -> str | None:
    if key in ("pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"):
        return key
    return key if _VIT_BLOCK.match(key) else None


def _vit_mmseg_name(key: str) -> str | None:
    if key in ("cls_token", "pos_embed"):
        return key
    if key.startswith("patch_embed.proj."):
        return key.replace("patch_embed.proj.", "patch_embed.projection.")
    m = _VIT_BLOCK.match(key)
    if not m:
        return None
    i, part, kind = m.groups()
    if part in ("norm1", "norm2"):
        return f"layers.{i}.ln{part[-1]}.{kind}"
    if part == "attn.qkv":
        return f"layers.{i}.attn.attn.in_proj_{kind}"
    if part == "attn.proj":
        return f"layers.{i}.attn.attn.out_proj.{kind}"
    return f"layers.{i}.ffn.layers.{'0.0' if part == 'mlp.fc1' else '1'}.{kind}"


def _beit_mmseg_name(key: str) -> str | None:
    extra = _BEIT_EXTRA.match(key)
    if extra:
        return f"layers.{extra.group(1)}.{extra.group(2)}"
    m = _VIT_BLOCK.match(key)
    if m and m.group(2) in ("attn.qkv", "attn.proj"):
        return f"layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"  # BEiTAttention keeps timm's qkv / proj
    return _vit_mmseg_name(key) if key != "pos_embed" else None


def _resnet_d2_name(key: str, layout: str) -> str | None:
    m = _RESNET.match(key)
    if not m:
        return None
    stem_part, stem_rest, stage, block, part, rest = m.groups()
    if stem_part:
        name = "stem.conv1" + (".weight" if stem_part == "conv1" and stem_rest == "weight" else f".norm.{stem_rest}")
        if stem_part == "conv1" and stem_rest != "weight":
            return None
        return ("backbone.bottom_up." if layout == "fpn" else "backbone.") + name
    res = f"res{int(stage) + 1}"
    if part.startswith("conv"):
        if rest != "weight":
            return None
        name = f"{part}.weight"
    elif part.startswith("bn"):
        name = f"conv{part[-1]}.norm.{rest}"
    elif part == "downsample.0":
        if rest != "weight":
            return None
        name = "shortcut.weight"
    else:
        name = f"shortcut.norm.{rest}"
    if layout == "fpn":
        prefix = "backbone.bottom_up."
    else:
        prefix = "roi_heads." if res == "res5" else "backbone."
    return f"{prefix}{res}.{block}.{name}"


def map_state_dict(state: dict[str, torch.Tensor], fmt: str, *, is_vit: bool, layout: str = "c4", beit: bool = False):
    """(target state dict, {source: target}, {source: reason dropped}) for ``fmt`` (``beit``: a
    timm BEiT, mmseg only)."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: valid formats: {', '.join(FORMATS)}")
    if layout not in ("c4", "fpn"):
        raise UserError(f"--resnet-layout {layout}: valid layouts: c4, fpn")
    out: dict[str, torch.Tensor] = {}
    key_map: dict[str, str] = {}
    dropped: dict[str, str] = {}
    unknown = []
    for key, value in state.items():
        target, reason = None, None
        if is_vit:
            if fmt == "mmseg":
                target = _beit_mmseg_name(key) if beit else _vit_mmseg_name(key)
                if key.startswith("norm.") and key.split(".")[-1] in ("weight", "bias"):
                    reason = DROP_NORM_MMSEG
            else:
                target = _vit_d2_name(key)
                if target is not None and fmt == "detectron2":
                    target = "backbone.net." + target
                if key == "cls_token":
                    reason = DROP_CLS
                elif key in ("norm.weight", "norm.bias"):
                    reason = DROP_NORM_D2
        else:
            if fmt == "detectron2":
                if key.endswith("num_batches_tracked") and _RESNET.match(key):
                    reason = DROP_BN_COUNT
                else:
                    target = _resnet_d2_name(key, layout)
            elif _RESNET.match(key):
                target = key  # mmdet / mmseg ResNet use the torchvision names
        if reason is not None:
            dropped[key] = reason
        elif target is not None:
            if target in out:
                raise AssertionError(f"two source keys map to {target}")
            out[target] = value.detach().clone().contiguous()
            key_map[key] = target
        else:
            unknown.append(key)
    if unknown:
        raise UserError(f"--format {fmt}: {len(unknown)} backbone weights have no place in its layout "
                        f"(e.g. {', '.join(unknown[:4])}); supported: plain timm ViTs (no layer scale, register "
                        "tokens or qk-norm), timm BEiTs (mmseg) and ResNet-50")
    return out, key_map, dropped


# ----------------------------------------------------------------------------------------- configs

def _vit_geometry(backbone) -> dict:
    vit = backbone.model
    return {"embed_dim": backbone.embed_dim, "depth": backbone.depth, "num_heads": vit.blocks[0].attn.num_heads,
            "patch_size": backbone.patch_size, "pretrain_img_size": vit.patch_embed.img_size[0],
            "mlp_ratio": vit.blocks[0].mlp.fc1.out_features / backbone.embed_dim}


def _global_blocks(depth: int) -> list[int]:
    """ViTDet's global-attention blocks: every depth/4-th block ending with the last (B: 2, 5, 8, 11)."""
    step = depth // 4
    return [step * k - 1 for k in range(1, 5)]


def detectron2_config(backbone, weights: str, dataset: str, layout: str) -> str:
    head = (f"# Generated by `ssl-bench export --format detectron2` for {backbone.arch}.\n"
            "# Run with detectron2: tools/lazyconfig_train_net.py --config-file THIS_FILE\n")
    if backbone.is_vit:
        g = _vit_geometry(backbone)
        window = [i for i in range(g["depth"]) if i not in _global_blocks(g["depth"])]
        text = head + f'''# Transcribes projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (and LVIS/ for lvis) with this
# backbone's geometry; the LSJ loader is projects/ViTDet/configs/common/coco_loader_lsj.py.
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

image_size = 1024
model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
net = model.backbone.net
net.img_size = image_size
net.patch_size = {g["patch_size"]}
net.embed_dim = {g["embed_dim"]}
net.depth = {g["depth"]}
net.num_heads = {g["num_heads"]}
net.mlp_ratio = {g["mlp_ratio"]:g}
net.drop_path_rate = 0.1
net.window_size = 14
net.window_block_indexes = {window}
net.pretrain_img_size = {g["pretrain_img_size"]}
net.pretrain_use_cls_token = True
model.backbone.square_pad = image_size

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.mapper.recompute_boxes = True
dataloader.train.total_batch_size = 64
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]
dataloader.test.mapper.image_format = "RGB"

train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = "{weights}"
train.max_iter = 184375  # 100 epochs at 64 images per iteration on COCO train2017

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[163889, 177546],
                                         num_updates=train.max_iter),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)

optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers={g["depth"]}, lr_decay_rate=0.7)
optimizer.params.overrides = {{"pos_embed": {{"weight_decay": 0.0}}}}
'''
    else:
        base = "mask_rcnn_fpn" if layout == "fpn" else "mask_rcnn_c4"
        stages = "model.backbone.bottom_up.stages" if layout == "fpn" else "model.backbone.stages"
        stem = "model.backbone.bottom_up.stem" if layout == "fpn" else "model.backbone.stem"
        res5 = "" if layout == "fpn" else ('model.roi_heads.res5.stride_in_1x1 = False\n'
                                          'model.roi_heads.res5.norm = "SyncBN"\n')
        text = head + f'''# Mask R-CNN R50-{layout.upper()} as in MoCo's detection configs (SyncBN, torchvision-style stride
# in the 3x3 conv, RGB input with ImageNet statistics), on detectron2's common/models/{base}.py.
from detectron2 import model_zoo

model = model_zoo.get_config("common/models/{base}.py").model
{stages}.stride_in_1x1 = False
{stages}.norm = "SyncBN"
{stem}.norm = "SyncBN"
{stages}.freeze_at = 0
{res5}model.pixel_mean = [123.675, 116.280, 103.530]
model.pixel_std = [58.395, 57.120, 57.375]
model.input_format = "RGB"

dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.image_format = "RGB"
dataloader.test.mapper.image_format = "RGB"
train = model_zoo.get_config("common/train.py").train
train.init_checkpoint = "{weights}"
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x
optimizer = model_zoo.get_config("common/optim.py").SGD
'''
    if dataset == "lvis":
        text += '''
# LVIS v1 (projects/ViTDet/configs/LVIS/mask_rcnn_vitdet_b_100ep.py)
from detectron2.data.detection_utils import get_fed_loss_cls_weights
from detectron2.data.samplers import RepeatFactorTrainingSampler
from detectron2.evaluation.lvis_evaluation import LVISEvaluator

dataloader.train.dataset.names = "lvis_v1_train"
dataloader.train.sampler = L(RepeatFactorTrainingSampler)(
    repeat_factors=L(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency)(
        dataset_dicts="${dataloader.train.dataset}", repeat_thresh=0.001))
dataloader.test.dataset.names = "lvis_v1_val"
dataloader.evaluator = L(LVISEvaluator)(dataset_name="${..test.dataset.names}", max_dets_per_image=300)
model.roi_heads.num_classes = 1203
model.roi_heads.box_predictor.test_score_thresh = 0.02
model.roi_heads.box_predictor.test_topk_per_image = 300
model.roi_heads.box_predictor.use_sigmoid_ce = True
model.roi_heads.box_predictor.use_fed_loss = True
model.roi_heads.box_predictor.get_fed_loss_cls_weights = (
    lambda: get_fed_loss_cls_weights(dataloader.train.dataset.names, 0.5))
'''
        if backbone.is_vit:
            text += '''train.max_iter = 156250  # 100 epochs at 64 images per iteration on LVIS v1 train
lr_multiplier.scheduler.milestones = [138889, 150463]
lr_multiplier.scheduler.num_updates = train.max_iter
lr_multiplier.warmup_length = 250 / train.max_iter
optimizer.lr = 2e-4
'''
        else:
            text = text.replace("# LVIS v1 (", "from detectron2.config import LazyCall as L\n# LVIS v1 (", 1)
    return text


def mmdet_config(backbone, weights: str, dataset: str) -> str:
    head = (f"# Generated by `ssl-bench export --format mmdet` for {backbone.arch}.\n"
            "# Run from an mmdetection 3.x checkout: python tools/train.py THIS_FILE\n")
    if backbone.is_vit:
        g = _vit_geometry(backbone)
        window = [i for i in range(g["depth"]) if i not in _global_blocks(g["depth"])]
        d = g["embed_dim"]
        text = head + f'''# Transcribes projects/ViTDet/configs/vitdet_mask-rcnn_vit-b-mae_lsj-100e.py (ViTDet project).
_base_ = [
    'configs/_base_/models/mask-rcnn_r50_fpn.py',
    'projects/ViTDet/configs/lsj-100e_coco-instance.py',
]
custom_imports = dict(imports=['projects.ViTDet.vitdet'])
backbone_norm_cfg = dict(type='LN', requires_grad=True)
norm_cfg = dict(type='LN2d', requires_grad=True)
image_size = (1024, 1024)
batch_augments = [dict(type='BatchFixedSizePad', size=image_size, pad_mask=True)]
model = dict(
    data_preprocessor=dict(pad_size_divisor=32, batch_augments=batch_augments),
    backbone=dict(
        _delete_=True, type='ViT', img_size=1024, patch_size={g["patch_size"]}, embed_dim={d},
        depth={g["depth"]}, num_heads={g["num_heads"]}, drop_path_rate=0.1, window_size=14,
        mlp_ratio={g["mlp_ratio"]:g}, qkv_bias=True, norm_cfg=backbone_norm_cfg,
        window_block_indexes={window}, use_rel_pos=True, pretrain_img_size={g["pretrain_img_size"]},
        init_cfg=dict(type='Pretrained', checkpoint='{weights}')),
    neck=dict(
        _delete_=True, type='SimpleFPN', backbone_channel={d},
        in_channels=[{d // 4}, {d // 2}, {d}, {d}], out_channels=256, num_outs=5, norm_cfg=norm_cfg),
    rpn_head=dict(num_convs=2),
    roi_head=dict(
        bbox_head=dict(type='Shared4Conv1FCBBoxHead', conv_out_channels=256, norm_cfg=norm_cfg),
        mask_head=dict(norm_cfg=norm_cfg)))
custom_hooks = [dict(type='Fp16CompresssionHook')]
'''
    else:
        text = head + f'''# Mask R-CNN R50-FPN 1x (configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py), backbone from this export.
_base_ = ['configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
model = dict(backbone=dict(frozen_stages=-1, norm_cfg=dict(type='SyncBN', requires_grad=True), norm_eval=False,
                           init_cfg=dict(type='Pretrained', checkpoint='{weights}')))
'''
    if dataset == "lvis":
        text += """
# LVIS v1: repeat-factor sampling (ClassBalancedDataset, oversample_thr 1e-3, as
# configs/_base_/datasets/lvis_v1_instance.py), 1203 classes, score 0.02 and 300 detections per image
data_root = 'data/lvis_v1/'
train_dataloader = dict(dataset=dict(
    _delete_=True, type='ClassBalancedDataset', oversample_thr=1e-3,
    dataset=dict(type='LVISV1Dataset', data_root=data_root, ann_file='annotations/lvis_v1_train.json',
                 data_prefix=dict(img=''), filter_cfg=dict(filter_empty_gt=True, min_size=32),
                 pipeline={{_base_.train_pipeline}})))
val_dataloader = dict(dataset=dict(type='LVISV1Dataset', data_root=data_root,
                                   ann_file='annotations/lvis_v1_val.json', data_prefix=dict(img='')))
test_dataloader = val_dataloader
val_evaluator = dict(_delete_=True, type='LVISMetric', ann_file=data_root + 'annotations/lvis_v1_val.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator
model.setdefault('roi_head', {}).setdefault('bbox_head', {})['num_classes'] = 1203
model['roi_head'].setdefault('mask_head', {})['num_classes'] = 1203
model['test_cfg'] = dict(rcnn=dict(score_thr=0.02, max_per_img=300))
"""
    return text


def mmseg_config(backbone, weights: str) -> str:
    head = (f"# Generated by `ssl-bench export --format mmseg` for {backbone.arch}.\n"
            "# Run from an mmsegmentation 1.x checkout: python tools/train.py THIS_FILE\n")
    common = '''_base_ = [
    'configs/_base_/models/upernet_r50.py', 'configs/_base_/datasets/ade20k.py',
    'configs/_base_/default_runtime.py', 'configs/_base_/schedules/schedule_160k.py',
]
crop_size = (512, 512)
norm_cfg = dict(type='SyncBN', requires_grad=True)
'''
    if backbone.is_vit:
        g = _vit_geometry(backbone)
        d, depth = g["embed_dim"], g["depth"]
        outs = [3, 5, 7, 11] if depth == 12 else [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1]
        if backbone.family == "beit":
            holder = "mmseg's BEiT"
            trunk = f'''type='BEiT', img_size=crop_size, patch_size={g["patch_size"]}, embed_dims={d},
        num_layers={depth}, num_heads={g["num_heads"]}, mlp_ratio={g["mlp_ratio"]:g}, qv_bias=True, init_values=0.1,
        out_indices={outs}, drop_path_rate=0.1, final_norm=False, norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),'''
        else:
            holder = "mmseg's VisionTransformer"
            trunk = f'''type='VisionTransformer', img_size=crop_size, patch_size={g["patch_size"]},
        embed_dims={d}, num_layers={depth}, num_heads={g["num_heads"]}, mlp_ratio={g["mlp_ratio"]:g},
        out_indices={outs}, qkv_bias=True, patch_bias=True, drop_path_rate=0.1, with_cls_token=True,
        final_norm=False, norm_cfg=dict(type='LN', eps=1e-6), act_cfg=dict(type='GELU'),
        interpolate_mode='bicubic','''
        text = head + "# UperNet as the MAE/BEiT ADE20k configs (configs/mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py)\n" \
            f"# with {holder} holding the exported weights.\n" + common + f'''model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        _delete_=True, {trunk}
        init_cfg=dict(type='Pretrained', checkpoint='{weights}')),
    neck=dict(type='Feature2Pyramid', embed_dim={d}, rescales=[4, 2, 1, 0.5], norm_cfg=norm_cfg),
    decode_head=dict(in_channels=[{d}, {d}, {d}, {d}], in_index=[0, 1, 2, 3], channels=768,
                     num_classes=150, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels={d}, in_index=2, channels=256, num_classes=150, norm_cfg=norm_cfg,
                        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    test_cfg=dict(mode='slide', crop_size=(512, 512), stride=(341, 341)))
optim_wrapper = dict(
    _delete_=True, type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='LayerDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers={depth}, layer_decay_rate=0.65))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, begin=1500, end=160000, eta_min=0.0, by_epoch=False),
]
train_dataloader = dict(batch_size=2)
'''
    else:
        text = head + "# UperNet R50 (configs/upernet/upernet_r50_4xb4-160k_ade20k-512x512.py) with a plain ResNet-50\n" \
            "# (type='ResNet': the exported torchvision-style stem, not ResNetV1c).\n" + common + f'''model = dict(
    pretrained=None,
    data_preprocessor=dict(size=crop_size),
    backbone=dict(type='ResNet', init_cfg=dict(type='Pretrained', checkpoint='{weights}')),
    decode_head=dict(num_classes=150),
    auxiliary_head=dict(num_classes=150))
'''
    return text


# ----------------------------------------------------------------------------------------- command

def export(checkpoint: str, fmt: str, out: Path, *, layout: str = "c4") -> dict:
    """Write the weights, the configs and ``export.json`` into ``out``; returns the manifest."""
    from .checkpoints import load_spec

    ckpt = load_spec(checkpoint)
    backbone = ckpt.backbone
    if not backbone.is_vit and not backbone.arch.startswith("resnet50"):
        raise UserError(f"{backbone.arch}: export supports timm ViTs, BEiTs and resnet50")
    if backbone.conv_stem:
        raise UserError(f"{backbone.arch}: a conv-stem ViT has no place in {fmt}: its ViT embeds patches with one "
                        f"{backbone.patch_size}x{backbone.patch_size} convolution and has no conv stem; evaluate it "
                        "with ssl-bench's own protocols (detection, segmentation)")
    beit = backbone.family == "beit"
    if beit and fmt != "mmseg":
        raise UserError(f"{backbone.arch}: {fmt}'s ViTDet ViT has no layer scale or BEiT relative position bias; "
                        "export a BEiT with --format mmseg (its BEiT backbone)")
    state = backbone.encoder_state_dict()
    mapped, key_map, dropped = map_state_dict(state, fmt, is_vit=backbone.is_vit, layout=layout, beit=beit)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"backbone_{fmt}.pth"
    wrapper = "model" if fmt == "detectron2" or (fmt == "mmdet" and backbone.is_vit) else "state_dict"
    torch.save({wrapper: mapped}, weights)
    configs = {}
    if fmt == "detectron2":
        for dataset in ("coco", "lvis"):
            configs[dataset] = detectron2_config(backbone, str(weights.resolve()), dataset, layout)
    elif fmt == "mmdet":
        for dataset in ("coco", "lvis"):
            configs[dataset] = mmdet_config(backbone, str(weights.resolve()), dataset)
    else:
        configs["ade20k"] = mmseg_config(backbone, str(weights.resolve()))
    files = {"weights": weights.name}
    for dataset, text in configs.items():
        name = f"{fmt}_{'mask_rcnn' if fmt != 'mmseg' else 'upernet'}_{dataset}.py"
        (out / name).write_text(text)
        files[f"config_{dataset}"] = name
    manifest = {"format": fmt, "checkpoint": checkpoint, "arch": backbone.arch, "label": ckpt.label,
                "sha256": ckpt.sha256, "wrapper_key": wrapper, "layout": layout if not backbone.is_vit else None,
                "files": files, "key_map": key_map, "dropped": dropped,
                "shapes": {k: list(v.shape) for k, v in mapped.items()}}
    (out / "export.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _cmd_export(args: argparse.Namespace) -> int:
    manifest = export(args.checkpoint, args.format, args.out, layout=args.resnet_layout)
    print(f"export\t{manifest['format']}\t{len(manifest['key_map'])} weights\t{len(manifest['dropped'])} dropped\t"
          f"{Path(args.out) / manifest['files']['weights']}")
    for key, name in manifest["files"].items():
        if key.startswith("config_"):
            print(f"config\t{key[7:]}\t{Path(args.out) / name}")
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """``ssl-bench export --format {detectron2,mmdet,mmseg} --checkpoint SPEC --out DIR``."""
    p = subparsers.add_parser("export", help="write a backbone in detectron2 / mmdet / mmseg layout plus a config")
    p.add_argument("--format", required=True, choices=FORMATS, help="target project")
    p.add_argument("--checkpoint", required=True, metavar="SPEC",
                   help="a checkpoint folder/file of ours, random:ARCH, timm:NAME or foreign:ARCH:PATH")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--resnet-layout", default="c4", choices=("c4", "fpn"),
                   help="detectron2 ResNet layout: c4 (res5 in roi_heads, MoCo) or fpn (backbone.bottom_up)")
    p.set_defaults(func=_cmd_export)
    return p
