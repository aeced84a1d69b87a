"""Segmentation protocol: sliding-window inference, the mmseg pipeline pieces, layer decay, the
UperNet model, a short training run that lowers the loss, and an end-to-end run on an ADE20k-layout
fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_bench.backbones import Backbone
from ssl_bench.protocols._dense.transforms import IGNORE, SegTrainTransform, normalize, rescale_size
from ssl_bench.protocols._dense.upernet import UperNet, slide_inference
from ssl_bench.protocols._finetuning import layer_decay_groups
from ssl_bench.recipes import load_defaults


def write_ade(root: Path, n_train: int = 8, n_val: int = 3, seed: int = 0) -> Path:
    """ADEChallengeData2016 layout: images/*.jpg, annotations/*.png (0 = other, 1..5 classes)."""
    rng = np.random.default_rng(seed)
    colors = rng.integers(0, 255, (6, 3))
    ade = root / "ADEChallengeData2016"
    for split, n in (("training", n_train), ("validation", n_val)):
        (ade / "images" / split).mkdir(parents=True, exist_ok=True)
        (ade / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            h, w = int(rng.integers(48, 64)), int(rng.integers(56, 72))
            label = np.zeros((h, w), np.uint8)
            for _ in range(3):
                c = int(rng.integers(1, 6))
                y, x = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
                label[y:y + int(rng.integers(10, 30)), x:x + int(rng.integers(10, 30))] = c
            image = colors[label] + rng.normal(0, 8, (h, w, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(ade / "images" / split / f"ADE_{split}_{i:08d}.jpg")
            Image.fromarray(label).save(ade / "annotations" / split / f"ADE_{split}_{i:08d}.png")
    (ade / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n" +
                                           "".join(f"{k}\t0.1\t1\t1\tclass{k}\n" for k in range(1, 6)))
    return root


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    return write_ade(tmp_path_factory.mktemp("ade"))


def small_recipe(**model) -> dict:
    recipe = load_defaults("protocols/segmentation")
    recipe["model"].update(channels=16, aux_channels=8, **model)
    recipe["train_pipeline"].update(scale=[128, 32], crop_size=[32, 32])
    recipe["test"].update(scale=[128, 32], crop_size=[32, 32], stride=[21, 21])
    return recipe


@pytest.mark.parametrize("size", [(50, 70), (20, 25), (64, 64)])
def test_slide_inference_averages_overlapping_windows(size):
    # a model whose logits are its input's first channels: averaging windows gives the image back
    calls = []

    def predict(window):
        calls.append(window.shape)
        return window[:, :2] * 1.0

    image = torch.rand(3, *size)
    out = slide_inference(predict, image, 2, crop=(32, 32), stride=(21, 21))
    assert torch.allclose(out, image[:2], atol=1e-6)
    h, w = size
    rows = max(h - 32 + 21 - 1, 0) // 21 + 1  # mmseg slide_inference grid
    cols = max(w - 32 + 21 - 1, 0) // 21 + 1
    assert len(calls) == rows * cols and all(c[-2:] == (min(32, h), min(32, w)) for c in calls)


def test_slide_inference_counts_overlaps():
    # constant-per-window logits: a pixel's value is the mean over the windows covering it
    counter = iter(range(100))

    def predict(window):
        return torch.full((1, 1, *window.shape[-2:]), float(next(counter)))

    out = slide_inference(predict, torch.zeros(3, 32, 53), 1, crop=(32, 32), stride=(21, 21))
    # windows at x = 0 and x = 21 (flush with the border): columns 21..31 are covered by both
    assert out[0, 0, 0].item() == 0.0 and out[0, 0, 40].item() == 1.0
    assert out[0, 0, 25].item() == pytest.approx(0.5)


def test_rescale_size_matches_mmcv_keep_ratio():
    assert rescale_size(375, 500, (2048, 512)) == (512, 683)  # a typical ADE20k image at the 512 scale
    assert rescale_size(512, 2400, (2048, 512)) == (437, 2048)  # the long side bounds it


def test_train_transform_identity_and_padding():
    cfg = {"scale": [64, 48], "ratio_range": [1.0, 1.0], "crop_size": [48, 64], "cat_max_ratio": 1.0,
           "flip_prob": 0.0, "photometric": False}
    image = torch.rand(3, 48, 64)
    label = torch.randint(0, 5, (48, 64))
    out_image, out_label = SegTrainTransform(cfg)(image, label)
    assert torch.allclose(out_image, normalize(image), atol=1e-6) and torch.equal(out_label, label)
    cfg.update(crop_size=[60, 70], scale=[32, 24])  # image smaller than the crop: padded
    out_image, out_label = SegTrainTransform(cfg)(image, label)
    assert out_image.shape == (3, 60, 70) and out_label.shape == (60, 70)
    assert (out_label[24:] == IGNORE).all() and (out_image[:, 24:] == 0).all()
    assert (out_label[:24, :32] != IGNORE).all()


def test_train_transform_flip_and_crop_keep_pixels_aligned():
    cfg = {"scale": [64, 48], "ratio_range": [1.0, 1.0], "crop_size": [32, 32], "cat_max_ratio": 0.75,
           "flip_prob": 1.0, "photometric": False}
    label = torch.arange(48 * 64).reshape(48, 64) % 7
    image = label.float()[None].repeat(3, 1, 1) / 10  # the image encodes the label
    out_image, out_label = SegTrainTransform(cfg, seed=5)(image, label)
    back = out_image * torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    assert torch.allclose(back[0] * 10, out_label.float(), atol=1e-4)


def test_layer_decay_groups_follow_beit_scaling():
    torch.manual_seed(0)
    backbone = Backbone("vit_tiny_patch16_224")
    head = torch.nn.Conv2d(4, 4, 1)
    groups = layer_decay_groups(backbone.model, weight_decay=0.05, layer_decay=0.65, heads=[head])
    scale_of = {}
    for g in groups:
        for p in g["params"]:
            scale_of[id(p)] = (g["lr_scale"], g["weight_decay"])
    vit = backbone.model
    depth = len(vit.blocks)
    for i, block in enumerate(vit.blocks):  # block i has layer id i + 1: 0.65 ** (depth + 1 - (i + 1))
        assert scale_of[id(block.attn.qkv.weight)] == (pytest.approx(0.65 ** (depth - i)), 0.05)
        assert scale_of[id(block.norm1.weight)][1] == 0.0  # no decay on 1-D parameters
    assert scale_of[id(vit.patch_embed.proj.weight)][0] == pytest.approx(0.65 ** (depth + 1))
    assert scale_of[id(vit.pos_embed)] == (pytest.approx(0.65 ** (depth + 1)), 0.0)
    assert scale_of[id(head.weight)] == (1.0, 0.05) and scale_of[id(head.bias)] == (1.0, 0.0)
    assert len(scale_of) == sum(1 for _ in backbone.parameters()) + 2


def test_upernet_outputs_and_neck_levels():
    torch.manual_seed(0)
    backbone = Backbone("vit_tiny_patch16_224")
    model = UperNet(backbone, 5, small_recipe()["model"]).train()
    feats = model.features(torch.randn(2, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    out, aux = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5, 16, 16) and aux.shape == (2, 5, 4, 4)
    # the 1x level is block 7's patch grid itself (Feature2Pyramid identity)
    grid = backbone.patch_grid(torch.ones(1, 3, 64, 64), blocks=[7])[0]
    assert torch.allclose(model.features(torch.ones(1, 3, 64, 64))[2], grid, atol=1e-5)
    model.eval()
    assert model.logits(torch.randn(1, 3, 64, 48)).shape == (1, 5, 64, 48)


def fixed_batch(root: Path, recipe: dict):
    """A fixed batch (deterministic crops, no flip or photometric change) to measure the loss on."""
    from ssl_bench.data.ade20k import ADE20kSegmentation

    cfg = dict(recipe["train_pipeline"], ratio_range=[1.0, 1.0], flip_prob=0.0, photometric=False)
    data = ADE20kSegmentation(root / "ADEChallengeData2016", "training", SegTrainTransform(cfg, seed=1))
    samples = [data[i] for i in range(4)]
    return torch.stack([s[0] for s in samples]), torch.stack([s[1] for s in samples])


def held_out_loss(backend, batch) -> float:
    backend.train(False)
    with torch.no_grad():
        return float(backend.loss(*batch))


def short_training(ade_root: Path, recipe: dict, make_backend, arch: str = "vit_tiny_patch16_224"):
    """Seeded ``train_segmentation`` of ``make_backend(backbone, classes, recipe)`` on the fixture:
    (backend, training set, losses, held-out loss before, held-out loss after)."""
    from ssl_bench.data.ade20k import ADE20kSegmentation
    from ssl_bench.protocols.segmentation import train_segmentation
    from ssl_bench.seeding import seed_everything

    seed_everything(0)
    backbone = Backbone(arch)
    dataset = ADE20kSegmentation(ade_root / "ADEChallengeData2016", "training", SegTrainTransform(recipe["train_pipeline"]))
    backend = make_backend(backbone, dataset.num_classes, recipe)
    batch = fixed_batch(ade_root, recipe)
    before = held_out_loss(backend, batch)
    losses = train_segmentation(backend, backbone, dataset, recipe, torch.device("cpu"))
    return backend, dataset, losses, before, held_out_loss(backend, batch)


@pytest.mark.parametrize("arch", ["vit_tiny_patch16_224", "resnet18"])
def test_short_training_lowers_the_loss(ade_root, arch):
    from ssl_bench.protocols.segmentation import DefaultSegBackend

    recipe = small_recipe()
    recipe["optim"]["lr"] = 2e-3
    recipe["schedule"].update(iters=10, warmup_iters=1)
    _, _, losses, before, after = short_training(ade_root, recipe, DefaultSegBackend, arch)
    assert len(losses) == 10 and all(np.isfinite(losses))
    assert after < 0.95 * before  # the loss on a fixed batch, in eval mode, went down


def test_evaluation_is_mmseg_iou_on_fixed_predictions(ade_root, monkeypatch):
    """The default backend's scoring path against IoU computed here from confusion matrices."""
    from ssl_bench.data.ade20k import ADE20kSegmentation
    from ssl_bench.protocols.segmentation import DefaultSegBackend

    recipe = small_recipe()
    val = ADE20kSegmentation(ade_root / "ADEChallengeData2016", "validation")
    backend = DefaultSegBackend(Backbone("vit_tiny_patch16_224"), val.num_classes, recipe)
    rng = np.random.default_rng(0)
    labels = [val[i][1] for i in range(len(val))]
    preds = [torch.where(torch.from_numpy(rng.random(l.shape) < 0.3), torch.from_numpy(rng.integers(0, 5, l.shape)),
                         l.clamp(0, 4)) for l in labels]
    # fixed predictions replace the model's (the name segmentation.py calls)
    import ssl_bench.protocols.segmentation as seg

    def fixed(predict, dataset, num_classes, test_cfg, desc=""):
        yield from zip(preds, labels)

    monkeypatch.setattr(seg, "predict_dataset", fixed)
    result = backend.evaluate(val, recipe)
    conf = np.zeros((5, 5), np.int64)
    for p, l in zip(preds, labels):
        keep = l.numpy() != 255
        np.add.at(conf, (l.numpy()[keep], p.numpy()[keep]), 1)
    inter = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - np.diag(conf)
    iou = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    assert result["mIoU"] == pytest.approx(np.nanmean(iou), abs=1e-12)
    assert result["aAcc"] == pytest.approx(inter.sum() / conf.sum(), abs=1e-12)


def test_protocol_end_to_end(ade_root, tmp_path):
    from ssl_bench.evaluate import evaluate

    sets = ["model.channels=16", "model.aux_channels=8", "schedule.iters=2", "train_pipeline.scale=[128, 32]",
            "train_pipeline.crop_size=[32, 32]", "test.scale=[128, 32]", "test.crop_size=[32, 32]",
            "test.stride=[21, 21]"]
    records, path = evaluate("segmentation", "random:vit_tiny_patch16_224", ade_root, sets=sets, results_dir=tmp_path)
    metrics = {r["metric"]: r["value"] for r in records}
    assert set(metrics) == {"mIoU", "mAcc", "aAcc"}
    assert all(0.0 <= v <= 100.0 for v in metrics.values())
    assert {r["dataset"] for r in records} == {"ade20k"} and records[0]["iters"] == 2
    assert json.loads(Path(path).read_text())["recipe"]["backend"] == "default"
