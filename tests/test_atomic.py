"""Crash-safe writes: stale temporaries of dead writers are removed, a live writer's temporary survives,
a full or read-only store is one line naming the path and leaves no partial file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time

import pytest

from ssl_bench import atomic
from ssl_bench.atomic import (STALE_AFTER_S, atomic_write, atomic_write_bytes, check_writable,
                              remove_stale_temporaries)
from ssl_bench.errors import UserError

HOST = atomic._HOST


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_removes_a_dead_writers_temporaries_and_keeps_a_live_ones(tmp_path):
    (tmp_path / "knn").mkdir()
    dead = tmp_path / "knn" / f".result.json.{HOST}-{dead_pid()}.ab12_cd.tmp"
    live = tmp_path / "knn" / f".result.json.{HOST}-{os.getpid()}.zz99.tmp"
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as sleeper:
        other_live = tmp_path / f".features.npy.{HOST}-{sleeper.pid}.q1.tmp"
        other_host_new = tmp_path / ".features.npy.elsewhere-1.q2.tmp"
        other_host_old = tmp_path / ".features.npy.elsewhere-2.q3.tmp"
        legacy_old = tmp_path / ".checkpoint.safetensors.k7x9.tmp"  # before the pid was in the name
        not_ours = tmp_path / ".editor-swap.tmp"
        for path in (dead, live, other_live, other_host_new, other_host_old, legacy_old, not_ours):
            path.write_bytes(b"partial")
        old = time.time() - STALE_AFTER_S - 60
        for path in (other_host_old, legacy_old, not_ours):
            os.utime(path, (old, old))
        removed = remove_stale_temporaries(tmp_path)
        sleeper.kill()
    assert sorted(removed) == sorted([dead, other_host_old, legacy_old])
    assert all(p.exists() for p in (live, other_live, other_host_new, not_ours))


def test_a_killed_write_leaves_a_temporary_the_next_start_removes(tmp_path):
    code = ("import os, signal; from pathlib import Path; from ssl_bench.atomic import atomic_write\n"
            f"atomic_write(Path(r'{tmp_path}') / 'features.npy', "
            "lambda tmp: (tmp.write_bytes(b'x' * 100), os.kill(os.getpid(), signal.SIGKILL)))\n")
    killed = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert killed.returncode == -9
    left = list(tmp_path.glob(".features.npy.*.tmp"))
    assert len(left) == 1 and not (tmp_path / "features.npy").exists()
    assert remove_stale_temporaries(tmp_path) == left
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left"), (errno.EROFS, "read-only")])
def test_storage_failure_is_one_line_and_no_partial_file(code, reason, tmp_path, monkeypatch):
    def failing(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(atomic.os, "fsync", failing)
    with pytest.raises(UserError, match=f"{tmp_path / 'r.json'}: cannot write \\({reason}"):
        atomic_write_bytes(tmp_path / "r.json", b"{}")
    with pytest.raises(UserError, match=f"{tmp_path}: the store is not writable \\({reason}"):
        check_writable(tmp_path, "store")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_a_file_where_a_folder_belongs(tmp_path):
    (tmp_path / "out").write_text("x")
    with pytest.raises(UserError, match="out: is a file, not a folder"):
        check_writable(tmp_path / "out")
    with pytest.raises(UserError, match="out: is a file, not a folder"):
        atomic_write(tmp_path / "out" / "a.json", lambda tmp: tmp.write_text("{}"))
