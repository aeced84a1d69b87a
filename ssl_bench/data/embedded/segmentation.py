"""Embedded semantic segmentation in the ADE20k layout.

``ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_<8 digits>.jpg`` and
``annotations/...png`` (mode L). The background is split into Voronoi regions, each a crop of a
skimage.data texture (a "stuff" class: brick, grass, gravel) or photo (label 0, "other"); Fashion-MNIST
objects are pasted on top (labels 1-10). Label ids: 0 other, 1..10 Fashion-MNIST classes in label order,
then the texture classes in base.yaml order; the manifest lists the names.
"""

from __future__ import annotations

import numpy as np

from ..common import fmt_config
from .compose import paste, rng_for, save_jpeg, save_png
from .context import Context, get_context, run_tasks

_FM_SPLIT = {"training": "train", "validation": "test"}
_PREFIX = {"training": "ADE_train", "validation": "ADE_val"}


def class_list(c: Context) -> list[str]:
    textures = [c.profile["backgrounds"][n]["name"] for n in c.bg_names("texture")]
    return ["other"] + list(c.classes) + textures


def _render(task) -> None:
    c = get_context()
    split, i = task
    cfg = c.profile["ade20k"]
    rng = rng_for(c.seed, f"ade20k-{split}", i)
    W = int(rng.integers(cfg["width"][0], cfg["width"][1] + 1))
    H = int(rng.integers(cfg["height"][0], cfg["height"][1] + 1))
    names = c.bg_names()
    textures = c.bg_names("texture")
    n_regions = int(rng.integers(cfg["stuff_regions"][0], cfg["stuff_regions"][1] + 1))
    seeds = rng.uniform(0, 1, size=(n_regions, 2)) * np.array([H, W])
    yy, xx = np.mgrid[0:H, 0:W]
    d = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    region = np.argmin(d, axis=2)
    img = np.zeros((H, W, 3), dtype=np.uint8)
    label = np.zeros((H, W), dtype=np.uint8)
    n_things = len(c.classes)
    for r in range(n_regions):
        name = names[int(rng.integers(0, len(names)))]
        bg = c.background(rng, W, H, name)
        m = region == r
        img[m] = bg[m]
        if name in textures:
            label[m] = 1 + n_things + textures.index(name)
    lo, hi = cfg["objects_per_image"]
    for _ in range(int(rng.integers(lo, hi + 1))):
        k = int(rng.integers(0, n_things))
        size = min(int(rng.integers(cfg["object_size"][0], cfg["object_size"][1] + 1)), min(H, W) - 2)
        sp = c.sprite(_FM_SPLIT[split], c.fm_choice(_FM_SPLIT[split], k, rng), size, rng)
        x = int(rng.integers(0, W - sp.w + 1))
        y = int(rng.integers(0, H - sp.h + 1))
        covered = paste(img, sp, x, y)
        label[covered] = 1 + k
    root = c.root / fmt_config("ade20k")["folder"]
    name = f"{_PREFIX[split]}_{i + 1:08d}"
    save_jpeg(img, root / "images" / split / f"{name}.jpg", cfg["jpeg_quality"])
    save_png(label, root / "annotations" / split / f"{name}.png")


def generate(c: Context, workers: int) -> dict:
    cfg = c.profile["ade20k"]
    counts = {"training": int(cfg["train_images"]), "validation": int(cfg["val_images"])}
    tasks = [(split, i) for split, n in counts.items() for i in range(n)]
    run_tasks(_render, tasks, workers, desc="ade20k")
    classes = class_list(c)
    return {
        "format": "ade20k",
        "subfolder": fmt_config("ade20k")["folder"],
        "counts": {"classes": len(classes) - 1, **counts},
        "classes": classes,
        "how": ("background split into ade20k.stuff_regions Voronoi cells, each a crop of a skimage.data texture "
                "(labelled as its stuff class) or photo (label 0, other); Fashion-MNIST objects (training split "
                "for training/, test split for validation/) pasted on top with their exact masks, later ones in "
                "front; label map = the class of the front-most thing or stuff at each pixel"),
        "sources": ["fashion_mnist", "backgrounds"],
    }
