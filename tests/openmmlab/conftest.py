"""Tests of the OpenMMLab backends: collected only when mmseg and mmdet import.

Mechanism: when ``import mmseg.models, mmdet.models`` fails, this folder's test files are not
collected at all (``collect_ignore_glob``) and the pytest header says so on one line, with the
install command; nothing is reported as skipped. With ``SSL_BENCH_REQUIRE_OPENMMLAB=1`` (set by CI
after installing the stack) a missing stack is a usage error instead, so a broken install cannot
pass silently.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fixture writers of tests/

try:
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401

    OPENMMLAB_ERROR = None
except Exception as err:  # noqa: BLE001 - ImportError, or mmcv's own version assertion
    OPENMMLAB_ERROR = f"{type(err).__name__}: {err}"

if OPENMMLAB_ERROR is not None:
    if os.environ.get("SSL_BENCH_REQUIRE_OPENMMLAB") == "1":
        raise pytest.UsageError(f"SSL_BENCH_REQUIRE_OPENMMLAB=1 but the OpenMMLab stack does not import "
                                f"({OPENMMLAB_ERROR}); run scripts/install_openmmlab.sh")
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config):
    if OPENMMLAB_ERROR is None:
        return "openmmlab backend tests: collected (mmseg and mmdet import)"
    return (f"openmmlab backend tests: NOT collected ({OPENMMLAB_ERROR}); "
            "install the optional stack with scripts/install_openmmlab.sh")
