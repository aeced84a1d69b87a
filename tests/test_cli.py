"""The command line contract: subcommands, exit code 2 and one-line errors on bad input."""

import dataclasses
import json
import subprocess
import sys

import pytest

import ssl_bench.cli as cli
from ssl_bench.cli import main
from ssl_bench.errors import UserError
from ssl_bench.progress import progress


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


def test_a_bug_is_one_line_naming_the_saved_traceback_exit_1(tmp_path, capsys, monkeypatch):
    """Any exception but a UserError is a bug: exit 1 (not 2), one line, the traceback in a file."""
    from ssl_bench import cli

    def broken(args):
        raise ZeroDivisionError("division by zero in the k-NN vote")

    monkeypatch.setitem(cli.COMMANDS, "leaderboard", cli.Command("leaderboard", "tables", cli._leaderboard_arguments,
                                                                 broken))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    assert main(["leaderboard", "--results", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err
    assert "internal error: ZeroDivisionError: division by zero in the k-NN vote" in lines[0]
    saved = list(tmp_path.glob("ssl-bench-traceback-*.txt"))
    assert len(saved) == 1 and str(saved[0]) in lines[0]
    text = saved[0].read_text()
    assert "Traceback (most recent call last)" in text and "in broken" in text and "leaderboard --results" in text


def test_a_user_error_from_a_data_loader_worker_is_its_own_one_line():
    """torch re-raises a worker's exception with the worker's traceback in the message; the line the
    user sees is the original message only."""
    from torch.utils.data import DataLoader, Dataset

    from ssl_bench.errors import UserError, one_line

    class Broken(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise UserError(f"images/{i}.JPEG: cannot be read as an image")

    with pytest.raises(UserError) as caught:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Traceback" in str(caught.value)  # what torch makes of it
    assert one_line(caught.value) == "images/0.JPEG: cannot be read as an image"


def test_an_error_line_starts_on_a_clean_line_after_an_open_progress_bar(monkeypatch, capsys):
    """A command failing inside a loop with a progress bar (no --quiet): the bar is cleared before
    the error, so a terminal shows the error alone on its line, not after the bar's text."""
    def failing(args):
        bar = progress(total=10, desc="working through the data")
        bar.update(3)
        raise UserError("broken input")

    monkeypatch.setitem(cli.COMMANDS, "leaderboard", dataclasses.replace(cli.COMMANDS["leaderboard"], run=failing))
    assert main(["leaderboard"]) == 2
    last_line = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert "working through the data" in last_line  # the bar was drawn on this line
    screen = ""  # what a terminal shows: each carriage return writes over the line from its start
    for segment in last_line.split("\r"):
        screen = segment + screen[len(segment):]
    assert screen.rstrip() == "ssl-bench: error: broken input"
