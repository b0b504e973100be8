"""Radiology reports: Open-i XML parsing, sentence splitting, tokens, vocabulary, encoding.

XRayGAN (Yang et al., "Consistency-preserving Generation of X-ray Images from Radiology
Reports") §2.1 encodes a report hierarchically: the FINDINGS and the IMPRESSION are each
split into sentences, every sentence into words; a word-level encoder reads each sentence
and a sentence-level encoder reads the sentence vectors. This module produces exactly that
input, as a ``[sentences, words]`` index matrix with a mask per section
(:func:`encode_section`, batched by :func:`pad_sections`).

The text comes from the 3,955 Open-i (Indiana University) reports shipped inside the
``torchxrayvision`` package (:func:`load_openi_reports`) or from text a user types
(:func:`split_report_text`). XML is parsed with ``defusedxml``, so entity-expansion
payloads are refused instead of expanded.
"""

from __future__ import annotations

import collections
import hashlib
import json
import lzma
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree.ElementTree import Element, ParseError

import defusedxml
import defusedxml.ElementTree as SafeET
import torch

from xrg.errors import ArchiveError, ConfigError, DataDirError, EmptyReportError, ReportError, VocabularyError
from xrg.io import atomic_write_json

#: Most sentences a section keeps (p99 of Open-i sentences per report, see DATA.md).
MAX_SENTENCES = 16
#: Most words a sentence keeps (above the p99 of 19 words per Open-i sentence).
MAX_WORDS = 24
#: Archive members or files larger than this are skipped, not read (Open-i reports are ~5 kB).
MAX_REPORT_BYTES = 5 * 1024 * 1024

# --------------------------------------------------------------------------------------
# Text clean-up
# --------------------------------------------------------------------------------------

# Control characters: the whitespace ones become spaces, the others are deleted.
_CONTROL_TABLE = {
    c: (" " if chr(c) in "\t\n\r\v\f\x1c\x1d\x1e\x1f\x85" else None) for c in [*range(0x20), *range(0x7F, 0xA0)]
}
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Delete control characters and collapse runs of whitespace into single spaces."""
    _require_text(text)
    return _SPACES.sub(" ", text.translate(_CONTROL_TABLE)).strip()


def _require_text(text: object, what: str = "report text") -> None:
    if not isinstance(text, str):
        raise ReportError(f"{what} must be a string, got {type(text).__name__}: {str(text)[:60]!r}")


# --------------------------------------------------------------------------------------
# Open-i XML
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """One Open-i report: its four text sections, MeSH majors and image ids."""

    report_id: str
    findings: str
    impression: str
    indication: str = ""
    comparison: str = ""
    mesh: tuple[str, ...] = ()
    image_ids: tuple[str, ...] = ()
    source: str = "<string>"


_UID = re.compile(r"CXR(\d+)")


def parse_report_xml(data: bytes | str, source: str = "<string>") -> Report:
    """Parse one Open-i report XML (``ecgen-radiology/<n>.xml``).

    Raises :class:`ReportError` for malformed, truncated or unsafe XML (DTD entities are
    refused) and :class:`EmptyReportError` when neither FINDINGS nor IMPRESSION has text.
    """
    if not isinstance(data, (bytes, bytearray, str)):
        raise ReportError(f"report {source}: expected XML as bytes or str, got {type(data).__name__}")
    try:
        root = SafeET.fromstring(data)
    except defusedxml.DefusedXmlException as exc:
        raise ReportError(f"report {source}: refused unsafe XML ({type(exc).__name__}: {exc})") from exc
    except ParseError as exc:
        raise ReportError(f"report {source}: malformed XML ({exc})") from exc
    except (ValueError, UnicodeError) as exc:  # e.g. undecodable bytes
        raise ReportError(f"report {source}: unreadable XML ({exc})") from exc
    if root.tag != "eCitation":
        raise ReportError(f"report {source}: root element is <{root.tag}>, expected an Open-i <eCitation>")

    sections: dict[str, list[str]] = collections.defaultdict(list)
    for element in root.iter("AbstractText"):
        label = (element.get("Label") or "").strip().upper()
        text = normalize_text(_text_of(element))
        if text:
            sections[label].append(text)

    report_id = _report_id(root, source)
    findings = " ".join(sections["FINDINGS"])
    impression = " ".join(sections["IMPRESSION"])
    if not findings and not impression:
        raise EmptyReportError(f"report {source}: has neither FINDINGS nor IMPRESSION text")
    mesh = tuple(term for major in root.iter("major") if (term := normalize_text(_text_of(major))))
    image_ids = tuple(image_id.strip() for image in root.iter("parentImage") if (image_id := image.get("id")))
    return Report(
        report_id=report_id,
        findings=findings,
        impression=impression,
        indication=" ".join(sections["INDICATION"]),
        comparison=" ".join(sections["COMPARISON"]),
        mesh=mesh,
        image_ids=image_ids,
        source=source,
    )


def _text_of(element: Element) -> str:
    return "".join(element.itertext())


def _report_id(root: Element, source: str) -> str:
    from xrg.paths import MAX_INPUT_ID, safe_id

    uid = root.find("uId")
    value = ""
    if uid is not None and (value := (uid.get("id") or "").strip()):
        match = _UID.fullmatch(value)
        value, what = (match.group(1) if match else value), "its <uId id=...>"
    elif source != "<string>":
        value, what = Path(source).name.rsplit(".", 1)[0], "its file name"
    if not value:
        raise ReportError(f"report {source}: has no <uId id=...> and no file name to take an id from")
    try:  # the id becomes part of image file names
        return safe_id(value, f"report {source}: the id taken from {what},", MAX_INPUT_ID)
    except DataDirError as exc:
        raise ReportError(str(exc)) from exc


def _natural_key(name: str) -> list[Any]:
    """Sort key so that ``2.xml`` comes before ``10.xml``."""
    return [(0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


#: Most bytes of report XML read from one archive (they are held in memory to be sorted).
MAX_ARCHIVE_REPORT_BYTES = 1 << 30
#: Most members of a report archive (Open-i's has 3,955 reports).
MAX_ARCHIVE_MEMBERS = 100_000

_TAR_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def iter_report_sources(
    source: str | os.PathLike,
    max_bytes: int = MAX_REPORT_BYTES,
    on_skip: Callable[[str, str], None] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, xml_bytes)`` of every ``.xml`` report in a directory, archive or file.

    ``source`` is a directory (searched recursively), a tar archive (``.tgz``, ``.tar.gz``,
    ``.tar`` ...) read in memory without extracting anything, or a single ``.xml`` file.
    Only regular files ending in ``.xml`` are read, in natural numeric order of their names.
    Files above ``max_bytes`` are not read; ``on_skip(name, reason)`` is told about them.
    """
    path = Path(source)
    if not path.exists():
        raise DataDirError(f"report source {path} does not exist")

    def skip(name: str, reason: str) -> None:
        if on_skip is not None:
            on_skip(name, reason)

    if path.is_dir():
        from xrg.paths import files_inside

        inside, outside = files_inside(path, (".xml",))
        for link in outside:  # a symbolic link out of the tree is never followed
            skip(link.relative_to(path).as_posix(), "link outside the directory")
        files = sorted(inside, key=lambda p: _natural_key(p.relative_to(path).as_posix()))
        for file in files:
            name = file.relative_to(path).as_posix()
            if file.stat().st_size > max_bytes:
                skip(name, "too large")
                continue
            try:
                yield name, file.read_bytes()
            except OSError as exc:
                raise DataDirError(f"report file {file} is unreadable: {exc}") from exc
        return
    if path.suffix.lower() == ".xml":
        if path.stat().st_size > max_bytes:
            skip(path.name, "too large")
            return
        yield path.name, path.read_bytes()
        return
    if not path.name.lower().endswith(_TAR_SUFFIXES) and not _is_tarfile(path):
        raise ArchiveError(f"report source {path} is neither a directory, an .xml file nor a tar archive")
    # Read in archive order (a gzip stream cannot seek back cheaply), then sort.
    members: list[tuple[str, bytes]] = []
    total = 0
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for count, member in enumerate(archive, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise ArchiveError(f"report archive {path} has more than {MAX_ARCHIVE_MEMBERS} members; refused")
                if not member.isreg() or not member.name.lower().endswith(".xml"):
                    continue
                if member.size > max_bytes:
                    skip(member.name, "too large")
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                total += member.size
                if total > MAX_ARCHIVE_REPORT_BYTES:
                    raise ArchiveError(
                        f"report archive {path} holds more than {MAX_ARCHIVE_REPORT_BYTES // 2**20} MiB of .xml reports "
                        "(Open-i has about 20 MiB); refused as damaged or a decompression bomb"
                    )
                members.append((member.name, handle.read()))
            from xrg.data.importers import read_to_the_end

            read_to_the_end(archive, MAX_ARCHIVE_REPORT_BYTES)  # to the end: the gzip CRC / xz check is verified
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
        raise ArchiveError(f"report archive {path} is unreadable or truncated: {exc}") from exc
    members.sort(key=lambda item: _natural_key(item[0]))
    yield from members


def _is_tarfile(path: Path) -> bool:
    try:
        return path.is_file() and tarfile.is_tarfile(path)
    except OSError:
        return False


@dataclass
class ReportCollection:
    """The reports that parsed, and what was skipped and why."""

    reports: list[Report]
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.reports)

    def __str__(self) -> str:
        lines = [f"{len(self.reports)} reports"]
        lines += [f"  skipped {count:>5}  {reason}" for reason, count in sorted(self.skipped.items())]
        return "\n".join(lines)


def load_openi_reports(source: str | os.PathLike | None = None, max_bytes: int = MAX_REPORT_BYTES) -> ReportCollection:
    """Load every Open-i report from ``source`` (default: the archive in ``torchxrayvision``).

    A bad file never stops the load: it is counted in ``skipped`` under a reason
    (``malformed xml``, ``unsafe xml``, ``empty report``, ``too large``, ``duplicate id``)
    and its message kept in ``errors``; files above ``max_bytes`` are not read. A missing or
    unreadable source raises.
    """
    if source is None:
        from xrg.resources import openi_reports_tgz

        source = openi_reports_tgz()
    collection = ReportCollection(reports=[])

    def on_skip(name: str, reason: str) -> None:
        collection.skipped[reason] += 1
        collection.errors.append((name, f"{reason} (over {max_bytes} bytes)" if reason == "too large" else reason))

    seen: set[str] = set()
    for name, data in iter_report_sources(source, max_bytes=max_bytes, on_skip=on_skip):
        try:
            report = parse_report_xml(data, source=name)
        except EmptyReportError as exc:
            collection.skipped["empty report"] += 1
            collection.errors.append((name, str(exc)))
            continue
        except ReportError as exc:
            if isinstance(exc.__cause__, DataDirError):
                reason = "unsafe id"
            elif isinstance(exc.__cause__, defusedxml.DefusedXmlException):
                reason = "unsafe xml"
            else:
                reason = "malformed xml"
            collection.skipped[reason] += 1
            collection.errors.append((name, str(exc)))
            continue
        if report.report_id in seen:
            collection.skipped["duplicate id"] += 1
            collection.errors.append((name, f"report {name}: id {report.report_id!r} already loaded"))
            continue
        seen.add(report.report_id)
        collection.reports.append(report)
    return collection


# --------------------------------------------------------------------------------------
# Free text: sections, sentences, tokens
# --------------------------------------------------------------------------------------

# Headers of Open-i and MIMIC-CXR reports. Only FINDINGS and IMPRESSION are kept.
_HEADER = re.compile(
    r"(?<![\w])(?:"
    r"(?P<findings>findings?)"
    r"|(?P<impression>impressions?|conclusions?)"
    r"|(?:indications?|comparisons?|history|clinical history|examination|exam|technique|"
    r"reason for (?:exam|examination|study)|notification|recommendations?|wet read|addendum)"
    r")\s*:"
    r"|(?<![\w])final report(?![\w])",
    re.IGNORECASE,
)


def report_text(findings: str, impression: str, headers: bool = False) -> str:
    """A case's or report's text from its two sections: the one way every module joins them.

    Plain (the default): ``"{findings} {impression}"`` without surrounding whitespace, what the
    labeller reads and the vocabulary is built from. With ``headers``: ``FINDINGS:`` and
    ``IMPRESSION:`` lines, each section stripped and an empty one left out, the text a pipeline
    or the report editor is given and :func:`split_report_text` splits back into the two
    sections (``""`` when both are empty).
    """
    if not headers:
        return f"{findings} {impression}".strip()
    parts = [(name, body.strip()) for name, body in (("FINDINGS", findings), ("IMPRESSION", impression))]
    return "\n".join(f"{name}: {body}" for name, body in parts if body)


def split_report_text(text: str) -> tuple[str, str]:
    """Split free report text into ``(findings, impression)``.

    ``FINDINGS:`` and ``IMPRESSION:`` headers are found case-insensitively; the text under
    other headers (``INDICATION:``, ``COMPARISON:``, MIMIC-CXR's ``EXAMINATION:``,
    ``FINAL REPORT`` ...) is dropped. Without any header the whole text is the findings and
    the impression is ``""``; text before the first header counts as findings when there is
    no FINDINGS header. Raises :class:`EmptyReportError` when no findings or impression text
    is left.
    """
    if not isinstance(text, str):
        raise ReportError(f"report text must be a string, got {type(text).__name__}")
    text = normalize_text(text)
    if not text:
        raise EmptyReportError("report text is empty")
    matches = list(_HEADER.finditer(text))
    if not matches:
        return text, ""
    findings: list[str] = []
    impression: list[str] = []
    preamble = text[: matches[0].start()].strip()
    for match, following in zip(matches, [*matches[1:], None]):
        body = text[match.end() : following.start() if following else len(text)].strip()
        if match.group("findings"):
            findings.append(body)
        elif match.group("impression"):
            impression.append(body)
    if preamble and not any(m.group("findings") for m in matches):
        findings.insert(0, preamble)
    result = " ".join(s for s in findings if s), " ".join(s for s in impression if s)
    if not any(result):
        raise EmptyReportError(f"report text has no FINDINGS or IMPRESSION text: {text[:80]!r}")
    return result


# Words that end with a period without ending a sentence (compared lowercase, dots removed).
_ABBREVIATIONS = frozenset(
    {"dr", "mr", "mrs", "ms", "prof", "st", "vs", "eg", "ie", "cf", "al", "approx", "fig", "resp"}
)
# A list marker ("1." or "2)") standing alone as a word, or a sentence terminator followed by
# optional closing quotes/brackets and then a space or the end, or a period glued to the
# next sentence ("XXXX.In the left ..."). All alternatives are linear-time.
_BOUNDARY = re.compile(
    r"(?P<marker>(?<!\S)(?P<number>\d{1,2})[.)](?=\s|$))"
    r"|(?P<end>[.!?]+[\"')\]]*(?=\s|$)|(?<=[^\W\d_])[.!?](?=[A-Z][a-z]))"
)
_ALNUM = re.compile(r"[^\W_]")
_DOTTED = re.compile(r"(?:[^\W\d_]\.)+[^\W\d_]")  # "e.g", "i.e", "p.m": single letters joined by dots


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences.

    Periods inside numbers ("5.5 cm"), ranges ("T11-12"), and after abbreviations ("Dr. X",
    "e.g.") do not end a sentence. Numbered lists ("1. Increased opacity ... 2. Opacity ...")
    split into their items, without the numbers. A list marker is recognised at the start of
    the text, after a sentence end or colon, or as the next number of the current list.
    Control characters are removed; pieces without a letter or digit are dropped.
    """
    text = normalize_text(text)
    sentences: list[str] = []
    start = 0
    last_marker: int | None = None

    def flush(end: int) -> None:
        piece = text[start:end].strip()
        if _ALNUM.search(piece):
            sentences.append(piece)

    for match in _BOUNDARY.finditer(text):
        if match.group("marker"):
            number = int(match.group("number"))
            # After normalisation a single space precedes the marker: look one character further.
            before = text[match.start() - 2] if match.start() >= 2 else ""
            at_sentence_start = match.start() - start <= 1 or before in ".!?:;"
            if at_sentence_start or (last_marker is not None and number == last_marker + 1):
                flush(match.start())
                start = match.end()
                last_marker = number
                continue
            if not match.group(0).endswith("."):
                continue
            # "measuring 2. The heart ..." is a number ending a sentence.
        else:
            word = text[text.rfind(" ", start, match.start()) + 1 : match.start()].lower().lstrip("([\"'")
            if word.replace(".", "") in _ABBREVIATIONS or _DOTTED.fullmatch(word):
                continue
        flush(match.end())
        start = match.end()
    flush(len(text))
    return sentences


# A decimal number ("5.5") is one token; otherwise runs of letters and digits, with an inner
# apostrophe kept ("patient's"). Hyphens and slashes separate tokens: "T11-12" -> t11, 12.
_TOKEN = re.compile(r"\d+(?:\.\d+)+|[^\W_]+(?:'[^\W_]+)*")


def tokenize(sentence: str) -> list[str]:
    """Lowercase word and number tokens of a sentence; punctuation is dropped.

    Decimals stay whole (``"5.5"``); hyphens and slashes split (``"T11-12"`` gives
    ``["t11", "12"]``, ``"x-XXXX"`` gives ``["x", "xxxx"]``); the anonymisation mark
    ``XXXX`` becomes ``"xxxx"``.
    """
    _require_text(sentence, "a sentence to tokenize")
    return _TOKEN.findall(sentence.lower())


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------

VOCAB_FORMAT = "xrg-vocabulary"
VOCAB_VERSION = 1


class Vocabulary:
    """A fixed word list: ``<pad>`` at index 0, ``<unk>`` at 1, then the words."""

    PAD = "<pad>"
    UNK = "<unk>"
    PAD_INDEX = 0
    UNK_INDEX = 1

    def __init__(self, words: Sequence[str]) -> None:
        words = list(words)
        problem = _vocabulary_problem(words)
        if problem:
            raise VocabularyError(f"invalid vocabulary: {problem}")
        self._words = words
        self._index = {word: i for i, word in enumerate(words)}

    @classmethod
    def build(cls, texts: Iterable[str], min_freq: int = 1, max_size: int | None = None) -> Vocabulary:
        """Build from report texts, most frequent words first (ties alphabetical).

        Words seen fewer than ``min_freq`` times are left out; ``max_size`` caps the total
        size, ``<pad>`` and ``<unk>`` included. The order of ``texts`` does not matter.
        """
        if min_freq < 1:
            raise ConfigError(f"min_freq must be at least 1, got {min_freq}")
        if max_size is not None and max_size < 2:
            raise ConfigError(f"max_size must be at least 2 (<pad> and <unk>), got {max_size}")
        counts: collections.Counter[str] = collections.Counter()
        for text in texts:
            for sentence in split_sentences(text):
                counts.update(tokenize(sentence))
        ranked = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        if max_size is not None:
            ranked = ranked[: max_size - 2]
        return cls([cls.PAD, cls.UNK, *ranked])

    @property
    def words(self) -> tuple[str, ...]:
        return tuple(self._words)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the word list; a checkpoint stores it to check its vocabulary."""
        return _fingerprint(self._words)

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self._words == other._words

    def __hash__(self) -> int:
        return hash(tuple(self._words))

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} words, fingerprint {self.fingerprint[:12]})"

    def index(self, word: str) -> int:
        """Index of ``word``; ``<unk>``'s index for a word not in the vocabulary."""
        return self._index.get(word, self.UNK_INDEX)

    def word(self, index: int) -> str:
        if not 0 <= index < len(self._words):
            raise IndexError(f"word index {index} out of range for a vocabulary of {len(self)} words")
        return self._words[index]

    def encode_words(self, words: Iterable[str]) -> list[int]:
        return [self.index(word) for word in words]

    def decode(self, indices: Iterable[int]) -> list[str]:
        """Words of ``indices``, padding left out."""
        return [self.word(int(i)) for i in indices if int(i) != self.PAD_INDEX]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": VOCAB_FORMAT,
            "version": VOCAB_VERSION,
            "fingerprint": self.fingerprint,
            "words": list(self._words),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "vocabulary") -> Vocabulary:
        """Rebuild from :meth:`to_dict`; any inconsistency is a :class:`VocabularyError`."""
        if not isinstance(data, dict):
            raise VocabularyError(f"{where}: expected a JSON object, got {type(data).__name__}")
        if data.get("format") != VOCAB_FORMAT:
            raise VocabularyError(
                f"{where}: not an xrg vocabulary (format {data.get('format')!r}, expected {VOCAB_FORMAT!r})"
            )
        if data.get("version") != VOCAB_VERSION:
            raise VocabularyError(
                f"{where}: vocabulary version {data.get('version')!r} is not supported (expected {VOCAB_VERSION})"
            )
        words = data.get("words")
        if not isinstance(words, list):
            raise VocabularyError(f"{where}: 'words' must be a list of strings")
        problem = _vocabulary_problem(words)
        if problem:
            raise VocabularyError(f"{where}: {problem}")
        if "fingerprint" in data and data["fingerprint"] != _fingerprint(words):
            raise VocabularyError(f"{where}: fingerprint does not match the word list (file edited or corrupted)")
        return cls(words)

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON, atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise VocabularyError(f"vocabulary file {path} does not exist") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise VocabularyError(f"vocabulary file {path} is unreadable: {exc}") from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise VocabularyError(f"vocabulary file {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        return cls.from_dict(data, where=f"vocabulary file {path}")


def _fingerprint(words: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()


def _vocabulary_problem(words: Sequence[Any]) -> str | None:
    if not all(isinstance(w, str) and w for w in words):
        return "every word must be a non-empty string"
    if len(words) < 2 or words[0] != Vocabulary.PAD or words[1] != Vocabulary.UNK:
        return f"{Vocabulary.PAD!r} and {Vocabulary.UNK!r} must be at indices 0 and 1"
    if len(set(words)) != len(words):
        duplicates = sorted(w for w, c in collections.Counter(words).items() if c > 1)
        return f"duplicate words {duplicates[:5]}"
    return None


# --------------------------------------------------------------------------------------
# Hierarchical encoding (XRayGAN §2.1)
# --------------------------------------------------------------------------------------


@dataclass
class EncodedSection:
    """One report section as word indices: ``ids`` and ``mask`` are ``[sentences, words]``.

    ``mask`` is True on real words. An empty section has shape ``[0, 0]``. ``truncated`` says
    whether sentences or words were cut to fit the limits.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    truncated: bool = False

    @property
    def num_sentences(self) -> int:
        return int(self.ids.shape[0])


def encode_section(
    text: str, vocab: Vocabulary, max_sentences: int = MAX_SENTENCES, max_words: int = MAX_WORDS
) -> EncodedSection:
    """Encode one section (FINDINGS or IMPRESSION) as a sentences x words index matrix.

    Sentences without tokens are dropped; at most ``max_sentences`` sentences of at most
    ``max_words`` words are kept. The width is the longest kept sentence.
    """
    if max_sentences < 1 or max_words < 1:
        raise ConfigError(f"max_sentences and max_words must be at least 1, got {max_sentences} and {max_words}")
    sentences = [tokens for sentence in split_sentences(text) if (tokens := tokenize(sentence))]
    truncated = len(sentences) > max_sentences or any(len(tokens) > max_words for tokens in sentences[:max_sentences])
    sentences = [tokens[:max_words] for tokens in sentences[:max_sentences]]
    width = max((len(tokens) for tokens in sentences), default=0)
    ids = torch.full((len(sentences), width), Vocabulary.PAD_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sentences), width), dtype=torch.bool)
    for row, tokens in enumerate(sentences):
        ids[row, : len(tokens)] = torch.tensor(vocab.encode_words(tokens), dtype=torch.long)
        mask[row, : len(tokens)] = True
    return EncodedSection(ids=ids, mask=mask, truncated=truncated)


def pad_sections(sections: Sequence[EncodedSection]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack sections into ``ids [B, S, W]`` and ``mask [B, S, W]``, padded to the batch max.

    S and W are at least 1, so a batch of empty sections gives ``[B, 1, 1]`` all masked.
    """
    num_sentences = max([1, *(s.ids.shape[0] for s in sections)])
    num_words = max([1, *(s.ids.shape[1] for s in sections)])
    ids = torch.full((len(sections), num_sentences, num_words), Vocabulary.PAD_INDEX, dtype=torch.long)
    mask = torch.zeros((len(sections), num_sentences, num_words), dtype=torch.bool)
    for b, section in enumerate(sections):
        s, w = section.ids.shape
        ids[b, :s, :w] = section.ids
        mask[b, :s, :w] = section.mask
    return ids, mask
