"""COCO / LVIS loaders and validators on hand-built fixtures in the real layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from ssl_bench.data.coco import (CocoDetection, LvisDetection, check_coco, check_lvis, coco_splits,
                                 lvis_image_root)
from ssl_bench.errors import UserError

SQUARE = [[2.0, 2.0, 12.0, 2.0, 12.0, 10.0, 2.0, 10.0]]


def block(h, w, y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE: run lengths over the column-major pixels, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def compressed_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_dict() -> dict:
    return {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 40, "height": 30},
                   {"id": 7, "file_name": "000000000007.jpg", "width": 20, "height": 20}],
        "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                       {"id": 18, "name": "dog", "supercategory": "animal"},
                       {"id": 90, "name": "toothbrush", "supercategory": "indoor"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 18, "segmentation": SQUARE, "area": 80.0,
             "bbox": [2.0, 2.0, 10.0, 8.0], "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": uncompressed_rle(block(30, 40, 20, 25, 5, 15)),
             "area": 50.0, "bbox": [5.0, 20.0, 10.0, 5.0], "iscrowd": 1},
            {"id": 12, "image_id": 7, "category_id": 90, "segmentation": compressed_rle(block(20, 20, 3, 7, 4, 10)),
             "area": 24.0, "bbox": [4.0, 3.0, 6.0, 4.0], "iscrowd": 0},
        ],
    }


def make_coco(root: Path, data: dict | None = None, split: str = "val2017") -> Path:
    data = data or coco_dict()
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    for img in data["images"]:
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (img["width"], img["height"]), (100, 50, 25)).save(root / split / img["file_name"])
    return root


def test_coco_dataset_targets(tmp_path):
    root = make_coco(tmp_path / "coco")
    assert coco_splits(root) == {"val2017": (root / "annotations" / "instances_val2017.json", root / "val2017")}
    ds = CocoDetection.from_root(root, "val2017")
    assert len(ds) == 2 and ds.num_classes == 3
    assert ds.cat_id_to_label == {1: 1, 18: 2, 90: 3} and ds.label_to_cat_id == {1: 1, 2: 18, 3: 90}
    img, t = ds[0]
    assert img.shape == (3, 30, 40) and abs(float(img[0].mean()) - 100 / 255) < 0.02
    assert t["image_id"] == 1
    assert t["boxes"].tolist() == [[2.0, 2.0, 12.0, 10.0], [5.0, 20.0, 15.0, 25.0]]
    assert t["labels"].tolist() == [2, 1]
    assert t["iscrowd"].tolist() == [0, 1]
    assert t["masks"].shape == (2, 30, 40) and t["masks"].dtype.is_floating_point is False
    assert np.array_equal(t["masks"][1].numpy(), block(30, 40, 20, 25, 5, 15))  # uncompressed RLE, exact
    poly = t["masks"][0].numpy()
    assert poly[:2].sum() == 0 and poly[:, :2].sum() == 0 and poly[11:].sum() == 0  # inside the square
    assert poly[3:10, 3:12].all()
    _, t7 = ds[1]
    assert np.array_equal(t7["masks"][0].numpy(), block(20, 20, 3, 7, 4, 10))  # compressed RLE, exact
    assert t7["labels"].tolist() == [3]


def test_coco_transforms_and_missing_split(tmp_path):
    root = make_coco(tmp_path / "coco")
    ds = CocoDetection.from_root(root, "val2017", transforms=lambda im, t: (im[:, :5], {**t, "seen": True}),
                                 with_masks=False)
    img, t = ds[0]
    assert img.shape == (3, 5, 40) and t["seen"] and "masks" not in t
    with pytest.raises(UserError) as e:
        CocoDetection.from_root(root, "train2017")
    assert str(e.value) == (f"{root / 'annotations' / 'instances_train2017.json'}: missing (splits here: val2017)")


def test_check_coco_ok(tmp_path):
    assert check_coco(make_coco(tmp_path / "coco")) == []


def test_check_coco_malformed(tmp_path):
    data = coco_dict()
    data["images"][0]["width"] = 50                                   # file is 40 wide
    data["categories"].append({"id": 18, "name": "dog again"})        # duplicate id
    data["annotations"][0]["segmentation"] = [[1, 2, 3, 4, 5]]        # odd-length polygon
    data["annotations"][1]["bbox"] = [5, 20, 0, 5]                    # zero width
    data["annotations"][2]["image_id"] = 99                           # unknown image
    data["annotations"].append({"id": 12, "image_id": 7, "category_id": 3, "bbox": [1, 1, 2, 2], "area": 4,
                                "iscrowd": 2, "segmentation": {"size": [10, 10], "counts": [50, 50]}})
    root = make_coco(tmp_path / "coco", data)
    Image.new("RGB", (40, 30)).save(root / "val2017" / "000000000001.jpg")
    (root / "val2017" / "000000000007.jpg").unlink()
    ann = root / "annotations" / "instances_val2017.json"
    problems = check_coco(root)
    assert problems == [
        f"{ann}: categories[3].id: duplicate category id 18",
        f"{ann}: images[0]: {root / 'val2017' / '000000000001.jpg'} is 40x30 but width x height say 50x30",
        f"{ann}: images[1]: image file {root / 'val2017' / '000000000007.jpg'} does not exist",
        f"{ann}: annotations[0].segmentation[0]: polygon has 5 numbers, expected an even count >= 6",
        f"{ann}: annotations[1].bbox: width and height must be > 0, got [5, 20, 0, 5]",
        f"{ann}: annotations[1].segmentation.size: [30, 40] differs from the image's [height, width] [30, 50]",
        f"{ann}: annotations[2].image_id: unknown image id 99",
        f"{ann}: annotations[3].id: duplicate annotation id 12",
        f"{ann}: annotations[3].category_id: unknown category id 3",
        f"{ann}: annotations[3].iscrowd: 2, expected 0 or 1",
        f"{ann}: annotations[3].segmentation.size: [10, 10] differs from the image's [height, width] [20, 20]",
    ]


def test_check_coco_broken_json_and_missing_layout(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    ann = root / "annotations" / "instances_train2017.json"
    ann.write_text('{"images": [],\n "annotations": []\n "categories": []}\n')
    (root / "train2017").mkdir()
    assert check_coco(root) == [f"{ann}:3: invalid JSON: Expecting ',' delimiter (column 2)"]
    ann.write_text('{"images": [], "categories": []}')
    assert check_coco(root) == [f"{ann}: annotations: missing or not a list (required in a COCO JSON)"]
    assert check_coco(tmp_path / "empty") == [
        f"{tmp_path / 'empty' / 'annotations'}: no instances_<split>.json (expected e.g. "
        f"annotations/instances_val2017.json)"]


def lvis_dict() -> dict:
    data = coco_dict()
    for img in data["images"]:
        img["coco_url"] = f"http://images.cocodataset.org/val2017/{img.pop('file_name')}"
        img["neg_category_ids"] = []
        img["not_exhaustive_category_ids"] = []
    data["images"][0]["neg_category_ids"] = [90]
    data["images"][1]["not_exhaustive_category_ids"] = [90]
    for c, f in zip(data["categories"], "rcf"):
        c["frequency"] = f
    for a in data["annotations"]:
        a.pop("iscrowd")
    return data


def make_lvis(tmp_path: Path, data: dict | None = None) -> Path:
    data = data or lvis_dict()
    lvis = tmp_path / "lvis"
    lvis.mkdir(parents=True)
    (lvis / "lvis_v1_val.json").write_text(json.dumps(data))
    for img in data["images"]:
        rel = "/".join(img["coco_url"].split("/")[-2:])
        (tmp_path / "coco" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (img["width"], img["height"])).save(tmp_path / "coco" / rel)
    return lvis


def test_lvis_dataset_and_image_root(tmp_path):
    lvis = make_lvis(tmp_path)
    assert lvis_image_root(lvis) == tmp_path / "coco"           # detectron2 layout: ../coco
    ds = LvisDetection.from_root(lvis, "val")
    _, t = ds[0]
    assert t["labels"].tolist() == [2, 1] and t["neg_labels"].tolist() == [3]
    assert t["not_exhaustive_labels"].tolist() == []
    _, t7 = ds[1]
    assert t7["not_exhaustive_labels"].tolist() == [3]
    assert np.array_equal(t7["masks"][0].numpy(), block(20, 20, 3, 7, 4, 10))
    assert check_lvis(lvis) == []


def test_check_lvis_malformed(tmp_path):
    data = lvis_dict()
    data["categories"][0]["frequency"] = "x"
    data["images"][0]["neg_category_ids"] = [18, 5]   # 18 is annotated in image 1; 5 does not exist
    del data["images"][1]["not_exhaustive_category_ids"]
    lvis = make_lvis(tmp_path, data)
    f = lvis / "lvis_v1_val.json"
    assert check_lvis(lvis) == [
        f"{f}: categories[0].frequency: 'x', expected one of r, c, f",
        f"{f}: images[0].neg_category_ids: unknown category id 5",
        f"{f}: images[1].not_exhaustive_category_ids: missing or not a list",
        f"{f}: images[0].neg_category_ids: [18] are annotated in this image, so they cannot be verified absent",
    ]


def test_lvis_without_images(tmp_path):
    lvis = tmp_path / "lvis"
    lvis.mkdir()
    (lvis / "lvis_v1_val.json").write_text(json.dumps(lvis_dict()))
    problems = check_lvis(lvis)
    assert problems == [f"{lvis}: cannot find the COCO images for LVIS (expected train2017/ and val2017/ in "
                        f"{lvis} or in {tmp_path / 'coco'})"]
