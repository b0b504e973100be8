"""Results over training seeds: mean ± sd, the per-seed values, and orderings a reader may trust.

One training run is one draw: two rows of a table whose single runs differ may swap places
with another seed. The rows that carry a paper's claims are therefore trained with several
seeds; :func:`aggregate_seeds` summarises each metric over them, and :func:`ordering`
decides whether one row beats another with an exact one-sided permutation test over the
seeds (every way of splitting the pooled per-seed values into two groups of the same sizes).
With 3 seeds against 3 the smallest possible p-value is 1/20 = 0.05: only a complete
separation of the seeds is significant at 0.05; with 1 seed against 3 it is 1/4, so such an
ordering is never significant and is printed as "not significant", never narrated.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

from xrg.errors import ConfigError

#: One-sided level of :func:`ordering`.
SIGNIFICANCE = 0.05


def aggregate_seeds(per_seed: Sequence[Mapping[str, Any] | None]) -> dict[str, Any] | None:
    """Estimates of one metric from several seeds → ``{"value": mean, "sd", "per_seed", "n_seeds", ...}``.

    With one seed the estimate is kept as it is (its interval over cases), with ``n_seeds``
    1 and ``sd`` None; with several, ``value`` is the mean over seeds, ``sd`` the sample
    standard deviation and ``ci`` is dropped (an interval over cases of one seed says nothing
    about another seed). Seeds whose value is missing are left out; none left: None.
    """
    values = [float(e["value"]) for e in per_seed if e is not None and e.get("value") is not None]
    if not values:
        return None
    if len(values) == 1:
        single = next(e for e in per_seed if e is not None and e.get("value") is not None)
        return {**single, "per_seed": values, "n_seeds": 1, "sd": None}
    mean = sum(values) / len(values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return {"value": mean, "sd": sd, "per_seed": values, "n_seeds": len(values), "ci": [None, None],
            "method": "mean ± sd over training seeds"}  # fmt: skip


def permutation_p_value(better: Sequence[float], worse: Sequence[float], higher_is_better: bool) -> float:
    """One-sided exact permutation p-value that ``better`` beats ``worse`` (difference of means).

    The fraction of the splits of the pooled values into groups of the two sizes whose
    difference in the claimed direction is at least the observed one (the observed split
    included, so p ≥ 1 / C(m + n, m)).
    """
    if not better or not worse:
        raise ConfigError(f"a permutation test needs values on both sides, got {len(better)} and {len(worse)}")
    sign = 1.0 if higher_is_better else -1.0
    pooled = [float(v) for v in (*better, *worse)]
    m = len(better)
    total = sum(pooled)

    def statistic(group_sum: float) -> float:
        return sign * (group_sum / m - (total - group_sum) / (len(pooled) - m))

    observed = statistic(sum(better))
    splits = list(itertools.combinations(range(len(pooled)), m))
    at_least = sum(statistic(sum(pooled[i] for i in split)) >= observed - 1e-12 for split in splits)
    return at_least / len(splits)


def ordering(
    claimed_better: Mapping[str, Any] | None, other: Mapping[str, Any] | None, higher_is_better: bool
) -> dict[str, Any]:
    """Whether the seeds support "``claimed_better`` beats ``other``" on one metric.

    Returns ``{"verdict", "p", "difference", "n_seeds"}`` (``p`` of the claim, or of the
    reverse ordering when the other row is ahead); ``verdict`` is ``"holds"`` (p ≤
    :data:`SIGNIFICANCE`), ``"not significant"`` (the means agree with the claim, the seeds
    do not support it), ``"reversed, not significant"``, ``"reversed"`` (the other row is
    significantly better) or ``"not scored"``.
    """
    if claimed_better is None or other is None:
        return {"verdict": "not scored", "p": None, "difference": None, "n_seeds": None}
    a, b = list(claimed_better.get("per_seed") or []), list(other.get("per_seed") or [])
    if not a or not b:
        return {"verdict": "not scored", "p": None, "difference": None, "n_seeds": [len(a), len(b)]}
    sign = 1.0 if higher_is_better else -1.0
    difference = sign * (sum(a) / len(a) - sum(b) / len(b))
    p = permutation_p_value(a, b, higher_is_better)
    if difference > 0:
        verdict = "holds" if p <= SIGNIFICANCE else "not significant"
    elif difference == 0:
        verdict = "not significant"
    else:  # the other row is ahead: its p-value is the one that says how clearly
        p = permutation_p_value(b, a, higher_is_better)
        verdict = "reversed" if p <= SIGNIFICANCE else "reversed, not significant"
    return {"verdict": verdict, "p": p, "difference": difference, "n_seeds": [len(a), len(b)]}
