"""DAVIS J and F against vos-benchmark (an independent implementation from PyPI)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vos_benchmark.benchmark import benchmark

from ssl_bench.errors import UserError
from ssl_bench.metrics.davis import (boundary_f, evaluate_folders, region_iou, score_sequence, seg2bmap,
                                     statistics, summarise)


def _blob(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def _sequence(rng, frames, shape, objects, noisy):
    """Moving ellipses as ground truth; the prediction is a jittered / partly wrong copy."""
    gt = np.zeros((frames, *shape), np.uint8)
    pred = np.zeros_like(gt)
    for t in range(frames):
        for k in range(1, objects + 1):
            cy = shape[0] * (0.3 + 0.15 * k) + 2 * t
            cx = shape[1] * (0.2 + 0.2 * k) + 3 * t
            gt[t][_blob(shape, cy, cx, 8 + k, 12 - k)] = k
            if noisy:
                dy, dx = rng.integers(-3, 4, size=2)
                pred[t][_blob(shape, cy + dy, cx + dx, 7 + k + rng.integers(0, 3), 11 - k)] = k
        if noisy:
            flip = rng.random(shape) < 0.01  # salt noise: stray pixels of random objects
            pred[t][flip] = rng.integers(0, objects + 1, size=flip.sum())
    if noisy:
        pred[3] = 0  # one frame with every object lost (F edge case: empty prediction boundary)
    return gt, pred


def _write(root: Path, seq: str, frames: np.ndarray) -> None:
    (root / seq).mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames):
        img = Image.fromarray(frame, mode="P")
        img.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (256 * 3 - 12))
        img.save(root / seq / f"{t:05d}.png")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    rng = np.random.default_rng(0)
    tmp = tmp_path_factory.mktemp("davis")
    gt_root, pred_root = tmp / "gt", tmp / "pred"
    seqs = {"alpha": (7, (60, 90), 2), "beta": (9, (72, 64), 3), "gamma": (5, (50, 50), 1)}
    for name, (frames, shape, objects) in seqs.items():
        gt, pred = _sequence(rng, frames, shape, objects, noisy=True)
        _write(gt_root, name, gt)
        _write(pred_root, name, pred)
    return gt_root, pred_root, sorted(seqs)


@pytest.mark.parametrize("skip", [True, False])
def test_j_and_f_equal_vos_benchmark(folders, skip):
    gt_root, pred_root, seqs = folders
    jf, j, f, per_object = benchmark([str(gt_root)], [str(pred_root)], num_processes=1, verbose=False,
                                     skip_first_and_last=skip)
    ours, _ = evaluate_folders(gt_root, pred_root, seqs, skip_first_last=skip)
    assert 100 * ours.scores["J-Mean"] == pytest.approx(j[0], abs=1e-6)
    assert 100 * ours.scores["F-Mean"] == pytest.approx(f[0], abs=1e-6)
    assert 100 * ours.scores["J&F-Mean"] == pytest.approx(jf[0], abs=1e-6)
    for seq, (ious, fs) in per_object[0].items():
        for obj, value in ious.items():
            assert 100 * ours.per_object[f"{seq}_{obj}"]["J"] == pytest.approx(value, abs=1e-6)
            assert 100 * ours.per_object[f"{seq}_{obj}"]["F"] == pytest.approx(fs[obj], abs=1e-6)
    assert 0.2 < ours.scores["J-Mean"] < 0.95  # a non-trivial case


def test_first_and_last_frames_are_excluded():
    rng = np.random.default_rng(1)
    gt, pred = _sequence(rng, 6, (40, 40), 2, noisy=False)
    perfect = score_sequence("s", gt, gt.copy())
    assert perfect.frames == ["00001", "00002", "00003", "00004"]
    wrong_ends = gt.copy()
    wrong_ends[0] = 0
    wrong_ends[-1] = 0
    scored = summarise([score_sequence("s", gt, wrong_ends)]).scores
    assert scored["J-Mean"] == 1.0 and scored["F-Mean"] == 1.0
    wrong_middle = gt.copy()
    wrong_middle[2] = 0
    scored = summarise([score_sequence("s", gt, wrong_middle)]).scores
    assert scored["J-Mean"] == pytest.approx(3 / 4)  # one of the four scored frames lost both objects
    counted = summarise([score_sequence("s", gt, wrong_ends, skip_first_last=False)]).scores
    assert counted["J-Mean"] == pytest.approx(4 / 6)


def test_region_iou_and_boundary_by_hand():
    gt = np.zeros((10, 10), bool)
    gt[2:6, 2:6] = True
    pred = np.zeros_like(gt)
    pred[2:6, 4:8] = True
    assert region_iou(gt, pred) == pytest.approx(8 / 24)
    assert region_iou(np.zeros_like(gt), np.zeros_like(gt)) == 1.0
    # seg2bmap of the square rows/cols 2..5: pixels differing from their E, S or SE neighbour:
    # row 1 cols 1-5, col 1 rows 2-5 (outside, towards the origin), row 5 cols 2-5, col 5 rows 2-4
    b = seg2bmap(gt)
    assert b.sum() == 5 + 4 + 4 + 3
    assert b[1, 1] and b[5, 5] and b[1, 5] and not b[2, 2] and not b[6, 6]
    # radius ceil(0.008 * hypot(10, 10)) = 1: boundaries 2 px apart in x do not match except at overlap rows
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(np.zeros_like(gt), gt) == 0.0
    assert boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_statistics_decay_and_recall():
    values = np.array([1.0, 0.9, 0.8, 0.7, 0.2, 0.1, 0.0, 0.0])
    mean, recall, decay = statistics(values)
    assert mean == pytest.approx(values.mean())
    assert recall == pytest.approx(4 / 8)
    # linspace(1, 8, 5) = 1, 2.75, 4.5, 6.25, 8 -> rounded (4.5 + 1e-10 -> 5) minus 1: 0, 2, 4, 5, 7
    # -> first bin values[0:3], last bin values[5:8]
    assert decay == pytest.approx(np.mean(values[0:3]) - np.mean(values[5:8]))


def test_predicted_id_above_first_frame_objects_is_an_error():
    gt = np.zeros((3, 8, 8), np.uint8)
    gt[:, 2:4, 2:4] = 1
    pred = gt.copy()
    pred[1, 5, 5] = 2
    with pytest.raises(UserError, match="object id 2"):
        score_sequence("s", gt, pred)
