"""Shared fixtures: a tiny dataset built once per test session from the real embedded data, a
synthetic one and the tiny VCNs trained on it, the tiny book. Plain helpers are in helpers.py."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: pytest-timeout limit (seconds) of every test that uses the ``tiny_book`` fixture.
#: ``make test`` gives each test 900 s, and pytest-timeout counts a test's fixture set-up in it,
#: so the first test asking for the session fixture also pays for executing and rendering the
#: whole tiny book: about a minute and a half on an idle 2-core machine, several times that when
#: other CPU-bound work shares the cores. A per-test 900 s is then a coin toss, and raising it
#: for the whole suite would let any ordinary test hang for as long. So the tests behind the
#: fixture (the notebook smoke tests and the browser test) get their own, longer ceiling: well
#: above the slowest run measured under load, still finite, so a hung kernel or browser fails
#: the suite instead of stalling it. The fixture is built once; when it fails, every test behind
#: it errors at once with the same cause, without waiting again.
BOOK_TEST_TIMEOUT = 2400


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tiny_book" in getattr(item, "fixturenames", ()) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(BOOK_TEST_TIMEOUT))


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keep the renderer's preprocessing cache inside the test session."""
    path = tmp_path_factory.mktemp("xrg-cache")
    os.environ["XRG_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_config():
    from xrg.data.build import DataBuildConfig

    return DataBuildConfig(image_size=32, volume_size=64, max_reports=12, seed=0, workers=1)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_config) -> Path:
    """A 12-case dataset rendered from real Open-i reports through the real CT."""
    from xrg.data.build import build_dataset

    out = tmp_path_factory.mktemp("tiny-data")
    build_dataset(out, tiny_config, progress=False)
    return out


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic data directory of 30 patients (18 train cases), shared read-only by the training
    tests; a module that needs other data defines its own ``data_dir``."""
    from helpers import write_synthetic_data

    return write_synthetic_data(tmp_path_factory.mktemp("synthetic"), num_patients=30)


@pytest.fixture(scope="session")
def vcn_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    """A run directory holding the tiny VCNs every XRayGAN test run copies (trained once, read-only)."""
    from helpers import VCN_TINY, XRAYGAN_TINY
    from xrg.train.vcn import train_vcn

    run = tmp_path_factory.mktemp("vcn-run")
    for size in XRAYGAN_TINY.vcn_sizes:
        train_vcn(data_dir, dataclasses.replace(VCN_TINY, image_size=size), run, progress=False)
    return run


@pytest.fixture(scope="session")
def tiny_book(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The whole book executed with the tiny profile (`xrg book run --profile tiny`) and rendered.

    Data, runs, executed notebooks and HTML live in a temporary folder, so the checkout's
    own ``book/executed`` (usually the cpu profile's) is left alone. The notebook smoke
    tests read their executed notebooks from here and the browser test serves the HTML.
    """
    from xrg.book import build_html, run_book

    root = tmp_path_factory.mktemp("tiny-book")
    paths = {"executed": root / "executed", "data": root / "data" / "tiny", "runs": root / "runs" / "tiny"}
    timings = run_book(
        "tiny", executed_dir=paths["executed"], data_root=root / "data", runs_root=root / "runs", progress=False
    )
    paths["html"] = build_html(executed_dir=paths["executed"], build_dir=root / "_build")
    paths["timings"] = timings  # type: ignore[assignment]
    return paths
