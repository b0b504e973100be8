"""Evaluation metrics: each measures what it claims, agrees with torchmetrics, and has an honest CI."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from xrg.errors import ConfigError
from xrg.eval import metrics


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny matrices: thread hand-offs cost more than the work on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _features(rows: int, dim: int = 8, shift: float = 0.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def _images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [0, 1]: upsampled noise, so SSIM has structure to compare."""
    coarse = torch.rand(count, 1, size // 4, size // 4, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


def _estimates(result: Any) -> list[dict[str, Any]]:
    """Every {"value", "ci", ...} dict in a result, however nested."""
    if isinstance(result, dict):
        found = [result] if "value" in result and "ci" in result else []
        return found + [e for value in result.values() for e in _estimates(value)]
    if isinstance(result, list):
        return [e for value in result for e in _estimates(value)]
    return []


def _check_result(result: dict[str, Any]) -> None:
    """JSON-serialisable with no NaN, and every CI contains its point estimate.

    FID's half-sampling interval is for the large-sample FID: it contains the debiased value,
    not necessarily the (upward biased) point estimate, and is never widened to reach it.
    """
    json.dumps(result, allow_nan=False)
    estimates = _estimates(result)
    assert estimates
    for estimate in estimates:
        low, high = estimate["ci"]
        if estimate["value"] is None:
            assert estimate["ci"] == [None, None]
        elif estimate.get("method") == "half-sampling":
            assert 0.0 <= low <= high and low <= max(estimate["debiased"], 0.0) <= high, estimate
        elif low is not None:
            assert low <= estimate["value"] <= high, estimate
        assert isinstance(estimate["n"], int)


# --------------------------------------------------------------------------- registry and bootstrap


def test_registry_has_what_eval_run_calls_and_compute_refuses_unknown_names():
    assert {"inception_score", "fid", "kid", "ssim", "view_consistency", "finding_auroc", "cross_view_agreement",
            "ms_ssim_diversity", "controllability", "memorisation"} <= set(metrics.REGISTRY)  # fmt: skip
    with pytest.raises(ConfigError, match="unknown metric 'fdi'.*fid"):
        metrics.compute("fdi")
    with pytest.raises(ConfigError, match="fid"):
        metrics.compute("fid", real=_features(4), fake_features=_features(4))


def test_bootstrap_ci_is_deterministic_contains_the_estimate_and_skips_undefined_resamples():
    values = np.random.default_rng(1).normal(size=200)
    mean = lambda rows: values[rows].mean()  # noqa: E731
    first = metrics.bootstrap_ci(mean, len(values), 300, seed=3)
    assert first == metrics.bootstrap_ci(mean, len(values), 300, seed=3)
    assert first != metrics.bootstrap_ci(mean, len(values), 300, seed=4)
    assert first[0] < values.mean() < first[1]
    assert first[1] - first[0] == pytest.approx(2 * 1.96 / math.sqrt(200), rel=0.25)
    # a statistic every resample overestimates: the interval is widened down to the estimate
    biased = lambda rows: len(np.unique(rows)) / len(rows) - 1.0  # 0 on the full sample, < 0 on resamples  # noqa: E731
    low, high = metrics.bootstrap_ci(lambda rows: -biased(rows), 50, 100, seed=0)
    assert low == 0.0 < high
    # resamples where the statistic is undefined are skipped; none defined: no interval
    sometimes = lambda rows: None if rows[0] % 2 else values[rows].mean()  # noqa: E731
    assert None not in metrics.bootstrap_ci(sometimes, len(values), 100, seed=0)
    assert metrics.bootstrap_ci(lambda rows: None, 10, 20, seed=0) == (None, None)
    # two sets resampled independently
    low, high = metrics.bootstrap_ci(lambda a, b: values[a].mean() - values[b].mean(), (200, 200), 100, seed=0)
    assert low <= 0.0 <= high


# --------------------------------------------------------------------------- IS, FID, KID


def test_inception_score_bounds_and_agreement_with_the_closed_form():
    classes = 5
    identical = metrics.inception_score(
        torch.tensor([[1.0, 2.0, 0.5, -1.0, 0.0]]).repeat(40, 1), num_resamples=50, seed=0
    )
    assert identical["value"] == pytest.approx(1.0, abs=1e-9) and identical["classes"] == classes
    confident = metrics.inception_score((30.0 * torch.eye(classes)).repeat(8, 1), num_resamples=50, seed=0)
    assert confident["value"] == pytest.approx(classes, rel=1e-6)
    random_logits = _features(100, classes, seed=2) * 3
    result = metrics.compute("inception_score", fake_logits=random_logits, num_resamples=100, seed=0)
    assert 1.0 < result["value"] < classes and result["n"] == 100
    assert result["value"] == pytest.approx(metrics._inception_score(random_logits), rel=1e-9)
    for estimate in (identical, confident, result):
        _check_result(estimate)
        assert 1.0 <= estimate["ci"][0] <= estimate["ci"][1] <= classes
    assert result == metrics.inception_score(random_logits, num_resamples=100, seed=0)


def test_fid_is_zero_for_the_same_set_and_grows_with_a_shift():
    real = _features(300, 8)
    same = metrics.compute("fid", real_features=real, fake_features=real.clone(), num_resamples=20, seed=0)
    assert same["value"] < 1e-6 and same["n"] == 300 and same["n_real"] == 300
    shifted = [
        metrics.fid(real, _features(300, 8, shift=s, seed=1), num_resamples=20, seed=0)["value"]
        for s in (0.5, 1.0, 2.0)
    ]
    assert 0 < shifted[0] < shifted[1] < shifted[2]
    assert shifted[2] == pytest.approx(8 * 2.0**2, rel=0.15)  # ||mean shift||^2 dominates
    result = metrics.fid(real, _features(200, 8, shift=0.5, seed=1), num_resamples=20, seed=0)
    _check_result(result)
    assert result["method"] == "half-sampling" and result["half_sizes"] == [150, 100] and result["splits"] == 20
    assert result["debiased"] < result["value"]  # halves carry twice the small-sample bias
    assert result == metrics.fid(real, _features(200, 8, shift=0.5, seed=1), num_resamples=20, seed=0)


@pytest.mark.parametrize("rows", [(40, 30), (300, 200)])  # fewer samples than features, and more
def test_closed_form_frechet_distance_equals_torchmetrics(rows):
    real, fake = _features(rows[0], 64, seed=3), _features(rows[1], 64, shift=0.3, seed=4) * 1.5
    assert metrics._frechet_distance(real, fake) == pytest.approx(metrics._torchmetrics_fid(real, fake), rel=1e-6)


@pytest.mark.filterwarnings("ignore:Metric `Kernel Inception Distance` will save")
def test_kid_is_near_zero_for_one_distribution_positive_for_a_shift_and_equals_torchmetrics():
    from torchmetrics.image.kid import KernelInceptionDistance

    real = _features(200, 8)
    same = metrics.compute("kid", real_features=real, fake_features=_features(200, 8, seed=1), seed=0)
    shifted = metrics.kid(real, _features(200, 8, shift=1.0, seed=1), seed=0)
    assert abs(same["value"]) < 0.1 * shifted["value"] and shifted["value"] > 0.1
    assert same["subset_size"] == 100 and same["subsets"] == 50 and same["std"] > 0  # half of each set
    for result in (same, shifted):
        _check_result(result)
        # the subset standard error: two disjoint subsets of 100 fit in 200 cases
        assert result["method"] == "subset standard error" and result["disjoint_subsets"] == 2
        assert result["se"] == pytest.approx(result["std"] / math.sqrt(2))
        assert result["ci"] == pytest.approx([result["value"] - 1.959964 * result["se"],
                                              result["value"] + 1.959964 * result["se"]])  # fmt: skip
    fake = _features(150, 8, shift=0.5, seed=1)
    ours = metrics.kid(real, fake, seed=7, subsets=5, subset_size=70)
    reference = KernelInceptionDistance(feature=metrics.PrecomputedFeatures(), subsets=5, subset_size=70)
    reference.update(real, real=True)
    reference.update(fake, real=False)
    torch.manual_seed(7)
    mean, std = reference.compute()
    assert ours["value"] == pytest.approx(float(mean), rel=1e-9) and ours["std"] == pytest.approx(float(std), rel=1e-9)


# --------------------------------------------------------------------------- SSIM, VC, MS-SSIM


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    real = _images(12, 32)
    identical = metrics.compute("ssim", fake=real.clone(), real=real)
    assert identical["value"] == pytest.approx(1.0, abs=1e-5) and identical["n"] == 12
    noisy = (real + 0.2 * torch.randn(real.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    result = metrics.ssim(noisy, real)
    assert 0 < result["value"] < 0.9
    _check_result(result)
    with pytest.raises(ConfigError, match="fake and real must have the same shape"):
        metrics.ssim(real[:5], real)
    with pytest.raises(ConfigError, match=r"fake must lie in \[0, 1\]"):
        metrics.ssim(real * 2, real)


def test_view_consistency_is_the_mean_probability():
    probabilities = torch.linspace(0, 1, 21)
    result = metrics.compute("view_consistency", probabilities=probabilities, num_resamples=100, seed=0)
    assert result["value"] == pytest.approx(0.5) and result["n"] == 21
    _check_result(result)


@pytest.mark.parametrize("size", [32, 64])
def test_ms_ssim_diversity_is_one_for_identical_samples_and_lower_for_different_ones(size):
    base = _images(3, size)
    identical = metrics.compute("ms_ssim_diversity", samples=base.unsqueeze(1).repeat(1, 3, 1, 1, 1), num_resamples=50)
    assert identical["value"] == pytest.approx(1.0, abs=1e-5) and identical["n"] == 3
    assert (identical["scales"], identical["kernel_size"]) == metrics.ms_ssim_settings(size, size)
    different = metrics.ms_ssim_diversity(
        torch.stack([_images(3, size, seed=s) for s in range(3)], dim=1), num_resamples=50
    )
    assert different["value"] < 0.9
    for result in (identical, different):
        _check_result(result)
    with pytest.raises(ConfigError, match="at least 2 samples"):
        metrics.ms_ssim_diversity(base.unsqueeze(1))


def test_ms_ssim_settings_are_accepted_by_torchmetrics_at_every_size():
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as ms_ssim

    assert metrics.ms_ssim_settings(128, 128) == (4, 11) and metrics.ms_ssim_settings(32, 32) == (3, 7)
    for size in (16, 24, 32, 48, 64, 128):
        scales, kernel = metrics.ms_ssim_settings(size, size)
        betas = tuple(float(b) for b in metrics.MS_SSIM_BETAS[:scales])
        image = torch.rand(1, 1, size, size)
        similarity = ms_ssim(image, image, kernel_size=kernel, sigma=1.5 * kernel / 11, betas=betas, data_range=1.0)
        assert float(similarity) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="too small"):
        metrics.ms_ssim_settings(4, 4)


# --------------------------------------------------------------------------- findings


def test_finding_auroc_perfect_reversed_and_undefined():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 2, size=(60, 3)))
    labels[:, 2] = 0  # no positives
    truth = labels.double()
    scores = torch.stack([0.2 + 0.6 * truth[:, 0], 0.8 - 0.6 * truth[:, 1], torch.full((60,), 0.5)], dim=1)
    result = metrics.compute("finding_auroc", scores=scores, labels=labels, names=["perfect", "reversed", "absent"])
    assert result["perfect"]["value"] == 1.0 and result["perfect"]["ci"] == [1.0, 1.0]
    assert result["reversed"]["value"] == 0.0
    assert result["absent"] == {"value": None, "ci": [None, None], "n": 60, "positives": 0}
    assert result["perfect"]["positives"] == int(labels[:, 0].sum())
    assert result["macro"]["value"] == pytest.approx(0.5) and result["macro"]["findings"] == 2
    _check_result(result)
    noisy_scores = (scores + torch.from_numpy(rng.random((60, 3)))) / 2
    noisy = metrics.finding_auroc(noisy_scores, labels, ["a", "b", "c"], num_resamples=50, seed=1)
    assert 0.5 < noisy["a"]["value"] < 1.0
    assert noisy == metrics.finding_auroc(noisy_scores, labels, ["a", "b", "c"], num_resamples=50, seed=1)
    _check_result(noisy)
    with pytest.raises(ConfigError, match="names must name each of the 3 findings"):
        metrics.finding_auroc(scores, labels, ["a", "b"])
    with pytest.raises(ConfigError, match="scores and labels must have the same shape"):
        metrics.finding_auroc(scores[:10], labels, ["a", "b", "c"])
    with pytest.raises(ConfigError, match="scores has NaN"):
        metrics.finding_auroc(torch.full((60, 3), float("nan")), labels, ["a", "b", "c"])


def test_cross_view_agreement_is_one_for_identical_calls_and_counts_disagreements():
    frontal = torch.rand(40, 2, generator=torch.Generator().manual_seed(0)).double()
    same = metrics.compute(
        "cross_view_agreement", frontal_probs=frontal, lateral_probs=frontal.clone(), names=["a", "b"]
    )
    assert same["a"]["value"] == same["b"]["value"] == same["macro"]["value"] == 1.0
    lateral = frontal.clone()
    lateral[:10, 0] = 1 - (frontal[:10, 0] >= 0.5).double()  # the opposite call on 10 of 40
    result = metrics.cross_view_agreement(frontal, lateral, ["a", "b"])
    assert result["a"]["value"] == pytest.approx(0.75) and result["macro"]["value"] == pytest.approx(0.875)
    for estimate in (same, result):
        _check_result(estimate)


def test_controllability_success_intended_shift_and_spillover():
    before = torch.full((6, 3), 0.5, dtype=torch.float64)
    edited = torch.tensor([0, 1, 2, 0, 1, 2])
    direction = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    after = before.clone()
    after[torch.arange(6), edited] += 0.2 * direction
    names = ["a", "b", "c"]
    right = metrics.compute(
        "controllability", before=before, after=after, edited=edited, direction=direction, names=names
    )
    assert right["success_rate"]["value"] == 1.0 and right["intended_shift"]["value"] == pytest.approx(0.2)
    assert right["spillover"]["value"] == 0.0
    assert right["per_kind"] == {name: {"success_rate": 1.0, "n": 2} for name in names}
    wrong = metrics.controllability(before, after, edited, -direction, names)
    assert wrong["success_rate"]["value"] == 0.0 and wrong["intended_shift"]["value"] == pytest.approx(-0.2)
    spilled = after.clone() + 0.1
    spilled[torch.arange(6), edited] = after[torch.arange(6), edited]
    assert metrics.controllability(before, spilled, edited, direction, names)["spillover"]["value"] == pytest.approx(
        0.1
    )
    assert (
        metrics.controllability(before, after, edited, direction, names, tolerance=0.3)["success_rate"]["value"] == 0.0
    )
    for result in (right, wrong):
        _check_result(result)
    with pytest.raises(ConfigError, match="edited must hold 6 finding indices"):
        metrics.controllability(before, after, edited + 3, direction, names)
    with pytest.raises(ConfigError, match="direction"):
        metrics.controllability(before, after, edited, direction * 2, names)


# --------------------------------------------------------------------------- memorisation


def test_memorisation_ratio_is_low_for_copies_and_near_one_for_fresh_samples(monkeypatch):
    monkeypatch.setattr(metrics, "_DISTANCE_BLOCK", 1000)  # several distance blocks
    train, test = _features(400, 8, seed=0), _features(300, 8, seed=1)
    copies = train[:200] + 1e-3 * _features(200, 8, seed=2)
    copied = metrics.compute(
        "memorisation", generated_features=copies, train_features=train, test_features=test, num_closest=5
    )
    assert copied["ratio"]["value"] < 0.01 and copied["ratio"]["n"] == 200 and copied["ratio"]["n_test"] == 300
    assert [c["distance"] for c in copied["closest"]] == sorted(c["distance"] for c in copied["closest"])
    assert len(copied["closest"]) == 5 and all(c["train"] == c["generated"] for c in copied["closest"])
    fresh = metrics.memorisation(_features(300, 8, seed=3), train, test, num_closest=3)
    assert 0.85 < fresh["ratio"]["value"] < 1.15 and fresh["ratio"]["ci"][0] < 1 < fresh["ratio"]["ci"][1]
    assert fresh["median_generated"] / fresh["median_test"] == pytest.approx(fresh["ratio"]["value"])
    for result in (copied, fresh):
        _check_result(result)
    with pytest.raises(ConfigError, match="same feature size"):
        metrics.memorisation(_features(10, 4), train, test, 3)


# --------------------------------------------------------------------------- input checks and Inception


def test_bad_inputs_are_refused_with_a_clear_config_error():
    with pytest.raises(ConfigError, match="real_features and fake_features must have the same feature size D"):
        metrics.fid(_features(10, 4), _features(10, 5), num_resamples=2)
    with pytest.raises(ConfigError, match=r"fake_features must have shape \[M, D\]"):
        metrics.fid(_features(10, 4), torch.zeros(10), num_resamples=2)
    with pytest.raises(ConfigError, match="fake_logits needs at least 2 rows"):
        metrics.inception_score(_features(1, 4))
    with pytest.raises(ConfigError, match="real_features has NaN"):
        metrics.kid(torch.full((10, 4), float("nan")), _features(10, 4))
    with pytest.raises(ConfigError, match="num_resamples must be >= 1"):
        metrics.view_consistency(torch.rand(5), num_resamples=0)


def test_inception_is_unavailable_without_a_weights_file(tmp_path):
    available, reason = metrics.inception_available(tmp_path / "missing.pth")
    assert available is False and "does not exist" in reason
    with pytest.raises(ConfigError, match="does not exist"):
        metrics.inception_features(torch.rand(2, 1, 32, 32), tmp_path / "missing.pth")


def test_inception_features_with_a_local_weights_file(tmp_path, monkeypatch):
    """Randomly initialised weights in the real file format: the shapes and types of the outputs."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as patch:  # build the network without its (downloaded) weights
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(
            fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state, *args, **kwargs: None
        )
        torch.manual_seed(0)
        state = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict()
    weights = tmp_path / "inception.pth"
    torch.save(state, weights)
    assert metrics.inception_available(weights)[0]
    pool, logits = metrics.inception_features(_images(2, 32), weights, device="cpu")
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert pool.dtype == logits.dtype == torch.float64 and bool(torch.isfinite(pool).all())
    again, _ = metrics.inception_features(_images(2, 32), weights, device="cpu")
    assert torch.equal(pool, again)
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="broken.pth is refused"):
        metrics.inception_features(_images(1, 32), tmp_path / "broken.pth", device="cpu")
