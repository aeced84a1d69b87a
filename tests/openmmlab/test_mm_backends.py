"""The mmseg / mmdet backends and the exports loaded into the real OpenMMLab modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssl_bench.backbones import Backbone
from ssl_bench.export import map_state_dict
from test_protocols_detection import write_fixture
from test_protocols_segmentation import short_training, small_recipe, write_ade


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory):
    return write_ade(tmp_path_factory.mktemp("ade"))


def test_mmseg_vit_loads_the_export_strictly_and_computes_the_same_features():
    from mmseg.models.backbones import VisionTransformer

    torch.manual_seed(0)
    ours = Backbone("vit_tiny_patch16_224").eval()
    state, _, _ = map_state_dict(ours.encoder_state_dict(), "mmseg", is_vit=True)
    vit = VisionTransformer(img_size=224, patch_size=16, embed_dims=192, num_layers=12, num_heads=3,
                            out_indices=(3, 5, 7, 11), qkv_bias=True, patch_bias=True, with_cls_token=True, final_norm=False,
                            norm_cfg=dict(type="LN", eps=1e-6), interpolate_mode="bicubic")
    vit.eval()  # mmseg's train() override returns None, so no chaining
    # strict: raises on any missing or unexpected key (mmseg's ViT override returns nothing)
    vit.load_state_dict(state, strict=True)
    assert set(state) == set(vit.state_dict())
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        theirs = vit(images)
        mine = ours.patch_grid(images, blocks=[3, 5, 7, 11])
    for a, b in zip(theirs, mine):
        assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("stack", ["mmdet", "mmseg"])
def test_openmmlab_resnet_loads_the_export_strictly(stack):
    module = __import__(f"{stack}.models.backbones", fromlist=["ResNet"])
    torch.manual_seed(0)
    ours = Backbone("resnet50").eval()
    state, _, _ = map_state_dict(ours.encoder_state_dict(), stack, is_vit=False)
    resnet = module.ResNet(depth=50, out_indices=(0, 1, 2, 3), style="pytorch")
    resnet.eval()  # the OpenMMLab train() override returns None, so no chaining
    missing, unexpected = resnet.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        theirs = resnet(images)
        mine = ours.model.forward_intermediates(images, indices=[1, 2, 3, 4], intermediates_only=True)
    for a, b in zip(theirs, mine):
        assert torch.allclose(a, b, atol=1e-4)


def test_both_segmentation_backends_score_fixed_predictions_the_same(ade_root, monkeypatch):
    import ssl_bench.protocols.segmentation as seg
    from ssl_bench.data.ade20k import ADE20kSegmentation
    from ssl_bench.protocols._dense.mm import MMSegBackend
    from ssl_bench.protocols.segmentation import DefaultSegBackend

    val = ADE20kSegmentation(ade_root / "ADEChallengeData2016", "validation")
    recipe = small_recipe()
    rng = np.random.default_rng(0)
    labels = [val[i][1] for i in range(len(val))]
    preds = [torch.where(torch.from_numpy(rng.random(l.shape) < 0.3), torch.from_numpy(rng.integers(0, 5, l.shape)),
                         l.clamp(0, 4)) for l in labels]
    default = DefaultSegBackend(Backbone("vit_tiny_patch16_224"), val.num_classes, recipe)
    monkeypatch.setattr(seg, "predict_dataset", lambda *a, **k: iter(zip(preds, labels)))  # the name it calls
    a = default.evaluate(val, recipe)
    mm = MMSegBackend(Backbone("vit_tiny_patch16_224"), val.num_classes, recipe)
    queue = iter(preds)
    mm.predict_one = lambda image, shape: next(queue)
    b = mm.evaluate(val, recipe)
    for key in ("mIoU", "mAcc", "aAcc"):  # mmseg's IoUMetric divides float32 tensors
        assert a[key] == pytest.approx(b[key], abs=1e-6), key
    assert 0 < a["mIoU"] < 1


def test_mmseg_short_training_lowers_the_loss_and_predicts(ade_root):
    from ssl_bench.data.ade20k import ADE20kSegmentation
    from ssl_bench.protocols._dense.mm import MMSegBackend
    from ssl_bench.protocols._dense.transforms import SegTestTransform

    recipe = small_recipe()
    # more steps than the default backend's test: mmseg's heads hold BatchNorm running statistics
    # (momentum 0.1) that the held-out loss in eval mode reads, so 10 steps show no trend yet
    recipe["optim"]["lr"] = 5e-3
    recipe["schedule"].update(iters=40, warmup_iters=1)
    backend, train, losses, before, after = short_training(ade_root, recipe, MMSegBackend)
    assert len(losses) == 40 and after < 0.95 * before
    val = ADE20kSegmentation(ade_root / "ADEChallengeData2016", "validation", SegTestTransform(recipe["test"]))
    image, label = val[0]
    pred = backend.predict_one(image, label.shape)
    assert pred.shape == label.shape and int(pred.max()) < train.num_classes


def test_mmdet_backend_end_to_end(tmp_path):
    from ssl_bench.evaluate import evaluate

    root = write_fixture(tmp_path / "data")
    sets = ["backend=mmdet", "model.image_size=64", "model.window_size=2", "schedule.iters=3",
            "model.fpn_channels=32", "model.box_fc=64", "model.roi_batch_size_per_image=64",
            "model.anchor_sizes=[16, 32, 64, 128, 256]", "model.rpn.pre_nms_topk=[300, 300]",
            "model.rpn.post_nms_topk=[100, 100]"]
    records, _ = evaluate("detection", "random:vit_tiny_patch16_224", root, sets=sets, results_dir=tmp_path / "r")
    by_key = {(r["dataset"], r["metric"]): r for r in records}
    assert by_key[("coco", "bbox_AP")]["backend"] == "mmdet"
    assert by_key[("lvis", "segm_APr")]["iters"] == 3
    assert all(np.isfinite(r["loss_last"]) for r in records)
    assert by_key[("coco", "segm_AP")]["detections"] > 0
