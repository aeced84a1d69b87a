"""The real data the embedded sets are built from: Fashion-MNIST objects and skimage.data backgrounds."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import UserError
from ...progress import log

ENV_DIR = "SSL_BENCH_FASHION_MNIST"


def fashion_mnist_dir(cfg: dict) -> Path:
    """Where the Fashion-MNIST IDX files are looked for: $SSL_BENCH_FASHION_MNIST, else the Debian path."""
    return Path(os.environ.get(ENV_DIR) or cfg["dir"])


def _missing(d: Path, cfg: dict) -> list[str]:
    return [name for name in cfg["files"].values() if not (d / name).is_file()]


def _can_apt() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get") is not None


def _install_command(cfg: dict) -> list[list[str]]:
    return [["apt-get", "update"], ["apt-get", "install", "-y", cfg["package"]]]


def ensure_fashion_mnist(cfg: dict) -> Path:
    """The folder with the four Fashion-MNIST IDX files. When they are missing and the default folder is used,
    install the Debian package (as root, with apt-get); otherwise raise a UserError saying what to install."""
    d = fashion_mnist_dir(cfg)
    missing = _missing(d, cfg)
    if not missing:
        return d
    default = not os.environ.get(ENV_DIR)
    if default and _can_apt():
        log(f"Fashion-MNIST not found in {d}: installing the Debian package {cfg['package']} "
            f"(apt-get update; apt-get install -y {cfg['package']})")
        for cmd in _install_command(cfg):
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            if r.returncode != 0:
                tail = r.stdout.strip().splitlines()[-1:] or [""]
                raise UserError(f"{d}: Fashion-MNIST missing and `{' '.join(cmd)}` failed (exit {r.returncode}: "
                                f"{tail[0]}); install the Debian package {cfg['package']} or set {ENV_DIR} to a "
                                f"folder holding {', '.join(cfg['files'].values())}")
        missing = _missing(d, cfg)
        if not missing:
            return d
    where = f"${ENV_DIR}={d}" if not default else str(d)
    raise UserError(f"{where}: Fashion-MNIST files missing ({', '.join(missing)}); install them with "
                    f"`sudo apt-get update && sudo apt-get install -y {cfg['package']}`, or set {ENV_DIR} to a "
                    f"folder holding the four IDX .gz files from {cfg['url']}")


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip) as a uint8 array: magic 0x0000 08 <ndim>, then ndim big-endian int32 sizes."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an unsigned-byte IDX file (bad magic {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated IDX file ({body.size} bytes of data, header says {dims})")
    return body.reshape(dims)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class FashionMNIST:
    images: dict[str, np.ndarray]   # split ("train" / "test") -> (N, 28, 28) uint8
    labels: dict[str, np.ndarray]   # split -> (N,) uint8
    record: dict                    # provenance for the manifest

    def by_class(self, split: str, k: int) -> np.ndarray:
        return np.flatnonzero(self.labels[split] == k)


def load_fashion_mnist(cfg: dict) -> FashionMNIST:
    d = ensure_fashion_mnist(cfg)
    files = cfg["files"]
    images = {"train": read_idx(d / files["train_images"]), "test": read_idx(d / files["test_images"])}
    labels = {"train": read_idx(d / files["train_labels"]), "test": read_idx(d / files["test_labels"])}
    for split in images:
        if images[split].ndim != 3 or len(images[split]) != len(labels[split]):
            raise UserError(f"{d}: Fashion-MNIST {split} images and labels do not match")
    record = {
        "name": "Fashion-MNIST",
        "licence": cfg["licence"],
        "url": cfg["url"],
        "debian_package": cfg["package"],
        "files": {name: {"sha256": sha256(d / name)} for name in sorted(files.values())},
    }
    return FashionMNIST(images, labels, record)


def load_backgrounds(cfg: dict) -> dict[str, np.ndarray]:
    """name -> uint8 image (H, W) or (H, W, 3) from skimage.data (offline images only)."""
    import skimage  # heavy: only the data generator loads it
    import skimage.data
    out = {}
    for name in cfg["backgrounds"]:
        img = getattr(skimage.data, name)()
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]
        out[name] = np.ascontiguousarray(img.astype(np.uint8))
    return out


def backgrounds_record(cfg: dict) -> dict:
    import skimage
    return {name: {"provider": f"scikit-image {skimage.__version__} skimage.data.{name}()",
                   "licence": spec["licence"], "kind": spec["kind"]}
            for name, spec in cfg["backgrounds"].items()}
