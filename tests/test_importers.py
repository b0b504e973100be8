"""Tests of xrg.data.importers: safe extraction, Open-i and MIMIC-CXR imports."""

from __future__ import annotations

import csv
import gzip
import io
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xrg.data.findings import Finding
from xrg.data.images import load_grayscale
from xrg.data.importers import ImportSummary, import_mimic, import_openi, safe_extract
from xrg.data.manifest import read_manifest
from xrg.data.reports import Vocabulary
from xrg.errors import ArchiveError, ConfigError, DataDirError

SIZE = 32


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def _png(path: Path, value: int, mode: str = "L", size: tuple[int, int] = (40, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB":
        Image.new("RGB", size, (value, 0, 255 - value)).save(path)
    elif mode == "I;16":
        Image.fromarray(np.full(size[::-1], value * 257, dtype=np.uint16)).save(path)
    else:
        Image.new("L", size, value).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")
    return path


def _corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return path


# --- safe_extract ----------------------------------------------------------------------


def _tar(path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz" if path.suffix == ".tgz" else "w") as archive:
        for member in members:
            if isinstance(member, tarfile.TarInfo):
                archive.addfile(member)
            else:
                name, data = member
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def test_safe_extract_tar_and_zip(tmp_path):
    tgz = _tar(tmp_path / "good.tgz", [("./a/1.xml", b"one"), ("a/b/2.xml", b"two")])
    files = safe_extract(tgz, tmp_path / "out-tar")
    assert files == [tmp_path / "out-tar/a/1.xml", tmp_path / "out-tar/a/b/2.xml"]
    assert (tmp_path / "out-tar/a/b/2.xml").read_bytes() == b"two"
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as archive:
        archive.writestr("dir/", "")
        archive.writestr("dir/x.png", b"png")
    assert safe_extract(tmp_path / "good.zip", tmp_path / "out-zip") == [tmp_path / "out-zip/dir/x.png"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (("../evil.txt", b"x"), "escapes"),
        (("a/../../evil.txt", b"x"), "escapes"),
        (("/abs/evil.txt", b"x"), "absolute"),
        (_special("a/link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (_special("a/hard", tarfile.LNKTYPE, "a/ok.txt"), "hard link"),
        (_special("a/fifo", tarfile.FIFOTYPE), "device or FIFO"),
        (_special("a/tty", tarfile.CHRTYPE), "device or FIFO"),
    ],
)
def test_safe_extract_refuses_tar_escapes_and_writes_nothing(tmp_path, bad, message):
    archive = _tar(tmp_path / "evil.tar", [("a/ok.txt", b"fine"), bad, ("z/late.txt", b"late")])
    before = _tree(tmp_path)
    with pytest.raises(ArchiveError, match=message) as info:
        safe_extract(archive, tmp_path / "target")
    assert "evil.tar" in str(info.value)
    assert _tree(tmp_path) == before  # nothing written, not even the target or the good member
    assert not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.parametrize(
    "name, mode, message",
    [
        ("../evil.txt", 0o644, "escapes"),
        ("/abs.txt", 0o644, "absolute"),
        ("..\\evil.txt", 0o644, "escapes"),
        ("link", stat.S_IFLNK | 0o777, "symbolic link"),
    ],
)
def test_safe_extract_refuses_zip_escapes_and_writes_nothing(tmp_path, name, mode, message):
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ok.txt", b"fine")
        info = zipfile.ZipInfo(name)
        info.external_attr = (stat.S_IFREG | mode if not stat.S_ISLNK(mode) else mode) << 16
        archive.writestr(info, b"/etc/passwd")
    before = _tree(tmp_path)
    with pytest.raises(ArchiveError, match=message):
        safe_extract(path, tmp_path / "target")
    assert _tree(tmp_path) == before


def test_safe_extract_refuses_a_path_through_an_existing_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "link").symlink_to(outside, target_is_directory=True)
    archive = _tar(tmp_path / "a.tar", [("link/file.txt", b"x")])
    with pytest.raises(ArchiveError, match="outside"):
        safe_extract(archive, target)
    assert list(outside.iterdir()) == []


def test_safe_extract_unreadable_archives(tmp_path):
    with pytest.raises(ArchiveError, match="does not exist"):
        safe_extract(tmp_path / "nope.tgz", tmp_path / "t")
    (tmp_path / "junk.tgz").write_bytes(b"not an archive at all")
    with pytest.raises(ArchiveError, match="junk.tgz"):
        safe_extract(tmp_path / "junk.tgz", tmp_path / "t")
    good = _tar(tmp_path / "good.tar", [(f"f{i}.bin", bytes(range(256)) * 40) for i in range(5)])
    (tmp_path / "cut.tar").write_bytes(good.read_bytes()[:12_000])
    with pytest.raises(ArchiveError, match="cut.tar"):
        safe_extract(tmp_path / "cut.tar", tmp_path / "t2")


# --- Open-i ----------------------------------------------------------------------------


def _openi_xml(number: int, findings: str, impression: str, mesh: list[str], images: list[str]) -> bytes:
    majors = "".join(f"<major>{m}</major>" for m in mesh)
    parents = "".join(f'<parentImage id="{i}"><figureId>F</figureId></parentImage>' for i in images)
    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id="CXR{number}"/>'
        f"<MedlineCitation><Article><Abstract>"
        f'<AbstractText Label="FINDINGS">{findings}</AbstractText>'
        f'<AbstractText Label="IMPRESSION">{impression}</AbstractText>'
        f"</Abstract></Article></MedlineCitation><MeSH>{majors}</MeSH>{parents}</eCitation>"
    ).encode()


@pytest.fixture
def openi(tmp_path):
    """Reports 1, 2, 7, 8 import; 3 (colour lateral), 4 (no lateral), 5 (lateral file missing), 6 (empty) do not."""
    reports = {
        1: ("Mild cardiomegaly. Word alpha.", "Cardiomegaly.", ["Cardiomegaly/mild"]),
        2: ("Heart normal. Word bravo.", "No acute disease.", ["normal"]),
        3: ("Heart normal.", "Normal.", ["normal"]),
        4: ("Heart normal.", "Normal.", ["normal"]),
        5: ("Heart normal.", "Normal.", ["normal"]),
        6: ("", "", ["normal"]),
        7: ("Left effusion. Word charlie.", "Effusion.", ["Pleural Effusion/left/small"]),
        8: ("Lungs clear. Median sternotomy wires. Word delta.", "Normal chest.", ["normal", "Aorta/tortuous"]),
    }
    views = {  # image id -> (View Position, how the file is made)
        1: [("PA", 10), ("LL", 20)],
        2: [("PA", "corrupt"), ("AP", 30), ("LATERAL", 40)],
        3: [("PA", 50), ("LL", "rgb")],
        4: [("PA", 60), ("", 70)],
        5: [("PA", 80), ("LL", "missing")],
        6: [("PA", 90), ("LL", 100)],
        7: [("AP", "16bit"), ("RL", 120)],
        8: [("PA", 130), ("LATERAL", 140)],
    }
    images = tmp_path / "png"
    rows = []
    xml: dict[str, bytes] = {}
    for number, (findings, impression, mesh) in reports.items():
        ids = [f"CXR{number}_IM-00{number:02d}-{k + 1}001" for k in range(len(views[number]))]
        xml[f"ecgen-radiology/{number}.xml"] = _openi_xml(number, findings, impression, mesh, ids)
        for image_id, (view, how) in zip(ids, views[number]):
            rows.append({"imageid": image_id, "Patient ID": str(number), "View Position": view})
            path = images / f"{image_id}.png"
            if how == "corrupt":
                _corrupt(path)
            elif how == "rgb":
                _png(path, 128, mode="RGB")
            elif how == "16bit":
                _png(path, 110, mode="I;16")
            elif how != "missing":
                _png(path, how)
    reports_tgz = _tar(tmp_path / "NLMCXR_reports.tgz", list(xml.items()))
    metadata = tmp_path / "meta.csv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["imageid", "Patient ID", "View Position"])
        writer.writeheader()
        writer.writerows(rows)
    return reports_tgz, images, metadata


def test_import_openi(tmp_path, openi):
    reports, images, metadata = openi
    out = tmp_path / "data"
    summary = import_openi(reports, images, out, size=SIZE, seed=0, metadata_csv=metadata)
    assert isinstance(summary, ImportSummary) and summary.out == out
    assert summary.n_cases == 4
    assert summary.skipped == {"image unreadable": 1, "no lateral view": 1, "image file missing": 1, "empty report": 1}
    refused = dict(summary.refused_files)
    assert any(
        "CXR2_IM-0002-1001.png" in name and "unreadable or corrupted" in message for name, message in refused.items()
    )
    assert any("CXR3_IM-0003-2001.png" in name and "colour" in message for name, message in refused.items())
    assert any("CXR5_IM-0005-2001" in name and "not found" in message for name, message in refused.items())
    assert "ecgen-radiology/6.xml" in refused
    text = str(summary)
    assert "imported 4 cases" in text and "no lateral view" in text and "Aorta (1)" in text

    cases = {case.id: case for case in read_manifest(out, check_images=True)}
    assert sorted(cases) == ["openi-1", "openi-2", "openi-7", "openi-8"]
    first = cases["openi-1"]
    assert (first.patient_id, first.source, first.frontal) == ("1", "openi", "images/openi-1_frontal.png")
    assert first.findings == "Mild cardiomegaly. Word alpha." and first.mesh == ["Cardiomegaly/mild"]
    assert Finding("cardiomegaly", severity="mild") in first.structured_findings
    assert any(f.kind == "pleural_effusion" and f.side == "left" for f in cases["openi-7"].structured_findings)
    # the text's sternotomy wires join the MeSH findings, as in the phantom build
    assert [f.kind for f in cases["openi-8"].structured_findings if not f.negated] == ["sternotomy"]
    # Pixel values show which file went where: report 2 fell back from the corrupt PA to the AP.
    expected = {"openi-1": (10, 20), "openi-2": (30, 40), "openi-7": (110, 120), "openi-8": (130, 140)}
    for case_id, (frontal, lateral) in expected.items():
        for view, value in ((cases[case_id].frontal, frontal), (cases[case_id].lateral, lateral)):
            pixels = load_grayscale(out / view, expected_size=SIZE)
            assert pixels.mean() == pytest.approx(value / 255, abs=1 / 255)
    assert len(list((out / "images").iterdir())) == 8  # no half-written pairs of refused reports

    vocab = Vocabulary.load(out / "vocab.json")
    train = [c for c in cases.values() if c.split == "train"]
    assert 0 < len(train) < len(cases)
    assert vocab == Vocabulary.build(t for c in train for t in (c.findings, c.impression))
    for case in cases.values():
        marker = case.findings.split("Word ")[1].rstrip(".").lower()
        assert (marker in vocab) == (case.split == "train")


def test_import_openi_is_deterministic_and_reads_image_archives(tmp_path, openi):
    reports, images, metadata = openi
    first = import_openi(reports, images, tmp_path / "a", size=SIZE, seed=3, metadata_csv=metadata)
    with zipfile.ZipFile(tmp_path / "png.zip", "w") as archive:
        for path in images.iterdir():
            archive.write(path, f"png/{path.name}")
    second = import_openi(reports, tmp_path / "png.zip", tmp_path / "b", size=SIZE, seed=3, metadata_csv=metadata)
    assert (first.n_cases, first.skipped, first.splits) == (second.n_cases, second.skipped, second.splits)
    splits_a = {c.id: c.split for c in read_manifest(tmp_path / "a")}
    assert splits_a == {c.id: c.split for c in read_manifest(tmp_path / "b")}
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        ".xrg-dir.json",
        ".xrg.lock",
        "images",
        "manifest.jsonl",
        "vocab.json",
    ]
    assert (tmp_path / "a/manifest.jsonl").read_bytes() == (tmp_path / "b/manifest.jsonl").read_bytes()


def test_import_openi_refuses_bad_inputs(tmp_path, openi):
    reports, images, metadata = openi
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("imageid,Modality\nCXR1_IM-0001-1001,CR\n")
    with pytest.raises(DataDirError, match="View Position"):
        import_openi(reports, images, tmp_path / "o", size=SIZE, metadata_csv=bad_csv)
    with pytest.raises(DataDirError, match="does not exist"):
        import_openi(reports, tmp_path / "no-images", tmp_path / "o", size=SIZE, metadata_csv=metadata)
    with pytest.raises(ConfigError):
        import_openi(reports, images, tmp_path / "o", size=0, metadata_csv=metadata)
    empty_images = tmp_path / "empty"
    empty_images.mkdir()
    with pytest.raises(DataDirError, match="no usable case"):
        import_openi(reports, empty_images, tmp_path / "o", size=SIZE, metadata_csv=metadata)
    assert not (tmp_path / "o" / "manifest.jsonl").exists()


# --- MIMIC-CXR -------------------------------------------------------------------------

MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  None.

 FINDINGS:
 
 {findings}

 IMPRESSION:
 
 {impression}
"""  # noqa: W293 (the blank lines with a space are part of the MIMIC layout)


@pytest.fixture
def mimic(tmp_path):
    root = tmp_path / "mimic"
    studies = [  # subject, study, [(dicom, view, how)], report: text | None (missing) | "reports/" tree
        (
            "10000032",
            "50414267",
            [("d1", "PA", 10), ("d2", "LATERAL", 20)],
            ("files", "Mild cardiomegaly.", "Cardiomegaly."),
        ),
        (
            "10000032",
            "50000001",
            [("d3", "LL", 30), ("d4", "AP", 40), ("d5", "LATERAL", 50)],
            ("reports", "No pleural effusion.", "Normal."),
        ),
        ("10000764", "57375967", [("d6", "AP", 60)], ("files", "Clear.", "Normal.")),
        ("10000764", "57375968", [("d7", "PA", "corrupt"), ("d8", "LATERAL", 80)], ("files", "Clear.", "Normal.")),
        ("10000898", "50771383", [("d9", "PA", 90), ("d10", "LATERAL", 100)], None),
        ("10000898", "54205396", [("d11", "PA", 110), ("d12", "LATERAL", 120)], ("files", "", "")),
        (
            "10000898",
            "54205397",
            [("d13", "PA", 130), ("d14", "LATERAL", 140)],
            ("files", "Small right pneumothorax.", "Pneumothorax."),
        ),
        ("11000011", "59000000", [("d15", "PA", 150), ("d16", "LATERAL", 160)], ("files", "Clear lungs.", "Normal.")),
    ]
    rows = []
    for subject, study, images, report in studies:
        relative = Path("files", f"p{subject[:2]}", f"p{subject}", f"s{study}")
        for dicom, view, how in images:
            rows.append({"dicom_id": dicom, "subject_id": subject, "study_id": study, "ViewPosition": view})
            path = root / relative / f"{dicom}.jpg"
            _corrupt(path) if how == "corrupt" else _png(path, how)
        if report is not None:
            tree, findings, impression = report
            text = (
                MIMIC_REPORT.format(findings=findings, impression=impression)
                if findings
                else " FINAL REPORT\n EXAMINATION: CHEST\n"
            )
            path = (root / "reports" if tree == "reports" else root) / f"{relative}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as handle:
        writer = csv.DictWriter(
            handle,
            fieldnames=["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition"],
        )
        writer.writeheader()
        writer.writerows({**row, "PerformedProcedureStepDescription": "CHEST"} for row in rows)
    return root


def test_import_mimic(tmp_path, mimic):
    out = tmp_path / "data"
    summary = import_mimic(mimic, out, size=SIZE, seed=0)
    assert summary.n_cases == 3
    assert summary.skipped == {"no lateral view": 1, "image unreadable": 1, "report missing": 1, "empty report": 1}
    assert any(name.endswith("d7.jpg") for name, _ in summary.refused_files)
    assert any(name.endswith("s50771383.txt") and "not found" in message for name, message in summary.refused_files)
    cases = {case.id: case for case in read_manifest(out, check_images=True)}
    assert sorted(cases) == ["mimic-s50000001", "mimic-s50414267", "mimic-s54205397"]
    first = cases["mimic-s50414267"]
    assert (first.patient_id, first.source) == ("10000032", "mimic")
    assert (first.findings, first.impression) == ("Mild cardiomegaly.", "Cardiomegaly.")
    assert any(f.kind == "cardiomegaly" and not f.negated for f in first.structured_findings)
    assert cases["mimic-s50000001"].findings == "No pleural effusion."  # report from the reports/ tree
    assert any(f.kind == "pneumothorax" and not f.negated for f in cases["mimic-s54205397"].structured_findings)
    # Patient-level split: both studies of subject 10000032 share a split.
    assert cases["mimic-s50000001"].split == cases["mimic-s50414267"].split
    # View choice: PA over AP, LATERAL over LL (pixel values show the file used).
    expected = {"mimic-s50414267": (10, 20), "mimic-s50000001": (40, 50), "mimic-s54205397": (130, 140)}
    for case_id, (frontal, lateral) in expected.items():
        for view, value in ((cases[case_id].frontal, frontal), (cases[case_id].lateral, lateral)):
            assert load_grayscale(out / view).mean() == pytest.approx(value / 255, abs=3 / 255)  # JPEG
    assert (out / "vocab.json").is_file()


def test_import_mimic_subsets_and_bad_roots(tmp_path, mimic):
    everything = import_mimic(mimic, tmp_path / "all", size=SIZE, subset=None)
    assert everything.n_cases == 4
    assert "mimic-s59000000" in {c.id for c in read_manifest(tmp_path / "all")}
    with pytest.raises(DataDirError, match="no usable case"):
        import_mimic(mimic, tmp_path / "p12", size=SIZE, subset="p12")
    with pytest.raises(ConfigError, match="subset"):
        import_mimic(mimic, tmp_path / "x", subset="p1")
    with pytest.raises(DataDirError, match="does not exist"):
        import_mimic(tmp_path / "nowhere", tmp_path / "x")
    with pytest.raises(DataDirError, match="metadata"):
        import_mimic(tmp_path, tmp_path / "x")
