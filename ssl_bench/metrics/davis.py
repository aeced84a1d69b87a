"""DAVIS-2017 semi-supervised video object segmentation scores: J, F, recall and decay.

Definitions follow davisvideochallenge/davis2017-evaluation (``davis2017/metrics.py``,
``davis2017/evaluation.py``, ``davis2017/utils.py``, ``davis2017/davis.py``):

* objects of a sequence: ids 1..max(first-frame annotation); void pixels (255) count as
  background; a predicted id above that number is an error;
* semi-supervised scoring drops the FIRST and the LAST frame of every sequence;
* J = |pred & gt| / |pred | gt| per object per frame (1 when both are empty);
* F = boundary F-measure: 1-pixel boundary maps (``seg2bmap``), each dilated by a disk
  of radius ceil(0.008 x image diagonal), precision = predicted boundary pixels within
  the dilated gt boundary, recall the converse; empty-boundary cases as in the reference;
* per object: mean (nanmean), recall = fraction of frames > 0.5, decay = mean of the
  first quarter of frames minus mean of the last quarter (4 overlapping bins);
* dataset scores: means over ALL objects of all sequences; J&F-Mean = (J-Mean + F-Mean) / 2.

Values are fractions in [0, 1]. The reference casts the bin indices of the decay to
uint8 (wrapping above 255 frames); here they are plain integers (same for DAVIS, whose
sequences have at most 104 frames).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import binary_dilation
from skimage.morphology import disk

from ..errors import UserError

BOUNDARY_THRESHOLD = 0.008  # davis2017-evaluation f_measure(bound_th=0.008)
VOID_LABEL = 255


def region_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J per frame: (..., H, W) bool masks -> IoU over the last two axes, 1 where both are empty."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"annotation {gt.shape} and prediction {pred.shape} differ in shape")
    inter = np.sum(gt & pred, axis=(-2, -1))
    union = np.sum(gt | pred, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return j.astype(np.float64)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary map of a binary mask, offset half a pixel towards the origin
    (D. Martin's seg2bmap as used by DAVIS): a pixel is on the boundary when it differs
    from its east, south or south-east neighbour."""
    seg = np.asarray(seg, bool)
    east = np.zeros_like(seg)
    south = np.zeros_like(seg)
    south_east = np.zeros_like(seg)
    east[:, :-1] = seg[:, 1:]
    south[:-1, :] = seg[1:, :]
    south_east[:-1, :-1] = seg[1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[-1, :] = seg[-1, :] ^ east[-1, :]
    bmap[:, -1] = seg[:, -1] ^ south[:, -1]
    bmap[-1, -1] = False
    return bmap


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUNDARY_THRESHOLD) -> int:
    """Dilation radius in pixels: ``bound_th`` itself when >= 1, else ceil(bound_th x diagonal)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(*shape[:2])))


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD) -> float:
    """F for one frame and one object (binary masks of equal shape)."""
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and annotation {gt.shape} differ in shape")
    structure = disk(boundary_radius(pred.shape, bound_th)).astype(bool)
    pred_b, gt_b = seg2bmap(pred), seg2bmap(gt)
    pred_dil = binary_dilation(pred_b, structure=structure)
    gt_dil = binary_dilation(gt_b, structure=structure)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = float(np.sum(pred_b & gt_dil)) / n_pred
        recall = float(np.sum(gt_b & pred_dil)) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def boundary_f_frames(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUNDARY_THRESHOLD) -> np.ndarray:
    """F per frame of (T, H, W) masks."""
    return np.array([boundary_f(p, g, bound_th) for g, p in zip(gt, pred, strict=True)], dtype=np.float64)


def statistics(per_frame: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of one object's per-frame scores (davis2017 utils.db_statistics)."""
    values = np.asarray(per_frame, dtype=np.float64)
    with np.errstate(invalid="ignore"), _quiet_nan():
        mean = float(np.nanmean(values))
        recall = float(np.nanmean(values > 0.5))
    bins = 4
    ids = (np.round(np.linspace(1, len(values), bins + 1) + 1e-10) - 1).astype(int)
    chunks = [values[ids[i]:ids[i + 1] + 1] for i in range(bins)]
    with _quiet_nan():
        decay = float(np.nanmean(chunks[0]) - np.nanmean(chunks[-1]))
    return mean, recall, decay


class _quiet_nan:
    def __enter__(self):
        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("ignore", category=RuntimeWarning)

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


def split_objects(frames: np.ndarray, num_objects: int) -> np.ndarray:
    """(T, H, W) label maps -> (num_objects, T, H, W) bool masks of ids 1..num_objects."""
    ids = np.arange(1, num_objects + 1).reshape(-1, 1, 1, 1)
    return np.asarray(frames)[None] == ids


@dataclass
class SequenceScores:
    """Per-object per-frame J and F of one sequence (frames as scored, first/last dropped)."""

    name: str
    frames: list[str]
    j: np.ndarray  # (objects, frames)
    f: np.ndarray


def score_sequence(name: str, gt: np.ndarray, pred: np.ndarray, frame_names: list[str] | None = None, *,
                   skip_first_last: bool = True, bound_th: float = BOUNDARY_THRESHOLD) -> SequenceScores:
    """Score (T, H, W) predicted label maps against (T, H, W) annotations of one sequence."""
    gt = np.array(gt, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"{name}: annotations {gt.shape} and predictions {pred.shape} differ in shape")
    frame_names = list(frame_names or [f"{i:05d}" for i in range(len(gt))])
    gt[gt == VOID_LABEL] = 0
    num_objects = int(gt[0].max())
    if skip_first_last:
        gt, pred, frame_names = gt[1:-1], pred[1:-1], frame_names[1:-1]
    if len(gt) == 0:
        raise UserError(f"{name}: a sequence needs at least 3 frames to be scored (first and last are excluded)")
    if pred.size and int(pred.max()) > num_objects:
        raise UserError(f"{name}: the predictions hold object id {int(pred.max())} but the first-frame annotation "
                        f"has only {num_objects} objects")
    gt_obj, pred_obj = split_objects(gt, num_objects), split_objects(pred, num_objects)
    j = np.stack([region_iou(g, p) for g, p in zip(gt_obj, pred_obj)]) if num_objects else np.zeros((0, len(gt)))
    f = (np.stack([boundary_f_frames(g, p, bound_th) for g, p in zip(gt_obj, pred_obj)])
         if num_objects else np.zeros((0, len(gt))))
    return SequenceScores(name, frame_names, j, f)


@dataclass
class DavisSummary:
    """Dataset-level scores (fractions) plus the per-object means."""

    scores: dict = field(default_factory=dict)
    per_object: dict = field(default_factory=dict)


def summarise(sequences: list[SequenceScores]) -> DavisSummary:
    """J/F mean, recall, decay averaged over every object of every sequence; J&F-Mean."""
    stats = {"J": [], "F": []}
    per_object = {}
    for seq in sequences:
        for k in range(seq.j.shape[0]):
            jm = statistics(seq.j[k])
            fm = statistics(seq.f[k])
            stats["J"].append(jm)
            stats["F"].append(fm)
            per_object[f"{seq.name}_{k + 1}"] = {"J": jm[0], "F": fm[0]}
    if not stats["J"]:
        raise UserError("DAVIS evaluation: no annotated objects in the scored sequences")
    out = {}
    for m in ("J", "F"):
        arr = np.asarray(stats[m])
        out[f"{m}-Mean"], out[f"{m}-Recall"], out[f"{m}-Decay"] = (float(np.mean(arr[:, i])) for i in range(3))
    out["J&F-Mean"] = (out["J-Mean"] + out["F-Mean"]) / 2
    return DavisSummary(out, per_object)


def read_indexed_png(path: Path) -> np.ndarray:
    """An indexed (palette) or grey PNG as its (H, W) index array."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "I", "1"):
                raise UserError(f"{path}: expected an indexed (palette) or grey PNG of object ids, got mode {img.mode}")
            return np.array(img, dtype=np.int64)
    except FileNotFoundError:
        raise UserError(f"{path}: mask file not found") from None
    except OSError as err:
        raise UserError(f"{path}: unreadable PNG ({err})") from None


def evaluate_folders(annotations: Path, results: Path, sequences: list[str], *, skip_first_last: bool = True,
                     bound_th: float = BOUNDARY_THRESHOLD) -> tuple[DavisSummary, list[SequenceScores]]:
    """Score ``results/<seq>/<frame>.png`` against ``annotations/<seq>/<frame>.png`` (DAVIS layout)."""
    scored = []
    for seq in sequences:
        gt_files = sorted(Path(annotations, seq).glob("*.png"))
        if not gt_files:
            raise UserError(f"{Path(annotations, seq)}: no annotation PNGs")
        gt = np.stack([read_indexed_png(p) for p in gt_files])
        pred = np.stack([read_indexed_png(Path(results, seq, p.name)) for p in gt_files])
        scored.append(score_sequence(seq, gt, pred, [p.stem for p in gt_files],
                                     skip_first_last=skip_first_last, bound_th=bound_th))
    return summarise(scored), scored
