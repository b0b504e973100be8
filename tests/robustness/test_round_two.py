"""Robustness, round two: the classes of failure an outside probe of the CLI found.

- untrusted names never become paths (report ids, MIMIC ``dicom_id``, manifest paths,
  symbolic links out of an input tree);
- every size, count and step option is bounded, and archives are extracted within a byte
  budget;
- one run or data directory, one writer (an exclusive lock naming the holder's PID);
- a checkpoint is verified by its checksum (``test_files.py``: a changed tensor value);
- an output directory is not somebody else's (a marker of what made it, ``--force``, and
  images reused only when their recorded hash matches);
- every failure is one line, never a traceback (hypothesis drives the CLI with bad inputs);
- files are written readable as the umask says.

Hypothesis runs derandomised, :data:`EXAMPLES` inputs per property.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from xrg.cli import build_parser, main
from xrg.data.images import save_png
from xrg.data.importers import import_mimic, import_openi, safe_extract
from xrg.data.manifest import Case, read_manifest, write_manifest
from xrg.data.reports import Vocabulary, load_openi_reports, parse_report_xml
from xrg.errors import ArchiveError, DataDirError, DiskFullError, ReportError
from xrg.locks import LOCK_NAME, DirectoryBusyError, directory_lock
from xrg.paths import (
    MARKER_NAME,
    MAX_INPUT_ID,
    SAFE_ID,
    PathsInside,
    check_relative,
    claim_output_dir,
    is_safe_id,
    path_inside,
)

from ._helpers import TINY, random_checkpoint, real_openi_xml, tree, write_synthetic_data

#: Generated inputs per property (derandomised, so every CI run tries the same ones).
EXAMPLES = {
    "ids": 2000,
    "report_uids": 1000,
    "relative_paths": 2000,
    "number_options": 1500,
    "directory_states": 1000,
    "cli_bad_inputs": int(os.environ.get("XRG_CLI_FUZZ", 1000)),
    "file_encodings": 1000,
}


def fuzz(name: str):
    return settings(
        max_examples=EXAMPLES[name], deadline=None, derandomize=True, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )  # fmt: skip


# Names an attacker would try, and text hypothesis builds from path-ish characters.
HOSTILE_IDS = ["x/../../../victim", "../victim", "..", ".", "/etc/passwd", "a/b", "a\\b", "", " ", "CXR1\x00",
               ".hidden", "-rf", "a" * 129, "名前", "C:evil", "x\n"]  # fmt: skip
path_text = st.lists(st.sampled_from(list("ab./\\-_ \x00:~") + ["..", "名", "\n", "CXR1"]), max_size=12).map("".join)


# --------------------------------------------------------------------------------------
# Untrusted identifiers never become paths
# --------------------------------------------------------------------------------------


@fuzz("ids")
@given(st.one_of(path_text, st.sampled_from(HOSTILE_IDS), st.from_regex(SAFE_ID, fullmatch=True)))
def test_an_id_is_a_file_name_inside_its_directory_or_refused(tmp_path_factory, value):
    root = tmp_path_factory.getbasetemp() / "ids-root"
    if is_safe_id(value):
        path = root / "images" / f"openi-{value}_frontal.png"
        assert path.resolve().parent == (root / "images").resolve()  # one name, in that folder
        assert "/" not in value and "\\" not in value and value not in (".", "..") and not value.startswith(".")
    else:
        assert value in HOSTILE_IDS or not SAFE_ID.fullmatch(value) or len(value) > MAX_INPUT_ID


def _openi_report(uid: str, findings: str = "Heart size normal.") -> bytes:
    from xml.sax.saxutils import quoteattr

    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><uId id={quoteattr(uid)}/><MedlineCitation><Article>'
        f'<Abstract><AbstractText Label="FINDINGS">{findings}</AbstractText>'
        '<AbstractText Label="IMPRESSION">Normal chest.</AbstractText></Abstract></Article></MedlineCitation>'
        '<MeSH><major>normal</major></MeSH><parentImage id="IM-1"><figureId>F</figureId></parentImage></eCitation>'
    ).encode()


@fuzz("report_uids")
@given(st.one_of(path_text, st.sampled_from(HOSTILE_IDS)))
def test_a_report_id_that_is_not_a_safe_name_is_refused(uid):
    if "\x00" in uid or "\n" in uid:
        uid = uid.replace("\x00", "").replace("\n", "")  # not expressible in an XML attribute
    try:
        report = parse_report_xml(_openi_report(uid), source="r.xml")
    except ReportError as error:
        assert "not a safe id" in str(error) or "no <uId" in str(error)
        return
    assert is_safe_id(report.report_id)


def test_import_openi_with_a_traversal_uid_writes_nothing_outside_out(tmp_path):
    victim_dir = tmp_path / "victim-dir"
    reports = tmp_path / "reports"
    (reports).mkdir()
    (reports / "1.xml").write_bytes(_openi_report("x/../../../victim-dir/victim"))
    (reports / "2.xml").write_bytes(_openi_report("../victim"))
    images = tmp_path / "png"
    save_png(images / "IM-1.png", np.full((32, 32), 0.5))
    metadata = tmp_path / "meta.csv"
    metadata.write_text("imageid,View Position\nIM-1,PA\n")
    before = tree(tmp_path)
    with pytest.raises(DataDirError, match="no usable case"):
        import_openi(reports, images, tmp_path / "out" / "deep", size=32, metadata_csv=metadata)
    collection = load_openi_reports(reports)
    assert collection.skipped == {"unsafe id": 2}
    assert all("not a safe id" in message for _, message in collection.errors)
    after = {name: value for name, value in tree(tmp_path).items() if not name.startswith("out")}
    assert after == before and not victim_dir.exists()


def test_data_build_with_a_traversal_uid_skips_that_report(tmp_path):
    from xrg.data.build import DataBuildConfig, build_dataset

    reports = tmp_path / "reports"
    reports.mkdir()
    for name, data in real_openi_xml(4):
        (reports / Path(name).name).write_bytes(data)
    (reports / "evil.xml").write_bytes(_openi_report("x/../../../../victim"))
    config = DataBuildConfig(image_size=32, volume_size=32, seed=0, workers=1)
    summary = build_dataset(tmp_path / "data", config, reports_source=reports, progress=False)
    assert summary.skipped_reports == {"unsafe id": 1} and summary.n_cases == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "reports"]
    assert all((tmp_path / "data" / "images").resolve() == p.resolve().parent
               for p in (tmp_path / "data" / "images").iterdir())  # fmt: skip


def _mimic_root(root: Path, dicom_ids: list[str]) -> Path:
    study = root / "files" / "p10" / "p10000001" / "s50000001"
    study.mkdir(parents=True)
    (root / "files" / "p10" / "p10000001" / "s50000001.txt").write_text(
        "FINDINGS: Mild cardiomegaly.\nIMPRESSION: Cardiomegaly.\n"
    )
    rows = [{"dicom_id": d, "subject_id": "10000001", "study_id": "50000001", "ViewPosition": v}
            for d, v in zip(dicom_ids, ["PA", "LATERAL"] * len(dicom_ids))]  # fmt: skip
    for row in rows:
        if is_safe_id(row["dicom_id"]):
            save_png(study / f"{row['dicom_id']}.jpg", np.full((32, 32), 0.4))
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["dicom_id", "subject_id", "study_id", "ViewPosition"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_mimic_dicom_ids_with_traversal_are_refused_unread(tmp_path):
    secret = tmp_path / "secret.jpg"
    save_png(secret, np.full((32, 32), 0.9))
    root = _mimic_root(tmp_path / "mimic", ["../../../../../secret", "d2", "d1"])
    summary = import_mimic(root, tmp_path / "out", size=32)
    assert summary.skipped["unsafe dicom_id"] == 1 and summary.n_cases == 1
    assert any("not a safe id" in message for _, message in summary.refused_files)
    case = read_manifest(tmp_path / "out")[0]
    assert case.frontal == "images/mimic-s50000001_frontal.png"


def test_symbolic_links_out_of_an_input_tree_are_refused_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "system.txt").write_text("FINDINGS: root:x:0:0:secret.\nIMPRESSION: secret.\n")
    save_png(outside / "system.png", np.full((32, 32), 0.5))
    (outside / "system.xml").write_bytes(_openi_report("CXR77", "Secret words unseen."))
    # MIMIC: the report .txt is a link to a system file.
    root = _mimic_root(tmp_path / "mimic", ["d1", "d2"])
    report = root / "files" / "p10" / "p10000001" / "s50000001.txt"
    report.unlink()
    report.symlink_to(outside / "system.txt")
    with pytest.raises(DataDirError, match="no usable case"):
        import_mimic(root, tmp_path / "mimic-out", size=32)
    assert not (tmp_path / "mimic-out" / "vocab.json").exists()
    # Open-i: a report XML and a PNG that are links to files outside the trees.
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "1.xml").write_bytes(_openi_report("CXR1"))
    (reports / "2.xml").symlink_to(outside / "system.xml")
    (reports / "linked-dir").symlink_to(outside, target_is_directory=True)
    collection = load_openi_reports(reports)
    assert [r.report_id for r in collection.reports] == ["1"]
    assert collection.skipped == {"link outside the directory": 2}
    images = tmp_path / "png"
    images.mkdir()
    (images / "IM-1.png").symlink_to(outside / "system.png")
    metadata = tmp_path / "meta.csv"
    metadata.write_text("imageid,View Position\nIM-1,PA\n")
    with pytest.raises(DataDirError, match="no usable case") as refused:
        import_openi(reports, images, tmp_path / "openi-out", size=32, metadata_csv=metadata)
    assert "link to outside" in str(refused.value) or "refused files" in str(refused.value)


@fuzz("relative_paths")
@given(st.one_of(path_text, st.sampled_from(["../x", "/etc/passwd", "images/../../x", "images/a.png", "C:\\x"])))
def test_a_manifest_path_stays_inside_its_directory_or_is_refused(tmp_path_factory, relative):
    root = tmp_path_factory.getbasetemp() / "manifest-root"
    root.mkdir(exist_ok=True)
    try:
        check_relative(relative, "path")
    except DataDirError:
        return
    resolved = path_inside(root, relative, "path").resolve()
    assert resolved == root.resolve() or root.resolve() in resolved.parents


def test_manifest_entries_that_leave_the_data_directory_are_refused(tmp_path):
    data = write_synthetic_data(tmp_path / "data", num_patients=5)
    secret = tmp_path / "secret.png"
    save_png(secret, np.full((32, 32), 0.3))
    cases = read_manifest(data)
    for bad in ("../secret.png", str(secret), "images/../../secret.png"):
        write_manifest(data, [Case(**{**cases[0].__dict__, "frontal": bad}), *cases[1:]])
        with pytest.raises(DataDirError, match="outside"):
            read_manifest(data)
    write_manifest(data, [Case(**{**cases[0].__dict__, "id": "../../x"}), *cases[1:]])
    with pytest.raises(DataDirError, match="not a safe id"):
        read_manifest(data)
    (data / "images" / "linked.png").symlink_to(secret)
    write_manifest(data, [Case(**{**cases[0].__dict__, "frontal": "images/linked.png"}), *cases[1:]])
    with pytest.raises(DataDirError, match="symbolic link"):
        read_manifest(data)


# --------------------------------------------------------------------------------------
# Bounded sizes, counts and steps
# --------------------------------------------------------------------------------------

#: (command words before the option, option, lowest, highest, the other required options)
NUMBER_OPTIONS = [
    (["data", "import-openi"], "--size", 8, 4096, ["--reports", "r", "--images", "i", "--out", "o"]),
    (["data", "import-openi"], "--seed", 0, 2**32 - 1, ["--reports", "r", "--images", "i", "--out", "o"]),
    (["data", "import-mimic"], "--size", 8, 4096, ["--root", "r", "--out", "o"]),
    (["data", "build"], "--image-size", 32, 256, []),
    (["data", "build"], "--max-reports", 3, 100_000, []),
    (["data", "build"], "--workers", 1, 64, []),
    (["data", "build"], "--seed", 0, 2**32 - 1, []),
    (["phantom"], "--size", 32, 256, ["--report", "x"]),
    (["phantom"], "--seed", 0, 2**32 - 1, ["--report", "x"]),
    (["bench", "data"], "--pairs", 1, 10_000, []),
    (["bench", "data"], "--workers", 1, 64, []),
    (["bench", "data"], "--sizes", 32, 256, []),
    (["bench", "variety"], "--patients", 2, 1000, []),
    (["bench", "variety"], "--size", 32, 256, []),
    (["bench", "variety"], "--first-seed", 0, 2**32 - 1, []),
    (["bench", "train"], "--steps", 1, 1000, []),
    (["bench", "train"], "--train-cases", 1, 10_000_000, []),
    (["bench", "generate"], "--n", 1, 10_000, []),
    (["bench", "explorer"], "--n", 1, 1000, ["--run-dir", "r"]),
    (["bench", "explorer"], "--seed", 0, 2**32 - 1, ["--run-dir", "r"]),
    (["train", "xraygan"], "--max-steps", 1, 10**9, ["--data", "d", "--out", "o"]),
    (["train", "baseline"], "--max-steps", 1, 10**9, ["--method", "stackgan", "--data", "d", "--out", "o"]),
    (["train", "vcn"], "--sizes", 8, 1024, ["--data", "d", "--out", "o"]),
    (["train", "pggan"], "--max-steps", 1, 10**9, ["--data", "d", "--out", "o"]),
    (["pggan", "sample"], "--n", 1, 10_000, ["--checkpoint", "c", "--classifier", "k", "--class", "x", "--out", "o"]),
    (
        ["pggan", "sample"],
        "--seed",
        0,
        2**32 - 1,
        ["--checkpoint", "c", "--classifier", "k", "--class", "x", "--out", "o"],
    ),
    (
        ["pggan", "sample"],
        "--max-steps",
        0,
        100_000,
        ["--checkpoint", "c", "--classifier", "k", "--class", "x", "--out", "o"],
    ),
    (["generate"], "--seed", 0, 2**32 - 1, ["--checkpoint", "c", "--report", "x"]),
]


@fuzz("number_options")
@given(
    st.sampled_from(NUMBER_OPTIONS),
    st.one_of(st.integers(-(2**70), 2**70), st.sampled_from(["", "1e9", "ten", "0x10", "3.5"])),
)
def test_every_number_option_has_a_stated_range(capsys, option, value):
    words, name, low, high, required = option
    argv = [*words, *required, name, str(value)]
    in_range = isinstance(value, int) and low <= value <= high
    if in_range:
        args = build_parser().parse_args(argv)
        parsed = getattr(args, name[2:].replace("-", "_"))
        assert parsed in (value, [value])
        return
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"xrg {' '.join(words)}: error: argument {name}") and f"{low}..{high}" in error


def test_library_sizes_are_bounded_too(tmp_path):
    from xrg.errors import ConfigError

    with pytest.raises(ConfigError, match="8..4096"):
        import_openi(tmp_path, tmp_path, tmp_path / "out", size=100_000)
    with pytest.raises(ConfigError, match="8..4096"):
        import_mimic(tmp_path, tmp_path / "out", size=0)
    assert not (tmp_path / "out").exists()


def _zero_zip(path: Path, megabytes: int) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("png/bomb.png", "w", force_zip64=True) as member:
            chunk = bytes(1 << 20)
            for _ in range(megabytes):
                member.write(chunk)
    return path


def test_a_zip_bomb_is_refused_before_anything_is_written(tmp_path):
    bomb = _zero_zip(tmp_path / "bomb.zip", 64)
    assert bomb.stat().st_size < 1 << 20  # 64 MiB of zeros in well under 1 MiB
    with pytest.raises(ArchiveError, match="unpacks to 64.0 MiB, more than the 8.0 MiB allowed"):
        safe_extract(bomb, tmp_path / "target", max_bytes=8 << 20)
    assert not (tmp_path / "target").exists()
    with tarfile.open(tmp_path / "bomb.tgz", "w:gz") as archive:
        info = tarfile.TarInfo("png/bomb.png")
        info.size = 32 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(ArchiveError, match="more than the 8.0 MiB allowed"):
        safe_extract(tmp_path / "bomb.tgz", tmp_path / "target", max_bytes=8 << 20)
    with pytest.raises(ArchiveError, match="members, more than the 3 allowed"):
        with zipfile.ZipFile(tmp_path / "many.zip", "w") as archive:
            for number in range(4):
                archive.writestr(f"m{number}.png", b"x")
        safe_extract(tmp_path / "many.zip", tmp_path / "target", max_members=3)
    assert not (tmp_path / "target").exists()


def test_an_archive_larger_than_the_free_space_is_a_disk_full_error_not_corruption(tmp_path, monkeypatch):
    import shutil

    archive = _zero_zip(tmp_path / "big.zip", 4)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1 << 20))
    with pytest.raises(DiskFullError, match="only 1.0 MiB are free") as full:
        safe_extract(archive, tmp_path / "target")
    assert "corrupt" not in str(full.value) and not (tmp_path / "target").exists()


# --------------------------------------------------------------------------------------
# One run directory, one writer
# --------------------------------------------------------------------------------------

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from xrg.locks import directory_lock
    with directory_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(60)
    """
)


@pytest.fixture
def locked_by_child(tmp_path):
    """A directory whose lock a child process holds; yields ``(directory, pid)``."""
    directory = tmp_path / "held"
    child = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        yield directory, child.pid
    finally:
        child.kill()
        child.wait()


def test_a_second_writer_is_refused_naming_the_holders_pid(tmp_path, locked_by_child, capsys):
    directory, pid = locked_by_child
    with pytest.raises(DirectoryBusyError, match=f"in use by process {pid}"):
        with directory_lock(directory):
            pass
    data = write_synthetic_data(tmp_path / "data")
    for argv in (
        ["train", "xraygan", "--profile", "tiny", "--data", str(data), "--out", str(directory)],
        [
            "train",
            "baseline",
            "--method",
            "stackgan",
            "--profile",
            "tiny",
            "--data",
            str(data),
            "--out",
            str(directory),
        ],
        ["data", "build", "--profile", "tiny", "--out", str(directory), "--force"],
    ):
        assert main(argv) == 2
        error = capsys.readouterr().err
        assert f"in use by process {pid}" in error and "Traceback" not in error
    assert sorted(p.name for p in directory.iterdir()) == [LOCK_NAME]  # nothing written beside the lock


def test_the_lock_goes_with_its_process_and_is_reentrant_within_one(tmp_path):
    directory = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", "import os, sys\nfrom xrg.locks import directory_lock\n"
                            "with directory_lock(sys.argv[1]):\n    os._exit(9)", str(directory)])  # fmt: skip
    assert child.returncode == 9  # killed while holding it
    with directory_lock(directory):
        with directory_lock(directory):  # a trainer training its VCNs into its own run directory
            pass
        assert (directory / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def test_two_trainers_set_up_on_one_directory_cannot_both_write_it(tmp_path):
    from xrg.errors import CheckpointError
    from xrg.train.xraygan import XRayGANTrainer

    data = write_synthetic_data(tmp_path / "data")
    first = XRayGANTrainer(TINY, data, tmp_path / "run", progress=False)
    second = XRayGANTrainer(TINY, data, tmp_path / "run", progress=False)  # set up before the first saved
    first.train(max_steps=1)
    with pytest.raises(CheckpointError, match="written by another run"):
        second.train(max_steps=1)


# --------------------------------------------------------------------------------------
# An output directory is not somebody else's
# --------------------------------------------------------------------------------------

KINDS = ["phantom-dataset", "openi-dataset", "mimic-dataset", "phantom-render", "generated", "run", "evaluators"]


@fuzz("directory_states")
@given(
    st.sampled_from(KINDS),
    st.one_of(st.none(), st.sampled_from(KINDS), st.just("corrupt")),
    st.lists(
        st.sampled_from(
            [
                "frontal.png",
                "notes.txt",
                "manifest.jsonl",
                "build.json",
                ".xrg.lock",
                "images",
                ".draft.tmp",
                "resnet50.pt",
                "metrics.jsonl",
            ]
        ),
        unique=True,
        max_size=4,
    ),  # fmt: skip
    st.booleans(),
)
def test_a_directory_is_claimed_only_when_it_is_new_empty_or_of_the_same_kind(
    tmp_path_factory, kind, marker, names, force
):
    directory = tmp_path_factory.mktemp("state")
    for name in names:
        (directory / name).mkdir() if name == "images" else (directory / name).write_text(f"user's {name}")
    if marker == "corrupt":
        (directory / MARKER_NAME).write_text("{not json")
    elif marker is not None:
        (directory / MARKER_NAME).write_text(json.dumps({"kind": marker}))
    before = {name: (directory / name).read_text() for name in names if name != "images"}
    foreign = [name for name in names if name != ".xrg.lock"]
    found = marker if marker not in (None, "corrupt") else None  # none of these files is really xrg's
    expect_ok = marker != "corrupt" and (force or (found == kind if found else not foreign))
    try:
        claim_output_dir(directory, kind, force=force)
    except DataDirError as error:
        assert not expect_ok, error
        assert str(directory) in str(error)
    else:
        assert expect_ok
        assert json.loads((directory / MARKER_NAME).read_text())["kind"] == kind
    assert {name: (directory / name).read_text() for name in before} == before  # nothing of theirs touched


def test_data_build_refuses_an_import_and_phantom_refuses_a_users_folder(tmp_path, capsys):
    imported = tmp_path / "imported"
    claim_output_dir(imported, "openi-dataset")
    (imported / "manifest.jsonl").write_text("{}\n")
    assert main(["data", "build", "--profile", "tiny", "--out", str(imported)]) == 2
    assert "made by `xrg data import-openi`" in capsys.readouterr().err
    assert (imported / "manifest.jsonl").read_text() == "{}\n"
    mine = tmp_path / "holiday"
    mine.mkdir()
    (mine / "frontal.png").write_bytes(b"my photo")
    assert main(["phantom", "--report", "Small left effusion.", "--size", "32", "--out", str(mine)]) == 2
    assert "files that xrg did not make (frontal.png)" in capsys.readouterr().err
    assert (mine / "frontal.png").read_bytes() == b"my photo"


def test_only_images_recorded_as_this_builds_renders_are_reused(tmp_path):
    from xrg.data.build import DataBuildConfig, build_dataset
    from xrg.data.images import load_grayscale

    reports = tmp_path / "reports"
    reports.mkdir()
    for name, data in real_openi_xml(3):
        (reports / Path(name).name).write_bytes(data)
    config = DataBuildConfig(image_size=32, volume_size=32, seed=0, workers=1)
    out = tmp_path / "data"
    first = build_dataset(out, config, reports_source=reports, progress=False)
    assert (first.n_rendered, first.n_reused) == (3, 0)
    case = read_manifest(out)[0]
    rendered = load_grayscale(out / case.frontal)
    save_png(out / case.frontal, np.zeros((32, 32)))  # somebody's same-named image
    second = build_dataset(out, config, reports_source=reports, progress=False)
    assert (second.n_rendered, second.n_reused) == (1, 2)
    assert np.array_equal(load_grayscale(out / case.frontal), rendered)


# --------------------------------------------------------------------------------------
# Every failure is one line, never a traceback
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """Files and directories a user might pass by mistake."""
    root = tmp_path_factory.mktemp("bad-inputs")
    files = {
        "a file": root / "plain.txt",
        "latin-1 profile": root / "latin1.yaml",
        "wrong-type profile": root / "wrongtype.yaml",
        "list profile": root / "list.yaml",
        "corrupt checkpoint": root / "corrupt.pt",
        "empty file": root / "empty.bin",
    }
    files["a file"].write_text("not a directory")
    files["latin-1 profile"].write_bytes("data: {image_size: 64}\n# caf\xe9\n".encode("latin-1"))
    files["wrong-type profile"].write_text(
        "data: {image_size: big, workers: [1]}\nseed: 0\nxraygan: {model: {hidden: wide}}\n"
    )
    files["list profile"].write_text("- data\n- 1\n")
    files["corrupt checkpoint"].write_bytes(b"PK\x03\x04" + os.urandom(200))
    files["empty file"].write_bytes(b"")
    data = write_synthetic_data(root / "data", num_patients=5)
    run = root / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"garbage")
    (run / "eval.json").write_text("{torn")
    state = root / "book-executed"
    state.mkdir()
    (state / ".stamps.json").write_bytes(b"\xff\xfe{")
    return {"root": root, "files": files, "data": data, "run": run}


UNWRITABLE = ["/proc/self/xrg-cannot-write-here", "/dev/null/out"]


@fuzz("cli_bad_inputs")
@given(st.data())
def test_no_command_prints_a_traceback_for_a_bad_input(bad_inputs, capsys, data):
    files, root = bad_inputs["files"], bad_inputs["root"]
    bad_file = st.sampled_from([str(p) for p in files.values()] + [str(root / "missing"), *UNWRITABLE])
    bad_profile = st.sampled_from([str(files[k]) for k in ("latin-1 profile", "wrong-type profile", "list profile",
                                                           "a file", "empty file")] + ["nonexistent-profile"])  # fmt: skip
    bad_out = st.sampled_from([str(files["a file"]), *UNWRITABLE])
    bad_params = st.sampled_from([str(files[k]) for k in ("latin-1 profile", "list profile", "a file")]
                                 + [str(root), str(root / "missing")])  # fmt: skip
    seed = st.integers(2**32, 2**80).map(str) | st.integers(-(2**40), -1).map(str)
    text = st.text(max_size=20).filter(lambda t: "\x00" not in t)
    command = data.draw(st.sampled_from([
        lambda: ["data", "build", "--profile", data.draw(bad_profile), "--out", str(root / "d")],
        lambda: ["data", "build", "--profile", "tiny", "--out", data.draw(bad_out)],
        lambda: ["data", "build", "--profile", "tiny", "--seed", data.draw(seed)],
        lambda: ["data", "import-openi", "--reports", data.draw(bad_file), "--images", data.draw(bad_file),
                 "--out", str(root / "o")],
        lambda: ["data", "import-openi", "--reports", str(root), "--images", str(root), "--out", data.draw(bad_out)],
        lambda: ["data", "import-mimic", "--root", data.draw(bad_file), "--out", str(root / "m")],
        lambda: ["phantom", "--report", data.draw(text) or "x", "--out", data.draw(bad_out), "--size", "32"],
        lambda: ["phantom", "--report-file", data.draw(bad_file), "--out", data.draw(bad_out)],
        lambda: ["generate", "--checkpoint", data.draw(bad_file), "--report", data.draw(text) or "x",
                 "--out", str(root / "g")],
        lambda: ["generate", "--checkpoint", str(bad_inputs["run"]), "--report", "x", "--device", "cuda"],
        lambda: ["train", data.draw(st.sampled_from(["xraygan", "vcn"])), "--profile", data.draw(bad_profile),
                 "--data", str(bad_inputs["data"]), "--out", str(root / "t")],
        lambda: ["train", "xraygan", "--profile", "tiny", "--data", data.draw(bad_file), "--out", data.draw(bad_out)],
        lambda: ["train", "xraygan", "--profile", "tiny", "--data", str(bad_inputs["data"]), "--out",
                 str(bad_inputs["run"]), "--resume"],
        lambda: ["eval", "--run", data.draw(bad_file), "--data", data.draw(bad_file), "--profile", data.draw(bad_profile)],
        lambda: ["book", "run", "--profile", "tiny", "--params", data.draw(bad_params)],
        lambda: ["bench", data.draw(st.sampled_from(["data", "generate", "explorer"])),
                 data.draw(st.sampled_from(["--pairs", "--n", "--workers"])), data.draw(st.sampled_from(["0", "-1", "x"]))],
        lambda: ["bench", "explorer", "--run-dir", str(root / "missing"), "--seed", data.draw(seed)],
        lambda: ["experiment", "table1", "--profile", data.draw(bad_profile), "--data", str(bad_inputs["data"]),
                 "--out", data.draw(bad_out)],
    ]))()  # fmt: skip
    try:
        status = main(command)
    except SystemExit as stopped:  # argparse: usage and one error line
        status = stopped.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert status == 2, (command, captured.err)
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("xrg: error: ") or ": error: argument " in last or ": error: " in last, last


def test_the_top_level_never_relays_advice_to_unpickle(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    import torch

    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"format": "xrg-checkpoint", "x": Payload()}, path)
    assert main(["generate", "--checkpoint", str(path), "--report", "x", "--out", str(tmp_path / "g")]) == 2
    error = capsys.readouterr().err
    assert "weights_only=False" not in error.replace("never with weights_only=False", "")
    assert "needs the global print" in error


# --------------------------------------------------------------------------------------
# Files readable as the umask says
# --------------------------------------------------------------------------------------


def test_files_are_written_with_the_umasks_permissions(tmp_path):
    from xrg.io import atomic_write_text

    old = os.umask(0o022)
    try:
        data = write_synthetic_data(tmp_path / "data", num_patients=5)
        checkpoint = random_checkpoint(tmp_path / "model.pt", TINY, Vocabulary.load(data / "vocab.json"))
        for path in (
            data / "manifest.jsonl",
            data / "vocab.json",
            checkpoint,
            *sorted((data / "images").iterdir())[:2],
        ):
            assert path.stat().st_mode & 0o777 == 0o644, path
        os.umask(0o077)
        assert atomic_write_text(tmp_path / "private.txt", "x").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


# --------------------------------------------------------------------------------------
# Found by the outside review of this round (each was a hole before it was closed)
# --------------------------------------------------------------------------------------


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("my thesis")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(victim)
    with pytest.raises(Exception, match="is a symbolic link; refused"):
        with directory_lock(run):
            pass
    assert victim.read_text() == "my thesis"


def test_a_refused_output_directory_gets_no_lock_file(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    (mine / ".draft.tmp").write_text("not xrg's")
    assert main(["data", "build", "--profile", "tiny", "--out", str(mine)]) == 2
    assert sorted(p.name for p in mine.iterdir()) == [".draft.tmp", "thesis.txt"]
    assert "did not make" in capsys.readouterr().err


def test_a_damaged_compressed_archive_is_refused_before_anything_is_written(tmp_path):
    with tarfile.open(tmp_path / "ok.tgz", "w:gz") as archive:
        for number in range(20):
            data = np.random.default_rng(number).bytes(3000)
            info = tarfile.TarInfo(f"png/m{number}.bin")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    damaged = bytearray((tmp_path / "ok.tgz").read_bytes())
    for offset in range(8):
        damaged[len(damaged) // 2 + offset] ^= 0xFF
    (tmp_path / "bad.tgz").write_bytes(bytes(damaged))
    with pytest.raises(ArchiveError, match="unreadable or truncated"):
        safe_extract(tmp_path / "bad.tgz", tmp_path / "target")
    assert not (tmp_path / "target").exists()
    assert len(safe_extract(tmp_path / "ok.tgz", tmp_path / "target")) == 20


def test_a_checkpoint_repacked_with_compression_is_refused_unread(tmp_path):
    from xrg.checkpoint import load_checkpoint
    from xrg.errors import CheckpointError

    data = write_synthetic_data(tmp_path / "data", num_patients=5)
    original = random_checkpoint(tmp_path / "model.pt", TINY, Vocabulary.load(data / "vocab.json"))
    with (
        zipfile.ZipFile(original) as source,
        zipfile.ZipFile(tmp_path / "deflated.pt", "w", zipfile.ZIP_DEFLATED) as sink,
    ):
        for info in source.infolist():
            sink.writestr(info.filename, source.read(info))
    with pytest.raises(CheckpointError, match="compressed entries"):
        load_checkpoint(tmp_path / "deflated.pt", "xraygan")


def test_top_level_files_that_are_links_out_of_the_tree_are_refused(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("dicom_id,subject_id,study_id,ViewPosition\nTOP SECRET,1,1,PA\n")
    root = _mimic_root(tmp_path / "mimic", ["d1", "d2"])
    (root / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    (root / "mimic-cxr-2.0.0-metadata.csv").symlink_to(outside)
    with pytest.raises(DataDirError, match="link to a file outside") as refused:
        import_mimic(root, tmp_path / "out", size=32)
    assert "SECRET" not in str(refused.value)
    data = write_synthetic_data(tmp_path / "data", num_patients=5)
    (tmp_path / "manifest.jsonl").write_bytes((data / "manifest.jsonl").read_bytes())
    (data / "manifest.jsonl").unlink()
    (data / "manifest.jsonl").symlink_to(tmp_path / "manifest.jsonl")
    with pytest.raises(DataDirError, match="symbolic link"):
        read_manifest(data)


def test_a_huge_mimic_report_is_refused_unread(tmp_path):
    from xrg.data.reports import MAX_REPORT_BYTES

    root = _mimic_root(tmp_path / "mimic", ["d1", "d2"])
    report = root / "files" / "p10" / "p10000001" / "s50000001.txt"
    with open(report, "r+b") as handle:  # sparse: no disk used, but reading it whole would take the memory
        handle.truncate(MAX_REPORT_BYTES * 300)
    with pytest.raises(DataDirError, match="no usable case") as refused:
        import_mimic(root, tmp_path / "out", size=32)
    assert "report too large" in str(refused.value)


def test_eval_checks_its_inputs_and_its_evaluators_directory_before_training(tmp_path, capsys):
    data = write_synthetic_data(tmp_path / "data", num_patients=5)
    foreign = tmp_path / "evaluators"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["eval", "--run", str(tmp_path / "missing"), "--data", str(data), "--profile", "tiny",
                 "--evaluators", str(foreign)]) == 2  # fmt: skip
    assert "holds no trained model" in capsys.readouterr().err
    run = tmp_path / "run"
    random_checkpoint(run / "checkpoint.pt", TINY, Vocabulary.load(data / "vocab.json"))
    assert (
        main(["eval", "--run", str(run), "--data", str(data), "--profile", "tiny", "--evaluators", str(foreign)]) == 2
    )
    assert "files that xrg did not make (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]


def test_a_deeply_nested_marker_or_manifest_line_is_one_line(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MARKER_NAME).write_text("[" * 100_000)
    assert main(["phantom", "--report", "Heart normal.", "--size", "32", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("xrg: error: ") and "Traceback" not in error and len(error.splitlines()) == 1


def test_a_metadata_csv_bomb_is_refused_as_it_is_read(tmp_path):
    from xrg.data.importers import MAX_CSV_LINE

    root = _mimic_root(tmp_path / "mimic", ["d1", "d2"])
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as handle:
        handle.write("dicom_id,subject_id,study_id,ViewPosition\n")
        handle.write("d1,10000001,50000001,PA" + ",x" * 10 + "\n")  # more fields than the header
    with pytest.raises(DataDirError, match="more fields than its header"):
        import_mimic(root, tmp_path / "out", size=32)
    with gzip.open(root / "mimic-cxr-2.0.0-metadata.csv.gz", "wt", newline="") as handle:
        handle.write("dicom_id,subject_id,study_id,ViewPosition\n")
        handle.write("d1,10000001,50000001," + "P" * (MAX_CSV_LINE + 10) + "\n")
    with pytest.raises(DataDirError, match="decompression bomb"):
        import_mimic(root, tmp_path / "out", size=32)


def test_zeros_packed_after_the_end_of_a_tar_are_refused(tmp_path):
    payload = io.BytesIO()
    with tarfile.open(fileobj=payload, mode="w") as archive:
        info = tarfile.TarInfo("png/a.png")
        info.size = 10
        archive.addfile(info, io.BytesIO(bytes(10)))
    with gzip.open(tmp_path / "padded.tgz", "wb") as handle:
        handle.write(payload.getvalue() + bytes(4 << 20))
    with pytest.raises(ArchiveError, match="after its last member"):
        safe_extract(tmp_path / "padded.tgz", tmp_path / "target", max_bytes=1 << 20)
    assert not (tmp_path / "target").exists()


def test_an_experiment_directory_made_by_the_library_is_recognised(tmp_path):
    experiment = tmp_path / "experiments"
    claim_output_dir(experiment / "evaluators", "evaluators")  # what `xrg eval` leaves at its default place
    (experiment / "table1.json").write_text("{}")
    assert claim_output_dir(experiment, "run") == experiment
    with pytest.raises(DataDirError, match="made by `xrg train`"):
        claim_output_dir(experiment, "phantom-dataset")


PROFILE_TEXT = st.sampled_from([
    "data: {image_size: 64}\n", "data: {image_size: 64}\nseed: 3\n# café\n", "data: {image_size: 64}\nxraygan: {model: {hidden: wide}}\n",
    "data: [1, 2]\n", "- a\n- b\n", "data: {image_size: 64}\nnotebooks: {01_data: {examples_seed: 7}}\n", "",
    "data: {image_size: 64}\nseed: -1\n", "data: {image_size: 64}\nseed: 99999999999\n", "{{{{", "data: !!python/name:os.system\n",
])  # fmt: skip


@fuzz("file_encodings")
@given(
    st.one_of(
        st.tuples(PROFILE_TEXT, st.sampled_from(["utf-8", "utf-16", "utf-32", "latin-1", "cp1252", "utf-8-sig"])).map(
            lambda pair: pair[0].encode(pair[1], errors="replace")
        ),
        st.binary(max_size=200),
        st.text(max_size=80).map(lambda t: ("data: {image_size: 64}\n# " + t).encode("utf-8", errors="surrogatepass")),
    )
)
def test_profile_and_parameter_files_in_any_encoding_load_or_are_named(tmp_path_factory, raw):
    from xrg.book import _read_overrides
    from xrg.errors import ConfigError
    from xrg.profiles import load_profile

    path = tmp_path_factory.getbasetemp() / "encoded.yaml"
    path.write_bytes(raw)
    for read in (load_profile, _read_overrides):
        try:
            read(path)
        except ConfigError as error:
            assert str(path) in str(error)


def test_paths_inside_one_root_give_the_verdicts_of_path_inside(tmp_path):
    # One PathsInside keeps its resolved directories; its answers must stay those of a fresh one (path_inside).
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "images").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.png").write_bytes(b"x")
    (root / "images" / "a.png").write_bytes(b"x")
    (root / "images" / "out.png").symlink_to(outside / "secret.png")
    (root / "images" / "in.png").symlink_to(root / "images" / "a.png")
    (root / "linked-out").symlink_to(outside, target_is_directory=True)
    (root / "linked-in").symlink_to(root / "images", target_is_directory=True)
    (root / "loop").symlink_to(root / "loop")
    relatives = ["images/a.png", "images/out.png", "images/in.png", "images/missing.png", "linked-out/secret.png",
                 "linked-in/a.png", "linked-in/out.png", "loop", "loop/x.png", "../outside/secret.png", "/etc/passwd",
                 "a\\b", ".", "images"]  # fmt: skip
    inside = PathsInside(root)
    for _ in range(2):  # the second pass answers from the cached directories
        for relative in relatives:
            try:
                expected = path_inside(root, relative, "image")
            except DataDirError as refusal:
                with pytest.raises(DataDirError) as ours:
                    inside(relative, "image")
                assert str(ours.value) == str(refusal), relative
            else:
                assert inside(relative, "image") == expected, relative
    accepted = {r for r in relatives if r in ("images/a.png", "images/in.png", "images/missing.png", "linked-in/a.png",
                                                ".", "images")}  # fmt: skip
    for relative in relatives:
        try:
            inside(relative, "image")
        except DataDirError:
            assert relative not in accepted, relative
        else:
            assert relative in accepted, relative
