"""The command line contract: subcommands, exit code 2 and one-line errors on bad input."""

import json
import subprocess
import sys

import pytest

from ssl_bench.cli import main


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ssl_bench.cli", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_help_lists_the_commands():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("pretrain", "eval", "sweep", "leaderboard", "data", "bench"):
        assert command in out.stdout


def assert_one_line_error(out, *fragments):
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_unknown_protocol_exits_2_with_one_line():
    out = run_cli("eval", "--protocol", "no-such-protocol", "--checkpoint",
                  "random:vit_tiny_patch16_224", "--data", "no/such/dir")
    assert_one_line_error(out, "unknown protocol 'no-such-protocol'", "valid protocols:")


def test_missing_checkpoint_file_exits_2(tmp_path, capsys):
    code = main(["eval", "--protocol", "knn", "--checkpoint", str(tmp_path / "nothing"),
                 "--data", str(tmp_path)])
    assert code == 2
    assert "checkpoint metadata not found" in capsys.readouterr().err


def test_unknown_recipe_key_exits_2_naming_key_and_file(tmp_path, capsys):
    recipe = tmp_path / "knn.yaml"
    recipe.write_text("no_such_key: 1\n")
    code = main(["eval", "--protocol", "knn", "--checkpoint", "random:vit_tiny_patch16_224",
                 "--data", str(tmp_path), "--recipe", str(recipe)])
    err = capsys.readouterr().err
    assert code == 2 and str(recipe) in err and "'no_such_key'" in err


def test_wrong_type_in_set_exits_2(tmp_path, capsys):
    code = main(["eval", "--protocol", "knn", "--checkpoint", "random:vit_tiny_patch16_224",
                 "--data", str(tmp_path), "--set", "batch_size=lots"])
    err = capsys.readouterr().err
    assert code == 2 and "'batch_size' must be an integer" in err


def test_leaderboard_writes_every_format(tmp_path, capsys):
    from ssl_bench.results import write_evaluation

    write_evaluation(tmp_path / "r", protocol="knn", checkpoint={"label": "random:vit_tiny", "sha256": "x"},
                     recipe={}, wall_time_s=1.0,
                     records=[{"dataset": "embedded-imagenet", "metric": "top1_k20", "value": 42.5}])
    for fmt in ("md", "csv", "tex", "html"):
        out = tmp_path / f"lb.{fmt}"
        assert main(["leaderboard", "--results", str(tmp_path / "r"), "--format", fmt,
                     "--out", str(out)]) == 0
        assert "42.5" in out.read_text()
    assert main(["leaderboard", "--results", str(tmp_path / "nope")]) == 2
    assert main(["leaderboard", "--results", str(tmp_path / "r"), "--format", "pdf"]) == 2
