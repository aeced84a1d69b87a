"""Multi-view transforms that run in the data workers and report crop geometry.

Every random choice is drawn from the process-global ``random`` / ``torch`` generators,
which ``SeededSample`` re-seeds per (seed, epoch, index) around each call, so an image's
views depend only on those three numbers: the same in every worker, after a resume and
on every rank layout.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageFilter, ImageOps

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {"bilinear": F.InterpolationMode.BILINEAR, "bicubic": F.InterpolationMode.BICUBIC}


@dataclass
class Geometry:
    """Where a view came from in the source image (pixels of the source)."""

    top: int
    left: int
    height: int
    width: int
    flip: bool

    def tensor(self) -> torch.Tensor:
        return torch.tensor([self.top, self.left, self.height, self.width, int(self.flip)])


def random_resized_crop_params(width: int, height: int, scale: tuple[float, float],
                               ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop, the torchvision / BEiT rule (10 tries, then
    a centre crop), drawing from python ``random`` so the per-sample seed fixes it."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def crop_view(img: Image.Image, size: int, scale: tuple[float, float], *, flip_p: float = 0.5,
              interpolation: str = "bilinear") -> tuple[Image.Image, Geometry]:
    """RandomResizedCrop + horizontal flip, returning the view and its geometry."""
    top, left, h, w = random_resized_crop_params(img.width, img.height, tuple(scale))
    out = F.resized_crop(img, top, left, h, w, [size, size], _INTERPOLATION[interpolation])
    flip = random.random() < flip_p
    if flip:
        out = F.hflip(out)
    return out, Geometry(top, left, h, w, flip)


class GaussianBlur:
    """PIL Gaussian blur with probability ``p`` and radius uniform in [0.1, 2] (DINO / MSN / BEiT)."""

    def __init__(self, p: float, radius_min: float = 0.1, radius_max: float = 2.0):
        self.p, self.radius_min, self.radius_max = p, radius_min, radius_max

    def __call__(self, img: Image.Image) -> Image.Image:
        if random.random() >= self.p:
            return img
        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(self.radius_min, self.radius_max)))


class Solarization:
    def __init__(self, p: float):
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if random.random() < self.p else img


def colour_distortion(jitter: list[float], jitter_p: float, grayscale_p: float, blur_p: float,
                      solarize_p: float = 0.0) -> T.Compose:
    """RandomApply(ColorJitter(b, c, s, h), jitter_p), RandomGrayscale, blur, solarisation."""
    steps = [T.RandomApply([T.ColorJitter(*jitter)], p=jitter_p), T.RandomGrayscale(p=grayscale_p)]
    if blur_p > 0:
        steps.append(GaussianBlur(blur_p))
    if solarize_p > 0:
        steps.append(Solarization(solarize_p))
    return T.Compose(steps)


def to_tensor(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> T.Compose:
    return T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def load_rgb(img) -> Image.Image:
    return img.convert("RGB") if isinstance(img, Image.Image) and img.mode != "RGB" else img
