"""``ssl-bench bench startup``: how long each command takes to start, and what it imports.

Each probe runs ``python -X importtime -m ssl_bench.cli ARGS`` in a fresh process ``--repeats``
times; printed are the median wall time of the whole process (interpreter start, imports,
argument parsing, up to the command's first work), the import time from the last run's
``-X importtime`` table, and the heavy libraries that run loaded with their cumulative import
times. The ``eval`` probe points ``--data`` at a folder that does not exist: the command loads
everything the k-NN protocol needs, resolves its recipe and exits 2 before any work, so its
wall time is the start-up of a real evaluation.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DESCRIPTION = "start-up time and imports of each command (python -X importtime)"

#: probe name -> command line (``{missing}``: a folder that does not exist)
PROBES = {
    "version": ["--version"],
    "help": ["--help"],
    "eval --help": ["eval", "--help"],
    "eval": ["eval", "--protocol", "knn", "--checkpoint", "random:vit_tiny_patch16_224", "--data", "{missing}"],
    "leaderboard --help": ["leaderboard", "--help"],
    "data check --help": ["data", "check", "--help"],
}
#: libraries whose import time is worth naming
HEAVY = ("torch", "torchvision", "timm", "torch._dynamo", "faiss", "pandas", "matplotlib", "sklearn", "scipy",
         "skimage", "cv2", "pycocotools")
_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probe", action="append", choices=list(PROBES), default=[],
                        help="probe to run (repeatable; default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per probe, the median is shown (default 5)")


def import_times(stderr: str) -> tuple[float, dict[str, float]]:
    """(total seconds of the top-level imports, {heavy library: cumulative seconds}) of a
    ``-X importtime`` table; a library is counted where it was first imported."""
    total, heavy = 0, {}
    for line in stderr.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        _, cumulative, indent, name = match.groups()
        if len(indent) == 1:  # a top-level import (nested ones are indented further)
            total += int(cumulative)
        if name in HEAVY:
            heavy[name] = int(cumulative) / 1e6
    return total / 1e6, heavy


def _run(args: list[str]) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPROFILEIMPORTTIME"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ssl_bench.cli", *args], capture_output=True,
                          text=True, env=env)
    return time.perf_counter() - start, proc.returncode, proc.stderr


def run(args: argparse.Namespace) -> int:
    names = args.probe or list(PROBES)
    print(f"start-up of ssl-bench commands: median wall time of {args.repeats} fresh processes "
          f"({sys.executable} -X importtime -m ssl_bench.cli ...)")
    with tempfile.TemporaryDirectory() as tmp:
        missing = str(Path(tmp) / "missing")
        for name in names:
            argv = [a.format(missing=missing) for a in PROBES[name]]
            walls, code, stderr = [], 0, ""
            for _ in range(max(1, args.repeats)):
                wall, code, stderr = _run(argv)
                walls.append(wall)
            total, heavy = import_times(stderr)
            loaded = ", ".join(f"{lib} {seconds:.2f} s" for lib, seconds in
                               sorted(heavy.items(), key=lambda item: -item[1])) or "none"
            print(f"{name}\t{statistics.median(walls):.2f} s\t(exit {code}; imports {total:.2f} s; heavy: {loaded})")
    return 0
