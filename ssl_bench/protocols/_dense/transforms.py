"""Training pipelines of the dense protocols, on the data package's tensors.

Segmentation (mmseg ``configs/_base_/datasets/ade20k.py``, used by the MAE/BEiT UperNet configs):
``RandomResize(scale, ratio_range, keep_ratio=True)`` -> ``RandomCrop(crop, cat_max_ratio=0.75)``
-> ``RandomFlip(0.5)`` -> ``PhotoMetricDistortion`` -> normalise -> pad to the crop (image 0 after
normalisation, label 255), as mmseg's ``SegDataPreProcessor`` does.

Detection (detectron2 ``projects/ViTDet/configs/common/coco_loader_lsj.py``, large-scale jitter):
``RandomFlip`` -> ``ResizeScale(min_scale, max_scale, target = image_size)`` ->
``FixedSizeCrop(image_size)``, boxes recomputed from the cropped masks and empty instances
dropped (``recompute_boxes``, ``filter_empty_instances``). Normalisation and the square padding
are done by the model (torchvision ``GeneralizedRCNNTransform``).
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F

from .common import IMAGENET_MEAN, IMAGENET_STD

IGNORE = 255


def rescale_size(h: int, w: int, scale: tuple[float, float]) -> tuple[int, int]:
    """mmcv ``rescale_size`` with keep_ratio: fit the long side into max(scale) and the short
    side into min(scale); sizes rounded as ``int(x * factor + 0.5)``."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_pair(image: torch.Tensor, label: torch.Tensor, size: tuple[int, int]):
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image, label


def normalize(image: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m = torch.tensor(mean, dtype=image.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=image.dtype).view(3, 1, 1)
    return (image - m) / s


def photometric_distortion(image: torch.Tensor, rng: random.Random, *, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5),
                           hue_delta: int = 18) -> torch.Tensor:
    """mmseg ``PhotoMetricDistortion`` on a [0, 1] image (its arithmetic is on the 0-255 scale):
    each step with probability 0.5, contrast before or after the HSV steps at random, values
    clipped to [0, 255] after each step; hue in OpenCV's 0-180 units."""
    from skimage.color import hsv2rgb, rgb2hsv  # heavy: only the photometric distortion needs it

    img = image.clamp(0, 1) * 255.0

    def clip(x):
        return x.clamp(0, 255)

    if rng.randint(0, 1):
        img = clip(img + rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = rng.randint(0, 1) == 1
    if contrast_first and rng.randint(0, 1):
        img = clip(img * rng.uniform(*contrast_range))
    do_sat, do_hue = rng.randint(0, 1), rng.randint(0, 1)
    if do_sat or do_hue:
        hsv = rgb2hsv((img / 255.0).permute(1, 2, 0).numpy())
        if do_sat:
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(*saturation_range), 0, 1)
        if do_hue:
            hsv[..., 0] = (hsv[..., 0] + rng.randint(-hue_delta, hue_delta) / 180.0) % 1.0
        img = clip(torch.from_numpy(hsv2rgb(hsv)).permute(2, 0, 1).to(image.dtype) * 255.0)
    if not contrast_first and rng.randint(0, 1):
        img = clip(img * rng.uniform(*contrast_range))
    return img / 255.0


class SegTrainTransform:
    """The mmseg ADE20k training pipeline (see the module docstring); ``seed`` + the sample's
    draw counter make it deterministic for a given recipe seed."""

    def __init__(self, cfg: dict, seed: int = 0):
        self.scale = tuple(float(v) for v in cfg["scale"])
        self.ratio_range = tuple(float(v) for v in cfg["ratio_range"])
        self.crop = tuple(int(v) for v in cfg["crop_size"])
        self.cat_max_ratio = float(cfg["cat_max_ratio"])
        self.flip_prob = float(cfg["flip_prob"])
        self.photometric = bool(cfg["photometric"])
        self.rng = random.Random(seed)

    def _crop_box(self, h: int, w: int):
        ch, cw = self.crop
        y0 = self.rng.randint(0, max(h - ch, 0))
        x0 = self.rng.randint(0, max(w - cw, 0))
        return y0, min(y0 + ch, h), x0, min(x0 + cw, w)

    def __call__(self, image: torch.Tensor, label: torch.Tensor):
        rng = self.rng
        ratio = rng.uniform(*self.ratio_range)
        h, w = image.shape[-2:]
        image, label = resize_pair(image, label, rescale_size(h, w, (self.scale[0] * ratio, self.scale[1] * ratio)))
        h, w = image.shape[-2:]
        box = self._crop_box(h, w)
        if self.cat_max_ratio < 1.0:  # mmseg RandomCrop: up to 10 tries for a crop no class dominates
            for _ in range(10):
                y0, y1, x0, x1 = box
                values, counts = torch.unique(label[y0:y1, x0:x1], return_counts=True)
                counts = counts[values != IGNORE]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                box = self._crop_box(h, w)
        y0, y1, x0, x1 = box
        image, label = image[:, y0:y1, x0:x1], label[y0:y1, x0:x1]
        if rng.random() < self.flip_prob:
            image, label = image.flip(-1), label.flip(-1)
        if self.photometric:
            image = photometric_distortion(image, rng)
        image = normalize(image)
        ch, cw = self.crop
        pad_h, pad_w = ch - image.shape[-2], cw - image.shape[-1]
        if pad_h > 0 or pad_w > 0:
            image = F.pad(image, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=0.0)
            label = F.pad(label, (0, max(pad_w, 0), 0, max(pad_h, 0)), value=IGNORE)
        return image.contiguous(), label.contiguous()


class SegTestTransform:
    """mmseg test pipeline: ``Resize(scale, keep_ratio=True)``; the label stays at its
    original resolution (scoring is at the original size)."""

    def __init__(self, cfg: dict):
        self.scale = tuple(float(v) for v in cfg["scale"])

    def __call__(self, image: torch.Tensor, label: torch.Tensor):
        h, w = image.shape[-2:]
        size = rescale_size(h, w, self.scale)
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
        return normalize(image), label


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes of binary masks (pixel-edge convention, as detectron2 BitMasks)."""
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    for i in range(masks.shape[0]):
        ys, xs = torch.where(rows[i])[0], torch.where(cols[i])[0]
        if len(ys) and len(xs):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


class LSJTransform:
    """ViTDet large-scale jitter (see the module docstring)."""

    def __init__(self, image_size: int, min_scale: float, max_scale: float, flip_prob: float = 0.5,
                 seed: int = 0):
        self.size = int(image_size)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)
        self.flip_prob = float(flip_prob)
        self.rng = random.Random(seed)

    def __call__(self, image: torch.Tensor, target: dict):
        rng = self.rng
        target = dict(target)
        masks = target["masks"]
        if rng.random() < self.flip_prob:
            image, masks = image.flip(-1), masks.flip(-1)
        h, w = image.shape[-2:]
        scale = rng.uniform(self.min_scale, self.max_scale)
        factor = min(scale * self.size / h, scale * self.size / w)
        nh, nw = max(int(round(h * factor)), 1), max(int(round(w * factor)), 1)
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if len(masks):
            masks = F.interpolate(masks[None].float(), size=(nh, nw), mode="nearest")[0].to(torch.uint8)
        else:
            masks = torch.zeros((0, nh, nw), dtype=torch.uint8)
        y0 = int(round(max(nh - self.size, 0) * rng.random()))
        x0 = int(round(max(nw - self.size, 0) * rng.random()))
        image = image[:, y0:y0 + self.size, x0:x0 + self.size]
        masks = masks[:, y0:y0 + self.size, x0:x0 + self.size]
        boxes = masks_to_boxes(masks)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        for key in ("labels", "area", "iscrowd"):
            if key in target:
                target[key] = target[key][keep]
        target["boxes"], target["masks"] = boxes[keep], masks[keep].contiguous()
        return image.contiguous(), target
