"""Embedded classification set in the ImageNet layout, with SimCLR subset files and MSN split files.

``imagenet/train/<wnid>/<wnid>_<j>.JPEG`` (objects from the Fashion-MNIST training split),
``imagenet/val/<wnid>/embedded_val_<8 digits>.JPEG`` (objects from the Fashion-MNIST test split),
``imagenet/1percent.txt``, ``imagenet/10percent.txt``, ``imagenet/imagenet_subsets<s>/<k>imgs_class.txt``.
One object per image on a crop of a skimage.data photo or texture.
"""

from __future__ import annotations

from ..common import write_lines
from .compose import rng_for, save_jpeg
from .context import Context, get_context, run_tasks

SUBFOLDER = "imagenet"
_FM_SPLIT = {"train": "train", "val": "test"}


def file_name(split: str, wnid: str, j: int, k: int, n_classes: int, per_class: int) -> str:
    if split == "train":
        return f"{wnid}_{j}.JPEG"
    return f"embedded_val_{k * per_class + j + 1:08d}.JPEG"


def _render(task) -> None:
    c = get_context()
    split, k, j, fm_index, rel = task
    cfg = c.profile["imagenet"]
    rng = rng_for(c.seed, f"imagenet-{split}", k, j)
    img = c.object_image(_FM_SPLIT[split], fm_index, int(cfg["image_size"]), cfg["object_scale"], rng)
    save_jpeg(img, c.root / rel, cfg["jpeg_quality"])


def train_names(c: Context) -> dict[str, list[str]]:
    """wnid -> training file names, in generation order."""
    n = int(c.profile["imagenet"]["train_per_class"])
    return {w: [f"{w}_{j}.JPEG" for j in range(n)] for w in c.wnids}


def generate(c: Context, workers: int) -> dict:
    cfg = c.profile["imagenet"]
    root = c.root / SUBFOLDER
    tasks = []
    counts = {}
    for split in ("train", "val"):
        per_class = int(cfg[f"{split}_per_class"])
        counts[split] = per_class * len(c.wnids)
        for k, wnid in enumerate(c.wnids):
            pool = c.fm.by_class(_FM_SPLIT[split], k)
            if per_class > len(pool):
                raise ValueError(f"imagenet.{split}_per_class={per_class} exceeds the {len(pool)} Fashion-MNIST "
                                 f"{_FM_SPLIT[split]} objects of class {k}")
            chosen = rng_for(c.seed, f"imagenet-objects-{split}", k).permutation(pool)[:per_class]
            for j in range(per_class):
                name = file_name(split, wnid, j, k, len(c.wnids), per_class)
                tasks.append((split, k, j, int(chosen[j]), f"{SUBFOLDER}/{split}/{wnid}/{name}"))
    run_tasks(_render, tasks, workers, desc="imagenet")

    names = train_names(c)
    per_class = int(cfg["train_per_class"])
    files = {}
    for fname, frac in cfg["subset_files"].items():
        n = max(1, int(round(float(frac) * per_class)))
        lines = []
        for k, wnid in enumerate(c.wnids):
            pick = sorted(rng_for(c.seed, f"subset-{fname}", k).choice(per_class, n, replace=False))
            lines.extend(names[wnid][j] for j in pick)
        write_lines(root / fname, lines)
        files[fname] = len(lines)
    for s in range(1, int(cfg["split_count"]) + 1):
        for shots in cfg["split_shots"]:
            if shots > per_class:
                raise ValueError(f"imagenet.split_shots has {shots} > train_per_class={per_class}")
            lines = []
            for k, wnid in enumerate(c.wnids):
                pick = sorted(rng_for(c.seed, "msn-split", s, shots, k).choice(per_class, shots, replace=False))
                lines.extend(names[wnid][j] for j in pick)
            rel = f"imagenet_subsets{s}/{shots}imgs_class.txt"
            write_lines(root / rel, lines)
            files[rel] = len(lines)
    return {
        "format": "imagenet",
        "subfolder": SUBFOLDER,
        "counts": {"classes": len(c.wnids), **counts, **files},
        "classes": c.wnids,
        "class_names": c.classes,
        "how": ("one Fashion-MNIST object per image (training split for train/, test split for val/), cropped to "
                "its extent, resized so its longer side is object_scale x image_size, colourised with a random "
                "colour and pasted with its exact mask onto a random crop of a skimage.data image; class ids are "
                "synthetic WordNet-style ids n99000000 + Fashion-MNIST label; subset and split files are "
                "class-balanced random draws from train/"),
        "sources": ["fashion_mnist", "backgrounds"],
    }
