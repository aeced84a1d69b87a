"""DAVIS-2017 semi-supervised video object segmentation: sequences and validator.

Layout: ``DAVIS/JPEGImages/480p/<seq>/%05d.jpg`` (frames numbered from 00000),
``DAVIS/Annotations/480p/<seq>/%05d.png`` (indexed palette PNGs: pixel value = object id, 0 = background,
255 = void), ``DAVIS/ImageSets/2017/{train,val}.txt`` (one sequence name per line). The palette is the
PASCAL VOC colour map, stored in every annotation PNG; ``voc_palette()`` rebuilds it for writing masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserError
from ..progress import progress
from .common import first_problems, fmt_config, sorted_files, sorted_subdirs
from .imagefolder import load_rgb

VOID = 255


def voc_palette(n: int = 256) -> np.ndarray:
    """The PASCAL VOC / DAVIS colour map, (n, 3) uint8: the bits of the index are spread over R, G, B from
    the most significant bit down (index 1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0), ...)."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << bit
            c >>= 3
        pal[i] = rgb
    return pal


def read_mask(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """An annotation PNG -> (index map (H, W) uint8, palette (256, 3) uint8 or None if not indexed)."""
    with Image.open(path) as im:
        if im.mode != "P":
            raise UserError(f"{path}: mode {im.mode}, expected an indexed palette PNG (mode P)")
        pal = im.getpalette()
        arr = np.array(im)
    palette = None
    if pal is not None:
        pal = list(pal) + [0] * (768 - len(pal))
        palette = np.array(pal[:768], dtype=np.uint8).reshape(256, 3)
    return arr, palette


def write_mask(path: Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an index map as an indexed palette PNG (DAVIS annotation format)."""
    im = Image.fromarray(mask.astype(np.uint8))  # mode L; putpalette turns it into P
    im.putpalette((voc_palette() if palette is None else palette).reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, format="PNG")


@dataclass
class DavisSequence:
    """One sequence: frame and annotation paths, the first-frame mask, its object ids and the palette."""

    name: str
    frames: list[Path]
    annotations: list[Path]
    first_mask: np.ndarray
    object_ids: list[int]
    palette: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.frames)

    def read_frame(self, t: int) -> Image.Image:
        return load_rgb(self.frames[t])

    def read_mask(self, t: int) -> np.ndarray:
        """Index map of frame ``t`` (ground truth; DAVIS val has every frame annotated)."""
        path = self.annotations[t]
        if path.stem != self.frames[t].stem:
            raise UserError(f"{path}: annotation does not belong to frame {self.frames[t].name}")
        return read_mask(path)[0]


class DavisSequences:
    """The sequences of a split: ``for seq in DavisSequences(root, "val"): ...``."""

    def __init__(self, root: str | Path, split: str = "val", resolution: str | None = None):
        cfg = fmt_config("davis")
        self.root = Path(root)
        self.split = split
        self.resolution = resolution or cfg["resolution"]
        # Refused before any propagation, like `ssl-bench data check`: a mask of another size or mode than
        # its frames, a missing first-frame mask, a listed sequence without folders. The DAVIS tooling
        # (davis2017-evaluation) asserts on such a sequence mid-run; our rule: name the first problem
        # and count the rest, before any work.
        problems = check_davis(self.root) if self.resolution == cfg["resolution"] else []
        if problems:
            raise UserError(first_problems(problems))
        list_file = self.root / cfg["image_sets"] / f"{split}.txt"
        if not list_file.is_file():
            raise UserError(f"{list_file}: missing (expected one sequence name per line)")
        self.names = [ln.strip() for ln in list_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not self.names:
            raise UserError(f"{list_file}: lists no sequences")

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        for name in self.names:
            yield self.sequence(name)

    def sequence(self, name: str) -> DavisSequence:
        img_dir = self.root / "JPEGImages" / self.resolution / name
        ann_dir = self.root / "Annotations" / self.resolution / name
        frames = [img_dir / n for n in sorted_files(img_dir) if n.lower().endswith(".jpg")]
        if not frames:
            raise UserError(f"{img_dir}: no frames (expected %05d.jpg)")
        anns = [ann_dir / n for n in sorted_files(ann_dir) if n.lower().endswith(".png")]
        first = ann_dir / (frames[0].stem + ".png")
        if not first.is_file():
            raise UserError(f"{first}: missing first-frame annotation")
        mask, palette = read_mask(first)
        ids = sorted(int(v) for v in np.unique(mask) if v not in (0, VOID))
        return DavisSequence(name, frames, anns, mask, ids, palette if palette is not None else voc_palette())


def check_davis(root: Path) -> list[str]:
    root = Path(root)
    cfg = fmt_config("davis")
    problems: list[str] = []
    img_root = root / "JPEGImages" / cfg["resolution"]
    ann_root = root / "Annotations" / cfg["resolution"]
    sets_dir = root / cfg["image_sets"]
    for d, what in ((img_root, "frames <seq>/%05d.jpg"), (ann_root, "annotations <seq>/%05d.png"),
                    (sets_dir, "train.txt and val.txt")):
        if not d.is_dir():
            problems.append(f"{d}: missing (expected {what})")
    if problems:
        return problems
    listed: list[str] = []
    found_list = False
    for split in cfg["splits"]:
        list_file = sets_dir / f"{split}.txt"
        if not list_file.is_file():
            problems.append(f"{list_file}: missing (expected one sequence name per line)")
            continue
        found_list = True
        seen: dict[str, int] = {}
        for no, raw in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
            name = raw.strip()
            if not name:
                continue
            if name in seen:
                problems.append(f"{list_file}:{no}: sequence {name!r} repeats line {seen[name]}")
                continue
            seen[name] = no
            missing = [str(d / name) for d in (img_root, ann_root) if not (d / name).is_dir()]
            if missing:
                problems.append(f"{list_file}:{no}: sequence {name!r} has no folder {' or '.join(missing)}")
                continue
            listed.append(name)
    if not found_list:
        return problems
    digits = int(cfg["frame_digits"])
    for name in progress(listed, desc="check davis", unit="seq"):
        img_dir, ann_dir = img_root / name, ann_root / name
        names = sorted_files(img_dir)
        frames = [n for n in names if n.lower().endswith(".jpg")]
        for n in names:
            if not n.lower().endswith(".jpg"):
                problems.append(f"{img_dir / n}: unexpected file (expected %0{digits}d.jpg frames)")
        if not frames:
            problems.append(f"{img_dir}: no frames")
            continue
        for t, n in enumerate(frames):
            if n != f"{t:0{digits}d}.jpg":
                problems.append(f"{img_dir}: frames must be numbered {0:0{digits}d}.jpg, {1:0{digits}d}.jpg, ... "
                                f"without gaps; expected {t:0{digits}d}.jpg, found {n}")
                break
        sizes = set()
        for n in frames:
            try:
                with Image.open(img_dir / n) as im:
                    sizes.add(im.size)
            except Exception as e:  # noqa: BLE001
                problems.append(f"{img_dir / n}: cannot be read as an image ({type(e).__name__}: {e})")
        if len(sizes) > 1:
            problems.append(f"{img_dir}: frames differ in size: {sorted(sizes)}")
        size = next(iter(sizes)) if len(sizes) == 1 else None
        stems = {Path(n).stem for n in frames}
        anns = sorted_files(ann_dir)
        for n in anns:
            if not n.lower().endswith(".png") or Path(n).stem not in stems:
                problems.append(f"{ann_dir / n}: does not match a frame of {img_dir} (expected %0{digits}d.png)")
        first = Path(frames[0]).stem + ".png"
        if first not in anns:
            problems.append(f"{ann_dir / first}: missing first-frame annotation")
        for n in anns:
            if not n.lower().endswith(".png") or Path(n).stem not in stems:
                continue
            try:
                with Image.open(ann_dir / n) as im:
                    mode, asize = im.mode, im.size
                    arr = np.array(im) if n == first else None
            except Exception as e:  # noqa: BLE001
                problems.append(f"{ann_dir / n}: cannot be read as a PNG ({type(e).__name__}: {e})")
                continue
            if mode != "P":
                problems.append(f"{ann_dir / n}: mode {mode}, expected an indexed palette PNG (mode P)")
                continue
            if size is not None and asize != size:
                problems.append(f"{ann_dir / n}: size {asize[0]}x{asize[1]} differs from the frames' "
                                f"{size[0]}x{size[1]}")
            if arr is not None and not np.any((arr != 0) & (arr != VOID)):
                problems.append(f"{ann_dir / n}: first-frame annotation has no object (all background)")
    for extra in sorted(set(sorted_subdirs(img_root)) - set(sorted_subdirs(ann_root))):
        problems.append(f"{img_root / extra}: sequence without annotations in {ann_root}")
    return problems
