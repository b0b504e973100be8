"""Scoring a generator with one protocol: ``xrg eval``, the rows of Tables 1 and 2 and their controls.

:func:`evaluate_generator` scores any :class:`~xrg.eval.generators.PairGenerator` (a trained
run, or a control with no checkpoint) and :func:`evaluate_run` a run directory through it.
For the test split of the data directory (reports and patients no generator trained on) the
generator draws both views of every report with a seeded noise source. Then, with evaluator
networks trained on an independent phantom cohort (:mod:`xrg.eval.evaluators`: a
DenseNet-121 finding classifier and an evaluation VCN, neither ever saw a generator's
patients), the metrics of :mod:`xrg.eval.contract` run:

* KID (the headline) and FID on the classifier's pooled features against the real test
  renders, per view and over both views, beside the FID of real test renders against real
  cohort renders (the floor); with a local Inception file, IS and FID on Inception. IS on the
  classifier is not computed: its sigmoid outputs are no class distribution;
* SSIM of each generated image against the ground truth of its report, per view;
* MS-SSIM between generations of the same report with different seeds (diversity), for
  generators that take noise;
* VC of generated pairs and of real pairs under the evaluation VCN;
* finding fidelity: the classifier's per-finding AUROC on generated images against the
  report's findings, per view, next to the same on the real renders (the ceiling);
* cross-view agreement of the classifier's calls on the generated frontal and lateral;
* controllability: held-out reports edited (a finding negated or its severity changed),
  both versions generated with the same seed; does the edited finding's probability move
  the intended way while the others stay put;
* memorisation: nearest-neighbour distances of generated frontals to the train split in the
  classifier's feature space, relative to the same for real test frontals.

Every number comes with its sample count and an interval that names how it was made; the
results are appended to ``OUT/metrics-eval.jsonl`` and written to ``OUT/eval.json`` with the
checkpoints (and their sha256) they were computed from, so a stale evaluation is recognised
and redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xrg.config import config_from_mapping
from xrg.data.datasets import XRayPairDataset, collate_pairs, resize_image
from xrg.data.findings import SEVERITIES
from xrg.data.reports import report_text
from xrg.errors import ConfigError, XrgError
from xrg.eval.generators import VIEWS, PairGenerator, checkpoint_path, encode_reports, load_generator
from xrg.io import atomic_write_json
from xrg.profiles import Profile

EVAL_NAME = "eval.json"


def eval_name(split: str = "test", name: str = EVAL_NAME) -> str:
    """The file a split's results go to: ``eval.json`` for the test split, ``eval-val.json`` for
    validation (and the same suffix for the metrics log), so a validation run never replaces the table's."""
    if split == "test":
        return name
    stem, dot, suffix = name.partition(".")
    return f"{stem}-{split}{dot}{suffix}"


EVAL_FORMAT = "xrg-eval-2"
#: What makes an existing ``eval.json`` current: the same checkpoints (or control), data and Inception file.
FRESHNESS_KEYS: tuple[str, ...] = (
    "run_sha256", "generator", "classifier_sha256", "vcn_sha256", "data_dir", "inception_weights",
)  # fmt: skip


def registered_metrics() -> list[str]:
    """The names of every metric of :mod:`xrg.eval.contract`, in the order they run."""
    from xrg.eval.contract import METRICS

    return list(METRICS)


@dataclass
class EvalConfig:
    """How a run is scored; one config for every row of a table."""

    num_reports: int = 0  # test reports scored (0: the whole test split)
    batch_size: int = 32  # reports generated per forward pass
    seed: int = 0  # seeds the noise of the generators and the bootstrap
    num_resamples: int = (
        200  # bootstrap resamples per CI (FID: a tenth as many half-splits, at least 10; each is two FIDs)
    )
    diversity_reports: int = 50  # reports generated diversity_samples times for MS-SSIM
    diversity_samples: int = 4  # seeds per report for MS-SSIM
    controllability_reports: int = 100  # test reports edited for the controllability score
    memorisation_train: int = 0  # train images searched for nearest neighbours (0: all)
    num_closest: int = 8  # closest generated/train pairs listed for the figure
    # which findings are judged (on the evaluator cohort, never on the test images) and how edits count
    min_evaluator_auroc: float = 0.8  # a finding is judged when the evaluator's cohort AUROC reaches this ...
    min_test_positives: int = 20  # ... and the test split has this many positive reports
    edit_margin: float = 0.1  # an edit succeeds when the edited finding's probability moves at least this
    metrics: list[str] = field(default_factory=lambda: registered_metrics())  # metrics run (default: all)
    # the split scored: "test" for the tables; "val" for the decisions made while developing a
    # model (settings, tricks, thresholds), which must never look at the test split
    split: str = "test"

    def __post_init__(self) -> None:
        from xrg.eval.contract import check_metric_names

        self.metrics = check_metric_names(self.metrics)
        for name in ("num_reports", "controllability_reports", "memorisation_train", "diversity_reports"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval {name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "num_resamples", "num_closest"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval {name} must be >= 1, got {getattr(self, name)}")
        if self.diversity_samples < 2:
            raise ConfigError(f"eval diversity_samples must be >= 2, got {self.diversity_samples}")
        if not 0.0 <= self.min_evaluator_auroc <= 1.0:
            raise ConfigError(f"eval min_evaluator_auroc must be in [0, 1], got {self.min_evaluator_auroc}")
        if self.min_test_positives < 1:
            raise ConfigError(f"eval min_test_positives must be >= 1, got {self.min_test_positives}")
        if self.split not in ("val", "test"):
            raise ConfigError(f"eval split must be 'val' or 'test' (the held-out splits), got {self.split!r}")
        if not 0.0 < self.edit_margin < 1.0:
            raise ConfigError(f"eval edit_margin must be in (0, 1), got {self.edit_margin}")

    @classmethod
    def from_profile(cls, profile: Profile, overrides: dict[str, Any] | None = None) -> EvalConfig:
        values = {"seed": profile.seed, **profile.section("eval"), **(overrides or {})}
        return config_from_mapping(cls, values, where=f"eval section of profile {profile.name!r}")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batches(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


@torch.no_grad()
def _classify(
    classifier: torch.nn.Module, images: torch.Tensor, size: int, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and finding logits of ``images [N, 1, H, W]`` in [0, 1] at ``size``."""
    device = next(classifier.parameters()).device
    features, logits = [], []
    for part in _batches(len(images), batch_size):
        x = resize_image(images[part.start : part.stop], size).to(device)
        pooled = classifier.features(x)
        features.append(pooled.cpu())
        logits.append(classifier.classify(pooled).cpu() if hasattr(classifier, "classify") else classifier(x).cpu())
    return torch.cat(features).double(), torch.cat(logits).double()


@torch.no_grad()
def _vc(
    vcn: torch.nn.Module, frontal: torch.Tensor, lateral: torch.Tensor, size: int, batch_size: int = 64
) -> torch.Tensor:
    """P(same patient) of each (frontal, lateral) pair under a VCN, at ``size``."""
    from xrg.models.xraygan import to_model_range

    device = next(vcn.parameters()).device
    scores = []
    for part in _batches(len(frontal), batch_size):
        f = vcn.embed(to_model_range(resize_image(frontal[part.start : part.stop], size)).to(device))
        l = vcn.embed(to_model_range(resize_image(lateral[part.start : part.stop], size)).to(device))  # noqa: E741 (lateral)
        scores.append(vcn.pair_probability(f, l).cpu())
    return torch.cat(scores).double()


def model_dataset(model: PairGenerator, data_dir: str | os.PathLike, split: str = "test") -> XRayPairDataset:
    """A split of ``data_dir`` as ``model`` reads it: at its resolution, with its vocabulary and report limits."""
    return XRayPairDataset(data_dir, split, image_size=model.image_size, vocab=model.vocabulary,
                           max_sentences=model.max_sentences, max_words=model.max_words)  # fmt: skip


def generate_for_cases(
    model: PairGenerator,
    dataset: XRayPairDataset,
    indices: Sequence[int],
    seed: int,
    batch_size: int,
    progress: bool = False,
    desc: str = "generating",
) -> dict[str, torch.Tensor]:
    """Both views for the dataset's cases ``indices``; batch ``b`` uses noise seeded ``seed + b``."""
    out: dict[str, list[torch.Tensor]] = {view: [] for view in VIEWS}
    parts = list(_batches(len(indices), batch_size))
    for number, part in enumerate(tqdm(parts, desc=desc, unit="batch", disable=not progress)):
        batch = collate_pairs([dataset[indices[i]] for i in part])
        images = model.generate(batch, torch.Generator().manual_seed(seed + number))
        for view in VIEWS:
            out[view].append(images[view])
    return {view: torch.cat(out[view]) for view in VIEWS}


def generate_for_texts(
    model: PairGenerator,
    texts: Sequence[str],
    seed: int,
    batch_size: int,
    case_ids: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """Both views for raw report texts; batch ``b`` uses noise seeded ``seed + b``.

    ``case_ids`` (one per text) say which case each text is a version of: a model ignores
    them, the phantom control draws each text into that case's patient.
    """
    if case_ids is not None and len(case_ids) != len(texts):
        raise ConfigError(f"case_ids has {len(case_ids)} entries for {len(texts)} texts")
    out: dict[str, list[torch.Tensor]] = {view: [] for view in VIEWS}
    for number, part in enumerate(_batches(len(texts), batch_size)):
        ids = None if case_ids is None else [case_ids[i] for i in part]
        batch = encode_reports(
            [texts[i] for i in part], model.vocabulary, model.max_sentences, model.max_words, case_ids=ids
        )
        images = model.generate(batch, torch.Generator().manual_seed(seed + number))
        for view in VIEWS:
            out[view].append(images[view])
    return {view: torch.cat(out[view]) for view in VIEWS}


def controllability_edits(cases: Sequence[Any], limit: int, seed: int) -> list[dict[str, Any]]:
    """Edits with a known intended direction for up to ``limit`` cases, one per case.

    Each case gets one edit drawn (seeded) from those that apply to its text: negating a
    finding (its probability should fall) or moving its severity one step (rise or fall).
    Side flips do not change which findings are present, so the classifier cannot score them;
    they are left to the explorer.
    """
    from xrg.data import edits as report_edits

    rng = np.random.default_rng(seed)
    chosen = []
    for case in cases:
        if len(chosen) >= limit:
            break
        text = report_text(case.findings, case.impression, headers=True)
        try:
            options = [o for o in report_edits.possible_edits(text) if o[0] in ("negate", "set_severity")]
        except XrgError:
            continue
        if not options:
            continue
        operation, kind, argument = options[int(rng.integers(len(options)))]
        try:
            if operation == "negate":
                edit = report_edits.negate(text, kind)
                direction = -1
            else:
                edit = report_edits.set_severity(text, kind, argument)
                before = next((f.severity for f in edit.findings_before if f.kind == kind and not f.negated), None)
                rank = {s: i for i, s in enumerate(SEVERITIES)}
                direction = 1 if rank[argument] > rank.get(before or "moderate", 1) else -1
        except XrgError:
            continue
        chosen.append(
            {"case_id": case.id, "operation": operation, "kind": kind, "argument": argument, "direction": direction,
             "before": text, "after": edit.text}
        )  # fmt: skip
    return chosen


def _sources(
    generator: dict[str, Any], evaluators: Any, data_dir: str | os.PathLike, inception_weights: Any
) -> dict[str, Any]:
    """What an evaluation was computed from: the generator's record, the evaluators, the data."""
    return {
        **generator,
        "classifier": str(evaluators.classifier_path),
        "classifier_sha256": file_sha256(evaluators.classifier_path),
        "vcn": str(evaluators.vcn_path),
        "vcn_sha256": file_sha256(evaluators.vcn_path),
        "data_dir": str(Path(data_dir).resolve()),
        "inception_weights": str(inception_weights) if inception_weights else None,
    }


def _up_to_date(path: Path, sources: dict[str, Any], config: EvalConfig) -> dict[str, Any] | None:
    """The eval.json at ``path`` when it has this format and was computed from ``sources`` with ``config``."""
    from xrg.io import read_json_mapping

    if not path.is_file():
        return None
    previous = read_json_mapping(path, "evaluation result", "delete it, or pass --force to recompute it")
    # Files are compared by content, not by the path they were reached by (relative or absolute).
    same_inputs = all(previous.get("sources", {}).get(key) == sources.get(key) for key in FRESHNESS_KEYS)
    fresh = (
        previous.get("format") == EVAL_FORMAT and same_inputs and previous.get("config") == dataclasses.asdict(config)
    )
    return previous if fresh else None


def evaluate_generator(
    generator: PairGenerator,
    data_dir: str | os.PathLike,
    evaluators: Any,
    config: EvalConfig | None = None,
    out_dir: str | os.PathLike | None = None,
    sources: dict[str, Any] | None = None,
    inception_weights: str | os.PathLike | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Score any :class:`PairGenerator` on the test split of ``data_dir`` (``config.split``); writes
    ``OUT/eval.json`` (validation: ``OUT/eval-val.json``, :func:`eval_name`).

    The metrics ``config.metrics`` names (:mod:`xrg.eval.contract`) run on one
    :class:`~xrg.eval.contract.EvalContext`; each result is appended to
    ``OUT/metrics-eval.jsonl`` as it comes and eval.json is written from those lines.
    ``sources`` says what the generator is (a run's checkpoint and its sha256; a control,
    which has none, describes itself) and joins the evaluators' and the data's records. An
    existing eval.json of the same format, inputs and config is returned as is unless ``force``.
    """
    from xrg.eval.contract import METRICS_LOG_NAME, EvalContext, run_metrics

    config = config or EvalConfig()
    started = time.perf_counter()
    if out_dir is None:
        raise ConfigError("evaluate_generator needs out_dir, the directory eval.json is written to")
    out = Path(out_dir)
    record = _sources(sources or {"generator": {"method": generator.method}}, evaluators, data_dir, inception_weights)
    previous = None if force else _up_to_date(out / eval_name(config.split), record, config)
    if previous is not None:
        return previous
    context = EvalContext(generator, data_dir, evaluators, config, inception_weights, progress)
    log_name = eval_name(config.split, METRICS_LOG_NAME)
    evaluation, sections = run_metrics(context, list(config.metrics), out / log_name)
    result: dict[str, Any] = {
        "format": EVAL_FORMAT, "method": generator.method, "num_reports": context.count,
        "takes_noise": context.takes_noise, **sections, **context.records,
        "evaluators": {"image_size": evaluators.image_size, "test_metrics": getattr(evaluators, "metrics", None)},
        "config": dataclasses.asdict(config), "sources": record, "evaluation": evaluation,
        "metrics_log": log_name, "split": config.split, "seconds": time.perf_counter() - started,
    }  # fmt: skip
    atomic_write_json(out / eval_name(config.split), result)
    return result


def evaluate_run(
    run: str | os.PathLike,
    data_dir: str | os.PathLike,
    evaluators: Any,
    config: EvalConfig | None = None,
    device: str | torch.device = "cpu",
    inception_weights: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Score the run in ``run`` on the test split of ``data_dir``; writes and returns ``RUN/eval.json``.

    ``evaluators`` is an :class:`xrg.eval.evaluators.Evaluators`. An existing ``eval.json``
    computed from the same checkpoints and config is returned as is unless ``force``.
    """
    config = config or EvalConfig()
    run_path = checkpoint_path(run)
    sources = {"run_checkpoint": str(run_path), "run_sha256": file_sha256(run_path)}
    if not force:
        previous = _up_to_date(
            run_path.parent / eval_name(config.split),
            _sources(sources, evaluators, data_dir, inception_weights),
            config,
        )
        if previous is not None:
            return previous
    return evaluate_generator(
        load_generator(run_path, device), data_dir, evaluators, config, run_path.parent, sources,
        inception_weights, progress, force=True,
    )  # fmt: skip


def evaluate_controls(
    like: PairGenerator,
    data_dir: str | os.PathLike,
    evaluators: Any,
    config: EvalConfig | None = None,
    out_root: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
    progress: bool = False,
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Score the controls (:mod:`xrg.eval.controls`) read like the model ``like``; ``{name: eval.json}``.

    Each control is fitted on the train split of ``data_dir`` and scored on exactly the test
    batches of ``like`` (its image size, vocabulary and report limits), with the same config
    and evaluators; results go to ``OUT_ROOT/<name>-<size>px/eval.json`` and are reused when
    current. ``names`` defaults to all three (the phantom needs a data directory made by
    ``xrg data build``; pass ``("mean image", "retrieval")`` for imported archives).
    """
    from xrg.eval.controls import CONTROL_NAMES, control_generators

    if out_root is None:
        raise ConfigError("evaluate_controls needs out_root, the directory the controls' results go to")
    results: dict[str, dict[str, Any]] = {}
    for control in control_generators(data_dir, like, tuple(names or CONTROL_NAMES)):
        out = Path(out_root) / f"{control.method.replace(' ', '_')}-{control.image_size}px"
        results[control.method] = evaluate_generator(
            control, data_dir, evaluators, config, out, sources={"generator": control.describe()},
            progress=progress, force=force,
        )  # fmt: skip
    return results
