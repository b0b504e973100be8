"""The judge metrics: a report-blind (mean) image scores the null, a phantom-like oracle the ceiling."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from xrg.errors import ConfigError
from xrg.eval import judge, metrics

NAMES = ["cardiomegaly", "effusion", "nodule"]


def _labels(count: int = 60, seed: int = 0) -> torch.Tensor:
    """Random findings, each finding with positives and negatives."""
    labels = (torch.rand(count, len(NAMES), generator=torch.Generator().manual_seed(seed)) < 0.4).double()
    labels[0], labels[1] = 1, 0
    return labels


def _oracle(labels: torch.Tensor) -> torch.Tensor:
    """Probabilities that follow the findings, as the real renders would (ideally)."""
    return 0.1 + 0.8 * labels


def _mean_image(labels: torch.Tensor) -> torch.Tensor:
    """One image for every report: the same probabilities in every row."""
    return torch.tensor([0.3, 0.6, 0.45], dtype=torch.float64).expand(len(labels), -1).clone()


def _edits(count: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    generator = torch.Generator().manual_seed(seed)
    before = 0.25 + 0.5 * torch.rand(count, len(NAMES), generator=generator, dtype=torch.float64)
    edited = torch.randint(0, len(NAMES), (count,), generator=generator)
    direction = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0).double()
    before[torch.arange(count), edited] = 0.5 - 0.25 * direction  # room to move 0.5 the intended way
    operations = ["negate" if d < 0 else "set_severity" for d in direction]
    return before, edited, direction, operations


def _check(result: dict[str, Any]) -> None:
    json.dumps(result, allow_nan=False)
    low, high = result["ci"]
    if result["value"] is not None:
        assert low <= result["value"] <= high


# --------------------------------------------------------------------------- thresholds and judgeable findings


def test_youden_thresholds_known_values_and_none_for_a_degenerate_finding():
    probs = torch.tensor([[0.1, 0.2], [0.4, 0.3], [0.35, 0.9], [0.8, 0.5]])
    labels = torch.tensor([[0, 0], [0, 0], [1, 0], [1, 0]])
    # ROC of column 0: J = 0.5 at 0.8 (tpr 1/2, fpr 0) and at 0.35 (tpr 1, fpr 1/2); the higher is kept
    assert judge.youden_thresholds(probs, labels, ["a", "b"]) == {"a": pytest.approx(0.8), "b": None}
    separable = torch.tensor([[0.2], [0.3], [0.6], [0.7]])
    assert judge.youden_thresholds(separable, [[0], [0], [1], [1]], ["a"]) == {"a": pytest.approx(0.6)}


def test_youden_thresholds_refuse_bad_input():
    with pytest.raises(ConfigError, match="same shape"):
        judge.youden_thresholds(torch.rand(4, 2), torch.zeros(4, 3), ["a", "b"])
    with pytest.raises(ConfigError, match="labels must be 0 or 1"):
        judge.youden_thresholds(torch.rand(4, 1), torch.full((4, 1), 0.5), ["a"])
    with pytest.raises(ConfigError, match=r"probs must lie in \[0, 1\]"):
        judge.youden_thresholds(torch.full((4, 1), 2.0), torch.ones(4, 1), ["a"])
    with pytest.raises(ConfigError, match="names must name each"):
        judge.youden_thresholds(torch.rand(4, 2), torch.ones(4, 2), ["a"])


def test_judgeable_findings_give_a_reason_for_every_finding_left_out():
    included, excluded = judge.judgeable_findings(
        {"a": 0.93, "b": 0.61, "c": 0.9, "d": None, "e": 0.5}, {"a": 40, "b": 30, "c": 12, "d": 50}
    )
    assert included == ["a"]
    assert excluded == {
        "b": "evaluator AUROC 0.61 < 0.8 on the cohort",
        "c": "12 test positives < 20",
        "d": "evaluator AUROC undefined on the cohort (no positives or no negatives there)",
        "e": "evaluator AUROC 0.50 < 0.8 on the cohort; 0 test positives < 20",
    }
    with pytest.raises(ConfigError, match="test_positives names findings cohort_auroc does not"):
        judge.judgeable_findings({"a": 0.9}, {"z": 3})
    with pytest.raises(ConfigError, match="min_auroc"):
        judge.judgeable_findings({"a": 0.9}, {"a": 30}, min_auroc=1.5)


# --------------------------------------------------------------------------- finding detection


def _detection(probs: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    thresholds = {"cardiomegaly": 0.5, "effusion": 0.5, "nodule": None}
    settings = {"included": NAMES, "num_resamples": 20, "seed": 1, **kwargs}
    return metrics.compute(
        "finding_detection", probs=probs, labels=labels, thresholds=thresholds, names=NAMES, **settings
    )


def test_finding_detection_mean_image_scores_zero_and_the_oracle_one():
    labels = _labels()
    mean = _detection(_mean_image(labels), labels)
    _check(mean)
    assert mean["value"] == 0.0 and mean["ci"] == [0.0, 0.0]
    assert mean["macro"]["prob_difference"]["value"] == pytest.approx(0.0, abs=1e-12)
    # the mean image's effusion probability 0.6 is above its threshold: every report "has" effusion
    assert mean["per_finding"]["effusion"]["detection_rate"]["value"] == 1.0
    assert mean["per_finding"]["effusion"]["false_alarm_rate"]["value"] == 1.0
    oracle = _detection(_oracle(labels), labels)
    _check(oracle)
    assert oracle["value"] == 1.0
    assert oracle["macro"]["prob_difference"]["value"] == pytest.approx(0.8)
    # the finding without a threshold is moved to the excluded ones, with its reason
    assert oracle["included"] == ["cardiomegaly", "effusion"] and oracle["findings"] == 2
    assert "no threshold" in oracle["excluded"]["nodule"]
    nodule = oracle["per_finding"]["nodule"]
    assert nodule["included"] is False and nodule["threshold"] is None
    assert nodule["detection_rate"] == {"value": None, "ci": [None, None], "n": len(labels)}
    assert nodule["prob_difference"]["value"] == pytest.approx(0.8)  # still described, never averaged in
    assert oracle["per_finding"]["cardiomegaly"]["positives"] == int(labels[:, 0].sum())


def test_finding_detection_excluded_reasons_are_kept_and_the_macro_covers_only_included():
    labels = _labels()
    probs = _oracle(labels)
    probs[:, 1] = 1 - probs[:, 1]  # effusion judged backwards: detection 0, false alarm 1
    both = _detection(probs, labels)
    assert both["value"] == pytest.approx(0.0)  # (1 + -1) / 2
    one = _detection(probs, labels, included=["cardiomegaly"], excluded={"effusion": "12 test positives < 20"})
    assert one["value"] == 1.0
    assert one["per_finding"]["effusion"]["detection_minus_false_alarm"]["value"] == -1.0  # shown, left out
    none = _detection(probs, labels, included=[])
    assert none["value"] is None and none["ci"] == [None, None] and none["findings"] == 0
    with pytest.raises(ConfigError, match="both included and excluded"):
        _detection(probs, labels, excluded={"effusion": "12 test positives < 20"})
    assert one["excluded"] == {
        "effusion": "12 test positives < 20", "nodule": "not judgeable"
    }  # fmt: skip


def test_finding_detection_is_deterministic_and_refuses_bad_input():
    labels = _labels()
    noise = torch.rand(labels.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) - 0.5
    probs = 0.3 + 0.4 * labels + 0.5 * noise  # overlapping: negatives in [0.05, 0.55], positives in [0.45, 0.95]
    first = _detection(probs, labels)
    assert first == _detection(probs, labels)
    assert first["ci"] != _detection(probs, labels, seed=2)["ci"]
    assert first["ci"][0] < first["value"] < first["ci"][1] and 0 < first["value"] < 1
    with pytest.raises(ConfigError, match="same shape"):
        _detection(probs[:, :2], labels)
    with pytest.raises(ConfigError, match="included names findings"):
        _detection(probs, labels, included=["pneumothorax"])
    with pytest.raises(ConfigError, match="no entry for the included finding 'nodule'"):
        metrics.compute("finding_detection", probs=probs, labels=labels, thresholds={"cardiomegaly": 0.5},
                        names=NAMES, included=["cardiomegaly", "nodule"])  # fmt: skip


# --------------------------------------------------------------------------- controllability


def _controllability(before, after, edited, direction, operations=None, **kwargs) -> dict[str, Any]:
    return metrics.compute(
        "controllability_margin", before=before, after=after, edited=edited, direction=direction, names=NAMES,
        operations=operations, num_resamples=20, seed=0, **kwargs,
    )  # fmt: skip


def test_controllability_margin_text_blind_scores_zero_and_oracle_one():
    before, edited, direction, operations = _edits()
    blind = _controllability(before, before.clone(), edited, direction, operations)
    _check(blind)
    assert blind["value"] == 0.0 and blind["ci"] == [0.0, 0.0]
    assert blind["edited_shift"]["value"] == 0.0 and blind["margin"] == 0.1
    assert "0.1" in blind["definition"]
    after = before.clone()
    after[torch.arange(len(before)), edited] += 0.5 * direction  # the edited finding moves, nothing else
    oracle = _controllability(before, after, edited, direction, operations)
    _check(oracle)
    assert oracle["value"] == 1.0
    assert oracle["edited_shift"]["value"] == pytest.approx(0.5)
    assert oracle["others_abs_shift"]["value"] == 0.0
    assert oracle["placebo"]["value"] < 0.5  # a deranged edit list mostly points at unmoved findings
    assert set(oracle["per_operation"]) == {"negate", "set_severity"}
    assert all(entry["value"] == 1.0 for entry in oracle["per_operation"].values())
    assert sum(entry["n"] for entry in oracle["per_finding"].values()) == len(before)


def test_controllability_margin_needs_the_margin_and_the_edited_finding_to_move_most():
    before = torch.full((2, 3), 0.5, dtype=torch.float64)
    edited, direction = torch.tensor([0, 1]), torch.tensor([1.0, -1.0])
    small = before + torch.tensor([[0.05, 0.0, 0.0], [0.0, -0.05, 0.0]])  # right way, below the margin
    assert _controllability(before, small, edited, direction)["value"] == 0.0
    spill = before + torch.tensor([[0.2, 0.3, 0.0], [0.0, -0.2, 0.1]])  # edit 0: another finding moved more
    result = _controllability(before, spill, edited, direction)
    assert result["value"] == 0.5
    assert result["others_shift"]["value"] == pytest.approx((0.15 + 0.05) / 2)
    wrong_way = before + torch.tensor([[-0.3, 0.0, 0.0], [0.0, 0.3, 0.0]])
    assert _controllability(before, wrong_way, edited, direction)["value"] == 0.0
    assert _controllability(before, small, edited, direction, margin=0.05)["value"] == 1.0


def test_controllability_margin_refuses_bad_input():
    before, edited, direction, _ = _edits(6)
    with pytest.raises(ConfigError, match="same shape"):
        _controllability(before, before[:, :2], edited, direction)
    with pytest.raises(ConfigError, match="edited must hold 6 finding indices"):
        _controllability(before, before, edited + 3, direction)
    with pytest.raises(ConfigError, match="direction must hold 6 values"):
        _controllability(before, before, edited, direction * 2)
    with pytest.raises(ConfigError, match="margin must lie in"):
        _controllability(before, before, edited, direction, margin=0.0)
    with pytest.raises(ConfigError, match="operations must name"):
        _controllability(before, before, edited, direction, operations=["negate"])


# --------------------------------------------------------------------------- view consistency


def test_mismatched_permutation_is_a_seeded_derangement_and_refuses_n_below_2():
    for n in (2, 3, 17):
        partner = judge.mismatched_permutation(n, seed=5)
        assert sorted(partner.tolist()) == list(range(n))
        assert bool((partner != torch.arange(n)).all())
    assert torch.equal(judge.mismatched_permutation(17, 5), judge.mismatched_permutation(17, 5))
    assert not torch.equal(judge.mismatched_permutation(17, 5), judge.mismatched_permutation(17, 6))
    for bad in (1, 0, 2.5):
        with pytest.raises(ConfigError, match="n >= 2"):
            judge.mismatched_permutation(bad)


def test_vc_auroc_is_one_half_for_a_mean_pair_and_one_for_separated_pairs():
    mean = metrics.compute("vc_auroc", matched=torch.full((20,), 0.97), mismatched=torch.full((20,), 0.97),
                           num_resamples=20, seed=0)  # fmt: skip
    _check(mean)
    assert mean["value"] == 0.5 and mean["ci"] == [0.5, 0.5]
    assert mean["mean_matched"] == pytest.approx(0.97)  # a high mean VC, and no evidence
    rng = np.random.default_rng(0)
    matched, mismatched = rng.uniform(0.6, 1.0, 30), rng.uniform(0.0, 0.4, 25)
    separated = metrics.compute("vc_auroc", matched=matched, mismatched=mismatched, num_resamples=20, seed=0)
    assert separated["value"] == pytest.approx(1.0) and separated["n"] == 30 and separated["n_mismatched"] == 25
    overlapping = metrics.compute("vc_auroc", matched=matched - 0.3, mismatched=mismatched, num_resamples=50, seed=0)
    _check(overlapping)
    assert 0.5 < overlapping["value"] < 1.0 and overlapping["ci"][0] < overlapping["ci"][1]
    again = metrics.compute("vc_auroc", matched=matched - 0.3, mismatched=mismatched, num_resamples=50, seed=0)
    assert again == overlapping


def test_vc_auroc_refuses_bad_input():
    with pytest.raises(ConfigError, match="matched must have shape"):
        judge.vc_auroc(torch.rand(4, 2), torch.rand(4))
    with pytest.raises(ConfigError, match=r"mismatched must lie in \[0, 1\]"):
        judge.vc_auroc(torch.rand(4), torch.full((4,), 1.5))
    with pytest.raises(ConfigError, match="mismatched needs at least 1 row"):
        judge.vc_auroc(torch.rand(4), torch.zeros(0))
