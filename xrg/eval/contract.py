"""The metric contract of ``xrg eval``: one context, registered metrics, estimates as JSON lines.

In the style of stylegan2-ada-pytorch's ``metrics/metric_main.py``: an :class:`EvalContext`
holds what every metric reads (the generated images of a :class:`~xrg.eval.generators.PairGenerator`
for the test reports, the real test renders, the evaluator classifier's features, logits and
probabilities of both, the evaluation VCN's scores of matched and mismatched pairs, the
evaluator cohort's held-out predictions), each computed once, when first asked for; a metric
is a function ``fn(ctx) -> Estimate | dict`` registered with :func:`metric`. Which metrics run
is ``EvalConfig.metrics`` (:func:`check_metric_names` refuses an unknown name, listing the
known ones). Each result is appended to ``OUT/metrics-eval.jsonl``, one line per metric and
key, and ``eval.json`` is written from those lines (:func:`results_from_lines`).

An :class:`Estimate` says how its interval was made (``method``: "bootstrap percentile",
"half-sampling", "subset standard error", "not applicable", "none"), so a reader can tell a
bootstrap CI from a half-sampling one, and why a number is missing.
"""

from __future__ import annotations

import functools
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrg.data.datasets import XRayPairDataset
from xrg.data.findings import FINDING_KINDS
from xrg.data.manifest import VIEWS
from xrg.errors import ConfigError, DataDirError
from xrg.eval import metrics
from xrg.eval.judge import judgeable_findings, mismatched_permutation, youden_thresholds
from xrg.eval.run import (
    EvalConfig,
    _classify,
    _vc,
    controllability_edits,
    generate_for_cases,
    generate_for_texts,
    model_dataset,
)
from xrg.io import append_jsonl

METRICS_LOG_NAME = "metrics-eval.jsonl"
SOURCES = ("generated", "real")
#: The method of an estimate whose interval is a percentile bootstrap over cases (metrics.py's default).
BOOTSTRAP = "bootstrap percentile"
NOT_APPLICABLE = "not applicable"


# --------------------------------------------------------------------------- estimates


@dataclass(frozen=True)
class Estimate:
    """One number with its interval, sample count and how the interval was made.

    ``interval`` is ``(low, high)`` or None (none could be made); ``extras`` holds what a
    metric adds (``n_real``, ``std``, ``positives``, ``reason`` ...), plain JSON values.
    """

    value: float | None
    interval: tuple[float | None, float | None] | None
    n: int
    method: str
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """``{"value", "ci", "n", "method", **extras}``: the ``ci`` readers of eval.json know."""
        low, high = self.interval if self.interval is not None else (None, None)
        return {"value": self.value, "ci": [low, high], "n": int(self.n), "method": self.method, **self.extras}

    @classmethod
    def from_result(cls, result: Mapping[str, Any], method: str = BOOTSTRAP) -> Estimate:
        """An estimate from a :mod:`xrg.eval.metrics` result dict (or :meth:`to_json`'s output).

        The result's own ``method`` wins over ``method``; a result without a value has no interval.
        """
        if "value" not in result or "n" not in result:
            raise ConfigError(f"a metric result needs 'value' and 'n', got keys {sorted(result)}")
        value = result["value"]
        ci = result.get("ci") or [None, None]
        interval = None if value is None or all(bound is None for bound in ci) else (ci[0], ci[1])
        extras = {k: v for k, v in result.items() if k not in ("value", "ci", "n", "method")}
        return cls(
            value=None if value is None else float(value),
            interval=interval,
            n=int(result["n"]),
            method=str(result.get("method", method)) if interval is not None or "method" in result else "none",
            extras=extras,
        )

    @classmethod
    def not_applicable(cls, reason: str, n: int = 0) -> Estimate:
        """A number that is not computed on purpose, and why (kept in eval.json so readers see it)."""
        return cls(value=None, interval=None, n=n, method=NOT_APPLICABLE, extras={"reason": reason})


def estimates(result: Mapping[str, Any], method: str = BOOTSTRAP) -> Any:
    """A (nested) metrics.py result with every ``{"value", "n", ...}`` dict made an :class:`Estimate`."""
    if isinstance(result, Mapping):
        if "value" in result and "n" in result:
            return Estimate.from_result(result, method)
        return {key: estimates(value, method) for key, value in result.items()}
    return result


# --------------------------------------------------------------------------- the registry

MetricFn = Callable[["EvalContext"], Any]
#: Metric functions of the contract by name, in registration order (the order they run and are written in).
METRICS: dict[str, MetricFn] = {}


def metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register ``fn(ctx) -> Estimate | dict[str, Estimate | ...]`` as eval metric ``name``."""

    def decorate(function: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ConfigError(f"eval metric {name!r} is registered twice")
        METRICS[name] = function
        return function

    return decorate


def check_metric_names(names: Any) -> list[str]:
    """``names`` as a list of registered metric names; an unknown one is refused with the known ones."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"eval metrics must be a list of metric names, got {names!r}")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown eval metric(s) {unknown}; known metrics: {', '.join(METRICS)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"eval metrics names a metric twice: {list(names)}")
    return list(names)


# --------------------------------------------------------------------------- JSON lines


def _leaves(value: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """``(key path, leaf)`` of a metric's result: an Estimate, or a plain value that is not a dict."""
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            yield from _leaves(item, (*path, str(key)))
    else:
        yield path, value


def result_lines(name: str, result: Any, evaluation: str, seconds: float) -> list[dict[str, Any]]:
    """The JSON lines of one metric's result: one per key (``key`` is the path, ``[]`` for a bare estimate)."""
    lines = []
    for path, leaf in _leaves(result):
        line: dict[str, Any] = {"evaluation": evaluation, "metric": name, "key": list(path), "seconds": seconds}
        if isinstance(leaf, Estimate):
            line["estimate"] = leaf.to_json()
        else:
            line["data"] = leaf
        lines.append(line)
    return lines


def results_from_lines(lines: list[dict[str, Any]]) -> dict[str, Any]:
    """The eval.json sections (metric name → nested JSON) the lines of one evaluation describe."""
    results: dict[str, Any] = {}
    for line in lines:
        leaf = line["estimate"] if "estimate" in line else line["data"]
        path = [line["metric"], *line["key"]]
        node = results
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return results


def read_metric_lines(path: str | os.PathLike, evaluation: str | None = None) -> list[dict[str, Any]]:
    """The lines of a metrics-eval.jsonl (of one ``evaluation`` id when given); a torn last line is skipped."""
    lines = []
    for number, text in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue  # a line cut by a killed write; the evaluation it belonged to never wrote eval.json
        if not isinstance(line, dict) or "metric" not in line:
            raise DataDirError(f"{path} line {number} is not a metric line")
        if evaluation is None or line.get("evaluation") == evaluation:
            lines.append(line)
    return lines


# --------------------------------------------------------------------------- the context


class EvalContext:
    """What the metrics of one evaluation read, each computed once when first needed.

    ``generator`` is any :class:`~xrg.eval.generators.PairGenerator` (a trained run or a
    control); ``evaluators`` an :class:`~xrg.eval.evaluators.Evaluators`. What depends only on
    the data and the evaluators (real features, cohort predictions, train features) is kept in
    ``evaluators.cache`` and so computed once per process for every scored generator.
    """

    def __init__(
        self,
        generator: Any,
        data_dir: str | os.PathLike,
        evaluators: Any,
        config: EvalConfig,
        inception_weights: str | os.PathLike | None = None,
        progress: bool = False,
    ) -> None:
        self.generator = generator
        self.data_dir = Path(data_dir).resolve()
        self.evaluators = evaluators
        self.config = config
        self.inception_weights = inception_weights
        self.progress = progress
        self.cache: dict[Any, Any] = evaluators.cache
        self.names = list(FINDING_KINDS)
        #: Non-metric records the metrics leave for eval.json's top level (edits, case ids).
        self.records: dict[str, Any] = {}
        self._features: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        self._vc: dict[Any, torch.Tensor] = {}

    # ---- data

    @property
    def boot(self) -> dict[str, int]:
        """The resamples and seed of every bootstrap CI."""
        return {"num_resamples": self.config.num_resamples, "seed": self.config.seed}

    @property
    def fid_splits(self) -> int:
        """Half-splits per FID interval (each split is two FIDs)."""
        return max(self.config.num_resamples // 10, 10)

    @property
    def eval_size(self) -> int:
        return int(self.evaluators.image_size)

    @functools.cached_property
    def test(self) -> XRayPairDataset:
        return model_dataset(self.generator, self.data_dir, self.config.split)

    @functools.cached_property
    def indices(self) -> list[int]:
        count = len(self.test) if self.config.num_reports == 0 else min(self.config.num_reports, len(self.test))
        return list(range(count))

    @property
    def count(self) -> int:
        return len(self.indices)

    @functools.cached_property
    def real(self) -> dict[str, torch.Tensor]:
        """The real test renders at the generator's resolution, per view ``[N, 1, S, S]``."""
        return {view: torch.stack([self.test[i][view] for i in self.indices]) for view in VIEWS}

    @functools.cached_property
    def labels(self) -> torch.Tensor:
        """The test reports' finding labels ``[N, K]`` (0/1)."""
        return torch.stack([self.test[i]["labels"] for i in self.indices]).long()

    @functools.cached_property
    def generated(self) -> dict[str, torch.Tensor]:
        """Both views for every test report, noise seeded ``config.seed`` (+ the batch number)."""
        return generate_for_cases(
            self.generator, self.test, self.indices, self.config.seed, self.config.batch_size, self.progress,
            f"generating {self.generator.method}",
        )  # fmt: skip

    def images(self, source: str) -> dict[str, torch.Tensor]:
        if source not in SOURCES:
            raise ConfigError(f"source must be one of {SOURCES}, got {source!r}")
        return self.generated if source == "generated" else self.real

    # ---- the classifier

    def _classified(self, source: str, view: str) -> tuple[torch.Tensor, torch.Tensor]:
        if (source, view) not in self._features:
            images = self.images(source)[view]
            if source == "real":
                key = (self.config.split, str(self.data_dir), self.generator.image_size, self.count, view)
                if key not in self.cache:
                    self.cache[key] = _classify(self.evaluators.classifier, images, self.eval_size)
                self._features[source, view] = self.cache[key]
            else:
                self._features[source, view] = _classify(self.evaluators.classifier, images, self.eval_size)
        return self._features[source, view]

    def features(self, source: str, view: str = "both") -> torch.Tensor:
        """The classifier's pooled features ``[N, D]`` (``both``: frontal rows, then lateral rows)."""
        if view == "both":
            return torch.cat([self._classified(source, v)[0] for v in VIEWS])
        return self._classified(source, view)[0]

    def logits(self, source: str, view: str = "both") -> torch.Tensor:
        if view == "both":
            return torch.cat([self._classified(source, v)[1] for v in VIEWS])
        return self._classified(source, view)[1]

    def probabilities(self, source: str, view: str) -> torch.Tensor:
        """Finding probabilities ``[N, K]`` of the ``source`` images of one view."""
        return torch.sigmoid(self.logits(source, view))

    def classify_probabilities(self, images: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-view finding probabilities of other images (edited reports, controls)."""
        return {view: torch.sigmoid(_classify(self.evaluators.classifier, images[view], self.eval_size)[1])
                for view in VIEWS}  # fmt: skip

    # ---- the evaluator cohort

    def _cohort_test(self, size: int) -> XRayPairDataset:
        cohort = XRayPairDataset(self.evaluators.cohort_dir, "test", image_size=size)
        if len(cohort) == 0:
            raise DataDirError(f"the evaluator cohort {self.evaluators.cohort_dir} has no test cases")
        return cohort

    @property
    def cohort_test(self) -> dict[str, Any]:
        """The evaluator classifier on the cohort's held-out test part, at its own resolution.

        ``{"probabilities": {view: [C, K]}, "labels": [C, K]}``: what the classifier is known
        to do on real images it never trained on, the reference of the fidelity metrics.
        """
        key = ("cohort-test", str(self.evaluators.cohort_dir), self.eval_size)
        if key not in self.cache:
            cohort = self._cohort_test(self.eval_size)
            cases = range(len(cohort))
            self.cache[key] = {
                "probabilities": {
                    view: torch.sigmoid(
                        _classify(self.evaluators.classifier, torch.stack([cohort[i][view] for i in cases]),
                                  self.eval_size)[1]
                    )
                    for view in VIEWS
                },
                "labels": torch.stack([cohort[i]["labels"] for i in cases]).long(),
            }  # fmt: skip
        return self.cache[key]

    @property
    def judged_findings(self) -> dict[str, dict[str, Any]]:
        """Per view, what the fidelity metrics judge, decided on the evaluator cohort only.

        ``{view: {"thresholds", "cohort_auroc", "included", "excluded"}}``: the Youden threshold
        and the evaluator's AUROC of every finding on the cohort's held-out part, and the
        findings judged (cohort AUROC >= ``config.min_evaluator_auroc`` and at least
        ``config.min_test_positives`` positive test reports; the others with the reason).
        The test images are never looked at here, only how many test reports name a finding.
        """
        from torchmetrics.functional.classification import binary_auroc

        cohort = self.cohort_test
        labels = cohort["labels"]
        positives = {name: int(self.labels[:, k].sum()) for k, name in enumerate(self.names)}
        judged: dict[str, dict[str, Any]] = {}
        for view in VIEWS:
            probs = cohort["probabilities"][view]
            auroc: dict[str, float | None] = {}
            for k, name in enumerate(self.names):
                defined = 0 < int(labels[:, k].sum()) < len(labels)
                auroc[name] = float(binary_auroc(probs[:, k], labels[:, k])) if defined else None
            included, excluded = judgeable_findings(
                auroc, positives, self.config.min_evaluator_auroc, self.config.min_test_positives
            )
            judged[view] = {
                "thresholds": youden_thresholds(probs, labels, self.names), "cohort_auroc": auroc,
                "included": included, "excluded": excluded,
            }  # fmt: skip
        return judged

    def cohort_floor_features(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Features of ``n`` test renders and ``n`` cohort test renders, drawn without replacement.

        ``n`` is the smaller of the two sets; both go through the generator's resolution first,
        as the scored images do. Returns ``(test, cohort)``, each per view.
        """
        key = ("cohort-floor", str(self.evaluators.cohort_dir), str(self.data_dir), self.generator.image_size,
               self.count, self.config.seed)  # fmt: skip
        if key not in self.cache:
            cohort = self._cohort_test(self.generator.image_size)
            n = min(self.count, len(cohort))
            rng = np.random.default_rng(self.config.seed)
            test_rows = np.sort(rng.choice(self.count, size=n, replace=False))
            cohort_rows = np.sort(rng.choice(len(cohort), size=n, replace=False))
            test_features = {view: self.features("real", view)[torch.from_numpy(test_rows)] for view in VIEWS}
            cohort_features = {
                view: _classify(
                    self.evaluators.classifier, torch.stack([cohort[int(i)][view] for i in cohort_rows]), self.eval_size
                )[0]
                for view in VIEWS
            }
            self.cache[key] = (test_features, cohort_features)
        return self.cache[key]

    # ---- the VCN

    @functools.cached_property
    def mismatch(self) -> np.ndarray:
        """The derangement ``π`` of the mismatched pairs: frontal of report ``i``, lateral of ``π(i)``."""
        return mismatched_permutation(self.count, self.config.seed).numpy()

    def vc_scores(self, source: str, matched: bool = True) -> torch.Tensor:
        """The evaluation VCN's P(same patient) ``[N]`` of matched or mismatched ``source`` pairs."""
        key: tuple[Any, ...] = ("vc", source, matched)
        store: dict[Any, Any] = self._vc
        if source == "real":  # the same for every scored generator
            key = ("vc-real", str(self.data_dir), self.generator.image_size, self.count, matched, self.config.seed)
            store = self.cache
        if key not in store:
            images = self.images(source)
            lateral = images["lateral"] if matched else images["lateral"][torch.from_numpy(self.mismatch)]
            store[key] = _vc(self.evaluators.vcn, images["frontal"], lateral, self.eval_size)
        return store[key]

    # ---- train split

    @functools.cached_property
    def train(self) -> XRayPairDataset:
        return XRayPairDataset(self.data_dir, "train", image_size=self.eval_size, vocab=self.generator.vocabulary)

    def train_features(self) -> torch.Tensor:
        """Classifier features of the train split's frontals (``config.memorisation_train`` of them, 0: all)."""
        count = len(self.train) if self.config.memorisation_train == 0 else min(self.config.memorisation_train,
                                                                                  len(self.train))  # fmt: skip
        key = ("train", str(self.data_dir), self.eval_size, count)
        if key not in self.cache:
            frontal = torch.stack([self.train[i]["frontal"] for i in range(count)])
            self.cache[key] = _classify(self.evaluators.classifier, frontal, self.eval_size)[0]
        return self.cache[key]

    @property
    def takes_noise(self) -> bool:
        return bool(getattr(self.generator, "takes_noise", False))


# --------------------------------------------------------------------------- the metrics

_IS_REASON = (
    "the evaluator classifier is a multi-label sigmoid classifier with no 'no finding' class, so a softmax "
    "over its logits is not a class distribution; IS would measure nothing (KID is the headline)"
)


@metric("is")
def _inception_score_not_applicable(ctx: EvalContext) -> Estimate:
    return Estimate.not_applicable(_IS_REASON, n=ctx.count)


def _fid(real: torch.Tensor, fake: torch.Tensor, ctx: EvalContext, paired: bool) -> Estimate:
    return Estimate.from_result(
        metrics.compute("fid", real_features=real, fake_features=fake, num_resamples=ctx.fid_splits,
                        seed=ctx.config.seed, paired=paired)
    )  # fmt: skip


@metric("fid")
def _fid_metric(ctx: EvalContext) -> dict[str, Estimate]:
    return {view: _fid(ctx.features("real", view), ctx.features("generated", view), ctx, paired=True)
            for view in (*VIEWS, "both")}  # fmt: skip


@metric("fid_floor")
def _fid_floor(ctx: EvalContext) -> dict[str, Estimate]:
    """FID between real test renders and real cohort renders, same n: the FID real images score.

    It does not depend on the scored generator, only on its resolution, so it is computed
    once per process for every generator scored (the evaluators' cache).
    """
    key = ("fid-floor", str(ctx.evaluators.cohort_dir), str(ctx.data_dir), ctx.generator.image_size, ctx.count,
           ctx.config.seed, ctx.fid_splits)  # fmt: skip
    if key not in ctx.cache:
        test, cohort = ctx.cohort_floor_features()
        both = lambda table: torch.cat([table[view] for view in VIEWS])  # noqa: E731
        result = {view: _fid(test[view], cohort[view], ctx, paired=False) for view in VIEWS}
        result["both"] = _fid(both(test), both(cohort), ctx, paired=False)
        ctx.cache[key] = result
    return dict(ctx.cache[key])


@metric("kid")
def _kid(ctx: EvalContext) -> Estimate:
    return Estimate.from_result(
        metrics.compute("kid", real_features=ctx.features("real"), fake_features=ctx.features("generated"),
                        seed=ctx.config.seed, paired=True)
    )  # fmt: skip


@metric("ssim")
def _ssim(ctx: EvalContext) -> dict[str, Estimate]:
    fake, real = ctx.generated, ctx.real
    result = {view: metrics.compute("ssim", fake=fake[view], real=real[view], **ctx.boot) for view in VIEWS}
    result["both"] = metrics.compute(
        "ssim", fake=torch.cat([fake[v] for v in VIEWS]), real=torch.cat([real[v] for v in VIEWS]), **ctx.boot
    )
    return estimates(result)


@metric("vc")
def _vc_generated(ctx: EvalContext) -> Estimate:
    return estimates(metrics.compute("view_consistency", probabilities=ctx.vc_scores("generated"), **ctx.boot))


@metric("vc_real")
def _vc_real(ctx: EvalContext) -> Estimate:
    return estimates(metrics.compute("view_consistency", probabilities=ctx.vc_scores("real"), **ctx.boot))


@metric("fidelity")
def _fidelity(ctx: EvalContext) -> dict[str, Any]:
    return {
        source: {
            view: estimates(metrics.compute("finding_auroc", scores=ctx.probabilities(source, view), labels=ctx.labels,
                                            names=ctx.names, **ctx.boot))
            for view in VIEWS
        }
        for source in SOURCES
    }  # fmt: skip


@metric("detection")
def _detection(ctx: EvalContext) -> dict[str, Any]:
    """Findings called at thresholds fixed on the cohort, generated images beside the real renders.

    The headline is detection minus false-alarm rate over the judged findings: 0 for an image
    that is the same for every report, whatever its ranking of tiny differences would say.
    """
    judged = ctx.judged_findings
    ctx.records["judged_findings"] = judged
    return {
        source: {
            view: estimates(metrics.compute(
                "finding_detection", probs=ctx.probabilities(source, view), labels=ctx.labels,
                thresholds=judged[view]["thresholds"], names=ctx.names, included=judged[view]["included"],
                excluded=judged[view]["excluded"], **ctx.boot,
            ))
            for view in VIEWS
        }
        for source in SOURCES
    }  # fmt: skip


@metric("vc_auroc")
def _vc_auroc(ctx: EvalContext) -> dict[str, Any]:
    """Does the evaluation VCN tell matched pairs from mismatched ones: 0.5 for a mean pair."""
    if ctx.count < 2:
        return {source: Estimate.not_applicable("mismatched pairs need at least 2 test reports") for source in SOURCES}
    return {
        source: estimates(metrics.compute(
            "vc_auroc", matched=ctx.vc_scores(source, matched=True), mismatched=ctx.vc_scores(source, matched=False),
            **ctx.boot,
        ))
        for source in SOURCES
    }  # fmt: skip


@metric("variation")
def _variation(ctx: EvalContext) -> dict[str, Any]:
    """How much the images change from report to report, generated beside real: the per-pixel
    standard deviation across the scored reports (image range [0, 1], averaged over pixels) per
    view, and the spread of the classifier's features (per-dimension standard deviation, averaged;
    a view's features each). ``ratio`` is generated over real: 0 for a generator that draws one
    image for every report. Point values: a resample with replacement repeats images and shrinks
    a spread, so no interval is made (the training seeds give the spread of a model's value)."""
    if ctx.count < 2:
        reason = "a spread across reports needs at least 2 test reports"
        return {source: Estimate.not_applicable(reason, n=ctx.count) for source in (*SOURCES, "ratio")}
    note = {"reason": "no interval: resampling with replacement shrinks a spread"}
    spread: dict[str, dict[str, float]] = {}
    for source in SOURCES:
        images = ctx.images(source)
        spread[source] = {view: float(images[view].float().std(dim=0).mean()) for view in VIEWS}
        spread[source].update({
            f"features_{view}": float(ctx.features(source, view).float().std(dim=0).mean()) for view in VIEWS
        })  # fmt: skip
    result: dict[str, Any] = {
        source: {key: Estimate(value, None, ctx.count, "none", dict(note)) for key, value in values.items()}
        for source, values in spread.items()
    }
    result["ratio"] = {
        key: Estimate(spread["generated"][key] / real if real > 0 else None, None, ctx.count, "none", dict(note))
        for key, real in spread["real"].items()
    }
    return result


@metric("cross_view_agreement")
def _cross_view_agreement(ctx: EvalContext) -> dict[str, Any]:
    return {
        source: estimates(metrics.compute(
            "cross_view_agreement", frontal_probs=ctx.probabilities(source, "frontal"),
            lateral_probs=ctx.probabilities(source, "lateral"), names=ctx.names, **ctx.boot,
        ))
        for source in SOURCES
    }  # fmt: skip


@metric("diversity")
def _diversity(ctx: EvalContext) -> dict[str, Estimate]:
    """MS-SSIM between generations of one report with different seeds, only where the seed matters."""
    if not ctx.takes_noise:
        return {view: Estimate.not_applicable("deterministic generator") for view in VIEWS}
    diverse = ctx.indices[: ctx.config.diversity_reports]
    if not diverse:
        return {view: Estimate.not_applicable("diversity_reports is 0") for view in VIEWS}
    samples = [
        generate_for_cases(ctx.generator, ctx.test, diverse, ctx.config.seed + 1000 * (k + 1), ctx.config.batch_size)
        for k in range(ctx.config.diversity_samples)
    ]
    return {
        view: estimates(
            metrics.compute("ms_ssim_diversity", samples=torch.stack([s[view] for s in samples], dim=1), **ctx.boot)
        )
        for view in VIEWS
    }


@metric("controllability")
def _controllability(ctx: EvalContext) -> dict[str, Any] | Estimate:
    """Edited held-out reports, both versions generated with the same seed (edits kept in eval.json).

    The headline (``value``) counts an edit when the edited finding's probability moves the
    intended way by at least ``config.edit_margin`` and more than every other finding did
    (:func:`xrg.eval.judge.controllability_margin`): 0 for a generator that ignores the text.
    ``any_direction`` is the older score (any movement the intended way), whose chance level
    is about 0.5 for any generator whose output changes at all; ``placebo`` is the margin
    score of the same changes against other cases' edits, a chance line.
    """
    edits = controllability_edits([ctx.test.cases[i] for i in ctx.indices], ctx.config.controllability_reports,
                                  ctx.config.seed)  # fmt: skip
    if not edits:
        return Estimate.not_applicable("no test report has an edit with a known direction")
    ids = [e["case_id"] for e in edits]
    before = generate_for_texts(ctx.generator, [e["before"] for e in edits], ctx.config.seed, ctx.config.batch_size,
                                case_ids=ids)  # fmt: skip
    after = generate_for_texts(ctx.generator, [e["after"] for e in edits], ctx.config.seed, ctx.config.batch_size,
                               case_ids=ids)  # fmt: skip
    mean_probs = lambda images: torch.stack(list(ctx.classify_probabilities(images).values())).mean(0)  # noqa: E731
    ctx.records["controllability_edits"] = [
        {k: e[k] for k in ("case_id", "operation", "kind", "argument", "direction")} for e in edits
    ]
    arguments = {
        "before": mean_probs(before), "after": mean_probs(after),
        "edited": torch.tensor([ctx.names.index(e["kind"]) for e in edits]),
        "direction": torch.tensor([float(e["direction"]) for e in edits]), "names": ctx.names, **ctx.boot,
    }  # fmt: skip
    result = metrics.compute(
        "controllability_margin", operations=[e["operation"] for e in edits], margin=ctx.config.edit_margin,
        **arguments,
    )  # fmt: skip
    result["any_direction"] = metrics.compute("controllability", **arguments)
    return estimates(result)


@metric("memorisation")
def _memorisation(ctx: EvalContext) -> dict[str, Any]:
    train_features = ctx.train_features()
    ctx.records["memorisation_case_ids"] = {
        "test": [ctx.test.cases[i].id for i in ctx.indices],
        "train": [ctx.train.cases[i].id for i in range(len(train_features))],
    }
    return estimates(metrics.compute(
        "memorisation", generated_features=ctx.features("generated", "frontal"), train_features=train_features,
        test_features=ctx.features("real", "frontal"), num_closest=ctx.config.num_closest, **ctx.boot,
    ))  # fmt: skip


@metric("inception")
def _inception(ctx: EvalContext) -> dict[str, Any]:
    """IS and FID on the standard FID Inception network, when a local weights file is given."""
    if not ctx.inception_weights:
        return {"absent": "no --inception-weights file given"}
    available, reason = metrics.inception_available(ctx.inception_weights)
    if not available:
        return {"absent": reason}
    features = {
        source: metrics.inception_features(torch.cat([ctx.images(source)[view] for view in VIEWS]),
                                           ctx.inception_weights)
        for source in SOURCES
    }  # fmt: skip
    return {
        "is": estimates(metrics.compute("inception_score", fake_logits=features["generated"][1],
                                        num_resamples=ctx.config.num_resamples, seed=ctx.config.seed)),
        "fid": _fid(features["real"][0], features["generated"][0], ctx, paired=True),
    }  # fmt: skip


# --------------------------------------------------------------------------- running them


def run_metrics(ctx: EvalContext, names: list[str], log_path: Path) -> tuple[str, dict[str, Any]]:
    """Run ``names`` on ``ctx``, appending each result to ``log_path`` as it comes.

    Returns the evaluation's id (every line carries it) and the sections eval.json gets, read
    back from the lines just written.
    """
    names = check_metric_names(names)
    evaluation = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        started = time.perf_counter()
        result = METRICS[name](ctx)
        for line in result_lines(name, result, evaluation, time.perf_counter() - started):
            append_jsonl(log_path, line)
    return evaluation, results_from_lines(read_metric_lines(log_path, evaluation))
