"""Zero-shot prompt segmentation and the intra-/inter-object similarity analysis (MMC paper).

Paper: MMC (Wu et al., "Masked Momentum Contrastive Learning for Zero-shot Semantic
Understanding"), Section "Zero-shot Segmentation from Prompts", Table 1
(COCO mIoU at thresholds 0.1-0.4 and the optimal threshold of a sweep 0 -> 0.9) and Table 5
(means of the intra- and inter-object similarity distributions and their overlap area).

For every image: resize to ``input_size`` x ``input_size`` (480: 30 x 30 tokens at patch 16),
extract the patch tokens of ``layer``, L2-normalise them. For every non-crowd instance: pick one
prompt token inside the object, take the cosine similarity of its token to all tokens, predict
``similarity > T`` and compare with the instance mask at the original resolution.

The paper leaves these choices open (no code was released); each is a recipe option, recorded
with every result (defaults in ``ssl_bench/defaults/protocols/prompt_seg.yaml``):

``prompt``          ``interior`` (default): the token holding the mask pixel farthest from the
                    mask boundary (Euclidean distance transform, first in raster order on ties);
                    ``max_overlap``: the token whose cell the mask covers most;
                    ``random``: a uniformly drawn mask pixel (seeded by ``seed`` and the instance).
``layer``           ``last`` (default: last block after the final norm) or a 1-based block number.
``upsample``        ``mask`` (default: threshold on the token grid, then nearest upsampling of the
                    mask to the image, pixel centres mapped to tokens) or ``similarity`` (bilinear
                    upsampling of the similarity map, then threshold).
``miou``            ``per_class`` (default: intersections and unions summed over all instances of
                    a category, IoU per category, mean over categories present) or
                    ``per_instance`` (mean of the instance IoUs).
``threshold_mode``  for the optimal threshold: ``dataset`` (default: the one sweep threshold that
                    maximises the dataset mIoU) or ``image`` (an oracle threshold per image, chosen
                    to maximise that image's mean instance IoU).
``background``      token pairs of the similarity analysis: ``inter_only`` (default: background
                    tokens pair with object tokens as inter-object pairs, background-background
                    pairs are left out), ``exclude`` (object tokens only) or ``category``
                    (background is one more category).

Similarity analysis: per image, each token takes the category covering at least ``min_fraction``
of its cell (else it is left out as mixed); pairs of distinct tokens of one image with the same
category are intra-object, with different categories inter-object. Histograms over [-1, 1]
(``bins``) are pooled over the set, normalised to probability mass; overlap = sum of the minima.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from scipy.ndimage import distance_transform_edt
from torch.nn import functional as F

from ..data.coco import CocoDetection
from ..data.resolve import dataset_name, resolve
from ..errors import UserError
from ..progress import progress
from ..schema import LOWER, NEUTRAL, Metric, Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._common import recipe_choice
from ._patches import dense_features, layer_spec, require_vit

PROMPTS = ("interior", "max_overlap", "random")
UPSAMPLE = ("mask", "similarity")
MIOU = ("per_class", "per_instance")
THRESHOLD_MODES = ("dataset", "image")
BACKGROUND = ("inter_only", "exclude", "category")


def token_index(coords: np.ndarray, size: int, tokens: int) -> np.ndarray:
    """Token row/column of pixel rows/columns: pixel centres mapped onto the token grid."""
    return np.minimum(((np.asarray(coords) + 0.5) * tokens / size).astype(np.int64), tokens - 1)


def cell_coverage(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(h, w) fraction of each token cell's pixels covered by ``mask`` (pixel-centre assignment)."""
    H, W = mask.shape
    rows = token_index(np.arange(H), H, grid[0])
    cols = token_index(np.arange(W), W, grid[1])
    cover = np.zeros(grid, np.float64)
    count = np.zeros(grid, np.float64)
    np.add.at(cover, (rows[:, None], cols[None, :]), mask.astype(np.float64))
    np.add.at(count, (rows[:, None], cols[None, :]), 1.0)
    return cover / np.maximum(count, 1)


def prompt_token(mask: np.ndarray, grid: tuple[int, int], how: str, rng: np.random.Generator) -> tuple[int, int]:
    """(row, col) of the prompt token for one instance mask (H, W) bool."""
    H, W = mask.shape
    if how == "interior":
        dist = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    elif how == "random":
        ys, xs = np.nonzero(mask)
        k = int(rng.integers(len(ys)))
        y, x = ys[k], xs[k]
    else:  # max_overlap
        cover = cell_coverage(mask, grid)
        r, c = np.unravel_index(int(np.argmax(cover)), cover.shape)
        return int(r), int(c)
    return int(token_index(y, H, grid[0])), int(token_index(x, W, grid[1]))


@dataclass
class PromptScores:
    """Per-instance intersections/unions at every threshold, plus similarity-histogram sums."""

    thresholds: np.ndarray
    bins: int = 100
    inter: list = field(default_factory=list)     # (thresholds,) per instance
    union: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    images: list = field(default_factory=list)
    hist_intra: np.ndarray = None
    hist_inter: np.ndarray = None
    sum_intra: float = 0.0
    sum_inter: float = 0.0

    def __post_init__(self):
        self.hist_intra = np.zeros(self.bins, np.int64)
        self.hist_inter = np.zeros(self.bins, np.int64)


def score_image(feats: torch.Tensor, masks: np.ndarray, labels: np.ndarray, image_index: int,
                scores: PromptScores, cfg: dict, rng: np.random.Generator) -> None:
    """Add one image: ``feats`` (C, h, w) patch features, ``masks`` (N, H, W) non-crowd instances."""
    feats = F.normalize(feats.float(), dim=0)
    C, h, w = feats.shape
    flat = feats.reshape(C, -1)
    n, H, W = masks.shape
    how, upsample = cfg["prompt"], cfg["upsample"]
    rows = token_index(np.arange(H), H, h)
    cols = token_index(np.arange(W), W, w)
    thr = torch.as_tensor(scores.thresholds, dtype=torch.float32)
    for k in range(n):
        mask = masks[k].astype(bool)
        if not mask.any():
            continue
        r, c = prompt_token(mask, (h, w), how, rng)
        sim = (flat[:, r * w + c] @ flat).reshape(h, w)
        if upsample == "mask":
            full = sim[torch.as_tensor(rows)][:, torch.as_tensor(cols)]
        else:
            full = F.interpolate(sim[None, None], size=(H, W), mode="bilinear", align_corners=False)[0, 0]
        pred = full.unsqueeze(0) > thr.view(-1, 1, 1)                     # (T, H, W)
        gt = torch.from_numpy(mask).unsqueeze(0)
        scores.inter.append((pred & gt).sum(dim=(1, 2)).numpy().astype(np.int64))
        scores.union.append((pred | gt).sum(dim=(1, 2)).numpy().astype(np.int64))
        scores.labels.append(int(labels[k]))
        scores.images.append(image_index)
    _similarity_pairs(flat, masks, labels, (h, w), scores, cfg)


def _similarity_pairs(flat: torch.Tensor, masks: np.ndarray, labels: np.ndarray, grid, scores: PromptScores,
                      cfg: dict) -> None:
    background = cfg["background"]
    cats = sorted(set(int(v) for v in labels))
    fractions = [np.zeros(grid)]  # background coverage first
    semantic = np.zeros(masks.shape[1:], np.int64)
    for k in np.argsort([-int(m.sum()) for m in masks], kind="stable"):  # small objects painted last (on top)
        semantic[masks[k].astype(bool)] = int(labels[k])
    fractions[0] = cell_coverage(semantic == 0, grid)
    fractions += [cell_coverage(semantic == c, grid) for c in cats]
    fractions = np.stack(fractions)                                  # (1 + K, h, w)
    ids = np.array([0] + cats)
    best = fractions.argmax(0)
    token_label = np.where(fractions.max(0) >= float(cfg["min_fraction"]), ids[best], -1).reshape(-1)
    keep = token_label >= 0
    if background == "exclude":
        keep &= token_label != 0
    idx = np.nonzero(keep)[0]
    if len(idx) < 2:
        return
    lab = torch.as_tensor(token_label[idx])
    sub = flat[:, torch.as_tensor(idx)]
    sims = (sub.T @ sub).clamp(-1, 1)
    upper = torch.triu(torch.ones_like(sims, dtype=torch.bool), diagonal=1)
    same = lab[:, None] == lab[None, :]
    both_bg = (lab[:, None] == 0) & (lab[None, :] == 0)
    intra = upper & same
    inter = upper & ~same
    if background == "inter_only":
        intra &= ~both_bg
    edges = np.linspace(-1.0, 1.0, scores.bins + 1)
    for sel, name in ((intra, "intra"), (inter, "inter")):
        values = sims[sel].numpy().astype(np.float64)
        hist, _ = np.histogram(values, bins=edges)
        setattr(scores, f"hist_{name}", getattr(scores, f"hist_{name}") + hist)
        setattr(scores, f"sum_{name}", getattr(scores, f"sum_{name}") + float(values.sum()))


def miou_at(inter: np.ndarray, union: np.ndarray, labels: np.ndarray, how: str) -> np.ndarray:
    """mIoU per threshold column from (instances, thresholds) intersections / unions."""
    inter, union = np.asarray(inter, np.float64), np.asarray(union, np.float64)
    if how == "per_instance":
        return np.mean(inter / np.maximum(union, 1), axis=0)
    per_class = []
    for c in np.unique(labels):
        sel = labels == c
        u = union[sel].sum(0)
        per_class.append(np.where(u > 0, inter[sel].sum(0) / np.maximum(u, 1), np.nan))
    return np.nanmean(np.stack(per_class), axis=0)


def summarise(scores: PromptScores, fixed: list[float], sweep: np.ndarray, how: str, mode: str) -> dict:
    """mIoU at each fixed threshold, at the optimal sweep threshold, plus the similarity statistics."""
    if not scores.inter:
        raise UserError("prompt segmentation: no non-crowd instance with a non-empty mask in the evaluated images")
    inter, union = np.stack(scores.inter), np.stack(scores.union)
    labels, images = np.asarray(scores.labels), np.asarray(scores.images)
    thr = scores.thresholds
    col = {round(float(t), 6): i for i, t in enumerate(thr)}
    curve = miou_at(inter, union, labels, how)
    out = {f"mIoU@{t:g}": 100.0 * curve[col[round(t, 6)]] for t in fixed}
    sweep_cols = [col[round(float(t), 6)] for t in sweep]
    if mode == "dataset":
        best = sweep_cols[int(np.nanargmax(curve[sweep_cols]))]
        out["mIoU@opt"] = 100.0 * curve[best]
        out["opt_threshold"] = float(thr[best])
    else:  # oracle threshold per image
        chosen_i, chosen_u = np.zeros(len(inter)), np.zeros(len(inter))
        for img in np.unique(images):
            sel = images == img
            per_image = np.mean(inter[sel][:, sweep_cols] / np.maximum(union[sel][:, sweep_cols], 1), axis=0)
            best = sweep_cols[int(np.argmax(per_image))]
            chosen_i[sel], chosen_u[sel] = inter[sel, best], union[sel, best]
        out["mIoU@opt"] = 100.0 * float(miou_at(chosen_i[:, None], chosen_u[:, None], labels, how)[0])
    for name in ("intra", "inter"):
        hist = getattr(scores, f"hist_{name}")
        out[f"sim_{name}_mean"] = getattr(scores, f"sum_{name}") / hist.sum() if hist.sum() else float("nan")
    p_intra = scores.hist_intra / max(scores.hist_intra.sum(), 1)
    p_inter = scores.hist_inter / max(scores.hist_inter.sum(), 1)
    out["sim_overlap"] = float(np.minimum(p_intra, p_inter).sum()) if scores.hist_intra.sum() and \
        scores.hist_inter.sum() else float("nan")
    return out


def threshold_grid(cfg: dict) -> tuple[list[float], np.ndarray, np.ndarray]:
    fixed = [float(t) for t in cfg["thresholds"]]
    sw = cfg["sweep"]
    start, stop, step = float(sw["start"]), float(sw["stop"]), float(sw["step"])
    if step <= 0 or stop < start:
        raise UserError(f"recipe key 'sweep': need start <= stop and step > 0, got {sw!r}")
    sweep = np.round(np.arange(start, stop + step / 2, step), 6)
    allt = np.unique(np.round(np.concatenate([np.asarray(fixed, np.float64), sweep]), 6))
    return fixed, sweep, allt


@PROTOCOLS.register("prompt_seg")
class PromptSegmentation(Protocol):
    """MMC zero-shot prompt segmentation (Table 1) and similarity distributions (Table 5)."""

    schema = Schema(datasets=("coco",), metrics=(
        Metric("mIoU@{t:num}", description="mask = similarity to the prompt token above t"),
        Metric("mIoU@opt", description="at the best threshold of the sweep"),
        Metric("opt_threshold", unit="cosine", direction=NEUTRAL, description="that threshold"),
        Metric("sim_intra_mean", unit="cosine", direction=NEUTRAL, description="mean similarity of same-category pairs"),
        Metric("sim_inter_mean", unit="cosine", direction=NEUTRAL,
               description="mean similarity of different-category pairs"),
        Metric("sim_overlap", unit="fraction", direction=LOWER,
               description="overlap area of the two histograms (MMC Table 5: should be small)")),
        headline=("mIoU@opt",), order=90)

    def run(self, ctx: EvalContext) -> list[dict]:
        cfg = ctx.recipe
        for key, valid in (("prompt", PROMPTS), ("upsample", UPSAMPLE), ("miou", MIOU),
                           ("threshold_mode", THRESHOLD_MODES), ("background", BACKGROUND)):
            recipe_choice(cfg, key, valid)
        backbone = ctx.checkpoint.backbone.to(ctx.device).eval()
        require_vit(backbone, "prompt_seg")
        layer = layer_spec(cfg["layer"], backbone.depth)
        size = int(cfg["input_size"])
        if size <= 0 or size % backbone.patch_size:
            raise UserError(f"recipe key 'input_size': {size} must be a positive multiple of the patch size "
                            f"{backbone.patch_size}")
        fixed, sweep, allt = threshold_grid(cfg)
        root = resolve(Path(ctx.data), cfg["dataset"])
        name = dataset_name(Path(ctx.data), cfg["dataset"])
        data = CocoDetection.from_root(root, cfg["split"])
        n_images = len(data) if int(cfg["max_images"]) <= 0 else min(len(data), int(cfg["max_images"]))
        scores = PromptScores(allt, bins=int(cfg["bins"]))
        mean, std = cfg["mean"], cfg["std"]
        for i in progress(range(n_images), desc="prompt segmentation", unit="img"):
            image, target = data[i]
            keep = (target["iscrowd"] == 0).numpy()
            masks = target["masks"].numpy()[keep]
            labels = target["labels"].numpy()[keep]
            if len(masks) == 0:
                continue
            x = TF.resize(image, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
            x = TF.normalize(x, mean, std).unsqueeze(0).to(ctx.device)
            feats = dense_features(backbone, x, layer)[0].cpu()
            rng = np.random.default_rng([int(cfg["seed"]), int(target["image_id"])])
            score_image(feats, masks, labels, i, scores, cfg, rng)
        metrics = summarise(scores, fixed, sweep, cfg["miou"], cfg["threshold_mode"])
        options = {k: cfg[k] for k in ("prompt", "layer", "upsample", "miou", "threshold_mode", "background",
                                       "min_fraction", "input_size", "bins")}
        extra = {"split": cfg["split"], "images": n_images, "instances": len(scores.inter),
                 "sweep": [float(sweep[0]), float(sweep[-1]), float(cfg["sweep"]["step"])], **options}
        return [{"dataset": name, "metric": metric, "value": float(value), "unit": self.schema.metric(metric).unit,
                 **extra} for metric, value in metrics.items()]
