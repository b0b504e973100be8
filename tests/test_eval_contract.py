"""The metric contract (xrg.eval.contract): honest FID/KID intervals, the registry, JSON lines = eval.json."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
import torch

from helpers import torch_threads, write_synthetic_data
from xrg.data.manifest import VIEWS
from xrg.data.reports import MAX_SENTENCES, MAX_WORDS, Vocabulary
from xrg.errors import ConfigError
from xrg.eval import contract, metrics
from xrg.eval.contract import Estimate, EvalContext, read_metric_lines, results_from_lines
from xrg.eval.evaluators import Evaluators
from xrg.eval.run import EVAL_FORMAT, EvalConfig, evaluate_generator

SIZE = 32


def _gaussian(rows: int, dim: int = 8, seed: int = 0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


# --------------------------------------------------------------------------- FID and KID


def test_fid_interval_of_two_draws_of_one_gaussian_contains_the_large_sample_value():
    with torch_threads(1):
        large = metrics._frechet_distance(_gaussian(20000, seed=100), _gaussian(20000, seed=101))
        result = metrics.fid(_gaussian(400, seed=1), _gaussian(400, seed=2), num_resamples=20, seed=0)
    assert large < 0.01  # ≈ 0: the same distribution
    low, high = result["ci"]
    assert result["method"] == "half-sampling" and result["half_sizes"] == [200, 200]
    assert low <= large <= high, result
    # the point estimate is biased upwards at n = 400, above the large-sample value; the debiased one is not
    assert result["value"] > large + 2 * result["se"] and abs(result["debiased"] - large) < 2 * result["se"]


def test_fid_half_sampling_is_deterministic_under_a_seed_and_refuses_unpaired_paired_sets():
    real, fake = _gaussian(60, seed=3), _gaussian(60, seed=4, shift=0.5)
    with torch_threads(1):
        first = metrics.fid(real, fake, num_resamples=10, seed=5)
        assert first == metrics.fid(real, fake, num_resamples=10, seed=5)
        assert first["ci"] != metrics.fid(real, fake, num_resamples=10, seed=6)["ci"]
        assert (
            first["value"] == metrics.fid(real, fake, num_resamples=10, seed=6)["value"]
        )  # the point is not resampled
        # one set against itself, split by case: every half is 0 too
        same = metrics.fid(real, real.clone(), num_resamples=10, seed=5, paired=True)
        assert same["value"] < 1e-9 and same["ci"][1] < 1e-9
    with pytest.raises(ConfigError, match="paired"):
        metrics.fid(real, fake[:50], paired=True)
    tiny = metrics.fid(real[:3], fake[:3])
    assert tiny["ci"] == [None, None] and tiny["method"] == "none" and tiny["value"] is not None


def test_kid_of_a_set_against_itself_is_within_its_standard_error_of_zero():
    features = _gaussian(400)
    with torch_threads(1):
        paired = metrics.kid(features, features.clone(), seed=0, paired=True)
        unpaired = metrics.kid(features, features.clone(), seed=0)
        shifted = metrics.kid(features, _gaussian(400, seed=1, shift=0.5), seed=0, paired=True)
    assert paired["method"] == "subset standard error" and paired["se"] > 0
    assert abs(paired["value"]) <= paired["se"]
    assert paired["ci"][0] < 0.0 < paired["ci"][1]
    # subsets drawn independently share cases, which biases the unbiased MMD of a set against itself downwards
    assert unpaired["value"] + 3 * unpaired["se"] < 0
    assert shifted["ci"][0] > 0  # a shift is told apart from the same distribution


# --------------------------------------------------------------------------- estimates and registry


def test_estimates_round_trip_through_json_and_name_their_method():
    estimate = Estimate(value=0.5, interval=(0.25, 0.75), n=10, method="bootstrap percentile", extras={"std": 0.1})
    assert Estimate.from_result(estimate.to_json()) == estimate
    assert estimate.to_json()["ci"] == [0.25, 0.75]
    from_metrics = Estimate.from_result(metrics.kid(_gaussian(20), _gaussian(20, seed=1)))
    assert from_metrics.method == "subset standard error" and from_metrics.extras["subset_size"] == 10
    undefined = Estimate.from_result({"value": None, "ci": [None, None], "n": 3})
    assert undefined.interval is None and undefined.method == "none"
    na = Estimate.not_applicable("deterministic generator").to_json()
    assert na == {"value": None, "ci": [None, None], "n": 0, "method": "not applicable",
                  "reason": "deterministic generator"}  # fmt: skip
    with pytest.raises(ConfigError, match="'value' and 'n'"):
        Estimate.from_result({"ci": [0, 1]})


def test_an_unknown_metric_name_is_refused_with_the_known_ones():
    assert EvalConfig().metrics == list(contract.METRICS)
    assert {"fid", "fid_floor", "kid", "is", "diversity", "ssim", "vc"} <= set(contract.METRICS)
    with pytest.raises(ConfigError, match=r"unknown eval metric\(s\) \['fdi'\]; known metrics: is, fid.*kid"):
        EvalConfig(metrics=["fid", "fdi"])
    with pytest.raises(ConfigError, match="list of metric names"):
        EvalConfig(metrics="fid")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="twice"):
        EvalConfig(metrics=["fid", "fid"])


# --------------------------------------------------------------------------- scoring generators end to end


class _Generator:
    """A stand-in PairGenerator: a constant grey image for every report, or seeded noise."""

    def __init__(self, vocabulary: Vocabulary, takes_noise: bool) -> None:
        self.vocabulary, self.takes_noise = vocabulary, takes_noise
        self.method = "noise" if takes_noise else "constant"
        self.image_size, self.max_sentences, self.max_words = SIZE, MAX_SENTENCES, MAX_WORDS

    def generate(self, batch: dict[str, Any], generator: torch.Generator) -> dict[str, torch.Tensor]:
        count = batch["findings_ids"].shape[0]
        if self.takes_noise:
            return {view: torch.rand(count, 1, SIZE, SIZE, generator=generator) for view in VIEWS}
        return {view: torch.full((count, 1, SIZE, SIZE), 0.5) for view in VIEWS}


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synthetic data (4 test cases), a synthetic cohort and untrained seeded evaluators."""
    from xrg.models.classifier import FindingClassifier
    from xrg.models.vcn import ViewConsistencyNet

    root = tmp_path_factory.mktemp("contract")
    data = write_synthetic_data(root / "data", num_patients=20)
    cohort = write_synthetic_data(root / "cohort", num_patients=20, seed=1)
    torch.manual_seed(0)
    classifier, vcn = FindingClassifier().eval(), ViewConsistencyNet().eval()
    for network in (classifier, vcn):
        network.requires_grad_(False)
    paths = {name: root / f"{name}.pt" for name in ("classifier", "vcn")}
    for name, path in paths.items():
        path.write_bytes(f"{name} stand-in".encode())  # only hashed
    evaluators = Evaluators(classifier, vcn, paths["classifier"], paths["vcn"], SIZE, {}, cohort)
    config = EvalConfig(batch_size=8, num_resamples=10, diversity_reports=2, diversity_samples=2)
    vocabulary = Vocabulary.load(data / "vocab.json")
    with torch_threads(1):
        constant = evaluate_generator(_Generator(vocabulary, False), data, evaluators, config, root / "constant",
                                      sources={"generator": {"kind": "control", "name": "constant grey"}})  # fmt: skip
    return {"root": root, "data": data, "evaluators": evaluators, "config": config, "vocabulary": vocabulary,
            "constant": constant}  # fmt: skip


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_a_constant_generator_scores_through_the_contract(setting):
    result = setting["constant"]
    json.dumps(result, allow_nan=False)  # no NaN anywhere
    assert all(not isinstance(v, float) or math.isfinite(v) for v in _leaves(result))
    assert result["format"] == EVAL_FORMAT == "xrg-eval-2" and result["num_reports"] == 4
    assert set(setting["config"].metrics) <= set(result)
    for view in (*VIEWS, "both"):
        assert result["fid"][view]["value"] is not None and result["fid"][view]["method"] == "half-sampling"
        assert result["fid_floor"][view]["value"] is not None
        assert result["fid_floor"][view]["n"] == result["fid_floor"][view]["n_real"] == (8 if view == "both" else 4)
    assert result["kid"]["method"] == "subset standard error" and result["kid"]["paired"]
    assert result["is"]["value"] is None and result["is"]["method"] == "not applicable"
    assert "sigmoid" in result["is"]["reason"]
    assert result["ssim"]["frontal"]["method"] == "bootstrap percentile"
    assert result["sources"]["generator"] == {"kind": "control", "name": "constant grey"}
    assert result["sources"]["classifier_sha256"] and result["metrics_log"] == "metrics-eval.jsonl"


def test_a_deterministic_generator_gets_diversity_not_applicable_and_a_noisy_one_a_number(setting):
    assert setting["constant"]["takes_noise"] is False
    for view in VIEWS:
        assert setting["constant"]["diversity"][view] == Estimate.not_applicable("deterministic generator").to_json()
    config = EvalConfig(batch_size=8, num_resamples=10, diversity_reports=2, diversity_samples=2, metrics=["diversity"])
    with torch_threads(1):
        noisy = evaluate_generator(_Generator(setting["vocabulary"], True), setting["data"], setting["evaluators"],
                                   config, setting["root"] / "noisy")  # fmt: skip
    assert noisy["takes_noise"] is True and set(noisy) >= {"diversity"} and "fid" not in noisy
    for view in VIEWS:
        assert 0.0 <= noisy["diversity"][view]["value"] < 0.5 and noisy["diversity"][view]["n"] == 2


def test_the_json_lines_and_eval_json_agree_and_a_fresh_result_is_reused(setting):
    result = setting["constant"]
    log = setting["root"] / "constant" / "metrics-eval.jsonl"
    lines = read_metric_lines(log, result["evaluation"])
    assert {line["metric"] for line in lines} == set(setting["config"].metrics)
    assert all(set(line) >= {"evaluation", "metric", "key", "seconds"} for line in lines)
    assert results_from_lines(lines) == {name: result[name] for name in setting["config"].metrics}
    assert json.loads((setting["root"] / "constant" / "eval.json").read_text()) == result
    again = evaluate_generator(_Generator(setting["vocabulary"], False), setting["data"], setting["evaluators"],
                               setting["config"], setting["root"] / "constant",
                               sources={"generator": {"kind": "control", "name": "constant grey"}})  # fmt: skip
    assert again == result and len(read_metric_lines(log)) == len(lines)  # nothing recomputed


def test_the_validation_split_is_scored_into_its_own_file_and_never_replaces_the_tables(setting):
    from xrg.data.manifest import read_manifest

    out = setting["root"] / "constant"
    before = (out / "eval.json").read_bytes()
    config = EvalConfig(batch_size=8, num_resamples=10, metrics=["ssim", "memorisation"], split="val")
    with torch_threads(1):
        val = evaluate_generator(_Generator(setting["vocabulary"], False), setting["data"], setting["evaluators"],
                                 config, out)  # fmt: skip
    assert (out / "eval.json").read_bytes() == before
    assert json.loads((out / "eval-val.json").read_text()) == val and val["split"] == "val"
    assert val["metrics_log"] == "metrics-eval-val.jsonl" and (out / "metrics-eval-val.jsonl").is_file()
    val_ids = {c.id for c in read_manifest(setting["data"]) if c.split == "val"}
    assert set(val["memorisation_case_ids"]["test"]) == val_ids and val["num_reports"] == len(val_ids)
    with pytest.raises(ConfigError, match="eval split must be 'val' or 'test'"):
        EvalConfig(split="train")


def test_the_context_exposes_what_the_judge_metrics_need(setting):
    ctx = EvalContext(_Generator(setting["vocabulary"], False), setting["data"], setting["evaluators"],
                      setting["config"])  # fmt: skip
    kinds = len(ctx.names)
    with torch_threads(1):
        for source in ("generated", "real"):
            for view in VIEWS:
                assert ctx.probabilities(source, view).shape == (4, kinds)
            matched, mismatched = ctx.vc_scores(source), ctx.vc_scores(source, matched=False)
            assert matched.shape == mismatched.shape == (4,)
        cohort = ctx.cohort_test
    assert ctx.labels.shape == (4, kinds)
    assert cohort["labels"].shape == (4, kinds) and cohort["probabilities"]["frontal"].shape == (4, kinds)
    assert ctx.cohort_test is cohort  # computed once, kept in evaluators.cache
    assert not (ctx.mismatch == np.arange(4)).any()
    with pytest.raises(ConfigError, match="source"):
        ctx.images("fake")


def test_evaluate_generator_needs_an_output_directory(setting):
    with pytest.raises(ConfigError, match="out_dir"):
        evaluate_generator(_Generator(setting["vocabulary"], False), setting["data"], setting["evaluators"])


def test_the_tables_and_the_book_read_the_new_eval_json(setting):
    from xrg.experiments import COLUMNS, real_row, table_markdown, table_row
    from xrg.notebook import format_interval

    result = setting["constant"]
    row, real = table_row(result), real_row(result)
    assert row["kid"] == result["kid"] and row["fid_floor"] == result["fid_floor"]["both"]
    assert row["is"]["method"] == "not applicable" and "is" not in {key for key, _, _ in COLUMNS}
    assert row["ms_ssim"]["value"] is None and real["fid"] == result["fid_floor"]["both"]
    assert table_row({"kid": result["kid"]})["fid"] is None  # a metric left out of EvalConfig.metrics
    summary = {"profile": "tiny", "data_dir": "data", "real": real, "rows": {"xraygan": row}}
    markdown = table_markdown(summary)
    assert markdown.splitlines()[0].startswith("| method | KID ↓ | FID ↓") and "IS is not shown" in markdown
    assert format_interval({"value": 0.5, "ci": [None, None], "n": 3}) == "0.500"


def test_the_adapters_say_whether_they_take_noise():
    from types import SimpleNamespace

    from xrg.eval.generators import BaselinePairGenerator, XRayGANPairGenerator

    xraygan = lambda noise_dim: XRayGANPairGenerator(SimpleNamespace(config=SimpleNamespace(noise_dim=noise_dim)))  # noqa: E731
    assert not xraygan(0).takes_noise and xraygan(16).takes_noise  # the paper's XRayGAN has no noise input
    baseline = lambda method, noise_dim: BaselinePairGenerator(  # noqa: E731
        SimpleNamespace(config=SimpleNamespace(method=method, noise_dim=noise_dim))
    )
    assert baseline("gan_int_cls", 100).takes_noise and not baseline("gan_int_cls", 0).takes_noise
    assert baseline("stackgan", 0).takes_noise  # its conditioning augmentation samples ĉ


def test_a_report_blind_generator_scores_at_chance_on_the_judged_metrics(setting):
    """The done-means of honest evaluation: one image for every report wins nothing.

    Labelled synthetic data and cohort (cardiomegaly, opacity); every finding with a defined
    cohort threshold is judged (the fixture's untrained evaluators would otherwise exclude
    them all), so the macro detection − false alarm covers them.
    """
    root = setting["root"] / "labelled"
    data = write_synthetic_data(root / "data", num_patients=40, labelled=True)
    cohort = write_synthetic_data(root / "cohort", num_patients=40, seed=1, labelled=True)
    fixture = setting["evaluators"]
    evaluators = Evaluators(fixture.classifier, fixture.vcn, fixture.classifier_path, fixture.vcn_path, SIZE, {},
                            cohort)  # fmt: skip
    config = EvalConfig(batch_size=8, num_resamples=10, min_evaluator_auroc=0.0, min_test_positives=1,
                        metrics=["detection", "vc_auroc", "controllability", "variation"])  # fmt: skip
    vocabulary = Vocabulary.load(data / "vocab.json")
    with torch_threads(1):
        blind = evaluate_generator(_Generator(vocabulary, False), data, evaluators, config, root / "blind")
    for view in VIEWS:
        generated = blind["detection"]["generated"][view]
        assert set(generated["included"]) == {"cardiomegaly", "opacity"}
        assert generated["value"] == pytest.approx(0.0, abs=1e-12)
        assert blind["judged_findings"][view]["included"] == generated["included"]
        assert "atelectasis" in generated["excluded"]  # never named: listed with its reason
    assert blind["vc_auroc"]["generated"]["value"] == pytest.approx(0.5)
    controllability = blind["controllability"]
    assert controllability["n"] > 0 and controllability["margin"] == config.edit_margin
    assert controllability["value"] == 0.0 and controllability["method"] == "bootstrap percentile"
    assert controllability["any_direction"]["success_rate"]["value"] == 0.0  # no movement at all
    for key in (*VIEWS, *(f"features_{view}" for view in VIEWS)):  # one image for every report: no variation
        assert blind["variation"]["generated"][key]["value"] == pytest.approx(0.0, abs=1e-6)
        assert blind["variation"]["real"][key]["value"] > 0.01
        assert blind["variation"]["ratio"][key]["value"] == pytest.approx(0.0, abs=1e-4)
        assert blind["variation"]["ratio"][key]["ci"] == [None, None] and "reason" in blind["variation"]["ratio"][key]
