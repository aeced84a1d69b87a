"""Layouts of supervised model zoos: timm itself, torchvision and EfficientNet-PyTorch.

Key tables, written from each project's model code:

timm: its own names; the classifier (``pretrained_cfg['classifier']``) is ignored.
torchvision (``torchvision/models/{resnet,vision_transformer,efficientnet}.py``):
  ResNet: the names are timm's (``conv1``, ``bn1``, ``layer<i>.<j>.{conv,bn}<k>``,
  ``downsample.{0,1}``); ``fc`` ignored.
  ViT: ``conv_proj`` -> ``patch_embed.proj``, ``class_token`` -> ``cls_token``,
  ``encoder.pos_embedding`` -> ``pos_embed``, ``encoder.layers.encoder_layer_<i>.`` ->
  ``blocks.<i>.`` with ``ln_1``/``ln_2`` -> ``norm1``/``norm2``, ``self_attention.in_proj_{weight,bias}``
  (q, k, v stacked, timm's order) -> ``attn.qkv``, ``self_attention.out_proj`` -> ``attn.proj``,
  ``mlp.0``/``mlp.3`` (older releases ``mlp.linear_1``/``linear_2``) -> ``mlp.fc1``/``fc2``;
  ``encoder.ln`` -> ``norm``; ``heads`` ignored.
  EfficientNet (B0-B7): ``features.0.{0,1}`` -> ``conv_stem``/``bn1``; ``features.<s>.<j>.block.``
  -> timm ``blocks.<s-1>.<j>.``: without expansion (timm DepthwiseSeparableConv) ``0.0/0.1`` ->
  ``conv_dw``/``bn1``, ``1.fc1/fc2`` -> ``se.conv_reduce/conv_expand``, ``2.0/2.1`` -> ``conv_pw``/``bn2``;
  with expansion (InvertedResidual) ``0.0/0.1`` -> ``conv_pw``/``bn1``, ``1.0/1.1`` -> ``conv_dw``/``bn2``,
  ``2.fc1/fc2`` -> ``se.*``, ``3.0/3.1`` -> ``conv_pwl``/``bn3``; the last ``features.<n>.{0,1}`` ->
  ``conv_head``/``bn2``; ``classifier`` ignored.
EfficientNet-PyTorch (lukemelas, ``efficientnet_pytorch/model.py``; also its Lite releases):
  ``_conv_stem``/``_bn0`` -> ``conv_stem``/``bn1``; ``_blocks.<n>`` (blocks numbered through all
  stages) -> timm's n-th block: without expansion ``_depthwise_conv``/``_bn1`` -> ``conv_dw``/``bn1``,
  ``_project_conv``/``_bn2`` -> ``conv_pw``/``bn2``; with expansion ``_expand_conv``/``_bn0`` ->
  ``conv_pw``/``bn1``, ``_depthwise_conv``/``_bn1`` -> ``conv_dw``/``bn2``, ``_project_conv``/``_bn2``
  -> ``conv_pwl``/``bn3``; ``_se_reduce``/``_se_expand`` -> ``se.conv_reduce``/``se.conv_expand``;
  ``_conv_head``/``_bn1`` -> ``conv_head``/``bn2``; ``_fc`` ignored. Its weights were ported from
  TensorFlow ("same" padding, BatchNorm eps 1e-3): timm's ``tf_efficientnet_*`` compute exactly that.
"""

from __future__ import annotations

import re
from functools import lru_cache

from .core import ROOT, Encoder, Layout

_ONE = "the file holds one encoder"


def _timm_classifier(backbone) -> dict[str, str]:
    names = backbone.model.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {f"{prefix}{name}.*": f"timm classifier ({name})" for name in names for prefix in ("", "module.")}


TIMM = Layout(
    name="timm", source="huggingface/pytorch-image-models (timm's own state dicts)",
    encoders={"model": Encoder((ROOT, "state_dict", "model"), prefixes=("module.",))},
    default_encoder="model", why_default=_ONE, ignore_for=_timm_classifier)


_TV_VIT = [(re.compile(pattern), target) for pattern, target in [
    (r"^conv_proj\.(weight|bias)$", r"patch_embed.proj.\1"),
    (r"^class_token$", "cls_token"),
    (r"^encoder\.pos_embedding$", "pos_embed"),
    (r"^encoder\.ln\.(weight|bias)$", r"norm.\1"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_1\.(weight|bias)$", r"blocks.\1.norm1.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.ln_2\.(weight|bias)$", r"blocks.\1.norm2.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.in_proj_(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.self_attention\.out_proj\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:0|linear_1)\.(weight|bias)$", r"blocks.\1.mlp.fc1.\2"),
    (r"^encoder\.layers\.encoder_layer_(\d+)\.mlp\.(?:3|linear_2)\.(weight|bias)$", r"blocks.\1.mlp.fc2.\2"),
]]
_TV_RESNET = re.compile(r"^(conv1\.weight|bn1\.\w+|layer[1-4]\.\d+\.\w+(\.\d)?\.\w+)$")
_TV_EFFNET_BLOCK = re.compile(r"^features\.(\d+)\.(\d+)\.block\.(\d+)\.(0|1|fc1|fc2)\.(\w+)$")
_TV_EFFNET_EDGE = re.compile(r"^features\.(\d+)\.([01])\.(\w+)$")
# (sub-module index, part) -> timm name, for blocks without / with an expansion conv
_TV_SEPARABLE = {("0", "0"): "conv_dw", ("0", "1"): "bn1", ("1", "fc1"): "se.conv_reduce",
                 ("1", "fc2"): "se.conv_expand", ("2", "0"): "conv_pw", ("2", "1"): "bn2"}
_TV_INVERTED = {("0", "0"): "conv_pw", ("0", "1"): "bn1", ("1", "0"): "conv_dw", ("1", "1"): "bn2",
                ("2", "fc1"): "se.conv_reduce", ("2", "fc2"): "se.conv_expand", ("3", "0"): "conv_pwl",
                ("3", "1"): "bn3"}


def _inverted(target: dict, stage: int, index: int) -> bool:
    """Whether timm's block ``blocks.<stage>.<index>`` has an expansion conv (InvertedResidual)."""
    return f"blocks.{stage}.{index}.conv_pwl.weight" in target


def _torchvision_name(key: str, target: dict) -> str | None:
    for pattern, replacement in _TV_VIT:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    if _TV_RESNET.match(key):
        return key
    block = _TV_EFFNET_BLOCK.match(key)
    if block:
        stage, index, module, part, leaf = block.groups()
        stage, index = int(stage) - 1, int(index)
        table = _TV_INVERTED if _inverted(target, stage, index) else _TV_SEPARABLE
        name = table.get((module, part))
        return f"blocks.{stage}.{index}.{name}.{leaf}" if name and target else None
    edge = _TV_EFFNET_EDGE.match(key)
    if edge:
        stage, part, leaf = edge.groups()
        if stage == "0":
            return f"{'conv_stem' if part == '0' else 'bn1'}.{leaf}"
        return f"{'conv_head' if part == '0' else 'bn2'}.{leaf}"
    return None


TORCHVISION = Layout(
    name="torchvision", source="pytorch/vision torchvision/models/{resnet,vision_transformer,efficientnet}.py",
    encoders={"model": Encoder((ROOT, "state_dict", "model"), prefixes=("module.",))},
    default_encoder="model", why_default=_ONE,
    marks=(r"(^|/)(conv_proj\.weight|features\.0\.0\.weight|layer1\.0\.conv1\.weight)$",
           r"(^|/)(heads\.head\.weight|classifier\.1\.weight|fc\.weight)$"),
    ignore={"heads.*": "ViT classification head", "classifier.*": "EfficientNet classifier",
            "fc.*": "ResNet classifier"},
    rename=_torchvision_name)


@lru_cache(maxsize=8)
def _block_order(target_keys: tuple[str, ...]) -> list[tuple[int, int]]:
    """timm's (stage, index) blocks in forward order."""
    found = {(int(m.group(1)), int(m.group(2))) for m in map(re.compile(r"^blocks\.(\d+)\.(\d+)\.").match,
                                                            target_keys) if m}
    return sorted(found)


_EP_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(\w+)$")
_EP_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                 "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EP_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
                "_bn2": "bn3"}
_EP_EDGES = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}


def _efficientnet_pytorch_name(key: str, target: dict) -> str | None:
    block = _EP_BLOCK.match(key)
    if block:
        number, module, leaf = int(block.group(1)), block.group(2), block.group(3)
        order = _block_order(tuple(target))
        if number >= len(order):
            return None
        stage, index = order[number]
        name = (_EP_INVERTED if _inverted(target, stage, index) else _EP_SEPARABLE).get(module)
        return f"blocks.{stage}.{index}.{name}.{leaf}" if name else None
    module, _, leaf = key.partition(".")
    return f"{_EP_EDGES[module]}.{leaf}" if module in _EP_EDGES and leaf else None


EFFICIENTNET_PYTORCH = Layout(
    name="efficientnet_pytorch", source="lukemelas/EfficientNet-PyTorch efficientnet_pytorch/model.py",
    encoders={"model": Encoder((ROOT, "state_dict", "model"), prefixes=("module.",))},
    default_encoder="model", why_default=_ONE,
    marks=(r"(^|/)_conv_stem\.weight$", r"(^|/)_blocks\.0\."),
    ignore={"_fc.*": "ImageNet classifier"},
    rename=_efficientnet_pytorch_name)

LAYOUTS = (TORCHVISION, EFFICIENTNET_PYTORCH, TIMM)
