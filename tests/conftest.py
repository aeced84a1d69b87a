"""Fixtures several test modules share."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on the shared 2-core machines two OpenMP threads spin against other
    processes and small ops run tens of times slower (results do not depend on it). A module
    opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def keep_thread_count(monkeypatch):
    """A command run in-process (``cli.main``) keeps the test's thread count: ``OMP_NUM_THREADS`` (which
    the command line's default yields to) pinned to it. Tests of the default unset it."""
    monkeypatch.setenv("OMP_NUM_THREADS", str(torch.get_num_threads()))
