"""The built wheel installed (not editable) in a fresh virtual environment runs on its own: it
reads nothing of the repository.

The fresh environment gets ssl-bench from the wheel and nothing else; its third-party
dependencies (torch & co., gigabytes) come from this interpreter's site-packages through a
``.pth`` line added after the install. A site folder added by a ``.pth`` line is not scanned for
``.pth`` files itself, so this environment's editable ssl-bench (its ``__editable__`` finder)
stays inactive there, and ``import ssl_bench`` can only find the wheel's copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def test_wheel_in_a_fresh_venv_runs_leaderboard_export_and_bench(tmp_path):
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(REPO / "ssl_bench", source / "ssl_bench", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", tmp_path / "dist", source], tmp_path)
    wheel = next((tmp_path / "dist").glob("ssl_bench-*.whl"))

    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    python, script = venv / "bin" / "python", venv / "bin" / "ssl-bench"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        tmp_path)
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    project = tmp_path / "project"  # a user's project folder: recipes, no package sources
    (project / "pretrain").mkdir(parents=True)
    for name in ("msn_tiny.yaml", "msn_vits16.yaml"):
        shutil.copy(REPO / "pretrain" / name, project / "pretrain" / name)
    where = run([python, "-c", "import ssl_bench; print(ssl_bench.__file__)"], project).stdout.strip()
    assert Path(where).is_relative_to(site), where

    run([python, "-m", "ssl_bench.leaderboard.synthetic", project / "store"], project)
    board = run([script, "--quiet", "leaderboard", "--results", project / "store"], project).stdout
    assert "synthetic-msn" in board and "top1_k20" in board

    run([script, "--quiet", "export", "--format", "mmseg", "--checkpoint", "random:vit_tiny_patch16_224",
         "--out", project / "export"], project)
    assert "num_layers=12" in (project / "export" / "mmseg_upernet_ade20k.py").read_text()  # a template shipped

    bench = run([script, "--quiet", "bench", "pretrain", "--method", "msn", "--steps", "2"], project).stdout
    table = dict(line.split("\t")[:2] for line in bench.splitlines() if "\t" in line)
    # the project's msn_tiny recipe: 64 px anchors (13 of 16 patches kept) + CLS, 4 focal views of 4 patches
    assert table["method"] == "msn" and int(table["online tokens/step"]) == 64 * (1 + 13) + 64 * 4 * (1 + 4)
