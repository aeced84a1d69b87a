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

import re
import string
from pathlib import Path

import torch

from .atomic import atomic_write, atomic_write_bytes, atomic_write_json, check_writable
from .checkpoints import load_spec
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
#: The config templates (``string.Template``: ``$name`` is a value of the backbone, ``$$`` a ``$``).
TEMPLATES = Path(__file__).resolve().parent / "export_configs"
HOW_TO_RUN = {"detectron2": "Run with detectron2: tools/lazyconfig_train_net.py --config-file THIS_FILE",
              "mmdet": "Run from an mmdetection 3.x checkout: python tools/train.py THIS_FILE",
              "mmseg": "Run from an mmsegmentation 1.x checkout: python tools/train.py THIS_FILE"}


def render(template: str, **values) -> str:
    """``export_configs/<template>.tmpl`` with its ``$`` placeholders filled (a missing one is an error)."""
    return string.Template((TEMPLATES / f"{template}.tmpl").read_text()).substitute(values)


def _head(fmt: str, backbone) -> str:
    return f"# Generated by `ssl-bench export --format {fmt}` for {backbone.arch}.\n# {HOW_TO_RUN[fmt]}\n"


def _global_blocks(depth: int) -> list[int]:
    """ViTDet's global-attention blocks: every depth/4-th block ending with the last (B: 2, 5, 8, 11)."""
    step = depth // 4
    return [step * k - 1 for k in range(1, 5)]


def _vit_values(backbone) -> dict:
    """The template values of a ViT's geometry."""
    vit, depth, dim = backbone.model, backbone.depth, backbone.embed_dim
    return {"embed_dim": dim, "embed_dim_2": dim // 2, "embed_dim_4": dim // 4, "depth": depth,
            "num_heads": vit.blocks[0].attn.num_heads, "patch_size": backbone.patch_size,
            "pretrain_img_size": vit.patch_embed.img_size[0],
            "mlp_ratio": f"{vit.blocks[0].mlp.fc1.out_features / dim:g}",
            "window": [i for i in range(depth) if i not in _global_blocks(depth)]}


def detectron2_config(backbone, weights: str, dataset: str, layout: str) -> str:
    if backbone.is_vit:
        text = _head("detectron2", backbone) + render("detectron2_vit", weights=weights, **_vit_values(backbone))
    else:
        fpn = layout == "fpn"
        root = "model.backbone.bottom_up" if fpn else "model.backbone"
        res5 = "" if fpn else 'model.roi_heads.res5.stride_in_1x1 = False\nmodel.roi_heads.res5.norm = "SyncBN"\n'
        text = _head("detectron2", backbone) + render(
            "detectron2_resnet", layout=layout.upper(), base="mask_rcnn_fpn" if fpn else "mask_rcnn_c4",
            stages=f"{root}.stages", stem=f"{root}.stem", res5=res5, weights=weights)
    if dataset == "lvis":
        # the ResNet configs do not import LazyCall yet
        text += render("detectron2_lvis", lazycall="" if backbone.is_vit else "from detectron2.config import LazyCall as L\n")
        if backbone.is_vit:
            text += render("detectron2_lvis_vit")
    return text


def mmdet_config(backbone, weights: str, dataset: str) -> str:
    values = _vit_values(backbone) if backbone.is_vit else {}
    text = _head("mmdet", backbone) + render("mmdet_vit" if backbone.is_vit else "mmdet_resnet", weights=weights,
                                             **values)
    return text + render("mmdet_lvis") if dataset == "lvis" else text


def mmseg_config(backbone, weights: str) -> str:
    values = {}
    if backbone.is_vit:
        values = _vit_values(backbone)
        depth = values["depth"]
        values["out_indices"] = ([3, 5, 7, 11] if depth == 12 else
                                 [depth // 4 - 1, depth // 2 - 1, 3 * depth // 4 - 1, depth - 1])
        beit = backbone.family == "beit"
        values["holder"] = "mmseg's BEiT" if beit else "mmseg's VisionTransformer"
        values["trunk"] = render("mmseg_trunk_beit" if beit else "mmseg_trunk_vit", **values).rstrip("\n")
    return _head("mmseg", backbone) + render("mmseg_vit" if backbone.is_vit else "mmseg_resnet",
                                             common=render("mmseg_common"), weights=weights, **values)


# ----------------------------------------------------------------------------------------- command

def export(checkpoint: str, fmt: str, out: Path, *, layout: str = "c4") -> dict:
    """Write the weights, the configs and ``export.json`` into ``out``; returns the manifest."""
    out = Path(out)
    check_writable(out, "export folder")
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
    weights = out / f"backbone_{fmt}.pth"
    wrapper = "model" if fmt == "detectron2" or (fmt == "mmdet" and backbone.is_vit) else "state_dict"
    atomic_write(weights, lambda tmp: torch.save({wrapper: mapped}, tmp))
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
        atomic_write_bytes(out / name, text.encode())
        files[f"config_{dataset}"] = name
    manifest = {"format": fmt, "checkpoint": checkpoint, "arch": backbone.arch, "label": ckpt.label,
                "sha256": ckpt.sha256, "wrapper_key": wrapper, "layout": layout if not backbone.is_vit else None,
                "files": files, "key_map": key_map, "dropped": dropped,
                "shapes": {k: list(v.shape) for k, v in mapped.items()}}
    atomic_write_json(out / "export.json", manifest)
    return manifest
