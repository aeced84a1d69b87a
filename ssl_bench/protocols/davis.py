"""DAVIS-2017 semi-supervised video object segmentation by label propagation on frozen features.

Reference: facebookresearch/dino ``eval_video_segmentation.py`` (after Jabri et al. / UVC):

* frames are read with OpenCV, resized (bilinear) so that the short side is ``short_side`` (480)
  and the long side is ``short_side * ratio`` floored to a multiple of ``multiple`` (64), scaled
  to [0, 1], normalised with mean (0.485, 0.456, 0.406), std (0.228, 0.224, 0.225);
* features: patch tokens of ``layer`` (default the last block after the final norm), L2-normalised;
* the first frame's annotation is resized (nearest) to the token grid and one-hot encoded; each
  later frame is predicted from the first frame plus the ``n_last_frames`` (7) previous
  predictions (soft labels): affinity exp(cos / ``temperature``) (0.1) restricted to a square
  window of +-``neighborhood`` (12) tokens, the top-``topk`` (5) affinities taken JOINTLY over
  all context frames, others zeroed, each query column normalised to sum 1;
* the soft label map is upsampled x patch (bilinear), each channel min-max normalised, argmax,
  resized to the original frame size (nearest) and written as an indexed PNG with the DAVIS
  palette to ``<out>/<sequence>/<frame>.png``; frame 0 is the given annotation;
* scores: ``ssl_bench.metrics.davis`` (davis2017-evaluation J and F, first and last frame excluded).

One deliberate difference: DINO's ``read_seg`` picks the floored side by ``w > h`` while
``read_frame`` uses ``h > w``, which disagree for square frames; here the frame rule sizes both.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from ..data.davis import DavisSequences, write_mask
from ..data.resolve import dataset_name, resolve
from ..errors import UserError
from ..metrics.davis import evaluate_folders
from ..progress import progress
from ..schema import LOWER, Metric, Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._patches import dense_features, layer_spec, normalise, require_vit


# ----- DINO's preprocessing and propagation --------------------------------------------------
def target_size(h: int, w: int, short_side: int, multiple: int) -> tuple[int, int]:
    """(th, tw): short side = ``short_side``, long side floored to a multiple of ``multiple``."""
    if h > w:
        tw = short_side
        th = int((short_side * h / w) // multiple * multiple)
    else:
        th = short_side
        tw = int((short_side * w / h) // multiple * multiple)
    if th <= 0 or tw <= 0:
        raise UserError(f"frame {w}x{h}: short_side {short_side} with multiple {multiple} leaves no pixels")
    return th, tw


def read_frame(path: Path, size: tuple[int, int], mean, std) -> tuple[torch.Tensor, int, int]:
    """OpenCV decode, bilinear resize to ``size`` (th, tw), BGR -> RGB, normalise."""
    img = cv2.imread(str(path))
    if img is None:
        raise UserError(f"{path}: unreadable image")
    ori_h, ori_w = img.shape[:2]
    img = cv2.resize(img, (size[1], size[0]))  # INTER_LINEAR, as the reference
    return normalise(img[:, :, ::-1], mean, std), ori_h, ori_w


def first_seg_onehot(mask: np.ndarray, size: tuple[int, int], patch: int) -> torch.Tensor:
    """(1, C, h, w) one-hot labels of the first annotation on the token grid (nearest resize)."""
    small = np.array(Image.fromarray(mask.astype(np.uint8)).resize((size[1] // patch, size[0] // patch),
                                                                   Image.NEAREST))
    small = torch.from_numpy(small.astype(np.int64))
    return F.one_hot(small, int(small.max()) + 1).permute(2, 0, 1).float().unsqueeze(0)


def neighborhood_mask(h: int, w: int, radius: int, device) -> torch.Tensor:
    """(h*w, h*w) 1/0: query token (i, j) may take labels from key (i', j') with |i-i'|, |j-j'| <= radius."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    near = ((ys[:, None] - ys[None, :]).abs() <= radius) & ((xs[:, None] - xs[None, :]).abs() <= radius)
    return near.float()


def propagate(target_feat: torch.Tensor, context_feats: list[torch.Tensor], context_segs: list[torch.Tensor],
              grid: tuple[int, int], *, temperature: float, topk: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Soft labels (1, C, h, w) of the target frame from the context frames.

    target_feat (h*w, d); context_feats: (h*w, d) each; context_segs: (1, C, h, w) each.
    """
    h, w = grid
    n = len(context_feats)
    tar = F.normalize(target_feat, dim=1, p=2)
    src = F.normalize(torch.stack(context_feats), dim=2, p=2)            # (n, hw_src, d)
    aff = torch.exp(torch.einsum("qd,nsd->nqs", tar, src) / temperature)  # (n, hw_query, hw_src)
    if mask is not None:
        aff = aff * mask.unsqueeze(0)
    aff = aff.transpose(2, 1).reshape(n * h * w, h * w)                   # (n*hw_src, hw_query)
    kth = torch.topk(aff, dim=0, k=min(topk, aff.shape[0])).values.min(dim=0).values
    aff = torch.where(aff < kth, torch.zeros_like(aff), aff)
    aff = aff / aff.sum(dim=0, keepdim=True)
    segs = torch.cat(context_segs)                                         # (n, C, h, w)
    channels = segs.shape[1]
    segs = segs.reshape(n, channels, -1).transpose(2, 1).reshape(-1, channels).T  # (C, n*hw_src)
    return (segs @ aff).reshape(1, channels, h, w)


def norm_mask(mask: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each channel of (C, H, W) that has a positive maximum."""
    out = mask.clone()
    for c in range(out.shape[0]):
        ch = out[c]
        if ch.max() > 0:
            ch = ch - ch.min()
            out[c] = ch / ch.max()
    return out


@torch.no_grad()
def segment_sequence(backbone, seq, out_dir: Path, cfg: dict, device: torch.device) -> None:
    """Propagate the first annotation of ``seq`` (a ``ssl_bench.data.davis.DavisSequence``) through its
    frames; write ``out_dir/<frame>.png`` with the sequence's palette."""
    frames, palette = seq.frames, seq.palette
    patch = backbone.patch_size
    layer = layer_spec(cfg["layer"], backbone.depth)
    first = cv2.imread(str(frames[0]))
    if first is None:
        raise UserError(f"{frames[0]}: unreadable image")
    size = target_size(first.shape[0], first.shape[1], int(cfg["short_side"]), int(cfg["multiple"]))
    if size[0] % patch or size[1] % patch:
        raise UserError(f"recipe keys short_side/multiple: frame size {size[1]}x{size[0]} is not a multiple of "
                        f"the patch size {patch}")
    grid = (size[0] // patch, size[1] // patch)
    first_seg = first_seg_onehot(seq.first_mask, size, patch)
    write_mask(out_dir / f"{frames[0].stem}.png", seq.first_mask, palette)

    feats: list[torch.Tensor] = []
    sizes: list[tuple[int, int]] = []
    batch = int(cfg["batch_size"])
    for start in range(0, len(frames), batch):
        chunk = frames[start:start + batch]
        imgs = []
        for path in chunk:
            img, ori_h, ori_w = read_frame(path, size, cfg["mean"], cfg["std"])
            imgs.append(img)
            sizes.append((ori_h, ori_w))
        fmap = dense_features(backbone, torch.stack(imgs).to(device), layer)   # (B, d, h, w)
        feats.extend(fmap.flatten(2).transpose(1, 2).float())                # (h*w, d) each

    radius = int(cfg["neighborhood"])
    mask = neighborhood_mask(*grid, radius, device) if radius > 0 else None
    first_seg = first_seg.to(device)
    queue: list[tuple[torch.Tensor, torch.Tensor]] = []
    for t in range(1, len(frames)):
        ctx_feats = [feats[0]] + [f for f, _ in queue]
        ctx_segs = [first_seg] + [s for _, s in queue]
        soft = propagate(feats[t], ctx_feats, ctx_segs, grid, temperature=float(cfg["temperature"]),
                         topk=int(cfg["topk"]), mask=mask)
        if len(queue) == int(cfg["n_last_frames"]):
            queue.pop(0)
        if int(cfg["n_last_frames"]) > 0:
            queue.append((feats[t], soft))
        up = F.interpolate(soft, scale_factor=patch, mode="bilinear", align_corners=False)[0]
        labels = norm_mask(up).argmax(dim=0).cpu().numpy().astype(np.uint8)
        ori_h, ori_w = sizes[t]
        labels = np.array(Image.fromarray(labels).resize((ori_w, ori_h), Image.NEAREST))
        write_mask(out_dir / f"{frames[t].stem}.png", labels, palette)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "checkpoint"


@PROTOCOLS.register("davis")
class Davis(Protocol):
    """DAVIS-2017 label propagation (DINO) scored with J&F (davis2017-evaluation)."""

    schema = Schema(datasets=("davis",), metrics=(
        Metric("J&F-Mean", description="(mean J + mean F) / 2 over objects"),
        Metric("J-Mean", description="region similarity (IoU)"), Metric("J-Recall"),
        Metric("J-Decay", direction=LOWER, description="loss of J from the first to the last quarter"),
        Metric("F-Mean", description="boundary F-measure"), Metric("F-Recall"),
        Metric("F-Decay", direction=LOWER)), headline=("J&F-Mean",), order=100)

    def run(self, ctx: EvalContext) -> list[dict]:
        cfg = ctx.recipe
        backbone = ctx.checkpoint.backbone.to(ctx.device).eval()
        require_vit(backbone, "davis")
        for key in ("short_side", "multiple", "topk", "batch_size"):
            if int(cfg[key]) <= 0:
                raise UserError(f"recipe key '{key}': must be a positive integer, got {cfg[key]!r}")
        root = resolve(Path(ctx.data), "davis")
        dataset = dataset_name(Path(ctx.data), "davis")
        sequences = DavisSequences(root, cfg["split"])
        seqs = sequences.names[:int(cfg["max_sequences"])] if int(cfg["max_sequences"]) > 0 else sequences.names
        out = Path(cfg["output_dir"]) if cfg["output_dir"] else (
            ctx.results_dir / "_masks" / "davis" /
            f"{_safe(ctx.checkpoint.label)}-{hashlib.sha256(ctx.checkpoint.sha256.encode()).hexdigest()[:10]}")
        for name in progress(seqs, desc="davis sequences", unit="seq"):
            segment_sequence(backbone, sequences.sequence(name), out / name, cfg, ctx.device)
        summary, _ = evaluate_folders(root / "Annotations" / sequences.resolution, out, seqs,
                                      bound_th=float(cfg["boundary_threshold"]))
        extra = {"split": cfg["split"], "sequences": len(seqs), "objects": len(summary.per_object),
                 "short_side": int(cfg["short_side"]), "layer": cfg["layer"], "unit": "percent",
                 "masks_dir": str(out)}
        return [{"dataset": dataset, "metric": m.name, "value": 100.0 * summary.scores[m.name], **extra}
                for m in self.schema.metrics]
