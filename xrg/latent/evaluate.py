"""The dissertation's chapter-4 evaluation of PGGAN, on features and probabilities of the evaluator.

Everything here takes features (the evaluation classifier's pooled 1024-d DenseNet features,
the feature space of every FID in the book) and labels that the caller computed, so it is
tested on known distributions:

* :func:`group_fids` — Table 4.1: the FID between the real images with no finding and those
  with each finding, beside two floors: the FID between two halves of a **stratified,
  patient-disjoint split** of all real images (the dissertation's 0.53) and, for each finding,
  between two disjoint halves of its own group — FID grows as groups shrink, so a finding's
  distance means something only well above the floor at its size; and ``synthetic``, real vs
  random generated images.
* :func:`fid_matrix` — the pairwise FID of all groups, placed in 2-D by metric
  multidimensional scaling (scikit-learn's ``MDS`` on the precomputed distances, Figure 4.3)
  and clustered hierarchically (scipy's average linkage, Figure 4.4).
* :func:`label_prevalence` — Figure 4.5: the share of images the evaluator calls positive for
  each finding at its thresholds, for real images and for random generates, with bootstrap
  95% CIs over images.
* :func:`search_rates` — per class, the search success rate, the rate the independent
  evaluator confirms and the median steps, from the manifests of :mod:`xrg.latent.sample`.
* :func:`search_lift` — what a search adds to the evaluator's verdict on its own starting
  image (paired per search), per class and macro over classes, with stratified bootstrap 95%
  intervals and a verdict: a lift whose interval contains 0 is "not significant".
* :func:`rate_difference` — one classifier's macro rate minus another's (the dissertation's
  question: does the critic-based classifier converge more often?), with its interval.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from xrg.errors import ConfigError
from xrg.eval.metrics import _frechet_distance, _interval, _mean_estimate, bootstrap_distribution

NO_FINDING = "no_finding"


def frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """FID between two feature sets ``[N, D]``, ``[M, D]`` (each needs two or more rows)."""
    if len(a) < 2 or len(b) < 2:
        raise ConfigError(f"a Fréchet distance needs two or more images per set, got {len(a)} and {len(b)}")
    return _frechet_distance(a.double(), b.double())


def stratified_halves(labels: torch.Tensor, patients: Sequence[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of two halves with no patient in both and, as nearly as can be, the same label mix.

    Patients are grouped by their label combination (the union of their images' findings),
    shuffled with ``seed`` within each combination and dealt alternately to the two halves,
    the smaller half first — a simple iterative stratification at the patient level.
    """
    if len(patients) != len(labels):
        raise ConfigError(f"{len(patients)} patient ids for {len(labels)} label rows")
    rows: dict[str, list[int]] = {}
    for row, patient in enumerate(patients):
        rows.setdefault(str(patient), []).append(row)
    by_combination: dict[tuple[int, ...], list[str]] = {}
    for patient, patient_rows in rows.items():
        combination = tuple(int(v) for v in (labels[patient_rows].sum(0) > 0).tolist())
        by_combination.setdefault(combination, []).append(patient)
    rng = np.random.default_rng(seed)
    halves: tuple[list[int], list[int]] = ([], [])
    for combination in sorted(by_combination):
        members = sorted(by_combination[combination])
        rng.shuffle(members)
        for patient in members:
            smaller = 0 if len(halves[0]) <= len(halves[1]) else 1
            halves[smaller].extend(rows[patient])
    return np.sort(halves[0]), np.sort(halves[1])


def group_fids(
    features: torch.Tensor,
    labels: torch.Tensor,
    names: Sequence[str],
    patients: Sequence[str],
    generated: torch.Tensor | None = None,
    min_group: int = 20,
    seed: int = 0,
) -> dict[str, Any]:
    """Table 4.1 (module docstring) over real ``features [N, D]`` with multi-hot ``labels [N, C]``.

    Returns ``{"stratified": floor, "synthetic": real vs generated or None, "groups": {name:
    {"n", "fid", "floor"}}, "left_out": {name: reason}}``; the no-finding group's ``fid`` is 0 by
    definition. A finding with fewer than ``min_group`` images (or no no-finding images to compare
    with) is left out with the reason, never computed on a handful.
    """
    labels = labels.bool()
    if labels.shape != (len(features), len(names)):
        raise ConfigError(f"labels must be [{len(features)}, {len(names)}], got {tuple(labels.shape)}")
    if min_group < 4:
        raise ConfigError(f"min_group must be at least 4 (two halves of two), got {min_group}")
    first, second = stratified_halves(labels, patients, seed)
    result: dict[str, Any] = {"stratified": frechet(features[first], features[second]), "groups": {}, "left_out": {}}
    base_rows = np.flatnonzero(~labels.any(dim=1).numpy())
    groups = {NO_FINDING: base_rows, **{name: np.flatnonzero(labels[:, k].numpy()) for k, name in enumerate(names)}}
    rng = np.random.default_rng(seed)
    if len(base_rows) < min_group:
        result["left_out"][NO_FINDING] = f"{len(base_rows)} images with no finding < {min_group}"
    for name, rows in groups.items():
        if name != NO_FINDING and (len(rows) < min_group or len(base_rows) < min_group):
            result["left_out"][name] = f"{len(rows)} images < {min_group}" if len(rows) < min_group else "no baseline"
            continue
        if name == NO_FINDING and len(rows) < min_group:
            continue
        shuffled = rng.permutation(rows)
        half = len(shuffled) // 2
        result["groups"][name] = {
            "n": int(len(rows)),
            "fid": 0.0 if name == NO_FINDING else frechet(features[base_rows], features[rows]),
            "floor": frechet(features[shuffled[:half]], features[shuffled[half:]]),
        }
    result["synthetic"] = None if generated is None else frechet(features, generated)
    return result


def fid_matrix(
    features: torch.Tensor, labels: torch.Tensor, names: Sequence[str], min_group: int = 20, seed: int = 0
) -> dict[str, Any]:
    """Pairwise FID of the no-finding group and every finding with ``min_group`` images, its 2-D
    MDS embedding and the average-linkage clustering (module docstring).

    Returns ``{"names", "distances" [G, G], "embedding" [G, 2], "linkage" (scipy's [G − 1, 4])}``.
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform
    from sklearn.manifold import MDS

    labels = labels.bool()
    groups = {NO_FINDING: ~labels.any(dim=1)} | {name: labels[:, k] for k, name in enumerate(names)}
    kept = [(name, mask) for name, mask in groups.items() if int(mask.sum()) >= min_group]
    if len(kept) < 3:
        raise ConfigError(f"only {len(kept)} groups have {min_group} images; a map needs at least 3")
    size = len(kept)
    distances = np.zeros((size, size))
    for i in range(size):
        for j in range(i + 1, size):
            distances[i, j] = distances[j, i] = frechet(features[kept[i][1]], features[kept[j][1]])
    mds = MDS(n_components=2, metric="precomputed", metric_mds=True, init="random", n_init=4, random_state=seed)
    embedding = mds.fit_transform(distances)
    return {
        "names": [name for name, _ in kept],
        "distances": distances,
        "embedding": embedding,
        "linkage": linkage(squareform(distances, checks=False), method="average"),
    }


def label_prevalence(
    probabilities: torch.Tensor,
    thresholds: Mapping[str, float | None],
    names: Sequence[str],
    num_resamples: int = 200,
    seed: int = 0,
) -> dict[str, dict[str, Any] | None]:
    """Per finding, the share of images whose probability reaches its threshold, with a bootstrap
    95% CI over images; None for a finding without a threshold."""
    if probabilities.ndim != 2 or probabilities.shape[1] != len(names):
        raise ConfigError(f"probabilities must be [N, {len(names)}], got {tuple(probabilities.shape)}")
    result: dict[str, dict[str, Any] | None] = {}
    for k, name in enumerate(names):
        threshold = thresholds.get(name)
        if threshold is None:
            result[name] = None
            continue
        called = (probabilities[:, k] >= float(threshold)).double().numpy()
        result[name] = _mean_estimate(called, num_resamples, seed)
    return result


def search_rates(manifests: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per class, from its manifest lines: searches, success rate, confirmed rate (None when no
    evaluator judged) and the median steps of the successful searches; with lines from
    :func:`~xrg.latent.sample.judged_searches`, also the controls ``passed_at_start_rate`` and
    ``confirmed_at_start_rate`` (the starting images, before any step)."""
    rates = {}
    for name, lines in manifests.items():
        passed = [line for line in lines if line["success"]]
        judged = any(line.get("confirmed") is not None for line in passed) or not passed
        rates[name] = {
            "searches": len(lines),
            "success_rate": len(passed) / len(lines) if lines else None,
            "confirmed_rate": sum(bool(line.get("confirmed")) for line in passed) / len(lines)
            if lines and judged
            else None,
            "median_steps": statistics.median(line["steps"] for line in passed) if passed else None,
        }
        for key in ("passed_at_start", "confirmed_at_start"):  # the controls, where the lines carry them
            if lines and all(line.get(key) is not None for line in lines):
                rates[name][f"{key}_rate"] = sum(bool(line[key]) for line in lines) / len(lines)
    return rates


def verdict(interval: Sequence[float | None] | None, positive: str = "lift", negative: str = "harm") -> str:
    """``positive`` when the interval lies above 0, ``negative`` below it, else "not significant"."""
    if not interval or interval[0] is None or interval[1] is None:
        return "not significant"
    if interval[0] > 0:
        return positive
    if interval[1] < 0:
        return negative
    return "not significant"


def _class_columns(manifests: Mapping[str, Sequence[Mapping[str, Any]]], value) -> dict[str, np.ndarray]:
    """Per class with lines, ``value(line)`` of each line as a float array."""
    return {name: np.array([float(value(line)) for line in lines]) for name, lines in manifests.items() if lines}


def _macro_estimate(
    columns: Sequence[np.ndarray], minus: Sequence[np.ndarray] = (), num_resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The mean over classes of each class's mean of ``columns`` (minus the same of ``minus``),
    every column resampled on its own (a stratified bootstrap: each class keeps its number of
    searches). Class means are averaged with ``np.mean``, so equal sets give exactly 0."""
    every = list(columns) + list(minus)

    def statistic(*rows):
        means = [c[r].mean() for c, r in zip(every, rows)]
        value = np.mean(means[: len(columns)])
        return value - np.mean(means[len(columns) :]) if len(minus) else value

    point = float(statistic(*(np.arange(len(c)) for c in every)))
    distribution = bootstrap_distribution(statistic, tuple(len(c) for c in every), num_resamples, seed)
    return {"value": point, "ci": _interval(distribution, point), "n": int(sum(len(c) for c in every))}


def search_lift(
    manifests: Mapping[str, Sequence[Mapping[str, Any]]], num_resamples: int = 1000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """The evaluator-confirmed rate minus the evaluator's rate on the **starting** images, paired
    per search (each search scores ``confirmed - confirmed_at_start`` in {-1, 0, 1}).

    Per class and ``"macro"`` (the unweighted mean over classes): ``value``, a bootstrap 95%
    ``ci`` over searches (stratified by class for the macro), ``n`` searches and ``verdict``
    ("lift", "harm" or "not significant"). The lines need both judgements
    (:func:`~xrg.latent.sample.judged_searches` with an evaluator)."""
    for name, lines in manifests.items():
        if any(line.get("confirmed_at_start") is None for line in lines):
            raise ConfigError(
                f"class {name!r}: search lines without 'confirmed_at_start' (judge them with an evaluator)"
            )
    columns = _class_columns(manifests, lambda line: bool(line.get("confirmed")) - bool(line["confirmed_at_start"]))
    result: dict[str, dict[str, Any]] = {}
    for k, (name, column) in enumerate(columns.items()):
        result[name] = _mean_estimate(column, num_resamples, seed + k)
    if columns:
        result["macro"] = _macro_estimate(list(columns.values()), num_resamples=num_resamples, seed=seed)
    for estimate in result.values():
        estimate["verdict"] = verdict(estimate["ci"])
    return result


def rate_difference(
    a: Mapping[str, Sequence[Mapping[str, Any]]],
    b: Mapping[str, Sequence[Mapping[str, Any]]],
    key: str = "success",
    num_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Macro rate of ``key`` (``"success"`` or ``"confirmed"``) over the classes both manifests
    have, ``a`` minus ``b``, with a bootstrap 95% interval (each class of each set resampled on
    its own) and a verdict ("higher", "lower" or "not significant")."""
    if key not in ("success", "confirmed"):
        raise ConfigError(f"key must be 'success' or 'confirmed', got {key!r}")
    classes = [name for name in a if a[name] and b.get(name)]
    if not classes:
        raise ConfigError("the two manifests share no class with searches")
    column_a = _class_columns({name: a[name] for name in classes}, lambda line: bool(line.get(key)))
    column_b = _class_columns({name: b[name] for name in classes}, lambda line: bool(line.get(key)))
    estimate = _macro_estimate(list(column_a.values()), list(column_b.values()), num_resamples, seed)
    estimate["classes"] = classes
    estimate["verdict"] = verdict(estimate["ci"], positive="higher", negative="lower")
    return estimate


@torch.no_grad()
def evaluator_features(classifier: Any, images: torch.Tensor, size: int, batch_size: int = 64) -> torch.Tensor:
    """Pooled features ``[N, 1024]`` of the evaluation classifier for ``images [N, 1, H, W]`` in [0, 1] at ``size``."""
    import torch.nn.functional as F

    classifier = classifier.eval()
    parts = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].float()
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="area" if x.shape[-1] > size else "bilinear")
        parts.append(classifier.features(x).cpu())
    return torch.cat(parts) if parts else torch.zeros(0, 1024)
