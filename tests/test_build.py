"""The embedded default dataset: real Open-i reports rendered through the real CT."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from xrg.data.build import DataBuildConfig, build_dataset
from xrg.data.images import load_grayscale
from xrg.data.manifest import read_manifest
from xrg.data.reports import Vocabulary
from xrg.errors import ConfigError, DataDirError


def test_build_writes_a_valid_dataset(tiny_data):
    cases = read_manifest(tiny_data, check_images=True)
    assert len(cases) == 12
    assert {c.source for c in cases} == {"phantom"}
    assert all(c.id == f"openi-{c.patient_id}" for c in cases)
    assert all(c.findings or c.impression for c in cases)
    image = load_grayscale(tiny_data / cases[0].frontal, expected_size=32)
    assert 0.0 <= image.min() < image.max() <= 1.0
    build = json.loads((tiny_data / "build.json").read_text())
    assert build["n_cases"] == 12 and build["config"]["image_size"] == 32


def test_split_is_by_patient_and_covers_every_split(tiny_data):
    cases = read_manifest(tiny_data)
    by_split = {s: {c.patient_id for c in cases if c.split == s} for s in ("train", "val", "test")}
    assert all(by_split.values()), by_split
    assert not (
        by_split["train"] & by_split["val"]
        or by_split["train"] & by_split["test"]
        or by_split["val"] & by_split["test"]
    )


def test_vocabulary_comes_from_the_train_split_only(tiny_data):
    from xrg.data.reports import split_sentences, tokenize

    cases = read_manifest(tiny_data)
    vocab = Vocabulary.load(tiny_data / "vocab.json")

    def words(split):
        texts = (f"{c.findings} {c.impression}" for c in cases if c.split == split)
        return {w for text in texts for s in split_sentences(text) for w in tokenize(s)}

    train, held_out = words("train"), words("val") | words("test")
    assert train <= set(vocab.word(i) for i in range(len(vocab)))
    leaked = (held_out - train) & {vocab.word(i) for i in range(len(vocab))}
    assert not leaked, f"held-out-only words in the vocabulary: {sorted(leaked)[:5]}"


def test_rebuild_is_resumable_and_deterministic(tiny_data, tiny_config, tmp_path):
    again = build_dataset(tiny_data, tiny_config, progress=False)
    assert again.n_rendered == 0 and again.n_reused == 12

    other = build_dataset(tmp_path, tiny_config, progress=False)
    assert other.n_rendered == 12
    for case in read_manifest(tiny_data):
        for view in (case.frontal, case.lateral):
            assert (tiny_data / view).read_bytes() == (tmp_path / view).read_bytes(), view
    assert (tiny_data / "manifest.jsonl").read_text() == (tmp_path / "manifest.jsonl").read_text()


def test_a_killed_build_resumes(tiny_data, tiny_config, tmp_path):
    build_dataset(tmp_path, tiny_config, progress=False)
    removed = sorted((tmp_path / "images").glob("*_lateral.png"))[:3]
    for path in removed:
        path.unlink()
    resumed = build_dataset(tmp_path, tiny_config, progress=False)
    assert resumed.n_rendered == 3
    for path in removed:
        assert path.read_bytes() == (tiny_data / "images" / path.name).read_bytes()


def test_renders_drawn_from_other_findings_or_by_an_older_renderer_are_not_reused(tiny_data, tiny_config, monkeypatch):
    from xrg.data import phantom
    from xrg.data.build import reusable_renders
    from xrg.data.findings import Finding

    cases = read_manifest(tiny_data)
    key = tiny_config.rendering_key()
    assert reusable_renders(tiny_data, cases, key) == {c.id for c in cases}
    changed = replace(cases[0], structured_findings=[*cases[0].structured_findings, Finding("pneumothorax", "left")])
    reused = reusable_renders(tiny_data, [changed, *cases[1:]], key)
    assert changed.id not in reused and reused == {c.id for c in cases[1:]}
    monkeypatch.setattr(phantom, "RENDERER_VERSION", phantom.RENDERER_VERSION + 1)
    assert reusable_renders(tiny_data, cases, key) == set()  # drawn by older code: rendered again


def test_a_different_rendering_config_is_refused_in_the_same_directory(tiny_data, tiny_config):
    with pytest.raises(DataDirError, match="was built with"):
        build_dataset(tiny_data, replace(tiny_config, image_size=64), progress=False)


def test_another_seed_gives_other_patients(tiny_config, tmp_path):
    config = replace(tiny_config, max_reports=4, seed=1)
    build_dataset(tmp_path / "a", config, progress=False)
    build_dataset(tmp_path / "b", replace(config, seed=2), progress=False)
    a = {c.id: c for c in read_manifest(tmp_path / "a")}
    b = {c.id: c for c in read_manifest(tmp_path / "b")}
    common = sorted(set(a) & set(b))
    for case_id in common:
        assert a[case_id].seed != b[case_id].seed
        assert not np.array_equal(
            load_grayscale(tmp_path / "a" / a[case_id].frontal), load_grayscale(tmp_path / "b" / b[case_id].frontal)
        )


def test_bad_build_settings_are_refused():
    with pytest.raises(ConfigError, match="image_size"):
        DataBuildConfig(image_size=512)
    with pytest.raises(ConfigError, match="findings_source"):
        DataBuildConfig(findings_source="guess")
    with pytest.raises(ConfigError, match="unknown data settings"):
        DataBuildConfig.from_profile({"image_size": 64, "colour": True}, seed=0)


def test_missing_report_source_is_a_clear_error(tiny_config, tmp_path):
    with pytest.raises(DataDirError):
        build_dataset(tmp_path / "out", tiny_config, reports_source=tmp_path / "no-such-archive.tgz", progress=False)


def test_canonical_targets_are_added_to_a_finished_build_and_show_only_the_findings(tiny_data, tiny_config, tmp_path):
    import shutil

    from xrg.data.build import canonical_paths
    from xrg.data.datasets import XRayPairDataset
    from xrg.data.phantom import PhantomRenderer

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    with pytest.raises(DataDirError, match="have no canonical-pose renders.*--canonical-targets"):
        XRayPairDataset(copy, "train", canonical=True)
    config = replace(tiny_config, canonical_targets=True)
    summary = build_dataset(copy, config, progress=False)
    cases = read_manifest(copy, check_images=True)
    train = [c for c in cases if c.split == "train"]
    assert summary.n_rendered == len(train) and summary.n_reused == len(cases)  # the posed renders are kept
    assert all(c.canonical == canonical_paths(c.id) for c in train)
    assert all(not c.canonical for c in cases if c.split != "train")
    again = build_dataset(copy, config, progress=False)
    assert again.n_rendered == 0 and again.n_reused == len(cases) + len(train)

    # every canonical render is one patient in one pose: two normal reports give the same image
    renderer = PhantomRenderer(volume_size=tiny_config.volume_size)
    normal = [renderer.render([], seed=seed, size=32, canonical=True).frontal for seed in (1, 2)]
    assert np.array_equal(normal[0], normal[1])
    posed = [renderer.render([], seed=seed, size=32).frontal for seed in (1, 2)]
    assert np.abs(posed[0] - posed[1]).mean() > 0.01  # the patients differ
    # a case's canonical render differs from the normal canonical chest only where it has findings
    dataset = XRayPairDataset(copy, "train", canonical=True)
    with_findings = [i for i, c in enumerate(dataset.cases) if any(not f.negated for f in c.structured_findings)]
    without = [i for i, c in enumerate(dataset.cases) if not c.structured_findings]
    for index in without:
        assert np.allclose(dataset[index]["frontal_canonical"][0].numpy(), normal[0], atol=1 / 255)
    assert with_findings and any(
        np.abs(dataset[i]["frontal_canonical"][0].numpy() - normal[0]).max() > 0.05 for i in with_findings
    )
    item = dataset[0]
    assert item["frontal_canonical"].shape == item["frontal"].shape == (1, 32, 32)


def test_a_manifest_with_bad_canonical_paths_is_refused(tiny_data, tmp_path):
    import shutil

    copy = tmp_path / "data"
    shutil.copytree(tiny_data, copy)
    rows = [json.loads(line) for line in (copy / "manifest.jsonl").read_text().splitlines()]
    for bad, message in (
        ({"frontal": "images/x.png"}, "canonical must map each of"),
        ({"frontal": "../x.png", "lateral": "images/y.png"}, "canonical frontal image path"),
        ("images/x.png", "canonical must map each of"),
    ):
        rows[0]["canonical"] = bad
        (copy / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        with pytest.raises(DataDirError, match=message):
            read_manifest(copy)
