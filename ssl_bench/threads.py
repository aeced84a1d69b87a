"""How many threads torch computes with: chosen once, at the start of every command.

Default: the cores this process may use (``os.sched_getaffinity``), shared among the ranks of this
node under torchrun (``LOCAL_WORLD_SIZE``), minus the data-loader worker processes the command
starts (they run on the same cores, one thread each), at least 1. More compute threads than free
cores do not help and can hurt: on the shared 2-core machine, with a loader worker or another
process busy, two threads ran small-op code 3-13x slower than one (issue 19).

In a Slurm task that was given ``--cpus-per-task`` (``SLURM_CPUS_PER_TASK``), those CPUs are the
task's own: the default is at most that many, not divided among the node's tasks. A job submitted
with ``--launcher slurm`` or ``submitit-local`` chooses its count in the job, on its node
(``ssl_bench.jobs``), from the ``--threads`` it was submitted with.

``OMP_NUM_THREADS`` set by the user wins over the default; ``ssl-bench --threads N`` wins over
both. torchrun sets ``OMP_NUM_THREADS=1`` for every rank itself when it starts several and the
variable is unset; that value is torchrun's, not the user's, so the default applies.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

#: the variable torchrun sets for its ranks (torch.distributed.run), present in every rank it starts
TORCHRUN_MARK = "TORCHELASTIC_RUN_ID"


@dataclass(frozen=True)
class Threads:
    """A thread count and where it came from: ``--threads``, ``OMP_NUM_THREADS`` or ``default``
    (``reason``: the arithmetic of the default)."""

    count: int
    source: str
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.count} ({self.source}{': ' + self.reason if self.reason else ''})"


_chosen: Threads | None = None


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity set; all cores where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int | None, loader_workers: int = 0, environ=os.environ) -> Threads:
    """The thread count for ``--threads requested`` (None: not given) in a process that starts
    ``loader_workers`` data-loader workers (module docstring)."""
    if requested is not None:
        if requested < 1:
            raise UserError(f"--threads {requested}: must be at least 1")
        return Threads(requested, "--threads")
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp and not _set_by_torchrun(environ):
        first = omp.split(",")[0]  # OpenMP also takes a list, one count per nesting level
        if not first.isdigit() or int(first) < 1:
            raise UserError(f"OMP_NUM_THREADS={omp!r}: expected a positive whole number; unset it or give "
                            "--threads N")
        return Threads(int(first), "OMP_NUM_THREADS")
    cores, ranks = available_cores(), max(1, int(environ.get("LOCAL_WORLD_SIZE", 1)))
    slurm = slurm_cpus_per_task(environ)
    if slurm is not None:  # this task's own CPUs: not shared with the node's other tasks
        cores, ranks = min(cores, slurm), 1
    reason = f"{cores} core(s)" + (f" / {ranks} local ranks" if ranks > 1 else "") \
        + (" of this Slurm task" if slurm is not None else "") + f" - {loader_workers} loader worker(s)"
    return Threads(max(1, cores // ranks - loader_workers), "default", reason)


def slurm_cpus_per_task(environ=os.environ) -> int | None:
    """The CPUs Slurm gave each task of this job (``--cpus-per-task``), None outside such a task."""
    value = environ.get("SLURM_CPUS_PER_TASK", "").strip()
    if "SLURM_JOB_ID" not in environ or not value.isdigit() or int(value) < 1:
        return None
    return int(value)


def _set_by_torchrun(environ) -> bool:
    """Whether ``OMP_NUM_THREADS=1`` is torchrun's own default: this is one of its ranks and the
    launcher (the parent process) started without the variable. Where the launcher's environment
    cannot be read, the value counts as the user's."""
    if TORCHRUN_MARK not in environ or environ.get("OMP_NUM_THREADS", "").strip() != "1":
        return False
    start = launcher_environment()
    return start is not None and "OMP_NUM_THREADS" not in start


def launcher_environment() -> dict[str, str] | None:
    """The environment the parent process started with (Linux ``/proc``), None if unreadable."""
    try:
        raw = Path(f"/proc/{os.getppid()}/environ").read_bytes()
    except OSError:
        return None
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw.split(b"\0") if entry)
    return {name: value for name, _, value in pairs}


def apply_threads(threads: Threads) -> Threads:
    """Set torch's intra-op threads (and inter-op threads where torch still allows it: not once
    inter-op work has started or the count was set before) to ``threads.count``; remembered for
    the provenance of results (``chosen``)."""
    global _chosen
    import torch

    torch.set_num_threads(threads.count)
    try:
        torch.set_num_interop_threads(threads.count)
    except RuntimeError:  # too late in this process: torch keeps its inter-op pool (rarely used here)
        pass
    _chosen = threads
    return threads


def chosen() -> Threads | None:
    """The thread count this process was started with (None: not through the command line)."""
    return _chosen
