"""MoCo with a findings clustering loss: the representation learning module (the whitepaper's §3.2–3.3).

Momentum contrast (He et al. 2020; the v2 projection head of Chen et al. 2020): a query
encoder trained by InfoNCE, a key encoder that is its exponential moving average (momentum
``m``), and a FIFO queue of the last ``queue_size`` keys as negatives. Both views of a pair
are drawn by :func:`augment`, augmentations suited to radiographs: a random crop and rescale,
a small rotation, brightness/contrast jitter and Gaussian noise — never a horizontal flip,
since laterality (the heart on the left, a right effusion) is clinical information.

The auxiliary clustering loss (§3.3) groups the embeddings by ``K`` categories taken from the
findings (:data:`CLUSTER_CATEGORIES`: normal, pleural effusion, pneumonia-like opacity,
cardiomegaly, other): each query is pulled towards its category's centroid, the mean of the
keys of that category in the queue and the batch (``1 − cos``, the squared distance on the
sphere / 2). The total is ``L = L_moco + λ·L_kmeans``.

:meth:`MoCo.embed` (the normalised query-encoder output) is what the DiffuseVAE fine-tuning
(§3.4) and the reconstructed representation score compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.data.findings import FINDING_KINDS
from xrg.errors import ConfigError
from xrg.models.base import CheckpointedModel

#: The clustering loss's categories, in order; a case with several of the named findings takes
#: the first in this order, one with findings but none of these is "other".
CLUSTER_CATEGORIES: tuple[str, ...] = ("normal", "pleural_effusion", "opacity", "cardiomegaly", "other")
BACKBONES: tuple[str, ...] = ("small", "resnet18")


def finding_category(labels: torch.Tensor) -> torch.Tensor:
    """The :data:`CLUSTER_CATEGORIES` index of each multi-hot label row ``[B, len(FINDING_KINDS)]``."""
    labels = labels > 0.5
    category = torch.full((labels.shape[0],), CLUSTER_CATEGORIES.index("other"), dtype=torch.long)
    for index in reversed(range(1, len(CLUSTER_CATEGORIES) - 1)):
        category[labels[:, FINDING_KINDS.index(CLUSTER_CATEGORIES[index])].cpu()] = index
    category[~labels.any(dim=1).cpu()] = 0
    return category.to(labels.device)


@dataclass
class MoCoConfig:
    """The encoders, the queue and the temperature (MoCo v2's defaults where they fit the data size)."""

    image_size: int = 64
    view: str = "frontal"
    backbone: str = "small"  # "resnet18": torchvision's, one input channel
    width: int = 32  # channels of the small backbone's first block
    feature_dim: int = 128
    queue_size: int = 1024
    momentum: float = 0.99
    temperature: float = 0.2

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.image_size < 16 or self.width < 1 or self.feature_dim < 2 or self.queue_size < 1:
            raise ConfigError(
                f"need image_size >= 16, width >= 1, feature_dim >= 2 and queue_size >= 1, got {self.image_size}, "
                f"{self.width}, {self.feature_dim}, {self.queue_size}"
            )
        if not 0 <= self.momentum < 1 or self.temperature <= 0:
            raise ConfigError(f"need momentum in [0, 1) and temperature > 0, got {self.momentum}, {self.temperature}")

    @classmethod
    def from_run_config(cls, config: Any, vocab_size: int) -> MoCoConfig:
        return config.moco


def build_backbone(config: MoCoConfig) -> tuple[nn.Module, int]:
    """A feature extractor of ``[B, 1, S, S]`` images and its output size."""
    if config.backbone == "resnet18":
        from torchvision.models import resnet18

        network = resnet18(weights=None)
        network.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        features = network.fc.in_features
        network.fc = nn.Identity()
        return network, features
    width, layers, channels = config.width, [], 1
    for i in range(4):
        out = width * 2**i
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), channels


class Encoder(nn.Module):
    """Backbone, then the MoCo v2 MLP head to ``feature_dim``."""

    def __init__(self, config: MoCoConfig) -> None:
        super().__init__()
        self.backbone, features = build_backbone(config)
        self.head = nn.Sequential(
            nn.Linear(features, features), nn.ReLU(inplace=True), nn.Linear(features, config.feature_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def augment(x: torch.Tensor) -> torch.Tensor:
    """A random radiograph augmentation of each image of ``[B, 1, S, S]`` in [-1, 1] (global torch RNG).

    Crop to 70–100 % of the side at a random offset, rotate by up to ±10°, scale the contrast
    by 0.75–1.25 and shift the brightness by ±0.15, add Gaussian noise of σ up to 0.05. No flip.
    """
    count = x.shape[0]
    scale = torch.empty(count).uniform_(0.7, 1.0)
    angle = torch.empty(count).uniform_(-10.0, 10.0) * math.pi / 180
    shift = (torch.rand(count, 2) * 2 - 1) * (1 - scale).unsqueeze(1)
    cos, sin = angle.cos() * scale, angle.sin() * scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = torch.empty(count, 1, 1, 1).uniform_(0.75, 1.25).to(x)
    brightness = torch.empty(count, 1, 1, 1).uniform_(-0.15, 0.15).to(x)
    sigma = torch.empty(count, 1, 1, 1).uniform_(0.0, 0.05).to(x)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * contrast + mean + brightness
    out = out + sigma * torch.randn(out.shape).to(x)
    return out.clamp(-1.0, 1.0)


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of normalised queries ``q`` against their keys ``k`` (positives) and ``queue`` ``[D, K]`` (negatives)."""
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def cluster_loss(
    q: torch.Tensor,
    categories: torch.Tensor,
    keys: torch.Tensor | None = None,
    key_categories: torch.Tensor | None = None,
) -> torch.Tensor:
    """``mean(1 − cos(q_i, μ_{category(i)}))``: each normalised query against its category's centroid.

    The centroids are the normalised means of ``keys`` ``[N, D]`` of each category
    (``key_categories``), detached; without keys, of the queries themselves (detached). A
    query whose category has no key is left out; none left gives 0.
    """
    if keys is None:
        keys, key_categories = q.detach(), categories
    keys = keys.detach()
    total, count = q.new_zeros(()), 0
    for category in categories.unique():
        members = categories == category
        pool = keys[key_categories == category]
        if pool.shape[0] == 0:
            continue
        centroid = F.normalize(pool.mean(dim=0), dim=0)
        total = total + (1 - q[members] @ centroid).sum()
        count += int(members.sum())
    return total / max(count, 1)


class MoCo(CheckpointedModel):
    """The query encoder, its momentum copy and the queue of keys with their categories."""

    kind = "moco"
    config_class = MoCoConfig
    unfinished_hint = "resume its training (xrg train diffusevae --stage moco ... --resume)"

    def __init__(self, config: MoCoConfig) -> None:
        super().__init__()
        self.config = config
        self.query_encoder = Encoder(config)
        self.key_encoder = Encoder(config)
        self.key_encoder.load_state_dict(self.query_encoder.state_dict())
        self.key_encoder.requires_grad_(False)
        self.register_buffer("queue", F.normalize(torch.randn(config.feature_dim, config.queue_size), dim=0))
        self.register_buffer("queue_categories", torch.full((config.queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised query-encoder embeddings ``[B, feature_dim]`` of images ``[B, 1, S, S]`` in [-1, 1]."""
        if x.shape[-1] != self.config.image_size:
            x = F.interpolate(x, size=(self.config.image_size,) * 2, mode="area")
        return F.normalize(self.query_encoder(x), dim=1)

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key ← m·key + (1 − m)·query, for every parameter; BatchNorm statistics are copied."""
        m = self.config.momentum
        for key, query in zip(self.key_encoder.parameters(), self.query_encoder.parameters(), strict=True):
            key.mul_(m).add_(query.detach(), alpha=1 - m)
        for key, query in zip(self.key_encoder.buffers(), self.query_encoder.buffers(), strict=True):
            key.copy_(query)

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_encoder(x), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, categories: torch.Tensor) -> None:
        """Put ``keys`` ``[B, D]`` into the queue in place of the oldest (FIFO, wrapping around)."""
        size = self.config.queue_size
        keys, categories = keys[-size:], categories[-size:]
        slots = (self.queue_pointer + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[:, slots] = keys.T.to(self.queue.dtype)
        self.queue_categories[slots] = categories.to(self.queue_categories.device)
        self.queue_pointer.copy_((self.queue_pointer + keys.shape[0]) % size)

    def losses(self, images: torch.Tensor, labels: torch.Tensor, cluster_weight: float) -> dict[str, torch.Tensor]:
        """``{"moco_loss", "cluster_loss", "loss"}`` of one batch (two augmented views of each image);
        updates nothing (call :meth:`momentum_update` and :meth:`enqueue` after the optimizer step)."""
        categories = finding_category(labels)
        q = F.normalize(self.query_encoder(augment(images)), dim=1)
        k = self.keys(augment(images))
        moco = info_nce(q, k, self.queue.detach().clone(), self.config.temperature)
        filled = self.queue_categories >= 0
        pool = torch.cat([self.queue.T[filled], k])
        pool_categories = torch.cat([self.queue_categories[filled], categories])
        cluster = cluster_loss(q, categories, pool, pool_categories) if cluster_weight > 0 else q.new_zeros(())
        return {"moco_loss": moco, "cluster_loss": cluster, "loss": moco + cluster_weight * cluster, "keys": k,
                "categories": categories}  # fmt: skip


def representation_distance(model: MoCo, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 − cos`` of the MoCo embeddings of image pairs ``a[i]``, ``b[i]`` (the reconstructed representation score)."""
    return 1 - (model.embed(a) * model.embed(b)).sum(dim=1)
