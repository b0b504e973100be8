"""PGGAN: the unconditional progressive growing GAN of Karras et al. (2018), the dissertation's §2.2.2 / §3.2.

A generator that starts at 4² and doubles its resolution stage by stage up to the profile's
final size, and a critic that grows with it. What makes it PGGAN rather than any GAN:

* **fade-in**: when stage ``s`` is added, the generator's image is
  ``lerp(upsample(toRGB_{s-1}(h_{s-1})), toRGB_s(h_s), α)`` and the critic's input features
  ``lerp(fromRGB_{s-1}(downsample(x)), block_s(fromRGB_s(x)), α)``, α ramping from 0 to 1
  (the trainer ramps it over the first half of each stage, :mod:`xrg.train.pggan`);
* **equalised learning rate**: every weight is drawn from N(0, 1) and multiplied at run time
  by He's constant ``gain / sqrt(fan_in)`` (Eq. 2.9), so Adam's step has the same scale in every layer;
* **pixel normalisation** (Eq. 2.8) of the latent and after every convolution of the generator;
* **minibatch standard deviation**: the critic's last block sees, as one extra feature map,
  the standard deviation of its features over groups of ``mbstd_group`` images;
* an **exponential moving average** of the generator's weights (``generator_ema``), which every
  sample, metric and widget uses (:meth:`PGGAN.generate`).

Channels follow the official network: ``min(max_channels, channel_base // resolution)``
feature maps at each resolution (512 up to 32² with the defaults, then halving). Images are
one-channel, in the models' [-1, 1]; the generator's last layer is linear, as in the paper,
and :meth:`PGGAN.generate` clamps. The critic's penultimate features (:meth:`Critic.features`)
are the backbone of the dissertation's §3.4 critic-based classifier.

The model owns its config (:class:`PGGANModelConfig`) and checkpoint
(:class:`~xrg.models.base.CheckpointedModel`); its training is :mod:`xrg.train.pggan`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.errors import ConfigError
from xrg.models.base import CheckpointedModel, moving_average_step

#: The slope of every leaky ReLU (the paper's).
LEAKY_SLOPE = 0.2
#: The first resolution of every PGGAN.
BASE_SIZE = 4


@dataclass
class PGGANModelConfig:
    """What decides PGGAN's architecture. The defaults are the official network's (512-d latent,
    ``channel_base`` 16384 and at most 512 channels; the dissertation grew it to 1024²)."""

    final_size: int = 256
    latent_dim: int = 512
    channel_base: int = 16384
    max_channels: int = 512
    mbstd_group: int = 4  # images per minibatch-standard-deviation group

    def __post_init__(self) -> None:
        size = self.final_size
        if size < BASE_SIZE * 2 or size & (size - 1):
            raise ConfigError(f"final_size must be a power of two of at least {BASE_SIZE * 2}, got {size}")
        for name in ("latent_dim", "channel_base", "max_channels", "mbstd_group"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.channels(size) < 1:
            raise ConfigError(
                f"channel_base {self.channel_base} leaves no channels at {size}² (it needs to be at least {size})"
            )

    @classmethod
    def from_run_config(cls, config: Any) -> PGGANModelConfig:
        """The architecture of a run config (``PGGANTrainConfig``): its ``model``."""
        return config.model

    @property
    def num_stages(self) -> int:
        """Stages 4², 8², …, ``final_size``²."""
        return int(math.log2(self.final_size // BASE_SIZE)) + 1

    def stage_size(self, stage: int) -> int:
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in 0..{self.num_stages - 1}, got {stage}")
        return BASE_SIZE * 2**stage

    def stage_of(self, size: int) -> int:
        """The stage that draws ``size``² images."""
        sizes = [self.stage_size(s) for s in range(self.num_stages)]
        if size not in sizes:
            raise ValueError(f"this PGGAN draws {sizes}, not {size}")
        return sizes.index(size)

    def channels(self, size: int) -> int:
        """Feature maps at resolution ``size``."""
        return min(self.max_channels, self.channel_base // size)


# --------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------


class EqualizedConv2d(nn.Module):
    """A convolution whose N(0, 1) weights are scaled at run time by ``gain / sqrt(fan_in)`` (Eq. 2.9)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.scale = gain / math.sqrt(in_channels * kernel_size * kernel_size)
        self.padding = kernel_size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    """A linear layer with the equalised learning rate of :class:`EqualizedConv2d`."""

    def __init__(self, in_features: int, out_features: int, gain: float = math.sqrt(2)) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each position's feature vector divided by its root mean square over the channels (Eq. 2.8)."""
    return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x`` with one more channel: the standard deviation of its features over groups of images.

    Images are grouped as the official code does (image ``i`` in group ``i mod (N / G)``) with
    ``G`` the largest divisor of the batch size up to ``group_size``; the deviation of every
    feature over the group, averaged over features and positions, becomes a constant map.
    A batch of one image gets a zero map.
    """
    n, c, h, w = x.shape
    group = max(g for g in range(1, min(group_size, n) + 1) if n % g == 0)
    y = x.reshape(group, -1, c, h, w)
    std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt() if group > 1 else torch.zeros_like(y[0])
    stat = std.mean(dim=(1, 2, 3))  # [N / G]
    stat = stat.repeat(group).reshape(n, 1, 1, 1).expand(n, 1, h, w)
    return torch.cat([x, stat], dim=1)


def leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, LEAKY_SLOPE)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour doubling (the paper's)."""
    return F.interpolate(x, scale_factor=2, mode="nearest")


def downsample(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Area averaging by ``factor`` (the paper's 2 × 2 average pooling)."""
    return F.avg_pool2d(x, factor) if factor > 1 else x


# --------------------------------------------------------------------------------------
# Generator and critic
# --------------------------------------------------------------------------------------


class Generator(nn.Module):
    """z ``[B, latent_dim]`` → image ``[B, 1, s, s]`` of stage ``stage`` (fade-in weight ``alpha``)."""

    def __init__(self, config: PGGANModelConfig) -> None:
        super().__init__()
        self.config = config
        first = config.channels(BASE_SIZE)
        # The 4² block: a dense layer to a 4 × 4 map (gain √2 / 4, the official), then a 3 × 3 convolution.
        self.dense = EqualizedLinear(config.latent_dim, first * BASE_SIZE * BASE_SIZE, gain=math.sqrt(2) / 4)
        self.first_conv = EqualizedConv2d(first, first, 3)
        self.blocks = nn.ModuleList()  # block s (s ≥ 1): upsample, conv 3 × 3, conv 3 × 3
        self.to_rgb = nn.ModuleList([EqualizedConv2d(first, 1, 1, gain=1.0)])
        for stage in range(1, config.num_stages):
            size = config.stage_size(stage)
            c_in, c_out = config.channels(size // 2), config.channels(size)
            self.blocks.append(nn.ModuleList([EqualizedConv2d(c_in, c_out, 3), EqualizedConv2d(c_out, c_out, 3)]))
            self.to_rgb.append(EqualizedConv2d(c_out, 1, 1, gain=1.0))

    def forward(self, z: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        stage = self.config.num_stages - 1 if stage is None else stage
        if z.ndim != 2 or z.shape[1] != self.config.latent_dim:
            raise ValueError(f"z must be [B, {self.config.latent_dim}], got {tuple(z.shape)}")
        if not 0 <= stage < self.config.num_stages:
            raise ValueError(f"stage must be in 0..{self.config.num_stages - 1}, got {stage}")
        first = self.config.channels(BASE_SIZE)
        x = pixel_norm(leaky(self.dense(pixel_norm(z))).reshape(-1, first, BASE_SIZE, BASE_SIZE))
        x = pixel_norm(leaky(self.first_conv(x)))
        previous = x
        for block in self.blocks[:stage]:
            previous = x
            x = upsample(x)
            for conv in block:
                x = pixel_norm(leaky(conv(x)))
        image = self.to_rgb[stage](x)
        if stage > 0 and alpha < 1.0:
            image = torch.lerp(upsample(self.to_rgb[stage - 1](previous)), image, alpha)
        return image


class Critic(nn.Module):
    """Image ``[B, 1, s, s]`` of stage ``stage`` → score ``[B]`` (WGAN critic, fade-in weight ``alpha``)."""

    def __init__(self, config: PGGANModelConfig) -> None:
        super().__init__()
        self.config = config
        first = config.channels(BASE_SIZE)
        self.from_rgb = nn.ModuleList([EqualizedConv2d(1, first, 1)])
        self.blocks = nn.ModuleList([nn.Identity()])  # block s (s ≥ 1): conv 3 × 3, conv 3 × 3, 2 × 2 average pool
        for stage in range(1, config.num_stages):
            size = config.stage_size(stage)
            c_in, c_out = config.channels(size), config.channels(size // 2)
            self.from_rgb.append(EqualizedConv2d(1, c_in, 1))
            self.blocks.append(nn.ModuleList([EqualizedConv2d(c_in, c_in, 3), EqualizedConv2d(c_in, c_out, 3)]))
        self.final_conv = EqualizedConv2d(first + 1, first, 3)
        self.final_dense = EqualizedLinear(first * BASE_SIZE * BASE_SIZE, first)
        self.score = EqualizedLinear(first, 1, gain=1.0)
        self.num_features = first

    def _block(self, stage: int, x: torch.Tensor) -> torch.Tensor:
        for conv in self.blocks[stage]:
            x = leaky(conv(x))
        return downsample(x)

    def features(self, image: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """The penultimate features ``[B, channels(4)]`` (after the minibatch-stddev block)."""
        stage = self.config.num_stages - 1 if stage is None else stage
        expected = self.config.stage_size(stage)
        if image.ndim != 4 or image.shape[1] != 1 or image.shape[-2:] != (expected, expected):
            raise ValueError(
                f"stage {stage} critic takes [B, 1, {expected}, {expected}] images, got {tuple(image.shape)}"
            )
        x = leaky(self.from_rgb[stage](image))
        if stage > 0:
            x = self._block(stage, x)
            if alpha < 1.0:
                x = torch.lerp(leaky(self.from_rgb[stage - 1](downsample(image))), x, alpha)
        for lower in range(stage - 1, 0, -1):
            x = self._block(lower, x)
        x = leaky(self.final_conv(minibatch_stddev(x, self.config.mbstd_group)))
        return leaky(self.final_dense(x.flatten(1)))

    def forward(self, image: torch.Tensor, stage: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        return self.score(self.features(image, stage, alpha)).squeeze(1)


# --------------------------------------------------------------------------------------
# The runnable model
# --------------------------------------------------------------------------------------


def truncated_normal(
    shape: tuple[int, ...], threshold: float | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """N(0, 1) samples with every value beyond ``±threshold`` redrawn (the truncation of Brock et al.,
    the dissertation's 0.7); ``None`` draws the plain prior."""
    z = torch.randn(shape, generator=generator)
    if threshold is None:
        return z
    if threshold <= 0:
        raise ValueError(f"the truncation threshold must be positive, got {threshold}")
    outside = z.abs() > threshold
    while outside.any():
        z[outside] = torch.randn(int(outside.sum()), generator=generator)
        outside = z.abs() > threshold
    return z


class PGGAN(CheckpointedModel):
    """The generator, its moving average and (when built for training) the critic.

    ``images_seen`` counts the real images the training has shown (it sets the moving
    average's ramp-up, :meth:`update_ema`) and travels in the checkpoint.
    """

    kind = "pggan"
    config_class = PGGANModelConfig
    unfinished_hint = "resume it with xrg train pggan ... --resume to finish it"

    def __init__(self, config: PGGANModelConfig | None = None, with_critic: bool = True) -> None:
        super().__init__()
        config = config or PGGANModelConfig()
        self.config = config
        self.generator = Generator(config)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)
        if with_critic:
            self.critic = Critic(config)
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.float64))

    @classmethod
    def build_for_loading(cls, config: PGGANModelConfig) -> PGGAN:
        return cls(config, with_critic=False)

    def checkpoint_state(self) -> dict[str, Any]:
        state = {
            "generator": self.generator.state_dict(),
            "generator_ema": self.generator_ema.state_dict(),
            "images_seen": self.images_seen.clone(),
        }
        if hasattr(self, "critic"):
            state["critic"] = self.critic.state_dict()
        return state

    def load_checkpoint_state(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.generator_ema.load_state_dict(state["generator_ema"])
        self.images_seen.copy_(state["images_seen"])
        if hasattr(self, "critic"):
            self.critic.load_state_dict(state["critic"])

    def for_inference(self) -> PGGAN:
        return self.eval().requires_grad_(False)

    @torch.no_grad()
    def update_ema(self, batch_images: int, half_life_images: float, rampup: float | None) -> float:
        """Move ``generator_ema`` towards ``generator`` after a step that showed ``batch_images`` images.

        The weight of the old average is ``0.5 ** (batch_images / half_life)`` (stylegan2-ada's
        ``ema_kimg``), with the half-life ramped up as ``min(half_life, rampup · images_seen)``
        so that a short run's average is not its initialisation. Returns the weight used.
        """
        self.images_seen += batch_images
        return moving_average_step(self.generator_ema, self.generator, batch_images, float(self.images_seen),
                                   half_life_images, rampup)  # fmt: skip

    def generate(
        self, z: torch.Tensor, stage: int | None = None, alpha: float = 1.0, *, use_ema: bool = True
    ) -> torch.Tensor:
        """Images ``[B, 1, s, s]`` in [-1, 1] from latents ``z`` with the moving average (or the raw generator)."""
        network = self.generator_ema if use_ema else self.generator
        return network(z, stage, alpha).clamp(-1.0, 1.0)

    def sample_latents(self, count: int, seed: int, truncation: float | None = None) -> torch.Tensor:
        """``count`` latents of the seeded prior (truncated at ``truncation``), on the model's device."""
        z = truncated_normal((count, self.config.latent_dim), truncation, torch.Generator().manual_seed(seed))
        return z.to(self.images_seen.device)


# --------------------------------------------------------------------------------------
# The critic as a pathology classifier (the dissertation's §3.4)
# --------------------------------------------------------------------------------------


@dataclass
class CriticClassifierConfig:
    """The architecture of a critic-backbone classifier: the PGGAN critic of ``pggan`` and one logit per class."""

    pggan: PGGANModelConfig = field(default_factory=PGGANModelConfig)
    num_classes: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.pggan, PGGANModelConfig):
            raise ConfigError(f"pggan must be a PGGANModelConfig, got {self.pggan!r}")
        if self.num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {self.num_classes}")


class CriticClassifier(CheckpointedModel):
    """The trained PGGAN critic with its scoring layer replaced by a linear layer of ``num_classes``
    logits, trained end to end (§3.4). Takes images ``[B, 1, s, s]`` in [0, 1] at the PGGAN's final size."""

    kind = "critic_classifier"
    config_class = CriticClassifierConfig
    unfinished_hint = "train it again with the same settings (xrg train pathology ... --backbone critic) to finish it"

    def __init__(self, config: CriticClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.critic = Critic(config.pggan)
        self.head = nn.Linear(self.critic.num_features, config.num_classes)
        del self.critic.score  # the real/fake score is replaced by the head

    @classmethod
    def from_critic(cls, critic: Critic, num_classes: int) -> CriticClassifier:
        """A classifier whose backbone starts as a copy of ``critic``'s weights."""
        model = cls(CriticClassifierConfig(pggan=critic.config, num_classes=num_classes))
        state = {k: v for k, v in critic.state_dict().items() if not k.startswith("score.")}
        model.critic.load_state_dict(state)
        return model

    def for_inference(self) -> CriticClassifier:
        return self.eval().requires_grad_(False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.critic.features(images * 2.0 - 1.0))
