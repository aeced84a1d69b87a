"""COCO and LVIS evaluation of torchvision-format detections.

``to_results`` turns torchvision outputs (``boxes`` xyxy, ``scores``, ``labels`` 1..K, ``masks``
(N, 1, H, W) probabilities at the original size) into the COCO results format (``bbox`` xywh,
``category_id`` of the annotation file, ``segmentation`` compressed RLE of ``mask > 0.5``), as
detectron2's ``instances_to_coco_json`` does. ``coco_evaluate`` runs pycocotools ``COCOeval``
(IoU 0.50:0.95, maxDets 100, S/M/L areas) per iou type and reports AP, AP50, AP75, APs, APm,
APl x 100; ``lvis_evaluate`` runs the lvis package's federated ``LVISEval`` with ``LVISResults``
capped at ``max_dets`` detections per image (300) and reports AP, AP50, AP75, APs, APm, APl,
APr, APc, APf x 100. For ``segm`` the ``bbox`` field is dropped so the evaluators derive it
from the mask (as detectron2 does).
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path

import numpy as np
import torch
from pycocotools import mask as mask_utils

from ...data.lvis_compat import import_lvis

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
LVIS_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")


def to_results(output: dict, image_id: int, label_to_cat_id: dict[int, int], *,
               with_masks: bool = True, mask_threshold: float = 0.5) -> list[dict]:
    """COCO-format result dicts of one image's torchvision output."""
    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist() if len(boxes) else []
    rles = None
    if with_masks and "masks" in output:
        masks = output["masks"].detach().cpu()
        if masks.dim() == 4:
            masks = masks[:, 0]
        binary = np.asfortranarray((masks > mask_threshold).numpy().astype(np.uint8).transpose(1, 2, 0))
        rles = mask_utils.encode(binary) if len(masks) else []
        for rle in rles:
            rle["counts"] = rle["counts"].decode("ascii")
    results = []
    for i in range(len(scores)):
        res = {"image_id": int(image_id), "category_id": int(label_to_cat_id[int(labels[i])]),
               "bbox": [float(v) for v in xywh[i]], "score": float(scores[i])}
        if rles is not None:
            res["segmentation"] = rles[i]
        results.append(res)
    return results


def _quiet():
    return contextlib.redirect_stdout(io.StringIO())


def _for_iou_type(results: list[dict], iou_type: str) -> list[dict]:
    out = copy.deepcopy(results)
    if iou_type == "segm":
        for r in out:
            r.pop("bbox", None)
    return out


def coco_evaluate(ann_file: str | Path, results: list[dict], iou_types=("bbox", "segm"),
                  image_ids: list[int] | None = None) -> dict[str, float]:
    """{'bbox/AP': ..., 'segm/APl': ...} x 100 through pycocotools."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        gt = COCO(str(ann_file))
    metrics = {}
    for iou_type in iou_types:
        dets = _for_iou_type(results, iou_type)
        with _quiet():
            if dets:
                dt = gt.loadRes(dets)
            else:  # no detections at all: an empty result set scores 0 where ground truth exists
                dt = COCO()
                dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                              "annotations": []}
                dt.createIndex()
            ev = COCOeval(gt, dt, iou_type)
            if image_ids is not None:
                ev.params.imgIds = sorted(image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        for name, value in zip(COCO_METRICS, ev.stats[:6]):
            if value >= 0:  # pycocotools' -1: no ground truth in that area range, so no metric
                metrics[f"{iou_type}/{name}"] = float(value) * 100
    return metrics


def lvis_evaluate(ann_file: str | Path, results: list[dict], iou_types=("bbox", "segm"),
                  max_dets: int = 300) -> dict[str, float]:
    """{'bbox/AP': ..., 'segm/APr': ...} x 100 through the lvis package (federated evaluation)."""
    lvis = import_lvis()
    with _quiet():
        gt = lvis.LVIS(str(ann_file))
    metrics = {}
    for iou_type in iou_types:
        dets = _for_iou_type(results, iou_type)
        if not dets:
            for name in LVIS_METRICS:
                metrics[f"{iou_type}/{name}"] = 0.0
            continue
        with _quiet():
            dt = lvis.LVISResults(gt, dets, max_dets=max_dets)
            ev = lvis.LVISEval(gt, dt, iou_type)
            ev.run()
        summary = ev.get_results()
        for name in LVIS_METRICS:
            if summary[name] >= 0:  # the lvis package's -1: no ground truth in that range
                metrics[f"{iou_type}/{name}"] = float(summary[name]) * 100
    return metrics
