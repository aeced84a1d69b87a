"""Embedded robustness sets in the ImageNet-C / -R / -Sketch / -A layouts (generated; never the real sets).

* ``imagenet-c/<corruption>/<severity>/<wnid>/<val file>``: imagecorruptions-imaug ``corrupt()`` of the first
  ``imagenet_c.per_class`` val images of every class (a class-balanced subset, decoded from the val JPEGs),
  the 15 benchmark corruptions x severities 1-5 of formats.yaml; reported as ``embedded-c``.
* ``imagenet-r/<wnid>/<style>_<j>.jpg``: renditions (cartoon, painting, graphic) of Fashion-MNIST test
  objects for a class subset (``imagenet_r.classes``), like ImageNet-R's 200 of 1000 classes.
* ``imagenet-sketch/<wnid>/sketch_<j>.JPEG``: grey pencil-style drawings (object edges and hatched shading on
  paper) for every class.
* ``imagenet-a/<wnid>/hard_<j>.jpg``: a class subset (``imagenet_a.classes``) of hard images: small,
  truncated, low-contrast objects on busy backgrounds.
"""

from __future__ import annotations

import inspect

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy import ndimage
from skimage.filters import sobel

from ..common import fmt_config, sorted_files
from .compose import int_seed, paste, rng_for, save_jpeg
from .context import Context, get_context, run_tasks

# ----------------------------------------------------------------------------------------------- ImageNet-C

_C_SUB = "imagenet-c"


def _warm_up_corruptions() -> None:
    """Compile imagecorruptions' numba kernel (glass_blur) once, in this process, before workers fork; numba's
    on-disk cache is enabled so later runs load it instead of compiling again (about 15 s on 2 cores)."""
    import cv2
    from imagecorruptions import corrupt, corruptions
    cv2.setNumThreads(1)
    kernel = getattr(corruptions, "_shuffle_pixels_njit_glass_blur", None)
    if kernel is not None and hasattr(kernel, "enable_caching"):
        try:
            kernel.enable_caching()
        except Exception:  # noqa: BLE001 - no writable cache location: compile in memory only
            pass
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    for severity in (1, 3):  # the two argument types of glass_blur's per-severity constants
        corrupt(img, severity=severity, corruption_name="glass_blur", seed=0)


def _corrupt_task(task) -> None:
    from imagecorruptions import corrupt, corruption_dict
    c = get_context()
    src, wnid, fname, idx = task
    cfg = fmt_config("imagenet-c")
    quality = int(c.profile["imagenet_c"]["jpeg_quality"])
    optimize = bool(c.profile["imagenet_c"]["jpeg_optimize"])
    with Image.open(src) as im:
        img = np.asarray(im.convert("RGB"))
    for ci, name in enumerate(cfg["corruptions"]):
        takes_seed = "seed" in inspect.signature(corruption_dict[name]).parameters
        for s in cfg["severities"]:
            seed = int_seed(rng_for(c.seed, "imagenet-c", idx, ci, int(s)))
            np.random.seed(seed)  # the library draws from NumPy's global generator
            out = corrupt(img, severity=int(s), corruption_name=name, **({"seed": seed} if takes_seed else {}))
            save_jpeg(np.ascontiguousarray(out), c.root / _C_SUB / name / str(s) / wnid / fname, quality, optimize)


def generate_c(c: Context, workers: int, val_root) -> dict:
    from importlib.metadata import version

    import imagecorruptions  # noqa: F401 - fail early if missing
    per_class = int(c.profile["imagenet_c"]["per_class"])
    tasks = []
    for k, wnid in enumerate(c.wnids):
        names = [n for n in sorted_files(val_root / wnid)][:per_class]
        tasks.extend((val_root / wnid / n, wnid, n, k * per_class + j) for j, n in enumerate(names))
    _warm_up_corruptions()
    run_tasks(_corrupt_task, tasks, workers, desc="imagenet-c (75 corruptions per image)")
    cfg = fmt_config("imagenet-c")
    return {
        "format": "imagenet-c",
        "subfolder": _C_SUB,
        "counts": {"classes": len(c.wnids), "images_per_group": len(tasks),
                   "corruptions": len(cfg["corruptions"]), "severities": len(cfg["severities"])},
        "corruptions": list(cfg["corruptions"]),
        "how": (f"imagecorruptions-imaug {version('imagecorruptions-imaug')} corrupt(image, severity, name) "
                f"applied to the first {per_class} val images of every class of the embedded imagenet set "
                f"(NumPy global seed and the seed argument set per image, corruption and severity); a generated "
                f"corruption set, not ImageNet-C"),
        "sources": ["fashion_mnist", "backgrounds", "imagecorruptions-imaug"],
    }


# ---------------------------------------------------------------------------------------------- renditions

def _outline(mask: np.ndarray, width: int) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=width, border_value=0)


def _rendition(c: Context, style: str, fm_index: int, rng: np.random.Generator) -> np.ndarray:
    size = int(c.profile["imagenet"]["image_size"])
    scale = c.profile["imagenet"]["object_scale"]
    tint = c.profile["tint_range"]
    if style == "painting":
        img = c.object_image("test", fm_index, size, scale, rng)
        im = Image.fromarray(img).filter(ImageFilter.ModeFilter(5)).filter(ImageFilter.SMOOTH_MORE)
        im = ImageOps.posterize(im, 4)
        return np.asarray(im)
    s = max(8, int(round(rng.uniform(*scale) * size)))
    sp = c.sprite("test", fm_index, s, rng)
    x = int(rng.integers(0, size - sp.w + 1))
    y = int(rng.integers(0, size - sp.h + 1))
    base = rng.uniform(*tint, size=3)
    levels = np.digitize(sp.grey, [0.33, 0.66])  # 3 flat tones
    if style == "cartoon":
        bg = np.empty((size, size, 3), dtype=np.uint8)
        bg[:] = (255 * (0.75 + 0.25 * rng.uniform(0, 1, size=3))).astype(np.uint8)
        tones = np.array([0.55, 0.8, 1.0])[levels]
        rgb = (tones[..., None] * base[None, None] * 255).astype(np.uint8)
        rgb[_outline(sp.mask, max(1, size // 48))] = 0
    elif style == "graphic":
        a = (rng.uniform(0.2, 1.0, size=3) * 255).astype(np.uint8)
        b = (rng.uniform(0.2, 1.0, size=3) * 255).astype(np.uint8)
        yy, xx = np.mgrid[0:size, 0:size]
        bg = np.where(((xx + yy) < size)[..., None], a, b).astype(np.uint8)
        tones = np.array([0.7, 0.7, 1.0])[levels]
        rgb = (tones[..., None] * base[None, None] * 255).astype(np.uint8)
    else:
        raise ValueError(f"imagenet_r.styles: unknown style {style!r} (implemented: cartoon, painting, graphic)")
    paste(bg, sp, x, y, rgb=rgb)
    return bg


def _sketch(c: Context, fm_index: int, rng: np.random.Generator) -> np.ndarray:
    size = int(c.profile["imagenet"]["image_size"])
    s = max(8, int(round(rng.uniform(*c.profile["imagenet"]["object_scale"]) * size)))
    sp = c.sprite("test", fm_index, s, rng)
    x = int(rng.integers(0, size - sp.w + 1))
    y = int(rng.integers(0, size - sp.h + 1))
    edges = sobel(sp.grey)
    edges = edges / (edges.max() + 1e-6)
    stroke = np.clip(1.6 * edges, 0, 1)
    stroke[_outline(sp.mask, 1)] = 1.0
    yy, xx = np.mgrid[0:sp.h, 0:sp.w]
    hatch = ((xx + yy) % 4 == 0) & sp.mask
    stroke = np.maximum(stroke, hatch * (1.0 - sp.grey) * 0.5)
    stroke *= rng.uniform(*c.profile["imagenet_sketch"]["line_darkness"])
    paper = 245.0 + rng.normal(0, 3, size=(size, size))
    region = paper[y:y + sp.h, x:x + sp.w]
    region *= 1.0 - stroke
    return np.clip(paper, 0, 255).round().astype(np.uint8)


def _hard(c: Context, fm_index: int, rng: np.random.Generator) -> np.ndarray:
    cfg = c.profile["imagenet_a"]
    size = int(c.profile["imagenet"]["image_size"])
    img = c.background(rng, size, size)
    s = max(8, int(round(rng.uniform(*cfg["object_scale"]) * size)))
    sp = c.sprite("test", fm_index, s, rng)
    t = float(cfg["truncation"])
    x = int(rng.integers(-int(t * sp.w), size - sp.w + int(t * sp.w) + 1))
    y = int(rng.integers(-int(t * sp.h), size - sp.h + int(t * sp.h) + 1))
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + sp.w, size), min(y + sp.h, size)
    local = img[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    k = rng.uniform(*cfg["contrast"])
    rgb = ((1 - k) * local[None, None, :] + k * sp.rgb.astype(np.float64)).round().astype(np.uint8)
    paste(img, sp, x, y, rgb=rgb)
    return img


def _variant_task(task) -> None:
    c = get_context()
    kind, k, j, fm_index, rel, style = task
    rng = rng_for(c.seed, kind, k, j)
    if kind == "imagenet-r":
        img = _rendition(c, style, fm_index, rng)
    elif kind == "imagenet-sketch":
        img = _sketch(c, fm_index, rng)
    else:
        img = _hard(c, fm_index, rng)
    path = c.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format="JPEG", quality=int(c.profile["imagenet"]["jpeg_quality"]))


def generate_variants(c: Context, workers: int) -> dict[str, dict]:
    p = c.profile
    specs = {
        "imagenet-r": (p["imagenet_r"]["classes"], int(p["imagenet_r"]["per_class"])),
        "imagenet-sketch": (list(range(len(c.wnids))), int(p["imagenet_sketch"]["per_class"])),
        "imagenet-a": (p["imagenet_a"]["classes"], int(p["imagenet_a"]["per_class"])),
    }
    styles = p["imagenet_r"]["styles"]
    tasks = []
    for kind, (classes, per_class) in specs.items():
        for k in classes:
            wnid = c.wnids[int(k)]
            pick = rng_for(c.seed, f"{kind}-objects", int(k)).permutation(c.fm.by_class("test", int(k)))[:per_class]
            for j in range(per_class):
                style = styles[j % len(styles)] if kind == "imagenet-r" else ""
                name = {"imagenet-r": f"{style}_{j}.jpg", "imagenet-sketch": f"sketch_{j}.JPEG",
                        "imagenet-a": f"hard_{j}.jpg"}[kind]
                tasks.append((kind, int(k), j, int(pick[j]), f"{kind}/{wnid}/{name}", style))
    run_tasks(_variant_task, tasks, workers, desc="imagenet-r/sketch/a")
    how = {
        "imagenet-r": ("renditions of Fashion-MNIST test objects in the styles imagenet_r.styles (cartoon: flat "
                       "tones and outline; painting: mode-filtered, posterised composite; graphic: two-tone flat "
                       "art) for the class subset imagenet_r.classes; a generated set, not ImageNet-R"),
        "imagenet-sketch": ("grey pencil-style drawings (Sobel edges, outline and hatched shading on noisy "
                            "paper) of Fashion-MNIST test objects, all classes; a generated set, not ImageNet-Sketch"),
        "imagenet-a": ("hard images of Fashion-MNIST test objects for the class subset imagenet_a.classes: "
                       "small (imagenet_a.object_scale), truncated by up to imagenet_a.truncation, colour blended "
                       "towards the local background (imagenet_a.contrast) on busy skimage.data crops; a "
                       "generated set, not ImageNet-A"),
    }
    out = {}
    for kind, (classes, per_class) in specs.items():
        out[kind] = {
            "format": kind,
            "subfolder": kind,
            "counts": {"classes": len(classes), "images": len(classes) * per_class},
            "classes": sorted(c.wnids[int(k)] for k in classes),
            "how": how[kind],
            "sources": ["fashion_mnist"] + ([] if kind == "imagenet-sketch" else ["backgrounds"]),
        }
    return out
