"""Structured chest X-ray findings: one schema and two sources for it.

The schema (:class:`Finding`) is what the phantom renderer draws, what the dataset turns
into multi-hot labels and what evaluation scores against. It is filled from

* the MeSH ``<major>`` tags that Open-i curators attached to each report
  (``Opacity/lung/upper lobe/right``, ``Cardiomegaly/mild``, ``normal`` ...), and
* a rule-based labeller for free report text with negation handling, so that a report a
  user types ("No pleural effusion. Mild cardiomegaly.") yields findings too.

:func:`mesh_to_findings` and :func:`label_text` are the two sources, :func:`agreement` and
:func:`openi_agreement` measure how well they agree (``python -m xrg.data.findings`` prints
the table for all Open-i reports), and :func:`describe_findings` writes findings back as a
short report that :func:`label_text` reads to the same findings.
"""

from __future__ import annotations

import collections
import functools
import re
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from xrg.data.reports import split_sentences
from xrg.errors import FindingError, ReportError

if TYPE_CHECKING:
    import pandas as pd

#: Every finding kind the renderer can draw, in the fixed order of multi-hot label vectors.
FINDING_KINDS: tuple[str, ...] = (
    "cardiomegaly",         # severity
    "pleural_effusion",     # side, severity
    "opacity",              # side, zone, severity: consolidation, airspace disease, infiltrate, pneumonia
    "atelectasis",          # side, zone, severity (volume loss)
    "nodule",               # side, zone, severity = size (mass when severe)
    "granuloma",            # side, zone: non-calcified granuloma
    "calcified_granuloma",  # side, zone: calcified granuloma / calcinosis of the lung
    "pneumothorax",         # side, severity
    "emphysema",            # severity: emphysema, COPD, hyperinflation / hyperdistention
    "edema",                # severity: pulmonary edema, vascular congestion
    "hypoinflation",        # severity: low lung volumes
    "pacemaker",            # side of the generator pocket
    "central_line",         # side of entry: indwelling catheters, PICC, central venous lines
    "sternotomy",           # median sternotomy wires
    "scoliosis",            # side = side of convexity, severity
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
    def from_dict(cls, data: Mapping[str, Any]) -> "Finding":
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


# ======================================================================================
# Source 1: Open-i MeSH major terms -> findings
# ======================================================================================
#
# An Open-i MeSH major is ``Head/qualifier/qualifier...``: a MeSH heading or a local term
# (``Opacity``, ``Calcified Granuloma``), then anatomy, side, zone, severity and shape words
# in no fixed order (``Opacity/lung/base/left/streaky``, ``Pleural Effusion/left/small``).
# A head maps through :data:`MESH_RULES`; the qualifiers through the tables below; qualifiers
# with no meaning for the renderer (``streaky``, ``multiple``, ``chronic``) are ignored.

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

MESH_SIDES: Mapping[str, str] = {"left": "left", "right": "right", "bilateral": "bilateral"}
MESH_ZONES: Mapping[str, str] = {
    "upper lobe": "upper", "apex": "upper",
    "middle lobe": "middle", "lingula": "middle", "mid": "middle",
    "lower lobe": "lower", "base": "lower", "bases": "lower", "costophrenic angle": "lower", "retrocardiac": "lower",
}
#: Qualifiers that also imply a side when none is given: the lingula and the space behind
#: the heart are both in the left lung.
MESH_IMPLIED_SIDES: Mapping[str, str] = {"lingula": "left", "retrocardiac": "left"}
MESH_SEVERITIES: Mapping[str, str] = {
    "mild": "mild", "borderline": "mild", "small": "mild", "minimal": "mild",
    "moderate": "moderate",
    "severe": "severe", "large": "severe", "marked": "severe",
}
#: Terms that say "nothing to find" (not counted as unmapped).
MESH_NO_FINDING: frozenset[str] = frozenset({"normal", "no indexing"})

#: Anatomy qualifiers that put an "opacity", "nodule" ... outside the lung parenchyma
#: (a rib lesion, a mediastinal mass, a breast density): not a lung finding to draw.
NON_LUNG_SITES: frozenset[str] = frozenset({
    "ribs", "clavicle", "sternum", "humerus", "shoulder", "spine", "thoracic vertebrae", "cervical vertebrae",
    "lumbar vertebrae", "mediastinum", "paratracheal", "supracardiac", "heart", "mitral valve", "aorta",
    "breast", "adipose tissue", "abdomen", "neck", "trachea", "trachea, carina",
})
#: Sites that make an "Implanted Medical Device" something else than a cardiac pacemaker
#: or defibrillator (a valve prosthesis, a septal closure device "over the heart", a shoulder
#: prosthesis, spinal hardware ...).
NON_PACEMAKER_SITES: frozenset[str] = frozenset({
    "aortic valve", "mitral valve", "heart", "heart atria", "heart ventricles", "pulmonary artery", "humerus",
    "shoulder", "thoracic vertebrae",
    "cervical vertebrae", "lumbar vertebrae", "spine", "abdomen", "breast", "neck",
})


@dataclass(frozen=True)
class MeshRule:
    """How one MeSH head term becomes findings.

    The rule applies when the term has at least one qualifier of ``when`` (if given) and none
    of ``unless``; ``severity`` is the default when the term states none.
    """

    kinds: tuple[str, ...]
    when: frozenset[str] | None = None
    unless: frozenset[str] = frozenset()
    severity: str | None = None

    def applies(self, qualifiers: frozenset[str]) -> bool:
        if self.when is not None and not (qualifiers & self.when):
            return False
        return not (qualifiers & self.unless)


def _rule(
    *kinds: str, when: Iterable[str] | None = None, unless: Iterable[str] = (), severity: str | None = None
) -> MeshRule:
    return MeshRule(tuple(kinds), None if when is None else frozenset(when), frozenset(unless), severity)


#: MeSH head term (case-insensitive) -> rules tried in order; the first that applies wins.
#: Built from the ~300 most frequent of the 1,719 distinct Open-i majors. Heads that are not
#: here (``Aorta``, ``Cicatrix``, ``Thoracic Vertebrae``, ``Markings`` ...) are not findings
#: the renderer draws and are counted as unmapped.
MESH_RULES: Mapping[str, tuple[MeshRule, ...]] = {
    # heart
    "Cardiomegaly": (_rule("cardiomegaly"),),
    "Cardiac Shadow": (_rule("cardiomegaly", when={"enlarged", "borderline"}),),
    # pleura
    "Pleural Effusion": (_rule("pleural_effusion"),),
    "Costophrenic Angle": (_rule("pleural_effusion", when={"blunted"}, severity="mild"),),  # blunting = small effusion
    "Sulcus": (_rule("pleural_effusion", when={"blunted"}, severity="mild"),),
    "Hemothorax": (_rule("pleural_effusion"),),
    "Hydropneumothorax": (_rule("pneumothorax", "pleural_effusion"),),
    "Hemopneumothorax": (_rule("pneumothorax", "pleural_effusion"),),
    "Pneumothorax": (_rule("pneumothorax"),),
    # parenchymal opacities
    "Opacity": (_rule("nodule", when={"round"}, unless=NON_LUNG_SITES), _rule("opacity", unless=NON_LUNG_SITES)),
    "Airspace Disease": (_rule("opacity", unless=NON_LUNG_SITES),),
    "Consolidation": (_rule("opacity", unless=NON_LUNG_SITES),),
    "Infiltrate": (_rule("opacity", unless=NON_LUNG_SITES),),
    "Pneumonia": (_rule("opacity"),),
    "Density": (_rule("nodule", when={"round"}, unless=NON_LUNG_SITES), _rule("opacity", unless=NON_LUNG_SITES)),
    "Pulmonary Atelectasis": (_rule("atelectasis"),),
    "Volume Loss": (_rule("atelectasis"),),
    # nodules and granulomas
    "Nodule": (_rule("nodule", unless=NON_LUNG_SITES),),
    "Mass": (_rule("nodule", unless=NON_LUNG_SITES, severity="severe"),),
    "Granuloma": (_rule("granuloma", unless=NON_LUNG_SITES),),
    "Calcified Granuloma": (_rule("calcified_granuloma", unless=NON_LUNG_SITES),),
    "Calcinosis": (_rule("calcified_granuloma", when={"lung"}),),  # Calcinosis/aorta etc. are not lung findings
    # "old granulomatous disease": what the X-ray shows of it is calcified granulomas and nodes
    "Granulomatous Disease": (_rule("calcified_granuloma"),),
    # airways and volumes
    "Emphysema": (_rule("emphysema"),),
    "Pulmonary Emphysema": (_rule("emphysema"),),
    "Bullous Emphysema": (_rule("emphysema"),),
    "Pulmonary Disease, Chronic Obstructive": (_rule("emphysema"),),
    "Lung, Hyperlucent": (_rule("emphysema"),),
    "Diaphragm": (_rule("emphysema", when={"flattened"}),),  # flattened hemidiaphragms = hyperinflation
    "Lung": (_rule("hypoinflation", when={"hypoinflation"}), _rule("emphysema", when={"hyperdistention"})),
    # fluid
    "Pulmonary Edema": (_rule("edema"),),
    "Pulmonary Congestion": (_rule("edema"),),
    "Heart Failure": (_rule("edema"),),  # the reports tagged so describe edema
    # devices and surgery
    "Implanted Medical Device": (_rule("pacemaker", unless=NON_PACEMAKER_SITES),),
    "Catheters, Indwelling": (_rule("central_line", unless={"abdomen", "thoracic vertebrae"}),),
    # Mediastinal "surgical instruments" are sternal wires and CABG clips; in about a third of
    # the reports they are clips without a sternotomy. MeSH has no term of its own for it.
    "Surgical Instruments": (_rule("sternotomy", when={"mediastinum", "sternum"}),),
    "Sutures": (_rule("sternotomy", when={"sternum", "mediastinum"}),),
    "Sternotomy": (_rule("sternotomy"),),
    # spine
    "Scoliosis": (_rule("scoliosis"),),
}
#: Curators index "calcified nodules in the right lower lobe" as two terms,
#: ``Nodule/lung/lower lobe/right`` and ``Calcinosis/lung/lower lobe/right``. A nodule (or a
#: ``Density``) next to a ``Calcinosis`` term with the same side and zone is therefore one
#: calcified granuloma, and that ``Calcinosis`` term is not counted as unmapped.
MESH_CALCIFIED_PARTNER_HEADS: frozenset[str] = frozenset({"density"})

_MESH_RULES_BY_HEAD: dict[str, tuple[MeshRule, ...]] = {head.casefold(): rules for head, rules in MESH_RULES.items()}

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


def mesh_to_findings(mesh_terms: Sequence[str]) -> tuple[list[Finding], collections.Counter[str]]:
    """Map Open-i MeSH majors to findings.

    Returns the merged findings (see :func:`merge_findings`) and a counter of the terms that
    map to nothing, keyed by their head term (``Aorta/tortuous`` counts under ``Aorta``).
    ``normal`` and ``No Indexing`` give nothing and are not counted. Never raises on an
    unknown or odd term; a term that is not a string raises :class:`FindingError`.
    """
    if isinstance(mesh_terms, str):
        raise FindingError(f"mesh_terms must be a sequence of terms, not one string: {mesh_terms[:60]!r}")
    findings: list[Finding] = []
    unmapped: collections.Counter[str] = collections.Counter()
    terms = []
    for term in mesh_terms:
        if not isinstance(term, str):
            raise FindingError(f"a MeSH term must be a string, got {term!r}")
        parts = [" ".join(part.split()) for part in term.split("/")]
        head, qualifiers = parts[0], frozenset(p.casefold() for p in parts[1:] if p)
        if not head:
            if term.strip():
                unmapped["<empty head>"] += 1
            continue
        if head.casefold() not in MESH_NO_FINDING:
            terms.append((head, qualifiers, _mesh_location(qualifiers)))
    calcified_at = {location for head, _, location in terms if head.casefold() == "calcinosis"}
    resolved = []
    for head, qualifiers, location in terms:
        rule = next((r for r in _MESH_RULES_BY_HEAD.get(head.casefold(), ()) if r.applies(qualifiers)), None)
        partner = rule is not None and (rule.kinds == ("nodule",) or head.casefold() in MESH_CALCIFIED_PARTNER_HEADS)
        if partner and location in calcified_at:
            rule = _rule("calcified_granuloma")
        resolved.append((head, qualifiers, location, rule, partner))
    partnered = {location for *_, location, rule, partner in resolved if partner and location in calcified_at}
    for head, qualifiers, (side, zone), rule, _ in resolved:
        if rule is None:
            if not (head.casefold() == "calcinosis" and (side, zone) in partnered):
                unmapped[head] += 1
            continue
        severity = _max_severity(*(MESH_SEVERITIES[q] for q in qualifiers if q in MESH_SEVERITIES)) or rule.severity
        findings.extend(_make_finding(kind, side, zone, severity) for kind in rule.kinds)
    return merge_findings(findings), unmapped


def _mesh_location(qualifiers: frozenset[str]) -> tuple[str | None, str | None]:
    """Side and zone of a MeSH term's qualifiers (None where absent or ambiguous)."""
    side = _combine_sides(MESH_SIDES[q] for q in qualifiers if q in MESH_SIDES)
    if side is None:
        side = _combine_sides(MESH_IMPLIED_SIDES[q] for q in qualifiers if q in MESH_IMPLIED_SIDES)
    zones = {MESH_ZONES[q] for q in qualifiers if q in MESH_ZONES}
    return side, (zones.pop() if len(zones) == 1 else None)


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


# ======================================================================================
# Source 2: a rule-based labeller for free report text
# ======================================================================================
#
# Modelled on NegEx (Chapman et al., 2001), its ConText extension (Harkema et al., 2009) and
# the CheXpert labeller (Irvin et al., 2019). Per sentence, a mention of a finding is found by
# synonym patterns (TEXT_SYNONYMS), then
#   * negated when a negation trigger ("no", "without", "negative for", "free of", "clear of",
#     "resolution of" ...) precedes it within the same clause and NEGATION_WINDOW words, or a
#     post-trigger ("... has resolved", "... is not seen") follows it; a clause ends at "but",
#     "however", "although", "which", "except", "with", "there is", ";" or ":" ("No pleural
#     effusion or pneumothorax" negates both; "Mild cardiomegaly, but no effusion" only the
#     effusion); look-alikes such as "no change" or "cannot be excluded" negate nothing;
#   * uncertain mentions ("may represent", "possible", "could", "cannot be excluded") count
#     as present, as in CheXpert's U-Ones policy: the dataset draws what the report suggests.
#     This is the main source of disagreement with the MeSH majors, whose curators index
#     the observation ("Opacity") rather than a suggested cause ("may represent atelectasis");
#   * mentions in a hypothetical or differential-diagnosis context ("differential diagnosis
#     includes edema", "to exclude a nodule") are dropped;
#   * some findings are said as statements about an organ rather than named: "heart size is
#     normal" (no cardiomegaly), "the heart is mildly enlarged" (cardiomegaly, mild), "the
#     lungs are clear" (no opacity), "pulmonary vascularity is increased" (edema), "lung
#     volumes are low" (hypoinflation);
#   * side, zone and severity come from the words next to the mention (its noun phrase and a
#     following "in the right upper lobe"), else, for a present finding, from the sentence
#     when it names only one side / zone ("... with associated atelectasis" inherits the
#     sentence's location).
# All patterns are alternations with bounded repetition and no nested quantifiers, run once
# each over the joined sentences, so labelling is linear in the length of the text.

#: Patterns that name a finding (whole words, lowercased text; ``xxxx`` is Open-i's
#: anonymisation mark, kept as a word). Where matches of two kinds overlap, the longer wins
#: ("calcified granuloma" over "granuloma", "nodular opacity" over "opacity"); within a
#: kind, longer patterns are tried first.
TEXT_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "cardiomegaly": (
        r"cardiomegaly", r"cardiac (?:enlargement|megaly)", r"cardiomegally",
        r"(?:enlarged|large|borderline(?: enlarged)?) (?:heart|cardiac (?:silhouette|shadow|size|contour)|"
        r"cardiomediastinal (?:silhouette|contour)|cardiopericardial silhouette|heart size)",
        r"enlargement of the (?:heart|cardiac silhouette|cardiomediastinal silhouette)",
    ),
    "pleural_effusion": (
        r"(?:pleural )?effusions?", r"pleural fluid",
        r"(?:layering )?fluid in the (?:\w+ )?(?:pleural space|fissure)s?",
        r"blunt(?:ing|ed) (?:of )?(?:the )?(?:\w+ ){0,3}costophrenic(?: (?:angles?|sulci|sulcus|recess(?:es)?|xxxx))?",
        r"costophrenic (?:angles?|sulci|sulcus|recess(?:es)?|xxxx)(?: \w+){0,2} (?:are |is |remains? )?blunt(?:ed|ing)",
        r"blunt(?:ing|ed) (?:of )?(?:the )?(?:\w+ ){0,3}(?:sulci|sulcus)",
        r"hydropneumothora(?:x|ces)", r"hemopneumothora(?:x|ces)", r"hemothorax",
    ),
    "opacity": (
        r"opacit(?:y|ies)", r"opacification", r"consolidat(?:ion|ions|ive|ed)",
        r"air ?-?space (?:disease|process|opacit(?:y|ies)|consolidation|filling)",
        r"alveolar (?:opacit(?:y|ies)|filling|process)",
        r"infiltrat(?:e|es|ion|ive)", r"(?:broncho)?pneumonias?", r"pneumonitis", r"densit(?:y|ies)",
    ),
    "atelectasis": (
        r"atelectas(?:is|es)", r"atelectatic", r"volume loss",
        r"collapsed? (?:of )?(?:the )?(?:right |left )?(?:upper |middle |lower )?(?:lobe|lung)",
        r"(?:lobar|lung) collapse",
    ),
    "nodule": (
        r"nodules?",
        r"(?:fibro)?nodular (?:[\w-]+ ){0,3}?(?:opacit(?:y|ies)|densit(?:y|ies)|lesions?|foci|focus|infiltrates?|"
        r"scarring)",
        r"mass(?:es)?", r"mass lesions?",
        r"mass-?like(?: (?:opacit(?:y|ies)|opacification|densit(?:y|ies)|consolidation|lesion))?",
        r"(?:pulmonary|lung) lesions?", r"(?:non-?calcified|uncalcified) (?:nodules?|densit(?:y|ies))",
    ),
    "granuloma": (r"granulom(?:a|as|ata)", r"(?:non-?calcified|uncalcified) granulom(?:a|as|ata)"),
    "calcified_granuloma": (
        r"(?<!non-)(?<!non)calcified (?:granulom(?:a|as|ata)|nodules?|nodular densit(?:y|ies)|densit(?:y|ies)|foci|"
        r"focus|opacit(?:y|ies))",
        r"granulomatous(?: (?:disease|infection|process|changes?|sequelae?|exposure|scarring))?",
        r"calcified (?:(?:right|left|bilateral) )?(?:hilar|perihilar) (?:lymph )?(?:nodes?|xxxx|lymph|adenopathy)",
        r"(?:hilar|perihilar) (?:lymph node )?calcifications?",
    ),
    "pneumothorax": (
        r"pneumothora(?:x|xes|ces)", r"hydropneumothora(?:x|ces)", r"hemopneumothora(?:x|ces)",
        r"pleural air(?: collections?)?",
    ),
    "emphysema": (
        r"emphysema", r"emphysematous", r"copd", r"chronic obstructive (?:pulmonary |lung |airways? )?disease",
        r"hyper-?inflat(?:ed|ion)", r"hyper-?expan(?:ded|sion)", r"hyper-?aerat(?:ed|ion)", r"over-?inflat(?:ed|ion)",
        r"over-?expan(?:ded|sion)", r"hyperlucen(?:t|cy)", r"bullae", r"bullous (?:disease|changes?)",
        r"flatten(?:ed|ing) (?:of )?(?:the )?(?:\w+ )?(?:hemi-?)?diaphragms?", r"increased lung volumes?",
        r"(?:hemi-?)?diaphragms? (?:are |is |appear )?flattened",
    ),
    "edema": (
        r"o?edema",
        r"(?:pulmonary |central |perihilar |hilar )?vascular (?:congestion|engorgement|redistribution|prominence)",
        r"pulmonary congestion", r"pulmonary venous (?:hypertension|congestion)", r"engorge(?:d|ment)",
        r"prominen(?:t|ce of the) (?:central |pulmonary |lung |hilar )*(?:vascularity|vasculature|vessels|vascular "
        r"markings)",
        r"increased (?:central |pulmonary |lung )*(?:vascularity|vasculature|vascular markings)",
        r"congestive (?:heart |cardiac )?failure", r"chf", r"(?:heart|cardiac) failure", r"congestion",
        r"congestive changes?",
        r"kerley b?-? ?lines?", r"cephalization",
    ),
    "hypoinflation": (
        r"hypo-?inflat(?:ed|ion)", r"hypo-?expan(?:ded|sion)", r"hypo-?aerat(?:ed|ion)", r"under-?inflat(?:ed|ion)",
        r"(?:low|lower|decreas(?:ed|ing)|diminished|reduced) (?:lung |inspiratory )?volumes?(?![- ]normal)",
        r"hypoventilation",
        r"(?:poor|shallow|suboptimal|low) (?:inspiration|inspiratory (?:effort|volumes?))",
        r"(?:lung volumes|inspiration) (?:are |is )?(?:low(?![- ]normal)|diminished|decreased|reduced|shallow|poor)",
    ),
    "pacemaker": (
        r"pacemakers?", r"pacers?", r"a?icds?", r"(?:implantable )?(?:cardioverter[- ])?defibrillators?",
        r"pacing (?:devices?|leads?|wires?|generators?)", r"cardiac (?:devices?|leads?|generators?|pacing device)",
        r"(?:pulse |battery )?generators?", r"transvenous leads?",
    ),
    "central_line": (
        r"central (?:venous )?(?:lines?|catheters?|access)", r"picc(?: lines?)?",
        r"peripherally inserted central (?:venous )?catheters?",
        r"(?:port-?a-?cath(?:eter)?|portacath(?:eter)?|mediport|power ?port|infusion port|venous port|chest port|"
        r"port catheter)s?",
        r"ports?",
        r"(?:internal jugular|subclavian|ij|jugular) (?:venous )?(?:lines?|catheters?|sheaths?|introducers?)",
        r"(?:(?:hemo)?dialysis|venous|hickman|groshong|swan-?ganz|pulmonary artery|(?:triple|double|dual)[- ]lumen|"
        r"tunnell?ed|vascular) catheters?",
        r"catheters?",
        r"tip (?:\w+ ){0,6}(?:svc|superior vena cava|cavoatrial|cavo-atrial|caval[- ]?atrial|brachiocephalic)",
    ),
    "sternotomy": (
        r"sternotomy(?: (?:wires?|sutures?|xxxx))?", r"sternal (?:wires?|sutures?|cerclage|wiring|xxxx)", r"cabg",
        r"coronary (?:artery )?bypass(?: grafts?| graft surgery| surgery)?", r"post-?sternotomy",
    ),
    "scoliosis": (
        r"(?:dextro|levo)?scolios(?:is|es)", r"scoliotic(?: curvature| deformity| curve)?", r"(?:dextro|levo)-?convex",
        r"(?:dextro|levo) ?curvature", r"(?<!kyphotic )(?<!kyphosis )curvature of the (?:[\w-]+ ){0,2}spine",
        r"(?<!kyphotic )(?:spine|spinal) curvature",
    ),
}

#: Phrases that contain a synonym but are not the finding; they win overlaps and yield nothing.
TEXT_NOT_FINDINGS: tuple[str, ...] = (
    r"pericardial effusions?", r"joint effusions?",
    r"(?:subcutaneous|mediastinal|interstitial|soft tissue|surgical) emphysema",
    r"(?:soft tissue|subcutaneous|laryngeal|chest wall|extremity) o?edema", r"nasal congestion",
    r"(?:bone|mineral|bone mineral|soft tissue|breast|nipple) densit(?:y|ies)",
    r"(?:soft tissue|breast|mediastinal|neck|abdominal|thyroid) mass(?:es)?", r"nipple shadows?",
    r"(?:foley|urinary|nasogastric|enteric|feeding|endotracheal|chest|drainage|pigtail|suprapubic|peritoneal) "
    r"(?:tubes?|catheters?)",
    r"body mass(?: index)?",
)

#: Statements about an organ: ``subject ... state`` within a few words, the first state word
#: deciding. ``present`` states say the finding is there, ``absent`` ones that it is not.
TEXT_STATEMENTS: Mapping[str, tuple[str, str, str]] = {
    # kind: (subject, present state, absent state)
    "cardiomegaly": (
        r"(?:heart|cardiac (?:silhouette|shadow|size|contours?|borders?)|cardiomediastinal (?:silhouettes?|"
        r"contours?|size|shadow)|"
        r"cardiopericardial silhouette|cardiac and mediastinal (?:silhouettes?|contours?))",
        r"(?:\w+ly )?(?:enlarged|enlargement|large|increased|borderline|prominent)",
        r"normal|within (?:normal limits|limits of normal)|unremarkable|not (?:\w+ly )?enlarged|upper limits? of "
        r"normal|"
        r"top (?:of )?normal",
    ),
    "edema": (
        r"(?:pulmonary |lung |central )?(?:vascularity|vasculature|vascular (?:markings|pattern)|vessels)|pulmonary "
        r"xxxx",
        r"(?:\w+ly )?(?:increased|prominent|engorged|congested|indistinct|cephalized|redistributed)",
        r"normal|within (?:normal limits|limits of normal)|unremarkable|not (?:increased|engorged|congested)",
    ),
    "hypoinflation": (
        r"(?:lung|inspiratory) volumes?",
        r"(?:\w+ly )?(?:low(?![- ]normal)|decreased|diminished|reduced|small)",
        r"normal|low[- ]normal|within normal limits|adequate|preserved",
    ),
}

#: Phrases that state an absence directly.
TEXT_ABSENCES: Mapping[str, tuple[str, ...]] = {
    "cardiomegaly": (
        r"normal[- ](?:sized? )?(?:heart|cardiac (?:silhouette|size|contours?|shadow)|cardiomediastinal "
        r"(?:silhouettes?|contours?|size))",
        r"heart size normal",
    ),
    "opacity": (
        r"lungs?(?: fields)?(?: (?:are|is|remain|remains|appear|appears|now|otherwise|grossly|again|essentially|"
        r"relatively|both))* clear",
        r"clear lungs",
    ),
    "pleural_effusion": (
        r"costophrenic (?:angles?|sulci|sulcus|recess(?:es)?|xxxx) (?:are |is |remain )?(?:sharp|clear|preserved|"
        r"normal)",
        r"pleural spaces? (?:are |is )?(?:clear|normal)",
    ),
    "edema": (r"normal (?:pulmonary )?(?:vascularity|vasculature)",),
    "hypoinflation": (r"normal lung volumes?", r"lungs? (?:are |is )?well[- ](?:inflated|expanded|aerated)"),
}

#: Words that make a mention negated when they precede it within the clause.
NEGATION_PRE = (
    r"no|not|without|negative for|free of|clear of|absence of|resolution of|removal of|rule out|ruled out|nor|"
    r"neither|lack of"
)
#: Phrases that negate the mentions just before them ("the effusion has resolved").
NEGATION_POST = (
    r"(?:(?:is|are|was|were|has been|have been) )?(?:not|no longer) (?:\w+ )?(?:seen|identified|visualized|visible|"
    r"present|evident|"
    r"demonstrated|appreciated|noted|detected)|(?:is |are )?absent|(?:has|have|is|are|was|were)(?: \w+)? "
    r"(?:resolved|cleared)|"
    r"(?:has |have )?been removed"
)
#: Phrases that look like negations but are not ("no change", "cannot be excluded").
NEGATION_PSEUDO = (
    r"(?:can ?not|could not|may not|not) (?:be )?(?:entirely |completely |totally |definitely )?(?:excluded|ruled "
    r"out|exclude|rule out)|"
    r"no (?:significant |definite |appreciable |substantial |interval |other )*(?:change|increase|decrease|"
    r"progression|worsening|improvement)|"
    r"not (?:significantly |substantially )?(?:changed|increased|improved)|not only|without (?:significant |"
    r"interval )*change"
)
#: Words and marks that end a negation's scope.
NEGATION_TERMINATORS = (
    r"\b(?:but|however|although|though|except|apart from|aside from|other than|which|whereas|while|yet|with|"
    r"there (?:is|are|has been|have been))\b|[;:|]"
)
#: Most words between a pre-negation trigger and the mention it negates.
NEGATION_WINDOW = 12
#: Hypothetical and differential-diagnosis contexts (ConText, Harkema et al., 2009): the
#: mentions that follow in the clause are neither asserted nor negated, and are dropped
#: ("differential diagnosis includes edema", "to exclude a nodule", "could obscure a nodule").
HYPOTHETICAL = (
    r"differential(?: diagnos[ie]s)?(?: (?:is|includes?|considerations?|xxxx|and))*|"
    r"to (?:exclude|rule out|evaluate|assess|ensure|identify)|evaluation for|(?:could|may|might|would) obscure|"
    r"if (?:there|clinically)"
)
#: What ends a hypothetical context: a change of clause, not a "with" inside it.
HYPOTHETICAL_TERMINATORS = r"\b(?:but|however|although|though)\b|[;:|]"

#: A mention whose noun phrase (the words around it up to a stop word, and its own words)
#: matches the pattern is another kind: "calcified 5 mm granuloma", "calcified stable right
#: midlung granulomas", "6 mm calcified nodule". As Open-i's curators read it, in "calcified
#: left midlung granuloma and left hilar granulomas" only the first is calcified.
TEXT_RECLASSIFY: tuple[tuple[str, str, str], ...] = (
    # kind, pattern, new kind
    ("granuloma", r"(?<!non)(?<!non-)(?<!un)calcifi", "calcified_granuloma"),
    ("nodule", r"(?<!non)(?<!non-)(?<!un)calcifi", "calcified_granuloma"),
)
#: An opacity or nodule whose neighbouring words name a structure outside the lung and no
#: lung location ("density overlying the sixth anterior rib", "right paratracheal density")
#: is not a lung finding; Open-i's curators index such findings under the bone or the
#: mediastinum, and the renderer has nothing to draw for them.
NON_LUNG_CONTEXT = (
    r"ribs?|clavicles?|clavicular|spine|spinal|vertebra\w*|mediastin\w*|paratracheal|soft tissues?|breasts?|nipples?|"
    r"humer\w*|scapula\w*|bony|bones?|osseous|sternum|hiatal|stents?|valves?"
)
LUNG_CONTEXT = (
    r"lungs?|lobes?|lobar|lingula\w*|midlung|ap(?:ex|ices|ical)|bases?|basi?lar|basal|bibasi\w*|hil(?:um|ar)|perihilar|"
    r"parenchym\w*|pulmonary|costophrenic|retrocardiac|air ?space|alveolar|zones?"
)
_NON_LUNG_KINDS = frozenset({"opacity", "nodule"})

#: Location and severity words read next to a mention. Order matters only for sides, where
#: finding both "left" and "right" means bilateral.
SIDE_WORDS: Mapping[str, str] = {
    r"bilateral(?:ly)?|both|bibasi(?:lar|lal)|bibasal|biapical|s-shaped": "bilateral",
    r"right(?![- ](?:atri|ventric))|rightward|dextro\w*": "right",
    r"left(?![- ](?:atri|ventric))|leftward|levo\w*|lingula(?:r)?|retrocardiac": "left",
}
ZONE_WORDS: Mapping[str, str] = {
    r"upper[- ](?:lobes?|lungs?|zones?|fields?|lobar)|ap(?:ex|ices|ical|ically)|biapical": "upper",
    r"middle[- ](?:lobes?|lungs?|zones?|lobar)|mid[- ]?(?:lungs?|zones?|fields?)|lingula(?:r)?": "middle",
    r"lower[- ](?:lobes?|lungs?|zones?|fields?|lobar)|bases?|basi?lar|basal|basally|bibasi(?:lar|lal)|bibasal|"
    r"infrahilar|retrocardiac|costophrenic": "lower",
}
SEVERITY_WORDS: Mapping[str, str] = {
    r"mild(?:ly)?|minimal(?:ly)?|small(?:er)?|trace|tiny|slight(?:ly)?|borderline|subtle|minor|top[- ]normal": "mild",
    r"moderate(?:ly)?|moderate-sized|medium": "moderate",
    r"severe(?:ly)?|large(?:r)?|marked(?:ly)?|massive(?:ly)?|extensive|huge|significantly|substantial(?:ly)?": "severe",
}
#: Attributes implied by the mention's own words, used where the words around say nothing.
IMPLIED_BY_MENTION: tuple[tuple[str, Mapping[str, str]], ...] = (
    (r"\bmass", {"severity": "severe"}),
)
#: Words that end a mention's noun phrase when reading modifiers around it.
_MODIFIER_STOP = re.compile(r"[,;:()|]|\b(?:with|and|or|without|but|plus|also|versus|vs|which|that|may|likely|no)\b")
_MODIFIER_CHARS = 80  # how far (characters) modifiers are looked for around a mention


def _compile_words(table: Mapping[str, str]) -> list[tuple[re.Pattern[str], str]]:
    return [(re.compile(rf"\b(?:{pattern})\b"), value) for pattern, value in table.items()]


def _compile_any(patterns: Iterable[str]) -> re.Pattern[str]:
    return re.compile(r"\b(?:" + "|".join(f"(?:{p})" for p in patterns) + r")\b")


def _compile_alternatives(patterns: Iterable[str]) -> re.Pattern[str]:
    """One regex for a kind's synonyms, longer ones first (one pass over the text per kind)."""
    return _compile_any(sorted(patterns, key=len, reverse=True))


_SYNONYM_PATTERNS: list[tuple[re.Pattern[str], str | None]] = [
    (_compile_alternatives(patterns), kind) for kind, patterns in TEXT_SYNONYMS.items()
] + [(_compile_alternatives(TEXT_NOT_FINDINGS), None)]
_GAP = r"(?:\s+[\w',/-]+){0,6}?\s+"  # up to six words between a subject and its state
_STATEMENT_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"\b{subject}{_GAP}(?:(?P<present>{present})|(?P<absent>{absent}))\b"), kind)
    for kind, (subject, present, absent) in TEXT_STATEMENTS.items()
]
_ABSENCE_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (_compile_alternatives(patterns), kind) for kind, patterns in TEXT_ABSENCES.items()
]
_NEG_PRE = _compile_any([NEGATION_PRE])
_NEG_POST = _compile_any([NEGATION_POST])
_NEG_PSEUDO = _compile_any([NEGATION_PSEUDO])
_NEG_END = re.compile(NEGATION_TERMINATORS)
_HYPOTHETICAL = _compile_any([HYPOTHETICAL])
_HYPOTHETICAL_END = re.compile(HYPOTHETICAL_TERMINATORS)
_RECLASSIFY = [(kind, re.compile(pattern), new) for kind, pattern, new in TEXT_RECLASSIFY]
_NON_LUNG = _compile_any([NON_LUNG_CONTEXT])
_LUNG = _compile_any([LUNG_CONTEXT])
_SIDES = _compile_words(SIDE_WORDS)
_ZONES = _compile_words(ZONE_WORDS)
_SEVERITIES = _compile_words(SEVERITY_WORDS)
_IMPLIED = [(re.compile(p), attrs) for p, attrs in IMPLIED_BY_MENTION]
_WORD = re.compile(r"[\w'-]+")
_BOTH_SIDES = re.compile(r"\b(?:both )?(?:right and left|left and right)\b")
_DASHES = str.maketrans({c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"})


@dataclass(frozen=True)
class _Mention:
    kind: str
    start: int
    end: int
    negated: bool | None = None  # None: decided by the negation triggers
    severity: str | None = None  # from the statement itself ("mildly enlarged")


@functools.lru_cache(maxsize=8192)
def _attributes(text: str) -> tuple[str | None, str | None, str | None]:
    """Side, zone and severity named in a piece of text (None where none or ambiguous)."""
    side = _combine_sides(value for pattern, value in _SIDES if pattern.search(text))
    zones = {value for pattern, value in _ZONES if pattern.search(text)}
    severity = _max_severity(*(value for pattern, value in _SEVERITIES if pattern.search(text)))
    return side, (zones.pop() if len(zones) == 1 else None), severity


def _phrase_before(sentence: str, start: int, limit: int) -> str:
    """The words just before ``start`` that still belong to the mention's noun phrase."""
    window = sentence[max(limit, start - _MODIFIER_CHARS) : start]
    stops = list(_MODIFIER_STOP.finditer(window))
    return window[stops[-1].end() :] if stops else window


def _phrase_after(sentence: str, end: int, limit: int) -> str:
    """The words just after ``end`` up to the next stop word ("in the right upper lobe")."""
    window = sentence[end : min(limit, end + _MODIFIER_CHARS)]
    stop = _MODIFIER_STOP.search(window)
    return window[: stop.start()] if stop else window


def _find_mentions(doc: str) -> list[_Mention]:
    """All mentions in the text: synonyms (longest wins on overlap), statements, absences."""
    candidates = [(m.start(), m.end(), kind) for pattern, kind in _SYNONYM_PATTERNS for m in pattern.finditer(doc)]
    # Longest first; spans identical to an accepted one are kept too ("hydropneumothorax"
    # is both a pneumothorax and an effusion).
    candidates.sort(key=lambda c: (c[0] - c[1], c[0]))
    accepted: list[tuple[int, int, str | None]] = []
    taken = bytearray(len(doc))
    spans: set[tuple[int, int]] = set()
    for start, end, kind in candidates:
        if (start, end) in spans or not any(taken[start:end]):
            accepted.append((start, end, kind))
            spans.add((start, end))
            taken[start:end] = b"\x01" * (end - start)
    mentions = [_Mention(kind, start, end) for start, end, kind in accepted if kind is not None]
    for pattern, kind in _STATEMENT_PATTERNS:
        for m in pattern.finditer(doc):
            present = m.group("present") is not None
            severity = _attributes(m.group("present"))[2] if present else None
            if present and kind == "cardiomegaly" and "borderline" in m.group("present"):
                severity = "mild"
            mentions.append(_Mention(kind, m.start(), m.end(), negated=not present, severity=severity))
    for pattern, kind in _ABSENCE_PATTERNS:
        mentions.extend(_Mention(kind, m.start(), m.end(), negated=True) for m in pattern.finditer(doc))
    return sorted(mentions, key=lambda m: (m.start, m.end))


def _trigger_positions(pattern: re.Pattern[str], doc: str, pseudo: bytearray, at_end: bool) -> list[int]:
    """Sorted ends (or starts) of the trigger matches that do not overlap a pseudo-trigger."""
    return [m.end() if at_end else m.start() for m in pattern.finditer(doc) if not any(pseudo[m.start() : m.end()])]


def _in_scope_after(positions: list[int], ends: list[int], start: int, doc: str, max_words: int | None) -> bool:
    """Whether a trigger ending at one of ``positions`` reaches ``start`` in the same clause."""
    i = bisect_right(positions, start) - 1
    if i < 0:
        return False
    trigger_end = positions[i]
    j = bisect_left(ends, trigger_end)
    if j < len(ends) and ends[j] < start:
        return False
    if max_words is None:
        return True
    between = doc[trigger_end:start]
    return len(between) < 200 and len(_WORD.findall(between)) <= max_words


def _in_scope_before(positions: list[int], ends: list[int], end: int, doc: str, max_words: int) -> bool:
    """Whether a trigger starting at one of ``positions`` follows ``end`` closely, same clause."""
    i = bisect_left(positions, end)
    if i >= len(positions):
        return False
    trigger_start = positions[i]
    j = bisect_left(ends, end)
    if j < len(ends) and ends[j] < trigger_start:
        return False
    between = doc[end:trigger_start]
    return len(between) < 80 and len(_WORD.findall(between)) <= max_words


#: Joins the normalised sentences into one text that every pattern is run over once. No
#: pattern matches across it, and it ends negation scopes and modifier phrases.
_SENTENCE_SEPARATOR = " | "


def _normalize_sentence(sentence: str) -> str:
    text = unicodedata.normalize("NFKC", sentence).translate(_DASHES).casefold().replace("|", " ")
    return _BOTH_SIDES.sub(lambda m: "bilateral".ljust(len(m.group(0))), text)


def _label_sentences(sentences: Sequence[str]) -> list[Finding]:
    """Label sentences; every pattern runs once over all of them (linear time in the text)."""
    normalized = [_normalize_sentence(s) for s in sentences]
    doc = _SENTENCE_SEPARATOR.join(normalized)
    starts, position = [], 0
    for sentence in normalized:
        starts.append(position)
        position += len(sentence) + len(_SENTENCE_SEPARATOR)
    mentions = _find_mentions(doc)
    if not mentions:
        return []
    pseudo = bytearray(len(doc))
    for m in _NEG_PSEUDO.finditer(doc):
        pseudo[m.start() : m.end()] = b"\x01" * (m.end() - m.start())
    pre = _trigger_positions(_NEG_PRE, doc, pseudo, at_end=True)
    post = _trigger_positions(_NEG_POST, doc, pseudo, at_end=False)
    hypothetical = [m.end() for m in _HYPOTHETICAL.finditer(doc)]
    ends = [m.start() for m in _NEG_END.finditer(doc)]
    hypothetical_ends = [m.start() for m in _HYPOTHETICAL_END.finditer(doc)]
    # Subjects sharing a statement of absence: "heart size and pulmonary vascular engorgement
    # appear within limits of normal" negates the engorgement too.
    absent_spans = sorted((m.start, m.end) for m in mentions if m.negated is True)
    absent_starts = [a for a, _ in absent_spans]
    bounds = sorted({m.start for m in mentions} | {m.end for m in mentions})
    sentence_attributes: dict[int, tuple[str | None, str | None, str | None]] = {}
    findings = []
    for mention in mentions:
        if _in_scope_after(hypothetical, hypothetical_ends, mention.start, doc, None):
            continue
        negated = mention.negated
        if negated is None:
            k = bisect_right(absent_starts, mention.start) - 1
            inside_absence = k >= 0 and absent_spans[k][1] >= mention.end
            negated = (
                inside_absence
                or _in_scope_after(pre, ends, mention.start, doc, NEGATION_WINDOW)
                or _in_scope_before(post, ends, mention.end, doc, 6)
            )
        # Modifiers: the noun phrase before the mention (back to the previous mention), the
        # mention's own words, then the phrase after it (up to the next mention).
        k = bisect_left(bounds, mention.start) - 1
        before = _phrase_before(doc, mention.start, bounds[k] if k >= 0 else 0)
        k = bisect_right(bounds, mention.end)
        after = _phrase_after(doc, mention.end, bounds[k] if k < len(bounds) else len(doc))
        own = doc[mention.start : mention.end]
        kind = mention.kind
        context = f"{before} {own} {after}"
        if kind in _NON_LUNG_KINDS and _NON_LUNG.search(f"{before} {after}") and not _LUNG.search(context):
            continue
        for old, pattern, new in _RECLASSIFY:
            if kind == old and pattern.search(context):
                kind = new
        index = bisect_right(starts, mention.start) - 1
        if index not in sentence_attributes:
            sentence_attributes[index] = _attributes(normalized[index])
        sentence_side, sentence_zone, _ = sentence_attributes[index]
        side_b, zone_b, sev_b = _attributes(before)
        side_o, zone_o, sev_o = _attributes(own)
        side_a, zone_a, sev_a = _attributes(after)
        side = side_b or side_o or side_a or (None if negated else sentence_side)
        zone = zone_b or zone_o or zone_a or (None if negated else sentence_zone)
        severity = mention.severity or sev_b or sev_o or sev_a
        for pattern, implied in _IMPLIED:
            if pattern.search(own):
                severity = severity or implied.get("severity")
        if negated:
            severity = None  # "no large effusion" is not a large negated effusion
        if kind == "pleural_effusion" and side is None and not negated and own.endswith("effusions"):
            side = "bilateral"  # "effusions" without a side: one on each side
        findings.append(_make_finding(kind, side, zone, severity, negated))
    return findings


def label_text(text: str) -> list[Finding]:
    """Findings of free report text (findings + impression, or anything a user types).

    The text is split into sentences (:func:`xrg.data.reports.split_sentences`); each
    sentence is labelled as described at :data:`TEXT_SYNONYMS` and the results merged with
    :func:`merge_findings`: a kind said to be present anywhere in the text is present (its
    negations elsewhere are dropped), otherwise its negation is kept as one negated finding.
    Empty or whitespace-only text gives ``[]``; a non-string raises :class:`ReportError`.
    """
    if not isinstance(text, str):
        raise ReportError(f"report text must be a string, got {type(text).__name__}")
    return merge_findings(_label_sentences(split_sentences(text)))


# ======================================================================================
# Agreement of two sources, and text from findings
# ======================================================================================


def _present_kinds(findings: Iterable[Finding]) -> set[str]:
    return {f.kind for f in findings if not f.negated}


def agreement(
    pairs: Iterable[tuple[Sequence[Finding], Sequence[Finding]]], kinds: Sequence[str] = FINDING_KINDS
) -> "pd.DataFrame":
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
        "n_reports": n, "n_reference": n_ref, "n_candidate": n_cand, "n_both": n_both,
        "precision": precision, "recall": recall, "f1": f1, "kappa": kappa,
    }


def report_text(report: Any) -> str:
    """The text the labeller reads from an Open-i report: FINDINGS then IMPRESSION."""
    return f"{report.findings} {report.impression}".strip()


def openi_agreement(reports: Iterable[Any]) -> tuple["pd.DataFrame", collections.Counter[str]]:
    """Agreement of :func:`label_text` with :func:`mesh_to_findings` on Open-i reports.

    ``reports`` are :class:`xrg.data.reports.Report` objects (anything with ``findings``,
    ``impression`` and ``mesh``); those without text are left out. MeSH is the reference.
    Returns the :func:`agreement` table (columns ``n_mesh``/``n_text`` for reference and
    candidate) and the unmapped MeSH head terms over those reports.
    """
    unmapped: collections.Counter[str] = collections.Counter()
    pairs = []
    for report in reports:
        text = report_text(report)
        if not text:
            continue
        mesh, unknown = mesh_to_findings(report.mesh)
        unmapped.update(unknown)
        pairs.append((mesh, label_text(text)))
    table = agreement(pairs).rename(columns={"n_reference": "n_mesh", "n_candidate": "n_text"})
    return table, unmapped


# --- text from findings -----------------------------------------------------------------

_SIZE_WORDS = {"mild": "small", "moderate": "moderate", "severe": "large"}
_NOUNS: Mapping[str, str] = {
    "cardiomegaly": "cardiomegaly", "pleural_effusion": "pleural effusion", "opacity": "opacity",
    "atelectasis": "atelectasis", "nodule": "nodule", "granuloma": "granuloma",
    "calcified_granuloma": "calcified granuloma", "pneumothorax": "pneumothorax", "emphysema": "emphysema",
    "edema": "pulmonary edema", "hypoinflation": "low lung volumes", "pacemaker": "pacemaker",
    "central_line": "central venous catheter", "sternotomy": "median sternotomy wires", "scoliosis": "scoliosis",
}
_SIZED = frozenset({"pleural_effusion", "nodule", "pneumothorax"})  # severity said as size


def _location(side: str | None, zone: str | None) -> str:
    """'the right upper lobe', 'the lingula', 'both lung bases', 'the left lung' ..."""
    if zone is None:
        return {"left": "the left lung", "right": "the right lung", "bilateral": "both lungs", None: ""}[side]
    if side == "left" and zone == "middle":
        return "the lingula"
    lobe = {"upper": "upper lobe", "middle": "middle lobe", "lower": "lower lobe"}[zone]
    if side is None:
        return f"the {lobe}s" if zone != "middle" else "the mid lungs"
    if side == "bilateral":
        return {"upper": "both upper lobes", "middle": "both mid lungs", "lower": "both lower lobes"}[zone]
    return f"the {side} {lobe}"


def _describe_one(f: Finding) -> str:
    if f.negated:
        if f.kind == "cardiomegaly":
            return "Heart size is normal."
        if f.kind == "hypoinflation":
            return "Normal lung volumes."
        return f"No {_NOUNS[f.kind]}."
    severity = f.severity
    if f.kind == "nodule" and severity == "severe":
        words, severity = ["mass"], None
    else:
        words = [_NOUNS[f.kind]]
    if f.kind == "hypoinflation":
        adverb = {"mild": "Mildly low", "moderate": "Moderately low", "severe": "Severely low", None: "Low"}[severity]
        return f"{adverb} lung volumes."
    if f.kind == "pleural_effusion" and f.side == "bilateral":
        words = ["bilateral", "pleural effusions"]
    elif f.kind in ("pleural_effusion", "pneumothorax") and f.side:
        words.insert(0, f.side)
    elif f.kind in ("pacemaker", "central_line") and f.side:
        words.insert(0, f"{f.side}-sided")
    if severity:
        words.insert(0, _SIZE_WORDS[severity] if f.kind in _SIZED else severity)
    phrase = " ".join(words)
    if "zone" in KIND_ATTRIBUTES[f.kind] and (f.side or f.zone):
        phrase += f" in {_location(f.side, f.zone)}"
    elif f.kind == "scoliosis" and f.side:
        if f.side == "bilateral":
            phrase = phrase.replace("scoliosis", "S-shaped scoliosis")
        else:
            phrase += f", convex to the {f.side}"
    return phrase[0].upper() + phrase[1:] + "."


def describe_findings(findings: Iterable[Finding]) -> str:
    """A short report from findings: present ones first, then the negated ones.

    ``[Finding("cardiomegaly", severity="mild"), Finding("pleural_effusion", "left",
    severity="mild")]`` gives ``"Mild cardiomegaly. Small left pleural effusion."``. Sized
    findings (effusion, nodule, pneumothorax) say small/moderate/large, a severe nodule is a
    mass. :func:`label_text` reads the result back to the same findings. No findings gives
    ``"No acute cardiopulmonary abnormality."``.
    """
    findings = merge_findings(findings)
    if not findings:
        return "No acute cardiopulmonary abnormality."
    ordered = sorted(findings, key=lambda f: (f.negated, _finding_order(f)))
    return " ".join(_describe_one(f) for f in ordered)


if __name__ == "__main__":  # python -m xrg.data.findings: agreement on the real Open-i reports
    from xrg.data.reports import load_openi_reports

    table, unmapped = openi_agreement(load_openi_reports().reports)
    print(table.round(3).to_string())
    print("unmapped MeSH heads:", ", ".join(f"{k} {v}" for k, v in unmapped.most_common(20)))
