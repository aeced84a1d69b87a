"""``ssl-bench bench data --data DIR``: images/s of the classification loader alone (no model).

Decodes and transforms the ImageNet-layout training (or val) images with 0 workers and with N workers in the
same run, and prints both rates and their ratio. ``--data`` is an ImageFolder root (``train/``, ``val/``) or a
tree made by ``ssl-bench data prepare``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.common import default_workers, fmt_config
from ..data.imagefolder import ImageFolderDataset
from ..data.loading import measure_throughput
from ..data.resolve import dataset_name, resolve
from ..errors import UserError
from ..progress import log
from . import require_images
from ..protocols._features import eval_transform

DESCRIPTION = "images/s of the classification loader alone, 0 workers vs N workers"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="ImageNet-layout root or prepared tree")
    parser.add_argument("--split", default="train", choices=["train", "val"], help="split to read (default train)")
    parser.add_argument("--size", type=int, default=96, help="crop size of the eval transform (default 96)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--batches", type=int, default=30, help="timed batches per setting (default 30)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes for the parallel setting (default: all usable cores)")


def run(args) -> int:
    if args.batches < 1 or args.batch_size < 1:
        raise UserError("--batches/--batch-size: must be >= 1")
    root = resolve(args.data, "imagenet")
    name = dataset_name(args.data, "imagenet")
    stats = fmt_config("imagenet")
    resize = round(args.size * 256 / 224)
    transform = eval_transform({"resize": resize, "crop": args.size, "interpolation": "bicubic",
                                "mean": stats["mean"], "std": stats["std"]})
    dataset = ImageFolderDataset(root / args.split, transform, draft_size=resize)
    warmup = 2  # measure_throughput's untimed batches
    require_images(len(dataset), (warmup + args.batches) * args.batch_size, root / args.split,
                   f"it fills {warmup} warm-up and --batches {args.batches} timed batches of --batch-size "
                   f"{args.batch_size}; lower them or give a larger dataset")
    workers = default_workers() if args.workers is None else args.workers
    if workers < 1:
        raise UserError(f"--workers: {workers}; give >= 1 (0 workers is always measured as the baseline)")
    print(f"loader throughput: {name} {args.split} ({len(dataset)} images in {root / args.split}), batch "
          f"{args.batch_size}, resize {resize} + centre crop {args.size}, {args.batches} timed batches")
    results = []
    for w in (0, workers):
        log(f"measuring with {w} worker(s) ...")
        r = measure_throughput(dataset, batch_size=args.batch_size, workers=w, batches=args.batches, warmup=warmup)
        results.append(r)
        print(f"  workers={w}: {r['images_per_s']:.1f} images/s ({r['images']} images in {r['seconds']:.2f} s)")
    ratio = results[1]["images_per_s"] / results[0]["images_per_s"]
    print(f"  ratio ({workers} workers / 0 workers): {ratio:.2f}x")
    return 0
