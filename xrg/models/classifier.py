"""The finding classifier: a DenseNet-121 over one-channel chest X-rays, and its class-weighted loss.

The torchvision DenseNet-121 architecture (random initialisation: no pretrained weights can
be downloaded here) with a one-channel first convolution and one logit per finding kind of
:data:`xrg.data.findings.FINDING_KINDS`. As in the dissertation (§3.3) it is trained
multi-label with the class-weighted binary cross-entropy of its Eq. (3.1),

    L = −Σ_c [w_p,c · y_c · log ŷ_c + w_n,c · (1 − y_c) · log(1 − ŷ_c)],
    w_p,c = (N_p,c + N_n,c) / N_p,c,   w_n,c = (N_p,c + N_n,c) / N_n,c,

with the counts taken over the whole training set, so every finding, rare or common, weighs
the same. Its globally pooled 1024-d features are the feature space of FID and KID, and its
logits the class distribution of IS — the official XRayGAN also scored IS/FID with a
DenseNet-121 chest X-ray classifier rather than Inception. It owns its config
(:class:`FindingClassifierConfig`) and checkpoint (:class:`~xrg.models.base.CheckpointedModel`);
its predictions and per-finding AUROC are in :mod:`xrg.eval.classifier`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.data.findings import FINDING_KINDS
from xrg.errors import ConfigError
from xrg.models.base import CheckpointedModel

#: Images in [0, 1] are standardised with these before the network (a typical radiograph's).
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


@dataclass
class FindingClassifierConfig:
    """What decides the classifier's architecture: one logit per finding kind."""

    num_classes: int = len(FINDING_KINDS)

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {self.num_classes}")

    @classmethod
    def from_run_config(cls, config: Any = None) -> FindingClassifierConfig:
        """The classifier of every run config (``ClassifierTrainConfig`` has no architecture fields)."""
        return cls()


class FindingClassifier(CheckpointedModel):
    """DenseNet-121 with a one-channel stem; ``features`` → 1024-d pooled, ``classify`` → logits.

    Loaded with :meth:`from_checkpoint` it comes frozen in eval mode; a stopped training's
    resumable state is refused.
    """

    kind = "classifier"
    config_class = FindingClassifierConfig
    unfinished_hint = "call ensure_evaluators() (or train_classifier()) with its settings again to finish it"

    def __init__(self, config: FindingClassifierConfig | None = None) -> None:
        super().__init__()
        config = config or FindingClassifierConfig()
        self.config = config
        from torchvision.models import densenet121  # here: importing torchvision costs seconds at start-up

        network = densenet121(weights=None, num_classes=config.num_classes)
        network.features.conv0 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.network = network
        self.num_features = network.classifier.in_features

    def for_inference(self) -> FindingClassifier:
        return self.eval().requires_grad_(False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` in [0, 1] → pooled features ``[B, 1024]``."""
        x = (images - PIXEL_MEAN) / PIXEL_STD
        return F.adaptive_avg_pool2d(F.relu(self.network.features(x)), 1).flatten(1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.network.classifier(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Finding logits ``[B, num_classes]``."""
        return self.classify(self.features(images))


def class_weights(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_positive, w_negative)`` per class of Eq. (3.1) from multi-hot ``labels [N, C]``.

    A class with no positive (or no negative) example gets weight 0 for the missing side:
    there is nothing to weigh.
    """
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ConfigError(f"labels must be [N, C] with N > 0, got shape {tuple(labels.shape)}")
    total = float(labels.shape[0])
    positives = labels.float().sum(0)
    negatives = total - positives
    w_positive = torch.where(positives > 0, total / positives.clamp(min=1), torch.zeros_like(positives))
    w_negative = torch.where(negatives > 0, total / negatives.clamp(min=1), torch.zeros_like(negatives))
    return w_positive, w_negative


def weighted_bce(
    logits: torch.Tensor, labels: torch.Tensor, w_positive: torch.Tensor, w_negative: torch.Tensor
) -> torch.Tensor:
    """Eq. (3.1), averaged over samples and classes."""
    labels = labels.float()
    weight = labels * w_positive + (1 - labels) * w_negative
    return F.binary_cross_entropy_with_logits(logits, labels, weight=weight)
