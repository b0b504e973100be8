"""Importers: real chest X-ray archives into the shared data-directory format.

A user who has the Open-i images (``NLMCXR_png.tgz``) or MIMIC-CXR-JPG can turn them into
the same ``manifest.jsonl`` + ``vocab.json`` + ``images/`` directory the phantom build
writes (:mod:`xrg.data.manifest`), so every model trains on real radiographs unchanged.
As in XRayGAN's data (Open-i, MIMIC-CXR), each case pairs one report with one frontal and
one lateral view; the split is by patient. Bad inputs (a corrupt image, a colour image, a
report without text, a study lacking a view) are refused one by one, with a count per
reason and a message per file, and the import goes on.

:func:`safe_extract` unpacks user archives without letting any member escape the target.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import errno
import gzip
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import numpy as np

from xrg.data.images import load_grayscale, resize, save_png
from xrg.data.manifest import VOCAB_NAME, Case, patient_split, write_manifest
from xrg.data.reports import MAX_REPORT_BYTES, Vocabulary, load_openi_reports, report_text, split_report_text
from xrg.errors import ArchiveError, ConfigError, DataDirError, DiskFullError, EmptyReportError, ImageError, ReportError
from xrg.io import DISK_FULL_ERRNOS, disk_full_error
from xrg.locks import own_output_dir
from xrg.paths import files_inside, is_safe_id, resolves_inside

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: Open-i ``View Position`` values, best first within each view.
OPENI_FRONTAL = ("PA", "AP")
OPENI_LATERAL = ("LL", "LATERAL", "LARGE LATERAL", "RL")
#: MIMIC-CXR ``ViewPosition`` values, best first within each view.
MIMIC_FRONTAL = ("PA", "AP")
MIMIC_LATERAL = ("LATERAL", "LL")
MIMIC_METADATA = "mimic-cxr-2.0.0-metadata.csv"


@dataclass
class ImportSummary:
    """What an import wrote and what it refused.

    ``skipped`` counts refused cases (reports or studies) by reason, ``refused_files``
    lists ``(file, message)`` for every file that could not be used.
    """

    n_cases: int
    skipped: collections.Counter[str]
    refused_files: list[tuple[str, str]]
    out: Path
    splits: collections.Counter[str] = field(default_factory=collections.Counter)
    unmapped_terms: collections.Counter[str] = field(default_factory=collections.Counter)

    def __str__(self) -> str:
        splits = ", ".join(f"{name} {self.splits[name]}" for name in ("train", "val", "test") if self.splits[name])
        lines = [f"imported {self.n_cases} cases into {self.out}" + (f" ({splits})" if splits else "")]
        if self.skipped:
            lines.append(f"skipped {sum(self.skipped.values())}:")
            lines += [f"  {count:>6}  {reason}" for reason, count in self.skipped.most_common()]
        if self.refused_files:
            lines.append(f"refused files: {len(self.refused_files)}, e.g.")
            lines += [f"  {name}: {message}" for name, message in self.refused_files[:5]]
        if self.unmapped_terms:
            lines.append(
                "most frequent unmapped terms: "
                + ", ".join(f"{term} ({count})" for term, count in self.unmapped_terms.most_common(8))
            )
        return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Safe archive extraction
# --------------------------------------------------------------------------------------


#: Most bytes :func:`safe_extract` unpacks from one archive by default (Open-i's PNGs are ~1.4 GB).
MAX_EXTRACT_BYTES = 32 * 2**30
#: Most members :func:`safe_extract` unpacks from one archive by default (Open-i has 7,470 images).
MAX_EXTRACT_MEMBERS = 100_000


def safe_extract(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    max_bytes: int = MAX_EXTRACT_BYTES,
    max_members: int = MAX_EXTRACT_MEMBERS,
) -> list[Path]:
    """Extract a ``.tar``/``.tgz``/``.tar.gz``/``.zip`` archive into ``target``.

    Every member is checked before anything is written: absolute paths, ``..`` escapes,
    symbolic and hard links, devices and FIFOs are refused with an :class:`ArchiveError`
    naming the member, so a refused archive writes nothing. So is an archive whose members
    add up to more than ``max_bytes`` uncompressed (a zip bomb), more than ``max_members``
    members, or more than the free space of ``target``'s disk; the bytes actually written
    are counted too, so a member that unpacks to more than it declares is stopped. Tar
    archives are additionally extracted with ``filter="data"``. A disk that fills up anyway
    is a :class:`~xrg.errors.DiskFullError`. Returns the extracted regular files, sorted.
    """
    archive = Path(archive)
    target = Path(target)
    if not archive.is_file():
        raise ArchiveError(f"archive {archive} does not exist")
    limits = _ExtractLimits(archive, target, max_bytes, max_members)
    if zipfile.is_zipfile(archive):
        return _extract_zip(archive, target, limits)
    if _is_tar(archive):
        return _extract_tar(archive, target, limits)
    raise ArchiveError(f"archive {archive} is neither a tar nor a zip archive (or it is corrupted)")


@dataclass
class _ExtractLimits:
    archive: Path
    target: Path
    max_bytes: int
    max_members: int

    def check_plan(self, sizes: Sequence[int]) -> None:
        """Refuse, before anything is written, an archive too large in members, bytes or for the disk."""
        if len(sizes) > self.max_members:
            raise ArchiveError(
                f"archive {self.archive} has {len(sizes)} members, more than the {self.max_members} allowed"
            )
        total = sum(sizes)
        if total > self.max_bytes:
            raise ArchiveError(
                f"archive {self.archive} unpacks to {total / 2**20:.1f} MiB, more than the {self.max_bytes / 2**20:.1f} "
                "MiB allowed (a damaged archive or a decompression bomb); refused, nothing written"
            )
        existing = next((p for p in (self.target, *self.target.parents) if p.exists()), Path("."))
        free = shutil.disk_usage(existing).free
        if total > free:
            raise DiskFullError(
                errno.ENOSPC, f"archive {self.archive} unpacks to {total / 2**20:.1f} MiB but only "
                f"{free / 2**20:.1f} MiB are free under {existing}; nothing was written; free some space and try again",
            )  # fmt: skip

    def copy(self, source: BinaryIO, sink: BinaryIO, name: str, declared: int, written: list[int]) -> None:
        """Copy one member, stopping it past its declared size or the archive's byte limit."""
        left = declared
        while chunk := source.read(1 << 20):
            left -= len(chunk)
            written[0] += len(chunk)
            if left < 0 or written[0] > self.max_bytes:
                raise ArchiveError(
                    f"archive {self.archive}: member {name!r} unpacks to more than it declares ({declared} bytes); refused"
                )
            sink.write(chunk)


def _is_tar(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        return False


def _checked_destination(archive: Path, name: str, root: Path) -> Path:
    """Where member ``name`` would land under ``root``; refuses names that would escape."""
    posix = name.replace("\\", "/")
    if not posix or "\x00" in posix:
        raise ArchiveError(f"archive {archive}: member {name!r} has an empty or invalid name")
    if posix.startswith("/") or re.match(r"^[A-Za-z]:", posix):
        raise ArchiveError(f"archive {archive}: member {name!r} has an absolute path")
    if ".." in PurePosixPath(posix).parts:
        raise ArchiveError(f"archive {archive}: member {name!r} escapes the target directory with '..'")
    destination = (root / posix).resolve()
    if destination != root and root not in destination.parents:
        raise ArchiveError(f"archive {archive}: member {name!r} would be written outside {root} (via a link)")
    return destination


def _check_layout(archive: Path, root: Path, planned: Sequence[tuple[str, Path, bool]]) -> None:
    """Refuse an archive that would use one path both as a file and as a directory.

    ``planned`` holds ``(member name, destination, is a directory)``. Such an archive would
    fail half-way through extraction; checked first, a refused archive writes nothing.
    """
    files: dict[Path, str] = {}
    directories: dict[Path, str] = {root: "the target"}
    for name, destination, is_dir in planned:
        if not is_dir and re.search(r"(^|/)\.?/*$", name.replace("\\", "/")):
            raise ArchiveError(f"archive {archive}: member {name!r} is a file with a directory name")
        parents = [p for p in destination.parents if p == root or root in p.parents]
        for parent in parents:
            if parent in files or (parent.exists() and not parent.is_dir()):
                other = files.get(parent, "an existing file")
                raise ArchiveError(
                    f"archive {archive}: member {name!r} needs {parent} as a directory, but it is a file ({other})"
                )
            directories.setdefault(parent, name)
        if is_dir:
            if destination in files or (destination.exists() and not destination.is_dir()):
                raise ArchiveError(f"archive {archive}: directory member {name!r} would replace a file")
            directories.setdefault(destination, name)
        else:
            if destination in directories or destination.is_dir():
                raise ArchiveError(
                    f"archive {archive}: member {name!r} is a file where a directory is "
                    f"({directories.get(destination, 'an existing directory')})"
                )
            files[destination] = name


def _extract_tar(archive: Path, target: Path, limits: _ExtractLimits) -> list[Path]:
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            members = []
            while (member := tar.next()) is not None:  # counted as read: a million empty members is refused early
                members.append(member)
                if len(members) > limits.max_members:
                    raise ArchiveError(f"archive {archive} has more than the {limits.max_members} members allowed")
            root = target.resolve()
            files: list[Path] = []
            planned: list[tuple[str, Path, bool]] = []
            for member in members:
                destination = _checked_destination(archive, member.name, root)
                if member.issym() or member.islnk():
                    kind = "symbolic" if member.issym() else "hard"
                    raise ArchiveError(
                        f"archive {archive}: member {member.name!r} is a {kind} link (to {member.linkname!r}); "
                        "links are refused"
                    )
                if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
                    raise ArchiveError(f"archive {archive}: member {member.name!r} is a device or FIFO; refused")
                if not (member.isreg() or member.isdir()):
                    raise ArchiveError(
                        f"archive {archive}: member {member.name!r} has unsupported type {member.type!r}"
                    )
                planned.append((member.name, destination, member.isdir()))
                # Written where it was checked: a backslash is a separator, as in a zip archive.
                member.name = member.name.replace("\\", "/")
                if member.isreg():
                    files.append(destination)
            _check_layout(archive, root, planned)
            limits.check_plan([member.size for member in members if member.isreg()])
            read_to_the_end(tar, limits.max_bytes)  # the compressor's checksum, before anything is written
            root.mkdir(parents=True, exist_ok=True)
            tar.extractall(root, members=members, filter="data")
    except (ArchiveError, DiskFullError):
        raise
    except tarfile.FilterError as exc:
        raise ArchiveError(f"archive {archive}: refused by the tar data filter: {exc}") from exc
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(target, exc) from exc
        raise ArchiveError(f"archive {archive} is unreadable or truncated: {exc}") from exc
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, RuntimeError, ValueError) as exc:
        raise ArchiveError(f"archive {archive} is unreadable or truncated: {exc}") from exc
    return sorted(files)


def read_to_the_end(tar: tarfile.TarFile, max_bytes: int) -> None:
    """Read a (compressed) tar stream to its end, so that its checksum (gzip CRC, xz check) is verified.

    tarfile stops at the end-of-archive blocks, before the compressor's trailer; a damaged
    member would otherwise be read without any error. More than ``max_bytes`` after the point
    reached is refused (zeros packed after the end of the archive).
    """
    left = max_bytes
    while chunk := tar.fileobj.read(1 << 20):
        left -= len(chunk)
        if left < 0:
            raise ArchiveError(f"archive {tar.name} has more than {max_bytes >> 20} MiB after its last member; refused")


def _extract_zip(archive: Path, target: Path, limits: _ExtractLimits) -> list[Path]:
    try:
        with zipfile.ZipFile(archive) as zipped:
            infos = zipped.infolist()
            root = target.resolve()
            plan: list[tuple[zipfile.ZipInfo, Path]] = []
            for info in infos:
                destination = _checked_destination(archive, info.filename, root)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ArchiveError(
                        f"archive {archive}: member {info.filename!r} is a symbolic link; links are refused"
                    )
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
                    raise ArchiveError(f"archive {archive}: member {info.filename!r} is a device or FIFO; refused")
                plan.append((info, destination))
            _check_layout(archive, root, [(info.filename, destination, info.is_dir()) for info, destination in plan])
            limits.check_plan([info.file_size for info, _ in plan if not info.is_dir()])
            root.mkdir(parents=True, exist_ok=True)
            files: list[Path] = []
            written = [0]
            for info, destination in plan:
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with zipped.open(info) as source, open(destination, "wb") as sink:
                    limits.copy(source, sink, info.filename, info.file_size, written)
                files.append(destination)
    except (ArchiveError, DiskFullError):
        raise
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise disk_full_error(target, exc) from exc
        raise ArchiveError(f"archive {archive} is unreadable or corrupted: {exc}") from exc
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, RuntimeError, NotImplementedError,
            lzma.LZMAError, ValueError) as exc:  # fmt: skip
        raise ArchiveError(f"archive {archive} is unreadable or corrupted: {exc}") from exc
    return sorted(files)


# --------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------


#: Largest stored image side an import accepts (the paper trains at 256; 4096 holds a full-size radiograph).
MAX_IMPORT_SIZE = 4096


def _check_size(size: int) -> None:
    if not isinstance(size, int) or isinstance(size, bool) or not 8 <= size <= MAX_IMPORT_SIZE:
        raise ConfigError(f"image size must be an integer in 8..{MAX_IMPORT_SIZE} pixels, got {size!r}")


#: Most rows and decompressed bytes a metadata CSV may have (MIMIC-CXR: 377,110 rows, ~60 MiB).
MAX_METADATA_ROWS = 2_000_000
MAX_METADATA_BYTES = 512 << 20
#: Refused rows listed one by one in an import summary; the rest are only counted.
MAX_LISTED_REFUSALS = 1000


#: Longest line of a metadata CSV (a MIMIC line is about 200 characters).
MAX_CSV_LINE = 64 << 10


def _capped_lines(handle, path: Path) -> Iterator[str]:
    """The lines of a CSV, each read with a length cap, the total capped too: a bomb is refused as it is read."""
    total = 0
    while line := handle.readline(MAX_CSV_LINE + 1):
        total += len(line)
        if len(line) > MAX_CSV_LINE or total > MAX_METADATA_BYTES:
            raise DataDirError(
                f"metadata file {path} has a line over {MAX_CSV_LINE} characters or over {MAX_METADATA_BYTES >> 20} MiB "
                "of text (MIMIC-CXR has about 60 MiB); refused as damaged or a decompression bomb"
            )
        yield line


def _read_csv_columns(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a (possibly gzipped) CSV, keeping ``columns``; refuses a file lacking them."""
    if not path.is_file():
        raise DataDirError(f"metadata file {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
            reader = csv.DictReader(_capped_lines(handle, path))
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataDirError(f"metadata file {path} lacks the columns {missing}")
            rows = []
            for row in reader:
                if None in row:
                    raise DataDirError(f"metadata file {path} line {reader.line_num} has more fields than its header")
                if len(rows) >= MAX_METADATA_ROWS:
                    raise DataDirError(
                        f"metadata file {path} has more than {MAX_METADATA_ROWS} rows or {MAX_METADATA_BYTES >> 20} MiB "
                        "of text (MIMIC-CXR has 377,110 rows, about 60 MiB); refused as damaged or a decompression bomb"
                    )
                rows.append({c: (row[c] or "").strip()[:256] for c in columns})
            return rows
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, zlib.error) as exc:
        raise DataDirError(f"metadata file {path} is unreadable: {exc}") from exc


def _load_first(
    candidates: Sequence[Path | str], size: int, refused: list[tuple[str, str]], where: Path, root: Path
) -> np.ndarray | str:
    """Load and resize the first usable image; a string says why none was usable.

    ``candidates`` are paths, or ids of images not found under ``where``; a path that a
    symbolic link takes outside ``root`` is refused unread. Every unusable file gets a
    message in ``refused``.
    """
    unreadable = False
    for candidate in candidates:
        if isinstance(candidate, str) or not candidate.is_file():
            refused.append((str(candidate), f"image file not found in {where}"))
            continue
        if not resolves_inside(candidate, root):
            refused.append((str(candidate), f"image is a link to a file outside {root}; refused, not followed"))
            unreadable = True
            continue
        try:
            return resize(_not_blank(load_grayscale(candidate), candidate), size)
        except ImageError as exc:
            refused.append((str(candidate), str(exc)))
            unreadable = True
    return "image unreadable" if unreadable else "image file missing"


def _not_blank(image: np.ndarray, path: Path) -> np.ndarray:
    """Refuse an all-black or all-white image: a failed export or scan, not a radiograph."""
    if image.max() <= 0.0 or image.min() >= 1.0:
        raise ImageError(f"image {path} is blank (every pixel is {'black' if image.max() <= 0 else 'white'})")
    return image


def _finish(cases: list[Case], out: Path, seed: int, summary: ImportSummary) -> ImportSummary:
    """Split by patient, write the manifest and the vocabulary of the train split."""
    if not cases:
        raise DataDirError(f"no usable case to import into {out}:\n{summary}")
    assignment = patient_split([case.patient_id for case in cases], seed=seed)
    for case in cases:
        case.split = assignment[case.patient_id]
    train_texts = [text for case in cases if case.split == "train" for text in (case.findings, case.impression)]
    Vocabulary.build(train_texts).save(out / VOCAB_NAME)
    write_manifest(out, cases)
    summary.n_cases = len(cases)
    summary.splits = collections.Counter(case.split for case in cases)
    return summary


def _save_pair(out: Path, case_id: str, frontal: np.ndarray, lateral: np.ndarray) -> tuple[str, str]:
    """Write both views of a case (both were loaded first, so no half-written pair)."""
    frontal_path, lateral_path = f"images/{case_id}_frontal.png", f"images/{case_id}_lateral.png"
    save_png(out / frontal_path, frontal)
    save_png(out / lateral_path, lateral)
    return frontal_path, lateral_path


# --------------------------------------------------------------------------------------
# Open-i
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _image_directory(images: Path, out: Path) -> Iterator[Path]:
    """``images`` itself when it is a directory; an archive is extracted to a temporary one."""
    if images.is_dir():
        yield images
        return
    if not images.exists():
        raise DataDirError(f"image directory {images} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=out) as temporary:
        safe_extract(images, temporary)
        yield Path(temporary)


def _index_images(directory: Path, refused: list[tuple[str, str]]) -> dict[str, Path]:
    """Image files below ``directory`` by file stem (``CXR1000_IM-0003-1001``); links out of it are refused."""
    files, outside = files_inside(directory, IMAGE_SUFFIXES)
    refused.extend((str(path), f"a link to outside {directory}; refused, not followed") for path in outside)
    index: dict[str, Path] = {}
    for path in files:
        index.setdefault(path.stem, path)
    return index


def _ranked(image_ids: Sequence[str], views: dict[str, str], preferred: Sequence[str]) -> list[str]:
    """The ids whose view is in ``preferred``, best view first, then report order."""
    ranked = [(preferred.index(views[i]), n, i) for n, i in enumerate(image_ids) if views.get(i) in preferred]
    return [image_id for _, _, image_id in sorted(ranked)]


def import_openi(
    reports: str | os.PathLike,
    images: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 256,
    seed: int = 0,
    metadata_csv: str | os.PathLike | None = None,
    force: bool = False,
) -> ImportSummary:
    """Import Open-i: report XMLs (directory or ``.tgz``) and PNGs (directory or archive).

    Each report is paired with one frontal (PA preferred over AP) and one lateral image,
    the views read from the DICOM metadata CSV shipped in ``torchxrayvision`` (or
    ``metadata_csv``); its structured findings come from the report's MeSH terms. Writes
    ``out/manifest.jsonl``, ``out/images/<case_id>_{frontal,lateral}.png`` at ``size`` pixels
    and ``out/vocab.json`` built from the train split only. ``out`` must be empty, new or an
    earlier Open-i import (``force`` overrides); it is locked against a second writer.
    """

    _check_size(size)
    out, images = Path(out), Path(images)
    if not images.exists():
        raise DataDirError(f"image directory {images} does not exist")
    with own_output_dir(out, "openi-dataset", force=force):
        return _import_openi(reports, images, out, size, seed, metadata_csv)


def _import_openi(
    reports: str | os.PathLike, images: Path, out: Path, size: int, seed: int, metadata_csv: str | os.PathLike | None
) -> ImportSummary:
    from xrg.data.findings import label_text, mesh_to_findings, text_corrections

    if metadata_csv is None:
        from xrg.resources import openi_dicom_metadata_csv

        metadata_csv = openi_dicom_metadata_csv()
    rows = _read_csv_columns(Path(metadata_csv), ("imageid", "View Position"))
    views = {row["imageid"]: row["View Position"].upper() for row in rows}
    collection = load_openi_reports(reports)
    summary = ImportSummary(
        n_cases=0, skipped=collections.Counter(collection.skipped), refused_files=list(collection.errors), out=out
    )
    cases: list[Case] = []
    with _image_directory(images, out) as image_dir:
        files = _index_images(image_dir, summary.refused_files)
        for report in collection.reports:
            frontal_ids = _ranked(report.image_ids, views, OPENI_FRONTAL)
            lateral_ids = _ranked(report.image_ids, views, OPENI_LATERAL)
            if not frontal_ids:
                summary.skipped["no frontal view"] += 1
                continue
            if not lateral_ids:
                summary.skipped["no lateral view"] += 1
                continue
            frontal = _load_first(
                [files.get(i, i) for i in frontal_ids], size, summary.refused_files, images, image_dir
            )
            if isinstance(frontal, str):
                summary.skipped[frontal] += 1
                continue
            lateral = _load_first(
                [files.get(i, i) for i in lateral_ids], size, summary.refused_files, images, image_dir
            )
            if isinstance(lateral, str):
                summary.skipped[lateral] += 1
                continue
            structured, unmapped = mesh_to_findings(report.mesh)
            # as the phantom build does: the side the text names, sternotomy wires it mentions
            structured, _ = text_corrections(structured, label_text(report_text(report.findings, report.impression)))
            summary.unmapped_terms.update(unmapped)
            case_id = f"openi-{report.report_id}"
            frontal_path, lateral_path = _save_pair(out, case_id, frontal, lateral)
            cases.append(
                Case(
                    id=case_id,
                    patient_id=report.report_id,  # Open-i has one study per patient
                    split="train",  # assigned by patient in _finish
                    findings=report.findings,
                    impression=report.impression,
                    structured_findings=list(structured),
                    frontal=frontal_path,
                    lateral=lateral_path,
                    source="openi",
                    mesh=list(report.mesh),
                )
            )
    return _finish(cases, out, seed, summary)


# --------------------------------------------------------------------------------------
# MIMIC-CXR-JPG
# --------------------------------------------------------------------------------------


def _mimic_metadata(root: Path) -> Path:
    for name in (MIMIC_METADATA, MIMIC_METADATA + ".gz"):
        if (root / name).is_file():
            return root / name
    raise DataDirError(f"MIMIC-CXR directory {root} has no {MIMIC_METADATA} or {MIMIC_METADATA}.gz")


def _first_of(views: Sequence[tuple[str, str]], preferred: Sequence[str]) -> list[str]:
    """dicom ids with a preferred view: all of the best view first, in metadata order."""
    return [dicom for position in preferred for dicom, view in views if view == position]


def import_mimic(
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 256,
    seed: int = 0,
    subset: str | None = "p10",
    force: bool = False,
) -> ImportSummary:
    """Import MIMIC-CXR-JPG: one frontal (PA, else AP) and one lateral (LATERAL, else LL) per study.

    Expects ``root/mimic-cxr-2.0.0-metadata.csv[.gz]``, images at
    ``root/files/p10/p10000032/s50414267/<dicom_id>.jpg`` and reports at
    ``root/files/p10/p10000032/s50414267.txt`` or ``root/reports/files/...``. ``subset``
    (``"p10"`` ... ``"p19"``) limits the import to one patient group; ``None`` imports all.
    Findings come from the FINDINGS/IMPRESSION text via the rule-based labeller; the split
    is by ``subject_id``. A ``dicom_id`` that is not a safe id (:data:`xrg.paths.SAFE_ID`) and
    a file that a symbolic link takes outside ``root`` are refused, never read. ``out`` must
    be empty, new or an earlier MIMIC import (``force`` overrides); it is locked.
    """
    _check_size(size)
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise DataDirError(f"MIMIC-CXR directory {root} does not exist")
    if subset is not None and not re.fullmatch(r"p1\d", subset):
        raise ConfigError(f"MIMIC-CXR subset must be one of p10 ... p19 or None, got {subset!r}")
    with own_output_dir(out, "mimic-dataset", force=force):
        return _import_mimic(root, out, size, seed, subset)


def _import_mimic(root: Path, out: Path, size: int, seed: int, subset: str | None) -> ImportSummary:
    from xrg.data.findings import label_text

    metadata = _mimic_metadata(root)
    if not resolves_inside(metadata, root):
        raise DataDirError(f"MIMIC-CXR metadata {metadata} is a link to a file outside {root}; refused, not followed")
    rows = _read_csv_columns(metadata, ("dicom_id", "subject_id", "study_id", "ViewPosition"))
    studies: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    summary = ImportSummary(n_cases=0, skipped=collections.Counter(), refused_files=[], out=out)
    for number, row in enumerate(rows, start=2):
        subject, study = row["subject_id"], row["study_id"]
        if (
            not (subject.isascii() and subject.isdigit() and study.isascii() and study.isdigit())
            or max(len(subject), len(study)) > 20
        ):
            raise DataDirError(
                f"MIMIC-CXR metadata line {number}: subject_id {subject[:40]!r} / study_id {study[:40]!r} are not numbers"
            )
        if not is_safe_id(row["dicom_id"]):
            summary.skipped["unsafe dicom_id"] += 1
            if summary.skipped["unsafe dicom_id"] <= MAX_LISTED_REFUSALS:
                summary.refused_files.append(
                    (
                        f"metadata line {number}",
                        f"dicom_id {row['dicom_id'][:80]!r} is not a safe id; the row is refused",
                    )
                )
            continue
        if subset is None or f"p{subject[:2]}" == subset:
            studies[subject, study].append((row["dicom_id"], row["ViewPosition"].upper()))

    cases: list[Case] = []
    for (subject, study), views in sorted(studies.items(), key=lambda item: (int(item[0][0]), int(item[0][1]))):
        relative = Path(f"p{subject[:2]}", f"p{subject}", f"s{study}")
        frontal_ids = _first_of(views, MIMIC_FRONTAL)
        lateral_ids = _first_of(views, MIMIC_LATERAL)
        if not frontal_ids:
            summary.skipped["no frontal view"] += 1
            continue
        if not lateral_ids:
            summary.skipped["no lateral view"] += 1
            continue
        report_file = next(
            (
                p
                for p in (root / "files" / f"{relative}.txt", root / "reports" / "files" / f"{relative}.txt")
                if p.is_file()
            ),
            None,
        )
        if report_file is not None and not resolves_inside(report_file, root):
            summary.skipped["report is a link outside the root"] += 1
            summary.refused_files.append((str(report_file), f"a link to a file outside {root}; refused, not followed"))
            continue
        if report_file is None:
            summary.skipped["report missing"] += 1
            summary.refused_files.append((str(root / "files" / f"{relative}.txt"), "report file not found"))
            continue
        if report_file.stat().st_size > MAX_REPORT_BYTES:
            summary.skipped["report too large"] += 1
            summary.refused_files.append((str(report_file), f"over {MAX_REPORT_BYTES} bytes; a report is a few kB"))
            continue
        try:
            findings, impression = split_report_text(report_file.read_text(encoding="utf-8"))
        except EmptyReportError as exc:
            summary.skipped["empty report"] += 1
            summary.refused_files.append((str(report_file), str(exc)))
            continue
        except (OSError, UnicodeDecodeError, ReportError) as exc:
            summary.skipped["report unreadable"] += 1
            summary.refused_files.append((str(report_file), f"unreadable report: {exc}"))
            continue
        study_dir = root / "files" / relative
        frontal = _load_first(
            [study_dir / f"{d}.jpg" for d in frontal_ids], size, summary.refused_files, study_dir, root
        )
        if isinstance(frontal, str):
            summary.skipped[frontal] += 1
            continue
        lateral = _load_first(
            [study_dir / f"{d}.jpg" for d in lateral_ids], size, summary.refused_files, study_dir, root
        )
        if isinstance(lateral, str):
            summary.skipped[lateral] += 1
            continue
        case_id = f"mimic-s{study}"
        frontal_path, lateral_path = _save_pair(out, case_id, frontal, lateral)
        cases.append(
            Case(
                id=case_id,
                patient_id=subject,
                split="train",  # assigned by patient in _finish
                findings=findings,
                impression=impression,
                structured_findings=list(label_text(report_text(findings, impression))),
                frontal=frontal_path,
                lateral=lateral_path,
                source="mimic",
            )
        )
    return _finish(cases, out, seed, summary)
