"""The thread count every command starts with: the default from the cores and loader workers,
OMP_NUM_THREADS over it, --threads over both, torchrun's ranks sharing the cores, and the count
recorded with results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from ssl_bench import threads as threads_module
from ssl_bench.cli import build_parser, main
from ssl_bench.errors import UserError
from ssl_bench.provenance import describe_machine, run_machine
from ssl_bench.threads import Threads, apply_threads, choose_threads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    """Commands run here change the process's thread count: put it back; no OMP_NUM_THREADS, no torchrun."""
    saved = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "SLURM_JOB_ID", "SLURM_CPUS_PER_TASK",
                 threads_module.TORCHRUN_MARK):
        monkeypatch.delenv(name, raising=False)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def cores(monkeypatch):
    """Fake the process's affinity set: ``cores(n)`` makes it n CPUs."""
    def fake(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    return fake


def test_default_is_the_affinity_set_minus_the_loader_workers(cores):
    cores(8)
    assert choose_threads(None, loader_workers=3) == Threads(5, "default", "8 core(s) - 3 loader worker(s)")
    assert choose_threads(None).count == 8
    assert choose_threads(None, loader_workers=8).count == 1  # never below one
    assert choose_threads(None, loader_workers=20).count == 1


def test_without_an_affinity_set_all_cores_count(monkeypatch):
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert choose_threads(None, loader_workers=2).count == 4


def test_omp_num_threads_wins_over_the_default_and_threads_over_both(cores, monkeypatch):
    cores(8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(None, loader_workers=1) == Threads(3, "OMP_NUM_THREADS")
    assert choose_threads(2, loader_workers=1) == Threads(2, "--threads")
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's per-level list: the outer level counts
    assert choose_threads(None).count == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "many")
    with pytest.raises(UserError, match="OMP_NUM_THREADS='many'"):
        choose_threads(None)
    with pytest.raises(UserError, match="--threads 0: must be at least 1"):
        choose_threads(0)


def test_torchrun_ranks_share_the_cores(cores, monkeypatch):
    cores(16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert choose_threads(None, loader_workers=1) == Threads(3, "default",
                                                            "16 core(s) / 4 local ranks - 1 loader worker(s)")
    # torchrun's own OMP_NUM_THREADS=1 (its launcher started without the variable) is not the user's ...
    monkeypatch.setenv(threads_module.TORCHRUN_MARK, "run-1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(threads_module, "launcher_environment", lambda: {"PATH": "/bin"})
    assert choose_threads(None, loader_workers=1).count == 3
    # ... but the user's, given to torchrun, wins
    monkeypatch.setattr(threads_module, "launcher_environment", lambda: {"OMP_NUM_THREADS": "1"})
    assert choose_threads(None, loader_workers=1) == Threads(1, "OMP_NUM_THREADS")
    monkeypatch.setattr(threads_module, "launcher_environment", lambda: None)  # unreadable: the user's
    assert choose_threads(None, loader_workers=1).source == "OMP_NUM_THREADS"


def test_a_slurm_task_has_its_own_cpus(cores, monkeypatch):
    """--cpus-per-task 10, 4 tasks on a 64-core node: each task's 10 CPUs, not 64 / 4; at most
    the affinity set; outside a Slurm job the variable means nothing."""
    cores(64)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "10")
    assert choose_threads(None, loader_workers=2).count == 14  # no SLURM_JOB_ID: 64 / 4 - 2
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    assert choose_threads(None, loader_workers=2) == Threads(8, "default",
                                                            "10 core(s) of this Slurm task - 2 loader worker(s)")
    cores(6)  # the task is bound to fewer CPUs than it asked for
    assert choose_threads(None, loader_workers=2).count == 4
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "")  # no --cpus-per-task: the node's cores, shared
    assert choose_threads(None, loader_workers=2).count == 1


PROBE = textwrap.dedent("""
    import os
    from pathlib import Path
    from ssl_bench.threads import choose_threads
    Path(f"rank{os.environ['LOCAL_RANK']}.txt").write_text(choose_threads(None).source)
""")


@pytest.mark.parametrize("user_omp", [None, "1"])
def test_a_real_torchrun_default_is_told_from_the_users(tmp_path, user_omp):
    """Two ranks under torch.distributed.run: without OMP_NUM_THREADS torchrun sets it to 1 for each
    rank, and the ranks see it as torchrun's; with the user's it stays the user's."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if user_omp is not None:
        env["OMP_NUM_THREADS"] = user_omp
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "0", str(script)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = "default" if user_omp is None else "OMP_NUM_THREADS"
    assert [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(2)] == [expected, expected]


def test_threads_is_accepted_before_and_after_any_command():
    bench = ["bench", "pretrain", "--method", "msn"]
    assert build_parser(bench).parse_args(bench).threads is None
    assert build_parser(bench).parse_args([*bench, "--threads", "1"]).threads == 1
    assert build_parser(bench).parse_args(["--threads", "2", *bench]).threads == 2
    assert build_parser(bench).parse_args(["--threads", "2", *bench, "--threads", "1"]).threads == 1
    nested = ["--threads", "2", "bench", "--threads", "1", "pretrain", "--method", "msn"]
    assert build_parser(nested).parse_args(nested).benchmark == "pretrain"
    assert build_parser(nested).parse_args(nested).threads == 1
    check = ["data", "check", "--root", "x", "--format", "imagenet", "--threads", "3"]
    assert build_parser(check).parse_args(check).threads == 3


def test_a_command_starts_with_the_threads_and_records_them(cores, tmp_path):
    cores(4)
    main(["--threads", "3", "data", "check", "--root", str(tmp_path), "--format", "imagenet"])
    assert torch.get_num_threads() == 3
    assert run_machine()["threads"] == 3 and run_machine()["threads_from"] == "3 (--threads)"
    assert describe_machine(run_machine()).endswith(", 3 thread(s)")
    main(["data", "check", "--root", str(tmp_path), "--format", "imagenet"])
    assert torch.get_num_threads() == 4
    assert run_machine()["threads_from"] == "4 (default: 4 core(s) - 0 loader worker(s))"


def test_pretrain_leaves_the_recipes_loader_workers_their_cores(cores, tmp_path):
    cores(4)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"method: msn\ndata: {{root: {tmp_path / 'missing'}, num_workers: 3}}\n")
    assert main(["pretrain", "--recipe", str(recipe), "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert torch.get_num_threads() == 1  # 4 cores - 3 workers, set before the missing data is found


def test_eval_leaves_the_protocols_loader_workers_their_cores(cores, tmp_path):
    cores(6)
    code = main(["eval", "--protocol", "knn,linear", "--set", "num_workers=2", "--checkpoint",
                 str(tmp_path / "nothing"), "--data", str(tmp_path)])
    assert code == 2 and torch.get_num_threads() == 4


def test_apply_survives_interop_threads_already_started():
    torch.set_num_interop_threads  # noqa: B018 - exists; a second call in one process raises RuntimeError
    apply_threads(Threads(2, "--threads"))
    apply_threads(Threads(1, "--threads"))  # inter-op pool already fixed: no crash
    assert torch.get_num_threads() == 1
