"""The view-consistency network (VCN) of XRayGAN §2.3.

A siamese ResNet-18 (one-channel first convolution, no pretrained weights) embeds the
frontal and the lateral image; as in the official code the 128-d embedding is L2-normalised
and scaled by 10. The probability that both views come from the same patient is
``σ(Σ_j w_j |f_j(frontal) − f_j(lateral)| + b)``. The VCN is trained offline and frozen while
XRayGAN trains (§2.4): :func:`freeze` stops its parameter gradients and keeps it in eval
mode, while gradients still flow through it to the generated images. Inputs are in the model
range [-1, 1] (:func:`xrg.models.xraygan.to_model_range`), at any size from 32² up.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18


class ViewConsistencyNet(nn.Module):
    """Siamese ResNet-18 scoring whether a frontal and a lateral image show the same patient."""

    def __init__(self, embed_dim: int = 128, scale: float = 10.0) -> None:
        super().__init__()
        backbone = resnet18(weights=None)
        backbone.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        backbone.fc = nn.Linear(backbone.fc.in_features, embed_dim)
        self.backbone = backbone
        self.scale = scale
        self.head = nn.Linear(embed_dim, 1)
        self.frozen = False

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 1, H, W]`` → L2-normalised embedding times ``scale``, ``[B, embed_dim]``."""
        return self.scale * F.normalize(self.backbone(image), dim=1)

    def forward(self, frontal: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        """Same-patient logits ``[B]``."""
        return self.head((self.embed(frontal) - self.embed(lateral)).abs()).squeeze(-1)

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
