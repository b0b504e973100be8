"""Pathology samples from a trained PGGAN: search, then let an independent evaluator judge.

:func:`sample_pathology` runs latent class optimisation (:func:`xrg.latent.search.search`) for
one class with the search classifier, writes every found image as a PNG and one manifest line
per search (JSON lines, ``OUT/manifest.jsonl``): the seed, whether the search passed and after
how many steps, the achieved logits of the search classifier, and — when the evaluators of
:mod:`xrg.eval.evaluators` are given — the independent evaluator's probabilities, its
threshold and whether it **confirms** the class. A search classifier can be fooled by an
adversarial pattern; the evaluator (trained on the independent phantom cohort, never used
by the search) is the check, and the gap between the two rates is reported, not hidden.

:func:`confirming_classifier` is that evaluator as a thresholded classifier: the evaluation
finding classifier with per-finding thresholds at the Youden J of the cohort's held-out part,
the same thresholds the honest evaluation of XRayGAN uses (:mod:`xrg.eval.judge`), on the
frontal view (PGGAN draws frontals unless trained on laterals: ``view``).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xrg.checkpoint import load_checkpoint
from xrg.data.datasets import XRayPairDataset
from xrg.data.findings import FINDING_KINDS
from xrg.data.images import save_png
from xrg.errors import ConfigError, DataDirError
from xrg.eval.classifier import predict
from xrg.eval.evaluators import CLASSIFIER_NAME, COHORT_DIR, load_classifier
from xrg.eval.judge import youden_thresholds
from xrg.io import atomic_write_jsonl
from xrg.latent.search import TRUNCATION, SearchClassifier, SearchResult, search
from xrg.models.pggan import PGGAN
from xrg.models.xraygan import to_image_range

MANIFEST_NAME = "manifest.jsonl"


def _logit(probability: float | None) -> float:
    """A threshold probability as a logit, kept finite; a finding without one gets +20 (never confirmed)."""
    if probability is None:
        return 20.0
    p = min(max(float(probability), 1e-9), 1 - 1e-9)
    return max(-20.0, min(20.0, float(torch.logit(torch.tensor(p)))))


def evaluator_judge(
    evaluators_dir: str | os.PathLike, view: str = "frontal"
) -> tuple[SearchClassifier, dict[str, float | None]]:
    """The evaluator as a thresholded classifier (:func:`confirming_classifier`) and its AUROC per
    finding on the cohort's held-out part (None where undefined): which findings it can tell apart."""
    from torchmetrics.functional.classification import binary_auroc

    evaluators_dir = Path(evaluators_dir)
    path = evaluators_dir / CLASSIFIER_NAME
    if not path.is_file():
        raise DataDirError(
            f"{evaluators_dir} holds no evaluation classifier ({CLASSIFIER_NAME}); train the evaluators first "
            "(xrg eval, or the book's chapter 05)"
        )
    classifier, _ = load_classifier(path)
    size = int(load_checkpoint(path, "classifier")["config"]["image_size"])
    cohort = XRayPairDataset(evaluators_dir / COHORT_DIR, "test", image_size=size, max_sentences=1, max_words=1)
    images = torch.stack([cohort[i][view] for i in range(len(cohort))])
    labels = torch.stack([cohort[i]["labels"] for i in range(len(cohort))]).long()
    probabilities = predict(classifier, images, size)
    thresholds = youden_thresholds(probabilities, labels, FINDING_KINDS)
    auroc: dict[str, float | None] = {}
    for k, name in enumerate(FINDING_KINDS):
        defined = 0 < int(labels[:, k].sum()) < len(labels)
        auroc[name] = float(binary_auroc(probabilities[:, k], labels[:, k])) if defined else None
    judge = SearchClassifier(classifier, FINDING_KINDS, [_logit(thresholds[name]) for name in FINDING_KINDS], size)
    return judge, auroc


def confirming_classifier(evaluators_dir: str | os.PathLike, view: str = "frontal") -> SearchClassifier:
    """The evaluation classifier of ``evaluators_dir`` with thresholds at the cohort's held-out Youden J (module docstring)."""
    return evaluator_judge(evaluators_dir, view)[0]


def judged_searches(
    model: PGGAN,
    search_classifier: SearchClassifier,
    classes: list[str] | tuple[str, ...],
    evaluator: SearchClassifier | None = None,
    *,
    n: int = 16,
    seed: int = 0,
    target: float | None = None,
    max_steps: int = 100,
    lr: float = 0.05,
    regulariser: str = "none",
    batch: int = 16,
) -> dict[str, list[dict[str, Any]]]:
    """``n`` searches per class in batches (search ``i`` from the latent of ``seed + i``'s batch), each
    judged by ``evaluator``: per class, manifest-like lines for :func:`xrg.latent.evaluate.search_rates`
    (``success``, ``steps``, ``confirmed``, the evaluator's probability of the class) and the control
    of each line — whether the search classifier (``passed_at_start``) and the evaluator
    (``confirmed_at_start``) already called the **starting** image positive: a search deserves
    credit only for what it adds to that."""
    if n < 1 or batch < 1:
        raise ConfigError(f"need n >= 1 and batch >= 1, got {n} and {batch}")
    model = model.for_inference()
    lines: dict[str, list[dict[str, Any]]] = {}
    for name in classes:
        search_classifier.class_index(name)
        k = evaluator.class_index(name) if evaluator is not None else None
        lines[name] = []
        for start in range(0, n, batch):
            results = search(
                model.generate, model.config.latent_dim, search_classifier, name, n=min(batch, n - start),
                seed=seed + start, target=target, max_steps=max_steps, lr=lr, regulariser=regulariser,
                record_images=True,
            )  # fmt: skip
            column = search_classifier.class_index(name)
            for offset, result in enumerate(results):
                line: dict[str, Any] = {"seed": seed + start, "index": start + offset, "success": result.success,
                                        "steps": result.steps, "target_logit": result.target_logit, "confirmed": None,
                                        "passed_at_start": bool(result.logits[0, column] >= result.threshold)}  # fmt: skip
                if evaluator is not None:
                    with torch.no_grad():
                        first, last = evaluator.logits(torch.stack([result.images[0], result.image]))[:, k]
                    # the control: what the evaluator says of the image the search started from
                    line["confirmed_at_start"] = bool(first >= evaluator.thresholds[k])
                    if result.success:
                        line["confirmed"] = bool(last >= evaluator.thresholds[k])
                        line["evaluator_probability"] = float(torch.sigmoid(last))
                lines[name].append(line)
    return lines


@dataclass
class SampleRecord:
    """One search of :func:`sample_pathology`, as its manifest line says it."""

    index: int
    seed: int
    class_name: str
    success: bool
    steps: int
    search_threshold: float
    search_logits: dict[str, float]
    image: str | None = None
    confirmed: bool | None = None
    evaluator_probability: float | None = None
    evaluator_threshold: float | None = None
    evaluator_probabilities: dict[str, float] | None = None

    def as_row(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sample_pathology(
    model: PGGAN,
    search_classifier: SearchClassifier,
    class_name: str,
    out_dir: str | os.PathLike,
    *,
    n: int = 8,
    seed: int = 0,
    target: float | None = None,
    evaluator: SearchClassifier | None = None,
    max_steps: int = 200,
    lr: float = 0.05,
    regulariser: str = "none",
    truncation: float | None = TRUNCATION,
) -> list[SampleRecord]:
    """``n`` searches for ``class_name`` (search ``i`` seeded with ``seed + i``); PNGs of the found
    images and ``OUT/manifest.jsonl`` (module docstring). A failed search writes no image; its line says so."""
    search_classifier.class_index(class_name)  # an unknown class is refused before any work
    if evaluator is not None:
        evaluator.class_index(class_name)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    out_dir = Path(out_dir)
    records: list[SampleRecord] = []
    for i in range(n):
        result: SearchResult = search(
            model.generate, model.config.latent_dim, search_classifier, class_name, n=1, seed=seed + i, target=target,
            max_steps=max_steps, lr=lr, regulariser=regulariser, truncation=truncation, record_images=False,
        )[0]  # fmt: skip
        record = SampleRecord(
            index=i, seed=seed + i, class_name=class_name, success=result.success, steps=result.steps,
            search_threshold=result.threshold,
            search_logits={name: float(v) for name, v in zip(search_classifier.class_names, result.final_logits)},
        )  # fmt: skip
        if result.success:
            with torch.no_grad():
                image = model.generate(result.z.unsqueeze(0))
            name = f"{class_name}_{i:04d}.png"
            save_png(out_dir / name, to_image_range(image)[0, 0].cpu().numpy())
            record.image = name
            if evaluator is not None:
                with torch.no_grad():
                    logits = evaluator.logits(image)[0]
                probabilities = torch.sigmoid(logits)
                k = evaluator.class_index(class_name)
                record.evaluator_probabilities = {n_: float(p) for n_, p in zip(evaluator.class_names, probabilities)}
                record.evaluator_probability = float(probabilities[k])
                record.evaluator_threshold = float(torch.sigmoid(evaluator.thresholds[k]))
                record.confirmed = bool(logits[k] >= evaluator.thresholds[k])
        records.append(record)
    atomic_write_jsonl(out_dir / MANIFEST_NAME, [record.as_row() for record in records])
    return records


def summary(records: list[SampleRecord], evaluated: bool) -> dict[str, Any]:
    """Search success rate and, when an evaluator judged the found images (``evaluated``), the
    confirmed rate — both over all searches — and the median steps of the successful searches."""
    passed = [r for r in records if r.success]
    return {
        "searches": len(records),
        "search_success_rate": len(passed) / len(records) if records else None,
        "confirmed_rate": sum(bool(r.confirmed) for r in passed) / len(records) if evaluated and records else None,
        "median_steps": statistics.median(r.steps for r in passed) if passed else None,
    }
