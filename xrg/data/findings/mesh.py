"""Source 1 of findings: Open-i MeSH major terms mapped to :class:`~xrg.data.findings.Finding`.

:func:`mesh_to_findings` reads the ``<major>`` tags Open-i curators attached to each report
(``Opacity/lung/upper lobe/right``, ``Cardiomegaly/mild``, ``normal`` ...) through
:data:`MESH_RULES` and the qualifier tables.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from xrg.data.findings.schema import Finding, _combine_sides, _make_finding, _max_severity, merge_findings
from xrg.errors import FindingError

# An Open-i MeSH major is ``Head/qualifier/qualifier...``: a MeSH heading or a local term
# (``Opacity``, ``Calcified Granuloma``), then anatomy, side, zone, severity and shape words
# in no fixed order (``Opacity/lung/base/left/streaky``, ``Pleural Effusion/left/small``).
# A head maps through :data:`MESH_RULES`; the qualifiers through the tables below; qualifiers
# with no meaning for the renderer (``streaky``, ``multiple``, ``chronic``) are ignored.

MESH_SIDES: Mapping[str, str] = {"left": "left", "right": "right", "bilateral": "bilateral"}
MESH_ZONES: Mapping[str, str] = {
    "upper lobe": "upper",
    "apex": "upper",
    "middle lobe": "middle",
    "lingula": "middle",
    "mid": "middle",
    "lower lobe": "lower",
    "base": "lower",
    "bases": "lower",
    "costophrenic angle": "lower",
    "retrocardiac": "lower",
}
#: Qualifiers that also imply a side when none is given: the lingula and the space behind
#: the heart are both in the left lung.
MESH_IMPLIED_SIDES: Mapping[str, str] = {"lingula": "left", "retrocardiac": "left"}
MESH_SEVERITIES: Mapping[str, str] = {
    "mild": "mild",
    "borderline": "mild",
    "small": "mild",
    "minimal": "mild",
    "moderate": "moderate",
    "severe": "severe",
    "large": "severe",
    "marked": "severe",
}
#: Terms that say "nothing to find" (not counted as unmapped).
MESH_NO_FINDING: frozenset[str] = frozenset({"normal", "no indexing"})

#: Anatomy qualifiers that put an "opacity", "nodule" ... outside the lung parenchyma
#: (a rib lesion, a mediastinal mass, a breast density): not a lung finding to draw.
NON_LUNG_SITES: frozenset[str] = frozenset(
    {
        "ribs",
        "clavicle",
        "sternum",
        "humerus",
        "shoulder",
        "spine",
        "thoracic vertebrae",
        "cervical vertebrae",
        "lumbar vertebrae",
        "mediastinum",
        "paratracheal",
        "supracardiac",
        "heart",
        "mitral valve",
        "aorta",
        "breast",
        "adipose tissue",
        "abdomen",
        "neck",
        "trachea",
        "trachea, carina",
    }
)
#: Sites that make an "Implanted Medical Device" something else than a cardiac pacemaker
#: or defibrillator (a valve prosthesis, a septal closure device "over the heart", a shoulder
#: prosthesis, spinal hardware ...).
NON_PACEMAKER_SITES: frozenset[str] = frozenset(
    {
        "aortic valve",
        "mitral valve",
        "heart",
        "heart atria",
        "heart ventricles",
        "pulmonary artery",
        "humerus",
        "shoulder",
        "thoracic vertebrae",
        "cervical vertebrae",
        "lumbar vertebrae",
        "spine",
        "abdomen",
        "breast",
        "neck",
    }
)


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
