"""Architectures ssl-bench adds to timm's model registry, so that recipes, checkpoints and
``random:ARCH`` name them like any timm model (``timm.create_model(name)`` works once this
module is imported; ``ssl_bench.backbones`` imports it).

Conv-stem ViTs, ``vit_{tiny,small,base,large}_convstem_patch16_224``: a timm
``VisionTransformer`` whose 16x16 patch embedding is the convolutional stem of Xiao et al.
2021 ("Early Convolutions Help Transformers See Better", Sec. 3): four 3x3 stride-2
convolutions, each followed by BatchNorm and ReLU, with widths D/8, D/4, D/2, D
(24-48-96-192 for ViT-Tiny, D = 192), then a 1x1 convolution to the embedding width D.
The stem is timm's ``HybridEmbed`` over timm ``ConvNormAct`` layers, so the model is an
ordinary timm ViT with stride 16: same token grid, position embeddings, CLS token and
blocks as ``vit_*_patch16_224``. Xiao et al. also remove one transformer block to keep the
FLOPs equal; we keep the depth, so that a conv-stem run differs from a plain one only in the
stem. MSN's official ``deit.py`` has the same stem as an option (``ConvEmbed``).

BEiT sizes that timm does not register (timm has base and large): ``beit_small_patch16_224``
(ConMIM's ``conmim_small_patch16_224``: width 384, 12 blocks, 6 heads) and
``beit_tiny_patch16_224`` (width 192, 3 heads), with timm's BEiT-base settings (relative
position bias, no absolute position embedding, layer scale 0.1).
"""

from __future__ import annotations

from functools import partial

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ConvNormAct, HybridEmbed
from timm.models import register_model
from timm.models.beit import _create_beit
from timm.models.vision_transformer import _create_vision_transformer
from torch import nn

#: Stride of the conv stem: four stride-2 convolutions.
CONVSTEM_STRIDE = 16

_VIT_SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12), "large": (1024, 16)}

_NO_WEIGHTS = {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "mean": IMAGENET_DEFAULT_MEAN,
               "std": IMAGENET_DEFAULT_STD, "first_conv": "patch_embed.backbone.0.conv", "classifier": "head"}
#: timm's registry reads the configs of the models registered below from here (none has weights)
default_cfgs = {**{f"vit_{size}_convstem_patch16_224": dict(_NO_WEIGHTS) for size in _VIT_SIZES},
                **{f"beit_{size}_patch16_224": {**_NO_WEIGHTS, "first_conv": "patch_embed.proj"}
                   for size in ("tiny", "small")}}


def conv_stem(embed_dim: int, in_chans: int = 3, device=None, dtype=None) -> nn.Sequential:
    """Xiao et al.'s stem without its final 1x1 projection: four 3x3 stride-2 conv + BN + ReLU,
    widths embed_dim / 8, / 4, / 2, / 1."""
    widths = [embed_dim // 8, embed_dim // 4, embed_dim // 2, embed_dim]
    layers, channels = [], in_chans
    for width in widths:
        layers.append(ConvNormAct(channels, width, kernel_size=3, stride=2, padding=1, device=device, dtype=dtype))
        channels = width
    return nn.Sequential(*layers)


def _convstem_vit(variant: str, size: str, pretrained: bool, kwargs: dict):
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights exist")
    patch = kwargs.pop("patch_size", CONVSTEM_STRIDE)
    if patch not in (CONVSTEM_STRIDE, (CONVSTEM_STRIDE, CONVSTEM_STRIDE)):
        raise ValueError(f"{variant}: the conv stem has stride {CONVSTEM_STRIDE}; patch_size {patch} is not possible")
    dim, heads = _VIT_SIZES[size]
    kwargs.setdefault("depth", 12)
    dtype_args = {k: kwargs[k] for k in ("device", "dtype") if k in kwargs}
    # HybridEmbed's patch_size is its projection's kernel: 1 (the 1x1 projection of the stem)
    embed = partial(HybridEmbed, backbone=conv_stem(dim, kwargs.get("in_chans", 3), **dtype_args))
    return _create_vision_transformer(variant, pretrained=False, embed_layer=embed, patch_size=1,
                                      embed_dim=dim, num_heads=heads, **kwargs)


@register_model
def vit_tiny_convstem_patch16_224(pretrained: bool = False, **kwargs):
    """ViT-Tiny (192 wide, 3 heads, 12 blocks) with Xiao et al.'s conv stem (24-48-96-192, 1x1 to 192)."""
    return _convstem_vit("vit_tiny_convstem_patch16_224", "tiny", pretrained, kwargs)


@register_model
def vit_small_convstem_patch16_224(pretrained: bool = False, **kwargs):
    """ViT-Small (384 wide, 6 heads) with the conv stem (48-96-192-384, 1x1 to 384)."""
    return _convstem_vit("vit_small_convstem_patch16_224", "small", pretrained, kwargs)


@register_model
def vit_base_convstem_patch16_224(pretrained: bool = False, **kwargs):
    """ViT-Base (768 wide, 12 heads) with the conv stem (96-192-384-768, 1x1 to 768)."""
    return _convstem_vit("vit_base_convstem_patch16_224", "base", pretrained, kwargs)


@register_model
def vit_large_convstem_patch16_224(pretrained: bool = False, **kwargs):
    """ViT-Large (1024 wide, 16 heads, 24 blocks) with the conv stem (128-256-512-1024, 1x1 to 1024)."""
    kwargs.setdefault("depth", 24)
    return _convstem_vit("vit_large_convstem_patch16_224", "large", pretrained, kwargs)


def _beit(variant: str, size: str, pretrained: bool, kwargs: dict):
    if pretrained:
        raise ValueError(f"{variant}: no pretrained weights exist")
    dim, heads = _VIT_SIZES[size]
    # timm beit_base_patch16_224's settings; ConMIM run_conmim_pretraining.py: layer_scale_init_value 0.1
    args = dict(patch_size=16, embed_dim=dim, depth=12, num_heads=heads, mlp_ratio=4, use_abs_pos_emb=False,
                use_rel_pos_bias=True, init_values=0.1)
    return _create_beit(variant, pretrained=False, **{**args, **kwargs})


@register_model
def beit_small_patch16_224(pretrained: bool = False, **kwargs):
    """BEiT at ViT-Small size (ConMIM modeling_pretrain.py conmim_small_patch16_224: 384 wide, 6 heads)."""
    return _beit("beit_small_patch16_224", "small", pretrained, kwargs)


@register_model
def beit_tiny_patch16_224(pretrained: bool = False, **kwargs):
    """BEiT at ViT-Tiny size (192 wide, 3 heads, 12 blocks)."""
    return _beit("beit_tiny_patch16_224", "tiny", pretrained, kwargs)
