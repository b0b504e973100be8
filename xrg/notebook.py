"""Helpers for the book's notebooks: one setup call and parameter validation.

``setup`` seeds every generator, picks the device, and shows (and returns) the run's
provenance: code version, profile, parameters, device, seed and start time.
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


def code_version() -> str:
    """The package version plus the git commit of the checkout, when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
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

    def table(self) -> "Any":
        import pandas as pd

        rows = {k: v for k, v in asdict(self).items() if k not in ("params", "t0")}
        rows.update({f"param: {k}": v for k, v in self.params.items()})
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))


def setup(seed: int, profile: str, params: dict[str, Any] | None = None, show: bool = True) -> RunInfo:
    """Seed everything, choose the device, and display the provenance table."""
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
