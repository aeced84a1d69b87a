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
