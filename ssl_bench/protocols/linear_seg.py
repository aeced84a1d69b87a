"""Linear semantic segmentation on frozen patch features (MMC Table 3, after Bardes et al., VICRegL).

* features: the outputs of ``blocks`` (1-based; default 6, 8, 10, 12 as in MMC) of the frozen
  backbone, each resized (bilinear) to the first block's token grid and concatenated;
* head: BatchNorm2d over the concatenated channels, then a 1x1 convolution to the classes;
  logits upsampled (bilinear) to the label size, cross-entropy with ignore index 255;
* AdamW (betas 0.9, 0.999), weight decay 0.05, base lr 1e-4, linear warm-up then poly decay
  (power 1, to 0) per iteration, 40k iterations of batch 16 at full scale (MMC appendix);
* training images are resized to ``train_size`` squares (labels nearest); with ``augment`` the
  image is first randomly rescaled (0.5-2.0), cropped to ``train_size`` and flipped, as mmseg's
  pipeline (photometric distortion is not applied); without it, the features of each training
  image are computed once and reused every iteration;
* test: short side resized to ``test_size`` (long side keeping the aspect, both floored to the
  patch size), logits upsampled to the ORIGINAL resolution, argmax, scored with mmseg's
  IoUMetric (``ssl_bench.metrics.segmentation``: histograms summed over the set, nanmean over
  classes with non-zero union, ignore 255, ``reduce_zero_label`` for ADE20k).

Datasets: ``ade20k`` (ADEChallengeData2016 layout, 150 classes, label 0 "other" ignored) or
``coco`` (semantic masks derived from COCO instances: category labels 1..K painted largest
instance first, crowd regions 255 = ignored, background 0 a class unless ``reduce_zero_label``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch import nn
from torch.nn import functional as F

from ..data.ade20k import ADE20kSegmentation
from ..data.coco import CocoDetection
from ..data.resolve import dataset_name, resolve
from ..errors import UserError
from ..metrics.segmentation import IGNORE_INDEX, SEGMENTATION_METRICS, IoUAccumulator, reduce_zero_label
from ..progress import progress
from ..schedules import lr_factor
from ..schema import Schema
from . import PROTOCOLS, EvalContext, Protocol
from ._common import recipe_choice
from ._patches import block_indices, require_vit


# ----- data ------------------------------------------------------------------------------------
class CocoSemantic(torch.utils.data.Dataset):
    """(image, label) with semantic labels derived from COCO instances (see the module docstring)."""

    def __init__(self, root: Path, split: str, reduce_zero_label: bool):
        self.inner = CocoDetection.from_root(root, split)
        self.reduce_zero_label = reduce_zero_label
        self.num_classes = self.inner.num_classes + (0 if reduce_zero_label else 1)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        image, target = self.inner[i]
        masks = target["masks"].numpy().astype(bool)
        label = np.zeros(image.shape[1:], np.int64)
        order = np.argsort([-int(m.sum()) for m in masks], kind="stable")
        for k in order:
            if int(target["iscrowd"][k]) == 0:
                label[masks[k]] = int(target["labels"][k])
        for k in order:
            if int(target["iscrowd"][k]) == 1:
                label[masks[k]] = IGNORE_INDEX
        if self.reduce_zero_label:
            label = reduce_zero_label(label)
        return image, torch.from_numpy(label)


def open_split(root: Path, fmt: str, split: str, reduce_zero: bool):
    if fmt == "ade20k":
        return ADE20kSegmentation(root, split, reduce_zero_label=reduce_zero)
    return CocoSemantic(root, split, reduce_zero)


# ----- model -----------------------------------------------------------------------------------
class LinearHead(nn.Module):
    """BatchNorm2d then a 1x1 convolution (the linear segmentation head)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.bn(x))


@torch.no_grad()
def block_features(backbone, images: torch.Tensor, blocks: list[int]) -> torch.Tensor:
    """(B, sum C, h, w): the chosen blocks' patch maps, resized to the first one's grid, concatenated."""
    maps = backbone.patch_grid(images, blocks=blocks)
    size = maps[0].shape[-2:]
    maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            for m in maps]
    return torch.cat(maps, dim=1).float()


def eval_size(h: int, w: int, short: int, patch: int) -> tuple[int, int]:
    scale = short / min(h, w)
    return max(patch, int(h * scale) // patch * patch), max(patch, int(w * scale) // patch * patch)


def _normalise(img: torch.Tensor, cfg: dict) -> torch.Tensor:
    return TF.normalize(img, cfg["mean"], cfg["std"])


def _train_pair(img: torch.Tensor, label: torch.Tensor, cfg: dict, rng: np.random.Generator):
    size = int(cfg["train_size"])
    if cfg["augment"]:
        lo, hi = cfg["scale_range"]
        h, w = img.shape[1:]
        s = float(rng.uniform(lo, hi)) * size / min(h, w)
        nh, nw = max(size, round(h * s)), max(size, round(w * s))
        img = TF.resize(img, [nh, nw], antialias=True)
        label = TF.resize(label[None], [nh, nw], interpolation=TF.InterpolationMode.NEAREST)[0]
        y, x = int(rng.integers(nh - size + 1)), int(rng.integers(nw - size + 1))
        img, label = img[:, y:y + size, x:x + size], label[y:y + size, x:x + size]
        if rng.random() < 0.5:
            img, label = img.flip(-1), label.flip(-1)
    else:
        img = TF.resize(img, [size, size], antialias=True)
        label = TF.resize(label[None], [size, size], interpolation=TF.InterpolationMode.NEAREST)[0]
    return _normalise(img, cfg), label


@PROTOCOLS.register("linear_seg")
class LinearSegmentation(Protocol):
    """Frozen-feature linear segmentation, mIoU as mmseg IoUMetric."""

    schema = Schema(datasets=("ade20k", "coco"), metrics=SEGMENTATION_METRICS, headline=("mIoU",), order=80)

    def run(self, ctx: EvalContext) -> list[dict]:
        cfg = ctx.recipe
        fmt = recipe_choice(cfg, "dataset", ("ade20k", "coco"))
        reduce_zero = cfg["reduce_zero_label"]
        if reduce_zero in (None, "auto"):
            reduce_zero = fmt == "ade20k"
        if not isinstance(reduce_zero, bool):
            raise UserError(f"recipe key 'reduce_zero_label': expected auto, true or false, got {reduce_zero!r}")
        for key in ("iterations", "batch_size", "train_size", "test_size"):
            if int(cfg[key]) <= 0:
                raise UserError(f"recipe key '{key}': must be a positive integer, got {cfg[key]!r}")
        backbone = ctx.checkpoint.backbone.to(ctx.device).eval()
        require_vit(backbone, "linear_seg")
        blocks = block_indices(cfg["blocks"], backbone.depth)
        root = resolve(Path(ctx.data), fmt)
        name = dataset_name(Path(ctx.data), fmt)
        train = open_split(root, fmt, cfg["train_split"], reduce_zero)
        val = open_split(root, fmt, cfg["val_split"], reduce_zero)
        num_classes = int(train.num_classes)
        torch.manual_seed(int(cfg["seed"]))
        rng = np.random.default_rng(int(cfg["seed"]))
        n_train = len(train) if int(cfg["max_train_images"]) <= 0 else min(len(train), int(cfg["max_train_images"]))
        n_val = len(val) if int(cfg["max_val_images"]) <= 0 else min(len(val), int(cfg["max_val_images"]))

        cache = None
        if not cfg["augment"]:  # deterministic inputs: features once per training image
            feats, labels = [], []
            for i in progress(range(n_train), desc="linear_seg train features", unit="img"):
                img, label = _train_pair(*train[i], cfg, rng)
                feats.append(block_features(backbone, img[None].to(ctx.device), blocks)[0].cpu())
                labels.append(label)
            cache = (torch.stack(feats), torch.stack(labels))
        channels = backbone.embed_dim * len(blocks)
        head = LinearHead(channels, num_classes).to(ctx.device)
        betas = tuple(float(b) for b in cfg["betas"])
        opt = torch.optim.AdamW(head.parameters(), lr=float(cfg["lr"]), betas=betas,
                                weight_decay=float(cfg["weight_decay"]))
        total, batch = int(cfg["iterations"]), int(cfg["batch_size"])
        # mmseg LinearLR warm-up then PolyLR to 0
        schedule = {"kind": "poly", "warmup_iters": int(cfg["warmup_iters"]),
                    "warmup_ratio": float(cfg["warmup_ratio"]), "power": float(cfg["poly_power"])}
        order = rng.permutation(n_train)
        pos = 0
        head.train()
        last_loss = float("nan")
        for it in progress(range(total), desc="linear_seg training", unit="it"):
            if pos + batch > n_train:
                order, pos = rng.permutation(n_train), 0
            idx = order[pos:pos + min(batch, n_train)]
            pos += len(idx)
            if cache is not None:
                x, y = cache[0][idx].to(ctx.device), cache[1][idx].to(ctx.device)
            else:
                pairs = [_train_pair(*train[int(i)], cfg, rng) for i in idx]
                imgs = torch.stack([p[0] for p in pairs]).to(ctx.device)
                x = block_features(backbone, imgs, blocks)
                y = torch.stack([p[1] for p in pairs]).to(ctx.device)
            for group in opt.param_groups:
                group["lr"] = float(cfg["lr"]) * lr_factor(it, schedule, total)
            logits = F.interpolate(head(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y.long(), ignore_index=IGNORE_INDEX)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                opt.step()
            last_loss = float(loss.detach())
        if not math.isfinite(last_loss):
            last_loss = float("nan")

        head.eval()
        metric = IoUAccumulator(num_classes)
        with torch.no_grad():
            for i in progress(range(n_val), desc="linear_seg evaluation", unit="img"):
                img, label = val[i]
                h, w = label.shape
                th, tw = eval_size(h, w, int(cfg["test_size"]), backbone.patch_size)
                x = _normalise(TF.resize(img, [th, tw], antialias=True), cfg)[None].to(ctx.device)
                logits = F.interpolate(head(block_features(backbone, x, blocks)), size=(h, w), mode="bilinear",
                                       align_corners=False)
                metric.update(logits.argmax(1)[0].cpu().numpy(), label.numpy())
        result = metric.compute()
        extra = {"blocks": [b + 1 for b in blocks], "num_classes": num_classes, "reduce_zero_label": reduce_zero,
                 "iterations": total, "train_images": n_train, "val_images": n_val, "final_loss": last_loss,
                 "augment": bool(cfg["augment"]), "unit": "percent"}
        return [{"dataset": name, "metric": m, "value": 100.0 * result[m], **extra} for m in ("mIoU", "mAcc", "aAcc")]
