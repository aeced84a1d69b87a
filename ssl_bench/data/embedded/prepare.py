"""``prepare(root, profile, seed)``: write every embedded set and the manifest (see the package docstring)."""

from __future__ import annotations

import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from ...errors import UserError
from ...progress import log
from ...recipes import deep_update
from ..check import VALIDATORS
from ..common import MANIFEST_NAME, PROFILE_DIR, default_workers, profile_names, read_manifest, write_json
from ..resolve import EMBEDDED_NAMES, FORMATS
from . import classification, detection, robustness, segmentation, video
from .context import Context, set_context
from .sources import backgrounds_record, load_backgrounds, load_fashion_mnist

#: Bump when the generator's output changes for the same profile and seed.
GENERATOR_VERSION = "1"

#: Every sub-folder a prepared tree may hold (cleared before regenerating into the same root).
SUBFOLDERS = ("imagenet", "coco", "lvis", "ADEChallengeData2016", "DAVIS", "imagenet-c", "imagenet-r",
              "imagenet-sketch", "imagenet-a")

_LIBRARIES = ("numpy", "Pillow", "scikit-image", "scipy", "opencv-python", "imagecorruptions-imaug",
              "pycocotools")


def load_profile(name: str) -> dict:
    """base.yaml with ``<name>.yaml`` merged over it."""
    if name not in profile_names():
        raise UserError(f"--profile: unknown profile {name!r}; valid: {', '.join(profile_names())}")
    with open(PROFILE_DIR / "base.yaml", encoding="utf-8") as f:
        base = yaml.safe_load(f)
    with open(PROFILE_DIR / f"{name}.yaml", encoding="utf-8") as f:
        over = yaml.safe_load(f) or {}
    return deep_update(base, over)


def _libraries() -> dict[str, str]:
    out = {}
    for name in _LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _check_root(root: Path) -> bool:
    """Whether ``root`` holds an earlier prepared tree; raises when it is a file or a foreign non-empty folder."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a directory")
    if (root / MANIFEST_NAME).exists():
        try:
            manifest = read_manifest(root)
        except UserError:
            manifest = None
        if manifest is None or manifest.get("generator") != __package__:
            raise UserError(f"{root / MANIFEST_NAME}: not written by `ssl-bench data prepare`; choose another --root")
        return True
    if root.is_dir() and any(root.iterdir()):
        raise UserError(f"{root}: not empty and holds no {MANIFEST_NAME}; give an empty or new folder "
                        f"(prepare only overwrites trees it made)")
    return False


def _prepare_root(root: Path) -> None:
    if _check_root(root):
        for sub in SUBFOLDERS:
            if (root / sub).exists():
                shutil.rmtree(root / sub)
        (root / MANIFEST_NAME).unlink()
    root.mkdir(parents=True, exist_ok=True)


def prepare(root: str | Path, profile: str = "tiny", seed: int | None = None, workers: int | None = None,
            check: bool = True) -> dict:
    """Generate the embedded sets under ``root``; returns the manifest (also written to
    ``root/ssl-bench-data.json``). Same profile + seed => byte-identical files, whatever ``workers``."""
    cfg = load_profile(profile)
    seed = int(cfg["seed"] if seed is None else seed)
    if seed < 0:
        raise UserError(f"--seed: {seed} is negative; give an integer >= 0")
    workers = default_workers() if workers is None else max(1, int(workers))
    root = Path(root)
    _check_root(root)
    fm = load_fashion_mnist(cfg["fashion_mnist"])  # before touching root: may raise what to install
    _prepare_root(root)
    base = {"generator": __package__, "generator_version": GENERATOR_VERSION, "profile": profile, "seed": seed}
    write_json(root / MANIFEST_NAME, {**base, "complete": False, "sets": {}})
    log(f"preparing embedded data ({profile} profile, seed {seed}, {workers} worker(s)) in {root}")
    ctx = Context(root=root, profile=cfg, seed=seed, fm=fm, backgrounds=load_backgrounds(cfg))
    set_context(ctx)
    try:
        sets = {"imagenet": classification.generate(ctx, workers)}
        sets["imagenet-c"] = robustness.generate_c(ctx, workers, root / classification.SUBFOLDER / "val")
        sets.update(robustness.generate_variants(ctx, workers))
        sets["coco"], sets["lvis"] = detection.generate(ctx, workers)
        sets["ade20k"] = segmentation.generate(ctx, workers)
        sets["davis"] = video.generate(ctx, workers)
    finally:
        set_context(None)
    for fmt, entry in sets.items():
        entry["dataset_name"] = EMBEDDED_NAMES[fmt]
        entry["seed"] = seed
    manifest = {
        **base,
        "complete": True,
        "note": ("Generated benchmark data for running ssl-bench end to end without downloads. The sets use the "
                 "on-disk layouts of ImageNet, COCO, LVIS, ADE20k, DAVIS and ImageNet-A/R/Sketch/C but are NOT "
                 "those datasets; results on them are reported under each set's dataset_name."),
        "profile_config": cfg,
        "libraries": _libraries(),
        "sources": {
            "fashion_mnist": fm.record,
            "backgrounds": backgrounds_record(cfg),
            "imagecorruptions-imaug": {"licence": "Apache-2.0",
                                       "url": "https://pypi.org/project/imagecorruptions-imaug/",
                                       "used_for": "imagenet-c"},
        },
        "corruption_list_source": "ssl_bench/data/formats.yaml imagenet-c.corruptions",
        "sets": {fmt: sets[fmt] for fmt in FORMATS},
    }
    write_json(root / MANIFEST_NAME, manifest)
    if check:
        bad = []
        for fmt in FORMATS:
            bad.extend(VALIDATORS[fmt](root / sets[fmt]["subfolder"]))
        if bad:
            write_json(root / MANIFEST_NAME, {**manifest, "complete": False})
            raise RuntimeError(f"generated data failed validation ({len(bad)} problems), first: {bad[:3]}")
    names = ", ".join(f"{f} ({s['dataset_name']})" for f, s in manifest["sets"].items())
    log(f"wrote {names}")
    return manifest


def prepare_if_needed(root: str | Path, profile: str = "tiny", seed: int | None = None,
                      workers: int | None = None) -> dict:
    """``prepare`` unless ``root`` already holds a complete tree of this generator version, profile and seed
    (every set folder present); returns the manifest either way."""
    cfg = load_profile(profile)
    want_seed = int(cfg["seed"] if seed is None else seed)
    root = Path(root)
    try:
        manifest = read_manifest(root)
    except UserError:
        manifest = None
    if (manifest is not None and manifest.get("complete") is True
            and manifest.get("generator") == __package__
            and manifest.get("generator_version") == GENERATOR_VERSION
            and manifest.get("profile") == profile and manifest.get("seed") == want_seed
            and all((root / s["subfolder"]).is_dir() for s in manifest["sets"].values())
            and set(manifest["sets"]) == set(FORMATS)):
        log(f"embedded data ({profile} profile, seed {want_seed}) already in {root}: reusing it")
        return manifest
    return prepare(root, profile=profile, seed=want_seed, workers=workers)


__all__ = ["prepare_if_needed", "prepare", "load_profile", "profile_names", "GENERATOR_VERSION", "SUBFOLDERS"]
