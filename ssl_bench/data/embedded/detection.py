"""Embedded detection / instance segmentation: COCO-layout scenes and an LVIS-v1-style federated JSON.

``coco/train2017/<id:012d>.jpg``, ``coco/val2017/...``, ``coco/annotations/instances_{train,val}2017.json``
(exact visible masks as compressed RLE, iscrowd 0, categories balanced) and
``lvis/lvis_v1_{train,val}.json`` over the same images: polygons traced from the same masks, categories in
rare / common / frequent groups by their number of annotated training images (thresholds from the profile),
``neg_category_ids`` (verified absent), ``not_exhaustive_category_ids`` (one instance left unannotated), and
``coco_url`` = ``embedded://coco/<split>2017/<file>`` (the last two components locate the file, as for LVIS).
The training JSON is federated like LVIS: a category is annotated on a long-tailed number of the training
images that contain it; the val JSON annotates every present category.
"""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils
from skimage.measure import approximate_polygon, find_contours

from ..common import write_json
from .compose import rng_for, save_jpeg
from .context import Context, get_context, run_tasks, slug

COCO_SUBFOLDER = "coco"
LVIS_SUBFOLDER = "lvis"
_FM_SPLIT = {"train": "train", "val": "test"}


def encode_rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_to_polygons(mask: np.ndarray) -> list[list[float]]:
    """Outer and inner contours of a binary mask as COCO polygons (x, y pixel-centre coordinates, rounded to
    0.01); the union that COCO tools rasterise from them fills holes."""
    padded = np.pad(mask.astype(np.float32), 1)
    polys = []
    for contour in find_contours(padded, 0.5):
        contour = approximate_polygon(contour - 1.0, tolerance=0.5)
        if len(contour) < 4:  # closed: first point repeated, so >= 3 distinct points
            continue
        xy = np.round(contour[:, ::-1].reshape(-1), 2)
        polys.append([float(v) for v in xy])
    return polys


def place_objects(c: Context, img: np.ndarray, objects: list[tuple[int, int]], fm_split: str,
                  rng: np.random.Generator, cfg: dict, *, occlusion: bool = True) -> list[tuple[int, np.ndarray]]:
    """Paste objects in order (later ones in front). A placement that would hide more than max_occlusion of
    an earlier object, or leave it fewer than min_visible_pixels, is retried elsewhere (then smaller); an
    object that cannot be placed is left out. Returns (class, visible mask) per placed object."""
    H, W = img.shape[:2]
    lo, hi = cfg["object_size"]
    max_occ = float(c.profile["coco"]["max_occlusion"])
    tries = int(c.profile["coco"]["placement_tries"])
    min_vis = int(cfg.get("min_visible_pixels", 1))
    placed: list[list] = []  # [class, visible mask, full area]
    for k, fm_index in objects:
        size = int(rng.integers(lo, hi + 1))
        size = min(size, min(H, W) - 2)
        done = False
        for _round in range(3):
            sp = c.sprite(fm_split, fm_index, size, rng)
            if sp.mask.sum() >= min_vis:
                for _ in range(tries):
                    x = int(rng.integers(0, W - sp.w + 1))
                    y = int(rng.integers(0, H - sp.h + 1))
                    cover = np.zeros((H, W), dtype=bool)
                    cover[y:y + sp.h, x:x + sp.w] = sp.mask
                    ok = True
                    if occlusion:
                        for _, vis, area in placed:
                            left = np.count_nonzero(vis & ~cover)
                            if left < (1.0 - max_occ) * area or left < min_vis:
                                ok = False
                                break
                    if ok:
                        for p in placed:
                            p[1] = p[1] & ~cover
                        region = img[y:y + sp.h, x:x + sp.w]
                        region[sp.mask] = sp.rgb[sp.mask]
                        placed.append([k, cover, int(sp.mask.sum())])
                        done = True
                        break
            if done:
                break
            size = max(lo // 2, int(size * 0.75))
    return [(k, vis) for k, vis, _ in placed if np.count_nonzero(vis) >= min_vis]


def _render(task) -> dict:
    c = get_context()
    split, i, image_id, W, H, objects = task
    cfg = c.profile["coco"]
    rng = rng_for(c.seed, f"coco-{split}", i)
    img = c.background(rng, W, H)
    placed = place_objects(c, img, objects, _FM_SPLIT[split], rng, cfg)
    file_name = f"{image_id:012d}.jpg"
    save_jpeg(img, c.root / COCO_SUBFOLDER / f"{split}2017" / file_name, cfg["jpeg_quality"])
    out = []
    for k, vis in placed:
        rle = encode_rle(vis)
        polys = mask_to_polygons(vis)
        prle = mask_utils.merge(mask_utils.frPyObjects(polys, H, W)) if polys else None
        out.append({
            "class": k,
            "rle": rle,
            "bbox": [float(v) for v in mask_utils.toBbox(mask_utils.encode(np.asfortranarray(vis.astype(np.uint8))))],
            "area": int(np.count_nonzero(vis)),
            "polygons": polys,
            "poly_bbox": [float(v) for v in mask_utils.toBbox(prle)] if prle else None,
            "poly_area": int(mask_utils.area(prle)) if prle else 0,
        })
    return {"id": image_id, "file_name": file_name, "width": W, "height": H, "split": split, "objects": out}


def _plan(c: Context, split: str, n_images: int, first_id: int) -> list[tuple]:
    cfg = c.profile["coco"]
    rng = rng_for(c.seed, f"coco-plan-{split}")
    K = len(c.classes)
    widths = rng.integers(cfg["width"][0], cfg["width"][1] + 1, size=n_images)
    heights = rng.integers(cfg["height"][0], cfg["height"][1] + 1, size=n_images)
    n_obj = rng.integers(cfg["objects_per_image"][0], cfg["objects_per_image"][1] + 1, size=n_images)
    # balanced categories: class k appears floor/ceil(N / K) times over the split, in random order
    labels = rng.permutation(np.arange(int(n_obj.sum())) % K)
    tasks, pos = [], 0
    for i in range(n_images):
        objs = []
        for k in labels[pos:pos + n_obj[i]]:
            objs.append((int(k), c.fm_choice(_FM_SPLIT[split], int(k), rng)))
        pos += n_obj[i]
        tasks.append((split, i, first_id + i, int(widths[i]), int(heights[i]), objs))
    return tasks


def _licences(c: Context) -> list[dict]:
    return [{"id": 1, "name": "generated by ssl-bench from Fashion-MNIST (MIT) objects on skimage.data "
                              "backgrounds (CC0 / public domain; see ssl-bench-data.json)",
             "url": c.profile["fashion_mnist"]["url"]}]


def _coco_json(c: Context, records: list[dict], first_ann_id: int) -> tuple[dict, int]:
    sup = c.profile["coco"]["supercategories"]
    cats = [{"id": k + 1, "name": name, "supercategory": sup[k]} for k, name in enumerate(c.classes)]
    images, anns = [], []
    ann_id = first_ann_id
    for r in records:
        images.append({"id": r["id"], "file_name": r["file_name"], "width": r["width"], "height": r["height"],
                       "license": 1})
        for o in r["objects"]:
            anns.append({"id": ann_id, "image_id": r["id"], "category_id": o["class"] + 1,
                         "segmentation": o["rle"], "area": o["area"], "bbox": o["bbox"], "iscrowd": 0})
            ann_id += 1
    info = {"description": "ssl-bench embedded detection set (generated, not COCO)", "version": "1",
            "contributor": "ssl-bench"}
    return {"info": info, "licenses": _licences(c), "images": images, "annotations": anns,
            "categories": cats}, ann_id


def _lvis_json(c: Context, train: list[dict], val: list[dict]) -> tuple[dict, dict, dict]:
    cfg = c.profile["lvis"]
    K = len(c.classes)
    rng = rng_for(c.seed, "lvis-federation")
    rare_max, common_max = int(cfg["rare_max_images"]), int(cfg["common_max_images"])

    def present(r):
        out = {}
        for j, o in enumerate(r["objects"]):
            if o["polygons"]:
                out.setdefault(o["class"], []).append(j)
        return out

    # which training images each category is annotated on: long-tailed, by group
    avail = {k: [r["id"] for r in train if k in present(r)] for k in range(K)}
    tie = rng.permutation(K)
    order = sorted(range(K), key=lambda k: (-len(avail[k]), int(tie[k])))
    groups = cfg["group_sizes"]
    if sum(groups.values()) != K:
        raise ValueError(f"lvis.group_sizes {groups} must sum to the {K} categories")
    chosen: dict[int, set] = {}
    pos = 0
    for g in ("f", "c", "r"):
        for k in order[pos:pos + int(groups[g])]:
            ids = avail[k]
            if g == "f":
                n = len(ids)
            elif g == "c":
                n = int(rng.integers(rare_max + 1, common_max + 1))
            else:
                n = int(rng.integers(1, rare_max + 1))
            n = min(n, len(ids))
            chosen[k] = set(int(v) for v in rng.choice(ids, n, replace=False)) if n else set()
        pos += int(groups[g])

    def build(records, split, annotated, first_ann_id):
        images, anns, ann_id = [], [], first_ann_id
        for r in records:
            pres = present(r)
            pos_cats = sorted(k for k in pres if annotated(k, r["id"]))
            absent = [k for k in range(K) if k not in pres]
            rr = rng_for(c.seed, f"lvis-{split}", r["id"])
            neg = sorted(int(k) for k in rr.choice(absent, min(int(cfg["neg_per_image"]), len(absent)), replace=False))
            not_exh = []
            for k in pos_cats:
                idx = pres[k]
                if len(idx) >= 2 and rr.random() < float(cfg["not_exhaustive_fraction"]):
                    not_exh.append(k)
                    idx = idx[:-1]  # the front-most instance stays unannotated
                for j in idx:
                    o = r["objects"][j]
                    anns.append({"id": ann_id, "image_id": r["id"], "category_id": k + 1,
                                 "segmentation": o["polygons"], "area": o["poly_area"], "bbox": o["poly_bbox"]})
                    ann_id += 1
            images.append({"id": r["id"], "width": r["width"], "height": r["height"], "license": 1,
                           "coco_url": f"embedded://{COCO_SUBFOLDER}/{r['split']}2017/{r['file_name']}",
                           "neg_category_ids": [k + 1 for k in neg],
                           "not_exhaustive_category_ids": [k + 1 for k in not_exh]})
        return images, anns, ann_id

    tr_images, tr_anns, next_id = build(train, "train", lambda k, i: i in chosen[k], 1)
    va_images, va_anns, _ = build(val, "val", lambda k, i: True, next_id)
    image_count = {k: len({a["image_id"] for a in tr_anns if a["category_id"] == k + 1}) for k in range(K)}
    inst_count = {k: sum(1 for a in tr_anns if a["category_id"] == k + 1) for k in range(K)}

    def freq(n):
        return "r" if n <= rare_max else ("c" if n <= common_max else "f")

    cats = [{"id": k + 1, "name": slug(name), "synonyms": [slug(name)], "def": f"Fashion-MNIST class {name!r}",
             "synset": f"{c.wnids[k]}", "frequency": freq(image_count[k]), "image_count": image_count[k],
             "instance_count": inst_count[k]} for k, name in enumerate(c.classes)]
    got = {g: sum(1 for cat in cats if cat["frequency"] == g) for g in ("r", "c", "f")}
    if not all(got.values()) or any(n == 0 for n in image_count.values()):
        raise ValueError(f"lvis: frequency groups {got} (image counts {image_count}) leave a group empty; "
                         f"raise coco.train_images or lower lvis.common_max_images in the profile")
    info = {"description": "ssl-bench embedded LVIS-style set (generated, not LVIS)", "version": "1"}
    train_json = {"info": info, "licenses": _licences(c), "images": tr_images, "annotations": tr_anns,
                  "categories": cats}
    val_json = {"info": info, "licenses": _licences(c), "images": va_images, "annotations": va_anns,
                "categories": cats}
    return train_json, val_json, got


def generate(c: Context, workers: int) -> tuple[dict, dict]:
    cfg = c.profile["coco"]
    n_train, n_val = int(cfg["train_images"]), int(cfg["val_images"])
    tasks = _plan(c, "train", n_train, 1) + _plan(c, "val", n_val, n_train + 1)
    records = run_tasks(_render, tasks, workers, desc="coco")
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    if c.profile["coco"]["segmentation"] != "rle":
        raise ValueError("coco.segmentation: only 'rle' (exact masks) is implemented")
    ann_root = c.root / COCO_SUBFOLDER / "annotations"
    tr_json, next_id = _coco_json(c, train, 1)
    va_json, _ = _coco_json(c, val, next_id)
    write_json(ann_root / "instances_train2017.json", tr_json)
    write_json(ann_root / "instances_val2017.json", va_json)
    if c.profile["lvis"]["segmentation"] != "polygon":
        raise ValueError("lvis.segmentation: only 'polygon' (the LVIS convention) is implemented")
    ltr, lva, groups = _lvis_json(c, train, val)
    write_json(c.root / LVIS_SUBFOLDER / "lvis_v1_train.json", ltr)
    write_json(c.root / LVIS_SUBFOLDER / "lvis_v1_val.json", lva)
    sources = ["fashion_mnist", "backgrounds"]
    coco_entry = {
        "format": "coco", "subfolder": COCO_SUBFOLDER,
        "counts": {"classes": len(c.classes), "train2017": len(train), "val2017": len(val),
                   "annotations_train2017": len(tr_json["annotations"]),
                   "annotations_val2017": len(va_json["annotations"])},
        "class_names": c.classes,
        "how": ("scenes of several Fashion-MNIST objects (training split for train2017, test split for val2017; "
                "categories balanced) pasted in order onto a skimage.data crop, a later object hiding at most "
                "coco.max_occlusion of an earlier one; annotations are the exact visible masks (compressed RLE, "
                "iscrowd 0) with their tight boxes"),
        "sources": sources,
    }
    lvis_entry = {
        "format": "lvis", "subfolder": LVIS_SUBFOLDER, "image_root": COCO_SUBFOLDER,
        "counts": {"classes": len(c.classes), "train": len(ltr["images"]), "val": len(lva["images"]),
                   "annotations_train": len(ltr["annotations"]), "annotations_val": len(lva["annotations"]),
                   "frequency_groups": groups},
        "class_names": c.classes,
        "how": ("the coco set's images and masks in LVIS v1 form: polygons traced from the exact masks (holes "
                "filled); training annotations federated with a long-tailed number of annotated images per "
                "category (lvis.group_sizes, frequency thresholds lvis.rare_max_images / common_max_images); "
                "neg_category_ids drawn from truly absent categories; not_exhaustive_category_ids where one "
                "instance was left unannotated; val annotates every present category"),
        "sources": sources,
    }
    return coco_entry, lvis_entry
