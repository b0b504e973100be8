"""Tests of xrg.data.findings: the schema, the MeSH mapping, the text labeller, agreement."""

from __future__ import annotations

import collections
import itertools
import math
import random
import tarfile
import time

import numpy as np
import pytest

from xrg.data.findings import (
    FINDING_KINDS,
    KIND_ATTRIBUTES,
    SEVERITIES,
    SIDES,
    ZONES,
    Finding,
    agreement,
    describe_findings,
    findings_from_json,
    findings_to_json,
    label_text,
    merge_findings,
    mesh_to_findings,
    multi_hot,
    openi_agreement,
)
from xrg.errors import FindingError, ReportError, XrgError

F = Finding


# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"kind": "tumour"}, "unknown finding kind"),
        ({"kind": "opacity", "side": "middle"}, "unknown side"),
        ({"kind": "opacity", "zone": "apex"}, "unknown zone"),
        ({"kind": "opacity", "severity": "huge"}, "unknown severity"),
        ({"kind": "opacity", "negated": "yes"}, "negated must be a bool"),
    ],
)
def test_finding_rejects_invalid_values(kwargs, message):
    with pytest.raises(FindingError, match=message):
        Finding(**kwargs)


def test_finding_error_is_a_value_error():
    with pytest.raises(ValueError):
        Finding("tumour")
    assert issubclass(FindingError, XrgError)


def test_from_dict_rejects_unknown_fields_and_non_mappings():
    with pytest.raises(FindingError, match="unknown fields"):
        Finding.from_dict({"kind": "opacity", "colour": "red"})
    with pytest.raises(FindingError, match="mapping with a 'kind'"):
        Finding.from_dict(["opacity"])


def test_json_round_trip():
    findings = [F("opacity", "right", "upper", "mild"), F("pleural_effusion", negated=True)]
    assert findings_from_json(findings_to_json(findings)) == findings


def test_multi_hot_counts_present_findings_once():
    labels = multi_hot([F("opacity", "left"), F("opacity", "right"), F("pneumothorax", negated=True)])
    assert labels.dtype == np.float32 and labels.shape == (len(FINDING_KINDS),)
    expected = np.zeros(len(FINDING_KINDS), dtype=np.float32)
    expected[FINDING_KINDS.index("opacity")] = 1.0
    np.testing.assert_array_equal(labels, expected)
    assert multi_hot([]).sum() == 0


# --------------------------------------------------------------------------------------
# MeSH
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "term, expected",
    [
        ("Opacity/lung/upper lobe/right", [F("opacity", "right", "upper")]),
        ("Pulmonary Atelectasis/base/left", [F("atelectasis", "left", "lower")]),
        ("Pulmonary Atelectasis/base/bilateral/mild", [F("atelectasis", "bilateral", "lower", "mild")]),
        ("Cardiomegaly/mild", [F("cardiomegaly", severity="mild")]),
        ("Cardiomegaly/borderline", [F("cardiomegaly", severity="mild")]),
        ("Cardiac Shadow/enlarged/moderate", [F("cardiomegaly", severity="moderate")]),
        ("Pleural Effusion/left/small", [F("pleural_effusion", "left", severity="mild")]),
        ("Pleural Effusion/right/large", [F("pleural_effusion", "right", severity="severe")]),
        ("Costophrenic Angle/right/blunted", [F("pleural_effusion", "right", severity="mild")]),
        ("Calcified Granuloma/lung/upper lobe/right", [F("calcified_granuloma", "right", "upper")]),
        ("Calcified Granuloma/lung/lingula", [F("calcified_granuloma", "left", "middle")]),
        ("Calcinosis/lung/hilum/lymph nodes/right", [F("calcified_granuloma", "right")]),
        ("Granulomatous Disease", [F("calcified_granuloma")]),
        ("Granuloma/lung/lower lobe/left", [F("granuloma", "left", "lower")]),
        ("Lung/hyperdistention", [F("emphysema")]),
        ("Lung/hypoinflation/mild", [F("hypoinflation", severity="mild")]),
        ("Emphysema", [F("emphysema")]),
        ("Pulmonary Emphysema/severe", [F("emphysema", severity="severe")]),
        ("Pulmonary Disease, Chronic Obstructive", [F("emphysema")]),
        ("Diaphragm/bilateral/flattened", [F("emphysema")]),
        ("Pulmonary Congestion/mild", [F("edema", severity="mild")]),
        ("Pulmonary Edema/interstitial", [F("edema")]),
        ("Catheters, Indwelling/right", [F("central_line", "right")]),
        ("Implanted Medical Device/left", [F("pacemaker", "left")]),
        ("Surgical Instruments/mediastinum", [F("sternotomy")]),
        ("Scoliosis/thoracic vertebrae/right/mild", [F("scoliosis", "right", severity="mild")]),
        ("Nodule/lung/lower lobe/right", [F("nodule", "right", "lower")]),
        ("Mass/lung/upper lobe/right/large", [F("nodule", "right", "upper", "severe")]),
        ("Opacity/lung/upper lobe/right/round", [F("nodule", "right", "upper")]),
        ("Pneumothorax/apex/right/small", [F("pneumothorax", "right", severity="mild")]),
        ("Hydropneumothorax/right", [F("pleural_effusion", "right"), F("pneumothorax", "right")]),
        ("Airspace Disease/lung/base/bilateral", [F("opacity", "bilateral", "lower")]),
        ("Consolidation/lung/lower lobe/left", [F("opacity", "left", "lower")]),
        ("Infiltrate/lung/base/left/mild", [F("opacity", "left", "lower", "mild")]),
        ("Pneumonia/lower lobe/right", [F("opacity", "right", "lower")]),
        ("Opacity/retrocardiac", [F("opacity", "left", "lower")]),
    ],
)
def test_mesh_terms_map_to_findings(term, expected):
    findings, unmapped = mesh_to_findings([term])
    assert findings == expected
    assert unmapped == collections.Counter()


@pytest.mark.parametrize(
    "term, head",
    [
        ("Aorta/tortuous", "Aorta"),
        ("Spine/degenerative", "Spine"),
        ("Technical Quality of Image Unsatisfactory", "Technical Quality of Image Unsatisfactory"),
        ("Calcinosis/aorta", "Calcinosis"),  # not a lung calcification
        ("Lung/azygos lobe", "Lung"),  # a known head with an unmapped qualifier
        ("Implanted Medical Device/aortic valve", "Implanted Medical Device"),  # a valve, not a pacemaker
        ("Opacity/ribs/left", "Opacity"),  # not in the lung
        ("Surgical Instruments/abdomen/right", "Surgical Instruments"),
        ("Completely Made Up Term/left", "Completely Made Up Term"),
    ],
)
def test_unmapped_mesh_terms_are_counted_by_head(term, head):
    findings, unmapped = mesh_to_findings([term])
    assert findings == []
    assert unmapped == collections.Counter({head: 1})


def test_normal_and_no_indexing_give_nothing_and_are_not_counted():
    assert mesh_to_findings(["normal"]) == ([], collections.Counter())
    assert mesh_to_findings(["No Indexing", "normal"]) == ([], collections.Counter())
    assert mesh_to_findings([]) == ([], collections.Counter())


def test_mesh_mixed_list_merges_duplicates_and_counts_unknowns():
    findings, unmapped = mesh_to_findings(
        [
            "Opacity/lung/base/left",
            "Airspace Disease/lung/base/left/mild",  # same kind and place: merged, severity kept
            "Opacity",  # less specific than the left lower opacity: absorbed
            "Aorta/tortuous",
            "Aorta, Thoracic/tortuous/mild",
            "Aorta/tortuous/mild",
            "normal",
        ]
    )
    assert findings == [F("opacity", "left", "lower", "mild")]
    assert unmapped == collections.Counter({"Aorta": 2, "Aorta, Thoracic": 1})


def test_mesh_calcified_nodule_pair_is_one_calcified_granuloma():
    findings, unmapped = mesh_to_findings(["Nodule/lung/lower lobe/right", "Calcinosis/lung/lower lobe/right"])
    assert findings == [F("calcified_granuloma", "right", "lower")]
    findings, unmapped = mesh_to_findings(["Nodule/scattered/multiple", "Calcinosis/scattered/multiple"])
    assert findings == [F("calcified_granuloma")] and not unmapped


def test_mesh_tolerates_odd_strings_but_not_non_strings():
    terms = ["  Cardiomegaly / mild ", "CARDIOMEGALY", "Subcutaneous  Emphysema/right", "", "/left"]
    findings, unmapped = mesh_to_findings(terms)
    assert findings == [F("cardiomegaly", severity="mild")]
    assert unmapped == collections.Counter({"Subcutaneous Emphysema": 1, "<empty head>": 1})
    with pytest.raises(FindingError):
        mesh_to_findings([None])
    with pytest.raises(FindingError):
        mesh_to_findings("Cardiomegaly")


def test_mesh_mapping_covers_every_kind():
    covered = set()
    for term in [
        "Cardiomegaly",
        "Pleural Effusion",
        "Opacity",
        "Pulmonary Atelectasis",
        "Nodule",
        "Granuloma",
        "Calcified Granuloma",
        "Pneumothorax",
        "Emphysema",
        "Pulmonary Edema",
        "Lung/hypoinflation",
        "Implanted Medical Device",
        "Catheters, Indwelling",
        "Surgical Instruments/mediastinum",
        "Scoliosis",
    ]:
        covered |= {f.kind for f in mesh_to_findings([term])[0]}
    assert covered == set(FINDING_KINDS)


# --------------------------------------------------------------------------------------
# Text labeller
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("No pleural effusion.", [F("pleural_effusion", negated=True)]),
        (
            "No pleural effusion or pneumothorax.",
            [F("pleural_effusion", negated=True), F("pneumothorax", negated=True)],
        ),
        ("Small left pleural effusion.", [F("pleural_effusion", "left", severity="mild")]),
        ("Increased opacity within the right upper lobe", [F("opacity", "right", "upper")]),
        ("Heart size is normal.", [F("cardiomegaly", negated=True)]),
        ("The heart is mildly enlarged.", [F("cardiomegaly", severity="mild")]),
        ("The lungs are clear.", [F("opacity", negated=True)]),
        (
            "Mild cardiomegaly, but no effusion",
            [F("cardiomegaly", severity="mild"), F("pleural_effusion", negated=True)],
        ),
        ("Left-sided pacemaker", [F("pacemaker", "left")]),
        ("Median sternotomy wires", [F("sternotomy")]),
        ("Sternotomy XXXX are intact.", [F("sternotomy")]),
        ("Bibasilar atelectasis", [F("atelectasis", "bilateral", "lower")]),
        ("Atelectasis at the left base.", [F("atelectasis", "left", "lower")]),
        ("Lingular opacity.", [F("opacity", "left", "middle")]),
        ("Large right pleural effusion.", [F("pleural_effusion", "right", severity="severe")]),
        ("Trace bilateral pleural effusions.", [F("pleural_effusion", "bilateral", severity="mild")]),
        ("Blunting of the left costophrenic angle.", [F("pleural_effusion", "left")]),
        ("Right PICC line with tip in the SVC.", [F("central_line", "right")]),
        ("Calcified granuloma in the right upper lobe.", [F("calcified_granuloma", "right", "upper")]),
        ("Calcified left lower lobe 5 mm granuloma.", [F("calcified_granuloma", "left", "lower")]),
        ("Mass in the left upper lobe.", [F("nodule", "left", "upper", "severe")]),
        ("The lungs are hyperinflated.", [F("emphysema")]),
        ("Low lung volumes.", [F("hypoinflation")]),
        ("Pulmonary vascular congestion.", [F("edema")]),
        ("Mild levoscoliosis.", [F("scoliosis", "left", severity="mild")]),
        ("Small right apical pneumothorax.", [F("pneumothorax", "right", severity="mild")]),
    ],
)
def test_label_text_cases(text, expected):
    assert label_text(text) == expected


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Negative for pneumothorax.", "pneumothorax"),
        ("Lungs are clear without focal consolidation.", "opacity"),
        ("No evidence of focal airspace disease, pleural effusion, or pneumothorax.", "pneumothorax"),
        ("The lungs are free of infiltrate.", "opacity"),
        ("Interval resolution of the left pleural effusion.", "pleural_effusion"),
        ("The previously seen effusion has resolved.", "pleural_effusion"),
        ("Pneumothorax is not seen.", "pneumothorax"),
        ("Heart size within normal limits.", "cardiomegaly"),
        ("Normal heart size.", "cardiomegaly"),
        ("Pulmonary vascularity is normal.", "edema"),
    ],
)
def test_negations(text, kind):
    findings = label_text(text)
    assert [f.kind for f in findings if f.kind == kind] == [kind]
    assert all(f.negated for f in findings if f.kind == kind)


@pytest.mark.parametrize(
    "text, kind",
    [
        ("Pneumonia cannot be excluded.", "opacity"),
        ("Possible right lower lobe pneumonia.", "opacity"),
        ("Opacity may represent atelectasis.", "atelectasis"),
        ("No change in the moderate cardiomegaly.", "cardiomegaly"),
        ("No acute disease, findings compatible with emphysema.", "emphysema"),
    ],
)
def test_uncertain_and_pseudo_negated_mentions_count_as_present(text, kind):
    assert any(f.kind == kind and not f.negated for f in label_text(text))


def test_hypothetical_mentions_are_dropped():
    assert label_text("Differential diagnosis includes pulmonary edema and infection.") == []
    assert label_text("Bony overlap in the apices could obscure a small pulmonary nodule.") == []


def test_positive_anywhere_beats_negation_elsewhere():
    findings = label_text("No pleural effusion on the left. Small right pleural effusion.")
    assert findings == [F("pleural_effusion", "right", severity="mild")]


def test_scope_ends_at_but_and_semicolon():
    assert label_text("No pneumothorax; small left effusion.") == [
        F("pleural_effusion", "left", severity="mild"),
        F("pneumothorax", negated=True),
    ]


def test_non_lung_density_is_not_an_opacity():
    assert label_text("There is an 8 mm opacity overlying the sixth anterior rib.") == []
    text = "Opacity in the left midlung overlying the posterior left 5th rib."
    assert label_text(text) == [F("opacity", "left", "middle")]


def test_real_report_1000():
    """The report of the XRayGAN paper's Figure 4 (Open-i 1000.xml), findings + impression."""
    text = (
        "There is XXXX increased opacity within the right upper lobe with possible mass and associated area of "
        "atelectasis or focal consolidation. The cardiac silhouette is within normal limits. XXXX opacity in the "
        "left midlung overlying the posterior left 5th rib may represent focal airspace disease. No pleural "
        "effusion or pneumothorax. No acute bone abnormality. 1. Increased opacity in the right upper lobe with "
        "XXXX associated atelectasis may represent focal consolidation or mass lesion with atelectasis. Recommend "
        "chest CT for further evaluation. 2. XXXX opacity overlying the left 5th rib may represent focal airspace "
        "disease."
    )
    assert label_text(text) == [
        F("cardiomegaly", negated=True),
        F("pleural_effusion", negated=True),
        F("opacity", "left", "middle"),
        F("opacity", "right", "upper"),
        F("atelectasis", "right", "upper"),
        F("nodule", "right", "upper", "severe"),  # "possible mass": uncertain counts as present
        F("pneumothorax", negated=True),
    ]
    # Its MeSH majors agree on every positive finding except the suspected mass.
    mesh_terms = ["Opacity/lung/upper lobe/right", "Pulmonary Atelectasis/upper lobe/right", "Opacity/lung/lingula"]
    mesh, _ = mesh_to_findings(mesh_terms)
    assert mesh == [F("opacity", "left", "middle"), F("opacity", "right", "upper"), F("atelectasis", "right", "upper")]


# --- robustness -----------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t\r", ".", "...", "XXXX XXXX.", "1. 2. 3."])
def test_empty_like_text_gives_nothing(text):
    assert label_text(text) == []


def test_non_string_is_refused():
    with pytest.raises(ReportError):
        label_text(None)
    with pytest.raises(ReportError):
        label_text(b"No effusion.")


def test_control_characters_and_unicode():
    assert label_text("No\x00 pleural\x07 effusion.\x1b") == [F("pleural_effusion", negated=True)]
    fullwidth = "Ｓｍａｌｌ ｌｅｆｔ ｐｌｅｕｒａｌ ｅｆｆｕｓｉｏｎ。"
    assert label_text(fullwidth) == [F("pleural_effusion", "left", severity="mild")]
    expected = [F("cardiomegaly", severity="mild"), F("pleural_effusion", negated=True)]
    assert label_text("Mild cardiomegaly — no effusion.") == expected
    assert label_text("Kardiomegalie 心脏扩大 🫀") == []


def test_random_unicode_never_fails():
    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyz XXXX .,;:-|()!?0123456789éß中🫀\u200b\u202e\x00\x85\u2028"
    words = ["no", "left", "right", "mild", "effusion", "opacity", "heart", "is", "normal", "lobe", "upper", "the"]
    for _ in range(200):
        pieces = [
            rng.choice(words) if rng.random() < 0.5 else "".join(rng.choices(alphabet, k=rng.randint(1, 8)))
            for _ in range(rng.randint(0, 30))
        ]
        findings = label_text(" ".join(pieces))
        assert all(isinstance(f, Finding) for f in findings)
        assert findings == merge_findings(findings)  # already deduplicated


def test_long_text_is_fast():
    # CPU time of this process, not wall time: the bound is about the labeller (no quadratic
    # blow-up), and must hold on a busy machine too.
    sentence = (
        "There is increased opacity within the right upper lobe with possible mass and associated atelectasis. "
        "No pleural effusion or pneumothorax. Heart size and pulmonary vascular engorgement appear within limits "
        "of normal. Nodular opacity overlying the left 5th rib. "
    )
    for text in [(sentence * 500)[:100_000], ("no effusion " * 10_000)[:100_000], "a" * 100_000, "heart " * 16_000]:
        start = time.process_time()
        label_text(text)
        assert time.process_time() - start < 1.0
    rng = random.Random(1)
    text = "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(100_000))
    start = time.process_time()
    label_text(text)
    assert time.process_time() - start < 1.0


# --------------------------------------------------------------------------------------
# Merging and describing
# --------------------------------------------------------------------------------------


def test_merge_findings():
    merged = merge_findings(
        [
            F("opacity"),
            F("opacity", "right", "upper"),
            F("opacity", "right", "upper", "mild"),
            F("opacity", "right", "upper", "moderate"),
            F("opacity", "left", severity="severe"),
            F("opacity", "left", "middle"),
            F("pneumothorax", negated=True),
            F("pneumothorax", "left", negated=True),
            F("cardiomegaly", negated=True),
            F("cardiomegaly", severity="mild"),
        ]
    )
    assert merged == [
        F("cardiomegaly", severity="mild"),
        F("opacity", "left", "middle", "severe"),
        F("opacity", "right", "upper", "moderate"),
        F("pneumothorax", negated=True),  # the wider negation covers the narrower
    ]


def test_describe_findings_example_and_empty():
    assert describe_findings([F("cardiomegaly", severity="mild"), F("pleural_effusion", "left", severity="mild")]) == (
        "Mild cardiomegaly. Small left pleural effusion."
    )
    assert describe_findings([]) == "No acute cardiopulmonary abnormality."
    assert label_text(describe_findings([])) == []


def _all_findings():
    for kind in FINDING_KINDS:
        attributes = KIND_ATTRIBUTES[kind]
        sides = [None, *SIDES] if "side" in attributes else [None]
        zones = [None, *ZONES] if "zone" in attributes else [None]
        severities = [None, *SEVERITIES] if "severity" in attributes else [None]
        for side, zone, severity in itertools.product(sides, zones, severities):
            yield F(kind, side, zone, severity)
        yield F(kind, negated=True)


def test_describe_then_label_round_trips_every_single_finding():
    for finding in _all_findings():
        text = describe_findings([finding])
        assert label_text(text) == [finding], text


def test_describe_then_label_round_trips_a_report():
    findings = [
        F("cardiomegaly", severity="moderate"),
        F("pleural_effusion", "bilateral", severity="mild"),
        F("atelectasis", "bilateral", "lower"),
        F("pacemaker", "left"),
        F("pneumothorax", negated=True),
    ]
    assert label_text(describe_findings(findings)) == merge_findings(findings)


# --------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------


def test_agreement_of_identical_labellings_is_perfect():
    reports = [[F("opacity", "left")], [F("cardiomegaly")], [], [F("pleural_effusion", negated=True)]]
    table = agreement([(r, r) for r in reports])
    assert list(table.index) == [*FINDING_KINDS, "micro"]
    assert (table["kappa"] == 1.0).all()  # also for kinds that never occur
    assert table.loc["opacity", "f1"] == 1.0
    assert math.isnan(table.loc["pneumothorax", "f1"])  # never present: undefined
    assert table.loc["micro", "n_reports"] == 4


def test_agreement_known_numbers():
    # Reference: cardiomegaly in reports 0,1,2; candidate: in 1,2,3; 10 reports in all.
    reference = [[F("cardiomegaly")] if i in (0, 1, 2) else [] for i in range(10)]
    candidate = [[F("cardiomegaly")] if i in (1, 2, 3) else [F("cardiomegaly", negated=True)] for i in range(10)]
    row = agreement(zip(reference, candidate), kinds=["cardiomegaly"]).loc["cardiomegaly"]
    assert (row["n_reference"], row["n_candidate"], row["n_both"]) == (3, 3, 2)
    assert row["precision"] == pytest.approx(2 / 3)
    assert row["recall"] == pytest.approx(2 / 3)
    assert row["f1"] == pytest.approx(2 / 3)
    # observed 0.8, expected 0.3*0.3 + 0.7*0.7 = 0.58, kappa = 0.22 / 0.42
    assert row["kappa"] == pytest.approx(0.22 / 0.42)


def test_agreement_micro_row_pools_cells():
    pairs = [([F("opacity")], [F("opacity")]), ([F("cardiomegaly")], []), ([], [F("edema")])]
    table = agreement(pairs, kinds=["opacity", "cardiomegaly", "edema"])
    micro = table.loc["micro"]
    assert (micro["n_reference"], micro["n_candidate"], micro["n_both"], micro["n_reports"]) == (2, 2, 1, 3)
    assert micro["f1"] == pytest.approx(0.5)


def test_openi_agreement_skips_reports_without_text():
    class Report:
        def __init__(self, findings, impression, mesh):
            self.findings, self.impression, self.mesh = findings, impression, tuple(mesh)

    reports = [
        Report("Mild cardiomegaly.", "No effusion.", ["Cardiomegaly/mild", "Aorta/tortuous"]),
        Report("", "", ["Pleural Effusion/left"]),
    ]
    table, unmapped = openi_agreement(reports)
    assert table.loc["cardiomegaly", ["n_mesh", "n_text", "n_both"]].tolist() == [1, 1, 1]
    assert table.loc["micro", "n_reports"] == 1
    assert unmapped == collections.Counter({"Aorta": 1})


def test_real_openi_reports_agree_with_their_mesh_terms():
    """A slice of the real reports (read from the installed package, not copied)."""
    from xrg.data.reports import parse_report_xml
    from xrg.resources import openi_reports_tgz

    try:
        archive = openi_reports_tgz()
    except XrgError:
        pytest.skip("torchxrayvision (with the Open-i reports) is not installed")
    reports = []
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.isreg() and member.name.endswith(".xml") and len(reports) < 400:
                try:
                    reports.append(parse_report_xml(tar.extractfile(member).read(), member.name))
                except XrgError:
                    continue
    table, _ = openi_agreement(reports)
    assert table.loc["micro", "f1"] > 0.8
    for kind in ("cardiomegaly", "pleural_effusion", "opacity", "atelectasis"):
        assert table.loc[kind, "f1"] > 0.7, kind
