"""Curated MeSH findings corrected by the report's own words: the side, and sternotomy wires.

The MeSH majors are the default source of what the phantom draws, but in Open-i they name
the side less reliably than the sentence they index: a ``Granuloma/lung/right`` for "left
upper lobe granuloma", or no side at all for "small left effusion", which the renderer then
draws on a side from the seed. :func:`text_corrections` keeps every MeSH finding and lets
the text (:func:`~xrg.data.findings.label_text`) win on the side, and adds the sternotomy
wires a report mentions when no term indexes them (MeSH has no term of its own for them).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from dataclasses import replace

from xrg.data.findings.schema import KIND_ATTRIBUTES, Finding, _combine_sides, merge_findings, positive

#: The drawn sides of a finding's side (bilateral is both).
_SIDE_SET = {"left": frozenset({"left"}), "right": frozenset({"right"}), "bilateral": frozenset({"left", "right"})}
#: Kinds the text may add when the MeSH terms do not name them: drawn whenever the report
#: mentions them, as the wires always show on the radiograph.
TEXT_ADDED_KINDS: frozenset[str] = frozenset({"sternotomy"})


def text_sides(findings: Iterable[Finding]) -> dict[str, frozenset[str]]:
    """Kind -> the sides (``left``/``right``) the present findings of that kind name."""
    sides: dict[str, set[str]] = collections.defaultdict(set)
    for finding in positive(findings):
        if finding.side is not None:
            sides[finding.kind] |= _SIDE_SET[finding.side]
    return {kind: frozenset(named) for kind, named in sides.items()}


def _side_verdicts(mesh: Sequence[Finding], text: Sequence[Finding]) -> list[tuple[Finding, str | None, str | None]]:
    """Each MeSH finding with what is wrong with its side against the text (None: nothing)
    and the side the text gives it.

    Per kind, only where the text names sides and the MeSH findings of that kind do not
    already lie on all of them (the labeller misses the second side of "right upper lobe and
    left lower lobe"; the text never says "not left", so a MeSH side the text omits stands
    when the text's sides are drawn anyway):

    * ``unsided``: the finding has no side, so the renderer would pick one from the seed;
    * ``contradicted``: it lies on a side the text does not name ("right" for "left chest
      wall generator").

    A finding on fewer sides than the text names ("right upper lobe mass" next to "an opacity
    by the left heart border" that the labeller calls a nodule) is left alone: made bilateral,
    one focal finding would be drawn in both lungs.
    """
    named = text_sides(text)
    present = positive(mesh)
    drawn_sides: dict[str, set[str]] = collections.defaultdict(set)
    for finding in present:
        drawn_sides[finding.kind] |= _SIDE_SET.get(finding.side, frozenset())
    verdicts = []
    for finding in mesh:
        sides = named.get(finding.kind)
        verdict = None
        if not finding.negated and "side" in KIND_ATTRIBUTES[finding.kind] and sides:
            if finding.side is None:
                verdict = "unsided"
            elif not sides <= drawn_sides[finding.kind] and not _SIDE_SET[finding.side] <= sides:
                verdict = "contradicted"
        verdicts.append((finding, verdict, _combine_sides(sides) if verdict else None))
    return verdicts


def side_disagreements(mesh: Sequence[Finding], text: Sequence[Finding]) -> collections.Counter[str]:
    """How many MeSH findings the text finds ``unsided`` or ``contradicted`` (see
    :func:`_side_verdicts`); the measure :func:`text_corrections` brings to 0."""
    return collections.Counter(verdict for _, verdict, _ in _side_verdicts(mesh, text) if verdict)


def text_corrections(mesh: Sequence[Finding], text: Sequence[Finding]) -> tuple[list[Finding], collections.Counter]:
    """The MeSH findings with the text's side where the two disagree (every verdict of
    :func:`side_disagreements`), plus the text's :data:`TEXT_ADDED_KINDS` that no MeSH
    finding names; merged (:func:`merge_findings`). Negated findings pass unchanged.
    Returns the findings and the count of each correction (``side <verdict>``, ``added <kind>``).
    """
    changed: collections.Counter = collections.Counter()
    corrected = []
    for finding, verdict, side in _side_verdicts(mesh, text):
        if verdict is not None:
            changed[f"side {verdict}"] += 1
            finding = replace(finding, side=side)
        corrected.append(finding)
    kinds = {f.kind for f in positive(mesh)}
    for finding in positive(text):
        if finding.kind in TEXT_ADDED_KINDS and finding.kind not in kinds:
            corrected.append(finding)
            kinds.add(finding.kind)
            changed[f"added {finding.kind}"] += 1
    return merge_findings(corrected), changed
