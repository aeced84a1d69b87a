"""Checkpoints: safetensors + JSON sidecar, hash verification, safe foreign loading (the import's
layouts and audit: test_imports.py)."""

import argparse
import json
import os

import pytest
import torch

from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import load_checkpoint, load_spec, save_checkpoint
from ssl_bench.errors import UserError
from ssl_bench.imports import read_foreign


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(1)
    backbone = Backbone("vit_tiny_patch16_224", img_size=32)
    sidecar = save_checkpoint(tmp_path / "run" / "checkpoint", backbone,
                              {"method": "msn", "encoder": "target", "epoch": 3, "step": 30,
                               "recipe": {"optim": {"lr": 0.1}},
                               "eval": {"feature": "cls_prenorm", "final_norm": True, "input_filter": None}})
    return backbone, sidecar


def test_round_trip_restores_weights_and_metadata(saved):
    backbone, sidecar = saved
    ckpt = load_checkpoint(sidecar.parent)
    for key, value in backbone.model.state_dict().items():
        assert torch.equal(ckpt.backbone.model.state_dict()[key], value), key
    meta = json.loads(sidecar.read_text())
    assert meta["method"] == "msn" and meta["encoder"] == "target" and meta["step"] == 30
    assert meta["arch"] == "vit_tiny_patch16_224" and meta["img_size"] == 32 and meta["patch_size"] == 16
    assert meta["recipe"] == {"optim": {"lr": 0.1}}
    assert set(meta["versions"]) >= {"torch", "timm"} and "commit" in meta["code"]
    assert ckpt.eval["feature"] == "cls_prenorm"
    # The same file loads through the CLI spec forms: folder, .json and .safetensors.
    assert load_spec(str(sidecar)).sha256 == load_spec(str(sidecar.with_suffix(".safetensors"))).sha256


def test_flipped_byte_is_refused_naming_the_file(saved):
    _, sidecar = saved
    weights = sidecar.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError) as err:
        load_checkpoint(sidecar)
    assert str(weights) in str(err.value) and "truncated or altered" in str(err.value)


def test_truncated_file_is_refused(saved):
    _, sidecar = saved
    weights = sidecar.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="truncated or altered"):
        load_checkpoint(sidecar)


def test_missing_sidecar_explains_interrupted_write(saved):
    _, sidecar = saved
    sidecar.unlink()
    with pytest.raises(UserError, match="interrupted before the metadata"):
        load_checkpoint(sidecar.parent)


class _Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_foreign_pickle_with_a_callable_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, path)
    with pytest.raises(UserError) as err:
        read_foreign(path)
    assert str(path) in str(err.value) and "refused to unpickle" in str(err.value)
    assert not marker.exists()


def test_foreign_mae_style_checkpoint_loads_with_allow_listed_args(tmp_path):
    torch.manual_seed(2)
    source = Backbone("vit_tiny_patch16_224")
    state = {f"module.{k}": v for k, v in source.model.state_dict().items()}
    path = tmp_path / "mae.pth"
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1), "epoch": 5}, path)
    ckpt = load_spec(f"foreign:vit_tiny_patch16_224:{path}")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ckpt.backbone.features(x, "cls"), source.eval().features(x, "cls"))
    assert ckpt.meta["import"]["layout"] == "timm" and ckpt.meta["import"]["source"]["container"] == "model"
    assert ckpt.meta["import"]["target"]["filled"] == len(source.model.state_dict())


def test_random_spec_is_deterministic():
    a, b = load_spec("random:vit_tiny_patch16_224"), load_spec("random:vit_tiny_patch16_224")
    assert torch.equal(a.backbone.model.pos_embed, b.backbone.model.pos_embed)
    assert a.label == "random:vit_tiny_patch16_224"


def test_a_convnet_names_its_average_pool_in_checkpoint_and_records(tmp_path):
    """A ConvNet has one global feature: its conventions say avgpool wherever they are read, so a
    stored result's checkpoint.eval and its records agree."""
    from test_protocols_common import make_imagefolder

    from ssl_bench.evaluate import evaluate

    assert load_spec("random:resnet18").eval["feature"] == "avgpool"
    sidecar = save_checkpoint(tmp_path / "c" / "checkpoint", Backbone("resnet18"), {"method": "mscn", "encoder": "online"})
    assert json.loads(sidecar.read_text())["eval"]["feature"] == "avgpool"
    assert load_checkpoint(sidecar).eval["feature"] == "avgpool"
    assert load_spec("random:vit_tiny_patch16_224").eval["feature"] == "cls"  # a ViT keeps its CLS default
    records, path = evaluate("knn", "random:resnet18", make_imagefolder(tmp_path / "d", classes=2, train=3, val=2),
                             sets=["transform.resize=36", "transform.crop=32", "ks=[3]"], results_dir=tmp_path / "r",
                             device="cpu")
    stored = json.loads(path.read_text())
    assert stored["checkpoint"]["eval"]["feature"] == "avgpool"
    assert {r["feature"] for r in stored["records"]} == {"avgpool"}
