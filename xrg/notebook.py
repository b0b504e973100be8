"""Helpers for the book's notebooks: one setup call and parameter validation.

``setup`` checks the common parameters (``profile``, ``seed``), seeds every generator,
picks the device, and shows (and returns) the run's provenance: code version, profile,
parameters, device, seed and start time. ``RunInfo.finish`` at the end of a notebook shows
its wall time and records the whole provenance in the output's metadata
(:data:`PROVENANCE_KEY`), where the book's provenance notebook reads it back.
``check_params`` validates papermill parameters at the top of a notebook, so a bad value
fails at once with a message naming it instead of twenty cells later.
"""

from __future__ import annotations

import platform
import random
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import xrg
from xrg.errors import ConfigError

#: Output-metadata key under which ``RunInfo.finish`` records a notebook's provenance.
PROVENANCE_KEY = "xrg_provenance"


def code_version() -> str:
    """The package version plus the git commit of the checkout, when there is one.

    ``.dirty`` is appended when the library or the notebooks differ from that commit.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if commit:
            changed = subprocess.run(
                ["git", "status", "--porcelain", "--", "xrg", "notebooks"],
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            commit += ".dirty" if changed else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{xrg.__version__}+{commit}" if commit else xrg.__version__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunInfo:
    profile: str
    seed: int
    device: str
    code_version: str
    python: str
    torch: str
    started: str
    params: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter, repr=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def record(self) -> dict[str, Any]:
        """The provenance as plain JSON values, wall time so far included."""
        record = {k: v for k, v in asdict(self).items() if k != "t0"}
        record["params"] = {
            k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in self.params.items()
        }
        record["wall_seconds"] = round(self.elapsed(), 3)
        return record

    def table(self) -> Any:
        import pandas as pd

        rows = {k: v for k, v in asdict(self).items() if k not in ("params", "t0")}
        rows.update({f"param: {k}": v for k, v in self.params.items()})
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))

    def finish(self, show: bool = True) -> dict[str, Any]:
        """Show the notebook's wall time and record its provenance in the output metadata."""
        record = self.record()
        if show:
            from IPython.display import Markdown, display

            text = (
                f"*Executed in {record['wall_seconds']:.1f} s on {self.device} with profile `{self.profile}`, "
                f"seed {self.seed}, xrg {self.code_version} (started {self.started}).*"
            )
            display(Markdown(text), metadata={PROVENANCE_KEY: record})
        return record


def setup(seed: int, profile: str, params: dict[str, Any] | None = None, show: bool = True) -> RunInfo:
    """Check ``profile`` and ``seed``, seed everything, choose the device, show the provenance."""
    from xrg.profiles import load_profile

    if not isinstance(profile, str) or not profile.strip():
        raise ConfigError(
            f"notebook parameter profile={profile!r} must be a profile name (tiny, cpu, paper) or a YAML path"
        )
    try:
        load_profile(profile)
    except ConfigError as exc:
        raise ConfigError(f"notebook parameter profile={profile!r}: {exc}") from exc
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"notebook parameter seed={seed!r} must be an integer in [0, 2**32 - 1]")
    seed_everything(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = RunInfo(
        profile=profile,
        seed=seed,
        device=device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})",
        code_version=code_version(),
        python=platform.python_version(),
        torch=torch.__version__,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        params=dict(params or {}),
    )
    if show:
        from IPython.display import display

        display(info.table())
    return info


def check_params(**checks: tuple[Any, Any]) -> None:
    """Validate parameters: ``name=(value, rule)``.

    A rule is a type, a ``range`` (inclusive of its start, exclusive of its stop), a tuple
    of allowed values, or one of ``"existing_dir"``, ``"existing_file"``, ``"positive"``,
    ``"positive_or_none"``.
    """
    for name, (value, rule) in checks.items():
        problem = None
        if isinstance(rule, type):
            if not isinstance(value, rule) or (rule is int and isinstance(value, bool)):
                problem = f"must be of type {rule.__name__}"
        elif isinstance(rule, range):
            if not isinstance(value, int) or value not in rule:
                problem = f"must be an integer in [{rule.start}, {rule.stop - 1}]"
        elif isinstance(rule, tuple):
            if value not in rule:
                problem = f"must be one of {rule}"
        elif rule == "existing_dir":
            if not Path(str(value)).is_dir():
                problem = "must be an existing directory (build it with `xrg data build`)"
        elif rule == "existing_file":
            if not Path(str(value)).is_file():
                problem = "must be an existing file"
        elif rule in ("positive", "positive_or_none"):
            if not (value is None and rule == "positive_or_none"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    problem = "must be a positive number" + (" or None" if rule == "positive_or_none" else "")
        else:
            raise ConfigError(f"unknown parameter rule {rule!r} for {name}")
        if problem:
            raise ConfigError(f"notebook parameter {name}={value!r} {problem}")


def executed_provenance(executed_dir: str | Path, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The provenance each executed notebook in ``executed_dir`` recorded, in reading order.

    A row per ``NN_name.ipynb``: its title, what ``RunInfo.finish`` recorded (profile, seed,
    device, code version, start time, parameters, wall time) and papermill's own timing.
    A notebook without a record (executed by hand, or before it recorded one) gets a row
    saying so, rather than being left out.
    """
    import nbformat

    folder = Path(executed_dir)
    if not folder.is_dir():
        raise ConfigError(f"executed notebooks folder {folder} does not exist; run `xrg book run` first")
    rows = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        if path.stem in exclude or path.stem.endswith(".failed"):
            continue
        notebook = nbformat.read(path, as_version=4)
        title = next(
            (
                line.lstrip("# ").strip()
                for cell in notebook.cells
                if cell.cell_type == "markdown"
                for line in cell.source.splitlines()
                if line.startswith("# ")
            ),
            path.stem,
        )
        record: dict[str, Any] = {}
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                record = output.get("metadata", {}).get(PROVENANCE_KEY, record)
        papermill = notebook.metadata.get("papermill", {})
        rows.append(
            {
                "notebook": path.stem,
                "title": title,
                "profile": record.get("profile", "not recorded"),
                "seed": record.get("seed"),
                "device": record.get("device", "not recorded"),
                "code_version": record.get("code_version", "not recorded"),
                "started": record.get("started", papermill.get("start_time", "")),
                "wall_seconds": record.get("wall_seconds", papermill.get("duration")),
                "papermill_seconds": papermill.get("duration"),
                "params": record.get("params", papermill.get("parameters", {})),
                "recorded": bool(record),
            }
        )
    return rows
