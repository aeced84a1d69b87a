"""Jobs through submitit: ``--launcher slurm`` (sbatch), ``--launcher submitit-local`` (submitit's
local executor: the same job, pickles and logs on this machine) and the sweep's job pool.

A launched command becomes a callable of ``ssl_bench.jobs`` that submitit pickles into
``FOLDER/jobs/`` (the run folder of a pretraining, the results store of an evaluation), next to
the sbatch file and the logs ``<job id>_<task>_log.{out,err}``. The flags map onto submitit's
``AutoExecutor`` parameters (``executor_parameters``), which submitit renders as ``#SBATCH`` lines;
the README's Slurm section tabulates them.

submitit is imported only when a job is submitted, so the CLI starts without it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import UserError
from .progress import log
from .recipes import parse_assignment

LAUNCHERS = ("local", "submitit-local", "slurm")
DEFAULT_TIMEOUT_MIN = 4320  # 72 h: the --timeout default of MAE's submitit_pretrain.py


@dataclass
class LaunchOptions:
    """Where and how a command runs (the launcher flags)."""

    launcher: str = "local"
    nodes: int = 1
    gpus_per_node: int = 1
    partition: str | None = None
    timeout: int = DEFAULT_TIMEOUT_MIN
    account: str | None = None
    constraint: str | None = None
    slurm_set: tuple[str, ...] = ()
    wait: bool = False
    max_parallel: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LaunchOptions:
        return cls(**{name: getattr(args, name) for name in cls.__dataclass_fields__ if hasattr(args, name)})


def add_launcher_arguments(parser: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    """The launcher flags of ``pretrain`` and ``eval`` (``sweep``: no submitit-local, no --wait)."""
    defaults = LaunchOptions()
    group = parser.add_argument_group("launcher (Slurm through submitit; see the README's Slurm section)")
    if sweep:
        group.add_argument("--launcher", choices=("local", "slurm"), default="local", help=(
            "local: one process per checkpoint on this machine (submitit's local executor); "
            "slurm: a Slurm job array, one task per checkpoint"))
    else:
        group.add_argument("--launcher", choices=LAUNCHERS, default="local", help=(
            "local: in this process; slurm: a job submitted with sbatch through submitit; "
            "submitit-local: a job of submitit's local executor (pickles, logs, requeue as on Slurm)"))
    group.add_argument("--nodes", type=int, default=defaults.nodes, help="nodes per job (slurm)")
    group.add_argument("--gpus-per-node", type=int, default=defaults.gpus_per_node,
                       help="GPUs per node, one task (process) per GPU as with torchrun --nproc_per_node; "
                            "0: one CPU task")
    group.add_argument("--partition", help="Slurm partition")
    group.add_argument("--timeout", type=int, default=defaults.timeout, metavar="MIN",
                       help=f"time limit in minutes (default {defaults.timeout}); a pretraining job "
                            "requeues itself before it and resumes")
    group.add_argument("--account", help="Slurm account to charge")
    group.add_argument("--constraint", help="Slurm node features, e.g. volta32gb")
    group.add_argument("--slurm-set", action="append", default=[], metavar="KEY=VALUE",
                       help="any other parameter of submitit's Slurm executor, e.g. cpus_per_task=10, "
                            "mem_gb=64, qos=high, exclude=node07 (repeatable; VALUE read as YAML)")
    if not sweep:
        group.add_argument("--wait", action="store_true",
                           help="with slurm or submitit-local: wait for the job and print its output")


def _slurm_assignment(text: str) -> tuple[str, object]:
    try:
        [(key, value)] = parse_assignment(text).items()
    except UserError:
        raise UserError(f"--slurm-set {text}: expected KEY=VALUE, e.g. --slurm-set cpus_per_task=10") from None
    return key.replace("-", "_"), value


def executor_parameters(options: LaunchOptions, name: str) -> dict:
    """submitit ``AutoExecutor`` parameters of the launcher flags (``slurm_*`` apply on Slurm only)."""
    params = {"name": name, "timeout_min": options.timeout, "nodes": options.nodes,
              "tasks_per_node": max(1, options.gpus_per_node),  # one process per GPU
              "gpus_per_node": options.gpus_per_node or None,
              "slurm_partition": options.partition, "slurm_account": options.account,
              "slurm_constraint": options.constraint}
    for text in options.slurm_set:
        key, value = _slurm_assignment(text)
        params[f"slurm_{key}"] = value
    return params


def make_executor(options: LaunchOptions, folder: Path, name: str):
    """A submitit executor writing its pickles and logs to ``folder``; bad flags are UserErrors."""
    import submitit  # optional at start-up: only a launched job needs it

    cluster = "slurm" if options.launcher == "slurm" else "local"
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as err:
        raise UserError(f"--launcher slurm: no Slurm reachable from here ({err}); run on a Slurm "
                        "login node, or use --launcher local") from None
    try:
        executor.update_parameters(**executor_parameters(options, name))
    except (NameError, ValueError, AssertionError, TypeError) as err:
        raise UserError(f"launcher flags: {str(err).splitlines()[0]}") from None
    return executor


def _submitted(action: Callable):
    """Run a submission, turning a refused sbatch into a UserError."""
    from submitit.core.utils import FailedSubmissionError, UncompletedJobError

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's refusal; it is in err
            return action()
    except (UncompletedJobError, FailedSubmissionError, OSError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        raise UserError(f"--launcher slurm: sbatch refused the job: {lines[-1]}") from None


def describe(job, launcher: str) -> str:
    kind = "Slurm job" if launcher == "slurm" else "job (submitit local executor)"
    return f"{kind} {job.job_id}; log: {job.paths.stderr} (stdout: {job.paths.stdout.name})"


def outcome(job) -> tuple[object, str | None]:
    """Once ``job`` has ended: (rank 0's return value, None) or (None, the reason it failed)."""
    error = job.exception()
    if error is None:
        return job.results()[0], None
    text = str(error)
    trace = re.search(r"with trace:\n-+\n(.*?)\n-+\n", text, re.S)  # a Python exception in the job
    lines = [line for line in (trace.group(1) if trace else text).splitlines() if line.strip()]
    if not lines:
        return None, type(error).__name__
    return None, lines[-1] if trace else lines[0]  # the exception line, or why no result came


def launch(call, options: LaunchOptions, folder: Path, name: str, show: Callable[[object], None]) -> int:
    """Submit one job; print its id and log; with ``--wait`` wait, ``show`` its result, and return
    0, or 1 with the reason when the job failed."""
    executor = make_executor(options, folder, name)
    job = _submitted(lambda: executor.submit(call))
    print(f"submitted {describe(job, options.launcher)}")
    if not options.wait:
        return 0
    result, failure = outcome(job)
    if failure is not None:
        print(f"ssl-bench: error: job {job.job_id} failed: {failure}; log: {job.paths.stderr}",
              file=sys.stderr)
        return 1
    show(result)
    return 0


def submit_array(executor, calls: list, max_parallel: int | None) -> list:
    """All ``calls`` as one Slurm job array, at most ``max_parallel`` tasks running at once."""
    if max_parallel:
        executor.update_parameters(slurm_array_parallelism=max_parallel)

    def submit():
        with executor.batch():
            return [executor.submit(call) for call in calls]

    return _submitted(submit)


def run_jobs(calls: list, options: LaunchOptions, folder: Path, name: str,
             on_done: Callable[[object, object], None]) -> None:
    """Every call as its own job, ``on_done(call, job)`` as each ends: on Slurm one job array,
    locally at most ``max_parallel`` (default 1) processes of submitit's local executor."""
    executor = make_executor(options, folder, name)
    waiting, running = list(calls), []
    if options.launcher == "slurm":
        running, waiting = list(zip(waiting, submit_array(executor, waiting, options.max_parallel))), []
        log(f"submitted Slurm job array {running[0][1].job_id.split('_')[0]} ({len(running)} tasks); "
            f"logs in {folder}")
    poll_s = 30.0 if options.launcher == "slurm" else 0.5  # sacct is not to be hammered
    while waiting or running:
        while waiting and len(running) < (options.max_parallel or 1):
            call = waiting.pop(0)
            running.append((call, executor.submit(call)))
        time.sleep(poll_s)
        for item in [item for item in running if item[1].done()]:
            running.remove(item)
            on_done(*item)
