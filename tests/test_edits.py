"""Tests of xrg.data.edits: negate / set_severity / flip_side / add on report text, verified."""

from __future__ import annotations

import collections
import dataclasses
from functools import partial
from types import SimpleNamespace

import pytest

from xrg.data import edits as E
from xrg.data.edits import EditError, ReportEdit
from xrg.data.findings import FINDING_KINDS, Finding, label_text
from xrg.data.reports import report_text, split_report_text, split_sentences
from xrg.errors import EmptyReportError, FindingError, ReportError, XrgError

F = Finding


def present(findings, kind=None):
    return [f for f in findings if not f.negated and (kind is None or f.kind == kind)]


def present_kinds(text):
    return {f.kind for f in label_text(text) if not f.negated}


@pytest.fixture(scope="module")
def openi_texts():
    from xrg.data.reports import load_openi_reports

    reports = [r for r in load_openi_reports().reports if r.findings][:300]
    assert len(reports) == 300
    return [(r.report_id, report_text(r.findings, r.impression, headers=True)) for r in reports]


# --------------------------------------------------------------------------------------
# The four operations
# --------------------------------------------------------------------------------------

TWO = "Mild cardiomegaly. Small left pleural effusion."


def test_negate_removes_the_finding_and_keeps_the_rest():
    edit = E.negate(TWO, "cardiomegaly")
    assert isinstance(edit, ReportEdit)
    assert edit.text == "Heart size is normal. Small left pleural effusion."
    assert not present(label_text(edit.text), "cardiomegaly")
    assert present(label_text(edit.text), "pleural_effusion") == [F("pleural_effusion", "left", severity="mild")]
    assert edit.findings_before == label_text(TWO)
    assert edit.findings_after == label_text(edit.text)
    assert edit.changed_sentences == [("Mild cardiomegaly.", "Heart size is normal.")]
    assert (edit.operation, edit.kind, edit.argument) == ("negate", "cardiomegaly", None)


def test_negate_in_a_sentence_with_other_findings_keeps_them():
    text = "Mild cardiomegaly with small left pleural effusion. No pneumothorax."
    edit = E.negate(text, "cardiomegaly")
    after = label_text(edit.text)
    assert not present(after, "cardiomegaly")
    assert present(after, "pleural_effusion") == [F("pleural_effusion", "left", severity="mild")]
    assert edit.text.endswith(" No pneumothorax.")
    # a sentence repeating the finding later in the same section loses it; another section keeps a negation
    text = "FINDINGS: Cardiomegaly. The heart is enlarged. No effusion.\nIMPRESSION: Cardiomegaly."
    edit = E.negate(text, "cardiomegaly")
    assert edit.text == "FINDINGS: Heart size is normal. No effusion.\nIMPRESSION: Heart size is normal."


@pytest.mark.parametrize("severity", ["moderate", "severe"])
def test_set_severity_changes_the_severity_as_relabelled(severity):
    edit = E.set_severity(TWO, "cardiomegaly", severity)
    after = label_text(edit.text)
    assert present(after, "cardiomegaly") == [F("cardiomegaly", severity=severity)]
    assert present(after, "pleural_effusion") == [F("pleural_effusion", "left", severity="mild")]
    assert edit.text.endswith(" Small left pleural effusion.")
    assert edit.argument == severity


def test_set_severity_keeps_location_and_sized_wording():
    edit = E.set_severity("Small left pleural effusion.", "pleural_effusion", "severe")
    assert edit.text == "Large left pleural effusion."
    edit = E.set_severity("Mild right lower lobe opacity.", "opacity", "severe")
    assert present(label_text(edit.text)) == [F("opacity", "right", "lower", "severe")]
    # unstated severity counts as moderate: mild and severe are offered, moderate is not
    edits = E.possible_edits("Cardiomegaly.")
    assert [e for e in edits if e[0] == "set_severity"] == [
        ("set_severity", "cardiomegaly", "mild"), ("set_severity", "cardiomegaly", "severe")
    ]  # fmt: skip
    with pytest.raises(ReportError, match="already moderate"):
        E.set_severity("Cardiomegaly.", "cardiomegaly", "moderate")


def test_flip_side_turns_left_into_right_and_nothing_else():
    edit = E.flip_side(TWO, "pleural_effusion")
    assert edit.text == "Mild cardiomegaly. Small right pleural effusion."
    assert edit.argument == "right"
    expected = [F("cardiomegaly", severity="mild"), F("pleural_effusion", "right", severity="mild")]
    assert label_text(edit.text) == expected
    # case kept, "-sided" and levo/dextro swapped too
    assert E.flip_side("Left-sided pacemaker.", "pacemaker").text == "Right-sided pacemaker."
    assert E.flip_side("LEFT PLEURAL EFFUSION.", "pleural_effusion").text == "RIGHT PLEURAL EFFUSION."
    assert E.flip_side("Mild levoscoliosis.", "scoliosis").text == "Mild dextroscoliosis."
    edit = E.flip_side("Small right pneumothorax.", "pneumothorax", "left")
    assert edit.text == "Small left pneumothorax."


def test_flip_side_does_not_move_another_finding_of_the_sentence():
    text = "Left pleural effusion and left lower lobe opacity. Heart size is normal."
    edit = E.flip_side(text, "pleural_effusion")
    after = label_text(edit.text)
    assert present(after, "pleural_effusion")[0].side == "right"
    assert present(after, "opacity") == [F("opacity", "left", "lower")]
    assert edit.text.endswith(" Heart size is normal.")
    # the lingula is the left middle zone: rewritten, not word-swapped
    edit = E.flip_side("Opacity in the lingula.", "opacity")
    assert present(label_text(edit.text)) == [F("opacity", "right", "middle")]


def test_add_makes_a_negated_finding_present():
    edit = E.add_finding("No pneumothorax.", "pneumothorax")
    assert present(label_text(edit.text), "pneumothorax")
    assert edit.text == "Moderate pneumothorax."
    # the other negations of the sentence are kept, the side of the negation is natural
    edit = E.add_finding("No pleural effusion or pneumothorax.", "pneumothorax")
    after = label_text(edit.text)
    assert present(after, "pneumothorax") and F("pleural_effusion", negated=True) in after
    assert present(label_text(E.add_finding("No left pleural effusion.", "pleural_effusion").text))[0].side == "left"
    assert E.add_finding("The lungs are clear.", "opacity").text == "Moderate opacity."
    assert E.add_finding("Heart size is normal.", "cardiomegaly").text == "Moderate cardiomegaly."
    # a kind without a severity gets none; a kind not mentioned is appended to the findings
    assert E.add_finding("No pacemaker.", "pacemaker").text == "Pacemaker."
    edit = E.add_finding("FINDINGS: Normal heart.\nIMPRESSION: Normal.", "pneumothorax")
    assert edit.text == "FINDINGS: Normal heart. Moderate pneumothorax.\nIMPRESSION: Normal."
    assert edit.changed_sentences == [("", "Moderate pneumothorax.")]


def test_apply_edit_dispatches():
    for operation, kind, argument in E.possible_edits(TWO):
        direct = {
            "negate": partial(E.negate, TWO, kind),
            "set_severity": partial(E.set_severity, TWO, kind, argument),
            "flip_side": partial(E.flip_side, TWO, kind),
            "add": partial(E.add_finding, TWO, kind),
        }[operation]()
        assert E.apply_edit(TWO, operation, kind, argument) == direct


def test_report_edit_is_frozen():
    edit = E.negate(TWO, "cardiomegaly")
    with pytest.raises(dataclasses.FrozenInstanceError):
        edit.text = "x"  # type: ignore[misc]
    assert edit.label == "negate cardiomegaly"
    assert E.set_severity(TWO, "cardiomegaly", "severe").label == "set_severity cardiomegaly severe"


# --------------------------------------------------------------------------------------
# What is kept
# --------------------------------------------------------------------------------------


def test_unrelated_text_is_kept_byte_for_byte():
    text = "1. Cardiomegaly.\r\n2.  No  pneumothorax.\t The lungs are clear.\n\n3. Calcified granuloma, right apex."
    edit = E.negate(text, "cardiomegaly")
    assert edit.text == text.replace("Cardiomegaly.", "Heart size is normal.", 1)
    edit = E.flip_side(text, "calcified_granuloma")
    assert edit.text == text.replace("right apex", "left apex")
    edit = E.add_finding(text, "pneumothorax")
    assert edit.text == text.replace("No  pneumothorax.", "Moderate pneumothorax.")


def test_section_headers_survive():
    text = report_text("The heart is mildly enlarged. No pleural effusion.", "Mild cardiomegaly.", headers=True)
    assert text.startswith("FINDINGS: ") and "\nIMPRESSION: " in text
    for operation, kind, argument in E.possible_edits(text):
        edit = E.apply_edit(text, operation, kind, argument)
        assert edit.text.startswith("FINDINGS: ")
        assert edit.text.count("\nIMPRESSION: ") == 1
        findings, impression = split_report_text(edit.text)
        assert findings and impression
    edit = E.negate(text, "cardiomegaly")
    assert edit.text == "FINDINGS: Heart size is normal. No pleural effusion.\nIMPRESSION: Heart size is normal."
    # sections the pipelines drop are neither read nor edited
    text = "INDICATION: Cardiomegaly? FINDINGS: Left pleural effusion. IMPRESSION: Effusion."
    assert E.possible_edits(text)[0] == ("negate", "pleural_effusion", None)
    assert E.flip_side(text, "pleural_effusion").text == text.replace("Left", "Right")
    with pytest.raises(ReportError, match="cardiomegaly"):
        E.negate(text, "cardiomegaly")


def test_possible_edits_for_a_known_text():
    text = "Mild cardiomegaly. Small left pleural effusion. No pneumothorax. Median sternotomy wires."
    assert E.possible_edits(text) == [
        ("negate", "cardiomegaly", None),
        ("set_severity", "cardiomegaly", "moderate"),
        ("set_severity", "cardiomegaly", "severe"),
        ("negate", "pleural_effusion", None),
        ("set_severity", "pleural_effusion", "moderate"),
        ("set_severity", "pleural_effusion", "severe"),
        ("flip_side", "pleural_effusion", "right"),
        ("add", "pneumothorax", None),
        ("negate", "sternotomy", None),
    ]
    assert E.possible_edits("Bilateral pleural effusions.") == [
        ("negate", "pleural_effusion", None),
        ("set_severity", "pleural_effusion", "mild"),
        ("set_severity", "pleural_effusion", "severe"),
    ]
    assert E.possible_edits("Normal chest.") == []
    # the order follows FINDING_KINDS
    kinds = [k for _, k, _ in E.possible_edits(text)]
    assert kinds == sorted(kinds, key=FINDING_KINDS.index)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: E.negate("Mild cardiomegaly.", "pneumothorax"), ReportError, "negate 'pneumothorax'.*not mentioned"),
        (lambda: E.negate("No pneumothorax.", "pneumothorax"), ReportError, "negated"),
        (lambda: E.set_severity("No effusion.", "pleural_effusion", "mild"), ReportError, "cannot set_severity"),
        (lambda: E.flip_side("Cardiomegaly.", "pneumothorax"), ReportError, "cannot flip_side 'pneumothorax'"),
        (lambda: E.negate(TWO, "heart"), FindingError, "unknown finding kind 'heart'"),
        (lambda: E.negate(TWO, None), FindingError, "unknown finding kind None"),
        (lambda: E.set_severity(TWO, "cardiomegaly", "huge"), FindingError, "unknown severity 'huge'"),
        (lambda: E.set_severity("Sternotomy wires.", "sternotomy", "mild"), FindingError, "'sternotomy' has no sev"),
        (lambda: E.flip_side(TWO, "cardiomegaly"), FindingError, "'cardiomegaly' has no side"),
        (lambda: E.flip_side("Bilateral effusions.", "pleural_effusion"), ReportError, "not on the left or the right"),
        (lambda: E.flip_side("Left effusion. Right effusion.", "pleural_effusion"), ReportError, "both the left and"),
        (lambda: E.flip_side(TWO, "pleural_effusion", "left"), ReportError, "it is on the left"),
        (lambda: E.add_finding(TWO, "cardiomegaly"), ReportError, "already has it"),
        (lambda: E.negate("", "cardiomegaly"), EmptyReportError, "empty"),
        (lambda: E.negate(" \n\t", "cardiomegaly"), EmptyReportError, "empty"),
        (lambda: E.possible_edits("   "), EmptyReportError, "empty"),
        (lambda: E.negate(None, "cardiomegaly"), ReportError, "must be a string, got NoneType"),
        (lambda: E.possible_edits(b"Cardiomegaly."), ReportError, "must be a string, got bytes"),
        (lambda: E.negate("FINDINGS:\nIMPRESSION:", "cardiomegaly"), EmptyReportError, "no FINDINGS or IMPRESSION"),
        (lambda: E.apply_edit(TWO, "explode", "cardiomegaly"), ReportError, "unknown edit operation 'explode'"),
        (lambda: E.apply_edit(TWO, "set_severity", "cardiomegaly"), ReportError, "needs a severity"),
        (lambda: E.apply_edit(TWO, "negate", "cardiomegaly", "mild"), ReportError, "takes no argument"),
        (lambda: E.apply_edit(TWO, "flip_side", "pleural_effusion", "up"), ReportError, "'left' or 'right'"),
    ],
)
def test_bad_inputs_give_clear_errors(call, error, match):
    with pytest.raises(error, match=match) as info:
        call()
    assert not isinstance(info.value, EditError)


def test_a_failed_verification_raises_edit_error(monkeypatch):
    assert issubclass(EditError, ReportError) and issubclass(EditError, XrgError)
    # a describe text that brings in another finding must not pass as an edit
    monkeypatch.setattr(E, "describe_findings", lambda findings: "Heart size is normal. Small pneumothorax.")
    with pytest.raises(EditError, match=r"negate cardiomegaly.*other findings changed.*gained: pneumothorax"):
        E.negate("Mild cardiomegaly.", "cardiomegaly")
    # one that does not change the kind neither
    monkeypatch.setattr(E, "describe_findings", lambda findings: "Mild cardiomegaly.")
    with pytest.raises(EditError, match=r"set_severity cardiomegaly severe.*not severe"):
        E.set_severity("Mild cardiomegaly.", "cardiomegaly", "severe")
    with pytest.raises(EditError, match=r"negate cardiomegaly.*still has cardiomegaly"):
        E.negate("Mild cardiomegaly.", "cardiomegaly")


# --------------------------------------------------------------------------------------
# Real Open-i reports
# --------------------------------------------------------------------------------------


def test_every_possible_edit_on_real_reports_succeeds_or_raises_edit_error(openi_texts):
    tried: collections.Counter[str] = collections.Counter()
    succeeded: collections.Counter[str] = collections.Counter()
    for report_id, text in openi_texts:
        sentences = [s for section in split_report_text(text) for s in split_sentences(section)]
        for operation, kind, argument in E.possible_edits(text):
            tried[operation] += 1
            try:
                edit = E.apply_edit(text, operation, kind, argument)
            except EditError as exc:
                assert kind in str(exc) and operation in str(exc), (report_id, str(exc))
                continue
            succeeded[operation] += 1
            after = edit.findings_after
            assert after == label_text(" ".join(split_report_text(edit.text)).strip())
            if operation == "negate":
                assert not present(after, kind)
            elif operation == "set_severity":
                assert {f.severity or "moderate" for f in present(after, kind)} == {argument}
            elif operation == "flip_side":
                assert {f.side for f in present(after, kind)} & {"left", "right"} == {argument}
            else:
                assert present(after, kind)
            others = {f.kind for f in present(edit.findings_before)} - {kind}
            assert {f.kind for f in present(after)} - {kind} == others, (report_id, operation, kind)
            assert edit.text.startswith("FINDINGS: ") and ("\nIMPRESSION: " in edit.text) == ("\nIMPRESSION: " in text)
            # every sentence that was not rewritten is still there, word for word
            rewritten = {before for before, _ in edit.changed_sentences}
            for sentence in sentences:
                if sentence not in rewritten:
                    assert sentence in edit.text, (report_id, operation, kind, sentence)
    rates = {op: succeeded[op] / tried[op] for op in tried}
    assert set(tried) == set(E.OPERATIONS)
    assert tried["negate"] >= 100 and tried["set_severity"] >= 100 and tried["flip_side"] >= 30
    assert rates["negate"] > 0.8, rates
    assert all(rate > 0.8 for rate in rates.values()), rates


def test_controllability_edits_uses_this_module(openi_texts):
    from xrg.eval.run import controllability_edits

    cases = []
    for report_id, text in openi_texts[:60]:
        findings, impression = split_report_text(text)
        cases.append(SimpleNamespace(id=report_id, findings=findings, impression=impression))
    chosen = controllability_edits(cases, limit=20, seed=0)
    assert len(chosen) == 20
    for edit in chosen:
        assert edit["operation"] in ("negate", "set_severity") and edit["direction"] in (-1, 1)
        assert edit["after"] != edit["before"]
        if edit["operation"] == "negate":
            assert edit["kind"] not in present_kinds(edit["after"])
