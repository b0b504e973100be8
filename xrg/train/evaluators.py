"""Training the evaluator networks of :mod:`xrg.eval.evaluators` on the evaluation cohort.

:func:`ensure_evaluators` renders (or finishes rendering) the cohort, loads the finding
classifier and the evaluation VCN when they exist with the same settings and trains what is
missing: the DenseNet-121 (:func:`train_classifier`, class-weighted BCE of the dissertation,
both views) and the VCN (:func:`xrg.train.vcn.ensure_vcns`, the training VCNs' recipe, with
:func:`evaluator_vcn_config`: trained on until it separates matched from mismatched real pairs
of the cohort's held-out part with AUROC ``vcn_target_auroc``, or for ``vcn_max_epochs``). It refuses a directory made from another data directory or
settings. SIGINT or SIGTERM stops either training after the current step, saving its state to
``OUT/classifier.partial.pt`` or ``OUT/vcn/vcn_<size>.partial.pt`` (never a trained model's
name) and raising :class:`~xrg.errors.TrainingStopped`; calling :func:`ensure_evaluators` (or
:func:`train_classifier`) again resumes it to the weights of an uninterrupted run.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from xrg.data.datasets import XRayPairDataset
from xrg.data.manifest import VIEWS, VOCAB_NAME
from xrg.data.reports import Vocabulary
from xrg.errors import TrainingDiverged
from xrg.eval.classifier import classifier_auroc
from xrg.eval.evaluators import (
    CLASSIFIER_NAME,
    COHORT_DIR,
    COHORT_NAME,
    METRICS_NAME,
    ClassifierTrainConfig,
    EvaluatorConfig,
    Evaluators,
    ensure_cohort,
    load_classifier,
)
from xrg.io import read_json_mapping
from xrg.models.classifier import FindingClassifier, FindingClassifierConfig, class_weights, weighted_bce
from xrg.models.vcn import vcn_path
from xrg.train import distributed
from xrg.train.loop import EpochLoop, partial_path
from xrg.train.vcn import TargetedVCNTrainConfig, ensure_vcns, training_data_key


def evaluator_vcn_config(config: EvaluatorConfig) -> TargetedVCNTrainConfig:
    """The run config of the evaluation VCN of ``config``: trained on until its held-out AUROC reaches the target."""
    return TargetedVCNTrainConfig(
        image_size=config.image_size, num_epochs=config.vcn_epochs, batch_size=config.vcn_batch_size, lr=config.vcn_lr,
        seed=config.seed, target_auroc=config.vcn_target_auroc, max_epochs=config.vcn_max_epochs,
    )  # fmt: skip


def train_classifier(
    cohort_dir: str | os.PathLike,
    config: ClassifierTrainConfig,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[FindingClassifier, dict[str, Any], Path]:
    """Train the DenseNet-121 on both views of the cohort's train part; test it on its test part.

    Stopped by SIGINT/SIGTERM it saves ``OUT/classifier.partial.pt`` and raises
    :class:`~xrg.errors.TrainingStopped`; called again it resumes from that file.
    """
    device = torch.device(device)
    out_dir = Path(out_dir)
    train_set = XRayPairDataset(cohort_dir, "train", image_size=config.image_size)
    test_set = XRayPairDataset(cohort_dir, "test", image_size=config.image_size, vocab=train_set.vocab)
    labels = torch.stack([train_set[i]["labels"] for i in range(len(train_set))])
    w_positive, w_negative = (w.to(device) for w in class_weights(labels))
    torch.manual_seed(config.seed)
    model = FindingClassifier(FindingClassifierConfig()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    path = out_dir / CLASSIFIER_NAME
    on_device = "" if device.type == "cpu" else f", device={str(device)!r}"
    loop = EpochLoop(
        kind="classifier", label=f"evaluation classifier {config.image_size}px", final_path=path, config=config,
        vocabulary=train_set.vocab, model=model, optimizer=optimizer, num_items=len(train_set),
        batch_size=config.batch_size, num_epochs=config.num_epochs, seed=config.seed, device=device,
        metrics_path=out_dir / METRICS_NAME, metric_match={}, data_key=training_data_key(train_set), progress=progress,
        resume=f"xrg.train.evaluators.train_classifier({str(cohort_dir)!r}, {config!r}, {str(out_dir)!r}{on_device}) "
        "(or ensure_evaluators(), or the command that trained it)",
    )  # fmt: skip

    def step(indices: list[int], shuffle: torch.Generator) -> tuple[float, dict[str, float]]:
        items = [train_set[i] for i in indices]
        x = torch.cat([torch.stack([item[view] for item in items]) for view in VIEWS]).to(device)
        y = torch.stack([item["labels"] for item in items]).repeat(2, 1).to(device)
        loss = weighted_bce(model(x), y, w_positive, w_negative)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the evaluation classifier's loss became {float(loss)} at step {loop.step + 1} (epoch {loop.epoch}); "
                "lower evaluators.classifier_lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        return value, {"loss_sum": value * len(indices), "images": len(x)}

    def epoch_row(epoch: int, step: int, totals: dict[str, float]) -> dict[str, Any]:
        seconds = totals.get("seconds", 0.0)
        return {"kind": "classifier", "epoch": epoch, "step": step,
                "loss": totals.get("loss_sum", 0.0) / max(len(train_set), 1), "seconds": seconds,
                "images_per_s": totals.get("images", 0) / seconds if seconds > 0 else None}  # fmt: skip

    model.train()
    steps = loop.run(step, epoch_row)
    model.eval().requires_grad_(False)
    metrics = {"test_auroc": classifier_auroc(model, test_set), "num_train": len(train_set), "num_test": len(test_set)}
    loop.complete(
        {"kind": "classifier_test", **metrics},
        lambda: model.save(path, run_config=config, vocabulary=train_set.vocab, metrics=metrics, step=steps,
                           progress={"epoch": config.num_epochs, "batch": 0, "step": steps, "finished": True}),
    )  # fmt: skip
    return model, metrics, path


def ensure_evaluators(
    config: EvaluatorConfig,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Evaluators:
    """The evaluators of ``data_dir`` in ``out_dir``: loaded, or rendered and trained (module docstring)."""
    out_dir = Path(out_dir)
    # Under torchrun rank 0 renders the cohort while the others wait, then they find it complete.
    if distributed.is_main():
        ensure_cohort(data_dir, config, out_dir / COHORT_DIR, progress)
    distributed.barrier()
    cohort_dir = ensure_cohort(data_dir, config, out_dir / COHORT_DIR, progress)
    classifier_config = config.classifier_config()
    classifier_path = out_dir / CLASSIFIER_NAME
    if classifier_path.is_file():
        classifier, classifier_metrics = load_classifier(classifier_path, classifier_config, device)
        partial_path(classifier_path).unlink(missing_ok=True)  # left by a process killed after the final save
    else:
        classifier, classifier_metrics, _ = train_classifier(cohort_dir, classifier_config, out_dir, device, progress)
    vocabulary = Vocabulary.load(cohort_dir / VOCAB_NAME)
    vcn = ensure_vcns(out_dir, cohort_dir, [evaluator_vcn_config(config)], vocabulary, device, progress)[
        config.image_size
    ]
    cohort = read_json_mapping(cohort_dir / COHORT_NAME, "cohort record", f"delete {cohort_dir} to render it again")
    metrics = {"classifier": classifier_metrics, "vcn": vcn.metrics, "cohort": cohort, "config": asdict(config)}
    return Evaluators(
        classifier=classifier, vcn=vcn.model, classifier_path=classifier_path, vcn_path=vcn_path(out_dir, config.image_size),
        image_size=config.image_size, metrics=metrics, cohort_dir=cohort_dir,
    )  # fmt: skip
