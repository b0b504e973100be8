"""The PGGAN chapter's evaluation on known distributions: group FIDs with their floors, the FID map,
label prevalence and search rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrg.errors import ConfigError
from xrg.latent.evaluate import (
    NO_FINDING,
    fid_matrix,
    group_fids,
    label_prevalence,
    rate_difference,
    search_lift,
    search_rates,
    stratified_halves,
)

NAMES = ("near", "far", "rare")


def features_and_labels(seed: int = 0):
    """600 images of 8-d features: 'near' shifts the mean by 0.5, 'far' by 3, 'rare' has 6 images."""
    g = torch.Generator().manual_seed(seed)
    n = 600
    labels = torch.zeros(n, 3, dtype=torch.long)
    labels[:150, 0] = 1
    labels[150:300, 1] = 1
    labels[300:306, 2] = 1
    features = torch.randn(n, 8, generator=g, dtype=torch.float64)
    features[:150, 0] += 0.5
    features[150:300, 0] += 3.0
    patients = [f"p{i // 2}" for i in range(n)]  # two images per patient
    return features, labels, patients


def test_the_stratified_halves_share_no_patient_and_the_label_mix():
    _, labels, patients = features_and_labels()
    first, second = stratified_halves(labels, patients, seed=1)
    assert len(first) + len(second) == len(labels) and not set(first) & set(second)
    assert not {patients[i] for i in first} & {patients[i] for i in second}
    for k in range(3):
        assert abs(int(labels[first, k].sum()) - int(labels[second, k].sum())) <= 2
    with pytest.raises(ConfigError, match="patient ids"):
        stratified_halves(labels, patients[:-1])


def test_a_findings_fid_grows_with_its_shift_and_is_judged_against_its_floor():
    features, labels, patients = features_and_labels()
    table = group_fids(features, labels, NAMES, patients, generated=features[::2] + 0.0, min_group=20)
    groups = table["groups"]
    assert groups[NO_FINDING]["fid"] == 0.0 and groups[NO_FINDING]["n"] == 294
    assert groups["far"]["fid"] == pytest.approx(9.0, rel=0.15)  # the squared mean shift 3²
    assert groups["far"]["fid"] > 10 * groups["far"]["floor"]
    # a shift of 0.5 (0.25 in FID) is drowned by the small-sample bias at 150 images: the floor says so
    assert groups["near"]["floor"] > 0.25 and groups["near"]["fid"] < 2 * groups["near"]["floor"]
    assert table["stratified"] < 0.3  # two halves of the same images: near 0
    assert "rare" in table["left_out"] and "6 images < 20" in table["left_out"]["rare"]
    assert table["synthetic"] < 0.5  # a subset of the same images
    assert group_fids(features, labels, NAMES, patients)["synthetic"] is None


def test_the_fid_map_places_the_far_finding_farthest_from_no_finding():
    features, labels, _ = features_and_labels()
    mapped = fid_matrix(features, labels, NAMES, min_group=20)
    assert mapped["names"] == [NO_FINDING, "near", "far"]
    d = mapped["distances"]
    assert d.shape == (3, 3) and np.allclose(d, d.T) and np.all(np.diag(d) == 0)
    assert d[0, 2] > d[0, 1] and d[1, 2] > d[0, 1]
    e = mapped["embedding"]
    assert np.linalg.norm(e[0] - e[2]) > np.linalg.norm(e[0] - e[1])
    assert mapped["linkage"].shape == (2, 4)
    # the first merge joins no_finding and near, the closest pair
    assert sorted(mapped["linkage"][0, :2].astype(int).tolist()) == [0, 1]
    with pytest.raises(ConfigError, match="a map needs at least 3"):
        fid_matrix(features, labels, NAMES, min_group=200)


def test_label_prevalence_counts_calls_at_the_thresholds_with_an_interval():
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3], [0.2, 0.9]] * 25)
    prevalence = label_prevalence(probabilities, {"a": 0.5, "b": None}, ("a", "b"), num_resamples=200)
    assert prevalence["a"]["value"] == pytest.approx(0.5) and prevalence["b"] is None
    low, high = prevalence["a"]["ci"]
    assert low < 0.5 < high and high - low < 0.3
    with pytest.raises(ConfigError, match=r"must be \[N, 2\]"):
        label_prevalence(probabilities[:, :1], {"a": 0.5}, ("a", "b"))


def test_search_rates_count_failures_and_unconfirmed_images():
    lines = [
        {"success": True, "steps": 4, "confirmed": True},
        {"success": True, "steps": 10, "confirmed": False},
        {"success": False, "steps": 200, "confirmed": None},
        {"success": True, "steps": 6, "confirmed": True},
    ]
    unjudged = [{"success": True, "steps": 3, "confirmed": None}]
    rates = search_rates({"cardiomegaly": lines, "nodule": unjudged, "edema": []})
    assert rates["cardiomegaly"] == {"searches": 4, "success_rate": 0.75, "confirmed_rate": 0.5, "median_steps": 6}
    assert rates["nodule"]["confirmed_rate"] is None and rates["nodule"]["success_rate"] == 1.0
    assert rates["edema"]["success_rate"] is None


def _line(success, confirmed, at_start):
    return {"success": success, "steps": 1, "confirmed": confirmed if success else None,
            "confirmed_at_start": at_start}  # fmt: skip


def test_search_lift_is_paired_per_search_and_says_when_it_is_not_significant():
    gains = [_line(True, True, False)] * 10  # every search turns a negative start into a confirmed image
    no_gain = [_line(True, True, True)] * 10  # the start was already positive: nothing added
    mixed = [_line(True, True, False), _line(False, None, True)] * 10  # +1 and -1 in turn
    lift = search_lift({"cardiomegaly": gains, "effusion": no_gain, "edema": mixed}, num_resamples=200)
    assert lift["cardiomegaly"]["value"] == 1.0 and lift["cardiomegaly"]["ci"] == [1.0, 1.0]
    assert lift["cardiomegaly"]["verdict"] == "lift"
    assert lift["effusion"]["value"] == 0.0 and lift["effusion"]["verdict"] == "not significant"
    assert lift["edema"]["value"] == 0.0 and lift["edema"]["ci"][0] < 0 < lift["edema"]["ci"][1]
    assert lift["edema"]["verdict"] == "not significant"
    assert lift["macro"]["value"] == pytest.approx(1 / 3) and lift["macro"]["n"] == 40
    low, high = lift["macro"]["ci"]
    assert low < 1 / 3 < high and low > 0  # only edema varies: the macro interval is a third as wide
    harm = search_lift({"edema": [_line(False, None, True)] * 5}, num_resamples=50)
    assert harm["edema"]["verdict"] == "harm"
    with pytest.raises(ConfigError, match="confirmed_at_start"):
        search_lift({"edema": [{"success": True, "confirmed": True}]})


def test_rate_difference_compares_two_classifiers_over_shared_classes():
    always = {"a": [_line(True, True, False)] * 8, "b": [_line(True, False, False)] * 8}
    never = {"a": [_line(False, None, False)] * 8, "b": [_line(False, None, False)] * 8, "c": [_line(True, True, True)]}
    difference = rate_difference(always, never, num_resamples=100)
    assert difference["value"] == 1.0 and difference["verdict"] == "higher" and difference["classes"] == ["a", "b"]
    assert rate_difference(always, never, key="confirmed", num_resamples=100)["value"] == 0.5
    assert rate_difference(never, always, num_resamples=100)["verdict"] == "lower"
    same = rate_difference(always, always, num_resamples=100)
    assert same["value"] == 0.0 and same["verdict"] == "not significant"
    # one failure in nine classes: a third of the resamples miss it, so the interval starts at exactly 0
    nine = {f"c{k}": [_line(True, True, False)] * 8 for k in range(9)}
    one_failure = {**nine, "c8": [_line(True, True, False)] * 7 + [_line(False, None, False)]}
    small = rate_difference(nine, one_failure, num_resamples=200)
    assert small["value"] == pytest.approx(1 / 72) and small["ci"][0] == 0.0
    assert small["verdict"] == "not significant"
    with pytest.raises(ConfigError, match="share no class"):
        rate_difference(always, {"z": [_line(True, True, True)]})
    with pytest.raises(ConfigError, match="key"):
        rate_difference(always, never, key="steps")
