"""Frozen-backbone feature extraction with an on-disk cache shared by every protocol.

Features of one (checkpoint sha256, dataset manifest, transform, feature choice, final
norm, input filter, precision, augmentation pass) are computed once and stored as

    CACHE/<key hash>/features.npy   float32 (N, D), opened with ``mmap_mode="r"``
    CACHE/<key hash>/labels.npy     int64 (N,)
    CACHE/<key hash>/key.json       the key itself, written last (marks the entry complete)

each file written atomically (temporary file, fsync, rename), so concurrent evaluations
never read half a file and an interrupted extraction leaves no entry behind. Extraction runs
in a seeded fork of the random generators (``seeding.seeded``): it draws the same numbers
every time and leaves the caller's state untouched, so a protocol's result does not depend
on whether its features were cached. ``CACHE`` is
the recipe's ``cache_dir`` or ``<results>/features``. A subset of an already cached split
(1% file, k-shot splits) is sliced from that split's features without any forward pass.

The conventions of a checkpoint (``Checkpoint.eval``: ``feature``, ``final_norm``,
``input_filter``) apply unless the recipe overrides them (``feature: auto`` etc.).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch import nn

from ..atomic import atomic_write, atomic_write_json
from ..backbones import FEATURE_KINDS, Backbone
from ..data.loading import make_loader
from ..errors import UserError
from ..filters import build_filter, normalise_filter
from ..progress import log, progress
from ..seeding import seeded

#: part of every cache key; raised when the same key would give other features (float rounding
#: included), so no entry of older code is read: 2 = the CLS features run the last block for the
#: CLS token alone (``Backbone.tokens`` ``prefix_only``)
CACHE_FORMAT = 2
EVAL_TRANSFORM_KEYS = ("resize", "crop", "interpolation", "mean", "std")

INTERPOLATIONS = {"bicubic": TF.InterpolationMode.BICUBIC, "bilinear": TF.InterpolationMode.BILINEAR,
                  "nearest": TF.InterpolationMode.NEAREST}

#: Forward passes done by ``extract`` in this process, (split tag, number of images) per call;
#: lets tests and users see that a cached protocol did no backbone work.
EXTRACTIONS: list[tuple[str, int]] = []


# ----- evaluation conventions --------------------------------------------------------------
@dataclass(frozen=True)
class FeatureSpec:
    """Which vector represents an image: backbone feature kind, final norm, input filter."""

    feature: str
    final_norm: bool
    input_filter: dict | None = None

    def as_dict(self) -> dict:
        return {"feature": self.feature, "final_norm": self.final_norm, "input_filter": self.input_filter}


def _check_feature(kind: str, where: str) -> None:
    if kind not in FEATURE_KINDS and not re.fullmatch(r"cls_last\d+", kind):
        raise UserError(f"{where}: unknown feature '{kind}'; valid: auto, {', '.join(FEATURE_KINDS[:-1])}, "
                        "cls_lastN (e.g. cls_last4)")


def feature_spec(checkpoint, recipe: dict) -> FeatureSpec:
    """The checkpoint's conventions, overridden by the recipe where it is not ``auto``."""
    conventions = checkpoint.eval
    backbone: Backbone = checkpoint.backbone
    feature = recipe.get("feature", "auto")
    if feature in (None, "auto"):
        feature = conventions.get("feature") or "cls"
    _check_feature(feature, "recipe key 'feature'")
    final_norm = recipe.get("final_norm", "auto")
    if final_norm in (None, "auto"):
        final_norm = bool(conventions.get("final_norm", True))
    elif not isinstance(final_norm, bool):
        raise UserError(f"recipe key 'final_norm': expected auto, true or false, got {final_norm!r}")
    filt = recipe.get("input_filter")
    if filt in (None, "auto"):
        filt = conventions.get("input_filter")
    filt = normalise_filter(filt)
    if not backbone.is_vit:
        # a ConvNet has one global feature: the average pool of its last stage
        feature, final_norm = "avgpool", True
    return FeatureSpec(feature, final_norm, filt)


@contextlib.contextmanager
def final_norm_as(backbone: Backbone, enabled: bool):
    """Temporarily drop the final norm of a ViT (features 'without the final LayerNorm')."""
    if not backbone.is_vit:
        yield
        return
    has_norm = not isinstance(backbone.model.norm, nn.Identity)
    if enabled and not has_norm:
        raise UserError(f"recipe asks for features after the final norm, but this {backbone.arch} checkpoint "
                        "has no final norm (its eval.final_norm is false); set final_norm: false or auto")
    if enabled or not has_norm:
        yield
        return
    saved = backbone.model.norm
    backbone.model.norm = nn.Identity()
    try:
        yield
    finally:
        backbone.model.norm = saved


# ----- transforms ------------------------------------------------------------------------
def _tail(tcfg: dict, input_filter: dict | None) -> list:
    tail = [T.ToTensor(), T.Normalize(tcfg["mean"], tcfg["std"])]
    if input_filter:
        tail.append(build_filter(input_filter))
    return tail


def _interp(tcfg: dict, where: str = "transform.interpolation") -> TF.InterpolationMode:
    name = tcfg.get("interpolation", "bicubic")
    if name not in INTERPOLATIONS:
        raise UserError(f"recipe key '{where}': unknown interpolation '{name}'; valid: {', '.join(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


def eval_transform(tcfg: dict, input_filter: dict | None = None) -> T.Compose:
    """Resize (shorter side) + centre crop + normalise (DINO eval_knn.py / eval_linear.py)."""
    return T.Compose([T.Resize(int(tcfg["resize"]), interpolation=_interp(tcfg)),
                      T.CenterCrop(int(tcfg["crop"])), *_tail(tcfg, input_filter)])


def train_transform(tcfg: dict, input_filter: dict | None = None) -> T.Compose:
    """RandomResizedCrop + horizontal flip (the linear-probe augmentation of DINO / MAE / MSN)."""
    scale = tuple(tcfg.get("train_scale", (0.08, 1.0)))
    interp = _interp({"interpolation": tcfg.get("train_interpolation") or tcfg.get("interpolation", "bicubic")},
                     "transform.train_interpolation")
    return T.Compose([T.RandomResizedCrop(int(tcfg["crop"]), scale=scale, interpolation=interp),
                      T.RandomHorizontalFlip(), *_tail(tcfg, input_filter)])


# ----- datasets ----------------------------------------------------------------------------
def dataset_manifest(dataset) -> str:
    """sha256 over the class list and every sample's relative path, label and file size."""
    samples = dataset.samples
    root = Path(getattr(dataset, "root", "") or os.path.commonpath([str(p) for p, _ in samples]))
    digest = hashlib.sha256(json.dumps(list(dataset.classes)).encode())
    for path, label in samples:
        path = Path(path)
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            rel = path.as_posix()
        try:
            size = path.stat().st_size
        except OSError:
            raise UserError(f"{path}: image listed by the dataset is missing") from None
        digest.update(f"{rel}\t{label}\t{size}\n".encode())
    return digest.hexdigest()


class _Indexed(torch.utils.data.Dataset):
    """``dataset`` restricted to ``indices`` (sample order kept)."""

    def __init__(self, dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


# ----- the cache ---------------------------------------------------------------------------
@dataclass
class Features:
    """Features of one split (rows in dataset sample order) plus their labels."""

    features: np.ndarray
    labels: np.ndarray
    key: dict
    path: Path | None = None
    cached: bool = False
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> "Features":
        idx = np.asarray(indices, dtype=np.int64)
        return Features(np.asarray(self.features[idx], dtype=np.float32), self.labels[idx],
                        {**self.key, "subset_of": self.key_hash}, self.path, self.cached)

    @property
    def key_hash(self) -> str:
        return key_hash(self.key)


def key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:24]


class FeatureCache:
    """A folder of feature entries keyed by the JSON key's hash."""

    def __init__(self, root: Path | None):
        self.root = Path(root) if root is not None else None

    def entry(self, key: dict) -> Path | None:
        return None if self.root is None else self.root / key_hash(key)

    def load(self, key: dict) -> Features | None:
        folder = self.entry(key)
        if folder is None or not (folder / "key.json").is_file():
            return None
        try:
            stored = json.loads((folder / "key.json").read_text())
            feats = np.load(folder / "features.npy", mmap_mode="r")
            labels = np.load(folder / "labels.npy")
        except (OSError, ValueError, json.JSONDecodeError) as err:
            log(f"warning: ignoring unreadable feature cache entry {folder} ({err})")
            return None
        if stored.get("key") != json.loads(json.dumps(key, default=str)) or len(feats) != len(labels):
            log(f"warning: feature cache entry {folder} does not match its key; recomputing")
            return None
        return Features(feats, labels, key, folder, cached=True)

    def store(self, key: dict, fill, n: int, dim: int, labels: np.ndarray) -> Features:
        """Create the entry: ``fill(array)`` writes the (n, dim) float32 features in place."""
        folder = self.entry(key)
        if folder is None:
            feats = np.empty((n, dim), dtype=np.float32)
            fill(feats)
            return Features(feats, labels, key)
        folder.mkdir(parents=True, exist_ok=True)

        def write_features(tmp: Path) -> None:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))
            fill(array)
            array.flush()
            del array

        def write_labels(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.save(handle, labels)

        atomic_write(folder / "features.npy", write_features)
        atomic_write(folder / "labels.npy", write_labels)
        atomic_write_json(folder / "key.json", {"format": CACHE_FORMAT, "key": key, "n": n, "dim": dim})
        stored = self.load(key)
        if stored is None:
            raise UserError(f"{folder}: feature cache entry unreadable right after writing it; check the disk "
                            "or set cache: false")
        stored.cached = False  # computed by this call
        return stored


def cache_for(recipe: dict, results_dir: Path) -> FeatureCache:
    """The recipe's cache: ``cache: false`` disables it; ``cache_dir: ''`` means <results>/features."""
    if not recipe.get("cache", True):
        return FeatureCache(None)
    root = recipe.get("cache_dir") or Path(results_dir) / "features"
    return FeatureCache(Path(root))


# ----- extraction --------------------------------------------------------------------------
def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bool(bf16))


@torch.no_grad()
def forward_features(backbone: Backbone, images: torch.Tensor, spec: FeatureSpec, bf16: bool) -> torch.Tensor:
    """(B, D) float32 features of a batch (backbone already on the images' device, eval mode)."""
    with final_norm_as(backbone, spec.final_norm), autocast(images.device, bf16):
        return backbone.features(images, spec.feature).float()


def extract(backbone: Backbone, dataset, spec: FeatureSpec, out: np.ndarray, *, batch_size: int,
            num_workers: int, device: torch.device, bf16: bool, desc: str) -> None:
    """Fill ``out`` (N, D) with the features of ``dataset`` in sample order."""
    backbone.to(device).eval()
    loader = make_loader(dataset, batch_size, workers=num_workers, pin_memory=device.type == "cuda")
    EXTRACTIONS.append((desc, len(dataset)))
    start = 0
    for images, _ in progress(loader, desc=desc, unit="batch"):
        feats = forward_features(backbone, images.to(device, non_blocking=True), spec, bf16)
        out[start:start + len(feats)] = feats.cpu().numpy()
        start += len(feats)


def split_features(ctx, dataset, *, split: str, spec: FeatureSpec, transform_cfg: dict, recipe: dict,
                   indices: Sequence[int] | None = None, augment_pass: int | None = None) -> Features:
    """Features of ``dataset`` (or of its ``indices``), from the cache when present.

    ``dataset`` carries its transform; ``transform_cfg`` and ``augment_pass`` describe it
    in the key (``augment_pass`` = index of a random-augmentation pass, None = eval transform).
    """
    checkpoint = ctx.checkpoint
    listing = ("manifest", tuple(dataset.classes), tuple(map(tuple, dataset.samples)))
    if listing not in ctx.shared:  # one stat of every file per evaluation, not per split_features call
        ctx.shared[listing] = dataset_manifest(dataset)
    manifest = ctx.shared[listing]
    if augment_pass is None:  # only what the eval transform uses, so every protocol shares the entry
        transform_cfg = {k: transform_cfg[k] for k in EVAL_TRANSFORM_KEYS if k in transform_cfg}
    key = {"format": CACHE_FORMAT, "checkpoint": checkpoint.sha256, "dataset": manifest,
           "transform": transform_cfg, "augment_pass": augment_pass, **spec.as_dict(),
           "bf16": bool(recipe.get("bf16", False))}
    cache = cache_for(recipe, ctx.results_dir)
    memo = ("features", key_hash(key), cache.root)
    if memo in ctx.shared:  # extracted or loaded by an earlier protocol of this evaluation
        full = replace(ctx.shared[memo], cached=True)
    else:
        full = cache.load(key)
    if full is not None:
        ctx.shared[memo] = full
        return full if indices is None else full.subset(indices)
    target = dataset if indices is None else _Indexed(dataset, indices)
    if indices is not None:
        key = {**key, "indices": hashlib.sha256(np.asarray(indices, np.int64).tobytes()).hexdigest()}
        hit = cache.load(key)
        if hit is not None:
            return hit
    labels = np.asarray([dataset.samples[i][1] for i in (indices if indices is not None
                                                          else range(len(dataset)))], dtype=np.int64)
    dim = checkpoint.backbone.feature_dim(spec.feature)

    def fill(array: np.ndarray) -> None:
        # a seeded fork: each augmentation pass draws its own fixed crops, and the caller's random
        # state is the same after a cache miss (extraction) as after a hit (none)
        with seeded(augment_pass or 0):
            extract(checkpoint.backbone, target, spec, array, batch_size=int(recipe.get("batch_size", 64)),
                    num_workers=int(recipe.get("num_workers", 0)), device=ctx.device,
                    bf16=bool(recipe.get("bf16", False)), desc=f"features {split}")

    stored = cache.store(key, fill, len(target), dim, labels)
    if indices is None:
        ctx.shared[memo] = stored
    return stored
