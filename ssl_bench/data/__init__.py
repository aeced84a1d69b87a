"""Datasets: loaders and validators for the real on-disk formats, and the embedded default data.

``resolve(root, fmt)`` finds the ``fmt`` dataset under ``root`` (the dataset folder itself, or a tree made by
``ssl-bench data prepare``); ``dataset_name(root, fmt)`` is the name results are reported under. Formats:
imagenet, coco, lvis, ade20k, davis, imagenet-c, imagenet-r, imagenet-sketch, imagenet-a.

The torch datasets are imported lazily (``from ssl_bench.data import ImageFolderDataset`` works) so that
``resolve`` and the CLI start without importing torch.
"""

import importlib

from .common import MANIFEST_NAME
from .resolve import EMBEDDED_NAMES, FORMATS, dataset_name, is_format, resolve

_LAZY = {
    "ImageFolderDataset": "ssl_bench.data.imagefolder",
    "ImageNetVariant": "ssl_bench.data.imagefolder",
    "ImageNetA": "ssl_bench.data.imagefolder",
    "ImageNetR": "ssl_bench.data.imagefolder",
    "ImageNetSketch": "ssl_bench.data.imagefolder",
    "ImageNetC": "ssl_bench.data.imagefolder",
    "CocoDetection": "ssl_bench.data.coco",
    "LvisDetection": "ssl_bench.data.coco",
    "InstanceDataset": "ssl_bench.data.coco",
    "detection_collate": "ssl_bench.data.coco",
    "ADE20kSegmentation": "ssl_bench.data.ade20k",
    "DavisSequences": "ssl_bench.data.davis",
    "DavisSequence": "ssl_bench.data.davis",
    "make_loader": "ssl_bench.data.loading",
    "VALIDATORS": "ssl_bench.data.check",
    "check": "ssl_bench.data.check",
}

__all__ = ["MANIFEST_NAME", "FORMATS", "EMBEDDED_NAMES", "resolve", "dataset_name", "is_format", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ssl_bench.data' has no attribute {name!r}")
