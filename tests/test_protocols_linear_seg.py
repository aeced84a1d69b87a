"""Linear segmentation on frozen features: schedule, and a separable ADE20k-layout set end to end."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_bench.evaluate import evaluate
from ssl_bench.protocols.linear_seg import eval_size


pytestmark = pytest.mark.usefixtures("one_thread")


def make_ade(root: Path, n_train=8, n_val=3) -> Path:
    """ADEChallengeData2016/{images,annotations}/{training,validation}; left half class 1 (red), right
    half class 2 (blue), a top strip of label 0 ("other", ignored with reduce_zero_label)."""
    rng = np.random.default_rng(0)
    ade = root / "ADEChallengeData2016"
    (ade / "objectInfo150.txt").parent.mkdir(parents=True, exist_ok=True)
    (ade / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\tred\n"
                                           "2\t0.1\t1\t1\tblue\n3\t0.1\t1\t1\tgreen\n")
    for split, n, prefix in (("training", n_train, "ADE_train"), ("validation", n_val, "ADE_val")):
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            h, w = 64 + 16 * (i % 2), 96
            cut = int(rng.integers(32, 64))
            img = np.zeros((h, w, 3), np.uint8)
            img[:, :cut] = (220, 30, 30)
            img[:, cut:] = (30, 30, 220)
            img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
            label = np.ones((h, w), np.uint8)
            label[:, cut:] = 2
            label[:8] = 0
            Image.fromarray(img).save(ade / "images" / split / f"{prefix}_{i:08d}.jpg", quality=95)
            Image.fromarray(label).save(ade / "annotations" / split / f"{prefix}_{i:08d}.png")
    return root


def test_test_size_keeps_aspect_on_patch_multiples():
    assert eval_size(480, 640, 512, 16) == (512, 672)   # 682.67 floored to 672
    assert eval_size(64, 96, 64, 16) == (64, 96)


def test_linear_seg_learns_a_separable_set(tmp_path):
    data = make_ade(tmp_path / "data")
    records, _ = evaluate("linear_seg", "random:vit_tiny_patch16_224", data, results_dir=tmp_path / "r",
                          device="cpu", sets=["iterations=150", "lr=0.01", "train_size=64", "test_size=64"])
    by = {r["metric"]: r for r in records}
    assert set(by) == {"mIoU", "mAcc", "aAcc"}
    assert by["mIoU"]["num_classes"] == 3 and by["mIoU"]["reduce_zero_label"] is True
    assert by["mIoU"]["blocks"] == [6, 8, 10, 12]
    assert by["mIoU"]["dataset"] == "ade20k"
    # red vs blue halves are linearly separable even in random-init features
    assert by["aAcc"]["value"] > 90.0
    assert by["mIoU"]["value"] > 80.0


def test_coco_semantic_labels_from_instances(tmp_path):
    from test_protocols_prompt_seg import make_coco

    from ssl_bench.protocols.linear_seg import CocoSemantic

    coco = make_coco(tmp_path)
    ds = CocoSemantic(coco, "val2017", reduce_zero_label=False)
    assert ds.num_classes == 3  # background + 2 categories
    _, label = ds[0]
    label = label.numpy()
    # image 1: category 1 at (10, 10), category 2 at (40, 50), a crowd region at (20, 60) -> ignore 255
    assert label[15, 15] == 1 and label[45, 55] == 2 and label[25, 65] == 255 and label[0, 0] == 0
    reduced = CocoSemantic(coco, "val2017", reduce_zero_label=True)
    assert reduced.num_classes == 2
    r = reduced[0][1].numpy()
    assert r[15, 15] == 0 and r[45, 55] == 1 and r[25, 65] == 255 and r[0, 0] == 255
