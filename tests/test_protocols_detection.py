"""Detection protocol: COCO/LVIS evaluation against pycocotools/lvis called directly, repeat-factor
sampling, the ViTDet pieces, LSJ, and a short end-to-end run on a small COCO/LVIS fixture."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssl_bench.backbones import Backbone
from ssl_bench.errors import UserError
from ssl_bench.data.coco import CocoDetection
from ssl_bench.protocols._dense.coco_eval import coco_evaluate, lvis_evaluate, to_results
from ssl_bench.protocols._dense.maskrcnn import SimpleFeaturePyramid, ViTDetNet, window_partition, window_unpartition
from ssl_bench.protocols._dense.sampling import epoch_indices, repeat_factors
from ssl_bench.protocols._dense.transforms import LSJTransform, masks_to_boxes

CATS = [{"id": 3, "name": "red"}, {"id": 7, "name": "green"}, {"id": 9, "name": "blue"}]
COLORS = {3: (220, 40, 40), 7: (40, 200, 60), 9: (50, 60, 230)}


def write_fixture(root: Path, seed: int = 1, n_train: int = 6, n_val: int = 4) -> Path:
    """COCO 2017 layout (coco/annotations/instances_*.json, coco/<split>/) and LVIS v1 JSONs
    (lvis/lvis_v1_*.json, images found through coco_url in ../coco) with coloured rectangles."""
    rng = np.random.default_rng(seed)
    ann_id = 1
    for split, n, start in (("train2017", n_train, 1), ("val2017", n_val, 1000)):
        (root / "coco" / split).mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            h, w, iid = int(rng.integers(56, 72)), int(rng.integers(60, 80)), start + i
            img = rng.normal(120, 15, (h, w, 3))
            for _ in range(int(rng.integers(1, 4))):
                c = int(rng.choice([3, 7, 9]))
                bw, bh = int(rng.integers(12, 30)), int(rng.integers(12, 30))
                x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
                img[y:y + bh, x:x + bw] = COLORS[c]
                anns.append({"id": ann_id, "image_id": iid, "category_id": c, "bbox": [x, y, bw, bh],
                             "area": bw * bh, "iscrowd": 0,
                             "segmentation": [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]})
                ann_id += 1
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "coco" / split / f"{iid:012d}.jpg")
            images.append({"id": iid, "file_name": f"{iid:012d}.jpg", "height": h, "width": w})
        (root / "coco" / "annotations").mkdir(exist_ok=True)
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": CATS}))
        lvis_images = [{"id": im["id"], "height": im["height"], "width": im["width"],
                        "coco_url": f"http://images.cocodataset.org/{split}/{im['file_name']}",
                        "neg_category_ids": [], "not_exhaustive_category_ids": []} for im in images]
        present = {}
        for a in anns:
            present.setdefault(a["image_id"], set()).add(a["category_id"])
        for im in lvis_images:  # one verified-absent category where possible, one non-exhaustive
            absent = [c["id"] for c in CATS if c["id"] not in present.get(im["id"], set())]
            im["neg_category_ids"] = absent[:1]
            im["not_exhaustive_category_ids"] = sorted(present.get(im["id"], set()))[:1]
        lvis_cats = [dict(c, frequency=f, synset=c["name"]) for c, f in zip(CATS, "rcf")]
        (root / "lvis").mkdir(exist_ok=True)
        (root / "lvis" / f"lvis_v1_{split[:-4]}.json").write_text(
            json.dumps({"images": lvis_images, "annotations": anns, "categories": lvis_cats}))
    return root


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("det"))


def perturbed_outputs(dataset, seed: int = 0):
    """torchvision-format outputs made from the ground truth: jittered boxes, shifted masks,
    random scores and labels, one missed object per image, one spurious detection per image."""
    rng = np.random.default_rng(seed)
    outputs = []
    for i in range(len(dataset)):
        target = dataset.target(i)
        h, w = target["masks"].shape[-2:]
        boxes = target["boxes"].numpy().copy()[1:]  # the first object is missed
        masks = target["masks"].numpy().astype(np.float32)[1:]
        labels = target["labels"].numpy().copy()[1:]
        boxes += rng.normal(0, 2.0, boxes.shape)
        masks = np.roll(masks, shift=int(rng.integers(-2, 3)), axis=2) * rng.uniform(0.4, 1.0, (len(masks), 1, 1))
        extra_box = np.array([[2.0, 3.0, 20.0, 25.0]])
        extra_mask = np.zeros((1, h, w), np.float32)
        extra_mask[0, 3:25, 2:20] = 0.9
        boxes = np.concatenate([boxes, extra_box]).astype(np.float32)
        masks = np.concatenate([masks, extra_mask]).astype(np.float32)
        labels = np.concatenate([labels, [int(rng.integers(1, 4))]])
        scores = rng.uniform(0.05, 1.0, len(boxes)).astype(np.float32)
        outputs.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels).long(),
                        "scores": torch.from_numpy(scores), "masks": torch.from_numpy(masks)[:, None]})
    return outputs


def reference_results(dataset, outputs) -> list[dict]:
    """The same detections in COCO results format, written out independently of ssl_bench."""
    cat_ids = sorted(c["id"] for c in CATS)
    results = []
    for i, out in enumerate(outputs):
        image_id = dataset.images[i]["id"]
        for box, label, score, mask in zip(out["boxes"].numpy(), out["labels"].numpy(), out["scores"].numpy(),
                                           out["masks"].numpy()[:, 0]):
            rle = mask_utils.encode(np.asfortranarray((mask > 0.5).astype(np.uint8)))
            x0, y0, x1, y1 = (float(v) for v in box)
            results.append({"image_id": image_id, "category_id": cat_ids[int(label) - 1],
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score), "segmentation": rle})
    return results


def pycocotools_stats(ann_file, results, iou_type):
    gt = COCO(str(ann_file))
    dets = [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")} for r in results]
    ev = COCOeval(gt, gt.loadRes(dets), iou_type)
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_coco_evaluation_equals_pycocotools(fixture_root):
    val = CocoDetection.from_root(fixture_root / "coco", "val2017")
    outputs = perturbed_outputs(val)
    ours_in = []
    for i, out in enumerate(outputs):
        ours_in += to_results(out, val.images[i]["id"], val.label_to_cat_id)
    ours = coco_evaluate(val.ann_file, ours_in)
    for iou_type in ("bbox", "segm"):
        stats = pycocotools_stats(val.ann_file, reference_results(val, outputs), iou_type)
        for j, name in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
            if stats[j] < 0:  # pycocotools' -1 (no ground truth in the range) is left out, not -100
                assert f"{iou_type}/{name}" not in ours
                continue
            assert ours[f"{iou_type}/{name}"] == pytest.approx(100 * stats[j], abs=1e-9), (iou_type, name)
    assert 0 < ours["bbox/AP"] < 100 and 0 < ours["segm/AP"] < 100


def test_lvis_evaluation_equals_lvis_package(fixture_root):
    from ssl_bench.data.lvis_compat import add_numpy_aliases

    add_numpy_aliases()  # lvis 0.5.3 uses np.float
    import lvis

    val = CocoDetection.from_root(fixture_root / "coco", "val2017")  # same images/annotations as lvis_v1_val
    ann_file = fixture_root / "lvis" / "lvis_v1_val.json"
    outputs = perturbed_outputs(val, seed=3)
    ours_in = []
    for i, out in enumerate(outputs):
        ours_in += to_results(out, val.images[i]["id"], val.label_to_cat_id)
    ours = lvis_evaluate(ann_file, ours_in, max_dets=300)
    for iou_type in ("bbox", "segm"):
        gt = lvis.LVIS(str(ann_file))
        dets = [{k: v for k, v in r.items() if not (iou_type == "segm" and k == "bbox")}
                for r in reference_results(val, outputs)]
        ev = lvis.LVISEval(gt, lvis.LVISResults(gt, dets, max_dets=300), iou_type)
        ev.run()
        expected = ev.get_results()
        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"):
            if expected[name] < 0:  # the lvis package's -1 (no ground truth in the range) is left out
                assert f"{iou_type}/{name}" not in ours
                continue
            assert ours[f"{iou_type}/{name}"] == pytest.approx(100 * expected[name], abs=1e-9), (iou_type, name)
    assert 0 < ours["bbox/AP"] < 100


def test_no_detections_score_zero(fixture_root):
    val = CocoDetection.from_root(fixture_root / "coco", "val2017")
    metrics = coco_evaluate(val.ann_file, [])
    assert metrics["bbox/AP"] == 0.0 and metrics["segm/AP50"] == 0.0


def test_repeat_factors_follow_the_lvis_rule():
    # category 1 in 1 of 4 images (f = 0.25), category 2 in all (f = 1); threshold t = 0.5
    factors = repeat_factors([{1, 2}, {2}, {2}, set()], threshold=0.5)
    assert factors.tolist() == pytest.approx([math.sqrt(0.5 / 0.25), 1.0, 1.0, 1.0])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(400):
        idx = epoch_indices(factors, generator)
        c = torch.bincount(idx, minlength=4).float()
        assert c[1:].tolist() == [1.0, 1.0, 1.0] and c[0].item() in (1.0, 2.0)
        counts += c
    assert counts[0].item() / 400 == pytest.approx(math.sqrt(2), abs=0.06)  # stochastic rounding keeps the mean


def test_window_partition_round_trip_and_padding():
    x = torch.randn(2, 10, 7, 5)
    windows, padded = window_partition(x, 4)
    assert padded == (12, 8) and windows.shape == (2 * 3 * 2, 16, 5)
    assert torch.equal(window_unpartition(windows, 4, padded, (10, 7)), x)
    # the first window holds the top-left 4x4 tokens in row-major order
    assert torch.equal(windows[0].reshape(4, 4, 5), x[0, :4, :4])


def test_vitdet_windows_equal_global_attention_when_one_window_covers_the_grid():
    torch.manual_seed(0)
    backbone = Backbone("vit_tiny_patch16_224").eval()
    images = torch.randn(1, 3, 128, 128)  # 8x8 tokens
    one_window = ViTDetNet(backbone, window_size=8, global_blocks=[])(images)
    global_all = ViTDetNet(backbone, window_size=0, global_blocks=[])(images)
    small_windows = ViTDetNet(backbone, window_size=4, global_blocks=[11])(images)
    assert torch.allclose(one_window, global_all, atol=1e-5)
    assert not torch.allclose(small_windows, global_all, atol=1e-3)


def test_simple_feature_pyramid_levels():
    torch.manual_seed(0)
    pyramid = SimpleFeaturePyramid(192, 32)
    feats = pyramid(torch.randn(1, 192, 8, 8))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]
    assert torch.equal(feats["pool"], feats["3"][:, :, ::2, ::2])  # P6: stride-2 subsampling of P5


def test_lsj_identity_and_recomputed_boxes():
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 5:20, 10:30] = 1
    masks[1, 40:64, 0:8] = 1
    target = {"boxes": torch.zeros(2, 4), "labels": torch.tensor([1, 2]), "masks": masks,
              "area": torch.tensor([1.0, 2.0]), "iscrowd": torch.zeros(2, dtype=torch.int64)}
    image = torch.rand(3, 64, 64)
    out_image, out = LSJTransform(64, 1.0, 1.0, flip_prob=0.0)(image, target)
    assert torch.equal(out_image, image) and torch.equal(out["masks"], masks)
    assert out["boxes"].tolist() == [[10.0, 5.0, 30.0, 20.0], [0.0, 40.0, 8.0, 64.0]]
    # a 2x zoom and crop: every kept instance's box is its mask's extent
    big_image, big = LSJTransform(64, 2.0, 2.0, flip_prob=1.0, seed=3)(image, target)
    assert big_image.shape == (3, 64, 64)
    assert torch.equal(big["boxes"], masks_to_boxes(big["masks"])) and len(big["labels"]) == len(big["boxes"])


def test_protocol_end_to_end_on_coco_and_lvis(fixture_root, tmp_path):
    from ssl_bench.evaluate import evaluate

    sets = ["model.image_size=64", "model.window_size=2", "schedule.iters=3", "model.fpn_channels=32",
            "model.box_fc=64", "model.roi_batch_size_per_image=64", "model.rpn.pre_nms_topk=[300, 300]",
            "model.rpn.post_nms_topk=[100, 100]", "test.score_thresh=0.0", "lvis.score_thresh=0.0",
            "test.detections_per_image=20", "lvis.detections_per_image=20"]
    records, path = evaluate("detection", "random:vit_tiny_patch16_224", fixture_root, sets=sets,
                             results_dir=tmp_path)
    by_key = {(r["dataset"], r["metric"]): r for r in records}
    assert {d for d, _ in by_key} == {"coco", "lvis"}
    for fmt, names in (("coco", ("AP", "AP50", "AP75", "APs", "APm", "APl")),
                       ("lvis", ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf"))):
        for iou in ("bbox", "segm"):
            assert (fmt, f"{iou}_AP") in by_key and (fmt, f"{iou}_AP50") in by_key
            for name in names:
                r = by_key.get((fmt, f"{iou}_{name}"))  # absent: no ground truth in that size range
                if r is not None:
                    assert 0.0 <= r["value"] <= 100.0
                    assert r["iters"] == 3 and r["backend"] == "default"
    assert by_key[("coco", "bbox_AP")]["detections"] > 0
    assert json.loads(Path(path).read_text())["recipe"]["model"]["image_size"] == 64


def test_resnet_c4_builds_and_trains_one_step(fixture_root):
    from ssl_bench.protocols._dense.common import trainable_backbone
    from ssl_bench.protocols.detection import DefaultDetBackend, test_settings
    from ssl_bench.recipes import load_defaults

    class Ckpt:
        backbone = Backbone("resnet18")

    recipe = load_defaults("protocols/detection")
    recipe["model"].update(image_size=64, roi_batch_size_per_image=32)
    recipe["model"]["rpn"].update(pre_nms_topk=[200, 200], post_nms_topk=[50, 50])
    backend = DefaultDetBackend(trainable_backbone(Ckpt), 3, recipe, test_settings(recipe, "coco"))
    backend.train(True)
    train = CocoDetection.from_root(fixture_root / "coco", "train2017")
    samples = [train[i] for i in range(2)]
    loss = backend.loss([s[0] for s in samples], [s[1] for s in samples])
    loss.backward()
    res5 = backend.model.roi_heads.box_head.res5
    assert res5 is backend.model.roi_heads.mask_head.res5  # C4: box and mask heads share res5
    assert res5[0].conv1.weight.grad is not None and math.isfinite(float(loss.detach()))


@pytest.mark.parametrize("convnet_backbone, body", [("resnet_c4", "ResNetC4Backbone"),
                                                    ("resnet_fpn", "ResNetFPNBackbone")])
def test_auto_backbone_follows_the_recipe_for_convnets_and_is_vitdet_for_vits(convnet_backbone, body):
    from ssl_bench.protocols._dense.maskrcnn import build_maskrcnn
    from ssl_bench.protocols.detection import test_settings
    from ssl_bench.recipes import load_defaults

    recipe = load_defaults("protocols/detection")
    recipe["model"].update(image_size=64, backbone="auto", convnet_backbone=convnet_backbone)
    for arch, expected in (("resnet18", body), ("vit_tiny_patch16_224", "ViTDetBackbone")):
        model, _ = build_maskrcnn(Backbone(arch, 64, 16), 3, recipe["model"], test_settings(recipe, "coco"))
        assert type(model.backbone).__name__ == expected


def test_vitdet_runs_a_beit_with_global_attention_only():
    """A BEiT's relative position bias has no windowed form in ViTDet: window_size 0 runs every
    block globally on the patch tokens (no CLS), with the bias read for the token grid."""
    torch.manual_seed(0)
    backbone = Backbone("beit_tiny_patch16_224", img_size=64).eval()
    with torch.no_grad():
        for block in backbone.model.blocks:
            block.attn.relative_position_bias_table.normal_()
    with pytest.raises(UserError, match="window_size=0"):
        ViTDetNet(backbone, window_size=4, global_blocks=[11])
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        got = ViTDetNet(backbone, window_size=0, global_blocks=[])(images)
        x = backbone.embed_patches(images).reshape(1, 16, -1)
        for block in backbone.model.blocks:  # timm's own block with the grid's bias minus its CLS row/column
            bias = block.attn._get_rel_pos_bias()[:, :, 1:, 1:]
            table = block.attn.relative_position_bias_table
            block.attn.relative_position_bias_table = None
            x = block(x, shared_rel_pos_bias=bias)
            block.attn.relative_position_bias_table = table
    assert torch.allclose(got, x.transpose(1, 2).reshape(1, -1, 4, 4), atol=1e-5)
