"""Results over training seeds and the budget-matched, replicated comparison (xrg.eval.seeds, xrg.experiments)."""

from __future__ import annotations

import dataclasses

import pytest

from xrg.errors import ConfigError
from xrg.eval.seeds import aggregate_seeds, ordering, permutation_p_value
from xrg.experiments import (
    ABLATIONS,
    BASELINES,
    LABELS,
    TABLES,
    baseline_config,
    final_resolution_epochs,
    ordering_lines,
    row_seeds,
    table_budget,
    table_orderings,
    xraygan_config,
)
from xrg.profiles import PROFILE_NAMES, load_profile


def est(value: float) -> dict:
    return {"value": value, "ci": [value - 0.1, value + 0.1], "n": 50}


def test_a_single_seed_keeps_its_interval_and_several_give_mean_and_sd():
    single = aggregate_seeds([est(0.4)])
    assert (
        single["value"] == 0.4
        and single["ci"] == pytest.approx([0.3, 0.5])
        and single["n_seeds"] == 1
        and single["sd"] is None
    )
    many = aggregate_seeds([est(1.0), est(2.0), None, est(3.0)])
    assert many["value"] == pytest.approx(2.0) and many["sd"] == pytest.approx(1.0)
    assert many["per_seed"] == [1.0, 2.0, 3.0] and many["n_seeds"] == 3 and many["ci"] == [None, None]
    assert aggregate_seeds([None, {"value": None, "n": 0}]) is None


def test_the_permutation_test_has_its_exact_values():
    # 3 against 3: complete separation is the most extreme of C(6, 3) = 20 splits
    assert permutation_p_value([4, 5, 6], [1, 2, 3], higher_is_better=True) == pytest.approx(1 / 20)
    assert permutation_p_value([1, 2, 3], [4, 5, 6], higher_is_better=False) == pytest.approx(1 / 20)
    # one seed against three can never reach 0.05: the best is 1 / C(4, 1)
    assert permutation_p_value([9], [1, 2, 3], higher_is_better=True) == pytest.approx(1 / 4)
    # identical groups: every split is at least as extreme
    assert permutation_p_value([1, 1], [1, 1], higher_is_better=True) == 1.0
    with pytest.raises(ConfigError, match="both sides"):
        permutation_p_value([], [1.0], True)


def test_orderings_say_holds_only_when_the_seeds_separate():
    a = aggregate_seeds([est(0.6), est(0.61), est(0.62)])
    b = aggregate_seeds([est(0.5), est(0.51), est(0.52)])
    overlapping = aggregate_seeds([est(0.55), est(0.7), est(0.4)])
    assert ordering(a, b, higher_is_better=True)["verdict"] == "holds"
    assert ordering(b, a, higher_is_better=True)["verdict"] == "reversed"
    assert ordering(b, a, higher_is_better=True)["p"] == pytest.approx(1 / 20)  # the reverse ordering's p
    assert ordering(a, b, higher_is_better=False)["verdict"] == "reversed"  # lower is better: b wins
    assert ordering(a, overlapping, higher_is_better=True)["verdict"] == "not significant"
    assert ordering(aggregate_seeds([est(0.9)]), b, True)["verdict"] == "not significant"  # 1 seed never suffices
    assert ordering(a, None, True)["verdict"] == "not scored"
    rows = {"xraygan": {"ssim": a, "kid": a}, "attngan": {"ssim": b, "kid": b}}
    verdicts = table_orderings("table1", rows)
    assert verdicts["attngan"]["ssim"]["verdict"] == "holds" and verdicts["attngan"]["kid"]["verdict"] == "reversed"
    text = "\n".join(ordering_lines({"rows": rows, "orderings": verdicts}))
    assert "XRayGAN better than AttnGAN (3 seed(s))" in text and "SSIM: holds (p = 0.05)" in text


@pytest.mark.parametrize("name", PROFILE_NAMES)
def test_every_row_gets_the_same_final_resolution_budget(name):
    profile = load_profile(name)
    budget = table_budget(profile)
    for method in LABELS:
        config = baseline_config(profile, method) if method in BASELINES else xraygan_config(profile, method)
        assert final_resolution_epochs(method, config) == (budget.epochs, budget.batch_size), method
    assert set(LABELS) == set(BASELINES) | set(ABLATIONS) and all(m in LABELS for t in TABLES.values() for m in t)


def test_without_matching_the_baselines_keep_their_own_epochs_and_a_bad_seed_setting_is_refused():
    base = load_profile("cpu")

    def changed(**settings):
        sections = {**base.sections, "experiment": {**base.sections["experiment"], **settings}}
        return dataclasses.replace(base, sections=sections)

    unmatched = changed(match_budget=False)
    assert final_resolution_epochs("gan_int_cls", baseline_config(unmatched, "gan_int_cls"))[0] == 4
    assert row_seeds(base, "xraygan") == 3 and row_seeds(base, "gan_int_cls") == 1
    for bad in ({"seeds": 0}, {"seeds": True}, {"single_seed_rows": ["nope"]}):
        broken = changed(**bad)
        with pytest.raises(ConfigError, match="experiment"):
            row_seeds(broken, "xraygan")
