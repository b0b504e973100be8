"""The code passes ``ruff check`` with the settings in pyproject.toml (``make lint`` runs the same)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTED = ("xrg", "tests", "notebooks")


def test_ruff_check_passes():
    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is not installed, but CI installs requirements.txt, which pins it")
        pytest.skip("ruff is not installed here (pip install -r requirements.txt); in CI this test fails instead")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "full", *LINTED],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, (
        f"ruff check found problems (`{sys.executable} -m ruff check --fix {' '.join(LINTED)}` fixes some):\n"
        f"{result.stdout}{result.stderr}"
    )
