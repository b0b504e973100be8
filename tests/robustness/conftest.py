"""The robustness suite runs torch on one thread: its models are tiny, and on a busy two-core
machine a second thread spin-waiting for the first makes every call a hundred times slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
