"""Untrusted files: images, archives, checkpoints and configs someone else made.

* Images through :func:`load_grayscale` and both importers: corrupted and truncated PNG/JPEG
  (fixed cases and hypothesis-mutated bytes), colour, CMYK, bilevel, float and out-of-range
  32-bit images, 16-bit, palette, wrong size, tiny, all-black, decompression-bomb headers, and
  views whose file order contradicts the metadata. The importers name every refused file with
  its reason and import the rest.
* Archives through :func:`safe_extract`: hypothesis-built tar and zip archives whose members
  have absolute paths, ``..``, backslashes, drive letters, symbolic and hard links, devices
  and FIFOs. The filesystem around the target is listed before and after: nothing may appear
  outside it, and a refused archive writes nothing at all.
* Checkpoints: truncated at many offsets, bytes replaced, another kind, another model,
  another vocabulary, another major version, a plain state dict, and pickles whose
  ``__reduce__`` would run code (create a marker file): the marker never appears and the
  error names the refused global — also for a plain ``pickle.dump`` (protocol 4/5), which
  torch refuses before reaching any global, and for an instance of any other class. A cut or
  garbled pickle is called truncated or corrupt, a plain pickle of plain values not a checkpoint. Profiles and overrides with YAML code tags are refused too.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import pickle
import re
import stat
import struct
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.control import currently_in_test_context, event
from PIL import Image

from xrg.checkpoint import INTEGRITY_KEY, load_checkpoint, payload_digest, save_checkpoint
from xrg.cli import main
from xrg.config import parse_overrides
from xrg.data.images import load_grayscale
from xrg.data.importers import import_mimic, import_openi, safe_extract
from xrg.data.manifest import read_manifest
from xrg.data.reports import Vocabulary
from xrg.errors import ArchiveError, CheckpointError, ConfigError, ImageError
from xrg.pipelines import XRayGANPipeline
from xrg.profiles import load_profile
from xrg.train.vcn import VCNTrainConfig

from ._helpers import TINY, random_checkpoint, resealed, tree

pytestmark = pytest.mark.filterwarnings(
    "ignore:Duplicate name:UserWarning",  # fuzzed zip archives repeat names on purpose
    "ignore:Detected pickle protocol:UserWarning",  # torch's note on the plain-pickle payloads
)

EXAMPLES = {"image_bytes": 150, "tar": 120, "zip": 80, "checkpoint_bytes": 40}


def fuzz(name: str):
    return settings(
        max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip


# --------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def radiograph(size: int = 48, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size)) * 200 + 20).astype(np.uint8)


GOOD_PNG = encode(Image.fromarray(radiograph()))
GOOD_JPEG = encode(Image.fromarray(radiograph()), "JPEG")


def png_with_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels over almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


def colour() -> bytes:
    rgb = np.stack([radiograph(), radiograph(seed=1), radiograph(seed=2)], axis=-1)
    return encode(Image.fromarray(rgb))


BAD_IMAGES = {
    "garbage.png": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "unreadable or corrupted"),
    "empty.png": (b"", "unreadable or corrupted"),
    "text.png": (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "unreadable or corrupted"),
    "cut-header.png": (GOOD_PNG[:30], "unreadable or corrupted"),
    "cut-data.png": (GOOD_PNG[: len(GOOD_PNG) // 2], "unreadable or corrupted"),
    "cut-start.jpg": (GOOD_JPEG[:100], "unreadable or corrupted"),
    "cut-data.jpg": (GOOD_JPEG[: len(GOOD_JPEG) // 2], "unreadable or corrupted"),
    "colour.png": (colour(), "colour image"),
    "colour.jpg": (encode(Image.open(io.BytesIO(colour())), "JPEG"), "colour image"),
    "cmyk.jpg": (encode(Image.new("CMYK", (32, 32), (10, 20, 30, 0)), "JPEG"), "unsupported mode 'CMYK'"),
    "bilevel.png": (encode(Image.new("1", (32, 32), 1)), "unsupported mode '1'"),
    "float.tif": (encode(Image.fromarray(np.full((32, 32), 2.5, np.float32)), "TIFF"), "unsupported mode 'F'"),
    "int32-high.tif": (
        encode(Image.fromarray(np.full((32, 32), 70_000, np.int32)), "TIFF"),
        "outside the 16-bit range",
    ),
    "int32-negative.tif": (
        encode(Image.fromarray(np.full((32, 32), -3, np.int32)), "TIFF"),
        "outside the 16-bit range",
    ),
    "tiny.png": (encode(Image.new("L", (4, 4), 99)), "unusable shape"),
    "bomb.png": (png_with_header(100_000, 100_000), "decompression bomb"),
    "large.png": (png_with_header(12_000, 12_000), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_files_are_image_errors_naming_the_file(tmp_path, name):
    data, reason = BAD_IMAGES[name]
    (tmp_path / name).write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no PIL warning leaks either
        with pytest.raises(ImageError) as caught:
            load_grayscale(tmp_path / name)
    assert str(tmp_path / name) in str(caught.value) and reason in str(caught.value)


def test_greyscale_variants_are_accepted_and_scaled(tmp_path):
    grey = radiograph()
    cases = {
        "sixteen.png": (encode(Image.fromarray(grey.astype(np.uint16) * 257)), grey / 255),
        "grey-rgb.png": (encode(Image.fromarray(np.repeat(grey[..., None], 3, axis=2))), grey / 255),
        "grey-rgba.png": (encode(Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 7)]))), grey / 255),
        "palette.png": (encode(Image.fromarray(grey).convert("P")), None),
        "grey-alpha.png": (encode(Image.fromarray(grey).convert("LA")), grey / 255),
        "png-named.jpg": (GOOD_PNG, grey / 255),
        "black.png": (encode(Image.new("L", (32, 32), 0)), np.zeros((32, 32))),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        image = load_grayscale(tmp_path / name)
        assert image.dtype == np.float32 and image.ndim == 2 and 0 <= image.min() and image.max() <= 1, name
        if expected is not None:
            assert np.abs(image - expected).max() <= 1.5 / 255, name
    with pytest.raises(ImageError, match=r"sixteen.png is 48x48, expected 64x64"):
        load_grayscale(tmp_path / "sixteen.png", expected_size=64)
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageError, match="dir.png does not exist"):
        load_grayscale(tmp_path / "dir.png")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scratch")


@fuzz("image_bytes")
@given(
    st.sampled_from(["png", "jpeg"]),
    st.lists(st.tuples(st.floats(0, 1), st.binary(max_size=8)), min_size=1, max_size=8),
    st.floats(0.05, 1.0),
)
def test_mutated_image_bytes(scratch, kind, edits, keep):
    data = bytearray(GOOD_PNG if kind == "png" else GOOD_JPEG)
    for position, replacement in edits:
        at = int(position * (len(data) - 1))
        data[at : at + max(len(replacement), 1)] = replacement
    path = scratch / f"mutated.{kind}"
    path.write_bytes(bytes(data[: max(1, int(len(data) * keep))]))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = load_grayscale(path)
    except ImageError as error:
        assert str(path) in str(error)
        return
    assert image.dtype == np.float32 and image.ndim == 2 and min(image.shape) >= 8
    assert np.isfinite(image).all() and 0 <= image.min() and image.max() <= 1


# --- importers -------------------------------------------------------------------------


def openi_xml(number: int, image_ids: list[str]) -> bytes:
    parents = "".join(f'<parentImage id="{i}"/>' for i in image_ids)
    return (
        f'<eCitation><uId id="CXR{number}"/><Abstract><AbstractText Label="FINDINGS">Heart size normal {number}.'
        f'</AbstractText><AbstractText Label="IMPRESSION">No acute disease.</AbstractText></Abstract>'
        f"<MeSH><major>normal</major></MeSH>{parents}</eCitation>"
    ).encode()


def grey_png(value: int, size: tuple[int, int] = (40, 40)) -> bytes:
    ramp = np.clip(np.arange(size[0])[None, :] // 8 + value, 0, 255).astype(np.uint8)
    return encode(Image.fromarray(np.repeat(ramp, size[1], axis=0)))


#: Bad frontal images of the Open-i import, one report each (the lateral is good).
IMPORT_BAD = {
    "corrupt": (b"\x89PNG\r\n\x1a\n" + b"\0" * 50, "unreadable or corrupted"),
    "truncated": (grey_png(60)[:45], "unreadable or corrupted"),
    "colour": (colour(), "colour image"),
    "black": (encode(Image.new("L", (40, 40), 0)), "blank (every pixel is black)"),
    "white16": (encode(Image.fromarray(np.full((40, 40), 65535, np.uint16))), "blank (every pixel is white)"),
    "tiny": (encode(Image.new("L", (5, 5), 80)), "unusable shape"),
    "bomb": (png_with_header(100_000, 100_000), "decompression bomb"),
}


def test_openi_import_names_every_refused_file_and_keeps_going(tmp_path):
    images, rows, xml = tmp_path / "png", [], {}
    images.mkdir()

    def add(number: int, views: list[tuple[str, bytes | None]]) -> list[str]:
        ids = [f"CXR{number}_IM-{number:04d}-{k + 1}001" for k in range(len(views))]
        xml[f"ecgen-radiology/{number}.xml"] = openi_xml(number, ids)
        for image_id, (view, data) in zip(ids, views):
            rows.append({"imageid": image_id, "View Position": view})
            if data is not None:
                (images / f"{image_id}.png").write_bytes(data)
        return ids

    bad_ids = {}
    for number, (name, (data, _)) in enumerate(sorted(IMPORT_BAD.items()), start=10):
        bad_ids[name] = add(number, [("PA", data), ("LL", grey_png(150))])[0]
    # The lateral is listed first; the metadata says so, and the import must follow it.
    add(1, [("LATERAL", grey_png(200)), ("PA", grey_png(20))])
    add(2, [("PA", grey_png(40)), ("LL", grey_png(220))])
    add(3, [("LL", grey_png(30)), ("LL", grey_png(90))])  # two laterals, no frontal: skipped
    add(4, [("AP", grey_png(70)), ("PA", None), ("RL", grey_png(110))])  # the PA file is missing: AP is used
    add(5, [("PA", IMPORT_BAD["corrupt"][0]), ("AP", grey_png(50)), ("LL", grey_png(120))])  # falls back to AP
    with tarfile.open(tmp_path / "reports.tgz", "w:gz") as archive:
        for name, data in xml.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    metadata = tmp_path / "meta.csv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["imageid", "View Position"])
        writer.writeheader()
        writer.writerows(rows)

    summary = import_openi(tmp_path / "reports.tgz", images, tmp_path / "out", size=32, metadata_csv=metadata)
    assert summary.n_cases == 4
    assert summary.skipped == {"image unreadable": len(IMPORT_BAD), "no frontal view": 1}
    refused = dict(summary.refused_files)
    for name, (_, reason) in IMPORT_BAD.items():
        message = refused[str(images / f"{bad_ids[name]}.png")]
        assert reason in message and bad_ids[name] in message, (name, message)
    assert any("CXR4_IM-0004-2001" in name and "not found" in message for name, message in summary.refused_files)
    assert "refused files" in str(summary)
    cases = {case.id: case for case in read_manifest(tmp_path / "out", check_images=True)}
    assert sorted(cases) == ["openi-1", "openi-2", "openi-4", "openi-5"]
    ramp_mean = (40 // 8 - 1) / 2 / 255  # the ramp adds 0..4 grey levels
    for case_id, frontal, lateral in (("openi-1", 20, 200), ("openi-4", 70, 110), ("openi-5", 50, 120)):
        for view, value in ((cases[case_id].frontal, frontal), (cases[case_id].lateral, lateral)):
            assert load_grayscale(tmp_path / "out" / view).mean() == pytest.approx(
                value / 255 + ramp_mean, abs=1.5 / 255
            )


def test_mimic_import_names_every_refused_file_and_keeps_going(tmp_path):
    root = tmp_path / "mimic"
    rows = []
    bad = {
        "d-corrupt": (b"\xff\xd8\xff" + b"\0" * 40, "unreadable or corrupted"),
        "d-cut": (GOOD_JPEG[: len(GOOD_JPEG) // 3], "unreadable or corrupted"),
        "d-colour": (encode(Image.open(io.BytesIO(colour())), "JPEG"), "colour image"),
        "d-black": (encode(Image.new("L", (40, 40), 0), "JPEG"), "blank"),
    }
    studies = [(f"1000000{i}", f"5000000{i}", dicom, data) for i, (dicom, (data, _)) in enumerate(sorted(bad.items()))]
    studies += [("10000010", "50000010", "d-good", encode(Image.fromarray(radiograph()), "JPEG")),
                ("10000011", "50000011", "d-png", GOOD_PNG)]  # PNG bytes in a .jpg: read by content  # fmt: skip
    for subject, study, dicom, data in studies:
        folder = root / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}"
        folder.mkdir(parents=True)
        (folder / f"{dicom}.jpg").write_bytes(data)
        # The lateral is listed first in the metadata and named like a frontal: the view column decides.
        (folder / "frontal-looking-lateral.jpg").write_bytes(encode(Image.open(io.BytesIO(grey_png(200))), "JPEG"))
        rows += [
            {
                "dicom_id": "frontal-looking-lateral",
                "subject_id": subject,
                "study_id": study,
                "ViewPosition": "LATERAL",
            },
            {"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": "PA"},
        ]
        (folder.parent / f"s{study}.txt").write_text("FINDINGS: Heart normal.\nIMPRESSION: No acute disease.\n")
    with open(root / "mimic-cxr-2.0.0-metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["dicom_id", "subject_id", "study_id", "ViewPosition"])
        writer.writeheader()
        writer.writerows(rows)
    summary = import_mimic(root, tmp_path / "out", size=32)
    assert summary.n_cases == 2 and summary.skipped == {"image unreadable": len(bad)}
    refused = {Path(name).stem: message for name, message in summary.refused_files}
    for dicom, (_, reason) in bad.items():
        assert reason in refused[dicom] and dicom in refused[dicom]
    for case in read_manifest(tmp_path / "out"):  # the LATERAL row's file became the lateral
        assert load_grayscale(tmp_path / "out" / case.lateral).mean() == pytest.approx(202 / 255, abs=3 / 255)
        assert load_grayscale(tmp_path / "out" / case.frontal).mean() < 0.6


# --------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------

HOSTILE_KINDS = ("file",) * 4 + ("dir", "symlink", "hardlink", "chr", "blk", "fifo")
HOSTILE_PART = st.sampled_from(
    ["a", "b", "img.png", "~", " ", "\u00e9", "..", ".", "", "C:", "c:\\x", "..\\..", "OUTSIDE"]
)
HARMLESS_PART = st.sampled_from(["a", "b", "img.png", "~", "-", " ", "\u00e9", ".", "x y", "CXR1_IM-0001-1001.png"])


@st.composite
def member_names(draw, hostile: bool = True) -> str:
    parts = draw(st.lists(HOSTILE_PART if hostile else HARMLESS_PART, min_size=1, max_size=4))
    name = draw(st.sampled_from(["/", "\\"] if hostile else ["/"])).join(parts)
    prefix = draw(st.sampled_from(["", "", "", "./", "/", "ABSOLUTE/"] if hostile else ["", "", "./"]))
    return prefix + name


@st.composite
def archive_members(draw) -> list[tuple[str, str, str]]:
    """``(name, kind, link target)`` triples; half the archives hold hostile members, half only harmless ones
    (which may still clash, a file where another member needs a directory)."""
    hostile_archive = draw(st.booleans())
    members = []
    for _ in range(draw(st.integers(1, 5))):
        hostile = hostile_archive and draw(st.booleans())
        kind = draw(st.sampled_from(HOSTILE_KINDS if hostile else ("file", "file", "file", "dir")))
        link = ""
        if "link" in kind:
            link = draw(st.one_of(member_names(), st.sampled_from(["/etc/passwd", "..", "ABSOLUTE/secret", "a"])))
        members.append((draw(member_names(hostile)), kind, link))
    return members


def resolve_names(members, sandbox: Path) -> list[tuple[str, str, str]]:
    """``ABSOLUTE/`` and ``OUTSIDE`` point into the sandbox, so a write through them would be seen."""

    def fix(text: str) -> str:
        return text.replace("ABSOLUTE/", f"{sandbox}/outside/").replace("OUTSIDE", f"{sandbox}/outside/x")

    return [(fix(name), kind, fix(link)) for name, kind, link in members]


def write_tar(path: Path, members) -> None:
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w", format=tarfile.GNU_FORMAT) as archive:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            data = b""
            if kind == "file":
                data = f"content of {name}".encode()
                info.size = len(data)
            info.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
                         "fifo": tarfile.FIFOTYPE}[kind]  # fmt: skip
            info.linkname = link
            archive.addfile(info, io.BytesIO(data) if kind == "file" else None)


def write_zip(path: Path, members) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        for name, kind, link in members:
            info = zipfile.ZipInfo(name if kind != "dir" or name.endswith("/") else name + "/")
            mode = {"file": stat.S_IFREG | 0o644, "dir": stat.S_IFDIR | 0o755, "symlink": stat.S_IFLNK | 0o777,
                    "hardlink": stat.S_IFREG | 0o644, "chr": stat.S_IFCHR | 0o644, "blk": stat.S_IFBLK | 0o644,
                    "fifo": stat.S_IFIFO | 0o644}[kind]  # fmt: skip
            info.external_attr = mode << 16
            archive.writestr(info, link.encode() if kind == "symlink" else f"content of {name}".encode())


def check_extraction(sandbox: Path, archive: Path) -> None:
    """Extract into ``sandbox/target``: files only inside it, and nothing at all outside or on refusal."""
    (sandbox / "outside").mkdir()
    (sandbox / "outside" / "secret").write_text("keep")
    target = sandbox / "deep" / "target"
    target.mkdir(parents=True)
    (target / "existing.txt").write_text("already here")
    before = tree(sandbox)
    try:
        files = safe_extract(archive, target)
    except ArchiveError as error:
        assert str(archive) in str(error)
        assert tree(sandbox) == before, "a refused archive wrote something"
        if currently_in_test_context():
            event("refused: " + re.sub(r"'.*'|\(.*\)|/\S*", "…", str(error).split(": ", 1)[1])[:60])
        return
    if currently_in_test_context():
        event("extracted")
    after = tree(sandbox)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    assert all(p.startswith("deep/target/") for p in changed), sorted(changed)
    assert all(kind in ("file", "dir") for p, (kind, _) in after.items() if p.startswith("deep/target/"))
    root = target.resolve()
    for file in files:
        assert file.is_file() and not file.is_symlink() and root in file.resolve().parents
    assert (sandbox / "outside" / "secret").read_text() == "keep"


@fuzz("tar")
@given(archive_members(), st.sampled_from([".tar", ".tgz"]))
def test_fuzzed_tar_archives_never_write_outside_the_target(members, suffix):
    with tempfile.TemporaryDirectory() as temporary:
        sandbox = Path(temporary)
        archive = sandbox / f"archive{suffix}"
        write_tar(archive, resolve_names(members, sandbox))
        check_extraction(sandbox, archive)


@fuzz("zip")
@given(archive_members())
def test_fuzzed_zip_archives_never_write_outside_the_target(members):
    with tempfile.TemporaryDirectory() as temporary:
        sandbox = Path(temporary)
        archive = sandbox / "archive.zip"
        write_zip(archive, resolve_names(members, sandbox))
        check_extraction(sandbox, archive)


@pytest.mark.parametrize(
    "members",
    [
        [("link", "symlink", "ABSOLUTE/"), ("link/evil", "file", "")],  # a file written through a link
        [("dir", "dir", ""), ("dir/link", "symlink", "../.."), ("dir/link/evil", "file", "")],
        [("passwd", "hardlink", "/etc/passwd")],
        [("ok.txt", "file", ""), ("ABSOLUTE/abs.txt", "file", "")],  # good member first: still nothing written
        [("ok.txt", "file", ""), ("a/../../escape.txt", "file", "")],
        [("ok.txt", "file", ""), ("..\\..\\escape.txt", "file", "")],
        [("ok.txt", "file", ""), ("C:/escape.txt", "file", "")],
        [("null", "chr", ""), ("disk", "blk", ""), ("pipe", "fifo", "")],
        [("a", "file", ""), ("a/b", "file", "")],  # a file used as a directory
    ],
    ids=["through-symlink", "symlink-chain", "hardlink", "absolute", "dotdot", "backslash", "drive", "devices",
         "file-as-dir"],
)  # fmt: skip
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_known_archive_attacks_are_refused_without_writing(tmp_path, members, kind):
    archive = tmp_path / f"attack.{kind}"
    (write_tar if kind == "tar" else write_zip)(archive, resolve_names(members, tmp_path))
    check_extraction(tmp_path, archive)
    assert not any(tmp_path.rglob("escape.txt")) and not any(tmp_path.rglob("evil"))


# --------------------------------------------------------------------------------------
# Checkpoints and configs
# --------------------------------------------------------------------------------------

VOCAB = Vocabulary.build(["The heart is normal. The lungs are clear. No effusion."])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("checkpoint") / "checkpoint.pt", TINY, VOCAB)


def refuses(path: Path, *phrases: str) -> str:
    """Load ``path`` as the pipeline and as ``load_checkpoint`` does; both must refuse it naming it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's note on unusual pickle protocols
        with pytest.raises(CheckpointError) as from_pipeline:
            XRayGANPipeline.from_checkpoint(path)
    message = str(from_pipeline.value)
    assert str(path) in message and all(phrase in message for phrase in phrases), message
    return message


def test_the_checkpoint_fixture_loads(checkpoint):
    output = XRayGANPipeline.from_checkpoint(checkpoint)("The heart is normal.")
    assert output.frontal.shape == (1, 32, 32)


@pytest.mark.parametrize("where", [0, 1, 64, 512, 4096, 0.25, 0.5, 0.75, 0.9, 0.99, -100, -22, -1])
def test_truncated_checkpoints(tmp_path, checkpoint, where):
    data = checkpoint.read_bytes()
    if isinstance(where, float):
        cut = int(len(data) * where)
    else:
        cut = where if where >= 0 else len(data) + where
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:cut])
    refuses(path, "truncated or corrupt")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path, "xraygan")


@fuzz("checkpoint_bytes")
@given(st.lists(st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=16)), min_size=1, max_size=4))
def test_checkpoints_with_bytes_replaced(scratch, checkpoint, edits):
    data = bytearray(checkpoint.read_bytes())
    for position, replacement in edits:
        at = int(position * (len(data) - 1))
        data[at : at + len(replacement)] = replacement
    path = scratch / "mutated.pt"
    path.write_bytes(bytes(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pipe = XRayGANPipeline.from_checkpoint(path)
    except CheckpointError as error:
        assert str(path) in str(error)
        return
    # What loads is exactly what was saved: damage inside a tensor or value is refused by the
    # checksum, so only bytes nothing reads (zip padding, unused records) can change unnoticed.
    original = torch.load(checkpoint, weights_only=True)
    damaged = torch.load(path, weights_only=True)
    assert payload_digest(damaged) == payload_digest(original)
    output = pipe("The heart is normal.")
    assert output.frontal.shape == (1, 32, 32)


def test_a_changed_tensor_value_is_refused_by_the_checksum(tmp_path, checkpoint):
    payload = torch.load(checkpoint, weights_only=True)
    generator = payload["state"]["generator"]
    name = next(key for key, value in generator.items() if value.is_floating_point() and value.numel())
    generator[name].view(-1)[0] += 1e-3  # one weight, slightly: the file parses and the model would run
    torch.save(payload, tmp_path / "edited.pt")
    refuses(tmp_path / "edited.pt", "damaged", "checksum")
    payload.pop(INTEGRITY_KEY)
    torch.save(payload, tmp_path / "unsealed.pt")
    refuses(tmp_path / "unsealed.pt", "no sha256-walk-v1 checksum")


def test_checkpoints_of_other_kinds_models_vocabularies_and_versions(tmp_path, checkpoint):
    payload = torch.load(checkpoint, weights_only=True)

    def variant(name: str, **changes) -> Path:
        """A checkpoint as xrg would write it with these changes (checksum recomputed)."""
        path = tmp_path / f"{name}.pt"
        torch.save(resealed({**payload, **changes}), path)
        return path

    save_checkpoint(tmp_path / "vcn.pt", "vcn", VCNTrainConfig(), VOCAB, state={})
    refuses(tmp_path / "vcn.pt", "is a 'vcn' checkpoint, expected 'xraygan'")
    torch.save(payload["state"]["generator"], tmp_path / "state_dict.pt")  # someone's bare state dict
    refuses(tmp_path / "state_dict.pt", "not an xrg checkpoint")
    refuses(variant("future", xrg_version="99.0.0"), "xrg 99.0.0", "different major version")
    refuses(variant("unversioned", xrg_version=None), "different major version")
    refuses(variant("no-config", config=None), "has no config")
    wider = dataclasses.replace(TINY, model=dataclasses.replace(TINY.model, hidden=16))
    refuses(variant("other-model", model_config={**payload["model_config"], "hidden": 16}), "does not match the model")
    other_words = Vocabulary.build(["entirely different words here, many more of them than before"])
    refuses(variant("other-vocabulary", vocabulary=other_words.to_dict()), "does not match the model")
    edited = {**payload["vocabulary"], "words": [*payload["vocabulary"]["words"][:-1], "tampered"]}
    refuses(variant("edited-vocabulary", vocabulary=edited), "fingerprint does not match")
    refuses(variant("bad-config", model_config={**payload["model_config"], "hidden": "wide"}), "hidden")
    refuses(variant("no-model-config", model_config=None), "has no model config")
    with pytest.raises(CheckpointError, match="another vocabulary"):
        load_checkpoint(checkpoint, "xraygan", vocabulary=other_words)
    with pytest.raises(CheckpointError, match="model.hidden: 8 → 16"):
        load_checkpoint(checkpoint, "xraygan", config=wider)
    for name in ("future", "other-vocabulary", "vcn"):
        assert main(["generate", "--checkpoint", str(tmp_path / f"{name}.pt"), "--report", "Heart normal.",
                     "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert not (tmp_path / "out").exists()


class MarkerPayload:
    """Unpickling this would run code: create the marker file (via ``open`` or ``os.system``)."""

    def __init__(self, marker: Path, how: str) -> None:
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return os.system, (f"touch {self.marker}",)
        return open, (str(self.marker), "w")


@pytest.mark.parametrize(
    "layout, how, refused_global",
    [
        ("top-level", "system", "posix.system"),
        ("inside-state", "open", "io.open"),
        ("legacy-format", "system", "posix.system"),
        ("plain-pickle-protocol-2", "open", "io.open"),
        ("plain-pickle-protocol-4", "system", "posix.system"),  # torch stops at an opcode it never writes: read by xrg
        ("plain-pickle-protocol-5", "system", "posix.system"),
    ],
)
def test_pickles_with_code_payloads_are_refused_and_never_run(tmp_path, checkpoint, layout, how, refused_global):
    marker = tmp_path / "PWNED"
    evil = MarkerPayload(marker, how)
    path = tmp_path / "checkpoint.pt"
    payload = torch.load(checkpoint, weights_only=True)
    if layout == "top-level":
        torch.save(evil, path)
    elif layout == "inside-state":
        torch.save({**payload, "state": {**payload["state"], "encoder": evil}}, path)
    elif layout == "legacy-format":
        torch.save({**payload, "extra": evil}, path, _use_new_zipfile_serialization=False)
    else:  # a plain pickle (no tensors) renamed to .pt
        header = {key: payload[key] for key in ("format", "kind", "xrg_version", "config", "vocabulary")}
        path.write_bytes(pickle.dumps({**header, "extra": evil}, protocol=int(layout[-1])))
    message = refuses(path, f"refused: it needs the global {refused_global}, {NOT_ALLOWED}")
    assert "truncated or corrupt" not in message
    with pytest.raises(CheckpointError, match=re.escape(f"the global {refused_global}, {NOT_ALLOWED}")):
        load_checkpoint(path, "xraygan")
    assert main(["generate", "--checkpoint", str(path), "--report", "Heart normal.", "--out", str(tmp_path / "o")]) == 2
    assert not marker.exists(), "the pickle payload ran"


NOT_ALLOWED = "which weights_only loading does not allow; only load checkpoints you trust"


class SomeClass:
    """An ordinary class: unpickling an instance imports it (a global weights_only refuses)."""

    def __init__(self) -> None:
        self.value = 1


SOME_CLASS = f"{SomeClass.__module__}.SomeClass"


@pytest.mark.parametrize(
    "how",
    ["torch.save-in-dict", "torch.save-top-level", "pickle.dump", "pickle.dump-protocol-2", "pickle.dump-in-dict"],
)
def test_pickled_objects_of_other_classes_are_refused_naming_the_global(tmp_path, how):
    path = tmp_path / "model.pt"
    if how == "torch.save-in-dict":
        torch.save({"format": "xrg-checkpoint", "x": SomeClass()}, path)
    elif how == "torch.save-top-level":
        torch.save(SomeClass(), path)
    else:
        obj = {"weights": [1.0, 2.0], "model": SomeClass()} if how.endswith("in-dict") else SomeClass()
        path.write_bytes(pickle.dumps(obj, protocol=2 if how.endswith("protocol-2") else pickle.DEFAULT_PROTOCOL))
    message = refuses(path, f"refused: it needs the global {SOME_CLASS}, {NOT_ALLOWED}")
    assert "corrupt" not in message


@pytest.mark.parametrize(
    "content, phrase",
    [
        (pickle.dumps(SomeClass())[:-3], "truncated or corrupt"),  # cut short: globals are not named
        (pickle.dumps(SomeClass(), protocol=2)[:-1], "truncated or corrupt"),
        (b"\x80\x05" + b"garbage" * 10, "truncated or corrupt"),
        (b"garbage" * 10, "truncated or corrupt"),
        (pickle.dumps({"weights": [1.0, 2.0]}), "a plain pickle (pickle.dump), not a torch.save file"),
    ],
    ids=["cut-protocol-5", "cut-protocol-2", "garbage-after-header", "garbage", "plain-pickle-of-plain-values"],
)
def test_damaged_pickles_say_so_and_plain_ones_are_not_checkpoints(tmp_path, content, phrase):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    message = refuses(path, phrase)
    assert "needs the global" not in message


def test_yaml_code_tags_in_profiles_and_overrides_are_refused(tmp_path):
    marker = tmp_path / "PWNED"
    tag = f'!!python/object/apply:os.system ["touch {marker}"]'
    profile = tmp_path / "evil.yaml"
    profile.write_text(f"data: {{image_size: 32}}\nseed: {tag}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(profile)
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides([f"lr={tag}"])
    vocab = tmp_path / "vocab.json"
    vocab.write_text('{"format": "xrg-vocabulary", "version": 1, "words": ["<pad>", "<unk>", {"__reduce__": 1}]}')
    with pytest.raises(Exception, match="non-empty string"):
        Vocabulary.load(vocab)
    assert not marker.exists()


def test_book_params_file_with_a_yaml_code_tag_is_a_config_error(tmp_path):
    from xrg.book import _read_overrides

    params = tmp_path / "params.yaml"
    params.write_text(f'01_data: {{seed: !!python/object/apply:os.system ["touch {tmp_path / "PWNED"}"]}}\n')
    try:
        with pytest.raises(ConfigError):
            _read_overrides(params)
    finally:
        assert not (tmp_path / "PWNED").exists()


def test_inception_weights_file_with_a_code_payload_is_refused(tmp_path):
    pytest.importorskip("torch_fidelity")
    from xrg.eval import metrics

    marker = tmp_path / "PWNED"
    weights = tmp_path / "inception.pth"
    torch.save({"fc.weight": MarkerPayload(marker, "open")}, weights)
    with pytest.raises(ConfigError, match="weights_only=True"):
        metrics._inception_network(str(weights), weights.stat().st_mtime, "cpu")
    assert not marker.exists(), "loading the Inception weights ran the payload"
