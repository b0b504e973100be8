"""Profiles: named sets of configuration values (``tiny``, ``cpu``, ``paper``).

A profile never selects a different code path; it only sets values. Each lives in
``profiles/<name>.yaml`` at the repository root, holding the data-build settings and the
papermill parameters of every notebook, so the Makefile, ``xrg book run`` and the tests
read the same numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xrg.errors import ConfigError

PROFILE_NAMES: tuple[str, ...] = ("tiny", "cpu", "paper")
PROFILES_DIR = Path(__file__).resolve().parent.parent / "profiles"


@dataclass(frozen=True)
class Profile:
    name: str
    seed: int
    data: dict[str, Any]
    notebooks: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    def notebook_params(self, notebook: str) -> dict[str, Any]:
        return dict(self.notebooks.get(notebook, {}))

    def section(self, name: str) -> dict[str, Any]:
        """Settings of one model or run kind (``xraygan``, ``vcn`` ...); empty when absent."""
        return dict(self.sections.get(name, {}))


def read_yaml_file(path: Path, what: str) -> Any:
    """A YAML file's plain values (``yaml.safe_load``); a :class:`ConfigError` naming ``what`` and the file otherwise."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML (plain values only): {exc}") from exc
    except RecursionError as exc:
        raise ConfigError(f"{what} {path} nests its values too deeply") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path} is unreadable: {exc.strerror or exc}") from exc


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a profile by name (``tiny``/``cpu``/``paper``) or from a YAML file path."""
    text = str(name_or_path)
    path = PROFILES_DIR / f"{text}.yaml" if text in PROFILE_NAMES else Path(text)
    if not path.is_file():
        raise ConfigError(f"profile {text!r} is neither one of {', '.join(PROFILE_NAMES)} nor an existing YAML file")
    raw = read_yaml_file(path, "profile file")
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), dict):
        raise ConfigError(f"profile file {path} must be a mapping with a 'data' section")
    notebooks = raw.get("notebooks") or {}
    if not isinstance(notebooks, dict) or not all(isinstance(v, dict) for v in notebooks.values()):
        raise ConfigError(f"profile file {path}: 'notebooks' must map notebook names to parameter mappings")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"profile file {path}: seed must be an integer in [0, 2**32), got {seed!r}")
    sections = {k: v for k, v in raw.items() if k not in ("profile", "seed", "data", "notebooks")}
    bad = [k for k, v in sections.items() if not isinstance(v, dict)]
    if bad:
        raise ConfigError(f"profile file {path}: sections {bad} must be mappings of settings")
    return Profile(
        name=str(raw.get("profile", path.stem)),
        seed=seed,
        data=raw["data"],
        notebooks=notebooks,
        sections=sections,
        path=path,
    )
