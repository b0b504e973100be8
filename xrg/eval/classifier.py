"""Predictions and per-view, per-finding AUROC of the finding classifier (:mod:`xrg.models.classifier`)."""

from __future__ import annotations

from typing import Any

import torch

from xrg.data.datasets import XRayPairDataset, resize_image
from xrg.data.findings import FINDING_KINDS
from xrg.data.manifest import VIEWS
from xrg.models.classifier import FindingClassifier


@torch.no_grad()
def predict(classifier: FindingClassifier, images: torch.Tensor, size: int, batch_size: int = 64) -> torch.Tensor:
    """Finding probabilities of ``images [N, 1, H, W]`` in [0, 1], resized to ``size``."""
    device = next(classifier.parameters()).device
    was_training = classifier.training
    classifier.eval()
    parts = [
        torch.sigmoid(classifier(resize_image(images[start : start + batch_size], size).to(device))).cpu()
        for start in range(0, len(images), batch_size)
    ]
    classifier.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, len(FINDING_KINDS))


def classifier_auroc(
    classifier: FindingClassifier, dataset: XRayPairDataset, size: int | None = None
) -> dict[str, dict[str, Any]]:
    """Per-view, per-finding ROC AUC of ``classifier`` on ``dataset`` (None where a finding is absent or always present).

    ``size`` defaults to the dataset's image size.
    """
    from torchmetrics.functional.classification import binary_auroc

    size = size or int(dataset[0]["frontal"].shape[-1])
    labels = torch.stack([dataset[i]["labels"] for i in range(len(dataset))]).long()
    result: dict[str, dict[str, Any]] = {}
    for view in VIEWS:
        images = torch.stack([dataset[i][view] for i in range(len(dataset))])
        probs = predict(classifier, images, size)
        per_kind: dict[str, Any] = {}
        for k, kind in enumerate(FINDING_KINDS):
            positives = int(labels[:, k].sum())
            defined = 0 < positives < len(labels)
            per_kind[kind] = float(binary_auroc(probs[:, k], labels[:, k])) if defined else None
        defined_values = [v for v in per_kind.values() if v is not None]
        per_kind["macro"] = sum(defined_values) / len(defined_values) if defined_values else None
        result[view] = per_kind
    return result
