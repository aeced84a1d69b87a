"""What produced a result: code version, git commit, library versions."""

from __future__ import annotations

import functools
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .threads import chosen

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def code_version() -> dict:
    """The package version plus the git commit (and dirty flag) of the source tree, if any."""
    info = {"version": __version__, "commit": "unknown", "dirty": None}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PACKAGE_DIR, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10,
                                check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return info
    info.update(commit=commit, dirty=bool(status.strip()))
    return info


@functools.cache
def library_versions() -> dict:
    """Versions of the libraries whose numerics a result depends on."""
    # imported here: a leaderboard reads results without loading torch
    import numpy
    import timm
    import torch

    return {"python": platform.python_version(), "torch": torch.__version__,
            "timm": timm.__version__, "numpy": numpy.__version__}


@functools.cache
def machine() -> dict:
    """The hardware a result was measured on: CPU model and count, system, accelerator."""
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    accelerator = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpus": os.cpu_count(), "system": f"{platform.system()} {platform.machine()}",
            "accelerator": accelerator}


def compute_threads() -> dict:
    """The threads torch computes with in this process and where the count came from
    (``ssl_bench.threads``: ``--threads``, ``OMP_NUM_THREADS``, ``default``; ``torch`` when the
    command line did not choose it)."""
    import torch

    choice = chosen()
    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            "threads_from": str(choice) if choice is not None and choice.count == torch.get_num_threads()
            else "torch"}


def run_machine() -> dict:
    """``machine()`` plus this process's ``compute_threads()``: what a result or run records."""
    return {**machine(), **compute_threads()}


def describe_machine(info: dict | None) -> str | None:
    """One line for a ``machine()`` dict, e.g. '2 x Intel(R) Xeon(R) Processor, Linux x86_64, no GPU'
    (then ', 1 thread(s)' where the threads were recorded)."""
    if not info:
        return None
    threads = f", {info['threads']} thread(s)" if "threads" in info else ""
    return (f"{info.get('cpus')} x {info.get('cpu')}, {info.get('system')}, "
            f"{info.get('accelerator') or 'no GPU'}{threads}")


def utc_now() -> str:
    """An ISO-8601 UTC timestamp, to the second."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
