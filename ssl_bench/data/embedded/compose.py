"""Drawing primitives of the generator: background crops, colourised objects with exact masks, pasting.

Every function takes an explicit ``numpy.random.Generator``; nothing reads global random state.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


def rng_for(seed: int, key: str, *index: int) -> np.random.Generator:
    """An independent generator per (seed, set key, item index): results do not depend on worker count."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode("utf-8")), *map(int, index)])


def int_seed(rng: np.random.Generator) -> int:
    """A 32-bit seed drawn from ``rng`` (for libraries that take a legacy integer seed)."""
    return int(rng.integers(0, 2**31 - 1))


def random_colour(rng: np.random.Generator, lo: float, hi: float) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def to_rgb(img: np.ndarray) -> np.ndarray:
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img


def background(bg: np.ndarray, width: int, height: int, rng: np.random.Generator, crop: tuple[float, float],
               tint: tuple[float, float]) -> np.ndarray:
    """A random crop of ``bg`` with the aspect of the output, resized to (height, width, 3) uint8.
    Grey sources are tinted with a random colour; colour sources are randomly mirrored."""
    h, w = bg.shape[:2]
    short = min(h, w)
    side = rng.uniform(*crop) * short
    ch = int(round(side if height <= width else side * height / width))
    cw = int(round(side if width <= height else side * width / height))
    ch, cw = max(8, min(ch, h)), max(8, min(cw, w))
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    patch = bg[y:y + ch, x:x + cw]
    im = Image.fromarray(patch).resize((width, height), Image.BILINEAR)
    out = np.array(im)  # writable copy
    if out.ndim == 2:
        colour = random_colour(rng, *tint)
        out = (out[..., None].astype(np.float32) * colour[None, None, :]).round().astype(np.uint8)
    elif rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out) if out.flags.writeable else out.copy()


@dataclass
class Sprite:
    """A colourised object: ``rgb`` (h, w, 3) uint8 and its exact ``mask`` (h, w) bool; ``grey`` is the
    upsampled Fashion-MNIST intensity in [0, 1] (for sketches)."""

    rgb: np.ndarray
    mask: np.ndarray
    grey: np.ndarray

    @property
    def h(self) -> int:
        return self.mask.shape[0]

    @property
    def w(self) -> int:
        return self.mask.shape[1]


def make_sprite(obj28: np.ndarray, size: int, rng: np.random.Generator, *, threshold: int,
                tint: tuple[float, float], colour: np.ndarray | None = None) -> Sprite:
    """Crop a Fashion-MNIST image to its object, resize so the longer side is ``size`` (bilinear), mask =
    upsampled grey > ``threshold``, colourise (grey level x a random colour), random horizontal flip."""
    ys, xs = np.nonzero(obj28 > threshold)
    if len(ys) == 0:  # an all-dark item: keep the whole frame
        ys, xs = np.array([0, obj28.shape[0] - 1]), np.array([0, obj28.shape[1] - 1])
    crop = obj28[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    ch, cw = crop.shape
    scale = size / max(ch, cw)
    oh, ow = max(2, int(round(ch * scale))), max(2, int(round(cw * scale)))
    up = np.asarray(Image.fromarray(crop).resize((ow, oh), Image.BILINEAR))
    if rng.random() < 0.5:
        up = up[:, ::-1]
    mask = up > threshold
    grey = up.astype(np.float32) / 255.0
    if colour is None:
        colour = random_colour(rng, *tint)
    rgb = (np.clip(0.15 + 0.85 * grey, 0, 1)[..., None] * colour[None, None, :] * 255.0).round().astype(np.uint8)
    return Sprite(np.ascontiguousarray(rgb), np.ascontiguousarray(mask), np.ascontiguousarray(grey))


def paste(canvas: np.ndarray, sprite: Sprite, x: int, y: int, rgb: np.ndarray | None = None) -> np.ndarray:
    """Paste ``sprite`` with its top-left corner at (x, y) (may lie partly outside); returns the (H, W) bool
    mask of the pixels it now covers. ``rgb`` replaces the sprite colours (same shape)."""
    H, W = canvas.shape[:2]
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + sprite.w, W), min(y + sprite.h, H)
    full = np.zeros((H, W), dtype=bool)
    if x1 <= x0 or y1 <= y0:
        return full
    m = sprite.mask[y0 - y:y1 - y, x0 - x:x1 - x]
    src = (sprite.rgb if rgb is None else rgb)[y0 - y:y1 - y, x0 - x:x1 - x]
    region = canvas[y0:y1, x0:x1]
    region[m] = src[m]
    full[y0:y1, x0:x1] = m
    return full


def save_jpeg(img: np.ndarray, path, quality: int, optimize: bool = False) -> None:
    """Baseline JPEG, 4:2:0, no EXIF/metadata: the same pixels always give the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="JPEG", quality=int(quality), optimize=bool(optimize),
                              progressive=False)


def save_png(img: np.ndarray, path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="PNG")
