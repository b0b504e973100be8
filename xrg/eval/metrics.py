"""The numbers of ``xrg eval``: image-generation metrics, each with an interval and its method.

Every metric is a small function registered under a name (:func:`register`) and called by
name through :func:`compute`, in the style of stylegan2-ada's ``metric_main``; each returns
a plain, JSON-serialisable dict (python floats, ints and lists; an undefined number is
``None``, never NaN). An estimate is ``{"value": float, "ci": [low, high], "n": int}``,
sometimes with extra keys (``n_real``, ``std``, ``positives``, ``method`` ...);
:class:`xrg.eval.contract.Estimate` reads them.

The metrics work on what the evaluation networks computed, not on images, except SSIM and
MS-SSIM: FID and KID on pooled features. The official XRayGAN scored IS and FID with a
DenseNet-121 chest X-ray classifier rather than ImageNet's Inception; :mod:`xrg.eval.run`
scores FID and KID with its own evaluation DenseNet-121 (not IS: that classifier is
multi-label, so a softmax over its logits is no class distribution); with a local
Inception weights file (:func:`inception_features`) the standard Inception IS and FID come too.

Point estimates are torchmetrics' (``InceptionScore``, ``FrechetInceptionDistance``,
``KernelInceptionDistance`` over an identity feature module, the functional SSIM, MS-SSIM
and AUROC). Resamples of IS and FID use the same formulas in closed form
(:func:`_inception_score`, :func:`_frechet_distance`, both tested equal to torchmetrics):
torchmetrics' FID takes the eigenvalues of a non-symmetric ``D x D`` matrix, seconds per
call at ``D = 1024`` on a CPU, which resampling would repeat many times.

Intervals: FID's comes from half-sampling without replacement, bias-extrapolated
(:func:`fid`), KID's from its subset standard error (:func:`kid`); every other CI is a
percentile interval over ``num_resamples`` resamples of the cases with replacement
(:func:`bootstrap_ci`), drawn with ``numpy.random.default_rng(seed)``, so the same seed gives
the same numbers. For a biased statistic (a median ratio) resampled values can all lie on
one side of the full-sample value; such a bootstrap interval is widened to reach the point
estimate.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import itertools
import math
import os
import statistics
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from xrg.errors import ConfigError

MetricFunction = Callable[..., dict[str, Any]]

#: Metric functions by name; :func:`compute` calls them.
REGISTRY: dict[str, MetricFunction] = {}

#: The five MS-SSIM scale weights of Wang et al. (2003), finest scale first.
MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: Gaussian window sizes MS-SSIM may use, preferred first (11 is the standard).
MS_SSIM_KERNELS = (11, 9, 7, 5)
#: Images must be at least this wide for SSIM's 11-px Gaussian window.
SSIM_MIN_SIDE = 11
INCEPTION_SIZE = 299
#: Elements of one block of a pairwise distance matrix (bounds the memory of memorisation).
_DISTANCE_BLOCK = 1 << 22


def register(name: str) -> Callable[[MetricFunction], MetricFunction]:
    """Decorator: make a metric function callable as ``compute(name, ...)``."""

    def decorate(function: MetricFunction) -> MetricFunction:
        if name in REGISTRY:
            raise ConfigError(f"metric {name!r} is registered twice")
        REGISTRY[name] = function
        return function

    return decorate


def compute(name: str, **kwargs: Any) -> dict[str, Any]:
    """Call the metric registered as ``name`` with ``kwargs``."""
    if name not in REGISTRY:
        raise ConfigError(f"unknown metric {name!r}; known metrics: {', '.join(sorted(REGISTRY))}")
    function = REGISTRY[name]
    try:
        inspect.signature(function).bind(**kwargs)
    except TypeError as error:
        raise ConfigError(f"metric {name!r}: {error}") from None
    return function(**kwargs)


# --------------------------------------------------------------------------- input checks


def _tensor(value: Any, name: str, layout: str, dtype: torch.dtype = torch.float64, min_rows: int = 1) -> torch.Tensor:
    """``value`` as a CPU tensor of ``dtype`` with as many dimensions as ``layout`` names."""
    try:
        tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise ConfigError(f"{name} must be an array of numbers {layout}: {error}") from None
    ndim = layout.count(",") + 1
    if tensor.dim() != ndim:
        raise ConfigError(f"{name} must have shape {layout}, got shape {tuple(tensor.shape)}")
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise ConfigError(f"{name} has NaN or infinite values")
    if len(tensor) < min_rows:
        raise ConfigError(f"{name} needs at least {min_rows} rows along its first dimension, got {len(tensor)}")
    return tensor.cpu().to(dtype)


def _in_unit_range(tensor: torch.Tensor, name: str) -> None:
    if tensor.numel() and (tensor.min() < 0 or tensor.max() > 1):
        raise ConfigError(
            f"{name} must lie in [0, 1], got values from {float(tensor.min()):.4g} to {float(tensor.max()):.4g}"
        )


def _same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ConfigError(f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def _feature_pair(real: Any, fake: Any, real_name: str, fake_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    real_t = _tensor(real, real_name, "[N, D]", min_rows=2)
    fake_t = _tensor(fake, fake_name, "[M, D]", min_rows=2)
    if real_t.shape[1] != fake_t.shape[1]:
        raise ConfigError(
            f"{real_name} and {fake_name} must have the same feature size D, got {real_t.shape[1]} and {fake_t.shape[1]}"
        )
    return real_t, fake_t


def _finding_names(names: Sequence[str], count: int) -> list[str]:
    names = [str(n) for n in names]
    if len(names) != count:
        raise ConfigError(f"names must name each of the {count} findings, got {len(names)} names")
    if len(set(names)) != len(names) or "macro" in names:
        raise ConfigError(f"names must be distinct and not 'macro', got {names}")
    return names


def _check_resampling(num_resamples: int, seed: int, level: float = 0.95) -> None:
    if int(num_resamples) < 1:
        raise ConfigError(f"num_resamples must be >= 1, got {num_resamples}")
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1), got {level}")
    if int(seed) != seed:
        raise ConfigError(f"seed must be an integer, got {seed!r}")


# --------------------------------------------------------------------------- bootstrap


def _as_float_array(value: Any) -> np.ndarray:
    """A statistic's value as float64, None becoming NaN (an undefined resample)."""
    if value is None:
        return np.array(np.nan)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    if isinstance(value, (list, tuple)):
        value = [np.nan if v is None else v for v in value]
    return np.array(value, dtype=np.float64)


def _sizes(n: int | Sequence[int]) -> tuple[int, ...]:
    sizes = (int(n),) if isinstance(n, (int, np.integer)) else tuple(int(s) for s in n)
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"bootstrap sample sizes must be >= 1, got {n}")
    return sizes


def _resampled_indices(sizes: tuple[int, ...], num_resamples: int, seed: int) -> Iterator[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    for _ in range(int(num_resamples)):
        yield tuple(rng.integers(0, size, size=size) for size in sizes)


def bootstrap_distribution(
    statistic: Callable[..., Any], n: int | Sequence[int], num_resamples: int, seed: int
) -> np.ndarray:
    """``statistic`` on ``num_resamples`` bootstrap resamples, ``[R]`` (or ``[R, ...]``).

    ``statistic`` takes one array of indices per sample set: ``n`` is the size of the one set,
    or a tuple of sizes of several sets resampled independently (FID resamples both its
    real and its generated set). A resample where the statistic is undefined (it returned
    None or NaN) is NaN.
    """
    _check_resampling(num_resamples, seed)
    return np.stack(
        [_as_float_array(statistic(*indices)) for indices in _resampled_indices(_sizes(n), num_resamples, seed)]
    )


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _interval(distribution: np.ndarray, point: float | None, level: float = 0.95) -> list[float | None]:
    """Percentile interval of the defined resamples, widened to contain ``point``."""
    finite = distribution[np.isfinite(distribution)]
    if point is None or finite.size == 0:
        return [None, None]
    tail = 50 * (1 - level)
    low, high = np.percentile(finite, [tail, 100 - tail])
    return [float(min(low, point)), float(max(high, point))]


def bootstrap_ci(
    statistic: Callable[..., Any], n: int | Sequence[int], num_resamples: int, seed: int, level: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of a scalar ``statistic`` at ``level``.

    Indices are drawn with replacement by ``numpy.random.default_rng(seed)`` (see
    :func:`bootstrap_distribution` for ``n``); resamples where the statistic is undefined are
    skipped. The interval is widened to contain the statistic of the full sample. ``(None,
    None)`` when that is undefined or no resample is defined.
    """
    _check_resampling(num_resamples, seed, level)
    point = _finite_or_none(statistic(*(np.arange(size) for size in _sizes(n))))
    low, high = _interval(bootstrap_distribution(statistic, n, num_resamples, seed), point, level)
    return low, high


def _estimate(value: Any, distribution: np.ndarray, n: int, **extra: Any) -> dict[str, Any]:
    point = _finite_or_none(value)
    return {"value": point, "ci": _interval(distribution, point), "n": int(n), **extra}


def _mean_estimate(values: torch.Tensor | np.ndarray, num_resamples: int, seed: int, **extra: Any) -> dict[str, Any]:
    """Mean of per-case ``values [N]`` with a bootstrap CI over cases."""
    values = np.asarray(values, dtype=np.float64)
    distribution = bootstrap_distribution(lambda rows: values[rows].mean(), len(values), num_resamples, seed)
    return _estimate(values.mean(), distribution, len(values), **extra)


# --------------------------------------------------------------------------- torchmetrics on precomputed features


class PrecomputedFeatures(nn.Module):
    """Identity "feature extractor", so torchmetrics' metrics take features we computed.

    ``num_features`` is set because ``FrechetInceptionDistance`` otherwise probes a custom
    module with a random 3x299x299 image to learn the feature size.
    """

    def __init__(self, num_features: int | None = None) -> None:
        super().__init__()
        if num_features is not None:
            self.num_features = int(num_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@contextlib.contextmanager
def _without_buffer_warnings() -> Iterator[None]:
    """Silence torchmetrics' warning that IS keeps features in memory, and the NaN std of one split."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        warnings.filterwarnings("ignore", message=".*degrees of freedom.*")
        yield


def _torchmetrics_inception_score(logits: torch.Tensor) -> float:
    from torchmetrics.image.inception import InceptionScore

    with _without_buffer_warnings(), torch.random.fork_rng(devices=[]):  # compute() shuffles with the global RNG
        metric = InceptionScore(feature=PrecomputedFeatures(), splits=1)
        metric.update(logits)
        mean, _ = metric.compute()
    return float(mean)


def _inception_score(logits: torch.Tensor) -> float:
    """exp(E_x KL(p(y|x) || p(y))) with p(y|x) = softmax(logits), in log space."""
    log_conditional = torch.log_softmax(logits, dim=1)
    log_marginal = torch.logsumexp(log_conditional, dim=0) - math.log(len(logits))
    kl = (log_conditional.exp() * (log_conditional - log_marginal)).sum(dim=1).mean()
    return float(kl.exp())


def _torchmetrics_fid(real: torch.Tensor, fake: torch.Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]))
    metric.update(real, real=True)
    metric.update(fake, real=False)
    return float(metric.compute())


def _psd_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def _frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """||mu_r - mu_f||^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^(1/2)) without a non-symmetric eig.

    tr((S_r S_f)^(1/2)) is the sum of singular values (nuclear norm) of S_r^(1/2) S_f^(1/2),
    and also of Xr Xf^T / sqrt((n-1)(m-1)) for the centred feature rows; the cheaper of the
    two is used (the second when there are fewer samples than features).
    """
    n, m, dim = len(real), len(fake), real.shape[1]
    centred_real, centred_fake = real - real.mean(0), fake - fake.mean(0)
    traces = centred_real.square().sum() / (n - 1) + centred_fake.square().sum() / (m - 1)
    if n * m * min(n, m) <= 3 * dim**3:
        cross = centred_real @ centred_fake.T / math.sqrt((n - 1) * (m - 1))
        nuclear = torch.linalg.svdvals(cross).sum()
    else:
        root_real = _psd_sqrt(centred_real.T @ centred_real / (n - 1))
        root_fake = _psd_sqrt(centred_fake.T @ centred_fake / (m - 1))
        nuclear = torch.linalg.svdvals(root_real @ root_fake).sum()
    mean_term = (real.mean(0) - fake.mean(0)).square().sum()
    return max(float(mean_term + traces - 2 * nuclear), 0.0)


# --------------------------------------------------------------------------- metrics


@register("inception_score")
def inception_score(fake_logits: Any, num_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Inception Score of class distributions softmax(``fake_logits [N, K]``), in [1, K].

    ``value`` is torchmetrics' ``InceptionScore`` with one split; ``classes`` is K.
    """
    logits = _tensor(fake_logits, "fake_logits", "[N, K]", min_rows=2)
    classes = logits.shape[1]
    if classes < 2:
        raise ConfigError(f"fake_logits needs at least 2 classes, got {classes}")
    # exp(KL) lies in [1, K]; float rounding can leave it an ulp outside (exactly 1 for identical rows)
    bounded = lambda score: min(max(score, 1.0), float(classes))  # noqa: E731
    value = _torchmetrics_inception_score(logits)
    if not math.isfinite(value):  # a class with probability 0 in every row: 0 * log 0 in torchmetrics
        value = _inception_score(logits)
    resampled = lambda rows: bounded(_inception_score(logits[torch.from_numpy(rows)]))  # noqa: E731
    distribution = bootstrap_distribution(resampled, len(logits), num_resamples, seed)
    return _estimate(bounded(value), distribution, len(logits), classes=classes)


def _z(level: float) -> float:
    """The two-sided normal quantile of ``level`` (1.96 for 0.95)."""
    return statistics.NormalDist().inv_cdf(0.5 + level / 2)


def _check_paired(real: torch.Tensor, fake: torch.Tensor, paired: bool) -> None:
    if paired and len(real) != len(fake):
        raise ConfigError(f"paired feature sets need one row per case in both, got {len(real)} and {len(fake)} rows")


def half_split_fids(
    real: torch.Tensor, fake: torch.Tensor, num_splits: int, seed: int, paired: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """FIDs of the two halves of ``num_splits`` random half-splits of both sets, ``[R, 2]``.

    Each split permutes the real and the generated set (``numpy.random.default_rng(seed)``,
    drawn without replacement) and scores the first half of each against the first half of
    the other, and the second halves likewise: two independent FIDs of disjoint cases, each
    on ``(N // 2, M // 2)`` cases (returned too; an odd set leaves one case out per split).
    ``paired``: row ``i`` of both sets is the same case (a generated image and its report's
    render), and the cases are split, one permutation for both sets.
    """
    _check_resampling(num_splits, seed)
    _check_paired(real, fake, paired)
    rng = np.random.default_rng(seed)
    half_real, half_fake = len(real) // 2, len(fake) // 2
    table = np.empty((int(num_splits), 2))
    for r in range(int(num_splits)):
        real_order = rng.permutation(len(real))
        fake_order = real_order if paired else rng.permutation(len(fake))
        for side in range(2):
            rows_real = torch.from_numpy(real_order[side * half_real : (side + 1) * half_real])
            rows_fake = torch.from_numpy(fake_order[side * half_fake : (side + 1) * half_fake])
            table[r, side] = _frechet_distance(real[rows_real], fake[rows_fake])
    return table, (half_real, half_fake)


@register("fid")
def fid(
    real_features: Any,
    fake_features: Any,
    num_resamples: int = 50,
    seed: int = 0,
    level: float = 0.95,
    paired: bool = False,
) -> dict[str, Any]:
    """Fréchet distance between Gaussians fitted to ``real_features [N, D]`` and ``fake_features [M, D]``.

    ``value`` is torchmetrics' ``FrechetInceptionDistance`` (float64) on all the features: the
    number papers report, biased upwards by about ``b / n`` for sets of ``n`` (Chong & Forsyth,
    *Effectively Unbiased FID*, 2020). The interval is not a bootstrap (resampling with
    replacement repeats cases and inflates FID further) but *half-sampling*: ``num_resamples``
    random half-splits of both sets without replacement (:func:`half_split_fids`). Halves
    carry twice the bias, so ``debiased = value - (mean half FID - value) * k / (n - k)``
    (``k = n // 2``; the factor is 1 for even sets) extrapolates to infinitely many cases, and
    the two disjoint halves of a split differ by about ``2 x`` the standard error of ``value``
    (variance ∝ 1/n), so ``se = rms(FID_A - FID_B) / 2``. The interval is ``debiased ± z se``
    clipped at 0: an interval for the large-sample FID, which need not contain ``value``.
    Fewer than 4 cases in a set: no interval (``method`` "none"). ``paired``: row ``i`` of both
    sets is one case, and the halves split cases (:func:`half_split_fids`).
    """
    real, fake = _feature_pair(real_features, fake_features, "real_features", "fake_features")
    _check_paired(real, fake, paired)
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1), got {level}")
    value = max(_torchmetrics_fid(real, fake), 0.0)  # a squared distance; eigvals round to ~ -1e-10
    result: dict[str, Any] = {"value": _finite_or_none(value), "n": len(fake), "n_real": len(real)}
    if min(len(real), len(fake)) < 4:
        return {**result, "ci": [None, None], "method": "none", "reason": "fewer than 4 cases to split in halves"}
    halves, (half_real, half_fake) = half_split_fids(real, fake, num_resamples, seed, paired)
    half_mean = float(halves.mean())
    ratio = (half_real / (len(real) - half_real) + half_fake / (len(fake) - half_fake)) / 2
    debiased = value - (half_mean - value) * ratio
    se = float(np.sqrt(np.mean((halves[:, 0] - halves[:, 1]) ** 2)) / 2)
    z = _z(level)
    return {
        **result, "ci": [max(debiased - z * se, 0.0), max(debiased + z * se, 0.0)], "method": "half-sampling",
        "debiased": debiased, "se": se, "half_mean": half_mean, "half_sizes": [half_real, half_fake],
        "splits": int(num_resamples),
    }  # fmt: skip


@register("kid")
def kid(
    real_features: Any,
    fake_features: Any,
    seed: int = 0,
    subsets: int = 50,
    subset_size: int = 1000,
    level: float = 0.95,
    paired: bool = False,
) -> dict[str, Any]:
    """Kernel Inception Distance (unbiased polynomial-kernel MMD²) between two feature sets.

    As torchmetrics' ``KernelInceptionDistance`` (its ``poly_mmd``, the subsets drawn with
    ``torch.randperm`` from a generator seeded ``seed``: the same numbers as that metric after
    ``torch.manual_seed(seed)``), over ``subsets`` subsets of min(``subset_size``, N // 2,
    M // 2) cases (at least 2). Halving keeps the subsets different from each other on a test
    split of under 2,000 images; subsets of the whole sets would all give the same estimate.
    ``value`` and ``std`` are the mean and spread of the subset estimates. The subsets overlap,
    so their mean is no better known than the mean of the ``k = min(N, M) // size`` disjoint
    subsets the sets hold: ``se = std / sqrt(k)`` (the subset standard error), and ``ci`` is
    ``value ± z se``. KID is unbiased, so unlike FID its interval is centred on its value.

    ``paired``: row ``i`` of both sets is the same case (a generated image and the render of
    its report). The unbiased MMD assumes the two samples independent, and a case in both
    subsets breaks that (a set against itself would score about ``-2 k(x, x) / size``), so
    each subset then takes its real and its generated rows from disjoint cases: one
    permutation, its first ``size`` rows real, the next ``size`` generated (``k`` counts
    subsets of ``2 size`` cases).
    """
    from torchmetrics.image.kid import poly_mmd

    real, fake = _feature_pair(real_features, fake_features, "real_features", "fake_features")
    _check_paired(real, fake, paired)
    if int(subsets) < 1:
        raise ConfigError(f"subsets must be >= 1, got {subsets}")
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1), got {level}")
    size = max(2, min(int(subset_size), len(real) // 2, len(fake) // 2))
    if size > min(len(real), len(fake)) or int(subset_size) < 2:
        raise ConfigError(f"subset_size must be >= 2, got {subset_size}")
    generator = torch.Generator().manual_seed(int(seed))
    scores = []
    for _ in range(int(subsets)):
        if paired:
            order = torch.randperm(len(real), generator=generator)
            real_subset, fake_subset = real[order[:size]], fake[order[size : 2 * size]]
        else:
            real_subset = real[torch.randperm(len(real), generator=generator)[:size]]
            fake_subset = fake[torch.randperm(len(fake), generator=generator)[:size]]
        scores.append(float(poly_mmd(real_subset, fake_subset)))
    scores_array = np.array(scores)
    value, std = float(scores_array.mean()), float(scores_array.std())
    disjoint = max(1, min(len(real), len(fake)) // (2 * size if paired else size))
    se = std / math.sqrt(disjoint)
    return {
        "value": value, "ci": [value - _z(level) * se, value + _z(level) * se], "n": len(fake),
        "method": "subset standard error", "std": std, "se": se, "n_real": len(real), "subset_size": size,
        "subsets": int(subsets), "disjoint_subsets": disjoint, "paired": bool(paired),
    }  # fmt: skip


def _images(value: Any, name: str, layout: str = "[N, C, H, W]") -> torch.Tensor:
    images = _tensor(value, name, layout, dtype=torch.float32)  # torch's float64 convolutions are ~10x slower
    _in_unit_range(images, name)
    if min(images.shape[-2:]) < SSIM_MIN_SIDE:
        raise ConfigError(
            f"{name} images must be at least {SSIM_MIN_SIDE} px on each side, got {tuple(images.shape[-2:])}"
        )
    return images


@register("ssim")
def ssim(fake: Any, real: Any, num_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Mean SSIM of each image of ``fake [N, C, H, W]`` against its ``real`` (both in [0, 1])."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    fake_t, real_t = _images(fake, "fake"), _images(real, "real")
    _same_shape(fake_t, real_t, "fake", "real")
    per_image = structural_similarity_index_measure(fake_t, real_t, data_range=1.0, reduction="none")
    return _mean_estimate(per_image.reshape(-1).double(), num_resamples, seed)


@register("view_consistency")
def view_consistency(probabilities: Any, num_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Mean P(same patient) of ``probabilities [N]`` (a VCN's scores of frontal/lateral pairs)."""
    values = _tensor(probabilities, "probabilities", "[N]")
    _in_unit_range(values, "probabilities")
    return _mean_estimate(values, num_resamples, seed)


def _defined_mean(table: np.ndarray) -> np.ndarray:
    """Row means over the finite entries of ``table [R, K]``; NaN for a row with none."""
    defined = np.isfinite(table)
    counts = defined.sum(axis=1)
    sums = np.where(defined, table, 0.0).sum(axis=1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


@register("finding_auroc")
def finding_auroc(
    scores: Any, labels: Any, names: Sequence[str], num_resamples: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Per-finding AUROC of ``scores [N, K]`` (probabilities) against ``labels [N, K]`` (0/1).

    A finding without positives or without negatives has value None; resamples where a
    finding is degenerate are skipped for it. ``"macro"`` is the mean over the findings with
    a defined AUROC (per resample, over those defined in it); None if there are none.
    """
    from torchmetrics.functional.classification import binary_auroc

    probabilities = _tensor(scores, "scores", "[N, K]")
    _in_unit_range(probabilities, "scores")
    truth = _tensor(labels, "labels", "[N, K]")
    _same_shape(probabilities, truth, "scores", "labels")
    if not bool(((truth == 0) | (truth == 1)).all()):
        raise ConfigError("labels must be 0 or 1")
    truth = truth.long()
    names = _finding_names(names, probabilities.shape[1])

    def per_finding(rows: np.ndarray) -> np.ndarray:
        index = torch.from_numpy(rows)
        values = np.full(len(names), np.nan)
        for k in range(len(names)):
            column = truth[index, k]
            if 0 < int(column.sum()) < len(column):
                values[k] = float(binary_auroc(probabilities[index, k], column, validate_args=False))
        return values

    full = per_finding(np.arange(len(probabilities)))
    distribution = bootstrap_distribution(per_finding, len(probabilities), num_resamples, seed)
    result: dict[str, Any] = {
        name: _estimate(full[k], distribution[:, k], len(probabilities), positives=int(truth[:, k].sum()))
        for k, name in enumerate(names)
    }
    defined = np.isfinite(full)
    macro = float(full[defined].mean()) if defined.any() else None
    result["macro"] = _estimate(
        macro, _defined_mean(distribution[:, defined]), len(probabilities), findings=int(defined.sum())
    )
    return result


@register("cross_view_agreement")
def cross_view_agreement(
    frontal_probs: Any,
    lateral_probs: Any,
    names: Sequence[str],
    threshold: float = 0.5,
    num_resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Per finding, the fraction of cases whose frontal and lateral get the same call (p >= threshold)."""
    frontal = _tensor(frontal_probs, "frontal_probs", "[N, K]")
    lateral = _tensor(lateral_probs, "lateral_probs", "[N, K]")
    _same_shape(frontal, lateral, "frontal_probs", "lateral_probs")
    names = _finding_names(names, frontal.shape[1])
    agree = ((frontal >= threshold) == (lateral >= threshold)).double().numpy()
    distribution = bootstrap_distribution(lambda rows: agree[rows].mean(axis=0), len(agree), num_resamples, seed)
    result: dict[str, Any] = {
        name: _estimate(agree[:, k].mean(), distribution[:, k], len(agree)) for k, name in enumerate(names)
    }
    result["macro"] = _estimate(agree.mean(), distribution.mean(axis=1), len(agree))
    return result


def _ms_ssim_fits(side: int, scales: int, kernel: int) -> bool:
    """torchmetrics' MS-SSIM size checks, plus: the coarsest scale is still one window wide."""
    return side >= 2**scales and side // max(1, scales - 1) ** 2 > kernel - 1 and side // 2 ** (scales - 1) >= kernel


def ms_ssim_settings(height: int, width: int) -> tuple[int, int]:
    """``(scales, kernel_size)`` of MS-SSIM for ``height x width`` images.

    Rule: the largest window of (11, 9, 7, 5) that allows min(3, the most scales any window
    allows) scales, with as many scales (at most 5) as it allows; a number of scales fits
    when torchmetrics accepts it and the coarsest scale is still at least one window wide.
    This gives 5 scales with an 11-px window at 256 px, 4 at 128, 3 at 64; 3 scales with a
    7-px window at 32 px, 2 at 16 px.
    """
    side = min(int(height), int(width))
    scale_counts = range(1, len(MS_SSIM_BETAS) + 1)
    most = {
        kernel: max((s for s in scale_counts if _ms_ssim_fits(side, s, kernel)), default=0)
        for kernel in MS_SSIM_KERNELS
    }
    wanted = min(3, max(most.values()))
    if wanted == 0:
        raise ConfigError(
            f"images of {height}x{width} px are too small for MS-SSIM (at least {MS_SSIM_KERNELS[-1]} px a side)"
        )
    kernel = next(k for k in MS_SSIM_KERNELS if most[k] >= wanted)
    return most[kernel], kernel


@register("ms_ssim_diversity")
def ms_ssim_diversity(samples: Any, num_resamples: int = 200, seed: int = 0, batch_size: int = 64) -> dict[str, Any]:
    """Mean MS-SSIM between the ``S`` generations of each report, ``samples [N, S, C, H, W]`` in [0, 1].

    Per report the mean over its S(S-1)/2 pairs; ``value`` is the mean over reports (1: the
    generations are identical, lower: more diverse). Scales and window follow
    :func:`ms_ssim_settings`; the betas are the first ``scales`` standard ones renormalised to
    sum to 1, and the Gaussian's sigma is 1.5 * kernel / 11 because torchmetrics sizes the
    Gaussian window from sigma (``kernel_size`` only enters its checks).
    """
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    images = _tensor(samples, "samples", "[N, S, C, H, W]", dtype=torch.float32)
    _in_unit_range(images, "samples")
    count, per_report = images.shape[:2]
    if per_report < 2:
        raise ConfigError(f"samples needs at least 2 samples per report (dimension S), got {per_report}")
    scales, kernel = ms_ssim_settings(*images.shape[-2:])
    weights = np.array(MS_SSIM_BETAS[:scales])
    betas = tuple(float(b) for b in weights / weights.sum())
    pairs = list(itertools.combinations(range(per_report), 2))
    first = images[:, [i for i, _ in pairs]].flatten(0, 1)
    second = images[:, [j for _, j in pairs]].flatten(0, 1)
    similarities = torch.cat([
        multiscale_structural_similarity_index_measure(
            first[start : start + batch_size], second[start : start + batch_size], sigma=1.5 * kernel / 11,
            kernel_size=kernel, data_range=1.0, betas=betas, reduction="none",
        ).reshape(-1)
        for start in range(0, len(first), batch_size)
    ])  # fmt: skip
    per_case = similarities.double().reshape(count, len(pairs)).mean(dim=1)
    return _mean_estimate(per_case, num_resamples, seed, scales=scales, kernel_size=kernel, samples=int(per_report))


@register("controllability")
def controllability(
    before: Any, after: Any, edited: Any, direction: Any, names: Sequence[str], tolerance: float = 0.0,
    num_resamples: int = 200, seed: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Do edits of reports move the edited finding's probability the intended way, and only it?

    ``before``/``after [N, K]``: finding probabilities of the images of each report before and
    after its edit; ``edited [N]``: the index of the edited finding; ``direction [N]``: +1 (it
    should rise) or -1 (fall). An edit succeeds when direction * (after - before) at the
    edited finding exceeds ``tolerance``. ``intended_shift`` is the mean of that signed change,
    ``spillover`` the mean over cases of the mean absolute change of the other findings.
    """
    start = _tensor(before, "before", "[N, K]")
    end = _tensor(after, "after", "[N, K]")
    _same_shape(start, end, "before", "after")
    count, kinds = start.shape
    target = _tensor(edited, "edited", "[N]", dtype=torch.float64)
    if len(target) != count or not bool((target == target.round()).all()) or target.min() < 0 or target.max() >= kinds:
        raise ConfigError(f"edited must hold {count} finding indices in [0, {kinds}), got {target.tolist()[:10]}")
    target = target.long()
    sign = _tensor(direction, "direction", "[N]")
    if len(sign) != count or not bool((sign.abs() == 1).all()):
        raise ConfigError(f"direction must hold {count} values, each +1 or -1")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0, got {tolerance}")
    names = _finding_names(names, kinds)

    change = end - start
    rows = torch.arange(count)
    shift = sign * change[rows, target]
    success = (shift > tolerance).double()
    others = torch.ones_like(change, dtype=torch.bool)
    others[rows, target] = False
    result: dict[str, Any] = {
        "success_rate": _mean_estimate(success, num_resamples, seed),
        "intended_shift": _mean_estimate(shift, num_resamples, seed),
    }
    if kinds > 1:
        spill = (change.abs() * others).sum(dim=1) / (kinds - 1)
        result["spillover"] = _mean_estimate(spill, num_resamples, seed)
    else:
        result["spillover"] = {"value": None, "ci": [None, None], "n": count}
    result["per_kind"] = {
        names[k]: {"success_rate": float(success[target == k].mean()), "n": int((target == k).sum())}
        for k in sorted(set(target.tolist()))
    }
    return result


def _nearest(queries: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance to, and index of, each query row's nearest reference row."""
    block = max(1, _DISTANCE_BLOCK // len(references))
    distances, indices = [], []
    for start in range(0, len(queries), block):
        nearest = torch.cdist(queries[start : start + block], references).min(dim=1)
        distances.append(nearest.values)
        indices.append(nearest.indices)
    return torch.cat(distances), torch.cat(indices)


@register("memorisation")
def memorisation(
    generated_features: Any,
    train_features: Any,
    test_features: Any,
    num_closest: int = 8,
    num_resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Are generated images closer to training images than unseen real images are?

    ``ratio`` is median(nearest-train distance of each generated feature) / median(the same for
    each real test feature), bootstrapped over both sets: about 1 when the generator does not
    copy its training set, well below 1 when it does. ``closest`` lists the ``num_closest``
    generated/train pairs that are nearest, ascending, for a figure.
    """
    generated = _tensor(generated_features, "generated_features", "[N, D]")
    train = _tensor(train_features, "train_features", "[T, D]")
    test = _tensor(test_features, "test_features", "[M, D]")
    if not generated.shape[1] == train.shape[1] == test.shape[1]:
        raise ConfigError(
            "generated_features, train_features and test_features must have the same feature size D, got "
            f"{generated.shape[1]}, {train.shape[1]} and {test.shape[1]}"
        )
    if int(num_closest) < 0:
        raise ConfigError(f"num_closest must be >= 0, got {num_closest}")
    generated_distance, generated_nearest = _nearest(generated, train)
    test_distance, _ = _nearest(test, train)
    generated_np, test_np = generated_distance.numpy(), test_distance.numpy()

    def ratio(generated_rows: np.ndarray, test_rows: np.ndarray) -> float | None:
        denominator = np.median(test_np[test_rows])
        return float(np.median(generated_np[generated_rows]) / denominator) if denominator > 0 else None

    value = ratio(np.arange(len(generated_np)), np.arange(len(test_np)))
    distribution = bootstrap_distribution(ratio, (len(generated_np), len(test_np)), num_resamples, seed)
    order = np.argsort(generated_np, kind="stable")[: int(num_closest)]
    return {
        "ratio": _estimate(value, distribution, len(generated_np), n_test=len(test_np), n_train=len(train)),
        "median_generated": float(np.median(generated_np)),
        "median_test": float(np.median(test_np)),
        "closest": [
            {"generated": int(i), "train": int(generated_nearest[i]), "distance": float(generated_np[i])} for i in order
        ],
    }


# --------------------------------------------------------------------------- the standard Inception network


def _torch_fidelity_missing() -> str | None:
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        return "torch-fidelity is not installed (pip install torch-fidelity, see requirements.txt): it provides the FID Inception"
    return None


def inception_available(weights_path: str | os.PathLike) -> tuple[bool, str]:
    """Whether :func:`inception_features` can run with ``weights_path``, and why (not).

    ``weights_path`` is torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth`` (the
    TF FID Inception in PyTorch form); it is never downloaded.
    """
    missing = _torch_fidelity_missing()
    if missing:
        return False, missing
    path = Path(weights_path)
    if not path.is_file():
        return False, f"Inception weights file {path} does not exist"
    return True, f"Inception weights {path}"


@functools.lru_cache(maxsize=1)
def _inception_network(path: str, modified: float, device: str) -> nn.Module:
    from torchmetrics.image.fid import NoTrainInceptionV3

    from xrg.checkpoint import torch_error_summary

    # torch-fidelity reads the file with torch.load(weights_only=False), which would run any code
    # pickled into it; a file that loads with weights_only=True holds only tensors and is safe. The
    # bytes are read once and checked, and torch-fidelity is given a private copy of exactly those
    # bytes, so a file swapped after the check is never what it loads.
    try:
        data = Path(path).read_bytes()
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ConfigError(
            f"Inception weights file {path} is refused: it does not load as plain tensors with "
            f"torch.load(weights_only=True) ({torch_error_summary(error)})"
        ) from None
    with tempfile.TemporaryDirectory(prefix="xrg-inception-") as private:  # mode 0700
        copy = Path(private) / "weights.pth"
        copy.write_bytes(data)
        try:
            network = NoTrainInceptionV3(
                name="inception-v3-compat", features_list=["2048", "logits_unbiased"],
                feature_extractor_weights_path=str(copy),
            )  # fmt: skip
        except Exception as error:  # load_state_dict of a file that is not these weights
            raise ConfigError(
                f"Inception weights file {path} could not be loaded: {torch_error_summary(error)}"
            ) from None
    return network.to(device)


@torch.no_grad()
def inception_features(
    images: Any, weights_path: str | os.PathLike, batch_size: int = 32, device: str | torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool features ``[N, 2048]`` and logits ``[N, 1008]`` (float64) of the FID Inception network.

    ``images [N, C, H, W]`` (C is 1 or 3) in [0, 1] are resized to 299x299 (bilinear), made
    3-channel and quantised to uint8, as torch-fidelity's network expects; it is torchmetrics'
    ``NoTrainInceptionV3`` (its ``feature_extractor_weights_path``). The logits are the
    "unbiased" ones torch-fidelity computes IS from.
    """
    available, reason = inception_available(weights_path)
    if not available:
        raise ConfigError(f"cannot compute Inception features: {reason}")
    pixels = _tensor(images, "images", "[N, C, H, W]", dtype=torch.float32)
    _in_unit_range(pixels, "images")
    if pixels.shape[1] not in (1, 3):
        raise ConfigError(f"images must have 1 or 3 channels, got {pixels.shape[1]}")
    device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    path = Path(weights_path).resolve()
    network = _inception_network(str(path), path.stat().st_mtime, device)
    pools, logits = [], []
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size].to(device)
        batch = torch.nn.functional.interpolate(
            batch, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False
        )
        batch = (batch.expand(-1, 3, -1, -1) * 255).round().clamp(0, 255).to(torch.uint8)
        # forward() returns only the first requested feature; this returns both in one pass
        pool, logit = network._torch_fidelity_forward(batch)
        pools.append(pool.double().cpu())
        logits.append(logit.double().cpu())
    return torch.cat(pools), torch.cat(logits)
