"""Reports to pick from: the reports of a data directory's split as :class:`ReportChoice`.

:func:`load_report_choices` reads them from a manifest with their phantom patients;
:func:`pick_report` picks one by id, or a good first example.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from xrg.data.reports import report_text
from xrg.errors import ConfigError, ReportError
from xrg.explorer.core import _report_findings, toggles


@dataclass(frozen=True)
class ReportChoice:
    """A report of a data directory: its text as the explorer takes it and its phantom patient."""

    id: str
    text: str
    patient_seed: int | None
    label: str


def load_report_choices(
    data_dir: str | os.PathLike, split: str | None = "test", limit: int | None = None
) -> list[ReportChoice]:
    """The reports of one split of a data directory (``None``: all), in manifest order, each
    with its case's phantom patient seed and a label naming its present findings."""
    from xrg.data.manifest import SPLITS, read_manifest

    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    choices = []
    for case in read_manifest(data_dir):
        if split is not None and case.split != split:
            continue
        text = report_text(case.findings, case.impression, headers=True)
        if not text:
            continue
        try:
            present = [f.describe() for f in _report_findings(text) if not f.negated]
        except ReportError:
            continue
        label = f"{case.id}: {', '.join(present) if present else 'normal'}"
        choices.append(ReportChoice(case.id, text, case.seed, label if len(label) <= 90 else label[:87] + "..."))
        if limit is not None and len(choices) >= limit:
            break
    return choices


def pick_report(choices: Sequence[ReportChoice], report_id: str = "") -> ReportChoice:
    """The choice with id ``report_id``; for ``""`` the first that offers the most kinds of
    edit (negate, a severity change, a side flip, make present), a good first example."""
    if not choices:
        raise ConfigError("there are no reports to choose from (is the data directory's test split empty?)")
    if report_id:
        for choice in choices:
            if choice.id == report_id:
                return choice
        raise ConfigError(f"report {report_id!r} is not among the {len(choices)} reports (e.g. {choices[0].id!r})")

    def score(choice: ReportChoice) -> int:
        operations = {t.operation for t in toggles(choice.text)}
        return sum(op in operations for op in ("negate", "set_severity", "flip_side")) * 2 + ("add" in operations)

    return max(choices, key=score)  # max keeps the first of equals
