"""COCO instances JSON and LVIS v1 JSON: detection / instance segmentation datasets and validators.

Layouts read:

* COCO 2017: ``<root>/annotations/instances_<split>.json`` with the images in ``<root>/<split>/<file_name>``
  (``train2017``, ``val2017``). Segmentations are polygons (list of ``[x1, y1, x2, y2, ...]``), uncompressed
  RLE (``{"size": [h, w], "counts": [ints]}``, used by crowd regions) or compressed RLE (``counts`` string).
* LVIS v1: ``<root>/lvis_v1_<split>.json``; categories carry ``frequency`` (r/c/f), images carry
  ``neg_category_ids`` and ``not_exhaustive_category_ids`` and locate their file by the last two components
  of ``coco_url`` (``<split folder>/<file name>``) under the COCO image root: ``<root>`` itself when it holds
  the ``*2017/`` folders, else the sibling ``../coco`` (the detectron2 layout ``datasets/{lvis,coco}``), or the
  ``image_root`` named in the embedded manifest.

Items are ``(image, target)`` in the torchvision detection format: ``image`` a float CHW tensor in [0, 1];
``target`` with ``boxes`` (N, 4) float32 xyxy, ``labels`` (N,) int64 in 1..K (contiguous, in sorted category
id order; 0 is background), ``masks`` (N, H, W) uint8, ``image_id``, ``area``, ``iscrowd``; LVIS adds
``neg_labels`` and ``not_exhaustive_labels``. ``cat_id_to_label`` / ``label_to_cat_id`` map the ids.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import Dataset

from ..errors import UserError
from ..progress import progress
from .common import embedded_set, first_problems, fmt_config, load_json, sorted_subdirs
from .imagefolder import load_rgb, to_float_tensor

# ------------------------------------------------------------------------------------------------ layout

def coco_splits(root: Path) -> dict[str, tuple[Path, Path]]:
    """``split -> (annotation json, image folder)`` for every ``annotations/instances_<split>.json``."""
    root = Path(root)
    out = {}
    for p in sorted((root / "annotations").glob(fmt_config("coco")["annotation_glob"])):
        split = p.stem[len("instances_"):]
        out[split] = (p, root / split)
    return out


def lvis_splits(root: Path) -> dict[str, Path]:
    """``split -> annotation json`` for every ``lvis_v1_<split>.json``."""
    root = Path(root)
    return {p.stem[len("lvis_v1_"):]: p for p in sorted(root.glob(fmt_config("lvis")["annotation_glob"]))}


def lvis_image_root(root: Path) -> Path:
    """The folder holding the COCO ``*2017/`` image folders for the LVIS set at ``root``."""
    root = Path(root)
    entry = embedded_set(root)
    if entry is not None and entry.get("image_root"):
        return root.parent / entry["image_root"]
    if any(d.endswith("2017") for d in sorted_subdirs(root)):
        return root
    sibling = root.parent / "coco"
    if any(d.endswith("2017") for d in sorted_subdirs(sibling)):
        return sibling
    raise UserError(f"{root}: cannot find the COCO images for LVIS (expected train2017/ and val2017/ in "
                    f"{root} or in {sibling})")


def lvis_file_name(img: dict) -> str:
    """Relative image path of an LVIS image: ``file_name`` if present, else the tail of ``coco_url``."""
    if img.get("file_name"):
        return img["file_name"]
    return "/".join(str(img["coco_url"]).split("/")[-2:])


# ----------------------------------------------------------------------------------------------- masks

def ann_to_rle(segm, height: int, width: int) -> dict:
    """Any COCO segmentation (polygons, uncompressed or compressed RLE) -> compressed RLE."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, height, width)
    rle = dict(segm)
    if isinstance(rle["counts"], str):
        rle["counts"] = rle["counts"].encode("ascii")
    return rle


def ann_to_mask(segm, height: int, width: int) -> np.ndarray:
    rle = ann_to_rle(segm, height, width)
    with warnings.catch_warnings():  # pycocotools' Cython decode predates NumPy 2's __array__(copy=) protocol
        warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)
        return mask_utils.decode(rle)


# ---------------------------------------------------------------------------------------------- dataset

class InstanceDataset(Dataset):
    """Detection / instance segmentation from a COCO or LVIS JSON (see the module docstring).

    ``transforms(image, target) -> (image, target)`` is applied after conversion to tensors.
    """

    lvis: bool  # the subclass's format: COCO or LVIS

    def __init__(self, image_root: str | Path, ann_file: str | Path, transforms: Callable | None = None, *,
                 with_masks: bool = True):
        self.image_root = Path(image_root)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.with_masks = with_masks
        # Refused before any training or scoring: every problem `ssl-bench data check` reports, image
        # decoding aside (the loader names an undecodable file). The reference toolkits are lenient
        # with some of them -- pycocotools indexes an annotation of an unknown image id and COCOeval
        # never scores it; mmdet's CocoDataset drops boxes under 1 pixel wide or high; detectron2
        # asserts on an unknown category -- so a number computed past them depends on the toolkit.
        # Our rule: the annotation file is broken, refuse it, name the first problem and count the rest.
        problems: list[str] = []
        data = check_instances_json(self.ann_file, self.image_root, problems, lvis=self.lvis, decode=False)
        if problems:
            raise UserError(first_problems(problems))
        self.categories = sorted(data["categories"], key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in self.categories]
        self.cat_id_to_label = {cid: i + 1 for i, cid in enumerate(self.cat_ids)}
        self.label_to_cat_id = {v: k for k, v in self.cat_id_to_label.items()}
        self.images = list(data["images"])
        self.ids = [img["id"] for img in self.images]
        self.anns_by_image: dict[int, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            self.anns_by_image[ann["image_id"]].append(ann)
        self.dataset = data  # the raw JSON, for evaluators

    @property
    def num_classes(self) -> int:
        """K (labels are 1..K; add one for the background class)."""
        return len(self.cat_ids)

    def image_path(self, img: dict) -> Path:
        return self.image_root / (lvis_file_name(img) if self.lvis else img["file_name"])

    def __len__(self) -> int:
        return len(self.images)

    def target(self, i: int) -> dict:
        img = self.images[i]
        h, w = int(img["height"]), int(img["width"])
        anns = self.anns_by_image.get(img["id"], [])
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat_id_to_label[a["category_id"]] for a in anns], dtype=torch.int64),
            "image_id": int(img["id"]),
            "area": torch.tensor([float(a.get("area", 0.0)) for a in anns], dtype=torch.float32),
            "iscrowd": torch.tensor([int(a.get("iscrowd", 0)) for a in anns], dtype=torch.int64),
        }
        if self.with_masks:
            if anns:
                masks = np.stack([ann_to_mask(a["segmentation"], h, w) for a in anns])
            else:
                masks = np.zeros((0, h, w), dtype=np.uint8)
            target["masks"] = torch.from_numpy(masks)
        if self.lvis:
            for key, out in (("neg_category_ids", "neg_labels"),
                             ("not_exhaustive_category_ids", "not_exhaustive_labels")):
                target[out] = torch.tensor([self.cat_id_to_label[c] for c in img.get(key, [])], dtype=torch.int64)
        return target

    @classmethod
    def from_root(cls, root: str | Path, split: str, transforms=None, **kw) -> "InstanceDataset":
        """The ``split`` of the dataset at ``root`` (its ``split_files``: annotation JSON, image folder)."""
        root = Path(root)
        splits = cls.split_files(root)
        if split not in splits:
            raise UserError(f"{cls.annotation_file(root, split)}: missing (splits here: {', '.join(splits) or 'none'})")
        ann, images = splits[split]
        return cls(images, ann, transforms, **kw)

    def __getitem__(self, i: int):
        img = to_float_tensor(load_rgb(self.image_path(self.images[i])))
        target = self.target(i)
        if self.transforms is not None:
            img, target = self.transforms(img, target)
        return img, target


class CocoDetection(InstanceDataset):
    """COCO instances JSON. ``CocoDetection.from_root(root, "val2017")``."""

    lvis = False

    @staticmethod
    def split_files(root: Path) -> dict[str, tuple[Path, Path]]:
        return coco_splits(root)

    @staticmethod
    def annotation_file(root: Path, split: str) -> Path:
        return root / "annotations" / f"instances_{split}.json"


class LvisDetection(InstanceDataset):
    """LVIS v1 JSON. ``LvisDetection.from_root(root, "val")`` finds the COCO images (see lvis_image_root)."""

    lvis = True

    @staticmethod
    def split_files(root: Path) -> dict[str, tuple[Path, Path]]:
        return {split: (ann, lvis_image_root(root)) for split, ann in lvis_splits(root).items()}

    @staticmethod
    def annotation_file(root: Path, split: str) -> Path:
        return root / f"lvis_v1_{split}.json"


def detection_collate(batch):
    """Collate for detection loaders: tuple of images, tuple of targets (sizes differ)."""
    return tuple(zip(*batch))


# ------------------------------------------------------------------------------------------- validators

def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_segmentation(where: str, segm, h: int | None, w: int | None, problems: list[str]) -> None:
    if isinstance(segm, list):
        if not segm:
            problems.append(f"{where}: empty polygon list")
        for j, poly in enumerate(segm):
            if not isinstance(poly, list) or not all(_is_num(v) for v in poly):
                problems.append(f"{where}[{j}]: polygon must be a list of numbers [x1, y1, x2, y2, ...]")
            elif len(poly) < 6 or len(poly) % 2:
                problems.append(f"{where}[{j}]: polygon has {len(poly)} numbers, expected an even count >= 6")
        return
    if isinstance(segm, dict):
        size, counts = segm.get("size"), segm.get("counts")
        if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
            problems.append(f"{where}.size: expected [height, width], got {size!r}")
            return
        if h is not None and w is not None and size != [h, w]:
            problems.append(f"{where}.size: {size} differs from the image's [height, width] [{h}, {w}]")
        if isinstance(counts, list):
            if not all(_is_int(v) and v >= 0 for v in counts):
                problems.append(f"{where}.counts: uncompressed RLE counts must be non-negative integers")
            elif sum(counts) != size[0] * size[1]:
                problems.append(f"{where}.counts: run lengths sum to {sum(counts)}, expected height x width = "
                                f"{size[0] * size[1]}")
        elif isinstance(counts, str):
            try:
                mask_utils.area({"size": size, "counts": counts.encode("ascii")})
            except Exception as e:  # noqa: BLE001
                problems.append(f"{where}.counts: not a valid compressed RLE string ({e})")
        else:
            problems.append(f"{where}.counts: expected a string (compressed RLE) or a list of integers")
        return
    problems.append(f"{where}: expected polygons (list) or RLE (object), got {type(segm).__name__}")


def _has_new_id(entry, where: str, seen, kind: str, problems: list[str]) -> bool:
    """Whether ``entry`` is an object with an integer id; a repeated id is a problem but still counts."""
    if not isinstance(entry, dict) or not _is_int(entry.get("id")):
        problems.append(f"{where}.id: missing or not an integer")
        return False
    if entry["id"] in seen:
        problems.append(f"{where}.id: duplicate {kind} id {entry['id']}")
    return True


def check_instances_json(path: Path, image_root: Path, problems: list[str], *, lvis: bool = False,
                         check_files: bool = True, decode: bool = True) -> dict | None:
    """Validate one COCO (or LVIS) JSON and the image files it names; appends problems, returns the data.
    ``decode=False`` checks that each image file exists but leaves decoding to the loader."""
    data = load_json(path, problems)
    if data is None:
        return None
    kind = "LVIS" if lvis else "COCO"
    if not isinstance(data, dict):
        problems.append(f"{path}: top level must be an object with images, annotations and categories")
        return None
    ok = True
    for key in fmt_config("lvis" if lvis else "coco")["required_keys"]:
        if not isinstance(data.get(key), list):
            problems.append(f"{path}: {key}: missing or not a list (required in a {kind} JSON)")
            ok = False
    if not ok:
        return None

    cats: set = set()
    for i, c in enumerate(data["categories"]):
        where = f"{path}: categories[{i}]"
        if not _has_new_id(c, where, cats, "category", problems):
            continue
        cats.add(c["id"])
        if not isinstance(c.get("name"), str):
            problems.append(f"{where}.name: missing or not a string")
        if lvis and c.get("frequency") not in fmt_config("lvis")["frequencies"]:
            problems.append(f"{where}.frequency: {c.get('frequency')!r}, expected one of r, c, f")

    images: dict = {}
    for i, img in enumerate(data["images"]):
        where = f"{path}: images[{i}]"
        if not _has_new_id(img, where, images, "image", problems):
            continue
        h, w = img.get("height"), img.get("width")
        if not (_is_int(h) and _is_int(w) and h > 0 and w > 0):
            problems.append(f"{where}: height and width must be positive integers, got {h!r} x {w!r}")
            h = w = None
        images[img["id"]] = (i, h, w)
        if lvis:
            if not isinstance(img.get("coco_url") or img.get("file_name"), str):
                problems.append(f"{where}.coco_url: missing (LVIS locates images by coco_url)")
                continue
            for key in ("neg_category_ids", "not_exhaustive_category_ids"):
                ids = img.get(key)
                if not isinstance(ids, list):
                    problems.append(f"{where}.{key}: missing or not a list")
                    continue
                for cid in ids:
                    if cid not in cats:
                        problems.append(f"{where}.{key}: unknown category id {cid!r}")
            rel = lvis_file_name(img)
        else:
            if not isinstance(img.get("file_name"), str):
                problems.append(f"{where}.file_name: missing or not a string")
                continue
            rel = img["file_name"]
        if check_files and not decode:
            if not (image_root / rel).is_file():
                problems.append(f"{where}: image file {image_root / rel} does not exist")
        elif check_files:
            f = image_root / rel
            try:
                with Image.open(f) as im:
                    size = im.size
                if h is not None and size != (w, h):
                    problems.append(f"{where}: {f} is {size[0]}x{size[1]} but width x height say {w}x{h}")
            except FileNotFoundError:
                problems.append(f"{where}: image file {f} does not exist")
            except Exception as e:  # noqa: BLE001
                problems.append(f"{where}: {f} cannot be read as an image ({type(e).__name__}: {e})")

    ann_ids: set = set()
    present: dict = defaultdict(set)
    for i, a in enumerate(progress(data["annotations"], desc=f"check {path.name}", unit="ann")):
        where = f"{path}: annotations[{i}]"
        if not isinstance(a, dict):
            problems.append(f"{where}: not an object")
            continue
        if not _is_int(a.get("id")):
            problems.append(f"{where}.id: missing or not an integer")
        elif a["id"] in ann_ids:
            problems.append(f"{where}.id: duplicate annotation id {a['id']}")
        else:
            ann_ids.add(a["id"])
        h = w = None
        if a.get("image_id") not in images:
            problems.append(f"{where}.image_id: unknown image id {a.get('image_id')!r}")
        else:
            _, h, w = images[a["image_id"]]
        if a.get("category_id") not in cats:
            problems.append(f"{where}.category_id: unknown category id {a.get('category_id')!r}")
        elif a.get("image_id") in images:
            present[a["image_id"]].add(a["category_id"])
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_num(v) for v in bbox)):
            problems.append(f"{where}.bbox: expected [x, y, width, height] numbers, got {bbox!r}")
        elif bbox[2] <= 0 or bbox[3] <= 0:
            problems.append(f"{where}.bbox: width and height must be > 0, got {bbox}")
        elif h is not None and (bbox[0] < -1 or bbox[1] < -1 or bbox[0] + bbox[2] > w + 1
                                or bbox[1] + bbox[3] > h + 1):
            problems.append(f"{where}.bbox: {bbox} extends outside the {w}x{h} image")
        if not _is_num(a.get("area")) or a["area"] < 0:
            problems.append(f"{where}.area: missing or not a non-negative number")
        if not lvis and a.get("iscrowd", 0) not in (0, 1):
            problems.append(f"{where}.iscrowd: {a.get('iscrowd')!r}, expected 0 or 1")
        if "segmentation" in a:
            _check_segmentation(f"{where}.segmentation", a["segmentation"], h, w, problems)
        elif lvis:
            problems.append(f"{where}.segmentation: missing (LVIS annotations are instance masks)")

    if lvis:
        for img in data["images"]:
            if not isinstance(img, dict) or img.get("id") not in images:
                continue
            both = set(img.get("neg_category_ids") or []) & present.get(img["id"], set())
            if both:
                i = images[img["id"]][0]
                problems.append(f"{path}: images[{i}].neg_category_ids: {sorted(both)} are annotated in this "
                                f"image, so they cannot be verified absent")
    return data


def check_coco(root: Path) -> list[str]:
    root = Path(root)
    splits = coco_splits(root)
    if not splits:
        return [f"{root / 'annotations'}: no instances_<split>.json (expected e.g. "
                f"annotations/instances_val2017.json)"]
    problems: list[str] = []
    for ann, images in splits.values():
        if not images.is_dir():
            problems.append(f"{images}: missing (images of {ann.name})")
        check_instances_json(ann, images, problems, check_files=images.is_dir())
    return problems


def check_lvis(root: Path) -> list[str]:
    root = Path(root)
    splits = lvis_splits(root)
    if not splits:
        return [f"{root}: no lvis_v1_<split>.json (expected e.g. {root / 'lvis_v1_val.json'})"]
    problems: list[str] = []
    try:
        image_root, check_files = lvis_image_root(root), True
    except UserError as e:
        problems.append(str(e))
        image_root, check_files = root, False
    for ann in splits.values():
        check_instances_json(ann, image_root, problems, lvis=True, check_files=check_files)
    return problems
