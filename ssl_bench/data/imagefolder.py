"""ImageNet-style classification data: ImageFolder trees, subset/split files, ImageNet-A/R/Sketch/C.

Layouts read (exactly the real ones):

* ImageNet: ``<root>/train/<wnid>/*.JPEG`` and ``<root>/val/<wnid>/*.JPEG`` (val re-sorted into class folders,
  as every SSL code base expects). Classes are the sorted folder names; label = index in that list.
* SimCLR subset files (``1percent.txt``, ``10percent.txt``; github.com/google-research/simclr): one training
  file name per line (``n01440764_10026.JPEG``); the class is the part before the first ``_`` and the file
  lives in ``train/<class>/<name>``.
* MSN low-shot split files (github.com/facebookresearch/msn, ``imagenet_subsets{1,2,3}/{k}imgs_class.txt``):
  the same line format, with exactly ``k`` images of every class. ``{k}imgs_class.txt`` in a folder named
  ``imagenet_subsets<s>`` is split ``s`` of the ``k``-shot setting; MSN reports mean +- std over the splits.
* ImageNet-A / ImageNet-R: ``<root>/<wnid>/*.jpg`` for a 200-wnid subset of the 1000 classes. Labels index
  ``class_subset`` (the sorted wnids present); ``logit_indices(full_classes)`` gives the columns to slice
  from 1000-way logits (before argmax) so that the argmax is directly comparable with the label.
* ImageNet-Sketch: ``<root>/sketch/<wnid>/*.JPEG`` (or ``<root>/<wnid>/``), all 1000 classes.
* ImageNet-C: ``<root>/<corruption>/<severity 1-5>/<wnid>/*.JPEG``; ``ImageNetC`` iterates the
  ``(corruption, severity, dataset)`` groups.

Validators (``check_*``) never raise on a problem: they return one line per problem, starting with the file
(and ``:LINE`` for subset and split files).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import UserError
from ..progress import progress
from .common import (embedded_set, first_problems, fmt_config, is_image_file, is_wnid, sorted_files,
                     sorted_subdirs)

# ----------------------------------------------------------------------------------------------- loading

def load_rgb(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Decode an image to RGB. With ``draft_size``, a JPEG is decoded at the smallest DCT scale (1/2, 1/4,
    1/8) that still keeps both sides >= ``draft_size``: much faster when the transform shrinks it anyway."""
    try:
        with Image.open(path) as im:
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's decode failures
        raise UserError(f"{path}: cannot be read as an image ({type(err).__name__}: {err}); replace or remove "
                        "it (`ssl-bench data check` lists every such file)") from None


def to_float_tensor(img: Image.Image) -> torch.Tensor:
    """PIL RGB image -> float CHW tensor in [0, 1] (the default when no transform is given)."""
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


class ImageFolderDataset(Dataset):
    """``(image, label)`` pairs from ``<root>/<class>/<image>`` folders.

    ``classes`` are the sorted class folder names (wnids), ``samples`` the list of ``(path, label)``,
    ``targets`` the labels. ``transform`` gets the PIL RGB image; without one the item is a float tensor.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, *,
                 classes: Sequence[str] | None = None, samples: Sequence[tuple[str, int]] | None = None,
                 draft_size: int | None = None):
        self.root = Path(root)
        self.transform = transform
        self.draft_size = draft_size
        if classes is None:
            if not self.root.is_dir():
                raise UserError(f"{self.root}: no such directory (expected <class>/<image> folders)")
            classes = sorted_subdirs(self.root)
            if not classes:
                raise UserError(f"{self.root}: no class folders (expected <wnid>/*.JPEG)")
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        if samples is None:
            samples = []
            for c in self.classes:
                d = self.root / c
                samples.extend((str(d / name), self.class_to_idx[c]) for name in sorted_files(d)
                               if is_image_file(name))
            if not samples:
                raise UserError(f"{self.root}: no images in its class folders")
        self.samples = list(samples)

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    @property
    def class_subset(self) -> list[str]:
        """The classes (wnids) present, sorted: for ImageNet-A/R the 200-class subset."""
        return list(self.classes)

    def logit_indices(self, full_classes: Sequence[str]) -> list[int]:
        """Column of each of ``class_subset`` in ``full_classes`` (the classifier's class list), so that
        ``logits[:, dataset.logit_indices(train.classes)].argmax(1)`` compares with this dataset's labels."""
        index = {c: i for i, c in enumerate(full_classes)}
        missing = [c for c in self.class_subset if c not in index]
        if missing:
            raise UserError(f"{self.root}: classes {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                            f"are not among the {len(full_classes)} classes of the classifier")
        return [index[c] for c in self.class_subset]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, label = self.samples[i]
        try:
            img = load_rgb(path, self.draft_size)
        except UserError as err:
            raise UserError(f"{err} [sample {i} of {self.root}]") from None
        img = self.transform(img) if self.transform is not None else to_float_tensor(img)
        return img, label

    # -- subsets -------------------------------------------------------------------------------------
    @classmethod
    def from_file_list(cls, train_root: str | Path, list_file: str | Path, transform: Callable | None = None, *,
                       shots: int | None = None, draft_size: int | None = None) -> "ImageFolderDataset":
        """The training images named in a SimCLR subset file or an MSN split file (same line format).

        Labels index the classes of the full ``train_root`` (not only those in the file), so a classifier
        trained on the subset is evaluated on the full val set without remapping. ``shots`` additionally
        requires exactly that many images per class (MSN ``{k}imgs_class.txt``).
        """
        train_root = Path(train_root)
        classes = sorted_subdirs(train_root)
        if not classes:
            raise UserError(f"{train_root}: no class folders (expected train/<wnid>/*.JPEG)")
        problems: list[str] = []
        entries = check_file_list(Path(list_file), train_root, classes, shots, problems)
        if problems:
            raise UserError(first_problems(problems))
        idx = {c: i for i, c in enumerate(classes)}
        samples = [(str(train_root / c / name), idx[c]) for _, name, c in entries]
        return cls(train_root, transform, classes=classes, samples=samples, draft_size=draft_size)

    @classmethod
    def from_subset_file(cls, train_root, subset_file, transform=None, **kw) -> "ImageFolderDataset":
        """SimCLR ``1percent.txt`` / ``10percent.txt`` subset of ``train_root``."""
        return cls.from_file_list(train_root, subset_file, transform, **kw)

    @classmethod
    def from_split_file(cls, train_root, split_file, transform=None, *, shots: int | None = None,
                        **kw) -> "ImageFolderDataset":
        """MSN ``{k}imgs_class.txt`` split; ``shots`` defaults to the ``k`` in the file name."""
        if shots is None:
            shots = split_file_shots(Path(split_file))
        return cls.from_file_list(train_root, split_file, transform, shots=shots, **kw)


class ImageNetVariant(ImageFolderDataset):
    """ImageNet-A, ImageNet-R or ImageNet-Sketch: class folders directly under ``root`` (``sketch/`` is
    entered automatically). Use ``class_subset`` / ``logit_indices`` to slice 1000-way logits."""

    def __init__(self, root: str | Path, transform: Callable | None = None, **kw):
        root = Path(root)
        sub = root / fmt_config("imagenet-sketch")["subfolder"]
        if not any(is_wnid(d) for d in sorted_subdirs(root)) and sub.is_dir():
            root = sub
        super().__init__(root, transform, **kw)


ImageNetA = ImageNetR = ImageNetSketch = ImageNetVariant


class ImageNetC:
    """ImageNet-C style corruptions: ``for corruption, severity, dataset in ImageNetC(root): ...``.

    ``corruptions`` defaults to those present among the 15 benchmark ones (paper order), then any extra
    ones present; ``severities`` to 1-5. Every group shares ``classes``.
    """

    def __init__(self, root: str | Path, transform: Callable | None = None, *,
                 corruptions: Sequence[str] | None = None, severities: Sequence[int] | None = None,
                 draft_size: int | None = None):
        self.root = Path(root)
        cfg = fmt_config("imagenet-c")
        present = set(sorted_subdirs(self.root))
        if corruptions is None:
            corruptions = [c for c in cfg["corruptions"] + cfg["extra_corruptions"] if c in present]
            if not corruptions:
                raise UserError(f"{self.root}: no corruption folders (expected <corruption>/<severity>/<wnid>/, "
                                f"corruptions: {', '.join(cfg['corruptions'])})")
        missing = [c for c in corruptions if c not in present]
        if missing:
            raise UserError(f"{self.root / missing[0]}: missing corruption folder")
        self.corruptions = list(corruptions)
        self.severities = list(severities if severities is not None else cfg["severities"])
        self.transform = transform
        self.draft_size = draft_size
        first = self.root / self.corruptions[0] / str(self.severities[0])
        self.classes = sorted_subdirs(first)
        if not self.classes:
            raise UserError(f"{first}: no class folders (expected <wnid>/*.JPEG)")

    def group(self, corruption: str, severity: int) -> ImageFolderDataset:
        d = self.root / corruption / str(severity)
        if not d.is_dir():
            raise UserError(f"{d}: missing (expected severity folders 1-5 under {self.root / corruption})")
        return ImageFolderDataset(d, self.transform, classes=self.classes, draft_size=self.draft_size)

    def groups(self) -> Iterator[tuple[str, int, ImageFolderDataset]]:
        for c in self.corruptions:
            for s in self.severities:
                yield c, s, self.group(c, s)

    __iter__ = groups

    def __len__(self) -> int:
        return len(self.corruptions) * len(self.severities)


# ----------------------------------------------------------------------------------- subset / split files

def split_file_shots(path: Path) -> int:
    m = re.match(fmt_config("imagenet")["split_file_pattern"], path.name)
    if not m:
        raise UserError(f"{path}: not an MSN split file name (expected <k>imgs_class.txt, e.g. 1imgs_class.txt)")
    return int(m.group(1))


def check_file_list(path: Path, train_root: Path, classes: Sequence[str], shots: int | None,
                    problems: list[str]) -> list[tuple[int, str, str]]:
    """Check a subset/split file line by line; returns the good ``(line, name, class)`` entries and appends
    one ``path:LINE: ...`` problem per bad line (plus per-class count problems when ``shots`` is given)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problems.append(f"{path}: missing")
        return []
    except UnicodeDecodeError as e:
        problems.append(f"{path}: not UTF-8 text ({e.reason})")
        return []
    known = set(classes)
    seen: dict[str, int] = {}
    entries: list[tuple[int, str, str]] = []
    lines = text.splitlines()
    for no, raw in enumerate(lines, start=1):
        name = raw.strip()
        if not name:
            if no < len(lines):
                problems.append(f"{path}:{no}: empty line (expected one file name per line)")
            continue
        where = f"{path}:{no}"
        if "/" in name or "\\" in name or " " in name:
            problems.append(f"{where}: {name!r} is not a bare file name (expected <wnid>_<n>.JPEG)")
            continue
        if "_" not in name:
            problems.append(f"{where}: {name!r} has no '_' (expected <wnid>_<n>.JPEG; the class is the part "
                            f"before '_')")
            continue
        cls = name.split("_", 1)[0]
        if cls not in known:
            problems.append(f"{where}: class {cls!r} of {name!r} is not a class folder of {train_root}")
            continue
        if name in seen:
            problems.append(f"{where}: {name!r} repeats line {seen[name]}")
            continue
        seen[name] = no
        if not (train_root / cls / name).is_file():
            problems.append(f"{where}: {train_root / cls / name} does not exist")
            continue
        entries.append((no, name, cls))
    if not lines:
        problems.append(f"{path}: empty (expected one file name per line)")
    if shots is not None and entries:
        counts = Counter(c for _, _, c in entries)
        for c in classes:
            if counts.get(c, 0) != shots:
                problems.append(f"{path}: class {c} has {counts.get(c, 0)} images, expected {shots} "
                                f"({path.name} holds {shots} per class)")
    return entries


def find_split_files(root: Path) -> list[Path]:
    """MSN split files under ``root/imagenet_subsets*/``, sorted."""
    cfg = fmt_config("imagenet")
    pat = re.compile(cfg["split_file_pattern"])
    out = []
    for d in sorted(root.glob(cfg["split_dir_glob"])):
        if d.is_dir():
            out.extend(d / n for n in sorted_files(d) if pat.match(n))
    return out


# ------------------------------------------------------------------------------------------- validators

def _check_image(path: Path, problems: list[str]) -> None:
    try:
        if path.stat().st_size == 0:
            problems.append(f"{path}: empty file")
            return
        with Image.open(path) as im:
            im.size  # header only
    except Exception as e:  # noqa: BLE001 - any decoder error is a problem to report
        problems.append(f"{path}: cannot be read as an image ({type(e).__name__}: {e})")


def check_class_tree(root: Path, problems: list[str], *, desc: str = "",
                     expect_classes: Sequence[str] | None = None, reference: str = "the first group") -> list[str]:
    """Check ``root/<wnid>/<images>``; returns the class folder names. With ``expect_classes``, the class
    folders must be exactly those (``reference`` names where they come from, for the message)."""
    if not root.is_dir():
        problems.append(f"{root}: missing (expected {root.name}/<wnid>/*.JPEG class folders)")
        return []
    for name in sorted_files(root):
        if is_image_file(name):
            problems.append(f"{root / name}: image outside a class folder (expected {root}/<wnid>/{name})")
    classes = sorted_subdirs(root)
    if not classes:
        problems.append(f"{root}: no class folders (expected <wnid>/*.JPEG)")
        return []
    files = []
    for c in classes:
        d = root / c
        if not is_wnid(c):
            problems.append(f"{d}: folder name is not a WordNet id (expected n + 8 digits, e.g. n01440764)")
        names = sorted_files(d)
        images = [n for n in names if is_image_file(n)]
        for n in names:
            if not is_image_file(n):
                problems.append(f"{d / n}: not an image file (expected .JPEG, .jpg or .png)")
        for sub in sorted_subdirs(d):
            problems.append(f"{d / sub}: unexpected folder inside a class folder")
        if not images:
            problems.append(f"{d}: no images")
        files.extend(d / n for n in images)
    for f in progress(files, desc=desc or f"check {root}", unit="img"):
        _check_image(f, problems)
    if expect_classes is not None and list(expect_classes) != classes:
        missing = sorted(set(expect_classes) - set(classes))
        extra = sorted(set(classes) - set(expect_classes))
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        if extra:
            parts.append(f"extra {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}")
        problems.append(f"{root}: class folders differ from {reference} ({'; '.join(parts)})")
    return classes


def check_imagenet(root: Path) -> list[str]:
    """ImageNet ImageFolder tree, plus any subset files and MSN split files found at ``root``."""
    root = Path(root)
    problems: list[str] = []
    cfg = fmt_config("imagenet")
    train, val = (root / s for s in cfg["splits"])
    classes = check_class_tree(train, problems, desc="check train")
    if val.is_dir():
        check_class_tree(val, problems, desc="check val", expect_classes=classes or None, reference=str(train))
    else:
        problems.append(f"{val}: missing (expected val/<wnid>/*.JPEG class folders)")
    if classes:
        for name in cfg["subset_files"]:
            if (root / name).exists():
                check_file_list(root / name, train, classes, None, problems)
        for split in find_split_files(root):
            check_file_list(split, train, classes, split_file_shots(split), problems)
    return problems


def _expected_class_count(root: Path, fmt: str) -> int:
    entry = embedded_set(root)
    if entry is not None and "classes" in entry.get("counts", {}):
        return int(entry["counts"]["classes"])
    return int(fmt_config(fmt)["num_classes"])


def _check_variant(root: Path, fmt: str) -> list[str]:
    root = Path(root)
    problems: list[str] = []
    if fmt == "imagenet-sketch":
        sub = root / fmt_config(fmt)["subfolder"]
        if not any(is_wnid(d) for d in sorted_subdirs(root)) and sub.is_dir():
            root = sub
    classes = check_class_tree(root, problems, desc=f"check {fmt}")
    if classes:
        expected = _expected_class_count(root, fmt)
        if len(classes) != expected:
            problems.append(f"{root}: {len(classes)} class folders, expected {expected} for {fmt}")
    return problems


def check_imagenet_a(root: Path) -> list[str]:
    return _check_variant(root, "imagenet-a")


def check_imagenet_r(root: Path) -> list[str]:
    return _check_variant(root, "imagenet-r")


def check_imagenet_sketch(root: Path) -> list[str]:
    return _check_variant(root, "imagenet-sketch")


def check_imagenet_c(root: Path) -> list[str]:
    """``<corruption>/<severity>/<wnid>/`` with all 15 corruptions x 5 severities and one class list."""
    root = Path(root)
    problems: list[str] = []
    cfg = fmt_config("imagenet-c")
    if not root.is_dir():
        return [f"{root}: missing (expected <corruption>/<severity 1-5>/<wnid>/*.JPEG)"]
    known = cfg["corruptions"] + cfg["extra_corruptions"]
    present = sorted_subdirs(root)
    for d in present:
        if d not in known:
            problems.append(f"{root / d}: unknown corruption folder (expected one of {', '.join(known)})")
    for c in cfg["corruptions"]:
        if c not in present:
            problems.append(f"{root / c}: missing (the benchmark has 15 corruptions: {', '.join(cfg['corruptions'])})")
    reference: list[str] | None = None
    ref_dir = root
    for c in [c for c in known if c in present]:
        sev_dirs = sorted_subdirs(root / c)
        for s in sev_dirs:
            if s not in {str(v) for v in cfg["severities"]}:
                problems.append(f"{root / c / s}: unexpected folder (expected severities 1-5)")
        for s in cfg["severities"]:
            d = root / c / str(s)
            if not d.is_dir():
                problems.append(f"{d}: missing (expected severities 1-5)")
                continue
            classes = check_class_tree(d, problems, desc=f"check {c}/{s}", expect_classes=reference,
                                       reference=str(ref_dir))
            if reference is None and classes:
                reference, ref_dir = classes, d
    return problems
