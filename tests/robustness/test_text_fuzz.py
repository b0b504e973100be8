"""Property-based tests of every text entry: the XML parser, the sentence splitter, the tokenizer,
the section encoder, the findings labeller, the header splitter and the generation pipeline.

Each property feeds generated input and accepts exactly two outcomes: a result of the right
type and shape, or an :class:`xrg.errors.XrgError` whose message names the input. Anything
else (IndexError, AttributeError, a hang ...) fails. Inputs: arbitrary unicode (combining
marks, right-to-left text, emoji, NUL and other control characters), whitespace only,
report-like word salad with headers, list markers and abbreviations, 100k-character reports,
thousands of sentences, real Open-i XML cut at random offsets or with bytes flipped, and
entity-expansion / external-entity payloads. Hypothesis runs derandomised, so CI sees the same
cases every time; the ``max_examples`` of each property are in :data:`EXAMPLES`.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.control import currently_in_test_context, event as hypothesis_event

from xrg.data.findings import Finding, label_text
from xrg.data.reports import (
    EncodedSection,
    Report,
    Vocabulary,
    encode_section,
    normalize_text,
    pad_sections,
    parse_report_xml,
    split_report_text,
    split_sentences,
    tokenize,
)
from xrg.errors import EmptyReportError, ReportError, XrgError
from xrg.pipelines import XRayGANOutput, XRayGANPipeline

from ._helpers import TINY, random_checkpoint, real_openi_xml

#: max_examples per property (the report lists these).
EXAMPLES = {
    "parse_report_xml_text": 300,
    "parse_report_xml_truncated": 300,
    "parse_report_xml_mutated": 200,
    "split_sentences": 500,
    "tokenize": 500,
    "encode_section": 300,
    "label_text": 300,
    "split_report_text": 500,
    "pipeline": 200,
    "huge": 8,
    "non_text": 100,
}


def event(label: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        hypothesis_event(label)


def fuzz(name: str):
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

# Every unicode category except surrogates (which a str from a file cannot hold).
ANY_CHAR = st.characters(exclude_categories=("Cs",))
SPECIAL = st.sampled_from(
    [
        "\x00", "\x01", "\x07", "\x1b", "\x7f", "\x85", "\x9f", "\t", "\n", "\r", "\v", "\f", "\u00a0", "\u2028",
        "\u200b", "\u200f", "\u202e", "\u2066", "\ufeff", "\u0301", "\u0308\u0301", "\ufffd", "🫁", "👩🏽‍⚕️",
        "שלום", "مرحبا", "İ", "ß", "ﬁ", "Ⅻ", "٣", "½", "𝔣",
    ]
)  # fmt: skip
WORDS = st.sampled_from(
    [
        "FINDINGS:", "IMPRESSION:", "Findings :", "impressions:", "CONCLUSION:", "INDICATION:", "COMPARISON:",
        "FINAL REPORT", "EXAMINATION:", "History:", "1.", "2.", "3)", "10.", "99)", "e.g.", "i.e.", "Dr.", "vs.",
        "approx.", "5.5", "1.2.3", "T11-12", "x-XXXX", "XXXX.", "XXXX.In", "heart", "lungs", "clear.", "no",
        "without", "pleural", "effusion", "pneumothorax.", "cardiomegaly", "left", "right", "mild", "small",
        "large", "opacity", "nodule", "calcified", "granuloma", "is", "are", "normal", "not", "seen", "?", "!",
        "...", ":", ";", ",", "(", ")", "[", "]", '"', "'", "patient's", "-", "/", "_", "..", ". .",
    ]
)  # fmt: skip
SEPARATORS = st.sampled_from([" ", " ", " ", "", "\n", "\t", "  ", ". ", "\n\n", "\x00"])

#: Arbitrary unicode text, including control characters, marks and emoji.
unicode_text = st.text(ANY_CHAR, max_size=300)
#: Whitespace and control characters only.
blank_text = st.text(st.sampled_from(list(" \t\n\r\v\f\x00\x1c\x85\u00a0\u2028\u200b\ufeff")), max_size=60)


@st.composite
def report_like(draw, max_pieces: int = 60) -> str:
    """Word salad of report vocabulary, headers, list markers, unicode oddities and separators."""
    pieces = draw(st.lists(st.one_of(WORDS, WORDS, WORDS, SPECIAL, st.text(ANY_CHAR, max_size=4)), max_size=max_pieces))
    separators = draw(st.lists(SEPARATORS, min_size=len(pieces), max_size=len(pieces)))
    return "".join(p + s for p, s in zip(pieces, separators))


any_text = st.one_of(report_like(), unicode_text, blank_text)


@st.composite
def huge_text(draw) -> str:
    """A 100k-character report, or thousands of sentences, built from a drawn piece."""
    piece = draw(st.one_of(report_like(max_pieces=12), st.text(ANY_CHAR, min_size=1, max_size=40)))
    shape = draw(st.sampled_from(["chars", "sentences"]))
    if shape == "sentences":
        return " ".join(f"{piece} {i}." for i in range(draw(st.integers(2_000, 5_000))))
    piece = piece or "x"
    return (piece * (100_000 // len(piece) + 1))[:100_000]


NON_TEXT = st.one_of(
    st.none(), st.integers(), st.floats(allow_nan=True), st.binary(max_size=20), st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(b"FINDINGS: heart."), st.just(bytearray(b"x")),
)  # fmt: skip


# --------------------------------------------------------------------------------------
# Outcome checks
# --------------------------------------------------------------------------------------


def names_the_text(message: str, text: object) -> bool:
    """An error message names free text by (the start of) its repr, its type, or calls it empty."""
    if not isinstance(text, str):
        return type(text).__name__ in message
    normal = normalize_text(text)
    return (not normal and "empty" in message) or any(
        repr(candidate[:80]) in message or repr(candidate[:80])[1:-1] in message for candidate in (text, normal)
    )


def expect(call, check, text: object) -> object | None:
    """Run ``call()``; check its result, or that it raised an XrgError naming ``text``."""
    try:
        result = call()
    except XrgError as error:
        assert names_the_text(str(error), text), f"{type(error).__name__} does not name the input: {error}"
        event(f"refused: {type(error).__name__}")
        return None
    check(result)
    event("result")
    return result


CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_sentences(text: str, sentences: object) -> None:
    assert isinstance(sentences, list) and all(isinstance(s, str) for s in sentences)
    normal = normalize_text(text)
    for sentence in sentences:
        assert sentence and sentence == sentence.strip() and not CONTROL.search(sentence)
        assert sentence in normal  # a piece of the text, nothing invented
        assert re.search(r"[^\W_]", sentence)  # at least one letter or digit


def check_tokens(text: str, tokens: object) -> None:
    assert isinstance(tokens, list) and all(isinstance(t, str) and t for t in tokens)
    lowered = text.lower()
    for token in tokens:
        assert token in lowered and not any(c.isspace() for c in token)


def check_section(encoded: object, vocab: Vocabulary, max_sentences: int, max_words: int) -> None:
    assert isinstance(encoded, EncodedSection)
    ids, mask = encoded.ids, encoded.mask
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape and ids.dim() == 2
    sentences, width = ids.shape
    assert sentences <= max_sentences and width <= max_words
    assert (sentences == 0) == (width == 0)
    if sentences:
        assert int(ids.min()) >= 0 and int(ids.max()) < len(vocab)
        assert bool((ids[~mask] == Vocabulary.PAD_INDEX).all()) and bool((ids[mask] != Vocabulary.PAD_INDEX).all())
        assert bool(mask[:, 0].all())  # no empty sentence kept
        lengths = mask.sum(dim=1)
        assert bool((mask == (torch.arange(width)[None, :] < lengths[:, None])).all())  # words left-aligned
    padded_ids, padded_mask = pad_sections([encoded, encoded])
    assert padded_ids.shape[0] == 2 and padded_ids.shape[1:] == (max(sentences, 1), max(width, 1))


# --------------------------------------------------------------------------------------
# XML
# --------------------------------------------------------------------------------------

REAL_XML = real_openi_xml(24)
SOURCE = "fuzzed-report.xml"


def check_report(report: object) -> None:
    assert isinstance(report, Report) and report.source == SOURCE
    assert report.findings or report.impression
    for text in (report.findings, report.impression, report.indication, report.comparison, *report.mesh):
        assert isinstance(text, str) and not CONTROL.search(text) and text == text.strip()
    assert isinstance(report.report_id, str) and report.report_id


def expect_report(data: bytes | str) -> Report | None:
    try:
        report = parse_report_xml(data, source=SOURCE)
    except XrgError as error:
        assert isinstance(error, ReportError), repr(error)
        assert SOURCE in str(error), str(error)
        event(f"refused: {str(error).split(': ', 1)[1].split(' (')[0][:40]}")
        return None
    check_report(report)
    event("parsed")
    return report


def test_real_reports_parse():
    assert len(REAL_XML) == 24
    parsed = [expect_report(data) for _, data in REAL_XML]
    assert sum(r is not None for r in parsed) >= 20  # a few Open-i reports have no text


@fuzz("parse_report_xml_truncated")
@given(st.sampled_from(REAL_XML), st.floats(0, 1))
def test_truncated_real_xml(named, fraction):
    _, data = named
    cut = data[: int(len(data) * fraction)]
    report = expect_report(cut)
    if report is not None:
        assert fraction > 0.5  # a report only parses when its closing tags survive


@fuzz("parse_report_xml_mutated")
@given(
    st.sampled_from(REAL_XML),
    st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=0, max_size=4)), min_size=1, max_size=6),
)
def test_real_xml_with_bytes_replaced(named, edits):
    _, data = named
    data = bytearray(data)
    for position, replacement in edits:
        at = int(position * (len(data) - 1))
        data[at : at + max(len(replacement), 1)] = replacement
    expect_report(bytes(data))


@st.composite
def xml_documents(draw) -> str:
    """Open-i-shaped XML with fuzzed text, labels and structure, sometimes broken on purpose."""
    sections = draw(
        st.lists(
            st.tuples(st.sampled_from(["FINDINGS", "IMPRESSION", "INDICATION", "findings", "", "OTHER"]), any_text),
            max_size=4,
        )
    )

    def escape(text: str) -> str:
        text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
        # XML 1.0 cannot hold most control characters at all: keep some, so both outcomes occur.
        return text if draw(st.booleans()) else CONTROL.sub(" ", text)

    body = "".join(f'<AbstractText Label="{label}">{escape(text)}</AbstractText>' for label, text in sections)
    uid = draw(
        st.one_of(st.just(""), st.builds(lambda n: f'<uId id="CXR{n}"/>', st.integers(0, 10**6)), st.text(max_size=5))
    )
    mesh = "".join(f"<major>{escape(t)}</major>" for t in draw(st.lists(report_like(max_pieces=4), max_size=3)))
    root = draw(st.sampled_from(["eCitation", "eCitation", "eCitation", "other", "eCitation xmlns='urn:x'"]))
    document = f"<{root}>{uid}<Abstract>{body}</Abstract><MeSH>{mesh}</MeSH></{root.split()[0]}>"
    if draw(st.booleans()):
        document = '<?xml version="1.0" encoding="utf-8"?>' + document
    damage = draw(st.sampled_from(["none", "none", "drop_close", "stray_lt", "bad_entity"]))
    if damage == "drop_close":
        document = document[: document.rfind("<")]
    elif damage == "stray_lt":
        document = document.replace("<Abstract>", "<Abstract><<", 1)
    elif damage == "bad_entity":
        document = document.replace("<Abstract>", "<Abstract>&nosuch;", 1)
    return document


@fuzz("parse_report_xml_text")
@given(xml_documents(), st.booleans())
def test_fuzzed_xml(document, as_bytes):
    expect_report(document.encode("utf-8") if as_bytes else document)


BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">' for i in range(1, 10))
    + ']><eCitation><AbstractText Label="FINDINGS">&lol9;</AbstractText></eCitation>'
)
QUADRATIC = (
    '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "' + "x" * 50_000 + '">]>'
    '<eCitation><AbstractText Label="FINDINGS">' + "&a;" * 5_000 + "</AbstractText></eCitation>"
)


@pytest.mark.parametrize(
    "payload",
    [
        BILLION_LAUGHS,
        QUADRATIC,
        '<!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret}">]><eCitation><AbstractText Label="FINDINGS">&x;</AbstractText></eCitation>',
        '<!DOCTYPE r [<!ENTITY % p SYSTEM "file://{secret}"> %p;]><eCitation><AbstractText Label="FINDINGS">a</AbstractText></eCitation>',
        '<!DOCTYPE r SYSTEM "file://{secret}"><eCitation><AbstractText Label="FINDINGS">dtd &x;</AbstractText></eCitation>',
        '<!DOCTYPE r [<!ENTITY x "heart">]><eCitation><AbstractText Label="FINDINGS">&x; is normal</AbstractText></eCitation>',
        '<!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><eCitation><AbstractText Label="FINDINGS">&x;</AbstractText></eCitation>',
    ],
    ids=["billion-laughs", "quadratic-blowup", "external-entity", "parameter-entity", "external-dtd", "internal-entity",
         "network-entity"],
)  # fmt: skip
def test_entity_payloads_are_refused_without_expanding_or_reading(tmp_path, payload):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    document = payload.replace("{secret}", str(secret))
    report = expect_report(document)
    if report is not None:  # only a plain DTD reference may parse, and nothing from it is read
        assert "dtd" in report.findings
    assert report is None or "TOPSECRET" not in repr(report)
    if "ENTITY" in payload:
        assert report is None
        with pytest.raises(ReportError, match=f"{SOURCE}: refused unsafe XML"):
            parse_report_xml(document, source=SOURCE)


@pytest.mark.parametrize("data", [None, 5, 1.5, ["<eCitation/>"], {"a": 1}, Path("x.xml")])
def test_parse_report_xml_refuses_non_xml_objects(data):
    with pytest.raises(ReportError, match=SOURCE):
        parse_report_xml(data, source=SOURCE)


def test_deeply_nested_xml_is_handled():
    depth = 100_000
    deep = '<eCitation><AbstractText Label="FINDINGS">' + "<a>" * depth + "Heart normal." + "</a>" * depth
    report = expect_report(deep + "</AbstractText></eCitation>")
    assert report is not None and report.findings == "Heart normal."


# --------------------------------------------------------------------------------------
# Sentences, tokens, sections, headers, findings
# --------------------------------------------------------------------------------------

VOCAB = Vocabulary.build(
    ["The heart is normal. The lungs are clear. No pleural effusion. Mild cardiomegaly. 5.5 cm nodule."]
)


@fuzz("split_sentences")
@given(any_text)
def test_split_sentences(text):
    expect(lambda: split_sentences(text), lambda result: check_sentences(text, result), text)


@fuzz("tokenize")
@given(any_text)
def test_tokenize(text):
    expect(lambda: tokenize(text), lambda result: check_tokens(text, result), text)


@fuzz("encode_section")
@given(any_text, st.integers(1, 20), st.integers(1, 30))
def test_encode_section(text, max_sentences, max_words):
    expect(
        lambda: encode_section(text, VOCAB, max_sentences, max_words),
        lambda result: check_section(result, VOCAB, max_sentences, max_words),
        text,
    )


@fuzz("label_text")
@given(any_text)
def test_label_text(text):
    def check(findings):
        assert isinstance(findings, list) and all(isinstance(f, Finding) for f in findings)
        assert label_text(text) == findings  # deterministic

    expect(lambda: label_text(text), check, text)


@fuzz("split_report_text")
@given(any_text)
def test_split_report_text(text):
    def check(result):
        assert isinstance(result, tuple) and len(result) == 2 and all(isinstance(part, str) for part in result)
        assert any(result)
        normal = normalize_text(text)
        for part in result:
            assert not CONTROL.search(part) and part == part.strip()
            for piece in part.split(" "):
                assert piece in normal

    expect(lambda: split_report_text(text), check, text)
    # Only an input without any text at all is "empty".
    if not normalize_text(text):
        with pytest.raises(EmptyReportError):
            split_report_text(text)


@fuzz("non_text")
@given(NON_TEXT)
def test_non_text_inputs_are_typed_errors(value):
    for function in (split_sentences, tokenize, label_text, split_report_text, lambda v: encode_section(v, VOCAB)):
        with pytest.raises(ReportError) as caught:
            function(value)
        assert type(value).__name__ in str(caught.value)


@fuzz("huge")
@given(huge_text())
def test_huge_reports(text):
    expect(lambda: split_sentences(text), lambda result: check_sentences(text, result), text)
    expect(lambda: tokenize(text), lambda result: check_tokens(text, result), text)
    expect(lambda: encode_section(text, VOCAB), lambda result: check_section(result, VOCAB, 16, 24), text)
    expect(lambda: label_text(text), lambda result: isinstance(result, list), text)
    expect(lambda: split_report_text(text), lambda result: isinstance(result, tuple), text)


# --------------------------------------------------------------------------------------
# The pipeline's text entry
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> XRayGANPipeline:
    """A randomly initialised tiny XRayGAN, saved and loaded through the real checkpoint functions."""
    path = random_checkpoint(tmp_path_factory.mktemp("pipe") / "checkpoint.pt", TINY, VOCAB)
    return XRayGANPipeline.from_checkpoint(path)


def check_output(output: object, pipe: XRayGANPipeline) -> None:
    assert isinstance(output, XRayGANOutput)
    size = pipe.image_size
    for image in (output.frontal, output.lateral):
        assert image.shape == (1, size, size) and image.dtype == torch.float32
        assert bool(torch.isfinite(image).all()) and 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    assert all(isinstance(word, str) and word for word in output.unknown_words)
    for section in output.attention.values():
        assert len(section.sentences) == len(section.word_weights) == len(section.sentence_weights)
        assert len(section.sentences) <= pipe.config.max_sentences
        assert all(len(w) == len(s) <= pipe.config.max_words for w, s in zip(section.word_weights, section.sentences))


def check_outputs(outputs: object, reports: list[str] | tuple[str, ...], pipe: XRayGANPipeline) -> None:
    """A list of reports gives a list of outputs, one per report."""
    assert isinstance(outputs, list) and len(outputs) == len(reports)
    for output in outputs:
        check_output(output, pipe)


def run_pipeline(pipe: XRayGANPipeline, text: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the truncation warning is expected on long input
        if isinstance(text, (list, tuple)) and all(isinstance(item, str) for item in text):
            expect(lambda: pipe(text), lambda outputs: check_outputs(outputs, text, pipe), text)  # a batch of reports
        else:
            expect(lambda: pipe(text), lambda output: check_output(output, pipe), text)


@fuzz("pipeline")
@given(st.integers(0, 9).flatmap(lambda k: NON_TEXT if k == 0 else any_text))  # one case in ten not a str
def test_pipeline_text_entry(pipe, text):
    run_pipeline(pipe, text)


def test_pipeline_on_huge_reports(pipe):
    sentences = " ".join(f"The heart is normal number {i}." for i in range(3_000))
    for text in (sentences, ("Mild cardiomegaly. " * 6_000)[:100_000], "x" * 100_000, "FINDINGS: " + "1. " * 30_000):
        run_pipeline(pipe, text)
