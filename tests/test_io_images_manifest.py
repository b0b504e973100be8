"""Atomic writes, image validation, manifest reading and the patient-level split."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from xrg.data.findings import Finding
from xrg.data.images import load_grayscale, resize, save_png
from xrg.data.manifest import Case, patient_split, read_manifest, stable_hash, write_manifest
from xrg.errors import ConfigError, DataDirError, ImageError
from xrg.io import atomic_write, atomic_write_text
from xrg.profiles import PROFILE_NAMES, load_profile


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "good")

    def broken(handle):
        handle.write(b"partial")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]  # no temporary left behind


def test_png_round_trip_is_exact_to_8_bits(tmp_path):
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    save_png(tmp_path / "a.png", image)
    loaded = load_grayscale(tmp_path / "a.png", expected_size=64)
    assert loaded.dtype == np.float32 and loaded.shape == (64, 64)
    assert np.abs(loaded - image).max() <= 0.5 / 255 + 1e-6


def test_bad_images_are_refused_with_the_file_named(tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(ImageError, match="corrupt.png"):
        load_grayscale(corrupt)
    colour = tmp_path / "colour.png"
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb).save(colour)
    with pytest.raises(ImageError, match="colour image"):
        load_grayscale(colour)
    with pytest.raises(ImageError, match="does not exist"):
        load_grayscale(tmp_path / "missing.png")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((40, 32), np.uint8)).save(small)
    with pytest.raises(ImageError, match="expected 64x64"):
        load_grayscale(small, expected_size=64)
    with pytest.raises(ImageError, match="NaN"):
        save_png(tmp_path / "nan.png", np.full((8, 8), np.nan, np.float32))


def test_sixteen_bit_and_grey_rgb_are_accepted(tmp_path):
    wide = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    loaded = load_grayscale(tmp_path / "wide.png")
    assert 0.0 <= loaded.min() and loaded.max() <= 1.0 and loaded.max() > 0.5
    grey = np.repeat(np.full((16, 16, 1), 128, np.uint8), 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert np.allclose(load_grayscale(tmp_path / "grey.png"), 128 / 255)


def test_resize_averages_when_downsampling():
    image = np.zeros((64, 64), np.float32)
    image[::2, ::2] = 1.0  # a checkerboard-like pattern with mean 0.25
    assert np.allclose(resize(image, 16), 0.25, atol=1e-5)


def test_patient_split_is_deterministic_disjoint_and_proportional():
    patients = [f"p{i}" for i in range(1000)]
    split = patient_split(patients, seed=3)
    assert split == patient_split(list(reversed(patients)), seed=3)
    assert split != patient_split(patients, seed=4)
    counts = {s: sum(v == s for v in split.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 700, "val": 100, "test": 200}
    with pytest.raises(DataDirError, match="fractions"):
        patient_split(patients, seed=0, fractions=(0.5, 0.5, 0.5))


def test_stable_hash_is_stable():
    assert stable_hash("openi-1000") == stable_hash("openi-1000") != stable_hash("openi-1001")
    # SHA-256("abc") starts with ba7816bf8f01cfea (FIPS 180-2 test vector)
    assert stable_hash("abc") == int("ba7816bf8f01cfea", 16) >> 1


def _case(case_id: str, split: str = "train") -> Case:
    return Case(
        id=case_id,
        patient_id=case_id,
        split=split,
        findings="Heart is enlarged.",
        impression="Cardiomegaly.",
        structured_findings=[Finding("cardiomegaly", severity="mild")],
        frontal=f"images/{case_id}_frontal.png",
        lateral=f"images/{case_id}_lateral.png",
    )


def test_manifest_round_trip_and_validation(tmp_path):
    write_manifest(tmp_path, [_case("b"), _case("a", "test")])
    cases = read_manifest(tmp_path)
    assert [c.id for c in cases] == ["a", "b"]
    assert cases[0].structured_findings == [Finding("cardiomegaly", severity="mild")]
    with pytest.raises(DataDirError, match="missing image"):
        read_manifest(tmp_path, check_images=True)

    with pytest.raises(DataDirError, match="does not exist"):
        read_manifest(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataDirError, match="no manifest.jsonl"):
        read_manifest(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.jsonl").write_text('{"id": "x"}\nnot json\n')
    with pytest.raises(DataDirError, match="missing fields"):
        read_manifest(bad)
    row = _case("c").to_json()
    row["structured_findings"] = [{"kind": "dragon"}]
    (bad / "manifest.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataDirError, match="unknown finding kind 'dragon'"):
        read_manifest(bad)


def test_profiles_load_and_bad_profiles_are_refused(tmp_path):
    for name in PROFILE_NAMES:
        profile = load_profile(name)
        assert profile.name == name and "image_size" in profile.data
    assert load_profile("tiny").data["image_size"] < load_profile("cpu").data["image_size"] <= 256
    with pytest.raises(ConfigError, match="neither"):
        load_profile("huge")
    broken = tmp_path / "p.yaml"
    broken.write_text("profile: x\nseed: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(broken)
