"""Tests of xrg.data.reports: Open-i parsing, sentences, tokens, vocabulary, encoding."""

from __future__ import annotations

import io
import json
import random
import tarfile
import time

import pytest
import torch

from xrg.data.reports import (
    MAX_SENTENCES,
    MAX_WORDS,
    EncodedSection,
    Report,
    Vocabulary,
    encode_section,
    iter_report_sources,
    load_openi_reports,
    pad_sections,
    parse_report_xml,
    split_report_text,
    split_sentences,
    tokenize,
)
from xrg.errors import ArchiveError, DataDirError, EmptyReportError, ReportError, VocabularyError
from xrg.resources import openi_reports_tgz


def _report_xml(
    findings: str = "The heart is normal.", impression: str = "No acute disease.", uid: str = "CXR7"
) -> str:
    return f"""<?xml version="1.0" encoding="utf-8"?>
<eCitation>
  <uId id="{uid}"/>
  <MedlineCitation><Article><Abstract>
    <AbstractText Label="COMPARISON">None.</AbstractText>
    <AbstractText Label="INDICATION">Cough.</AbstractText>
    <AbstractText Label="FINDINGS">{findings}</AbstractText>
    <AbstractText Label="IMPRESSION">{impression}</AbstractText>
  </Abstract></Article></MedlineCitation>
  <MeSH><major> Cardiomegaly/mild </major><major>Opacity/lung/base/left</major><automatic>x</automatic></MeSH>
  <parentImage id="CXR7_IM-0001-1001"><caption>PA</caption></parentImage>
  <parentImage id="CXR7_IM-0001-2001"><caption>LAT</caption></parentImage>
</eCitation>"""


_LOAD_SECONDS: list[float] = []


@pytest.fixture(scope="module")
def corpus():
    start = time.perf_counter()
    collection = load_openi_reports()
    _LOAD_SECONDS.append(time.perf_counter() - start)
    return collection


# --- parsing -------------------------------------------------------------------------


def test_parse_real_report_1000():
    sources = dict(iter_report_sources(openi_reports_tgz()))
    report = parse_report_xml(sources["ecgen-radiology/1000.xml"], source="ecgen-radiology/1000.xml")
    assert report.report_id == "1000"
    assert report.findings.startswith("There is XXXX increased opacity within the right upper lobe")
    assert report.impression.startswith("1. Increased opacity in the right upper lobe")
    assert report.comparison == "XXXX PA and lateral chest radiographs"
    assert report.indication == "XXXX-year-old male, XXXX."
    assert "Opacity/lung/upper lobe/right" in report.mesh
    assert report.mesh == (
        "Opacity/lung/upper lobe/right",
        "Pulmonary Atelectasis/upper lobe/right",
        "Opacity/lung/lingula",
    )
    assert report.image_ids == ("CXR1000_IM-0003-1001", "CXR1000_IM-0003-2001", "CXR1000_IM-0003-3001")
    assert report.source == "ecgen-radiology/1000.xml"


def test_parse_synthetic_report_normalises_whitespace_and_strips_mesh():
    xml = _report_xml(findings="  The heart\n\t is \u00a0 normal. ", impression="")
    report = parse_report_xml(xml.encode("utf-8"), source="7.xml")
    assert report == Report(
        report_id="7",
        findings="The heart is normal.",
        impression="",
        indication="Cough.",
        comparison="None.",
        mesh=("Cardiomegaly/mild", "Opacity/lung/base/left"),
        image_ids=("CXR7_IM-0001-1001", "CXR7_IM-0001-2001"),
        source="7.xml",
    )


def test_report_id_falls_back_to_file_name():
    xml = _report_xml().replace('<uId id="CXR7"/>', "")
    assert parse_report_xml(xml, source="dir/123.xml").report_id == "123"
    with pytest.raises(ReportError, match="no <uId"):
        parse_report_xml(xml)


@pytest.mark.parametrize(
    "data, message",
    [
        (_report_xml()[:200], "malformed XML"),  # truncated
        ("<eCitation><AbstractText Label='FINDINGS'>x</eCitation>", "mismatched tag"),
        ("", "malformed XML"),
        ("<html><body/></html>", "expected an Open-i <eCitation>"),
    ],
)
def test_malformed_xml_is_a_report_error_naming_the_source(data, message):
    with pytest.raises(ReportError, match=message) as info:
        parse_report_xml(data, source="broken.xml")
    assert "broken.xml" in str(info.value)
    assert not isinstance(info.value, EmptyReportError)


def test_entity_expansion_is_refused():
    billion_laughs = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        '<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
        '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'
        '<eCitation><AbstractText Label="FINDINGS">&lol3;</AbstractText></eCitation>'
    )
    with pytest.raises(ReportError, match="unsafe XML") as info:
        parse_report_xml(billion_laughs, source="laughs.xml")
    assert "laughs.xml" in str(info.value)


def test_empty_report_is_an_empty_report_error():
    with pytest.raises(EmptyReportError, match="empty.xml"):
        parse_report_xml(_report_xml(findings="  ", impression=""), source="empty.xml")


# --- loading collections -------------------------------------------------------------


def test_whole_corpus_loads_with_expected_counts(corpus):
    assert len(corpus.reports) + sum(corpus.skipped.values()) == 3955
    assert corpus.skipped == {"empty report": 28}
    assert len(corpus.errors) == 28
    assert sum(bool(r.findings) for r in corpus.reports) == 3425
    assert sum(bool(r.impression) for r in corpus.reports) == 3921
    assert len({r.report_id for r in corpus.reports}) == len(corpus.reports)
    ids = [int(r.report_id) for r in corpus.reports]
    assert ids == sorted(ids)  # natural numeric order
    assert sum(len(r.image_ids) == 2 for r in corpus.reports) > 3000
    assert _LOAD_SECONDS[0] < 10.0  # about 2 s on 2 CPU cores


def _tgz(path, members: dict[str, bytes], extra=None):
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        if extra:
            extra(archive)
    return path


def test_collection_counts_bad_files_and_keeps_going(tmp_path):
    def add_symlink(archive):
        link = tarfile.TarInfo("r/link.xml")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        archive.addfile(link)

    members = {
        "r/10.xml": _report_xml(uid="CXR10").encode(),
        "r/2.xml": _report_xml(uid="CXR2").encode(),
        "r/3.xml": b"<eCitation><oops>",
        "r/4.xml": _report_xml(findings="", impression="", uid="CXR4").encode(),
        "r/5.xml": b'<!DOCTYPE a [<!ENTITY e "x">]><eCitation>&e;</eCitation>',
        "r/6.xml": _report_xml(uid="CXR2").encode(),  # duplicate id
        "r/notes.txt": b"not a report",
    }
    source = _tgz(tmp_path / "reports.tgz", members, extra=add_symlink)
    big = _tgz(tmp_path / "big.tgz", {"r/1.xml": _report_xml(findings="x " * 6000).encode(), **members})
    collection = load_openi_reports(source)
    assert [r.report_id for r in collection.reports] == ["2", "10"]
    assert collection.skipped == {"malformed xml": 1, "empty report": 1, "unsafe xml": 1, "duplicate id": 1}
    assert [name for name, _ in collection.errors] == ["r/3.xml", "r/4.xml", "r/5.xml", "r/6.xml"]
    capped = load_openi_reports(big, max_bytes=10_000)
    assert capped.skipped["too large"] == 1 and capped.errors[0][0] == "r/1.xml"
    skipped: list[tuple[str, str]] = []
    names = [
        name for name, _ in iter_report_sources(big, max_bytes=10_000, on_skip=lambda n, r: skipped.append((n, r)))
    ]
    assert skipped == [("r/1.xml", "too large")]
    assert names == ["r/2.xml", "r/3.xml", "r/4.xml", "r/5.xml", "r/6.xml", "r/10.xml"]


def test_directory_source_in_natural_order(tmp_path):
    for n in (10, 9, 100):
        (tmp_path / f"{n}.xml").write_text(_report_xml(uid=f"CXR{n}"))
    (tmp_path / "readme.md").write_text("x")
    collection = load_openi_reports(tmp_path)
    assert [r.report_id for r in collection.reports] == ["9", "10", "100"]
    assert [r.source for r in collection.reports] == ["9.xml", "10.xml", "100.xml"]


def test_missing_and_unreadable_sources(tmp_path):
    with pytest.raises(DataDirError, match="does-not-exist"):
        load_openi_reports(tmp_path / "does-not-exist")
    broken = tmp_path / "broken.tgz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ArchiveError, match="broken.tgz"):
        load_openi_reports(broken)
    good = _tgz(tmp_path / "good.tgz", {f"r/{n}.xml": _report_xml(uid=f"CXR{n}").encode() * 20 for n in range(20)})
    truncated = tmp_path / "truncated.tgz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ArchiveError, match="truncated.tgz"):
        load_openi_reports(truncated)


# --- sentences and tokens ------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A 5.5 cm nodule. Heart normal.", ["A 5.5 cm nodule.", "Heart normal."]),
        ("Degenerative change at T11-12. No fracture.", ["Degenerative change at T11-12.", "No fracture."]),
        (
            "Discussed with Dr. X at 5 p.m. today. Lungs clear.",
            ["Discussed with Dr. X at 5 p.m. today.", "Lungs clear."],
        ),
        ("Devices, e.g. leads, are seen. No effusion", ["Devices, e.g. leads, are seen.", "No effusion"]),
        (
            "1. Increased opacity in the right upper lobe. Recommend chest CT. 2. XXXX opacity overlying the left 5th rib.",
            [
                "Increased opacity in the right upper lobe.",
                "Recommend chest CT.",
                "XXXX opacity overlying the left 5th rib.",
            ],
        ),
        ("IMPRESSION: 1) Cardiomegaly 2) Small effusion", ["IMPRESSION:", "Cardiomegaly", "Small effusion"]),
        ("Nodule measuring 2. The heart is normal.", ["Nodule measuring 2.", "The heart is normal."]),
        ("Clear right lung XXXX.In the left base, opacity.", ["Clear right lung XXXX.", "In the left base, opacity."]),
        ("No final period", ["No final period"]),
        ("Is this an effusion? Yes! Definitely.", ["Is this an effusion?", "Yes!", "Definitely."]),
        ("Heart\x00 normal\x1b.\r\nLungs\tclear.", ["Heart normal.", "Lungs clear."]),
        ("Negative chest . .", ["Negative chest ."]),
        ("", []),
        ("   \n\t ", []),
        ("... . !", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize(
    "text",
    ["The heart is 5.5 cm. " * 5000, "a" * 100_000, "1. " * 40_000, "rib 5) " * 15_000, ". " * 50_000, "Dr. " * 30_000],
)
def test_split_sentences_is_linear_on_huge_input(text):
    start = time.perf_counter()
    sentences = split_sentences(text)
    for sentence in sentences:
        tokenize(sentence)
    assert time.perf_counter() - start < 1.0


def test_real_impression_with_numbered_list(corpus):
    report = next(r for r in corpus.reports if r.report_id == "1000")
    assert split_sentences(report.impression) == [
        "Increased opacity in the right upper lobe with XXXX associated atelectasis may represent focal "
        "consolidation or mass lesion with atelectasis.",
        "Recommend chest CT for further evaluation.",
        "XXXX opacity overlying the left 5th rib may represent focal airspace disease.",
    ]
    assert len(split_sentences(report.findings)) == 5


def test_tokenize():
    assert tokenize("There is XXXX increased opacity, 5.5 cm!") == [
        "there",
        "is",
        "xxxx",
        "increased",
        "opacity",
        "5.5",
        "cm",
    ]
    assert tokenize("T11-12 x-XXXX and/or patient's (RUL)") == [
        "t11",
        "12",
        "x",
        "xxxx",
        "and",
        "or",
        "patient's",
        "rul",
    ]
    assert tokenize("... ;; --") == []
    assert tokenize("") == []


# --- section splitting of free text ---------------------------------------------------


def test_split_report_text_with_headers():
    text = (
        "Indication: cough.\nFINDINGS: The heart is normal.  No effusion.\nimpression: Normal chest.\nComparison: none"
    )
    assert split_report_text(text) == ("The heart is normal. No effusion.", "Normal chest.")


def test_split_report_text_mimic_style():
    text = (
        "                                 FINAL REPORT\n EXAMINATION:  CHEST (PA AND LAT)\n\n"
        " INDICATION:  ___ with cough\n\n TECHNIQUE:  Chest PA and lateral\n\n COMPARISON:  None.\n\n"
        " FINDINGS: \n\n Mild cardiomegaly.  No pleural\n effusion.\n\n IMPRESSION: \n\n Mild cardiomegaly.\n"
    )
    assert split_report_text(text) == ("Mild cardiomegaly. No pleural effusion.", "Mild cardiomegaly.")


def test_split_report_text_without_headers_or_only_impression():
    assert split_report_text("  Mild cardiomegaly.\nNo effusion. ") == ("Mild cardiomegaly. No effusion.", "")
    assert split_report_text("IMPRESSION: no acute disease") == ("", "no acute disease")
    assert split_report_text("Heart normal. Impression: no acute disease") == ("Heart normal.", "no acute disease")


@pytest.mark.parametrize("text", ["", "   \n", "FINDINGS:  IMPRESSION: ", "INDICATION: cough"])
def test_split_report_text_empty(text):
    with pytest.raises(EmptyReportError):
        split_report_text(text)


# --- vocabulary ------------------------------------------------------------------------


def test_vocabulary_build_is_deterministic_and_ordered():
    texts = ["No effusion. No pneumothorax.", "Mild cardiomegaly. No effusion.", "Heart normal."]
    vocab = Vocabulary.build(texts)
    assert vocab.words[:4] == ("<pad>", "<unk>", "no", "effusion")
    assert vocab.words[4:] == tuple(sorted(vocab.words[4:]))  # all seen once: alphabetical
    shuffled = texts[:]
    random.Random(3).shuffle(shuffled)
    assert Vocabulary.build(shuffled) == vocab
    assert Vocabulary.build(reversed(texts)).fingerprint == vocab.fingerprint


def test_vocabulary_indices_and_unknown_words():
    vocab = Vocabulary.build(["No effusion."])
    assert vocab.index(Vocabulary.PAD) == 0 and vocab.index(Vocabulary.UNK) == 1
    assert len(vocab) == 4 and "no" in vocab and "cardiomegaly" not in vocab
    assert vocab.index("cardiomegaly") == 1
    assert vocab.encode_words(["no", "cardiomegaly", "effusion"]) == [vocab.index("no"), 1, vocab.index("effusion")]
    assert vocab.word(vocab.index("effusion")) == "effusion"
    with pytest.raises(IndexError):
        vocab.word(99)


def test_vocabulary_min_freq_and_max_size():
    texts = ["a a a b b c"]
    assert Vocabulary.build(texts, min_freq=2).words == ("<pad>", "<unk>", "a", "b")
    assert Vocabulary.build(texts, max_size=3).words == ("<pad>", "<unk>", "a")


def test_vocabulary_save_load_round_trip(tmp_path, corpus):
    vocab = Vocabulary.build(r.findings + " " + r.impression for r in corpus.reports[:200])
    path = vocab.save(tmp_path / "vocab.json")
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.fingerprint == vocab.fingerprint
    data = json.loads(path.read_text())
    assert data["format"] == "xrg-vocabulary" and data["version"] == 1 and len(data["fingerprint"]) == 64
    assert Vocabulary.from_dict(vocab.to_dict()) == vocab


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"format": "other", "version": 1, "words": ["<pad>", "<unk>"]}', "not an xrg vocabulary"),
        ('{"format": "xrg-vocabulary", "version": 99, "words": ["<pad>", "<unk>"]}', "version 99"),
        ('{"format": "xrg-vocabulary", "version": 1, "words": ["<unk>", "<pad>", "a"]}', "indices 0 and 1"),
        ('{"format": "xrg-vocabulary", "version": 1, "words": ["<pad>", "<unk>", "a", "a"]}', "duplicate"),
        ('{"format": "xrg-vocabulary", "version": 1, "words": ["<pad>", "<unk>", 3]}', "non-empty string"),
        ('{"format": "xrg-vocabulary", "version": 1, "words": ["<pad>", "<unk>"], "fingerprint": "ab"}', "fingerprint"),
    ],
)
def test_malformed_vocabulary_file_is_refused(tmp_path, content, message):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(VocabularyError, match=message) as info:
        Vocabulary.load(path)
    assert str(path) in str(info.value)


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(VocabularyError, match="does not exist"):
        Vocabulary.load(tmp_path / "nope.json")


# --- hierarchical encoding -------------------------------------------------------------


def test_encode_section_shapes_and_mask():
    vocab = Vocabulary.build(["The heart is normal. No effusion."])
    section = encode_section("The heart is normal. No pneumothorax.", vocab)
    assert isinstance(section, EncodedSection)
    assert section.ids.shape == (2, 4) and section.ids.dtype == torch.long
    assert section.mask.dtype == torch.bool
    assert section.mask.tolist() == [[True] * 4, [True, True, False, False]]
    assert section.ids[0].tolist() == vocab.encode_words(["the", "heart", "is", "normal"])
    assert section.ids[1].tolist() == [vocab.index("no"), Vocabulary.UNK_INDEX, 0, 0]
    assert not section.truncated


def test_encode_section_truncates_and_flags():
    vocab = Vocabulary.build(["a b c d e f"])
    section = encode_section("a b c d e f. a b. c. d. e.", vocab, max_sentences=3, max_words=4)
    assert section.ids.shape == (3, 4) and section.truncated
    assert encode_section("a b. c.", vocab, max_sentences=2, max_words=2).truncated is False
    assert encode_section("a b c. c.", vocab, max_sentences=2, max_words=2).truncated is True
    assert encode_section("a. b. c.", vocab, max_sentences=2, max_words=5).truncated is True
    assert (MAX_SENTENCES, MAX_WORDS) == (16, 24)


def test_encode_empty_section():
    vocab = Vocabulary.build(["a"])
    for text in ("", "  ", "... !"):
        section = encode_section(text, vocab)
        assert section.ids.shape == (0, 0) and section.mask.shape == (0, 0) and not section.truncated


def test_pad_sections():
    vocab = Vocabulary.build(["a b c"])
    sections = [encode_section("a b c. a.", vocab), encode_section("", vocab), encode_section("b.", vocab)]
    ids, mask = pad_sections(sections)
    assert ids.shape == mask.shape == (3, 2, 3)
    assert mask.sum(dim=(1, 2)).tolist() == [4, 0, 1]
    assert (ids[~mask] == 0).all()
    assert ids[2, 0, 0].item() == vocab.index("b")
    empty_ids, empty_mask = pad_sections([encode_section("", vocab)] * 2)
    assert empty_ids.shape == (2, 1, 1) and not empty_mask.any()
