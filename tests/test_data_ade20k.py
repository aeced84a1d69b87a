"""ADE20k loader and validator on a hand-built ADEChallengeData2016 fixture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_bench.data.ade20k import ADE20kSegmentation, check_ade20k, read_class_names, reduce_zero_label
from ssl_bench.data.resolve import resolve
from ssl_bench.errors import UserError

LABEL = np.array([[0, 1, 2, 150], [150, 0, 3, 3]], dtype=np.uint8)


def make_ade(parent: Path) -> Path:
    root = parent / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        for i in (1, 2):
            name = f"{prefix}_{i:08d}"
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (4, 2), (i * 50, 0, 0)).save(root / "images" / split / f"{name}.jpg")
            Image.fromarray(LABEL).save(root / "annotations" / split / f"{name}.png")
    return root


def test_reduce_zero_label_matches_mmseg():
    lab = np.array([0, 1, 2, 150, 255], dtype=np.uint8)
    assert reduce_zero_label(lab).tolist() == [255, 0, 1, 149, 255]


def test_ade20k_dataset(tmp_path):
    root = make_ade(tmp_path)
    assert resolve(tmp_path, "ade20k") == root          # the parent folder resolves to ADEChallengeData2016
    ds = ADE20kSegmentation(root, "validation")
    assert len(ds) == 2 and ds.num_classes == 150 and ds.ignore_index == 255
    img, label = ds[1]
    assert img.shape == (3, 2, 4) and abs(float(img[0].mean()) - 100 / 255) < 0.02
    assert label.tolist() == [[255, 0, 1, 149], [149, 255, 2, 2]]
    raw = ADE20kSegmentation(root, "training", reduce_zero_label=False)
    assert raw[0][1].tolist() == LABEL.tolist()
    with pytest.raises(UserError, match="not an ADE20k split"):
        ADE20kSegmentation(root, "test")


def test_ade20k_class_names_from_object_info(tmp_path):
    root = make_ade(tmp_path)
    (root / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1576\t11664\t1172\twall\n"
                                            "2\t0.1072\t6046\t612\tbuilding, edifice\n")
    assert read_class_names(root) == ["wall", "building, edifice"]


def test_check_ade20k_ok_and_malformed(tmp_path):
    root = make_ade(tmp_path)
    assert check_ade20k(root) == []
    ann = root / "annotations" / "training"
    img = root / "images" / "training"
    (ann / "ADE_train_00000002.png").unlink()                                     # image without label map
    Image.fromarray(np.zeros((2, 5), np.uint8)).save(ann / "ADE_train_00000001.png")  # wrong size
    Image.new("RGB", (4, 2)).save(root / "annotations" / "validation" / "ADE_val_00000001.png")  # RGB label
    bad = LABEL.copy()
    bad[0, 0] = 151
    Image.fromarray(bad).save(root / "annotations" / "validation" / "ADE_val_00000002.png")
    Image.fromarray(LABEL).save(ann / "ADE_train_00000009.png")                    # label map without image
    assert check_ade20k(root) == [
        f"{img / 'ADE_train_00000002.jpg'}: no label map {ann / 'ADE_train_00000002.png'}",
        f"{ann / 'ADE_train_00000009.png'}: label map without an image in {img}",
        f"{ann / 'ADE_train_00000001.png'}: size 5x2 differs from the image's 4x2",
        f"{root / 'annotations' / 'validation' / 'ADE_val_00000001.png'}: mode RGB, expected a single-channel "
        f"label map (L)",
        f"{root / 'annotations' / 'validation' / 'ADE_val_00000002.png'}: label values [151] exceed 150 "
        f"(0 = other, 1..150 = classes)",
    ]


def test_check_ade20k_missing_split(tmp_path):
    root = make_ade(tmp_path)
    import shutil
    shutil.rmtree(root / "annotations" / "validation")
    assert check_ade20k(root) == [
        f"{root / 'annotations' / 'validation'}: missing (expected annotations/validation/*.png)"]
