"""Report editing: negate a finding, change its severity or side, or add one.

Two parts of the project edit reports:

* the controllability evaluation (:func:`xrg.eval.run.controllability_edits`) edits
  held-out reports (a finding negated, its severity moved one way) and checks that the image
  generated from the edited report moves the intended way, with the same seed;
* the teaching report explorer's toggles (negate / add a finding, make it milder or more
  severe, move it to the other side) rewrite the report a learner reads and regenerate it.

An edit is made on the sentences, not on the whole report. The text is split like the
pipelines split it (:func:`xrg.data.reports.split_report_text`: the ``FINDINGS:`` and
``IMPRESSION:`` bodies, or the whole text when it has no headers) and each sentence is
labelled with :func:`xrg.data.findings.label_text`. Only the sentences where the labeller
sees the edited kind (present, or negated for :func:`add_finding`) are rewritten, with the
wording of :func:`xrg.data.findings.describe_findings`; the other findings a rewritten
sentence names are described too, so that nothing else is lost. Side flips swap the words
``left``/``right`` (``levo``/``dextro``) in place when that changes nothing else. Every
other character of the report (section headers, line breaks, the sentences that do not
mention the kind) is kept byte for byte.

Every edit is verified: the edited report is labelled again, the edited kind must have
changed as intended (absent or negated after :func:`negate`, the new severity after
:func:`set_severity`, the other side after :func:`flip_side`, present after
:func:`add_finding`) and every other kind must be present exactly where it was before. An
edit that fails this raises :class:`EditError`; bad input (a kind the report does not have,
an unknown kind or severity, a kind without a side, empty text) raises
:class:`~xrg.errors.ReportError` or :class:`~xrg.errors.FindingError` naming it.
:func:`possible_edits` lists the edits that apply to a report.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from xrg.data.findings import FINDING_KINDS, KIND_ATTRIBUTES, SEVERITIES, Finding, describe_findings, label_text
from xrg.data.reports import _HEADER, normalize_text, report_text, split_report_text, split_sentences
from xrg.errors import EmptyReportError, FindingError, ReportError

__all__ = [
    "OPERATIONS",
    "EditError",
    "ReportEdit",
    "add_finding",
    "apply_edit",
    "flip_side",
    "negate",
    "possible_edits",
    "set_severity",
]

#: The edit operations, in the order :func:`possible_edits` lists them for a kind.
OPERATIONS: tuple[str, ...] = ("negate", "set_severity", "flip_side", "add")

_OTHER_SIDE = {"left": "right", "right": "left"}


class EditError(ReportError):
    """An edit was made but the edited report does not read as intended (verification failed)."""


@dataclass(frozen=True)
class ReportEdit:
    """One verified edit of a report.

    ``text`` is the edited report; ``findings_before`` / ``findings_after`` are what
    :func:`~xrg.data.findings.label_text` reads from the report's findings and impression
    before and after; ``changed_sentences`` holds ``(before, after)`` for every rewritten
    sentence (``after`` is ``""`` for a sentence that was removed, ``before`` is ``""`` for
    one that was appended), for display.
    """

    operation: str
    kind: str
    argument: str | None
    text: str
    findings_before: list[Finding]
    findings_after: list[Finding]
    changed_sentences: list[tuple[str, str]] = field(default_factory=list)

    @property
    def label(self) -> str:
        """A short name of the edit, e.g. ``set_severity cardiomegaly severe``."""
        return " ".join(p for p in (self.operation, self.kind, self.argument) if p)


# --------------------------------------------------------------------------------------
# Where the sentences are
# --------------------------------------------------------------------------------------

# Control characters as xrg.data.reports.normalize_text treats them.
_WHITESPACE_CONTROLS = frozenset("\t\n\r\v\f\x1c\x1d\x1e\x1f\x85")


def _is_deleted(ch: str) -> bool:
    code = ord(ch)
    return (code < 0x20 or 0x7F <= code < 0xA0) and ch not in _WHITESPACE_CONTROLS


@dataclass(frozen=True)
class _Sentence:
    start: int  # span in the original text
    end: int
    text: str  # as the labeller reads it (normalised)
    section: int
    findings: tuple[Finding, ...]


@dataclass
class _Layout:
    """The editable sentences of a report, their spans in ``source`` and their findings."""

    source: str  # the text spans refer to (the original, or its normalised form as a fallback)
    sentences: list[_Sentence]
    section_ends: list[int]  # per section: where an appended sentence goes (after its last sentence)


def _normalize_with_offsets(text: str) -> tuple[str, list[int]]:
    """``normalize_text(text)`` and, for each of its characters, its index in ``text``."""
    chars: list[str] = []
    offsets: list[int] = []
    space_at: int | None = None
    for i, ch in enumerate(text):
        if _is_deleted(ch):
            continue
        if ch in _WHITESPACE_CONTROLS or ch.isspace():
            if space_at is None:
                space_at = i
            continue
        if space_at is not None and chars:
            chars.append(" ")
            offsets.append(space_at)
        space_at = None
        chars.append(ch)
        offsets.append(i)
    return "".join(chars), offsets


def _check_text(text: object) -> str:
    if not isinstance(text, str):
        raise ReportError(f"report text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise EmptyReportError("report text is empty (nothing to edit)")
    return text


def _editable_sections(normalized: str) -> list[tuple[int, int]]:
    """Spans (in the normalised text) of the bodies :func:`split_report_text` keeps."""
    matches = list(_HEADER.finditer(normalized))
    if not matches:
        return [(0, len(normalized))]
    sections = []
    if not any(m.group("findings") for m in matches) and matches[0].start() > 0:
        sections.append((0, matches[0].start()))  # text before the first header counts as findings
    for match, following in zip(matches, [*matches[1:], None]):
        if match.group("findings") or match.group("impression"):
            sections.append((match.end(), following.start() if following else len(normalized)))
    return sections


@functools.lru_cache(maxsize=4096)
def _label_sentence(sentence: str) -> tuple[Finding, ...]:
    return tuple(label_text(sentence))


def _layout(text: str) -> _Layout:
    normalized, offsets = _normalize_with_offsets(text)
    if normalized != normalize_text(text):  # not expected; edit the normalised text instead
        normalized, offsets, text = normalize_text(text), [], normalize_text(text)
    if not offsets:
        offsets = list(range(len(normalized)))
    sentences: list[_Sentence] = []
    section_ends: list[int] = []
    for index, (start, end) in enumerate(_editable_sections(normalized)):
        cursor = start
        last_end = None
        for sentence in split_sentences(normalized[start:end]):
            at = normalized.find(sentence, cursor, end)
            if at < 0:  # split_sentences only strips and drops pieces: not expected
                raise EditError(f"could not locate the sentence {sentence[:60]!r} in the report")
            cursor = at + len(sentence)
            span = (offsets[at], offsets[cursor - 1] + 1)
            last_end = span[1]
            sentences.append(_Sentence(*span, sentence, index, _label_sentence(sentence)))
        if last_end is None:  # a section without sentences: append right after its header
            last_end = offsets[start - 1] + 1 if start > 0 else 0
        section_ends.append(last_end)
    return _Layout(text, sentences, section_ends)


def _report_findings(text: str) -> list[Finding]:
    """What the pipelines read from a report: the labels of its findings and impression."""
    return list(_cached_report_findings(text))


@functools.lru_cache(maxsize=256)
def _cached_report_findings(text: str) -> tuple[Finding, ...]:
    findings, impression = split_report_text(text)
    return tuple(label_text(report_text(findings, impression)))


def _present(findings: Iterable[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.kind == kind and not f.negated]


def _negated(findings: Iterable[Finding], kind: str) -> list[Finding]:
    return [f for f in findings if f.kind == kind and f.negated]


def _present_kinds(findings: Iterable[Finding]) -> set[str]:
    return {f.kind for f in findings if not f.negated}


# --------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------


def _check_kind(kind: object, operation: str) -> str:
    if not isinstance(kind, str) or kind not in FINDING_KINDS:
        raise FindingError(f"{operation}: unknown finding kind {kind!r}; expected one of {', '.join(FINDING_KINDS)}")
    return kind


def _check_severity(kind: str, severity: object) -> str:
    if "severity" not in KIND_ATTRIBUTES[kind]:
        with_severity = ", ".join(k for k in FINDING_KINDS if "severity" in KIND_ATTRIBUTES[k])
        raise FindingError(f"set_severity: {kind!r} has no severity attribute; kinds with one: {with_severity}")
    if not isinstance(severity, str) or severity not in SEVERITIES:
        expected = ", ".join(SEVERITIES)
        raise FindingError(f"set_severity {kind}: unknown severity {severity!r}; expected one of {expected}")
    return severity


def _require_present(operation: str, kind: str, findings: Sequence[Finding]) -> list[Finding]:
    present = _present(findings, kind)
    if not present:
        stated = "negated" if _negated(findings, kind) else "not mentioned"
        found = ", ".join(sorted(_present_kinds(findings), key=FINDING_KINDS.index)) or "none"
        raise ReportError(
            f"cannot {operation} {kind!r}: the report does not have it as a present finding ({stated}; "
            f"present findings: {found})"
        )
    return present


def _current_severities(present: Iterable[Finding]) -> set[str]:
    """Severities of a kind's present findings, an unstated one counting as moderate."""
    return {f.severity or "moderate" for f in present}


def _lateral_sides(present: Iterable[Finding]) -> set[str]:
    return {f.side for f in present if f.side in _OTHER_SIDE}


# --------------------------------------------------------------------------------------
# Rewriting
# --------------------------------------------------------------------------------------


def _describe(findings: Iterable[Finding]) -> str:
    findings = list(findings)
    return describe_findings(findings) if findings else ""


def _splice(layout: _Layout, replacements: dict[int, str], appended: tuple[int, str] | None = None) -> str:
    """The text with sentence ``i`` replaced by ``replacements[i]`` ("" removes it)."""
    edits: list[tuple[int, int, str]] = []
    sentences = layout.sentences
    for i, new in replacements.items():
        sentence = sentences[i]
        if new:
            edits.append((sentence.start, sentence.end, new))
            continue
        # Remove from the end of the previous sentence of the section, keeping what follows.
        previous = i - 1 if i > 0 and sentences[i - 1].section == sentence.section else None
        if previous is not None:
            edits.append((sentences[previous].end, sentence.end, ""))
        else:
            following = i + 1 if i + 1 < len(sentences) and sentences[i + 1].section == sentence.section else None
            stop = sentences[following].start if following is not None else sentence.end
            edits.append((sentence.start, stop, ""))
    if appended is not None:
        position, new = appended
        edits.append((position, position, new))
    text = layout.source
    out, cursor = [], 0
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1])):
        if start < cursor:  # adjacent removals share a boundary only; overlap is not expected
            raise EditError("overlapping sentence edits")
        out.append(text[cursor:start])
        out.append(new)
        cursor = end
    out.append(text[cursor:])
    return "".join(out)


_SIDE_WORD = re.compile(r"\b(?:(?P<lr>left|right)(?=(?:ward)?\b)|(?P<dl>dextro|levo))", re.IGNORECASE)
_SWAP = {"left": "right", "right": "left", "dextro": "levo", "levo": "dextro"}


def _swap_sides(sentence: str) -> str:
    """``left`` <-> ``right`` (``left-sided``, ``leftward``), ``levo`` <-> ``dextro``, case kept."""

    def swap(match: re.Match[str]) -> str:
        word = match.group(0)
        new = _SWAP[word.lower()]
        if word.isupper():
            return new.upper()
        return new.capitalize() if word[0].isupper() else new

    return _SIDE_WORD.sub(swap, sentence)


def _sections_first(indices: Iterable[int], layout: _Layout) -> set[int]:
    """Of sentence indices, the first one of each section."""
    seen: set[int] = set()
    first: set[int] = set()
    for i in indices:
        section = layout.sentences[i].section
        if section not in seen:
            seen.add(section)
            first.add(i)
    return first


# --------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------


def _verify(operation: str, kind: str, argument: str | None, before: list[Finding], after: list[Finding]) -> None:
    def fail(why: str) -> None:
        name = " ".join(p for p in (operation, kind, argument) if p)
        raise EditError(f"edit {name!r} failed verification: {why}")

    others_before = _present_kinds(before) - {kind}
    others_after = _present_kinds(after) - {kind}
    if others_before != others_after:
        lost = ", ".join(sorted(others_before - others_after)) or "none"
        gained = ", ".join(sorted(others_after - others_before)) or "none"
        fail(f"other findings changed (lost: {lost}; gained: {gained})")
    present = _present(after, kind)
    if operation == "negate":
        if present:
            fail(f"the edited report still has {kind} present ({', '.join(f.describe() for f in present)})")
        return
    if not present:
        fail(f"the edited report no longer has {kind} present")
    if operation == "set_severity":
        wrong = [f for f in present if (f.severity or "moderate") != argument]
        if wrong:
            fail(f"{kind} reads as {', '.join(f.describe() for f in wrong)}, not {argument}")
    elif operation == "flip_side":
        old = _OTHER_SIDE[argument]
        if any(f.side == old for f in present) or not any(f.side == argument for f in present):
            fail(f"{kind} reads as {', '.join(f.describe() for f in present)}, not on the {argument}")
        sides_before = {(f.kind, f.side) for f in before if not f.negated and f.kind != kind}
        sides_after = {(f.kind, f.side) for f in after if not f.negated and f.kind != kind}
        if sides_before != sides_after:
            fail("the side of another finding changed")


def _finish(
    operation: str, kind: str, argument: str | None, layout: _Layout, before: list[Finding],
    replacements: dict[int, str], appended: tuple[int, str] | None = None,
) -> ReportEdit:  # fmt: skip
    text = _splice(layout, replacements, appended)
    try:
        after = _report_findings(text)
    except ReportError as exc:
        raise EditError(f"edit {operation} {kind}: the edited report is unusable ({exc})") from exc
    _verify(operation, kind, argument, before, after)
    changed = [(layout.sentences[i].text, new) for i, new in sorted(replacements.items())]
    if appended is not None:
        changed.append(("", appended[1].strip()))
    return ReportEdit(operation, kind, argument, text, before, after, changed)


def _prepare(text: object, kind: object, operation: str) -> tuple[str, str, list[Finding], _Layout]:
    text = _check_text(text)
    kind = _check_kind(kind, operation)
    before = _report_findings(text)
    return text, kind, before, _layout(text)


def _sentences_with(layout: _Layout, kind: str, negated: bool) -> list[int]:
    pick = _negated if negated else _present
    return [i for i, s in enumerate(layout.sentences) if pick(s.findings, kind)]


def _not_located(operation: str, kind: str, what: str) -> EditError:
    return EditError(f"edit {operation} {kind}: no sentence of the report has {kind} {what} when read on its own")


# --------------------------------------------------------------------------------------
# The edits
# --------------------------------------------------------------------------------------


def negate(text: str, kind: str) -> ReportEdit:
    """Turn a present finding into its negation ("Mild cardiomegaly." -> "Heart size is normal.").

    In each section the first sentence that has the kind becomes the describe text of its
    other findings plus the negation; later sentences of that section that have it keep
    only their other findings (and go when they have none).
    """
    text, kind, before, layout = _prepare(text, kind, "negate")
    _require_present("negate", kind, before)
    indices = _sentences_with(layout, kind, negated=False)
    if not indices:
        raise _not_located("negate", kind, "present")
    first = _sections_first(indices, layout)
    replacements = {}
    for i in indices:
        others = [f for f in layout.sentences[i].findings if f.kind != kind]
        if i in first:
            others.append(Finding(kind, negated=True))
        replacements[i] = _describe(others)
    return _finish("negate", kind, None, layout, before, replacements)


def set_severity(text: str, kind: str, severity: str) -> ReportEdit:
    """Give a present finding another severity ("Mild cardiomegaly." -> "Severe cardiomegaly.").

    Every sentence that has the kind is rewritten as the describe text of its findings with
    the kind's severity replaced. An unstated severity counts as moderate; asking for the
    severity the finding already has is an error.
    """
    text = _check_text(text)
    kind = _check_kind(kind, "set_severity")
    severity = _check_severity(kind, severity)
    before = _report_findings(text)
    present = _require_present("set_severity", kind, before)
    if _current_severities(present) == {severity}:
        raise ReportError(f"cannot set_severity {kind!r} to {severity!r}: it is already {severity} in the report")
    layout = _layout(text)
    indices = _sentences_with(layout, kind, negated=False)
    if not indices:
        raise _not_located("set_severity", kind, "present")
    replacements = {}
    for i in indices:
        findings = [replace(f, severity=severity) if f.kind == kind and not f.negated else f
                    for f in layout.sentences[i].findings]  # fmt: skip
        replacements[i] = _describe(findings)
    return _finish("set_severity", kind, severity, layout, before, replacements)


def flip_side(text: str, kind: str, new_side: str | None = None) -> ReportEdit:
    """Move a left-sided finding to the right or back ("Left pleural effusion." -> "Right ...").

    The kind must be present on one side, left or right (not bilateral, not both). The
    words left/right (left-sided, leftward, levo/dextro) are swapped in the sentences that
    have the kind; where that would also move another finding of the sentence, or does not
    move the kind (the lingula is left), the sentence is rewritten from its findings instead.
    ``new_side``, when given, must be the other side.
    """
    text = _check_text(text)
    kind = _check_kind(kind, "flip_side")
    if "side" not in KIND_ATTRIBUTES[kind]:
        with_side = ", ".join(k for k in FINDING_KINDS if "side" in KIND_ATTRIBUTES[k])
        raise FindingError(f"flip_side: {kind!r} has no side attribute; kinds with one: {with_side}")
    before = _report_findings(text)
    present = _require_present("flip_side", kind, before)
    sides = _lateral_sides(present)
    if not sides:
        stated = ", ".join(f.describe() for f in present)
        raise ReportError(f"cannot flip_side {kind!r}: it is not on the left or the right in the report ({stated})")
    if len(sides) > 1:
        raise ReportError(f"cannot flip_side {kind!r}: it is on both the left and the right; flipping changes nothing")
    old = sides.pop()
    target = _OTHER_SIDE[old]
    if new_side is not None and new_side != target:
        raise ReportError(f"cannot flip_side {kind!r} to {new_side!r}: it is on the {old}, so it flips to the {target}")
    layout = _layout(text)
    indices = [i for i in _sentences_with(layout, kind, negated=False)
               if any(f.side == old for f in _present(layout.sentences[i].findings, kind))]  # fmt: skip
    if not indices:
        raise _not_located("flip_side", kind, f"on the {old}")
    replacements = {}
    for i in indices:
        sentence = layout.sentences[i]
        flipped = [replace(f, side=target) if f.kind == kind and not f.negated and f.side == old else f
                   for f in sentence.findings]  # fmt: skip
        swapped = layout.source[sentence.start : sentence.end]
        swapped = _swap_sides(swapped)
        if sorted(label_text(swapped)) == sorted(flipped):
            replacements[i] = swapped
        else:
            replacements[i] = _describe(flipped)
    return _finish("flip_side", kind, target, layout, before, replacements)


def add_finding(text: str, kind: str) -> ReportEdit:
    """Make a finding present ("No pneumothorax." -> "Moderate pneumothorax.").

    Where the report negates the kind, the first negating sentence of each section becomes
    the describe text of the present finding (moderate where the kind has a severity; the
    side and zone the negation named, if any) plus that sentence's other findings; later
    negating sentences of the section lose the negation. A kind the report does not mention
    is appended to its first section. A kind already present is an error.
    """
    text, kind, before, layout = _prepare(text, kind, "add")
    if _present(before, kind):
        raise ReportError(f"cannot add {kind!r}: the report already has it as a present finding")
    severity = "moderate" if "severity" in KIND_ATTRIBUTES[kind] else None
    indices = _sentences_with(layout, kind, negated=True)
    replacements: dict[int, str] = {}
    appended = None
    if indices:
        first = _sections_first(indices, layout)
        for i in indices:
            findings = layout.sentences[i].findings
            others = [f for f in findings if f.kind != kind]
            if i in first:
                negation = _negated(findings, kind)[0]
                others.append(Finding(kind, negation.side, negation.zone, severity))
            replacements[i] = _describe(others)
    elif _negated(before, kind):
        raise _not_located("add", kind, "negated")
    else:
        if not layout.section_ends:
            raise EditError(f"edit add {kind}: the report has no findings or impression section to add to")
        position = layout.section_ends[0]
        source = layout.source
        sep = "" if position == 0 or source[position - 1 : position].isspace() else " "
        appended = (position, sep + _describe([Finding(kind, severity=severity)]))
    return _finish("add", kind, None, layout, before, replacements, appended)


def apply_edit(text: str, operation: str, kind: str, argument: str | None = None) -> ReportEdit:
    """Apply one ``(operation, kind, argument)`` as listed by :func:`possible_edits`."""
    if operation == "negate" or operation == "add":
        if argument is not None:
            raise ReportError(f"{operation} {kind!r} takes no argument, got {argument!r}")
        return negate(text, kind) if operation == "negate" else add_finding(text, kind)
    if operation == "set_severity":
        if argument is None:
            raise ReportError(f"set_severity {kind!r} needs a severity argument, one of {', '.join(SEVERITIES)}")
        return set_severity(text, kind, argument)
    if operation == "flip_side":
        if argument is not None and argument not in _OTHER_SIDE:
            raise ReportError(f"flip_side {kind!r}: the new side must be 'left' or 'right', got {argument!r}")
        return flip_side(text, kind, argument)
    raise ReportError(f"unknown edit operation {operation!r}; expected one of {', '.join(OPERATIONS)}")


def possible_edits(text: str) -> list[tuple[str, str, str | None]]:
    """Every edit that applies to the report, as ``(operation, kind, argument)``.

    For each present finding: ``("negate", kind, None)``; ``("set_severity", kind, s)`` for
    each severity ``s`` other than its current one (unstated counts as moderate) when the
    kind has a severity; ``("flip_side", kind, new_side)`` when it is on the left or the
    right. For each negated finding: ``("add", kind, None)``. Ordered by
    :data:`~xrg.data.findings.FINDING_KINDS`, then :data:`OPERATIONS`, then severity. An edit
    listed here may still fail verification (:class:`EditError`) on an unusual sentence.
    """
    text = _check_text(text)
    findings = _report_findings(text)
    edits: list[tuple[str, str, str | None]] = []
    for kind in FINDING_KINDS:
        present = _present(findings, kind)
        if present:
            edits.append(("negate", kind, None))
            if "severity" in KIND_ATTRIBUTES[kind]:
                current = _current_severities(present)
                edits.extend(("set_severity", kind, s) for s in SEVERITIES if current != {s})
            sides = _lateral_sides(present)
            if len(sides) == 1:
                edits.append(("flip_side", kind, _OTHER_SIDE[sides.pop()]))
        elif _negated(findings, kind):
            edits.append(("add", kind, None))
    return edits
