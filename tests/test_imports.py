"""Strict, audited import: every layout against the same weights run natively, every failure
mode as exit 2 and one line.

Each source state dict is written here in its code base's own names and nesting (the key tables
below are read from the official model and training code), for a small architecture; the native
reference is the official model where it installs (torchvision, EfficientNet-PyTorch) and else
timm's model, whose ViT names those ViTs keep, with any part the layouts change (DINOv2's register
and position handling) re-derived here from the official forward pass. Comparisons run in float64.
"""

from __future__ import annotations

import argparse
import json
import re

import pytest
import timm
import torch
import torchvision
from efficientnet_pytorch import EfficientNet
from test_protocols_common import make_imagefolder

from ssl_bench.checkpoints import load_checkpoint, load_spec
from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.imports import LAYOUTS, import_state

TOL = 1e-6
VIT = "vit_tiny_patch16_224"


def vit(seed: int, arch: str = VIT, img_size: int = 32, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=0, img_size=img_size, **kwargs)
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or name.endswith("gamma"):
                p.add_(0.1 * torch.randn_like(p))
    return model.double().eval()


def randomise_bn(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(3)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.double().eval()


def encoder_keys(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def features(imported, images, kind):
    backbone = imported.backbone.double()
    with torch.no_grad():
        return backbone.features(images.double(), kind)


def images(size=32, n=2):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def cls_native(model, x):
    with torch.no_grad():
        return model.forward_features(x)[:, 0]


def save(tmp_path, obj, name="source.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path


def assert_close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < TOL


def assert_complete(audit, n_source):
    assert audit["source"]["tensors"] == n_source
    assert audit["target"]["filled"] == audit["target"]["tensors"]
    ignored = sum(v["count"] for v in audit["ignored"].values())
    assert audit["mapped"] + ignored == n_source
    assert audit["summary"].startswith(f"{n_source} of {n_source} source tensors")


# ---------------------------------------------------------------------------------- layouts
def test_timm_layout_ignores_the_classifier(tmp_path):
    torch.manual_seed(0)
    native = randomise_bn(timm.create_model("resnet18", num_classes=10))
    path = save(tmp_path, {"state_dict": {f"module.{k}": v for k, v in native.state_dict().items()}})
    imported = import_state(path, "resnet18", layout="timm")
    x = images(64)
    with torch.no_grad():
        ref = native.forward_head(native.forward_features(x), pre_logits=True)
    assert_close(features(imported, x, "avgpool"), ref)
    assert imported.audit["ignored"] == {"module.fc.*": {"what": "timm classifier (fc)", "count": 2}}
    assert_complete(imported.audit, len(native.state_dict()))


def test_torchvision_resnet(tmp_path):
    torch.manual_seed(0)
    native = randomise_bn(torchvision.models.resnet18())
    path = save(tmp_path, native.state_dict())
    imported = import_state(path, "resnet18")
    assert imported.audit["layout"] == "torchvision" and imported.audit["chosen_by"].startswith("auto")
    x = images(64)
    with torch.no_grad():
        ref = torch.flatten(native.avgpool(torch.nn.Sequential(*list(native.children())[:-2])(x)), 1)
    assert_close(features(imported, x, "avgpool"), ref)
    assert_complete(imported.audit, 122)


def test_torchvision_efficientnet(tmp_path):
    torch.manual_seed(0)
    native = randomise_bn(torchvision.models.efficientnet_b0())
    path = save(tmp_path, native.state_dict())
    imported = import_state(path, "efficientnet_b0")
    assert imported.audit["layout"] == "torchvision"
    x = images(64)
    with torch.no_grad():
        ref = torch.flatten(native.avgpool(native.features(x)), 1)
    assert_close(features(imported, x, "avgpool"), ref)
    assert_complete(imported.audit, len(native.state_dict()))


def test_torchvision_vit(tmp_path):
    torch.manual_seed(0)
    native = torchvision.models.VisionTransformer(image_size=32, patch_size=16, num_layers=12, num_heads=3,
                                                  hidden_dim=192, mlp_dim=768).double().eval()
    path = save(tmp_path, {"model": native.state_dict()})
    imported = import_state(path, VIT)
    assert imported.audit["layout"] == "torchvision" and imported.audit["target"]["img_size"] == 32
    x = images(32)
    with torch.no_grad():
        tokens = native._process_input(x)
        tokens = torch.cat([native.class_token.expand(len(x), -1, -1), tokens], dim=1)
        ref = native.encoder(tokens)[:, 0]
    assert_close(features(imported, x, "cls"), ref)
    assert_complete(imported.audit, len(native.state_dict()))


def test_efficientnet_pytorch_against_its_own_model(tmp_path):
    torch.manual_seed(0)
    native = randomise_bn(EfficientNet.from_name("efficientnet-b0", image_size=64))
    path = save(tmp_path, native.state_dict())
    imported = import_state(path, "tf_efficientnet_b0")  # TF "same" padding and BN eps 1e-3, as ported
    assert imported.audit["layout"] == "efficientnet_pytorch"
    x = images(64)
    with torch.no_grad():
        ref = native._avg_pooling(native.extract_features(x)).flatten(1)
    assert_close(features(imported, x, "avgpool"), ref)
    assert imported.audit["ignored"]["_fc.*"]["count"] == 2
    assert_complete(imported.audit, len(native.state_dict()))


def _msn_encoder(model, hidden=64):
    """MSN's encoder as src/msn_train.py saves it: DDP ``module.``, the projection head ``fc``."""
    keys = {f"module.{k}": v for k, v in model.state_dict().items()}
    dim = model.embed_dim
    keys.update({"module.fc.fc1.weight": torch.randn(hidden, dim), "module.fc.fc1.bias": torch.randn(hidden),
                 "module.fc.bn1.weight": torch.ones(hidden), "module.fc.bn1.bias": torch.zeros(hidden),
                 "module.fc.bn1.running_mean": torch.zeros(hidden), "module.fc.bn1.running_var": torch.ones(hidden),
                 "module.fc.bn1.num_batches_tracked": torch.tensor(0),
                 "module.fc.fc2.weight": torch.randn(32, hidden), "module.fc.fc2.bias": torch.randn(32)})
    return keys


def test_msn_release_takes_the_target_encoder(tmp_path):
    online, target = vit(1), vit(2)
    path = save(tmp_path, {"encoder": _msn_encoder(online), "target_encoder": _msn_encoder(target),
                           "prototypes": torch.randn(16, 32), "epoch": 3, "loss": 1.0, "lr": 0.1,
                           "opt": {"state": {}, "param_groups": []}})
    x = images()
    imported = import_state(path, VIT)
    assert imported.audit["layout"] == "msn" and imported.audit["encoder"] == "target"
    assert imported.audit["source"]["not_read"] == {"(top level)": 1, "encoder": len(_msn_encoder(online))}
    assert "target_encoder" in imported.audit["encoder_default_because"]
    assert imported.eval == {"feature": "cls_prenorm"}
    assert_close(features(imported, x, "cls"), cls_native(target, x))
    assert_complete(imported.audit, len(_msn_encoder(target)))
    other = import_state(path, VIT, encoder="online")
    assert_close(features(other, x, "cls"), cls_native(online, x))
    assert other.audit["encoder_is_default"] is False


def _mae_decoder(dim=192, dec=64):
    return {"mask_token": torch.randn(1, 1, dec), "decoder_embed.weight": torch.randn(dec, dim),
            "decoder_embed.bias": torch.randn(dec), "decoder_pos_embed": torch.randn(1, 5, dec),
            "decoder_blocks.0.norm1.weight": torch.ones(dec), "decoder_blocks.0.attn.qkv.weight": torch.randn(3 * dec, dec),
            "decoder_norm.weight": torch.ones(dec), "decoder_norm.bias": torch.zeros(dec),
            "decoder_pred.weight": torch.randn(16 * 16 * 3, dec), "decoder_pred.bias": torch.randn(16 * 16 * 3)}


def test_mae_pretraining_checkpoint(tmp_path):
    model = vit(3)
    state = {**encoder_keys(model), **_mae_decoder()}
    path = save(tmp_path, {"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 799,
                           "scaler": {}, "args": argparse.Namespace(model="mae_vit_tiny", mask_ratio=0.75)})
    imported = import_state(path, VIT)
    assert imported.audit["layout"] == "mae" and imported.audit["source"]["container"] == "model"
    x = images()
    assert_close(features(imported, x, "cls"), cls_native(model, x))
    assert_complete(imported.audit, len(state))


def test_siameseim_online_and_momentum_encoders(tmp_path):
    online, momentum = vit(4), vit(5)
    for m in (online, momentum):
        m.norm = torch.nn.Identity()  # SiameseIMViT has no encoder norm
    state = {k: v for k, v in encoder_keys(online).items()}
    state.update({f"mm_{k}": v for k, v in encoder_keys(momentum).items()
                  if k.startswith(("patch_embed.", "cls_token", "blocks."))})
    state.update({**_mae_decoder(), "projector_decoder_blocks.0.norm1.weight": torch.ones(64),
                  "predictor_decoder_blocks.0.norm1.weight": torch.ones(64), "decoder_pos_mlp.weight": torch.randn(64, 128),
                  "mm_decoder_embed.weight": torch.randn(64, 192), "mm_mask_token": torch.randn(1, 1, 64),
                  "mm_projector_decoder_blocks.0.norm1.weight": torch.ones(64)})
    path = save(tmp_path, {"model": state, "epoch": 1, "args": argparse.Namespace(loss_type="sim")})
    x = images()
    imported = import_state(path, VIT)
    assert imported.audit["layout"] == "siameseim" and imported.audit["encoder"] == "online"
    assert imported.backbone.final_norm is False and imported.eval == {"feature": "avgpool"}
    with torch.no_grad():
        assert_close(features(imported, x, "avgpool"), online.forward_features(x)[:, 1:].mean(1))
        other = import_state(path, VIT, encoder="momentum")  # its pos_embed is the shared sin-cos one
        assert_close(features(other, x, "avgpool"), _with_pos(momentum, online.pos_embed, x))
    assert_complete(imported.audit, len(state))


def _with_pos(model, pos_embed, x):
    """``model`` run with another position embedding (SiameseIM's momentum branch shares the online one)."""
    saved = model.pos_embed.data.clone()
    model.pos_embed.data.copy_(pos_embed)
    try:
        return model.forward_features(x)[:, 1:].mean(1)
    finally:
        model.pos_embed.data.copy_(saved)


def _dino_head(prefix, dim=192, out=32, ibot=False):
    keys = {f"{prefix}head.mlp.0.weight": torch.randn(64, dim), f"{prefix}head.mlp.0.bias": torch.randn(64),
            f"{prefix}head.mlp.2.weight": torch.randn(16, 64), f"{prefix}head.last_layer.weight_g": torch.ones(out, 1),
            f"{prefix}head.last_layer.weight_v": torch.randn(out, 16)}
    if ibot:
        keys.update({f"{prefix}head.last_layer2.weight_g": torch.ones(out, 1),
                     f"{prefix}head.last_layer2.weight_v": torch.randn(out, 16)})
    return keys


@pytest.mark.parametrize("layout", ["dino", "ibot"])
def test_dino_and_ibot_take_the_teacher(tmp_path, layout):
    student, teacher = vit(6), vit(7)
    ibot = layout == "ibot"

    def wrapped(model, prefix):
        keys = {f"{prefix}backbone.{k}": v for k, v in encoder_keys(model).items()}
        if ibot:
            keys[f"{prefix}backbone.masked_embed"] = torch.zeros(1, 192)
        return {**keys, **_dino_head(prefix, ibot=ibot)}

    # main_dino.py / main_ibot.py: the student is DDP-wrapped, the teacher (no BatchNorm) is not
    ckpt = {"student": wrapped(student, "module."), "teacher": wrapped(teacher, ""), "epoch": 100,
            "optimizer": {"state": {}, "param_groups": []}, "args": argparse.Namespace(arch="vit_tiny"),
            f"{layout}_loss": {"center": torch.zeros(1, 32)}}
    path = save(tmp_path, ckpt)
    x = images()
    imported = import_state(path, VIT)
    assert imported.audit["layout"] == layout and imported.audit["encoder"] == "teacher"
    assert_close(features(imported, x, "cls"), cls_native(teacher, x))
    assert_complete(imported.audit, len(ckpt["teacher"]))
    other = import_state(path, VIT, encoder="student")
    assert_close(features(other, x, "cls"), cls_native(student, x))


def test_ibot_layer_scale_names(tmp_path):
    """iBOT's ``gamma_1``/``gamma_2`` (models/vision_transformer.py, init_values > 0) are layer scales."""
    model = vit(8, "vit_small_patch14_dinov2", img_size=28)
    keys = {re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k): v for k, v in encoder_keys(model).items()}
    keys["masked_embed"] = torch.zeros(1, 384)
    path = save(tmp_path, {"state_dict": keys})  # the released checkpoint_teacher.pth form
    imported = import_state(path, "vit_small_patch14_dinov2", layout="ibot")
    x = images(28)
    assert_close(features(imported, x, "cls"), cls_native(model, x))


def _moco(model, prefix, head_dim=64):
    keys = {f"module.{prefix}.{k}": v for k, v in encoder_keys(model).items()}
    keys.update({f"module.{prefix}.head.0.weight": torch.randn(head_dim, 192),
                 f"module.{prefix}.head.1.running_mean": torch.zeros(head_dim),
                 f"module.{prefix}.head.1.num_batches_tracked": torch.tensor(0)})
    return keys


def test_moco_v3_takes_the_base_encoder(tmp_path):
    base, momentum = vit(9), vit(10)
    state = {**_moco(base, "base_encoder"), **_moco(momentum, "momentum_encoder"),
             "module.predictor.0.weight": torch.randn(64, 64)}
    path = save(tmp_path, {"epoch": 300, "arch": "vit_tiny", "state_dict": state,
                           "optimizer": {"state": {}, "param_groups": []}, "scaler": {}})
    x = images()
    imported = import_state(path, VIT)
    assert imported.audit["layout"] == "moco_v3" and imported.audit["encoder"] == "base"
    assert_close(features(imported, x, "cls"), cls_native(base, x))
    assert_complete(imported.audit, len(state))
    assert_close(features(import_state(path, VIT, encoder="momentum"), x, "cls"), cls_native(momentum, x))
    with pytest.raises(UserError, match="12 attention heads"):
        import_state(path, "vit_small_patch16_224")


def _dinov2_release(model, registers: torch.Tensor | None):
    """dinov2/models/vision_transformer.py names: pos_embed with a CLS position, register_tokens,
    a (1, D) mask_token, layer scales ls1/ls2.gamma."""
    keys = encoder_keys(model)
    if registers is not None:
        keys["register_tokens"] = registers
    keys["mask_token"] = torch.zeros(1, model.embed_dim, dtype=torch.float64)
    return keys


def _dinov2_cls(model, keys, x):
    """DINOv2's forward, re-derived: [CLS, patches] + pos_embed, then the registers after CLS,
    then the blocks and the final norm (prepare_tokens_with_masks, forward_features)."""
    with torch.no_grad():
        patches = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([keys["cls_token"].expand(len(x), -1, -1), patches], dim=1) + keys["pos_embed"]
        if "register_tokens" in keys:
            tokens = torch.cat([tokens[:, :1], keys["register_tokens"].expand(len(x), -1, -1), tokens[:, 1:]], dim=1)
        for block in model.blocks:
            tokens = block(tokens)
        return model.norm(tokens)[:, 0]


def test_dinov2_release_with_registers(tmp_path):
    model = vit(11, "vit_small_patch14_dinov2", img_size=28)  # CLS position in pos_embed, as DINOv2's
    registers = torch.randn(1, 4, 384, dtype=torch.float64)
    keys = _dinov2_release(model, registers)
    path = save(tmp_path, keys)
    imported = import_state(path, "vit_small_patch14_reg4_dinov2")
    assert imported.audit["layout"] == "dinov2" and imported.audit["converted"]
    x = images(28)
    assert_close(features(imported, x, "cls"), _dinov2_cls(model, keys, x))
    assert_complete(imported.audit, len(keys))


def test_dinov2_training_checkpoint_with_block_chunks(tmp_path):
    model = vit(12, "vit_small_patch14_dinov2", img_size=28)
    keys = _dinov2_release(model, None)
    chunked = {}
    for key, value in keys.items():  # block_chunks=4: chunk c holds blocks 3c..3c+2 at their global index
        match = re.match(r"blocks\.(\d+)\.(.*)", key)
        name = f"blocks.{int(match.group(1)) // 3}.{match.group(1)}.{match.group(2)}" if match else key
        chunked[f"backbone.{name}"] = value
    chunked.update({"dino_head.mlp.0.weight": torch.randn(8, 384), "ibot_head.mlp.0.weight": torch.randn(8, 384)})
    path = save(tmp_path, {"teacher": chunked})  # teacher_checkpoint.pth
    imported = import_state(path, "vit_small_patch14_dinov2")
    assert imported.audit["layout"] == "dinov2" and imported.audit["encoder"] == "teacher"
    x = images(28)
    assert_close(features(imported, x, "cls"), _dinov2_cls(model, keys, x))
    assert_complete(imported.audit, len(chunked))


def test_conmim_shared_relative_position_bias(tmp_path):
    """ConMIM pretraining (modeling_pretrain.py, run_conmim_pretraining.py): BEiT names, one relative
    position bias shared by all blocks (with its index buffer), layer scale, q/v biases; beside the
    encoder a mask token, the three-layer MLP projectors (use_mlp_projectors=True) and the LM head
    (use_lm_head defaults to True)."""
    torch.manual_seed(19)
    native = timm.create_model("beit_tiny_patch16_224", num_classes=0, img_size=32, use_fc_norm=False,
                               use_rel_pos_bias=False, use_shared_rel_pos_bias=True)
    with torch.no_grad():
        for name, p in native.named_parameters():
            if "relative_position_bias_table" in name or name.endswith(("bias", "gamma_1", "gamma_2")):
                p.copy_(torch.randn_like(p) * 0.5)
    native = native.double().eval()
    # _build_mlp(3, embed_dim, mlp_dim, dim): Linear, BN, ReLU, Linear, BN, ReLU, Linear, BN(affine=False)
    projectors = torch.nn.Sequential(torch.nn.Linear(192, 64, bias=False), torch.nn.BatchNorm1d(64),
                                     torch.nn.ReLU(), torch.nn.Linear(64, 64, bias=False),
                                     torch.nn.BatchNorm1d(64), torch.nn.ReLU(),
                                     torch.nn.Linear(64, 32, bias=False), torch.nn.BatchNorm1d(32, affine=False))
    state = {**encoder_keys(native), "mask_token": torch.zeros(1, 1, 192),
             "rel_pos_bias.relative_position_index": torch.zeros(5, 5, dtype=torch.long),
             **{f"projectors.{k}": v for k, v in projectors.state_dict().items()},
             "lm_head.weight": torch.randn(8192, 192), "lm_head.bias": torch.zeros(8192)}
    path = save(tmp_path, {"model": state, "epoch": 1, "args": argparse.Namespace(model="conmim_tiny")})
    imported = import_state(path, "beit_tiny_patch16_224")
    assert imported.audit["layout"] == "conmim" and imported.audit["target"]["img_size"] == 32
    x = images(32)
    with torch.no_grad():
        ref = native.forward_features(x)[:, 1:].mean(1)
    assert_close(features(imported, x, "avgpool"), ref)
    assert_complete(imported.audit, len(state))
    # the command's checkpoint holds the bias per block (timm's BEiT layout) and computes the same
    out = tmp_path / "out"
    assert main(import_argv(path, "beit_tiny_patch16_224", out)) == 0
    with torch.no_grad():
        assert_close(load_checkpoint(out).backbone.double().features(x, "avgpool"), ref)


def test_every_layout_is_tested():
    tested = {"timm", "torchvision", "efficientnet_pytorch", "msn", "mae", "siameseim", "dino", "ibot",
              "moco_v3", "dinov2", "conmim"}
    assert set(LAYOUTS) == tested


# ------------------------------------------------------------------ resampling and exceptions
def test_another_image_size_resamples_pos_embed_and_records_it(tmp_path):
    path = save(tmp_path, encoder_keys(vit(13)))
    imported = import_state(path, VIT, img_size=64)
    assert imported.audit["resampled"] == [{"key": "pos_embed", "from_grid": [2, 2], "to_grid": [4, 4],
                                            "how": "bicubic (timm)"}]
    assert imported.backbone.model.pos_embed.shape == (1, 17, 192)


def test_allowed_exceptions_are_recorded_and_seeded(tmp_path):
    keys = encoder_keys(vit(14))
    del keys["norm.weight"]
    keys["extra.scale"] = torch.ones(3)
    path = save(tmp_path, keys)
    a = import_state(path, VIT, allow_missing=["norm.weight"], allow_unused=["extra.*"])
    b = import_state(path, VIT, allow_missing=["norm.weight"], allow_unused=["extra.*"])
    assert a.audit["allowed_missing"] == {"patterns": ["norm.weight"], "keys": ["norm.weight"]}
    assert a.audit["allowed_unused"] == {"patterns": ["extra.*"], "keys": ["extra.scale"]}
    assert "allowed: 1 unused, 1 missing" in a.audit["summary"]
    assert torch.equal(a.backbone.model.norm.weight, b.backbone.model.norm.weight)
    assert a.weights_id == b.weights_id != import_state(save(tmp_path, encoder_keys(vit(14)), "full.pth"),
                                                        VIT).weights_id


# ------------------------------------------------------------------------------- failures
def one_line_error(capsys, argv, *fragments):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "\x1b" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def import_argv(path, arch, out, *extra):
    return ["--quiet", "import", str(path), "--arch", arch, "--out", str(out), *extra]


def test_missing_tensors_exit_2(tmp_path, capsys):
    keys = encoder_keys(vit(15))
    for name in ("blocks.0.norm1.weight", "blocks.0.norm1.bias"):
        del keys[name]
    path = save(tmp_path, keys)
    one_line_error(capsys, import_argv(path, VIT, tmp_path / "out"),
                   "2 of 150 target tensors missing (blocks.0.norm1.weight, blocks.0.norm1.bias)")
    assert not (tmp_path / "out").exists()


def test_unused_tensors_exit_2(tmp_path, capsys):
    keys = {**encoder_keys(vit(16)), "adapter.weight": torch.ones(4, 4)}
    path = save(tmp_path, keys)
    one_line_error(capsys, import_argv(path, VIT, tmp_path / "out"),
                   "1 of 151 source tensors unused (adapter.weight)")


def test_renamed_batchnorm_exit_2(tmp_path, capsys):
    """The issue's case: BatchNorms renamed, so PyTorch's non-strict load would skip them silently."""
    native = EfficientNet.from_name("efficientnet-b0", image_size=64)
    keys = {k.replace("._bn", "._norm"): v for k, v in native.state_dict().items()}
    path = save(tmp_path, keys)
    line = one_line_error(capsys, import_argv(path, "tf_efficientnet_b0", tmp_path / "out"),
                          "target tensors missing (blocks.0.0.bn1.weight", "source tensors unused (_blocks.0._norm1.weight")
    assert "layout efficientnet_pytorch" in line


def test_wrong_architecture_exit_2(tmp_path, capsys):
    """EfficientNet-B0 weights (squeeze-excitation) into EfficientNet-Lite0 (none): refused."""
    path = save(tmp_path, EfficientNet.from_name("efficientnet-b0", image_size=64).state_dict())
    one_line_error(capsys, import_argv(path, "tf_efficientnet_lite0", tmp_path / "out"),
                   "source tensors unused (_blocks.0._se_reduce.weight")


def test_shape_mismatch_exit_2(tmp_path, capsys):
    path = save(tmp_path, encoder_keys(vit(17)))
    one_line_error(capsys, import_argv(path, "vit_small_patch16_224", tmp_path / "out"),
                   "shape mismatches (cls_token (1, 1, 192) vs cls_token (1, 1, 384)")


def test_unrecognised_keys_exit_2(tmp_path, capsys):
    path = save(tmp_path, {"weights": {"layer.a": torch.ones(2)}})
    one_line_error(capsys, import_argv(path, VIT, tmp_path / "out"), "no known layout recognised its keys",
                   "weights/layer.a")


def test_refused_pickle_has_no_escape_codes(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": UserError("not allow-listed")}, path)
    one_line_error(capsys, import_argv(path, VIT, tmp_path / "out"), "refused to unpickle")


def test_escape_codes_are_stripped_from_any_error(capsys, monkeypatch):
    import ssl_bench.cli as cli

    def raises(args):
        raise UserError("\x1b[1m\x1b[31mWeightsUnpickler error:\x1b[0m unsupported global")

    parser = cli.build_parser([])
    monkeypatch.setattr(cli, "build_parser", lambda argv: parser)
    monkeypatch.setattr(parser, "parse_args", lambda argv: argparse.Namespace(quiet=True, run=raises,
                                                                              command="leaderboard", threads=None))
    line = one_line_error(capsys, ["anything"], "WeightsUnpickler error: unsupported global")
    assert line == "ssl-bench: error: WeightsUnpickler error: unsupported global"


def test_timm_offline_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr("torch.hub.get_dir", lambda: str(tmp_path / "torch"))
    one_line_error(capsys, ["eval", "--protocol", "knn", "--checkpoint", "timm:resnet18", "--data", str(tmp_path)],
                   "timm:resnet18: timm's pretrained weights are not in the local cache", "foreign:resnet18:PATH")


# ------------------------------------------------------------------ command, spec, results
def test_import_command_writes_checkpoint_and_audit(tmp_path, capsys):
    native = randomise_bn(EfficientNet.from_name("efficientnet-b0", image_size=64))
    path = save(tmp_path, native.state_dict())
    out = tmp_path / "imported"
    assert main(import_argv(path, "tf_efficientnet_b0", out, "--layout", "auto", "--label", "ref b0")) == 0
    assert capsys.readouterr().out.strip() == str(out)
    audit = json.loads((out / "import_audit.json").read_text())
    ckpt = load_checkpoint(out)
    assert ckpt.meta["import"] == audit and ckpt.meta["method"] == "import" and ckpt.label == "ref b0"
    assert audit["chosen_by"].startswith("auto (recognised by _conv_stem.weight")
    x = images(64)
    with torch.no_grad():
        ref = native._avg_pooling(native.extract_features(x)).flatten(1)
        assert_close(ckpt.backbone.double().features(x, "avgpool"), ref)


def test_foreign_spec_twice_gives_identical_results(tmp_path):
    from ssl_bench.evaluate import evaluate

    data = make_imagefolder(tmp_path / "data")
    model = vit(18)
    path = save(tmp_path, {"model": {**encoder_keys(model), **_mae_decoder()}})
    spec = f"foreign:{VIT}:{path}"
    runs = [evaluate("knn", spec, data, sets=["ks=[3]", "transform.resize=36", "transform.crop=32", "cache=false"],
                     results_dir=tmp_path / f"results{i}") for i in range(2)]
    assert [r["value"] for r in runs[0][0]] == [r["value"] for r in runs[1][0]]
    stored = [json.loads(p.read_text())["checkpoint"] for _, p in runs]
    assert stored[0]["sha256"] == stored[1]["sha256"] == load_spec(spec).sha256
    assert stored[0]["import"]["layout"] == "mae" and stored[0]["import"]["source"]["file"] == "source.pth"

