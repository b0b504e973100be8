"""The view-consistency network (VCN) of XRayGAN §2.3.

A siamese ResNet-18 (one-channel first convolution, no pretrained weights) embeds the
frontal and the lateral image; as in the official code the 128-d embedding is L2-normalised
and scaled by 10. The probability that both views come from the same patient is
``σ(Σ_j w_j |f_j(frontal) − f_j(lateral)| + b)``. The VCN is trained offline and frozen while
XRayGAN trains (§2.4): :func:`freeze` stops its parameter gradients and keeps it in eval
mode, while gradients still flow through it to the generated images. Inputs are in the model
range [-1, 1] (:func:`xrg.models.xraygan.to_model_range`), at any size from 32² up.

The score is written once, :meth:`ViewConsistencyNet.pair_logits` on two embeddings (and
:meth:`~ViewConsistencyNet.pair_probability`, its sigmoid); training, evaluation and the VC
metric all call it. A trained VCN is kept in ``RUN/vcn/vcn_<size>.pt`` (:func:`vcn_path`) and
loaded, frozen, with :meth:`~xrg.models.base.CheckpointedModel.from_checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.errors import ConfigError
from xrg.models.base import CheckpointedModel

VCN_DIR = "vcn"


def vcn_path(run_dir: str | os.PathLike, image_size: int) -> Path:
    """Where a run keeps its trained VCN of ``image_size``: ``RUN/vcn/vcn_<size>.pt``."""
    return Path(run_dir) / VCN_DIR / f"vcn_{image_size}.pt"


def negative_partners(patient_ids: Sequence[str], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For each case a partner case of a different patient: ``(rows, partners)`` index tensors.

    Partners follow a random order cyclically, so nobody is their own partner; rows whose
    partner shares their patient are left out.
    """
    order = torch.randperm(len(patient_ids), generator=generator)
    partners = torch.empty_like(order)
    partners[order] = order.roll(-1)
    rows = torch.tensor(
        [i for i in range(len(patient_ids)) if patient_ids[i] != patient_ids[int(partners[i])]], dtype=torch.long
    )
    return rows, partners[rows] if rows.numel() else rows


@dataclass
class VCNConfig:
    """What decides a VCN's architecture (the ``model`` of a ``VCNTrainConfig``)."""

    embed_dim: int = 128  # embedding size (official code: 128)
    scale: float = 10.0  # the L2-normalised embedding is multiplied by this (official code: 10)

    def __post_init__(self) -> None:
        if self.embed_dim < 1:
            raise ConfigError(f"vcn embed_dim must be at least 1, got {self.embed_dim}")

    @classmethod
    def from_run_config(cls, config: Any) -> VCNConfig:
        """The model of a VCN run config (``VCNTrainConfig.model``)."""
        return config.model


class ViewConsistencyNet(CheckpointedModel):
    """Siamese ResNet-18 scoring whether a frontal and a lateral image show the same patient.

    Loaded with :meth:`from_checkpoint` it comes frozen (:func:`freeze`); a stopped training's
    resumable state is refused.
    """

    kind = "vcn"
    config_class = VCNConfig
    unfinished_hint = "call train_vcn() (or ensure_vcns()) with its settings again to finish it"

    def __init__(self, config: VCNConfig | None = None) -> None:
        super().__init__()
        config = config or VCNConfig()
        self.config = config
        from torchvision.models import resnet18  # here: importing torchvision costs seconds at start-up

        backbone = resnet18(weights=None)
        backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        backbone.fc = nn.Linear(backbone.fc.in_features, config.embed_dim)
        self.backbone = backbone
        self.scale = config.scale
        self.head = nn.Linear(config.embed_dim, 1)
        self.frozen = False

    def for_inference(self) -> ViewConsistencyNet:
        return freeze(self)

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` → L2-normalised embedding times ``scale``, ``[B, embed_dim]``."""
        return self.scale * F.normalize(self.backbone(image), dim=1)

    def pair_logits(self, frontal_embedding: torch.Tensor, lateral_embedding: torch.Tensor) -> torch.Tensor:
        """Same-patient logits ``[B]`` of embeddings already computed: ``w · |e_f − e_l| + b``."""
        return self.head((frontal_embedding - lateral_embedding).abs()).squeeze(-1)

    def pair_probability(self, frontal_embedding: torch.Tensor, lateral_embedding: torch.Tensor) -> torch.Tensor:
        """Same-patient probabilities ``[B]`` of embeddings already computed: ``σ(w · |e_f − e_l| + b)``."""
        return torch.sigmoid(self.pair_logits(frontal_embedding, lateral_embedding))

    def forward(self, frontal: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        """Same-patient logits ``[B]``."""
        return self.pair_logits(self.embed(frontal), self.embed(lateral))

    def prob(self, frontal: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        """Same-patient probabilities ``[B]``."""
        return torch.sigmoid(self(frontal, lateral))

    def train(self, mode: bool = True) -> ViewConsistencyNet:
        """Switch train/eval mode; a frozen network stays in eval mode."""
        return super().train(mode and not self.frozen)


def freeze(model: ViewConsistencyNet) -> ViewConsistencyNet:
    """Stop ``model``'s parameter gradients and keep it in eval mode, even under a parent's ``train()``."""
    model.frozen = True
    model.requires_grad_(False)
    return model.eval()
