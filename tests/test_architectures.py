"""The architectures ssl-bench registers with timm, checked against hand-built definitions:
the conv stem of Xiao et al. 2021 (four 3x3 stride-2 conv + BN + ReLU, widths D/8..D, then a
1x1 projection to D) and BEiT at ViT-Small size (ConMIM's conmim_small_patch16_224)."""

import pytest
import timm
import torch
from torch import nn

import ssl_bench.architectures  # noqa: F401  (registers the models)
from ssl_bench.checkpoints import load_checkpoint, load_spec, save_checkpoint
from ssl_bench.backbones import Backbone


def xiao_stem(widths: list[int], embed_dim: int) -> nn.Sequential:
    """The stem as Xiao et al. describe it, written with plain torch layers."""
    layers, channels = [], 3
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        channels = width
    return nn.Sequential(*layers, nn.Conv2d(channels, embed_dim, 1))


@pytest.mark.parametrize("arch,widths,dim", [("vit_tiny_convstem_patch16_224", [24, 48, 96, 192], 192),
                                             ("vit_small_convstem_patch16_224", [48, 96, 192, 384], 384)])
def test_conv_stem_is_xiao_et_al_stem(arch, widths, dim):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=0, img_size=64, dynamic_img_size=True)
    reference = xiao_stem(widths, dim)
    ours = [v for k, v in model.state_dict().items() if k.startswith("patch_embed.")]
    theirs = list(reference.state_dict().values())
    assert [tuple(t.shape) for t in ours] == [tuple(t.shape) for t in theirs]
    reference.load_state_dict(dict(zip(reference.state_dict(), ours)))
    images = torch.randn(4, 3, 64, 64)
    for mode in (True, False):  # BatchNorm with batch statistics, then running statistics
        model.train(mode), reference.train(mode)
        with torch.no_grad():
            expected = reference(images).permute(0, 2, 3, 1)  # (B, 4, 4, D): stride 16
            assert torch.allclose(model.patch_embed(images), expected, atol=1e-5)
    assert model.patch_embed.feat_ratio() == 16 and len(model.blocks) == 12 and model.embed_dim == dim


def test_conv_stem_has_stride_16_only():
    with pytest.raises(ValueError, match="stride 16"):
        timm.create_model("vit_tiny_convstem_patch16_224", patch_size=8)


def test_conv_stem_checkpoint_and_random_spec_round_trip(tmp_path):
    torch.manual_seed(1)
    backbone = Backbone("vit_tiny_convstem_patch16_224", 64, 16).eval()
    sidecar = save_checkpoint(tmp_path / "checkpoint", backbone, {"method": "test", "encoder": "online"})
    loaded = load_checkpoint(sidecar)
    assert loaded.meta["patch_size"] == 16 and loaded.meta["img_size"] == 64
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.backbone.features(images, "cls"), backbone.features(images, "cls"))
    spec = load_spec("random:vit_tiny_convstem_patch16_224")
    assert spec.backbone.conv_stem and spec.backbone.patch_size == 16


def test_beit_small_is_conmim_small():
    model = timm.create_model("beit_small_patch16_224", num_classes=0)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (384, 12, 6)
    assert model.pos_embed is None  # relative position bias only (use_abs_pos_emb False)
    assert model.blocks[5].attn.relative_position_bias_table.shape == ((2 * 14 - 1) ** 2 + 3, 6)
    assert torch.all(model.blocks[0].gamma_1 == 0.1)  # layer scale 0.1 (run_conmim_pretraining.py)
