"""mmseg IoUMetric semantics against a confusion matrix computed independently here."""

import numpy as np
import pytest

from ssl_bench.metrics.segmentation import IoUAccumulator, intersect_and_union, mean_iou, reduce_zero_label


def confusion(preds, labels, num_classes, ignore=255):
    """Rows: ground truth, columns: prediction, summed over the set, ignore pixels dropped."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    for p, g in zip(preds, labels):
        for gv, pv in zip(g.ravel(), p.ravel()):
            if gv == ignore or not (0 <= gv < num_classes) or not (0 <= pv < num_classes):
                continue
            cm[gv, pv] += 1
    return cm


def miou_from_confusion(cm):
    inter = np.diag(cm).astype(float)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    ious = [inter[c] / union[c] for c in range(len(cm)) if union[c] > 0]
    return float(np.mean(ious)), union


PRED = [np.array([[0, 0, 1, 1], [0, 2, 2, 1], [3, 3, 2, 1]]),
        np.array([[1, 1, 1, 0], [0, 0, 2, 2], [2, 2, 2, 2]])]
GT = [np.array([[0, 0, 1, 255], [0, 2, 1, 1], [255, 3, 2, 2]]),
      np.array([[1, 1, 0, 0], [255, 0, 2, 2], [2, 2, 255, 1]])]


def test_miou_matches_confusion_matrix_with_ignore_and_absent_class():
    num_classes = 5  # class 4 never appears anywhere: union 0 -> left out of the mean
    expected, union = miou_from_confusion(confusion(PRED, GT, num_classes))
    assert union[4] == 0
    result = mean_iou(PRED, GT, num_classes)
    assert result["mIoU"] == pytest.approx(expected, abs=1e-12)
    assert np.isnan(result["IoU"][4])
    # hand count for class 3: image 1 pred 3 at (2,0),(2,1); gt 3 at (2,1); gt (2,0) is ignored
    # -> intersection 1, union |pred 3 on non-ignored| 1 + gt 1 - 1 = 1 -> IoU 1
    assert result["IoU"][3] == pytest.approx(1.0)


def test_histograms_are_summed_over_the_set_not_averaged_per_image():
    # class 0: image A IoU 1/2 (1 px of 2), image B IoU 1/1 but with 100 px
    a_pred, a_gt = np.array([[0, 1]]), np.array([[0, 0]])
    b_pred, b_gt = np.zeros((10, 10), int), np.zeros((10, 10), int)
    res = mean_iou([a_pred, b_pred], [a_gt, b_gt], num_classes=2)
    assert res["IoU"][0] == pytest.approx(101 / 102)
    assert res["IoU"][1] == pytest.approx(0.0)  # predicted once, never in gt: union 1, IoU 0 (counted)
    assert res["mIoU"] == pytest.approx((101 / 102 + 0.0) / 2)
    assert res["aAcc"] == pytest.approx(101 / 102)


def test_reduce_zero_label_maps_zero_to_ignore_and_shifts():
    raw = np.array([[0, 1, 2], [150, 255, 3]])
    np.testing.assert_array_equal(reduce_zero_label(raw), [[255, 0, 1], [149, 255, 2]])
    pred = np.array([[7, 0, 1], [149, 0, 0]])
    acc = IoUAccumulator(150, reduce_zero_label=True)
    acc.update(pred, raw)
    res = acc.compute()
    # kept pixels: (0,1) gt0 pred0, (0,2) gt1 pred1, (1,0) gt149 pred149, (1,2) gt2 pred0
    assert res["IoU"][0] == pytest.approx(1 / 2)
    assert res["IoU"][1] == pytest.approx(1.0)
    assert res["IoU"][149] == pytest.approx(1.0)
    assert res["IoU"][2] == pytest.approx(0.0)
    assert res["mIoU"] == pytest.approx((0.5 + 1 + 1 + 0) / 4)


def test_intersect_and_union_single_image():
    i, u, p, g = intersect_and_union(PRED[0], GT[0], 4)
    cm = confusion([PRED[0]], [GT[0]], 4)
    np.testing.assert_array_equal(i, np.diag(cm))
    np.testing.assert_array_equal(p, cm.sum(0))
    np.testing.assert_array_equal(g, cm.sum(1))
    np.testing.assert_array_equal(u, cm.sum(0) + cm.sum(1) - np.diag(cm))
