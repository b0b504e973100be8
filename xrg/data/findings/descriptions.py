"""Text from findings: :func:`describe_findings` writes findings as a short report.

The wording is the one :func:`~xrg.data.findings.label_text` reads back to the same findings
(and the one :mod:`xrg.data.edits` uses for the sentences it rewrites).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from xrg.data.findings.schema import KIND_ATTRIBUTES, Finding, _finding_order, merge_findings

_SIZE_WORDS = {"mild": "small", "moderate": "moderate", "severe": "large"}
_NOUNS: Mapping[str, str] = {
    "cardiomegaly": "cardiomegaly",
    "pleural_effusion": "pleural effusion",
    "opacity": "opacity",
    "atelectasis": "atelectasis",
    "nodule": "nodule",
    "granuloma": "granuloma",
    "calcified_granuloma": "calcified granuloma",
    "pneumothorax": "pneumothorax",
    "emphysema": "emphysema",
    "edema": "pulmonary edema",
    "hypoinflation": "low lung volumes",
    "pacemaker": "pacemaker",
    "central_line": "central venous catheter",
    "sternotomy": "median sternotomy wires",
    "scoliosis": "scoliosis",
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
