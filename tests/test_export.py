"""Exporter key mappings against the names detectron2, mmdet and mmseg document.

The expected key lists below are written from those projects' module definitions (not from our
mapping code): detectron2 ``modeling/backbone/vit.py`` (ViT: patch_embed.proj, pos_embed with the
CLS position, blocks.<i>.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}; no final norm),
``modeling/backbone/resnet.py`` (stem.conv1 + .norm, res<k>.<j>.conv{1,2,3} + .norm, shortcut + .norm,
res5 inside ``roi_heads`` for C4 / ``backbone.bottom_up`` for FPN), mmdet's ViTDet project ``ViT``
(detectron2's names), mmseg ``VisionTransformer`` (vit2mmseg names) and mmdet/mmseg ``ResNet``
(torchvision's names, taken here from torchvision's own resnet50).
"""

from __future__ import annotations

import ast
import json

import pytest
import torch
import torchvision

from ssl_bench.backbones import Backbone
from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.export import export, map_state_dict

C, DEPTH, P, N = 192, 12, 16, (224 // 16) ** 2  # vit_tiny_patch16_224


def vit_block_shapes(prefix: str, names: dict[str, str]) -> dict[str, tuple]:
    """Expected per-block keys; ``names`` maps detectron2's part names to the project's."""
    shapes = {}
    for i in range(DEPTH):
        part = {"norm1": ((C,), (C,)), "attn.qkv": ((3 * C, C), (3 * C,)), "attn.proj": ((C, C), (C,)),
                "norm2": ((C,), (C,)), "mlp.fc1": ((4 * C, C), (4 * C,)), "mlp.fc2": ((C, 4 * C), (C,))}
        for d2_name, (w, b) in part.items():
            shapes.update(names[d2_name](prefix, i, w, b))
    return shapes


def d2_names(prefix, i, w, b):
    return {f"{prefix}blocks.{i}.{{}}.weight": w, f"{prefix}blocks.{i}.{{}}.bias": b}


def expected_vit_detectron2(prefix: str) -> dict[str, tuple]:
    shapes = {f"{prefix}patch_embed.proj.weight": (C, 3, P, P), f"{prefix}patch_embed.proj.bias": (C,),
              f"{prefix}pos_embed": (1, N + 1, C)}
    for i in range(DEPTH):
        for part, (w, b) in {"norm1": ((C,), (C,)), "attn.qkv": ((3 * C, C), (3 * C,)),
                             "attn.proj": ((C, C), (C,)), "norm2": ((C,), (C,)),
                             "mlp.fc1": ((4 * C, C), (4 * C,)), "mlp.fc2": ((C, 4 * C), (C,))}.items():
            shapes[f"{prefix}blocks.{i}.{part}.weight"] = w
            shapes[f"{prefix}blocks.{i}.{part}.bias"] = b
    return shapes


def expected_vit_mmseg() -> dict[str, tuple]:
    shapes = {"cls_token": (1, 1, C), "pos_embed": (1, N + 1, C), "patch_embed.projection.weight": (C, 3, P, P),
              "patch_embed.projection.bias": (C,)}
    for i in range(DEPTH):
        layer = f"layers.{i}."
        shapes.update({layer + "ln1.weight": (C,), layer + "ln1.bias": (C,), layer + "ln2.weight": (C,),
                       layer + "ln2.bias": (C,), layer + "attn.attn.in_proj_weight": (3 * C, C),
                       layer + "attn.attn.in_proj_bias": (3 * C,), layer + "attn.attn.out_proj.weight": (C, C),
                       layer + "attn.attn.out_proj.bias": (C,), layer + "ffn.layers.0.0.weight": (4 * C, C),
                       layer + "ffn.layers.0.0.bias": (4 * C,), layer + "ffn.layers.1.weight": (C, 4 * C),
                       layer + "ffn.layers.1.bias": (C,)})
    return shapes


def expected_resnet_detectron2(layout: str) -> dict[str, tuple]:
    """detectron2 ResNet-50 (BasicStem + BottleneckBlocks [3, 4, 6, 3], FrozenBN: 4 tensors per norm)."""
    base = "backbone.bottom_up." if layout == "fpn" else "backbone."

    def norm(name, ch):
        return {f"{name}.norm.{s}": (ch,) for s in ("weight", "bias", "running_mean", "running_var")}

    shapes = {f"{base}stem.conv1.weight": (64, 3, 7, 7), **norm(f"{base}stem.conv1", 64)}
    in_ch = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        prefix = "roi_heads." if (stage == 5 and layout == "c4") else base
        out_ch = width * 4
        for j in range(blocks):
            blk = f"{prefix}res{stage}.{j}"
            shapes[f"{blk}.conv1.weight"] = (width, in_ch, 1, 1)
            shapes[f"{blk}.conv2.weight"] = (width, width, 3, 3)
            shapes[f"{blk}.conv3.weight"] = (out_ch, width, 1, 1)
            for k, ch in ((1, width), (2, width), (3, out_ch)):
                shapes.update(norm(f"{blk}.conv{k}", ch))
            if j == 0:
                shapes[f"{blk}.shortcut.weight"] = (out_ch, in_ch, 1, 1)
                shapes.update(norm(f"{blk}.shortcut", out_ch))
            in_ch = out_ch
    return shapes


def expected_torchvision_resnet50() -> dict[str, tuple]:
    state = torchvision.models.resnet50(weights=None).state_dict()
    return {k: tuple(v.shape) for k, v in state.items() if not k.startswith("fc.")}


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return Backbone("vit_tiny_patch16_224")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return Backbone("resnet50")


def check_mapping(backbone, fmt, expected, dropped_expected, layout="c4"):
    state = backbone.encoder_state_dict()
    out, key_map, dropped = map_state_dict(state, fmt, is_vit=backbone.is_vit, layout=layout,
                                           beit=backbone.family == "beit")
    # every target key is exactly the documented one, with its documented shape
    assert set(out) == set(expected)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    # every source weight lands exactly once, or is dropped for a documented reason; nothing left over
    assert len(set(key_map.values())) == len(key_map)
    assert set(key_map) | set(dropped) == set(state)
    assert not set(key_map) & set(dropped)
    assert set(dropped) == dropped_expected
    for src, dst in key_map.items():
        assert torch.equal(out[dst], state[src]), (src, dst)
    return out, key_map


def test_vit_detectron2_layout(vit):
    check_mapping(vit, "detectron2", expected_vit_detectron2("backbone.net."), {"cls_token", "norm.weight", "norm.bias"})


def test_vit_mmdet_vitdet_project_layout(vit):
    check_mapping(vit, "mmdet", expected_vit_detectron2(""), {"cls_token", "norm.weight", "norm.bias"})


def test_vit_mmseg_layout(vit):
    out, key_map = check_mapping(vit, "mmseg", expected_vit_mmseg(), {"norm.weight", "norm.bias"})
    # nn.MultiheadAttention's in_proj stacks q, k, v like timm's qkv: the tensor is kept as is
    assert key_map["blocks.3.attn.qkv.weight"] == "layers.3.attn.attn.in_proj_weight"


@pytest.mark.parametrize("layout", ["c4", "fpn"])
def test_resnet_detectron2_layout(resnet, layout):
    nbt = {k for k in resnet.encoder_state_dict() if k.endswith("num_batches_tracked")}
    out, key_map = check_mapping(resnet, "detectron2", expected_resnet_detectron2(layout), nbt, layout)
    assert key_map["layer1.0.downsample.1.running_var"].endswith("res2.0.shortcut.norm.running_var")
    if layout == "c4":
        assert key_map["layer4.2.conv3.weight"] == "roi_heads.res5.2.conv3.weight"


@pytest.mark.parametrize("fmt", ["mmdet", "mmseg"])
def test_resnet_openmmlab_layout(resnet, fmt):
    check_mapping(resnet, fmt, expected_torchvision_resnet50(), set())


def test_unsupported_weights_are_refused(vit):
    state = dict(vit.encoder_state_dict())
    state["blocks.0.ls1.gamma"] = torch.ones(C)
    with pytest.raises(UserError, match="ls1.gamma"):
        map_state_dict(state, "detectron2", is_vit=True)


def test_export_command_writes_weights_configs_and_manifest(tmp_path, capsys):
    out = tmp_path / "d2"
    assert main(["--quiet", "export", "--format", "detectron2", "--checkpoint", "random:vit_tiny_patch16_224",
                 "--out", str(out)]) == 0
    manifest = json.loads((out / "export.json").read_text())
    saved = torch.load(out / manifest["files"]["weights"], weights_only=True)
    assert set(saved) == {"model"}
    assert set(saved["model"]) == set(expected_vit_detectron2("backbone.net."))
    torch.manual_seed(0)
    reference = Backbone("vit_tiny_patch16_224").encoder_state_dict()
    assert torch.equal(saved["model"]["backbone.net.blocks.11.mlp.fc2.weight"], reference["blocks.11.mlp.fc2.weight"])
    for dataset in ("coco", "lvis"):
        text = (out / manifest["files"][f"config_{dataset}"]).read_text()
        tree = ast.parse(text)  # a valid Python LazyConfig
        assert str((out / manifest["files"]["weights"]).resolve()) in text
        assert any(isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "model" for n in tree.body)
    lvis_text = (out / manifest["files"]["config_lvis"]).read_text()
    assert "repeat_thresh=0.001" in lvis_text and "max_dets_per_image=300" in lvis_text
    assert "net.window_block_indexes = [0, 1, 3, 4, 6, 7, 9, 10]" in (out / manifest["files"]["config_coco"]).read_text()
    assert "backbone_detectron2.pth" in capsys.readouterr().out


@pytest.mark.parametrize("fmt,wrapper", [("mmseg", "state_dict"), ("mmdet", "state_dict")])
def test_export_openmmlab_resnet_files(tmp_path, fmt, wrapper):
    assert main(["--quiet", "export", "--format", fmt, "--checkpoint", "random:resnet50", "--out", str(tmp_path)]) == 0
    manifest = json.loads((tmp_path / "export.json").read_text())
    saved = torch.load(tmp_path / manifest["files"]["weights"], weights_only=True)
    assert set(saved) == {wrapper}
    assert {k: tuple(v.shape) for k, v in saved[wrapper].items()} == expected_torchvision_resnet50()
    for key, name in manifest["files"].items():
        if key.startswith("config_"):
            ast.parse((tmp_path / name).read_text())


def test_export_bad_format_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--format", "caffe", "--checkpoint", "random:resnet50", "--out", "x"])
    assert exc.value.code == 2
    assert "detectron2" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["detectron2", "mmdet", "mmseg"])
def test_conv_stem_vit_is_refused_naming_why(tmp_path, fmt):
    with pytest.raises(UserError, match="conv-stem ViT has no place"):
        export("random:vit_tiny_convstem_patch16_224", fmt, tmp_path)


def expected_beit_mmseg(depth: int, dim: int, heads: int, window: int) -> dict[str, tuple]:
    """mmseg BEiT (models/backbones/beit.py): cls_token, patch_embed.projection, layers.<i>.{ln1, ln2,
    attn.{qkv.weight (no bias: qv_bias), q_bias, v_bias, relative_position_bias_table, proj},
    ffn.layers.{0.0, 1}, gamma_1, gamma_2}; no pos_embed; final norm dropped."""
    shapes = {"cls_token": (1, 1, dim), "patch_embed.projection.weight": (dim, 3, 16, 16),
              "patch_embed.projection.bias": (dim,)}
    for i in range(depth):
        layer = f"layers.{i}."
        shapes.update({layer + "ln1.weight": (dim,), layer + "ln1.bias": (dim,), layer + "ln2.weight": (dim,),
                       layer + "ln2.bias": (dim,), layer + "attn.qkv.weight": (3 * dim, dim),
                       layer + "attn.q_bias": (dim,), layer + "attn.v_bias": (dim,),
                       layer + "attn.relative_position_bias_table": ((2 * window - 1) ** 2 + 3, heads),
                       layer + "attn.proj.weight": (dim, dim), layer + "attn.proj.bias": (dim,),
                       layer + "ffn.layers.0.0.weight": (4 * dim, dim), layer + "ffn.layers.0.0.bias": (4 * dim,),
                       layer + "ffn.layers.1.weight": (dim, 4 * dim), layer + "ffn.layers.1.bias": (dim,),
                       layer + "gamma_1": (dim,), layer + "gamma_2": (dim,)})
    return shapes


def test_beit_mmseg_layout_and_refusals(tmp_path):
    beit = Backbone("beit_tiny_patch16_224", img_size=64, shared_rel_pos_bias=True)  # ConMIM's pretraining form
    check_mapping(beit, "mmseg", expected_beit_mmseg(12, 192, 3, 4), {"norm.weight", "norm.bias"})
    manifest = export("random:beit_tiny_patch16_224", "mmseg", tmp_path)
    text = (tmp_path / manifest["files"]["config_ade20k"]).read_text()
    ast.parse(text)
    assert "type='BEiT'" in text and "qv_bias=True" in text
    for fmt in ("detectron2", "mmdet"):
        with pytest.raises(UserError, match="--format mmseg"):
            export("random:beit_tiny_patch16_224", fmt, tmp_path / fmt)
