"""Execute the book headlessly: data build, then every notebook with papermill, then HTML.

``run_book`` executes ``notebooks/NN_name.ipynb`` in order into ``book/executed/`` (the
folder ``_toc.yml`` points to) with the profile's parameters. A notebook is executed again
only when its source, its parameters or the library's code changed since its last
successful run (a stamp per notebook records that), so re-running the book with nothing
changed is quick. ``build_html`` renders the executed notebooks and the prose pages with
Jupyter Book (``execute_notebooks: "off"``), warnings as errors by default.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

from xrg.errors import ConfigError
from xrg.io import atomic_write_json
from xrg.profiles import load_profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = ROOT / "notebooks"
EXECUTED_DIR = ROOT / "book" / "executed"
DATA_ROOT = ROOT / "data"
RUNS_ROOT = ROOT / "runs"


def notebook_names() -> list[str]:
    """The book's notebooks in reading order (``NN_name``)."""
    return sorted(p.stem for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


def library_fingerprint() -> str:
    """A hash of the library's source, so a code change marks executed notebooks stale."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "xrg").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def notebook_parameters(profile_name: str, notebook: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Papermill parameters of one notebook: the profile's values plus common settings."""
    import papermill

    profile = load_profile(profile_name)
    common: dict[str, Any] = {
        "profile": profile.name,
        "data_dir": str(DATA_ROOT / profile.name),
        "run_dir": str(RUNS_ROOT / profile.name / "xraygan"),
        "experiment_dir": str(RUNS_ROOT / profile.name / "experiments"),
        "seed": profile.seed,
    }
    declared = papermill.inspect_notebook(str(NOTEBOOKS_DIR / f"{notebook}.ipynb"))
    params = {key: value for key, value in common.items() if key in declared}
    params.update(profile.notebook_params(notebook))
    params.update((overrides or {}).get(notebook, {}))
    return params


def _stamp(notebook: str, params: dict[str, Any]) -> str:
    source = (NOTEBOOKS_DIR / f"{notebook}.ipynb").read_bytes()
    payload = json.dumps(params, sort_keys=True).encode() + source + library_fingerprint().encode()
    return hashlib.sha256(payload).hexdigest()


def _read_overrides(params_file: str | os.PathLike | None) -> dict[str, dict[str, Any]]:
    if params_file is None:
        return {}
    path = Path(params_file)
    if not path.is_file():
        raise ConfigError(f"parameters file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"parameters file {path} is not valid YAML (plain values only): {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"parameters file {path} must map notebook names to parameter mappings")
    return data


def execute_notebook(notebook: str, params: dict[str, Any], output_dir: Path = EXECUTED_DIR) -> Path:
    """Execute one notebook with papermill into ``output_dir``; returns the executed path."""
    import papermill

    source = NOTEBOOKS_DIR / f"{notebook}.ipynb"
    if not source.is_file():
        raise ConfigError(f"notebook {notebook!r} does not exist; available: {', '.join(notebook_names())}")
    output_dir.mkdir(parents=True, exist_ok=True)
    output = output_dir / f"{notebook}.ipynb"
    papermill.execute_notebook(
        str(source),
        str(output),
        parameters=params,
        kernel_name="python3",
        cwd=str(NOTEBOOKS_DIR),
        progress_bar=True,
        log_output=False,
    )
    return output


def run_book(
    profile_name: str = "cpu",
    params_file: str | os.PathLike | None = None,
    only: Sequence[str] | None = None,
    force: bool = False,
) -> dict[str, float]:
    """Build the profile's data, then execute the (selected) notebooks; returns seconds per step."""
    from xrg.data.build import DataBuildConfig, build_dataset

    profile = load_profile(profile_name)
    overrides = _read_overrides(params_file)
    names = notebook_names()
    selected = list(only) if only else names
    unknown = [n for n in selected if n not in names]
    if unknown:
        raise ConfigError(f"unknown notebooks {unknown}; available: {', '.join(names)}")
    timings: dict[str, float] = {}

    start = time.perf_counter()
    config = DataBuildConfig.from_profile(profile.data, seed=profile.seed)
    print(f">> data: {DATA_ROOT / profile.name}", flush=True)
    print(build_dataset(DATA_ROOT / profile.name, config), flush=True)
    timings["data"] = time.perf_counter() - start

    stamps_path = EXECUTED_DIR / ".stamps.json"
    stamps = json.loads(stamps_path.read_text()) if stamps_path.is_file() else {}
    for notebook in selected:
        params = notebook_parameters(profile.name, notebook, overrides)
        stamp = _stamp(notebook, params)
        output = EXECUTED_DIR / f"{notebook}.ipynb"
        if not force and output.is_file() and stamps.get(notebook) == stamp:
            print(f">> {notebook}: up to date", flush=True)
            timings[notebook] = 0.0
            continue
        print(f">> {notebook}: executing with {params}", flush=True)
        start = time.perf_counter()
        execute_notebook(notebook, params)
        timings[notebook] = time.perf_counter() - start
        stamps[notebook] = stamp
        atomic_write_json(stamps_path, stamps)
        print(f">> {notebook}: {timings[notebook]:.0f} s", flush=True)
    return timings


def build_html(strict: bool = True, root: Path = ROOT) -> Path:
    """Render the book with Jupyter Book into ``_build/html``; returns that folder."""
    missing = [n for n in notebook_names() if not (EXECUTED_DIR / f"{n}.ipynb").is_file()]
    if missing:
        raise ConfigError(f"notebooks not executed yet: {missing}; run `xrg book run` first")
    command = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root), "--path-output", str(root)]
    if strict:
        command += ["-W", "-n", "--keep-going"]
    print(">> " + " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return root / "_build" / "html"
