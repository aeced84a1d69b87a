"""``ssl-bench data prepare`` and ``ssl-bench data check``.

The top-level CLI calls ``add_data_parser(subparsers)``; each sub-command stores ``func(args) -> exit code``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ssl_bench.data.resolve import FORMATS

#: ``check`` prints at most this many problems per format, then a count of the rest.
MAX_PRINTED = 200


def add_data_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("data", help="prepare the embedded data; check datasets on disk",
                              description="Prepare the embedded benchmark data, or validate a dataset on disk.")
    sub = p.add_subparsers(dest="data_command", metavar="{prepare,check}")
    sub.required = True

    from ssl_bench.data.embedded.prepare import profile_names
    pp = sub.add_parser("prepare", help="generate the embedded data (every format) under --root",
                        description="Generate the embedded benchmark data: real Fashion-MNIST objects on real "
                                    "skimage.data photos, written in the ImageNet, COCO, LVIS, ADE20k, DAVIS and "
                                    "ImageNet-A/R/Sketch/C layouts, with a manifest (ssl-bench-data.json).")
    pp.add_argument("--root", required=True, type=Path, help="output folder (new, empty, or made by prepare)")
    pp.add_argument("--profile", default="demo", choices=profile_names(),
                    help="tiny: tens of images per set, for tests; demo: ~10k training images (default)")
    pp.add_argument("--seed", type=int, default=None, help="random seed (default: the profile's, 0)")
    pp.add_argument("--workers", type=int, default=None, help="generator processes (default: all cores)")
    pp.set_defaults(func=cmd_prepare)

    pc = sub.add_parser("check", help="validate a dataset folder; one problem per line",
                        description="Validate a dataset in its real on-disk layout (or a set of a prepared tree). "
                                    "Prints one problem per line (file, and line or JSON path) and exits 1 if "
                                    "any, else prints one OK line and exits 0.")
    pc.add_argument("--root", required=True, type=Path, help="the dataset folder, or a prepared tree")
    pc.add_argument("--format", required=True, choices=[*FORMATS, "all"],
                    help="dataset format; 'all' checks every set listed in the manifest of a prepared tree")
    pc.set_defaults(func=cmd_check)
    return p


def cmd_prepare(args) -> int:
    from ssl_bench.data.embedded import prepare
    manifest = prepare(args.root, profile=args.profile, seed=args.seed, workers=args.workers)
    sets = manifest["sets"]
    print(f"prepared {len(sets)} sets in {args.root} (profile {manifest['profile']}, seed {manifest['seed']}): "
          + ", ".join(f"{fmt} -> {entry['subfolder']}" for fmt, entry in sets.items()))
    return 0


def cmd_check(args) -> int:
    from ssl_bench.data.check import check, manifest_formats
    formats = manifest_formats(args.root) if args.format == "all" else [args.format]
    total = 0
    summary = []
    for fmt in formats:
        folder, problems = check(args.root, fmt)
        for line in problems[:MAX_PRINTED]:
            print(line)
        if len(problems) > MAX_PRINTED:
            print(f"{folder}: ... and {len(problems) - MAX_PRINTED} more {fmt} problems")
        total += len(problems)
        summary.append(f"{fmt} ({folder})")
    if total:
        import sys
        print(f"{total} problem{'s' if total != 1 else ''} found", file=sys.stderr)
        return 1
    print(f"OK: {', '.join(summary)}")
    return 0
