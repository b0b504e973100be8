"""The control rows (xrg.eval.controls): mean image, nearest-train-report retrieval, phantom renders."""

from __future__ import annotations

import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from xrg.data import edits
from xrg.data.datasets import XRayPairDataset, collate_pairs
from xrg.data.manifest import read_manifest, write_manifest
from xrg.data.reports import report_text
from xrg.errors import ConfigError, DataDirError
from xrg.eval.controls import (
    CONTROL_NAMES,
    MeanImageControl,
    PhantomControl,
    RetrievalControl,
    control_generators,
)
from xrg.eval.generators import BaselinePairGenerator, XRayGANPairGenerator, encode_reports

VIEWS = ("frontal", "lateral")


def _batch(data_dir, split: str, size: int = 32) -> dict:
    dataset = XRayPairDataset(data_dir, split, image_size=size)
    return collate_pairs([dataset[i] for i in range(len(dataset))])


@pytest.fixture(scope="module")
def controls(tiny_data) -> dict:
    return {
        "mean image": MeanImageControl.fit(tiny_data, 32),
        "retrieval": RetrievalControl.fit(tiny_data, 32),
        "phantom": PhantomControl.fit(tiny_data, 32),
    }


def test_every_control_is_a_noise_free_generator_fitted_on_train(controls, tiny_data):
    train_ids = [case.id for case in read_manifest(tiny_data) if case.split == "train"]
    batch = _batch(tiny_data, "test")
    for name, control in controls.items():
        assert control.method == name and control.takes_noise is False and control.image_size == 32
        described = control.describe()
        assert described["fitted_on"]["split"] == "train" and described["fitted_on"]["num_cases"] == len(train_ids)
        first = control.generate(batch, torch.Generator().manual_seed(0))
        second = control.generate(batch, torch.Generator().manual_seed(1))
        for view in VIEWS:
            assert first[view].shape == (3, 1, 32, 32) and first[view].dtype == torch.float32
            assert 0.0 <= float(first[view].min()) and float(first[view].max()) <= 1.0
            assert torch.equal(first[view], second[view]), f"{name} must not depend on the seed"


def test_the_mean_image_is_the_train_mean_for_every_report(controls, tiny_data):
    train = _batch(tiny_data, "train")
    test = _batch(tiny_data, "test")
    images = controls["mean image"].generate(test)
    for view in VIEWS:
        expected = train[view].double().mean(0).float()
        assert torch.allclose(images[view][0], expected, atol=1e-6)
        assert all(torch.equal(images[view][0], image) for image in images[view])
        assert not torch.allclose(images[view][0], test[view][0], atol=1e-3)  # not a copy of a test image


def test_retrieval_of_a_train_report_returns_its_own_images(controls, tiny_data):
    retrieval = controls["retrieval"]
    train = _batch(tiny_data, "train")
    indices, similarity = retrieval.retrieve(train)
    assert torch.allclose(similarity, torch.ones_like(similarity))  # distance 0
    assert retrieval.retrieved_case_ids(train) == train["case_id"]  # the tiny train reports are all distinct
    images = retrieval.generate(train)
    for view in VIEWS:
        assert torch.equal(images[view], train[view])


def test_retrieval_of_held_out_reports_is_a_train_case_and_deterministic(controls, tiny_data):
    retrieval = controls["retrieval"]
    cases = read_manifest(tiny_data)
    train_ids = {case.id for case in cases if case.split == "train"}
    for split in ("val", "test"):
        batch = _batch(tiny_data, split)
        ids = retrieval.retrieved_case_ids(batch)
        assert set(ids) <= train_ids and not set(ids) & set(batch["case_id"])
        _, similarity = retrieval.retrieve(batch)
        assert bool((similarity < 1.0 - 1e-9).all())  # no held-out report is a train report
        assert (
            ids == retrieval.retrieved_case_ids(batch) == RetrievalControl.fit(tiny_data, 32).retrieved_case_ids(batch)
        )
    before = len(retrieval.retrieved)
    retrieval.generate(batch)
    assert retrieval.retrieved[before:] == ids


def test_retrieval_ties_go_to_the_lowest_train_index(controls):
    retrieval = controls["retrieval"]
    batch = encode_reports(["FINDINGS: Zyxwv qwerty.", "IMPRESSION: ."], retrieval.vocabulary, 16, 24)
    indices, similarity = retrieval.retrieve(batch)  # no known word: cosine 0 with every train report
    assert indices == [0, 0] and torch.equal(similarity, torch.zeros(2, dtype=torch.float64))


def test_the_phantom_control_reproduces_the_real_renders(controls, tiny_data):
    for split in ("test", "train"):
        batch = _batch(tiny_data, split)
        images = controls["phantom"].generate(batch)
        for view in VIEWS:
            assert float((images[view] - batch[view]).abs().max()) <= 1e-6, (split, view)


def test_an_edit_changes_the_phantom_in_the_findings_region_and_not_the_mean(controls, tiny_data):
    phantom, mean = controls["phantom"], controls["mean image"]
    case = next(c for c in read_manifest(tiny_data) if c.id == "openi-3398")  # a test case: right upper granuloma
    assert case.split == "test" and [f.kind for f in case.structured_findings] == ["granuloma"]
    text = report_text(case.findings, case.impression, headers=True)
    edited = edits.negate(text, "granuloma").text
    batch = encode_reports([text, edited], phantom.vocabulary, 16, 24, case_ids=[case.id, case.id])
    images = phantom.generate(batch)
    real = _batch(tiny_data, "test")
    row = real["case_id"].index(case.id)
    assert torch.equal(images["frontal"][0], real["frontal"][row])  # the unedited text: its real render
    changed = (images["frontal"][0, 0] - images["frontal"][1, 0]).abs() > 0
    rows, cols = changed.nonzero(as_tuple=True)
    assert len(rows) > 0, "negating the granuloma must change the frontal"
    # the patient's right upper lung: the viewer's left, the upper half
    assert int(cols.max()) < 16 and int(rows.max()) < 16
    blind = mean.generate(batch)
    assert all(torch.equal(blind[view][0], blind[view][1]) for view in VIEWS)

    # a text without a case: the reference patient, the labeller's findings
    text = "FINDINGS: Large left pleural effusion.\nIMPRESSION: Large left pleural effusion."
    batch = encode_reports([text, edits.negate(text, "pleural_effusion").text], phantom.vocabulary, 16, 24)
    images = phantom.generate(batch)
    difference = (images["frontal"][0, 0] - images["frontal"][1, 0]).abs()
    assert float(difference.sum()) > 1.0
    assert float(difference[:, 16:].sum()) > 0.9 * float(difference.sum())  # the patient's left: the viewer's right


def test_control_generators_read_reports_like_the_model(tiny_data):
    dataset = XRayPairDataset(tiny_data, "train", image_size=16)
    like = SimpleNamespace(image_size=16, vocabulary=dataset.vocab, max_sentences=4, max_words=8)
    made = control_generators(tiny_data, like)
    assert [c.method for c in made] == list(CONTROL_NAMES)
    batch = _batch(tiny_data, "test", size=16)
    for control in made:
        assert (control.image_size, control.max_sentences, control.max_words) == (16, 4, 8)
        assert control.vocabulary is dataset.vocab
        assert control.generate(batch)["lateral"].shape == (3, 1, 16, 16)
    assert float((made[2].generate(batch)["frontal"] - batch["frontal"]).abs().max()) <= 1e-6
    with pytest.raises(ConfigError, match="unknown control 'median'"):
        control_generators(tiny_data, like, names=("mean image", "median"))


def test_bad_inputs_are_refused(tiny_data, tmp_path, controls, data_dir):
    for control in (MeanImageControl, RetrievalControl, PhantomControl):
        with pytest.raises(DataDirError, match="does not exist"):
            control.fit(tmp_path / "missing", 32)
        for size in (4, 32.5, True, 2048):
            with pytest.raises(ConfigError, match="image_size"):
                control.fit(tiny_data, size)
    no_train = tmp_path / "no-train"
    shutil.copytree(tiny_data, no_train)
    write_manifest(no_train, [replace(c, split="val") if c.split == "train" else c for c in read_manifest(no_train)])
    for control in (MeanImageControl, RetrievalControl, PhantomControl):
        with pytest.raises(DataDirError, match="no train cases"):
            control.fit(no_train, 32)
    with pytest.raises(DataDirError, match="xrg data build"):
        PhantomControl.fit(data_dir, 32)  # synthetic images, not phantom renders
    phantom = controls["phantom"]
    with pytest.raises(ConfigError, match="'openi-0' is not a case"):
        phantom.generate(encode_reports(["Mild cardiomegaly."], phantom.vocabulary, 16, 24, case_ids=["openi-0"]))
    with pytest.raises(ConfigError, match="findings_ids"):
        controls["mean image"].generate({"report_text": ["Mild cardiomegaly."]})
    huge = encode_reports(["Mild cardiomegaly."], phantom.vocabulary, 16, 24)
    huge["findings_ids"][huge["findings_mask"]] = 10**6
    with pytest.raises(ConfigError, match="vocabulary"):
        controls["retrieval"].generate(huge)
    with pytest.raises(ConfigError, match="case_ids"):
        encode_reports(["a.", "b."], phantom.vocabulary, 16, 24, case_ids=["openi-1"])


def test_the_model_adapters_say_whether_they_read_the_seed():
    def adapter(kind, **config):
        return kind(SimpleNamespace(config=SimpleNamespace(**config)))

    assert not adapter(XRayGANPairGenerator, noise_dim=0).takes_noise
    assert adapter(XRayGANPairGenerator, noise_dim=8).takes_noise
    assert not adapter(BaselinePairGenerator, noise_dim=0, method="gan_int_cls").takes_noise
    assert adapter(BaselinePairGenerator, noise_dim=0, method="stackgan").takes_noise
    assert adapter(BaselinePairGenerator, noise_dim=8, method="gan_int_cls").takes_noise


def test_a_metric_the_mean_image_wins_is_flagged_by_its_direction():
    from xrg.eval.controls import compare_with_controls, result_entry
    from xrg.experiments import mean_image_wins
    from xrg.notebook import controls_table

    def est(value):
        return {"value": value, "ci": [value - 0.01, value + 0.01], "n": 10}

    model = {"kid": est(0.05), "ssim": {"frontal": est(0.40)}, "vc_auroc": {"generated": est(0.70)}}
    mean = {"kid": est(0.02), "ssim": {"frontal": est(0.60)}, "vc_auroc": {"generated": est(0.50)}}
    assert result_entry(model, ("ssim", "frontal"))["value"] == 0.40 and result_entry(model, ("fid", "both")) is None
    rows = {row["metric"]: row for row in compare_with_controls(model, {"mean image": mean})}
    assert rows["KID (both views)"]["mean_image_wins"] is True  # lower is better: 0.02 beats 0.05
    assert rows["SSIM frontal"]["mean_image_wins"] is True
    assert rows["VC-AUROC matched vs mismatched"]["mean_image_wins"] is False
    assert rows["FID (both views)"]["mean_image_wins"] is None  # not scored: no verdict
    table = controls_table("XRayGAN", model, {"mean image": mean})
    assert table.loc["SSIM frontal ↑", "mean image wins?"] == "yes"
    assert table.loc["VC-AUROC matched vs mismatched ↑", "mean image wins?"] == "no"
    assert table.loc["KID (both views) ↓", "XRayGAN"] == "0.050 [0.040, 0.060]"
    row = {"kid": est(0.05), "ssim": est(0.40), "vc_auroc": est(0.70), "memorisation_ratio": est(0.1)}
    mean_row = {"kid": est(0.02), "ssim": est(0.60), "vc_auroc": est(0.50), "memorisation_ratio": est(9.0)}
    assert mean_image_wins(row, mean_row) == ["KID", "SSIM"]  # the ratio has no better direction
