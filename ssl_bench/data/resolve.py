"""Find a dataset of a given format under a user-supplied root, and the name results are reported under.

``resolve(root, fmt)`` accepts either the dataset folder itself (a real ImageNet with ``train/`` and ``val/``,
a COCO folder with ``annotations/instances_*.json``, ...) or a tree written by ``ssl-bench data prepare``,
whose manifest (``ssl-bench-data.json``) lists one sub-folder per format.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .common import MANIFEST_NAME, embedded_set, fmt_config, is_wnid, read_manifest, sorted_subdirs

#: Every format ssl-bench reads, in the order ``--format all`` checks them.
FORMATS = ("imagenet", "coco", "lvis", "ade20k", "davis", "imagenet-c", "imagenet-r",
           "imagenet-sketch", "imagenet-a")

#: What a folder of each format must contain (for error messages).
EXPECTED = {
    "imagenet": "train/<wnid>/*.JPEG and val/<wnid>/*.JPEG",
    "coco": "annotations/instances_<split>.json and <split>/ image folders",
    "lvis": "lvis_v1_<split>.json (images in <split>2017/ here or in ../coco/)",
    "ade20k": "ADEChallengeData2016/{images,annotations}/{training,validation}/",
    "davis": "JPEGImages/480p/<sequence>/, Annotations/480p/<sequence>/ and ImageSets/2017/",
    "imagenet-c": "<corruption>/<severity 1-5>/<wnid>/*.JPEG",
    "imagenet-r": "<wnid>/*.jpg class folders",
    "imagenet-sketch": "<wnid>/*.JPEG class folders (or sketch/<wnid>/)",
    "imagenet-a": "<wnid>/*.jpg class folders",
}

#: Names of the generated sets (never the name of the real dataset they imitate).
EMBEDDED_NAMES = {
    "imagenet": "embedded-imagenet",
    "coco": "embedded-coco",
    "lvis": "embedded-lvis",
    "ade20k": "embedded-ade20k",
    "davis": "embedded-davis",
    "imagenet-c": "embedded-c",
    "imagenet-r": "embedded-r",
    "imagenet-sketch": "embedded-sketch",
    "imagenet-a": "embedded-a",
}


def check_format_name(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    return fmt


def _has_wnid_dirs(path: Path) -> bool:
    return any(is_wnid(d) for d in sorted_subdirs(path))


def is_format(path: Path, fmt: str) -> bool:
    """Whether ``path`` itself looks like a dataset of format ``fmt`` (a quick structural test)."""
    path = Path(path)
    if not path.is_dir():
        return False
    if fmt == "imagenet":
        return (path / "train").is_dir() and (path / "val").is_dir()
    if fmt == "coco":
        return any((path / "annotations").glob(fmt_config("coco")["annotation_glob"]))
    if fmt == "lvis":
        return any(path.glob(fmt_config("lvis")["annotation_glob"]))
    if fmt == "ade20k":
        return (path / "images").is_dir() and (path / "annotations").is_dir()
    if fmt == "davis":
        return (path / "JPEGImages" / fmt_config("davis")["resolution"]).is_dir()
    if fmt == "imagenet-c":
        known = set(fmt_config("imagenet-c")["corruptions"]) | set(fmt_config("imagenet-c")["extra_corruptions"])
        return any(d in known for d in sorted_subdirs(path))
    if fmt in ("imagenet-a", "imagenet-r", "imagenet-sketch"):
        return _has_wnid_dirs(path)
    raise AssertionError(fmt)


def _nested_candidates(root: Path, fmt: str) -> list[Path]:
    """Conventional sub-folders of a parent folder that may hold the dataset."""
    if fmt == "ade20k":
        return [root / fmt_config("ade20k")["folder"]]
    if fmt == "davis":
        return [root / fmt_config("davis")["folder"]]
    if fmt == "imagenet-sketch":
        return [root / fmt_config("imagenet-sketch")["subfolder"]]
    return []


def resolve(root: Path, fmt: str) -> Path:
    """The folder holding the ``fmt`` dataset under ``root`` (see the module docstring)."""
    check_format_name(fmt)
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such directory (expected a {fmt} dataset: {EXPECTED[fmt]}, "
                        f"or a tree made by `ssl-bench data prepare`)")
    if is_format(root, fmt):
        return root
    for cand in _nested_candidates(root, fmt):
        if is_format(cand, fmt):
            return cand
    manifest = read_manifest(root)
    if manifest is not None:
        entry = manifest["sets"].get(fmt)
        if entry is None:
            raise UserError(f"{root / MANIFEST_NAME}: lists no {fmt} set (it has: "
                            f"{', '.join(sorted(manifest['sets'])) or 'none'}); run `ssl-bench data prepare` again")
        sub = root / entry["subfolder"]
        if not is_format(sub, fmt):
            raise UserError(f"{sub}: listed in {root / MANIFEST_NAME} as the {fmt} set but it is missing or "
                            f"incomplete (expected {EXPECTED[fmt]}); run `ssl-bench data prepare` again")
        return sub
    raise UserError(f"{root}: not a {fmt} dataset (expected {EXPECTED[fmt]}) and no {MANIFEST_NAME} here; "
                    f"point at the dataset folder, or run `ssl-bench data prepare --root {root}` for the "
                    f"embedded data")


def dataset_name(root: Path, fmt: str) -> str:
    """The name results are reported under: the real name (``imagenet``, ``coco``, ...) for a real dataset,
    the generated set's own name (``embedded-imagenet``, ``embedded-c``, ...) for an embedded one."""
    path = resolve(root, fmt)
    entry = embedded_set(path)
    if entry is not None and entry.get("format") == fmt:
        return entry["dataset_name"]
    return fmt
