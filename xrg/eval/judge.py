"""Finding fidelity, controllability and view consistency that a population-mean image cannot win.

An outside review showed that a generator drawing nearly the same mean chest for every report
scores well on AUROC-only finding fidelity (tiny label-correlated changes rank perfectly), on
controllability without a margin (any nudge in the right direction counts) and on the mean VC
probability (two mean images look like one patient to a VCN). The metrics here each give a
report-blind generator a known null score, stated in each docstring:

* :func:`finding_detection` calls findings at fixed thresholds chosen on the evaluator
  cohort's held-out part (:func:`youden_thresholds`), never on the test split, over the
  findings the evaluator judges reliably there (:func:`judgeable_findings`). Its headline
  is detection minus false-alarm rate (Youden's J of the images), 0 for one image for all.
* :func:`controllability_margin` counts an edit only when the edited finding moves the
  intended way by a stated margin and more than every other finding: 0 for a generator
  that ignores the text.
* :func:`vc_auroc` asks whether the evaluation VCN tells matched frontal/lateral pairs from
  mismatched ones (:func:`mismatched_permutation`): 0.5 when every report gets the same pair.

Each metric is registered (:func:`xrg.eval.metrics.register`) and returns a plain dict with
a bootstrap 95% CI over cases, like the metrics of :mod:`xrg.eval.metrics`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from xrg.errors import ConfigError
from xrg.eval.metrics import (
    _check_resampling,
    _defined_mean,
    _estimate,
    _finding_names,
    _in_unit_range,
    _mean_estimate,
    _same_shape,
    _tensor,
    bootstrap_distribution,
    register,
)

#: Controllability edits scored separately in ``per_operation``.
EDIT_OPERATIONS: tuple[str, ...] = ("negate", "set_severity")


def _probabilities(value: Any, name: str) -> torch.Tensor:
    tensor = _tensor(value, name, "[N, C]")
    _in_unit_range(tensor, name)
    return tensor


def _labels(value: Any, name: str) -> torch.Tensor:
    tensor = _tensor(value, name, "[N, C]")
    if not bool(((tensor == 0) | (tensor == 1)).all()):
        raise ConfigError(f"{name} must be 0 or 1")
    return tensor.long()


def youden_thresholds(probs: Any, labels: Any, names: Sequence[str]) -> dict[str, float | None]:
    """Per finding, the probability threshold that maximises TPR - FPR (Youden's J).

    ``probs [N, C]`` are the evaluator's probabilities on real images of the evaluator
    cohort's held-out part and ``labels [N, C]`` their findings; the test split must never
    be passed (a threshold fitted there would leak). A finding is called positive when its
    probability is >= the threshold (torchmetrics' ``binary_roc`` convention); among equally
    good thresholds the highest is taken. None for a finding without positives or without
    negatives. The thresholds are properties of the classifier, not of any generator.
    """
    from torchmetrics.functional.classification import binary_roc

    scores = _probabilities(probs, "probs")
    truth = _labels(labels, "labels")
    _same_shape(scores, truth, "probs", "labels")
    names = _finding_names(names, scores.shape[1])
    thresholds: dict[str, float | None] = {}
    for k, name in enumerate(names):
        positives = int(truth[:, k].sum())
        if positives == 0 or positives == len(truth):
            thresholds[name] = None
            continue
        fpr, tpr, cut = binary_roc(scores[:, k], truth[:, k], validate_args=False)
        thresholds[name] = float(cut[int(torch.argmax(tpr.double() - fpr.double()))])
    return thresholds


def judgeable_findings(
    cohort_auroc: Mapping[str, float | None],
    test_positives: Mapping[str, int],
    min_auroc: float = 0.8,
    min_positives: int = 20,
) -> tuple[list[str], dict[str, str]]:
    """The findings the evaluator can judge, and why each other one is left out.

    A finding is judgeable when the evaluator's AUROC on the cohort's held-out part is at
    least ``min_auroc`` (on real images it tells the finding apart) and the test split has
    at least ``min_positives`` reports with it (so a detection rate is more than a few
    cases). ``cohort_auroc`` names every finding (None: undefined on the cohort); a finding
    missing from ``test_positives`` has none. Returns ``(included, {finding: reason})``,
    both in ``cohort_auroc``'s order.
    """
    if not 0 <= min_auroc <= 1:
        raise ConfigError(f"min_auroc must lie in [0, 1], got {min_auroc}")
    if int(min_positives) != min_positives or min_positives < 1:
        raise ConfigError(f"min_positives must be an integer >= 1, got {min_positives}")
    unknown = sorted(set(test_positives) - set(cohort_auroc))
    if unknown:
        raise ConfigError(f"test_positives names findings cohort_auroc does not: {unknown}")
    included: list[str] = []
    excluded: dict[str, str] = {}
    for name, auroc in cohort_auroc.items():
        positives = int(test_positives.get(name, 0))
        reasons = []
        if auroc is None:
            reasons.append("evaluator AUROC undefined on the cohort (no positives or no negatives there)")
        elif float(auroc) < min_auroc:
            reasons.append(f"evaluator AUROC {float(auroc):.2f} < {min_auroc:g} on the cohort")
        if positives < min_positives:
            reasons.append(f"{positives} test positives < {int(min_positives)}")
        if reasons:
            excluded[name] = "; ".join(reasons)
        else:
            included.append(name)
    return included, excluded


@register("finding_detection")
def finding_detection(
    probs: Any,
    labels: Any,
    thresholds: Mapping[str, float | None],
    names: Sequence[str],
    included: Sequence[str],
    excluded: Mapping[str, str] | None = None,
    num_resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Does the evaluator find, at fixed thresholds, the findings each report asked for?

    ``probs [N, C]``: the evaluator's probabilities on the images made for N test reports
    (generated ones, or the real renders for the ceiling); ``labels [N, C]``: the reports'
    findings; ``thresholds``: per finding, from :func:`youden_thresholds` on the cohort. Per
    finding: ``detection_rate`` (positive reports whose image is called positive),
    ``false_alarm_rate`` (the same on negative reports), their difference
    ``detection_minus_false_alarm``, and the mean probability on positive and on negative
    reports with their difference. ``value`` is the macro mean of the difference over the
    ``included`` findings (:func:`judgeable_findings`; ``excluded`` gives the reasons of the
    others, and an included finding without a threshold is moved there). An image that is the
    same for every report is called the same for positive and negative reports, so it scores
    exactly 0; so does any image that ignores the report.
    """
    scores = _probabilities(probs, "probs")
    truth = _labels(labels, "labels")
    _same_shape(scores, truth, "probs", "labels")
    names = _finding_names(names, scores.shape[1])
    unknown = sorted(set(included) - set(names))
    if unknown:
        raise ConfigError(f"included names findings that names does not: {unknown}")
    both = sorted(set(included) & set(excluded or {}))
    if both:
        raise ConfigError(f"findings cannot be both included and excluded: {both}")
    reasons = {name: str(reason) for name, reason in (excluded or {}).items() if name in names}
    for name in names:
        if name in included and name not in thresholds:
            raise ConfigError(f"thresholds has no entry for the included finding {name!r}")
        if name in included and thresholds[name] is None:
            reasons[name] = "no threshold (the cohort's held-out part has no positives or no negatives)"
        elif name not in included:
            reasons.setdefault(name, "not judgeable")
    judged = [k for k, name in enumerate(names) if name not in reasons]
    # a finding without a threshold has no calls (detection and false alarm None), only mean probabilities
    cut = torch.tensor([np.nan if thresholds.get(name) is None else float(thresholds[name]) for name in names])
    called = torch.where(cut.isnan(), torch.nan, (scores >= cut).double()).numpy()
    probabilities, positive = scores.numpy(), truth.numpy().astype(bool)

    def per_finding(rows: np.ndarray) -> np.ndarray:
        """``[C, 4]``: detection, false alarm, mean probability on positives, on negatives (NaN: undefined)."""
        table = np.full((len(names), 4), np.nan)
        is_positive, calls, probs_rows = positive[rows], called[rows], probabilities[rows]
        for k in range(len(names)):
            pos, neg = is_positive[:, k], ~is_positive[:, k]
            if pos.any():
                table[k, 0], table[k, 2] = calls[pos, k].mean(), probs_rows[pos, k].mean()
            if neg.any():
                table[k, 1], table[k, 3] = calls[neg, k].mean(), probs_rows[neg, k].mean()
        return table

    def derived(table: np.ndarray) -> np.ndarray:
        """``[..., C, 6]``: the four columns, detection - false alarm, probability difference."""
        return np.concatenate([table, table[..., 0:1] - table[..., 1:2], table[..., 2:3] - table[..., 3:4]], axis=-1)

    columns = ("detection_rate", "false_alarm_rate", "mean_prob_positive", "mean_prob_negative",
               "detection_minus_false_alarm", "prob_difference")  # fmt: skip
    count = len(scores)
    full = derived(per_finding(np.arange(count)))
    distribution = derived(bootstrap_distribution(per_finding, count, num_resamples, seed))
    per_name: dict[str, Any] = {}
    for k, name in enumerate(names):
        entry = {column: _estimate(full[k, j], distribution[:, k, j], count) for j, column in enumerate(columns)}
        per_name[name] = {
            **entry, "threshold": None if cut[k].isnan() else float(cut[k]), "included": k in judged,
            "positives": int(positive[:, k].sum()), "negatives": int((~positive[:, k]).sum()),
        }  # fmt: skip

    def macro(j: int) -> dict[str, Any]:
        values = full[judged, j]
        point = float(values[np.isfinite(values)].mean()) if np.isfinite(values).any() else None
        return _estimate(point, _defined_mean(distribution[:, judged, j]), count)

    headline = macro(columns.index("detection_minus_false_alarm"))
    return {
        **headline,
        "definition": "detection rate - false-alarm rate at fixed evaluator thresholds (Youden J on the cohort), "
        "macro over the judgeable findings",
        "findings": len(judged),
        "included": [names[k] for k in judged],
        "excluded": {name: reasons[name] for name in names if name in reasons},
        "macro": {column: macro(j) for j, column in enumerate(columns)},
        "per_finding": per_name,
    }


def _edit_indices(edited: Any, count: int, kinds: int) -> torch.Tensor:
    target = _tensor(edited, "edited", "[N]")
    if len(target) != count or not bool((target == target.round()).all()) or target.min() < 0 or target.max() >= kinds:
        raise ConfigError(f"edited must hold {count} finding indices in [0, {kinds}), got {target.tolist()[:10]}")
    return target.long()


def _edit_successes(change: torch.Tensor, target: torch.Tensor, sign: torch.Tensor, margin: float) -> torch.Tensor:
    """Per edit, 1.0 when the target moved the intended way by >= margin and more than every other finding."""
    rows = torch.arange(len(change))
    moved = change[rows, target]
    others = change.abs().clone()
    others[rows, target] = -1.0  # never the largest
    largest_other = others.max(dim=1).values
    return ((sign * moved >= margin) & (largest_other < moved.abs())).double()


@register("controllability_margin")
def controllability_margin(
    before: Any,
    after: Any,
    edited: Any,
    direction: Any,
    names: Sequence[str],
    operations: Sequence[str] | None = None,
    margin: float = 0.1,
    num_resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """The share of report edits that move the edited finding, by a margin, and mainly it.

    ``before``/``after [N, C]``: the evaluator's probabilities on the images of each report
    before and after its edit (same seed); ``edited [N]``: the edited finding's index;
    ``direction [N]``: +1 (its probability should rise) or -1 (fall); ``operations [N]``:
    the edit's kind (``negate``, ``set_severity``), for ``per_operation``. An edit succeeds
    when direction * change of the edited finding is >= ``margin`` and every other finding's
    absolute change is smaller than the edited one's. ``value`` is the success rate;
    ``edited_shift`` the mean signed change of the edited finding in the intended direction,
    ``others_shift``/``others_abs_shift`` the mean signed/absolute change of the other
    findings. ``placebo`` scores the same changes against the edits of other cases (a seeded
    derangement): about the success rate of edits that change the images at random, and
    about 0 for a generator that changes only what it was asked to. A generator that ignores
    the text (before == after) scores exactly 0.
    """
    start, end = _probabilities(before, "before"), _probabilities(after, "after")
    _same_shape(start, end, "before", "after")
    count, kinds = start.shape
    names = _finding_names(names, kinds)
    target = _edit_indices(edited, count, kinds)
    sign = _tensor(direction, "direction", "[N]")
    if len(sign) != count or not bool((sign.abs() == 1).all()):
        raise ConfigError(f"direction must hold {count} values, each +1 or -1")
    if not 0 < margin <= 1:
        raise ConfigError(f"margin must lie in (0, 1] (a change of probability), got {margin}")
    if operations is not None:
        operations = [str(o) for o in operations]
        if len(operations) != count:
            raise ConfigError(f"operations must name the operation of each of the {count} edits, got {len(operations)}")

    change = end - start
    rows = torch.arange(count)
    success = _edit_successes(change, target, sign, margin)
    others = torch.ones_like(change, dtype=torch.bool)
    others[rows, target] = False
    result: dict[str, Any] = {
        **_mean_estimate(success, num_resamples, seed),
        "definition": f"edited finding moves the intended way by >= {margin:g} and more than every other finding",
        "margin": float(margin),
        "edited_shift": _mean_estimate(sign * change[rows, target], num_resamples, seed),
    }
    if kinds > 1:
        result["others_shift"] = _mean_estimate((change * others).sum(dim=1) / (kinds - 1), num_resamples, seed)
        result["others_abs_shift"] = _mean_estimate(
            (change.abs() * others).sum(dim=1) / (kinds - 1), num_resamples, seed
        )
    else:
        result["others_shift"] = result["others_abs_shift"] = {"value": None, "ci": [None, None], "n": count}
    if count >= 2:
        partner = mismatched_permutation(count, seed)
        result["placebo"] = _mean_estimate(
            _edit_successes(change, target[partner], sign[partner], margin), num_resamples, seed
        )
    else:
        result["placebo"] = {"value": None, "ci": [None, None], "n": count}
    if operations is not None:
        result["per_operation"] = {
            operation: _mean_estimate(
                success[[i for i, o in enumerate(operations) if o == operation]], num_resamples, seed
            )
            for operation in dict.fromkeys(operations)
        }
    result["per_finding"] = {
        names[k]: _mean_estimate(success[target == k], num_resamples, seed) for k in sorted(set(target.tolist()))
    }
    return result


def mismatched_permutation(n: int, seed: int = 0) -> torch.Tensor:
    """A seeded derangement of ``range(n)`` (``[n]`` long, no ``i`` maps to itself).

    Case ``i`` is paired with case ``order[j + 1]`` where ``i = order[j]`` for a seeded random
    ``order`` (one cycle through all cases), so every case is used once as a partner. Pair
    report i's frontal with report π(i)'s lateral for a mismatched pair; the test split has
    one report per patient, so a partner is always another patient.
    """
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ConfigError(f"a mismatched permutation needs n >= 2 cases (an integer), got {n!r}")
    _check_resampling(1, seed)
    order = np.random.default_rng(seed).permutation(int(n))
    partner = np.empty(int(n), dtype=np.int64)
    partner[order] = np.roll(order, -1)
    return torch.from_numpy(partner)


@register("vc_auroc")
def vc_auroc(matched: Any, mismatched: Any, num_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """AUROC of the evaluation VCN telling matched frontal/lateral pairs from mismatched ones.

    ``matched [N]``: the VCN's P(same patient) of each report's own generated frontal and
    lateral; ``mismatched [M]``: of report i's frontal with report π(i)'s lateral
    (:func:`mismatched_permutation`). torchmetrics' ``binary_auroc``, the CI resampling both
    sets. 1: the generated views of a report belong together and to no other report's; an
    identical pair for every report scores exactly 0.5 (all ties), however high its mean VC.
    """
    from torchmetrics.functional.classification import binary_auroc

    positive = _tensor(matched, "matched", "[N]")
    negative = _tensor(mismatched, "mismatched", "[M]")
    _in_unit_range(positive, "matched")
    _in_unit_range(negative, "mismatched")

    def auroc(positive_rows: np.ndarray, negative_rows: np.ndarray) -> float:
        scores = torch.cat([positive[torch.from_numpy(positive_rows)], negative[torch.from_numpy(negative_rows)]])
        truth = torch.cat([torch.ones(len(positive_rows)), torch.zeros(len(negative_rows))]).long()
        return float(binary_auroc(scores, truth, validate_args=False))

    sizes = (len(positive), len(negative))
    value = auroc(np.arange(sizes[0]), np.arange(sizes[1]))
    distribution = bootstrap_distribution(auroc, sizes, num_resamples, seed)
    return _estimate(
        value, distribution, sizes[0], n_mismatched=sizes[1], method="AUROC of VCN P(same patient), matched vs mismatched pairs",
        mean_matched=float(positive.mean()), mean_mismatched=float(negative.mean()),
    )  # fmt: skip
