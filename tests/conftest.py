"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch work on one intra-op thread.

    The test machine's 2 cores are shared with DataLoader workers and other processes; torch's
    default of one thread per core then slows small models down tenfold.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
