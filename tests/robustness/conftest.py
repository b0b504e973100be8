"""The robustness suite runs torch on one thread: its models are tiny, and on a busy two-core
machine a second thread spin-waiting for the first makes every call a hundred times slower."""

from __future__ import annotations

import pytest

from helpers import torch_threads


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    with torch_threads(1):
        yield
