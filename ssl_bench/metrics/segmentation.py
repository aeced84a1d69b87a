"""Semantic-segmentation mIoU exactly as mmsegmentation's ``IoUMetric`` computes it.

Reference: open-mmlab/mmsegmentation ``mmseg/evaluation/metrics/iou_metric.py`` (1.x):

* per image, pixels whose label is ``ignore_index`` (255) are dropped; the per-class
  intersection, prediction and label areas are histograms over ``0..num_classes-1``
  (values outside that range fall in no bin), union = pred + label - intersection;
* the four histograms are SUMMED over the whole set, then per class
  IoU = intersection / union and Acc = intersection / label area (0/0 -> NaN);
* mIoU = nanmean over classes (classes with zero union are NaN and so left out),
  mAcc likewise, aAcc = total intersection / total label area.

``reduce_zero_label`` is the mmseg ``LoadAnnotations`` option used for ADE20k: label 0
("other") becomes 255 and every other label k becomes k - 1.

Values are fractions in [0, 1]; mmseg prints them x100 rounded to 2 decimals, protocols
here report x100 unrounded. Shared by the linear-segmentation and UperNet protocols.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..schema import Metric

IGNORE_INDEX = 255

#: What the segmentation protocols report (x100).
SEGMENTATION_METRICS = (Metric("mIoU", description="mean over classes of IoU (mmseg IoUMetric)"),
                        Metric("mAcc", description="mean over classes of pixel accuracy"),
                        Metric("aAcc", description="pixel accuracy over all pixels"))


def reduce_zero_label(label: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """0 -> ignore, k -> k - 1 (``ignore_index`` stays ``ignore_index``)."""
    label = np.asarray(label).astype(np.int64)
    out = label - 1
    out[label == 0] = ignore_index
    out[label == ignore_index] = ignore_index
    return out


def intersect_and_union(pred: np.ndarray, label: np.ndarray, num_classes: int,
                        ignore_index: int = IGNORE_INDEX) -> tuple[np.ndarray, ...]:
    """(intersection, union, pred area, label area) histograms of one image, int64 (num_classes,)."""
    pred = np.asarray(pred).astype(np.int64).ravel()
    label = np.asarray(label).astype(np.int64).ravel()
    if pred.shape != label.shape:
        raise ValueError(f"prediction has {pred.size} pixels, label {label.size}")
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]

    def hist(values: np.ndarray) -> np.ndarray:
        values = values[(values >= 0) & (values < num_classes)]
        return np.bincount(values, minlength=num_classes).astype(np.int64)

    area_intersect = hist(pred[pred == label])
    area_pred = hist(pred)
    area_label = hist(label)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


@dataclass
class IoUAccumulator:
    """Sums the four histograms over a set; ``compute()`` gives the mmseg summary."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    reduce_zero_label: bool = False
    intersect: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    pred_area: np.ndarray = field(init=False)
    label_area: np.ndarray = field(init=False)
    images: int = field(init=False, default=0)

    def __post_init__(self):
        zeros = lambda: np.zeros(self.num_classes, dtype=np.int64)  # noqa: E731
        self.intersect, self.union, self.pred_area, self.label_area = zeros(), zeros(), zeros(), zeros()

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Add one image; ``label`` is the raw annotation (reduced here if configured)."""
        if self.reduce_zero_label:
            label = reduce_zero_label(label, self.ignore_index)
        i, u, p, g = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.intersect += i
        self.union += u
        self.pred_area += p
        self.label_area += g
        self.images += 1

    def compute(self) -> dict:
        return total_area_to_metrics(self.intersect, self.union, self.pred_area, self.label_area)


def total_area_to_metrics(intersect, union, pred_area, label_area) -> dict:
    """Summary (``aAcc``, ``mIoU``, ``mAcc``) and per-class ``IoU`` / ``Acc`` arrays (NaN = absent)."""
    intersect, union = np.asarray(intersect, np.float64), np.asarray(union, np.float64)
    label_area = np.asarray(label_area, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / label_area
        a_acc = intersect.sum() / label_area.sum() if label_area.sum() else float("nan")
    return {"aAcc": float(a_acc), "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "IoU": iou, "Acc": acc}


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, np.float64)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def mean_iou(preds, labels, num_classes: int, ignore_index: int = IGNORE_INDEX,
             reduce_zero_label: bool = False) -> dict:
    """mmseg IoUMetric over paired lists of (H, W) prediction and label maps."""
    acc = IoUAccumulator(num_classes, ignore_index, reduce_zero_label)
    for pred, label in zip(preds, labels, strict=True):
        acc.update(pred, label)
    return acc.compute()
