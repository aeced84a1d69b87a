"""``ssl-bench sweep`` with submitit's local executor for real: one job per checkpoint holding the
protocols it still lacks, stored pairs reused, results equal to separate ``eval`` runs, a failing
protocol listed with its log while the rest of its job finishes, a requeued job running only what
it had not finished."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from submitit.core.utils import DelayedSubmission
from test_launch import job_env  # noqa: F401 - the fixture
from test_protocols_common import make_imagefolder

from ssl_bench import jobs
from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import load_spec, save_checkpoint
from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.evaluate import resolve_recipes
from ssl_bench.jobs import SweepJob
from ssl_bench.results import write_evaluation
from ssl_bench.sweep import Plan, recipe_files

pytestmark = pytest.mark.usefixtures("one_thread")

RANDOM = "random:vit_tiny_patch16_224"


@pytest.fixture
def project(tmp_path):
    """Tiny ImageFolder data (8 classes in 6 colours: accuracies away from 0 and 100), 32 px k-NN and
    low-shot recipes, and a second checkpoint."""
    data = make_imagefolder(tmp_path / "data", classes=8)
    (tmp_path / "knn.yaml").write_text(yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "ks": [5]}))
    (tmp_path / "lowshot.yaml").write_text(
        yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "shots": [1], "splits": [1]}))
    torch.manual_seed(12345)  # weights unlike the random: baseline's seeded init
    save_checkpoint(tmp_path / "ckpt" / "checkpoint", Backbone("vit_tiny_patch16_224", 32, 16),
                    {"method": "msn", "encoder": "target"})
    return tmp_path, data


def recipe_items(root: Path, protocols) -> list[str]:
    """``P=FILE`` for each protocol with a recipe in ``root``."""
    return [f"{p}={root / f'{p}.yaml'}" for p in protocols if (root / f"{p}.yaml").is_file()]


def sweep_argv(root: Path, data: Path, checkpoints, protocols) -> list[str]:
    return ["sweep", "--checkpoints", *checkpoints, "--protocols", *protocols, "--data", str(data),
            "--results", str(root / "results"), "--device", "cpu", "--max-parallel", "2", "--gpus-per-node", "0",
            *[arg for item in recipe_items(root, protocols) for arg in ("--recipe-for", item)]]


def payloads(results: Path) -> dict[tuple[str, str], list[dict]]:
    """{(protocol, checkpoint spec): [payload, ...]} of the store."""
    found: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(results.glob("*/*.json")):
        payload = json.loads(path.read_text())
        found.setdefault((payload["protocol"], payload["checkpoint"]["spec"]), []).append(payload)
    return found


def metrics(payload: dict) -> list[tuple]:
    return [(r["dataset"], r["metric"], r.get("seed"), r["value"]) for r in payload["records"]]


def submitted_jobs(results: Path) -> dict[str, list[str]]:
    """{checkpoint spec: its protocols} of every job the sweeps submitted (submitit's pickles)."""
    calls = [DelayedSubmission.load(path).function for path in (results / "jobs").glob("*_submitted.pkl")]
    assert len({call.spec for call in calls}) == len(calls), "two jobs for one checkpoint"
    return {call.spec: list(call.recipes) for call in calls}


def test_one_job_per_checkpoint_runs_the_missing_pairs_and_stores_what_separate_evals_store(
        project, job_env, capsys):
    root, data = project
    ckpt = str(root / "ckpt")
    # separate evaluations, one process and one protocol each: the values the sweep must reproduce
    for spec in (RANDOM, ckpt):
        for protocol in ("knn", "lowshot"):
            assert main(["eval", "--protocol", protocol, "--checkpoint", spec, "--data", str(data), "--results",
                         str(root / "separate"), "--device", "cpu", "--recipe", str(root / f"{protocol}.yaml")]) == 0
    separate = payloads(root / "separate")
    # one pair already done: k-NN of the random baseline, its result file in the sweep's store
    (done,) = [path for path in (root / "separate" / "knn").glob("*.json")
               if json.loads(path.read_text())["checkpoint"]["spec"] == RANDOM]
    (root / "results" / "knn").mkdir(parents=True)
    for path in done.parent.glob(f"{done.stem}.*"):  # the JSON and its per-sample predictions
        shutil.copy(path, root / "results" / "knn" / path.name)
    capsys.readouterr()

    argv = sweep_argv(root, data, [RANDOM, ckpt], ["knn", "lowshot"])
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "1 of 4 evaluations already stored (reused); 3 to run in 2 jobs, one per checkpoint" in err
    # two jobs, not three: the random baseline's holds only its missing protocol
    assert submitted_jobs(root / "results") == {RANDOM: ["lowshot"], ckpt: ["knn", "lowshot"]}
    for pair in (f"knn on {ckpt}", f"lowshot on {ckpt}", f"lowshot on {RANDOM}"):
        assert f"done: {pair}" in err
    assert f"done: knn on {RANDOM}" not in err
    stored = payloads(root / "results")
    assert sorted(stored) == sorted(separate) and all(len(found) == 1 for found in stored.values())
    assert stored[("knn", RANDOM)] == separate[("knn", RANDOM)]  # the stored pair, not re-run
    values = [value for found in separate.values() for *_, value in metrics(found[0])]
    assert any(0 < value < 100 for value in values if value)  # numbers that can differ
    for pair, (payload,) in stored.items():  # the same numbers, bit for bit, as the separate runs
        assert metrics(payload) == metrics(separate[pair][0]), pair
        assert payload["recipe"] == separate[pair][0]["recipe"], pair
    # the leaderboard of the sweep: both checkpoints, both protocols
    assert "## knn" in out and "## lowshot" in out
    assert "random init vit_tiny_patch16_224" in out and "msn vit_tiny_patch16_224 (ckpt)" in out

    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "all 4 evaluations were already stored: reused, nothing to run" in err
    assert submitted_jobs(root / "results") == {RANDOM: ["lowshot"], ckpt: ["knn", "lowshot"]}  # no new job
    assert payloads(root / "results") == stored
    assert "## knn" in out


def test_a_failing_protocol_is_listed_with_its_log_and_the_rest_of_its_job_finishes(project, job_env, capsys):
    root, data = project
    # DAVIS needs a DAVIS tree: it fails first in the checkpoint's one job, whose k-NN still runs
    assert main(sweep_argv(root, data, [RANDOM], ["davis", "knn"])) == 1
    err = capsys.readouterr().err
    assert submitted_jobs(root / "results") == {RANDOM: ["davis", "knn"]}
    assert list(payloads(root / "results")) == [("knn", RANDOM)]
    assert f"done: knn on {RANDOM}" in err and f"done: davis on {RANDOM}" not in err
    failed = re.findall(r"FAILED (\S+) on random:vit_tiny_patch16_224: (.*) \(log: (\S+)\)", err)
    assert len(failed) == 1, err
    protocol, reason, log = failed[0]
    assert protocol == "davis" and reason.startswith("ssl_bench.errors.UserError: ")
    assert "not a davis dataset" in reason
    assert "not a davis dataset" in Path(log).read_text()


def test_plan_is_one_job_per_checkpoint_with_work_left(project):
    root, data = project
    ckpt = str(root / "ckpt")
    recipes = recipe_files(["knn", "lowshot", "linear"], recipe_items(root, ["knn", "lowshot"]))
    plan = Plan([RANDOM, ckpt, RANDOM], recipes, root / "results")
    assert [(job.spec, list(job.recipes)) for job in plan.jobs(data, "cpu")] == [
        (RANDOM, ["knn", "lowshot", "linear"]), (ckpt, ["knn", "lowshot", "linear"])]

    resolved = resolve_recipes(recipes)
    for spec, protocol in ((RANDOM, "linear"), (ckpt, "knn"), (ckpt, "lowshot"), (ckpt, "linear")):
        checkpoint = {"label": spec, "sha256": load_spec(spec).sha256, "method": None, "arch": "vit_tiny_patch16_224"}
        write_evaluation(root / "results", protocol=protocol, checkpoint=checkpoint, recipe=resolved[protocol],
                         records=[{"dataset": "imagenet", "metric": "top1", "value": 1.0}], wall_time_s=0.0)
    # the array has one task: the fully stored checkpoint gets no job
    assert [(job.spec, list(job.recipes), job.recipes["knn"]) for job in plan.jobs(data, "cpu")] == [
        (RANDOM, ["knn", "lowshot"], root / "knn.yaml")]


def test_a_job_that_died_fails_its_unstored_protocols_with_the_jobs_reason(project):
    root, data = project
    recipes = recipe_files(["knn", "lowshot"], [])
    plan = Plan([RANDOM], recipes, root / "results")
    checkpoint = {"label": RANDOM, "sha256": plan.hashes[RANDOM], "method": None, "arch": "vit_tiny_patch16_224"}
    write_evaluation(root / "results", protocol="knn", checkpoint=checkpoint, recipe=plan.resolved["knn"],
                     records=[{"dataset": "imagenet", "metric": "top1", "value": 1.0}], wall_time_s=0.0)

    class Killed:  # a job whose process was killed after storing k-NN: submitit has no result for it
        def exception(self):
            return RuntimeError("Job 7 (task: 0) with path results/jobs/7_0_result.pkl\nhas not produced any "
                                "output (state: OUT_OF_MEMORY)")

    (call,) = plan.jobs(data, "cpu")
    assert list(call.recipes) == ["lowshot"]
    call.recipes = recipes  # as submitted, before k-NN was stored
    assert plan.outcomes(call, Killed()) == {"knn": None, "lowshot": "Job 7 (task: 0) with path "
                                             "results/jobs/7_0_result.pkl"}


def test_requeued_job_runs_only_what_it_had_not_finished(project, monkeypatch):
    root, data = project
    monkeypatch.setattr(jobs, "export_distributed_environment", lambda: None)  # no submitit job here
    recipes = {"davis": None, "lowshot": root / "lowshot.yaml", "knn": root / "knn.yaml"}
    job = SweepJob(recipes, RANDOM, data, results_dir=root / "results", device="cpu")
    job.finished.update({"davis": "ssl_bench.errors.UserError: not a davis dataset", "lowshot": None})  # then preempted
    requeued = job.checkpoint()
    assert isinstance(requeued, DelayedSubmission) and requeued.function is not job
    assert requeued.function.recipes == {"knn": root / "knn.yaml"} and requeued.function.spec == RANDOM
    # the requeued job evaluates k-NN alone and reports every protocol of the original job
    assert requeued.result() == {"davis": "ssl_bench.errors.UserError: not a davis dataset", "lowshot": None,
                                 "knn": None}
    assert list(payloads(root / "results")) == [("knn", RANDOM)]


def test_recipe_for_names_a_swept_protocol_and_an_existing_file(tmp_path):
    (tmp_path / "knn.yaml").write_text("ks: [5]\n")
    assert recipe_files(["knn", "linear"], [f"knn={tmp_path / 'knn.yaml'}"]) == {
        "knn": tmp_path / "knn.yaml", "linear": None}
    with pytest.raises(UserError, match="with P one of the protocols"):
        recipe_files(["knn"], [f"linear={tmp_path / 'knn.yaml'}"])
    with pytest.raises(UserError, match="no such file"):
        recipe_files(["knn"], [f"knn={tmp_path / 'missing.yaml'}"])
