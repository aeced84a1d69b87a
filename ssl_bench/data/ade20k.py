"""ADE20k (SceneParsing, ``ADEChallengeData2016``) semantic segmentation: dataset and validator.

Layout: ``ADEChallengeData2016/images/{training,validation}/<name>.jpg`` and
``ADEChallengeData2016/annotations/{training,validation}/<name>.png``: single-channel label maps with values
0..150, where 0 = "other" (not one of the 150 classes). With ``reduce_zero_label`` (the mmseg convention used
by every ADE20k protocol) labels map 0 -> 255 (ignored) and k -> k-1; a stored 255 stays 255.

Class names come from ``objectInfo150.txt`` when present (tab separated ``Idx Ratio Train Val Name``, as
shipped with the release), else from the embedded manifest; ``num_classes`` is the count without "other".
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from ..progress import progress
from .common import embedded_set, first_problems, fmt_config, sorted_files
from .imagefolder import load_rgb, to_float_tensor


def reduce_zero_label(label: np.ndarray) -> np.ndarray:
    """mmseg ``reduce_zero_label``: 0 -> 255, k -> k-1 (1..255 -> 0..254), and 255 stays 255."""
    out = label.astype(np.int64) - 1
    out[label == 0] = 255
    out[label == 255] = 255
    return out


def read_class_names(root: Path) -> list[str] | None:
    """Names of classes 1..K (index 0 of the list = label 1); None when unknown."""
    root = Path(root)
    info = root / fmt_config("ade20k")["class_info_file"]
    if info.is_file():
        names = []
        for no, line in enumerate(info.read_text(encoding="utf-8").splitlines(), start=1):
            parts = line.split("\t")
            if no == 1 and parts[0].strip().lower() == "idx":
                continue
            if len(parts) >= 5 and parts[0].strip().isdigit():
                names.append(parts[4].strip())
        return names or None
    entry = embedded_set(root)
    if entry is not None and entry.get("classes"):
        return list(entry["classes"][1:])  # the manifest lists label 0 ("other") first
    return None


def num_classes(root: Path) -> int:
    names = read_class_names(root)
    return len(names) if names else int(fmt_config("ade20k")["num_classes"])


def pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Sorted ``(image, annotation)`` pairs of a split (images without an annotation are left out)."""
    cfg = fmt_config("ade20k")
    img_dir = Path(root) / "images" / split
    ann_dir = Path(root) / "annotations" / split
    out = []
    for name in sorted_files(img_dir):
        if name.lower().endswith(cfg["image_ext"]):
            ann = ann_dir / (Path(name).stem + cfg["annotation_ext"])
            if ann.is_file():
                out.append((img_dir / name, ann))
    return out


class ADE20kSegmentation(Dataset):
    """``(image, label)``: float CHW image in [0, 1] and an int64 (H, W) label map.

    ``transforms(image, label) -> (image, label)`` runs after conversion and label reduction.
    """

    def __init__(self, root: str | Path, split: str = "validation", transforms: Callable | None = None, *,
                 reduce_zero_label: bool = True):
        self.root = Path(root)
        if split not in fmt_config("ade20k")["splits"]:
            raise UserError(f"split: {split!r} is not an ADE20k split (expected training or validation)")
        self.split = split
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label
        # Refused before any training or scoring, like `ssl-bench data check`: a label map of another mode
        # or size than its image, or with values above the classes. mmseg would crop and train on such a
        # pair (RandomCrop pads/crops image and map separately) or index its class weights out of range;
        # our rule: the dataset is broken, name the first file and count the rest.
        problems: list[str] = []
        check_split(self.root, split, problems, decode_images=False)
        if problems:
            raise UserError(first_problems(problems))
        self.samples = pairs(self.root, split)
        if not self.samples:
            raise UserError(f"{self.root / 'images' / split}: no .jpg images with a matching "
                            f"annotations/{split}/*.png")
        self.class_names = read_class_names(self.root)
        self.num_classes = num_classes(self.root)
        self.ignore_index = 255

    def __len__(self) -> int:
        return len(self.samples)

    def read_label(self, i: int) -> np.ndarray:
        with Image.open(self.samples[i][1]) as im:
            label = np.array(im)
        return reduce_zero_label(label) if self.reduce_zero_label else label.astype(np.int64)

    def __getitem__(self, i: int):
        img = to_float_tensor(load_rgb(self.samples[i][0]))
        label = torch.from_numpy(self.read_label(i))
        if self.transforms is not None:
            img, label = self.transforms(img, label)
        return img, label


def check_ade20k(root: Path) -> list[str]:
    """Every image has a same-sized single-channel PNG label map with values in 0..num_classes."""
    root = Path(root)
    problems: list[str] = []
    for split in fmt_config("ade20k")["splits"]:
        check_split(root, split, problems)
    return problems


def check_split(root: Path, split: str, problems: list[str], *, decode_images: bool = True) -> None:
    """The checks of ``check_ade20k`` for one split; ``decode_images=False`` reads only the images' headers
    (their size), leaving decoding to the loader, while every label map is read whole."""
    cfg = fmt_config("ade20k")
    k = num_classes(root)
    img_dir, ann_dir = root / "images" / split, root / "annotations" / split
    if not img_dir.is_dir():
        problems.append(f"{img_dir}: missing (expected images/{split}/*.jpg)")
    if not ann_dir.is_dir():
        problems.append(f"{ann_dir}: missing (expected annotations/{split}/*.png)")
    if not (img_dir.is_dir() and ann_dir.is_dir()):
        return
    images = {Path(n).stem: n for n in sorted_files(img_dir)}
    anns = {Path(n).stem: n for n in sorted_files(ann_dir)}
    for stem, n in images.items():
        if not n.lower().endswith(cfg["image_ext"]):
            problems.append(f"{img_dir / n}: unexpected file (expected {cfg['image_ext']} images)")
        elif stem not in anns:
            problems.append(f"{img_dir / n}: no label map {ann_dir / (stem + cfg['annotation_ext'])}")
    for stem, n in anns.items():
        if not n.lower().endswith(cfg["annotation_ext"]):
            problems.append(f"{ann_dir / n}: unexpected file (expected {cfg['annotation_ext']} label maps)")
        elif stem not in images:
            problems.append(f"{ann_dir / n}: label map without an image in {img_dir}")
    if not images:
        problems.append(f"{img_dir}: no images")
    for stem in progress(sorted(set(images) & set(anns)), desc=f"check ade20k {split}", unit="img"):
        img_path, ann_path = img_dir / images[stem], ann_dir / anns[stem]
        try:
            with Image.open(img_path) as im:
                size = im.size
                if decode_images:
                    im.load()
        except Exception as e:  # noqa: BLE001
            problems.append(f"{img_path}: cannot be read as an image ({type(e).__name__}: {e})")
            continue
        try:
            with Image.open(ann_path) as im:
                mode, asize = im.mode, im.size
                label = np.array(im)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{ann_path}: cannot be read as a PNG ({type(e).__name__}: {e})")
            continue
        if mode not in ("L", "P"):
            problems.append(f"{ann_path}: mode {mode}, expected a single-channel label map (L)")
            continue
        if asize != size:
            problems.append(f"{ann_path}: size {asize[0]}x{asize[1]} differs from the image's "
                            f"{size[0]}x{size[1]}")
        top = int(label.max()) if label.size else 0
        if top > k:
            bad = sorted(int(v) for v in np.unique(label[label > k]))
            problems.append(f"{ann_path}: label values {bad[:5]} exceed {k} (0 = other, 1..{k} = classes)")
