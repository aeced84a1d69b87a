"""``ssl-bench sweep`` with submitit's local executor for real: every (checkpoint, protocol) pair
is a job, stored pairs are reused, failures are listed with their logs and the rest finishes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from test_launch import job_env  # noqa: F401 - the fixture
from test_protocols_common import make_imagefolder

from ssl_bench.backbones import Backbone
from ssl_bench.checkpoints import save_checkpoint
from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.sweep import recipe_files

RANDOM = "random:vit_tiny_patch16_224"


@pytest.fixture
def project(tmp_path):
    """Tiny ImageFolder data, 32 px k-NN and low-shot recipes, and a second checkpoint."""
    data = make_imagefolder(tmp_path / "data")
    (tmp_path / "knn.yaml").write_text(yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "ks": [5]}))
    (tmp_path / "lowshot.yaml").write_text(
        yaml.safe_dump({"transform": {"resize": 36, "crop": 32}, "shots": [1], "splits": [1]}))
    torch.manual_seed(12345)  # weights unlike the random: baseline's seeded init
    save_checkpoint(tmp_path / "ckpt" / "checkpoint", Backbone("vit_tiny_patch16_224", 32, 16),
                    {"method": "msn", "encoder": "target"})
    return tmp_path, data


def sweep_argv(root: Path, data: Path, checkpoints, protocols) -> list[str]:
    argv = ["sweep", "--checkpoints", *checkpoints, "--protocols", *protocols, "--data", str(data),
            "--results", str(root / "results"), "--device", "cpu", "--max-parallel", "2", "--gpus-per-node", "0"]
    for protocol in protocols:
        if (root / f"{protocol}.yaml").is_file():
            argv += ["--recipe-for", f"{protocol}={root / f'{protocol}.yaml'}"]
    return argv


def stored(results: Path) -> list[tuple[str, str]]:
    payloads = [json.loads(path.read_text()) for path in results.glob("*/*.json")]
    return sorted((p["protocol"], p["checkpoint"]["spec"]) for p in payloads)


def test_two_by_two_sweep_stores_four_results_and_a_rerun_reuses_them(project, job_env, capsys):
    root, data = project
    argv = sweep_argv(root, data, [RANDOM, str(root / "ckpt")], ["knn", "lowshot"])
    assert main(argv) == 0
    out, err = capsys.readouterr()
    pairs = [(protocol, spec) for protocol in ("knn", "lowshot") for spec in (str(root / "ckpt"), RANDOM)]
    assert stored(root / "results") == pairs
    assert "0 of 4 evaluations already stored (reused); 4 to run" in err
    assert len(list((root / "results" / "jobs").glob("*_submitted.pkl"))) == 4  # one job per pair
    # the leaderboard of the sweep: both checkpoints, both protocols
    assert "## knn" in out and "## lowshot" in out
    assert "random init vit_tiny_patch16_224" in out and "msn vit_tiny_patch16_224 (ckpt)" in out

    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert "all 4 evaluations were already stored: reused, nothing to run" in err
    assert stored(root / "results") == pairs
    assert len(list((root / "results" / "jobs").glob("*_submitted.pkl"))) == 4  # no new job
    assert "## knn" in out


def test_a_failing_job_is_listed_with_its_log_and_the_others_finish(project, job_env, capsys):
    root, data = project
    # DAVIS needs a DAVIS tree: that job fails (in the job), the k-NN job still stores its result
    assert main(sweep_argv(root, data, [RANDOM], ["davis", "knn"])) == 1
    err = capsys.readouterr().err
    assert stored(root / "results") == [("knn", RANDOM)]
    failed = re.search(r"FAILED davis on random:vit_tiny_patch16_224: (.*) \(log: (\S+)\)", err)
    assert failed, err
    assert "not a davis dataset" in failed.group(1)
    assert "not a davis dataset" in Path(failed.group(2)).read_text()


def test_recipe_for_names_a_swept_protocol_and_an_existing_file(tmp_path):
    (tmp_path / "knn.yaml").write_text("ks: [5]\n")
    assert recipe_files(["knn", "linear"], [f"knn={tmp_path / 'knn.yaml'}"]) == {
        "knn": tmp_path / "knn.yaml", "linear": None}
    with pytest.raises(UserError, match="with P one of the protocols"):
        recipe_files(["knn"], [f"linear={tmp_path / 'knn.yaml'}"])
    with pytest.raises(UserError, match="no such file"):
        recipe_files(["knn"], [f"knn={tmp_path / 'missing.yaml'}"])
