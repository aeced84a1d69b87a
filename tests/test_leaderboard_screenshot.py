"""The leaderboard page renders in headless Chromium (scripts/screenshot_leaderboard.sh).

Marked slow (make test-slow): it needs Debian's chromium (apt-get install -y chromium) and
fails, naming the install command, when chromium is missing; it is never skipped.
"""

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_screenshot_of_the_leaderboard_page(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, ("chromium is not installed: run 'apt-get update && apt-get install -y chromium' "
                      "(needed by scripts/screenshot_leaderboard.sh)")
    out = tmp_path / "shot.png"
    run = subprocess.run([str(ROOT / "scripts" / "screenshot_leaderboard.sh"), "--synthetic", "results",
                          str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (1400, 1000)
    # not a blank page: a rendered table has many distinct colours
    from PIL import Image

    colours = Image.open(out).convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50
