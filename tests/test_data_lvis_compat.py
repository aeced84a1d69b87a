"""The lvis 0.5.3 shim: LVIS loads a JSON and LVISEval runs on NumPy 2."""

from __future__ import annotations

import json

import numpy as np

from ssl_bench.data.lvis_compat import add_numpy_aliases, import_lvis, load_lvis


def lvis_json(path):
    def poly(x, y, s):
        return [[x, y, x + s, y, x + s, y + s, x, y + s]]
    images = [{"id": i, "width": 64, "height": 48, "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
               "neg_category_ids": [3], "not_exhaustive_category_ids": []} for i in (1, 2)]
    anns, k = [], 1
    for img, cat, x, y, s in ((1, 1, 2, 2, 10), (1, 2, 30, 20, 12), (2, 1, 5, 5, 20), (2, 2, 40, 10, 6)):
        anns.append({"id": k, "image_id": img, "category_id": cat, "segmentation": poly(x, y, s),
                     "bbox": [x, y, s, s], "area": s * s})
        k += 1
    cats = [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "c"},
            {"id": 3, "name": "c", "frequency": "r"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def test_aliases_added_only_when_missing():
    add_numpy_aliases()
    assert np.float is float
    assert add_numpy_aliases() == []  # idempotent: nothing left to add


def test_lvis_loads_and_evaluates_ground_truth_against_itself(tmp_path):
    path = lvis_json(tmp_path / "lvis_v1_val.json")
    gt = load_lvis(path)
    assert sorted(gt.get_cat_ids()) == [1, 2, 3] and len(gt.get_ann_ids()) == 4
    lvis = import_lvis()
    for iou in ("bbox", "segm"):
        gt = lvis.LVIS(str(path))
        dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"],
                 "segmentation": a["segmentation"], "score": 1.0} for a in gt.load_anns()]
        ev = lvis.LVISEval(gt, dets, iou_type=iou)
        ev.run()  # accumulate() uses np.float
        assert ev.results["AP"] == 1.0 and ev.results["APf"] == 1.0 and ev.results["APc"] == 1.0
        # a shifted box halves the IoU of one detection: AP drops below 1
        dets[0]["bbox"] = [a + 6 if i < 2 else a for i, a in enumerate(dets[0]["bbox"])]
        if iou == "bbox":
            ev = lvis.LVISEval(lvis.LVIS(str(path)), dets, iou_type=iou)
            ev.run()
            assert ev.results["AP"] < 1.0


def test_import_lvis_leaves_root_logging_alone():
    import logging
    import sys
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    for h in saved:  # a program that has not configured logging (pytest adds its own handlers)
        root.removeHandler(h)
    try:
        for name in [m for m in sys.modules if m == "lvis" or m.startswith("lvis.")]:
            del sys.modules[name]
        import_lvis()  # lvis/__init__ calls logging.basicConfig(level=WARN)
        assert root.handlers == [] and root.level == level
    finally:
        for h in saved:
            root.addHandler(h)
