"""Source 2 of findings: a rule-based labeller for free report text (:func:`label_text`).

Finds mentions of each finding kind by synonym patterns and organ statements, decides their
negation (NegEx-style triggers, pseudo-triggers and clause terminators), drops hypothetical
mentions, and reads side, zone and severity from the words around each mention.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from xrg.data.findings.schema import Finding, _combine_sides, _make_finding, _max_severity, merge_findings
from xrg.data.reports import split_sentences
from xrg.errors import ReportError

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
        r"cardiomegaly",
        r"cardiac (?:enlargement|megaly)",
        r"cardiomegally",
        r"(?:enlarged|large|borderline(?: enlarged)?) (?:heart|cardiac (?:silhouette|shadow|size|contour)|"
        r"cardiomediastinal (?:silhouette|contour)|cardiopericardial silhouette|heart size)",
        r"enlargement of the (?:heart|cardiac silhouette|cardiomediastinal silhouette)",
    ),
    "pleural_effusion": (
        r"(?:pleural )?effusions?",
        r"pleural fluid",
        r"(?:layering )?fluid in the (?:\w+ )?(?:pleural space|fissure)s?",
        r"blunt(?:ing|ed) (?:of )?(?:the )?(?:\w+ ){0,3}costophrenic(?: (?:angles?|sulci|sulcus|recess(?:es)?|xxxx))?",
        r"costophrenic (?:angles?|sulci|sulcus|recess(?:es)?|xxxx)(?: \w+){0,2} (?:are |is |remains? )?blunt(?:ed|ing)",
        r"blunt(?:ing|ed) (?:of )?(?:the )?(?:\w+ ){0,3}(?:sulci|sulcus)",
        r"hydropneumothora(?:x|ces)",
        r"hemopneumothora(?:x|ces)",
        r"hemothorax",
    ),
    "opacity": (
        r"opacit(?:y|ies)",
        r"opacification",
        r"consolidat(?:ion|ions|ive|ed)",
        r"air ?-?space (?:disease|process|opacit(?:y|ies)|consolidation|filling)",
        r"alveolar (?:opacit(?:y|ies)|filling|process)",
        r"infiltrat(?:e|es|ion|ive)",
        r"(?:broncho)?pneumonias?",
        r"pneumonitis",
        r"densit(?:y|ies)",
    ),
    "atelectasis": (
        r"atelectas(?:is|es)",
        r"atelectatic",
        r"volume loss",
        r"collapsed? (?:of )?(?:the )?(?:right |left )?(?:upper |middle |lower )?(?:lobe|lung)",
        r"(?:lobar|lung) collapse",
    ),
    "nodule": (
        r"nodules?",
        r"(?:fibro)?nodular (?:[\w-]+ ){0,3}?(?:opacit(?:y|ies)|densit(?:y|ies)|lesions?|foci|focus|infiltrates?|"
        r"scarring)",
        r"mass(?:es)?",
        r"mass lesions?",
        r"mass-?like(?: (?:opacit(?:y|ies)|opacification|densit(?:y|ies)|consolidation|lesion))?",
        r"(?:pulmonary|lung) lesions?",
        r"(?:non-?calcified|uncalcified) (?:nodules?|densit(?:y|ies))",
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
        r"pneumothora(?:x|xes|ces)",
        r"hydropneumothora(?:x|ces)",
        r"hemopneumothora(?:x|ces)",
        r"pleural air(?: collections?)?",
    ),
    "emphysema": (
        r"emphysema",
        r"emphysematous",
        r"copd",
        r"chronic obstructive (?:pulmonary |lung |airways? )?disease",
        r"hyper-?inflat(?:ed|ion)",
        r"hyper-?expan(?:ded|sion)",
        r"hyper-?aerat(?:ed|ion)",
        r"over-?inflat(?:ed|ion)",
        r"over-?expan(?:ded|sion)",
        r"hyperlucen(?:t|cy)",
        r"bullae",
        r"bullous (?:disease|changes?)",
        r"flatten(?:ed|ing) (?:of )?(?:the )?(?:\w+ )?(?:hemi-?)?diaphragms?",
        r"increased lung volumes?",
        r"(?:hemi-?)?diaphragms? (?:are |is |appear )?flattened",
    ),
    "edema": (
        r"o?edema",
        r"(?:pulmonary |central |perihilar |hilar )?vascular (?:congestion|engorgement|redistribution|prominence)",
        r"pulmonary congestion",
        r"pulmonary venous (?:hypertension|congestion)",
        r"engorge(?:d|ment)",
        r"prominen(?:t|ce of the) (?:central |pulmonary |lung |hilar )*(?:vascularity|vasculature|vessels|vascular "
        r"markings)",
        r"increased (?:central |pulmonary |lung )*(?:vascularity|vasculature|vascular markings)",
        r"congestive (?:heart |cardiac )?failure",
        r"chf",
        r"(?:heart|cardiac) failure",
        r"congestion",
        r"congestive changes?",
        r"kerley b?-? ?lines?",
        r"cephalization",
    ),
    "hypoinflation": (
        r"hypo-?inflat(?:ed|ion)",
        r"hypo-?expan(?:ded|sion)",
        r"hypo-?aerat(?:ed|ion)",
        r"under-?inflat(?:ed|ion)",
        r"(?:low|lower|decreas(?:ed|ing)|diminished|reduced) (?:lung |inspiratory )?volumes?(?![- ]normal)",
        r"hypoventilation",
        r"(?:poor|shallow|suboptimal|low) (?:inspiration|inspiratory (?:effort|volumes?))",
        r"(?:lung volumes|inspiration) (?:are |is )?(?:low(?![- ]normal)|diminished|decreased|reduced|shallow|poor)",
    ),
    "pacemaker": (
        r"pacemakers?",
        r"pacers?",
        r"a?icds?",
        r"(?:implantable )?(?:cardioverter[- ])?defibrillators?",
        r"pacing (?:devices?|leads?|wires?|generators?)",
        r"cardiac (?:devices?|leads?|generators?|pacing device)",
        r"(?:pulse |battery )?generators?",
        r"transvenous leads?",
    ),
    "central_line": (
        r"central (?:venous )?(?:lines?|catheters?|access)",
        r"picc(?: lines?)?",
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
        r"sternotomy(?: (?:wires?|sutures?|xxxx))?",
        r"sternal (?:wires?|sutures?|cerclage|wiring|xxxx)",
        r"cabg",
        r"coronary (?:artery )?bypass(?: grafts?| graft surgery| surgery)?",
        r"post-?sternotomy",
    ),
    "scoliosis": (
        r"(?:dextro|levo)?scolios(?:is|es)",
        r"scoliotic(?: curvature| deformity| curve)?",
        r"(?:dextro|levo)-?convex",
        r"(?:dextro|levo) ?curvature",
        r"(?<!kyphotic )(?<!kyphosis )curvature of the (?:[\w-]+ ){0,2}spine",
        r"(?<!kyphotic )(?:spine|spinal) curvature",
    ),
}

#: Phrases that contain a synonym but are not the finding; they win overlaps and yield nothing.
TEXT_NOT_FINDINGS: tuple[str, ...] = (
    r"pericardial effusions?",
    r"joint effusions?",
    r"(?:subcutaneous|mediastinal|interstitial|soft tissue|surgical) emphysema",
    r"(?:soft tissue|subcutaneous|laryngeal|chest wall|extremity) o?edema",
    r"nasal congestion",
    r"(?:bone|mineral|bone mineral|soft tissue|breast|nipple) densit(?:y|ies)",
    r"(?:soft tissue|breast|mediastinal|neck|abdominal|thyroid) mass(?:es)?",
    r"nipple shadows?",
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
IMPLIED_BY_MENTION: tuple[tuple[str, Mapping[str, str]], ...] = ((r"\bmass", {"severity": "severe"}),)
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
