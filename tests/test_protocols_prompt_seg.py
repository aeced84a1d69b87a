"""Zero-shot prompt segmentation (MMC) on a synthetic feature map with a known answer, and end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from ssl_bench.evaluate import evaluate
from ssl_bench.protocols.prompt_seg import PromptScores, prompt_token, score_image, summarise, threshold_grid


pytestmark = pytest.mark.usefixtures("one_thread")

CFG = {"prompt": "interior", "upsample": "mask", "background": "inter_only", "min_fraction": 0.5}


def synthetic():
    """64x64 image, 4x4 tokens of 16 px: object A (label 1) = top-left 2x2 cells, B (label 2) = bottom
    row, columns 2-3; features A = e1, B = e2, background = (1, 1, 1)/sqrt(3): cos(A, bg) = cos(B, bg)
    = 1/sqrt(3) = 0.577, cos(A, B) = 0."""
    feats = torch.zeros(3, 4, 4)
    feats[:] = (torch.ones(3) / 3 ** 0.5).view(3, 1, 1)
    feats[:, 0:2, 0:2] = torch.tensor([1.0, 0, 0]).view(3, 1, 1)
    feats[:, 3:4, 2:4] = torch.tensor([0, 1.0, 0]).view(3, 1, 1)
    masks = np.zeros((2, 64, 64), np.uint8)
    masks[0, 0:32, 0:32] = 1
    masks[1, 48:64, 32:64] = 1
    return feats * 3.0, masks, np.array([1, 2])  # scaled: cosine must not depend on the norm


def run(cfg, how="per_class", mode="dataset"):
    cfg = {**CFG, **cfg, "thresholds": [0.1, 0.2, 0.3, 0.4], "sweep": {"start": 0.0, "stop": 0.9, "step": 0.1}}
    fixed, sweep, allt = threshold_grid(cfg)
    scores = PromptScores(allt, bins=100)
    feats, masks, labels = synthetic()
    score_image(feats, masks, labels, 0, scores, cfg, np.random.default_rng(0))
    return summarise(scores, fixed, sweep, how, mode)


@pytest.mark.parametrize("how", ["per_class", "per_instance"])
@pytest.mark.parametrize("prompt", ["interior", "max_overlap", "random"])
def test_two_constant_objects_segment_exactly_above_the_background_similarity(how, prompt):
    out = run({"prompt": prompt}, how)
    # below cos(object, background) = 0.577 each prediction is object + all 10 background cells
    iou_a = 1024 / (1024 + 10 * 256)
    iou_b = 512 / (512 + 10 * 256)
    for t in (0.1, 0.2, 0.3, 0.4):
        assert out[f"mIoU@{t:g}"] == pytest.approx(100 * (iou_a + iou_b) / 2)
    # from 0.6 on only the object's own cells are above the threshold: exact masks
    assert out["mIoU@opt"] == pytest.approx(100.0)
    assert out["opt_threshold"] == pytest.approx(0.6)


def test_similarity_distributions_by_hand():
    out = run({})
    # intra: A-A 6 pairs, B-B 1 pair, all cos 1 (background-background pairs left out)
    assert out["sim_intra_mean"] == pytest.approx(1.0)
    # inter: A-B 8 pairs at 0, A-bg 40 and B-bg 20 pairs at 1/sqrt(3)
    assert out["sim_inter_mean"] == pytest.approx(60 / 3 ** 0.5 / 68)
    assert out["sim_overlap"] == pytest.approx(0.0)
    category = run({"background": "category"})
    # background-background: 45 more intra pairs at cos 1
    assert category["sim_intra_mean"] == pytest.approx(1.0)
    excluded = run({"background": "exclude"})
    assert excluded["sim_inter_mean"] == pytest.approx(0.0)  # only A-B pairs remain


def test_overlap_area_of_identical_distributions_is_one():
    cfg = {**CFG, "thresholds": [0.1], "sweep": {"start": 0.0, "stop": 0.9, "step": 0.1}}
    fixed, sweep, allt = threshold_grid(cfg)
    scores = PromptScores(allt, bins=10)
    scores.inter.append(np.zeros(len(allt), np.int64))
    scores.union.append(np.ones(len(allt), np.int64))
    scores.labels.append(1)
    scores.images.append(0)
    scores.hist_intra[:] = [0, 0, 0, 0, 0, 2, 2, 0, 0, 0]
    scores.hist_inter[:] = [0, 0, 0, 0, 0, 1, 0, 1, 0, 0]
    out = summarise(scores, fixed, sweep, "per_class", "dataset")
    assert out["sim_overlap"] == pytest.approx(0.5)  # min(.5,.5) + min(.5,0) + min(0,.5)


def test_interior_prompt_is_the_farthest_point_from_the_boundary():
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:24] = True   # tall bar: centre column x = 15.5 -> token col 0 of 4
    mask[40:56, 8:56] = True  # foot: the bar's corner region at y 40-55 is the thickest part
    r, c = prompt_token(mask, (4, 4), "interior", np.random.default_rng(0))
    assert (r, c) in {(2, 0), (3, 0), (2, 1), (3, 1)}
    assert mask[r * 16 + 8, c * 16 + 8]


def make_coco(root: Path, n_images=3) -> Path:
    rng = np.random.default_rng(0)
    coco = root / "coco"
    (coco / "val2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    images, anns = [], []
    for i in range(n_images):
        h, w = 80 + 8 * i, 96
        img = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        for k, (y, x, cat) in enumerate([(10, 10, 1), (40, 50, 2), (20 + i, 60, 1)]):
            m = np.zeros((h, w), np.uint8, order="F")
            m[y:y + 24, x:x + 20] = 1
            img[m.astype(bool)] = 40 * cat
            rle = mask_utils.encode(m)
            rle["counts"] = rle["counts"].decode("ascii")
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat, "segmentation": rle,
                         "area": float(m.sum()), "bbox": [x, y, 20, 24], "iscrowd": int(k == 2 and i == 0)})
        Image.fromarray(img).save(coco / "val2017" / f"{i + 1:012d}.jpg")
        images.append({"id": i + 1, "file_name": f"{i + 1:012d}.jpg", "height": h, "width": w})
    cats = [{"id": 1, "name": "a", "supercategory": "x"}, {"id": 2, "name": "b", "supercategory": "x"}]
    (coco / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return coco


def test_prompt_seg_end_to_end(tmp_path):
    data = make_coco(tmp_path)
    records, path = evaluate("prompt_seg", "random:vit_tiny_patch16_224", data, results_dir=tmp_path / "r",
                             device="cpu", sets=["input_size=128"])
    by = {r["metric"]: r for r in records}
    assert set(by) == {"mIoU@0.1", "mIoU@0.2", "mIoU@0.3", "mIoU@0.4", "mIoU@opt", "opt_threshold",
                       "sim_intra_mean", "sim_inter_mean", "sim_overlap"}
    assert by["mIoU@0.1"]["instances"] == 8  # 9 annotations, one crowd
    assert by["mIoU@opt"]["value"] >= max(by[f"mIoU@{t}"]["value"] for t in ("0.1", "0.2", "0.3", "0.4"))
    assert by["mIoU@opt"]["prompt"] == "interior" and by["mIoU@opt"]["miou"] == "per_class"
    assert all(r["dataset"] == "coco" for r in records)
    assert 0.0 <= by["sim_overlap"]["value"] <= 1.0
