"""The findings schema: the kinds, sides, zones and severities the renderer draws, and :class:`Finding`.

Everything both sources of findings (:mod:`~xrg.data.findings.mesh`,
:mod:`~xrg.data.findings.labeller`) share: the vocabulary of finding kinds in multi-hot
order, the :class:`Finding` dataclass and its JSON form, the attributes each kind carries
(:data:`KIND_ATTRIBUTES`) and :func:`merge_findings`, which deduplicates a source's findings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from xrg.errors import FindingError

#: Every finding kind the renderer can draw, in the fixed order of multi-hot label vectors.
FINDING_KINDS: tuple[str, ...] = (
    "cardiomegaly",  # severity
    "pleural_effusion",  # side, severity
    "opacity",  # side, zone, severity: consolidation, airspace disease, infiltrate, pneumonia
    "atelectasis",  # side, zone, severity (volume loss)
    "nodule",  # side, zone, severity = size (mass when severe)
    "granuloma",  # side, zone: non-calcified granuloma
    "calcified_granuloma",  # side, zone: calcified granuloma / calcinosis of the lung
    "pneumothorax",  # side, severity
    "emphysema",  # severity: emphysema, COPD, hyperinflation / hyperdistention
    "edema",  # severity: pulmonary edema, vascular congestion
    "hypoinflation",  # severity: low lung volumes
    "pacemaker",  # side of the generator pocket
    "central_line",  # side of entry: indwelling catheters, PICC, central venous lines
    "sternotomy",  # median sternotomy wires
    "scoliosis",  # side = side of convexity, severity
)

SIDES: tuple[str, ...] = ("left", "right", "bilateral")
ZONES: tuple[str, ...] = ("upper", "middle", "lower")
SEVERITIES: tuple[str, ...] = ("mild", "moderate", "severe")

#: Numeric strength the renderer uses for each severity; ``None`` means moderate.
SEVERITY_SCALE: Mapping[str | None, float] = {"mild": 0.45, "moderate": 0.7, None: 0.7, "severe": 1.0}


@dataclass(frozen=True, order=True)
class Finding:
    """One finding of a report.

    ``side`` is the patient's side (``left``/``right``/``bilateral``) or ``None`` where it does
    not apply or is not stated; ``zone`` is the lung zone (``upper``/``middle``/``lower``; the
    lingula counts as the left middle zone, a base as lower, an apex as upper) or ``None`` for
    the whole lung; ``severity`` is ``mild``/``moderate``/``severe`` or ``None`` (unstated).
    A negated finding ("no pleural effusion") is kept, with ``negated=True``, so that
    evaluation can check absences, but it is never drawn and never a positive label.
    """

    kind: str
    side: str | None = None
    zone: str | None = None
    severity: str | None = None
    negated: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FINDING_KINDS:
            raise FindingError(f"unknown finding kind {self.kind!r}; expected one of {', '.join(FINDING_KINDS)}")
        if self.side is not None and self.side not in SIDES:
            raise FindingError(f"finding {self.kind!r}: unknown side {self.side!r}; expected one of {SIDES} or None")
        if self.zone is not None and self.zone not in ZONES:
            raise FindingError(f"finding {self.kind!r}: unknown zone {self.zone!r}; expected one of {ZONES} or None")
        if self.severity is not None and self.severity not in SEVERITIES:
            raise FindingError(
                f"finding {self.kind!r}: unknown severity {self.severity!r}; expected one of {SEVERITIES} or None"
            )
        if not isinstance(self.negated, bool):
            raise FindingError(f"finding {self.kind!r}: negated must be a bool, got {self.negated!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        if not isinstance(data, Mapping) or "kind" not in data:
            raise FindingError(f"a finding must be a mapping with a 'kind', got {data!r}")
        unknown = set(data) - {"kind", "side", "zone", "severity", "negated"}
        if unknown:
            raise FindingError(f"finding {data.get('kind')!r} has unknown fields {sorted(unknown)}")
        return cls(**dict(data))

    def describe(self) -> str:
        """A short human-readable phrase, e.g. ``mild right lower opacity``."""
        words = [w for w in (self.severity, self.side, self.zone, self.kind.replace("_", " ")) if w]
        return ("no " if self.negated else "") + " ".join(words)


def positive(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that are present (not negated)."""
    return [f for f in findings if not f.negated]


def multi_hot(findings: Iterable[Finding]) -> np.ndarray:
    """Multi-hot float32 vector over :data:`FINDING_KINDS` of the present findings."""
    labels = np.zeros(len(FINDING_KINDS), dtype=np.float32)
    for finding in positive(findings):
        labels[FINDING_KINDS.index(finding.kind)] = 1.0
    return labels


def findings_to_json(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    return [f.to_dict() for f in findings]


def findings_from_json(data: Iterable[Mapping[str, Any]]) -> list[Finding]:
    return [Finding.from_dict(d) for d in data]


#: Attributes each kind carries; the others are dropped from both sources so that MeSH and
#: text findings compare (e.g. a pneumothorax "at the apex" has a side but no zone).
KIND_ATTRIBUTES: Mapping[str, frozenset[str]] = {
    "cardiomegaly": frozenset({"severity"}),
    "pleural_effusion": frozenset({"side", "severity"}),
    "opacity": frozenset({"side", "zone", "severity"}),
    "atelectasis": frozenset({"side", "zone", "severity"}),
    "nodule": frozenset({"side", "zone", "severity"}),
    "granuloma": frozenset({"side", "zone"}),
    "calcified_granuloma": frozenset({"side", "zone"}),
    "pneumothorax": frozenset({"side", "severity"}),
    "emphysema": frozenset({"severity"}),
    "edema": frozenset({"severity"}),
    "hypoinflation": frozenset({"severity"}),
    "pacemaker": frozenset({"side"}),
    "central_line": frozenset({"side"}),
    "sternotomy": frozenset(),
    "scoliosis": frozenset({"side", "severity"}),
}

_SEVERITY_RANK: Mapping[str | None, int] = {None: 0, "mild": 1, "moderate": 2, "severe": 3}


def _max_severity(*severities: str | None) -> str | None:
    return max(severities, key=lambda s: _SEVERITY_RANK[s], default=None)


def _combine_sides(sides: Iterable[str]) -> str | None:
    found = set(sides)
    if "bilateral" in found or {"left", "right"} <= found:
        return "bilateral"
    return found.pop() if len(found) == 1 else None


def _make_finding(
    kind: str, side: str | None, zone: str | None, severity: str | None, negated: bool = False
) -> Finding:
    """A finding keeping only the attributes :data:`KIND_ATTRIBUTES` gives the kind."""
    allowed = KIND_ATTRIBUTES[kind]
    return Finding(
        kind,
        side if "side" in allowed else None,
        zone if "zone" in allowed else None,
        severity if "severity" in allowed else None,
        negated,
    )


def merge_findings(findings: Iterable[Finding]) -> list[Finding]:
    """Deduplicate findings, in :data:`FINDING_KINDS` order.

    * A kind present anywhere (one non-negated finding) drops that kind's negations: in a
      report, "no effusion on the left ... small right effusion" means an effusion is present.
    * Findings of the same kind, side, zone and polarity merge into one, with the largest
      severity stated.
    * A present finding whose location is a less specific version of another's (``opacity``
      next to ``right upper opacity``; ``left opacity`` next to ``left middle opacity``) is
      dropped, handing its severity to the more specific one when that has none.
    * Among negations the wider one wins: "no effusion" covers "no left effusion".
    """
    findings = list(findings)
    present = {f.kind for f in findings if not f.negated}
    merged: dict[tuple[str, str | None, str | None, bool], str | None] = {}
    for f in findings:
        if f.negated and f.kind in present:
            continue
        key = (f.kind, f.side, f.zone, f.negated)
        merged[key] = _max_severity(merged.get(key), f.severity) if key in merged else f.severity

    def covers(a: tuple, b: tuple) -> bool:
        """Whether location ``a`` is ``b``'s or a less specific one (same kind and polarity)."""
        return a[0] == b[0] and a[3] == b[3] and a[1] in (None, b[1]) and a[2] in (None, b[2])

    keys = list(merged)
    dropped: set[tuple] = set()
    # Most general first, so that a severity travels down to the most specific finding.
    for a in sorted(keys, key=lambda k: (k[1] is not None) + (k[2] is not None)):
        if a in dropped:
            continue
        narrower = [b for b in keys if b != a and b not in dropped and covers(a, b)]
        if not narrower:
            continue
        if a[3]:  # a negation: the wider one stays
            dropped.update(narrower)
            continue
        dropped.add(a)
        for b in narrower:
            if merged[b] is None:
                merged[b] = merged[a]
    result = [Finding(*key[:3], merged[key], key[3]) for key in keys if key not in dropped]
    return sorted(result, key=_finding_order)


def _finding_order(f: Finding) -> tuple:
    return (
        FINDING_KINDS.index(f.kind),
        f.negated,
        SIDES.index(f.side) if f.side else -1,
        ZONES.index(f.zone) if f.zone else -1,
        _SEVERITY_RANK[f.severity],
    )
