"""Launching through submitit: the local executor for real (an evaluation, a preempted and requeued
pretraining), the sbatch file submitit renders from our flags, the torchrun variables of a job."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_engine import ENV, final_state, make_images, run_engine, write_recipe
from test_protocols_common import make_imagefolder

from ssl_bench.cli import main
from ssl_bench.evaluate import evaluate
from ssl_bench import threads
from ssl_bench.jobs import EvalJob, PretrainJob, SweepJob, export_distributed_environment
from ssl_bench.launch import LaunchOptions, make_executor, submit_array

REPO = Path(__file__).resolve().parents[1]
LOCAL = LaunchOptions(launcher="submitit-local", gpus_per_node=0, timeout=60)
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def clear_torchrun_variables(monkeypatch) -> None:
    """Unset them for the test and restore them after it (also when the test sets them)."""
    for name in TORCHRUN_VARIABLES:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def job_env(monkeypatch):
    """Jobs of the local executor inherit this environment: one thread, this checkout importable,
    no torchrun variables (a job sets its own)."""
    for name in ("OMP_NUM_THREADS", "PYTHONPATH"):
        monkeypatch.setenv(name, ENV[name])
    clear_torchrun_variables(monkeypatch)
    return monkeypatch


def child_pids(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc/*/stat: the field after the command name)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def wait_for(condition, what: str, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


# ----- real jobs of submitit's local executor ------------------------------------------------------
def test_eval_job_stores_what_an_evaluation_in_this_process_stores(tmp_path, job_env, capsys):
    data = make_imagefolder(tmp_path / "data")
    recipe = tmp_path / "knn.yaml"
    recipe.write_text(yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "ks": [5]}))
    spec = "random:vit_tiny_patch16_224"
    code = main(["eval", "--protocol", "knn", "--checkpoint", spec, "--data", str(data), "--recipe", str(recipe),
                 "--results", str(tmp_path / "results"), "--device", "cpu", "--launcher", "submitit-local",
                 "--gpus-per-node", "0", "--wait"])
    out = capsys.readouterr().out
    assert code == 0, out
    job_id = re.search(r"submitted job \(submitit local executor\) (\d+); log: (\S+)", out)
    assert job_id and Path(job_id.group(2)) == tmp_path / "results" / "jobs" / f"{job_id.group(1)}_0_log.err"
    assert (tmp_path / "results" / "jobs" / f"{job_id.group(1)}_submitted.pkl").is_file()
    stored = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*/*.json")]
    assert len(stored) == 1 and stored[0]["checkpoint"]["spec"] == spec
    assert stored[0]["machine"]["threads_from"] == "1 (OMP_NUM_THREADS)"  # set in the job, from its environment
    # the same evaluation in this process gives the same numbers
    records, _ = evaluate("knn", spec, data, recipe=recipe, results_dir=tmp_path / "here", device="cpu")
    assert [(r["metric"], r["value"]) for r in stored[0]["records"]] == [(r["metric"], r["value"]) for r in records]
    assert f"knn\timagenet\ttop1_k5\t{records[0]['value']:.4f}" in out


def test_preempted_pretraining_job_requeues_and_ends_with_the_uninterrupted_weights(tmp_path, job_env):
    data = make_images(tmp_path / "data", per_class=4)  # 8 images, batch 2: 8 steps, state every 2
    recipe = write_recipe(tmp_path, data, workers=0, every=2)
    uninterrupted = run_engine(recipe, tmp_path / "full")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    job_env.setenv("SSL_BENCH_PAUSE_AT_STEP", "4")  # the job waits there for the signal
    run = tmp_path / "run"
    job = make_executor(LOCAL, run / "jobs", "test-pretrain").submit(PretrainJob(recipe, run, [], "cpu"))
    wait_for(lambda: "paused after step 4" in (job.stderr() or ""), "the job to reach step 4")
    assert json.loads((run / "train_state.json").read_text())["step"] == 4
    (task,) = child_pids(int(job.job_id))  # the local executor's controller runs one task
    os.kill(task, signal.SIGUSR2)  # what Slurm sends a job it preempts
    assert Path(job.result()) == run / "checkpoint.json"
    log = job.stdout() + job.stderr()
    assert "this job is preempted" in log and "Requeued job" in log  # submitit's requeue
    assert "resuming at step 4/8" in job.stderr()  # the engine's exact resume
    meta_a, a = final_state(tmp_path / "full")
    meta_b, b = final_state(run)
    assert meta_a["step"] == meta_b["step"] == 8 and a.keys() == b.keys()
    for key in a:
        if not key.startswith("rng."):
            assert torch.equal(a[key], b[key]), key


# ----- Slurm ---------------------------------------------------------------------------------------
def fake_slurm(tmp_path: Path, monkeypatch, sbatch: str = 'echo "Submitted batch job 4242"') -> None:
    """``srun`` and ``sbatch`` stand-ins on PATH: submitit writes the real sbatch file, and the
    stand-in sbatch answers as Slurm does (or refuses)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("srun", "exit 0"), ("sbatch", sbatch)):
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def readme_flag_table() -> list[tuple[str, str]]:
    """(example flags, sbatch line) of each row of the README's flag table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("| flag | example | submitit parameter | sbatch line |"):].split("\n\n")[0]
    rows = [[cell.strip().strip("`") for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return [(row[1], row[3]) for row in rows]


def test_sbatch_file_holds_the_lines_the_readme_promises(tmp_path, monkeypatch, capsys):
    fake_slurm(tmp_path, monkeypatch)
    rows = readme_flag_table()
    assert len(rows) >= 10
    flags = []
    for example, _ in rows:
        if example and example not in flags and not example.startswith("--max-parallel"):
            flags.append(example)
    argv = ["pretrain", "--recipe", "pretrain/msn_vits16.yaml", "--out", str(tmp_path / "run"), "--launcher", "slurm"]
    for flag in flags:
        name, _, value = flag.partition(" ")
        argv += [name, value]
    assert main(argv) == 0
    out = capsys.readouterr().out
    log = tmp_path / "run" / "jobs" / "4242_0_log.err"
    assert f"submitted Slurm job 4242; log: {log}" in out
    sbatch = (tmp_path / "run" / "jobs" / "4242_submission.sh").read_text()  # submitit's own rendering
    # the sweep's job array, rendered by submitit from the same flags plus --max-parallel
    options = LaunchOptions(launcher="slurm", gpus_per_node=1)
    calls = [SweepJob({"knn": None}, "random:vit_tiny_patch16_224", tmp_path) for _ in range(20)]
    jobs = submit_array(make_executor(options, tmp_path / "sweep", "ssl-bench-sweep"), calls, max_parallel=16)
    assert [job.job_id for job in jobs] == [f"4242_{index}" for index in range(20)]
    array = (tmp_path / "sweep" / "4242_submission.sh").read_text()
    for example, line in rows:
        line = line.replace("OUT/", f"{tmp_path / 'run'}/").replace("0-K%", f"0-{len(calls) - 1}%")
        assert line in (array if example.startswith("--max-parallel") else sbatch).splitlines(), line
    assert f"#SBATCH --output={tmp_path / 'sweep'}/%A_%a_0_log.out" in array.splitlines()


def test_slurm_without_slurm_or_refused_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun here
    argv = ["eval", "--protocol", "knn", "--checkpoint", "random:vit_tiny_patch16_224", "--data", str(tmp_path),
            "--results", str(tmp_path / "results"), "--launcher", "slurm"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--launcher slurm: no Slurm reachable" in err[0]
    fake_slurm(tmp_path, monkeypatch, sbatch='echo "sbatch: error: invalid partition specified: nope" >&2; exit 1')
    assert main(argv + ["--partition", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ssl-bench: error: --launcher slurm: sbatch refused the job: "
                   "sbatch: error: invalid partition specified: nope"]
    assert main(argv + ["--slurm-set", "no_such_option=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_option" in err[0]


def test_job_environment_becomes_torchrun_variables(monkeypatch):
    """Task 11 of 16 (node 2 of 2, local rank 3) of Slurm job 77 on node[07-08]: the values torchrun
    would set for it."""
    clear_torchrun_variables(monkeypatch)
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "16",
                        "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "11",
                        "SLURM_LOCALID": "3", "SLURM_JOB_NODELIST": "node[07-08]",
                        "MASTER_PORT": "29400"}.items():
        monkeypatch.setenv(name, value)
    export_distributed_environment()
    assert {name: os.environ[name] for name in TORCHRUN_VARIABLES} == {
        "RANK": "11", "WORLD_SIZE": "16", "LOCAL_RANK": "3", "LOCAL_WORLD_SIZE": "8",
        "MASTER_ADDR": "node07", "MASTER_PORT": "29400"}


@pytest.mark.parametrize("submitted, expected", [
    (None, threads.Threads(2, "default", "3 core(s) of this Slurm task - 1 loader worker(s)")),
    (4, threads.Threads(4, "--threads"))])
def test_slurm_job_chooses_its_threads_on_its_node(tmp_path, monkeypatch, submitted, expected):
    """A task of a 16-core node given 3 CPUs (--cpus-per-task 3), 2 tasks on the node: without
    --threads, its 3 CPUs minus the protocol's loader worker, not the node's cores shared out."""
    clear_torchrun_variables(monkeypatch)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    for name, value in {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2",
                        "SLURM_JOB_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "1",
                        "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "node07", "SLURM_CPUS_PER_TASK": "3",
                        "MASTER_PORT": "29400"}.items():
        monkeypatch.setenv(name, value)
    saved = torch.get_num_threads()
    try:
        job = EvalJob({"knn": None}, "random:vit_tiny_patch16_224", tmp_path, sets=["num_workers=1"],
                      threads=submitted)
        assert list(job.start()) == ["knn"]
        assert threads.chosen() == expected and torch.get_num_threads() == expected.count
    finally:
        torch.set_num_threads(saved)
