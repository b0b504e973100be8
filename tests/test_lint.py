"""The code passes ``ruff check`` and ``ruff format --check`` with the settings in pyproject.toml (``make lint``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINTED = ("xrg", "tests", "notebooks")


def _ruff(*args: str) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("ruff") is None:
        if os.environ.get("CI"):
            pytest.fail("ruff is not installed, but CI installs requirements.txt, which pins it")
        pytest.skip("ruff is not installed here (pip install -r requirements.txt); in CI this test fails instead")
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *LINTED], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_ruff_check_passes():
    result = _ruff("check", "--no-cache", "--output-format", "full")
    assert result.returncode == 0, (
        f"ruff check found problems (`{sys.executable} -m ruff check --fix {' '.join(LINTED)}` fixes some):\n"
        f"{result.stdout}{result.stderr}"
    )


def test_ruff_format_leaves_the_code_as_it_is():
    result = _ruff("format", "--check", "--no-cache")
    assert result.returncode == 0, (
        f"files not in ruff's format (`{sys.executable} -m ruff format {' '.join(LINTED)}`, then "
        f"`jupytext --sync notebooks/*.py` for the notebooks' pairs):\n{result.stdout}{result.stderr}"
    )
