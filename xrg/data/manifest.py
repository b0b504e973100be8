"""The dataset manifest: one JSON line per case, shared by every data source.

A data directory holds ``manifest.jsonl``, ``vocab.json`` and the images the manifest
points to (paths relative to the directory). The phantom build, the Open-i importer and
the MIMIC-CXR importer all write this same format, so every model trains on any of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xrg.data.findings import Finding, findings_from_json, findings_to_json
from xrg.errors import DataDirError, FindingError
from xrg.io import atomic_write_jsonl
from xrg.paths import PathsInside, check_relative, path_inside, safe_id

MANIFEST_NAME = "manifest.jsonl"
VOCAB_NAME = "vocab.json"
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: The two views of every case, in the order every model, loader and table uses them.
VIEWS: tuple[str, str] = ("frontal", "lateral")


@dataclass
class Case:
    """One report with its frontal and lateral image."""

    id: str
    patient_id: str
    split: str
    findings: str
    impression: str
    structured_findings: list[Finding]
    frontal: str
    lateral: str
    source: str = "phantom"  # phantom | openi | mimic
    mesh: list[str] = field(default_factory=list)
    seed: int | None = None  # phantom patient seed
    # the case's findings rendered into the average patient in a fixed pose, by view (phantom
    # train cases of a build with ``canonical_targets``; empty otherwise): the text-predictable
    # reconstruction target (``XRayPairDataset(canonical=True)``)
    canonical: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["structured_findings"] = findings_to_json(self.structured_findings)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "manifest") -> Case:
        required = {"id", "patient_id", "split", "findings", "impression", "structured_findings", *VIEWS}
        missing = required - set(data)
        if missing:
            raise DataDirError(f"{where}: case is missing fields {sorted(missing)}")
        safe_id(data["id"], f"{where}: case id")
        if data["split"] not in SPLITS:
            raise DataDirError(f"{where}: case {data['id']!r} has unknown split {data['split']!r}")
        for name in ("patient_id", "findings", "impression", *VIEWS):
            if not isinstance(data[name], str):
                raise DataDirError(
                    f"{where}: case {data['id']!r}: {name} must be a string, got {type(data[name]).__name__}"
                )
        for view in VIEWS:
            check_relative(data[view], f"{where}: case {data['id']!r}: {view} image path", "the data directory")
        canonical = data.get("canonical", {})
        if not isinstance(canonical, dict) or (canonical and set(canonical) != set(VIEWS)):
            raise DataDirError(
                f"{where}: case {data['id']!r}: canonical must map each of {list(VIEWS)} to an image path, "
                f"got {canonical!r}"
            )
        for view, value in canonical.items():
            if not isinstance(value, str):
                raise DataDirError(f"{where}: case {data['id']!r}: canonical {view} image path must be a string")
            check_relative(value, f"{where}: case {data['id']!r}: canonical {view} image path", "the data directory")
        if data.get("seed") is not None and (not isinstance(data["seed"], int) or isinstance(data["seed"], bool)):
            raise DataDirError(f"{where}: case {data['id']!r}: seed must be an integer or null, got {data['seed']!r}")
        known = {f for f in cls.__dataclass_fields__}
        try:
            findings = findings_from_json(data["structured_findings"])
        except FindingError as exc:
            raise DataDirError(f"{where}: case {data['id']!r}: {exc}") from exc
        values = {k: v for k, v in data.items() if k in known}
        values["structured_findings"] = findings
        return cls(**values)


def write_manifest(directory: str | os.PathLike, cases: Iterable[Case]) -> Path:
    """Write ``manifest.jsonl`` atomically, sorted by case id for stable diffs."""
    rows = sorted((case.to_json() for case in cases), key=lambda row: row["id"])
    return atomic_write_jsonl(Path(directory) / MANIFEST_NAME, rows)


def read_manifest(directory: str | os.PathLike, check_images: bool = False) -> list[Case]:
    """Read and validate a data directory's manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataDirError(
            f"data directory {directory} does not exist; build one with `xrg data build --out {directory}`"
        )
    path = directory / MANIFEST_NAME
    if not path.is_file():
        raise DataDirError(f"data directory {directory} has no {MANIFEST_NAME}; it is not an xrg dataset")
    path_inside(directory, MANIFEST_NAME, "manifest")  # not a link out of the data directory
    cases: list[Case] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataDirError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
            except RecursionError as exc:
                raise DataDirError(f"{path}:{number}: nested too deeply to be a case") from exc
            if not isinstance(row, dict):
                raise DataDirError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
            cases.append(Case.from_json(row, where=f"{path}:{number}"))
    if not cases:
        raise DataDirError(f"{path} lists no cases")
    ids = [case.id for case in cases]
    if len(set(ids)) != len(ids):
        raise DataDirError(f"{path} lists duplicate case ids")
    inside = PathsInside(directory)
    for case in cases:  # no image path may lead out of the directory, through a link either
        for view in (case.frontal, case.lateral, *case.canonical.values()):
            image = inside(view, f"{path}: case {case.id!r}: image")
            if check_images and not image.is_file():
                raise DataDirError(f"{path}: case {case.id!r} points to missing image {view}")
    return cases


def stable_hash(text: str) -> int:
    """A 63-bit hash of ``text`` that does not change between runs (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") >> 1


def patient_split(
    patient_ids: Sequence[str], seed: int, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
) -> dict[str, str]:
    """Assign every patient to train/val/test; all cases of a patient share one split.

    The patients are sorted, then shuffled with ``seed``, so the result depends only on the
    set of patient ids and the seed, not on their order.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DataDirError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    unique = sorted(set(patient_ids))
    order = np.random.default_rng(seed).permutation(len(unique))
    n_train = int(round(fractions[0] * len(unique)))
    n_val = int(round(fractions[1] * len(unique)))
    assignment: dict[str, str] = {}
    for rank, index in enumerate(order):
        split = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
        assignment[unique[index]] = split
    return assignment
