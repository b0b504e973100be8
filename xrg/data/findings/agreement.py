"""Agreement of two sources of findings: per-kind precision, recall, F1 and Cohen's kappa.

:func:`agreement` compares any two labellings report by report; :func:`openi_agreement`
compares :func:`~xrg.data.findings.label_text` with :func:`~xrg.data.findings.mesh_to_findings`
on Open-i reports (``python -m xrg.data.findings`` prints the table).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from xrg.data.findings.labeller import label_text
from xrg.data.findings.mesh import mesh_to_findings
from xrg.data.findings.schema import FINDING_KINDS, Finding
from xrg.data.reports import report_text

if TYPE_CHECKING:
    import pandas as pd


def _present_kinds(findings: Iterable[Finding]) -> set[str]:
    return {f.kind for f in findings if not f.negated}


def agreement(
    pairs: Iterable[tuple[Sequence[Finding], Sequence[Finding]]], kinds: Sequence[str] = FINDING_KINDS
) -> pd.DataFrame:
    """Report-level agreement of a candidate labelling with a reference labelling.

    ``pairs`` holds one ``(reference, candidate)`` pair of finding lists per report (e.g.
    MeSH findings, text-labeller findings). A kind is present in a report when the list has
    a non-negated finding of it; side, zone and severity are not compared. Returns one row
    per kind and a ``micro`` row pooling every (report, kind) cell, with columns
    ``n_reports``, ``n_reference``, ``n_candidate``, ``n_both``, ``precision``, ``recall``,
    ``f1`` (candidate against reference; NaN where undefined) and Cohen's ``kappa``
    (1.0 when both labellings agree on every report even if a kind never occurs).
    """
    import pandas as pd

    counts = {kind: [0, 0, 0, 0] for kind in kinds}  # reference, candidate, both, neither
    n_reports = 0
    for reference, candidate in pairs:
        n_reports += 1
        ref, cand = _present_kinds(reference), _present_kinds(candidate)
        for kind in kinds:
            row = counts[kind]
            row[0] += kind in ref
            row[1] += kind in cand
            row[2] += kind in ref and kind in cand
            row[3] += kind not in ref and kind not in cand
    rows = {kind: _agreement_row(n_reports, *counts[kind]) for kind in kinds}
    total = [sum(c[i] for c in counts.values()) for i in range(4)]
    rows["micro"] = _agreement_row(n_reports * len(kinds), *total)
    rows["micro"]["n_reports"] = n_reports
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "kind"
    return table


def _agreement_row(n: int, n_ref: int, n_cand: int, n_both: int, n_neither: int) -> dict[str, float]:
    nan = float("nan")
    precision = n_both / n_cand if n_cand else nan
    recall = n_both / n_ref if n_ref else nan
    f1 = 2 * n_both / (n_ref + n_cand) if n_ref + n_cand else nan
    if n == 0:
        kappa = nan
    else:
        observed = (n_both + n_neither) / n
        expected = (n_ref * n_cand + (n - n_ref) * (n - n_cand)) / n**2
        kappa = (observed - expected) / (1 - expected) if expected < 1 else (1.0 if observed == 1 else nan)
    return {
        "n_reports": n,
        "n_reference": n_ref,
        "n_candidate": n_cand,
        "n_both": n_both,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "kappa": kappa,
    }


def openi_agreement(reports: Iterable[Any]) -> tuple[pd.DataFrame, collections.Counter[str]]:
    """Agreement of :func:`label_text` with :func:`mesh_to_findings` on Open-i reports.

    ``reports`` are :class:`xrg.data.reports.Report` objects (anything with ``findings``,
    ``impression`` and ``mesh``); those without text are left out. MeSH is the reference.
    Returns the :func:`agreement` table (columns ``n_mesh``/``n_text`` for reference and
    candidate) and the unmapped MeSH head terms over those reports.
    """
    unmapped: collections.Counter[str] = collections.Counter()
    pairs = []
    for report in reports:
        text = report_text(report.findings, report.impression)
        if not text:
            continue
        mesh, unknown = mesh_to_findings(report.mesh)
        unmapped.update(unknown)
        pairs.append((mesh, label_text(text)))
    table = agreement(pairs).rename(columns={"n_reference": "n_mesh", "n_candidate": "n_text"})
    return table, unmapped
