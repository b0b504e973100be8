"""The multi-scale conditional GAN (MSCGAN) of XRayGAN §2.2, its ablation and the WGAN-GP penalty.

Per view, a basic generator maps the report condition ``c`` to a ``base_size`` image
(32² in §3.2) and a cascade of progressive generators doubles the resolution at every stage
(32 → 64 → 128 → 256). Stage ``n`` outputs Eq. (1) of the paper,
``x(n) = α·G(n)(x(n-1), c) + (1-α)·U(x(n-1))`` with ``U`` bilinear up-sampling and α = 0.5.
Stages are numbered from 0 (the basic generator) in code.

Images inside the models are in the *model range* [-1, 1] (every generator ends in tanh, and
Eq. (1) is a convex blend, so every stage stays in range); the datasets deliver [0, 1].
Convert with :func:`to_model_range` and :func:`to_image_range`.

The condition enters a progressive generator and a discriminator the same way: a linear
projection of ``c`` is broadcast over the feature map and concatenated to it, and the
convolution that reads the concatenation has no normalisation. (The official code passed its
broadcast text map through an InstanceNorm, which zeroes a spatially constant map and left its
discriminators unconditional.) Discriminators are patch critics without BatchNorm, as WGAN-GP
needs per-sample gradients; their image features use affine InstanceNorm. The basic generator
takes optional noise (the official code has none, ``noise_dim=0``).

:class:`SingleShotGenerator` is the "w/o MSCGAN" ablation of Table 2: ``c`` straight to the
final resolution with about the parameter count of one view's cascade.

:class:`XRayGAN` is the runnable model of a run: the report encoder, the generators of both
views and (for training) the per-stage critics, built from one :class:`XRayGANModelConfig`
(every ablation of Table 2 is a value of it) and saved and loaded with
:meth:`~xrg.models.base.CheckpointedModel.save` and
:meth:`~xrg.models.base.CheckpointedModel.from_checkpoint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.data.manifest import VIEWS
from xrg.data.reports import MAX_SENTENCES, MAX_WORDS
from xrg.errors import ConfigError
from xrg.models.base import ConditionalGANModel
from xrg.models.encoder import ENCODER_KINDS, ReportEncoding, ReportModelConfig, build_encoder

GENERATOR_KINDS: tuple[str, ...] = ("multi_scale", "single_shot")


def to_model_range(image: torch.Tensor) -> torch.Tensor:
    """Map dataset images in [0, 1] to the models' [-1, 1]."""
    return image * 2.0 - 1.0


def to_image_range(image: torch.Tensor) -> torch.Tensor:
    """Map model outputs in [-1, 1] back to images in [0, 1]."""
    return (image + 1.0) / 2.0


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass
class XRayGANConfig:
    """MSCGAN settings; the defaults are the paper's (§3.2) and the official code's."""

    cond_dim: int = 512  # size of c (EncoderConfig.cond_dim)
    base_size: int = 32  # resolution of the basic generator
    num_stages: int = 4  # basic + progressive stages: 32 → 64 → 128 → 256
    alpha: float = 0.5  # blend of Eq. (1)
    noise_dim: int = 0  # noise concatenated to c by the basic generator (official: none)
    gen_channels: int = 64  # generator width at each stage's output resolution
    disc_channels: int = 64  # discriminator width at its input resolution
    cond_channels: int = 64  # channels of the broadcast projection of c
    max_channels: int = 512  # cap on any layer's width
    disc_max_downsamplings: int = 4  # deepest patch critic; sets the largest patch size
    views: tuple[str, ...] = VIEWS

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        if not _is_power_of_two(self.base_size) or self.base_size < 8:
            raise ConfigError(f"base_size must be a power of two of at least 8, got {self.base_size}")
        if self.num_stages < 1 or self.final_size > 1024:
            raise ConfigError(f"num_stages must be at least 1 with a final size of at most 1024, got {self.num_stages}")
        if not 0.0 < self.alpha <= 1.0:
            raise ConfigError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.noise_dim < 0:
            raise ConfigError(f"noise_dim must be non-negative, got {self.noise_dim}")
        for name in (
            "cond_dim",
            "gen_channels",
            "disc_channels",
            "cond_channels",
            "max_channels",
            "disc_max_downsamplings",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.views or len(set(self.views)) != len(self.views):
            raise ConfigError(f"views must be distinct names, at least one, got {self.views}")

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        return tuple(self.base_size * 2**stage for stage in range(self.num_stages))

    @property
    def final_size(self) -> int:
        return self.base_size * 2 ** (self.num_stages - 1)


# --------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------


class UpBlock(nn.Module):
    """Pre-activation residual block that doubles the resolution (BN, ReLU, nearest, conv)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.skip(x)


class ResBlock(nn.Module):
    """Pre-activation residual block at constant resolution and width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.main(x)


def _to_image(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, 1, 3, padding=1), nn.Tanh())


def _broadcast(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return vector[:, :, None, None].expand(-1, -1, like.shape[-2], like.shape[-1])


class ConditionTrunk(nn.Module):
    """``c`` (+ noise) → FC → 4×4 feature map → residual up-sampling blocks → ``out_size`` features.

    Widths double at every halving of the resolution from ``channels`` at ``out_size``, capped
    at ``max_channels``. Without ``noise``, a ``noise_dim > 0`` trunk draws standard normal noise.
    """

    def __init__(self, cond_dim: int, noise_dim: int, out_size: int, channels: int, max_channels: int) -> None:
        super().__init__()
        if not _is_power_of_two(out_size) or out_size < 8:
            raise ConfigError(f"out_size must be a power of two of at least 8, got {out_size}")
        num_up = int(math.log2(out_size)) - 2
        widths = [min(channels * 2 ** (num_up - i), max_channels) for i in range(num_up + 1)]
        self.noise_dim = noise_dim
        self.out_channels = widths[-1]
        self.fc = nn.Linear(cond_dim + noise_dim, widths[0] * 4 * 4)
        self.blocks = nn.Sequential(*(UpBlock(widths[i], widths[i + 1]) for i in range(num_up)))

    def forward(self, c: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if self.noise_dim:
            if noise is None:
                noise = torch.randn(c.shape[0], self.noise_dim, device=c.device, dtype=c.dtype)
            c = torch.cat([c, noise], dim=1)
        return self.blocks(self.fc(c).reshape(c.shape[0], -1, 4, 4))


class BasicGenerator(nn.Module):
    """``G(1)``: a :class:`ConditionTrunk` to ``out_size`` and a tanh image layer; output in [-1, 1]."""

    def __init__(
        self, cond_dim: int, noise_dim: int = 0, out_size: int = 32, channels: int = 64, max_channels: int = 512
    ) -> None:
        super().__init__()
        self.trunk = ConditionTrunk(cond_dim, noise_dim, out_size, channels, max_channels)
        self.to_image = _to_image(self.trunk.out_channels)

    def forward(self, c: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.to_image(self.trunk(c, noise))


class ProgressiveGenerator(nn.Module):
    """``G(n)`` for n > 1: image ``[B, 1, h, w]`` and ``c`` → raw image ``[B, 1, 2h, 2w]`` in [-1, 1].

    The image is lifted to ``channels`` features, joined with the broadcast projection of
    ``c``, refined by a residual block, up-sampled and refined again. The blend of Eq. (1) is
    applied by :class:`MultiScaleGenerator`, not here.
    """

    def __init__(self, cond_dim: int, channels: int = 64, cond_channels: int = 64) -> None:
        super().__init__()
        self.from_image = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.LeakyReLU(0.2))
        self.cond_projection = nn.Sequential(nn.Linear(cond_dim, cond_channels), nn.LeakyReLU(0.2))
        self.joint = nn.Conv2d(channels + cond_channels, channels, 3, padding=1)
        self.body = nn.Sequential(ResBlock(channels), UpBlock(channels, channels), ResBlock(channels))
        self.to_image = _to_image(channels)

    def forward(self, previous: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        features = self.from_image(previous)
        features = self.joint(torch.cat([features, _broadcast(self.cond_projection(c), features)], dim=1))
        return self.to_image(self.body(features))


def blend(generated: torch.Tensor, previous: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. (1): ``α · generated + (1 − α) · U(previous)``, ``U`` bilinear to ``generated``'s size."""
    upsampled = F.interpolate(previous, size=generated.shape[-2:], mode="bilinear", align_corners=False)
    return alpha * generated + (1.0 - alpha) * upsampled


class MultiScaleGenerator(nn.Module):
    """One view's cascade: a basic generator and ``num_stages - 1`` progressive generators."""

    def __init__(self, config: XRayGANConfig) -> None:
        super().__init__()
        self.config = config
        self.basic = BasicGenerator(
            config.cond_dim, config.noise_dim, config.base_size, config.gen_channels, config.max_channels
        )
        self.progressive = nn.ModuleList(
            ProgressiveGenerator(config.cond_dim, config.gen_channels, config.cond_channels)
            for _ in range(config.num_stages - 1)
        )

    def forward(
        self, c: torch.Tensor, noise: torch.Tensor | None = None, upto_stage: int | None = None
    ) -> list[torch.Tensor]:
        """Images of stages ``0 .. upto_stage`` (default: all), each ``[B, 1, size, size]``."""
        last = self.config.num_stages - 1 if upto_stage is None else upto_stage
        if not 0 <= last < self.config.num_stages:
            raise ConfigError(f"upto_stage must be in 0..{self.config.num_stages - 1}, got {upto_stage}")
        images = [self.basic(c, noise)]
        for generator in self.progressive[:last]:
            images.append(blend(generator(images[-1], c), images[-1], self.config.alpha))
        return images


class XRayGANGenerator(nn.Module):
    """A :class:`MultiScaleGenerator` per view, with separate weights; views share ``c`` and noise."""

    def __init__(self, config: XRayGANConfig) -> None:
        super().__init__()
        self.config = config
        self.views = nn.ModuleDict({view: MultiScaleGenerator(config) for view in config.views})

    def forward(
        self, c: torch.Tensor, noise: torch.Tensor | None = None, upto_stage: int | None = None
    ) -> dict[str, list[torch.Tensor]]:
        if noise is None and self.config.noise_dim:
            noise = torch.randn(c.shape[0], self.config.noise_dim, device=c.device, dtype=c.dtype)
        return {view: cascade(c, noise, upto_stage) for view, cascade in self.views.items()}


class SingleShotGenerator(nn.Module):
    """The "w/o MSCGAN" ablation: ``c`` → ``config.final_size`` image in one network.

    The basic generator's trunk up to ``base_size`` continues, for every further stage, with
    the body of a progressive generator (residual, up-sampling, residual block) and ends in a
    single tanh image. Unlike the cascade it has no intermediate images, no blend and no
    re-injection of ``c``. At the paper config it has 7.38 M parameters, a
    :class:`MultiScaleGenerator` 7.71 M.
    """

    def __init__(self, config: XRayGANConfig) -> None:
        super().__init__()
        self.config = config
        self.trunk = ConditionTrunk(
            config.cond_dim, config.noise_dim, config.base_size, config.gen_channels, config.max_channels
        )
        width = self.trunk.out_channels
        self.stages = nn.Sequential(
            *(
                nn.Sequential(ResBlock(width), UpBlock(width, width), ResBlock(width))
                for _ in range(config.num_stages - 1)
            )
        )
        self.to_image = _to_image(width)

    def forward(self, c: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The final image ``[B, 1, final_size, final_size]``."""
        return self.to_image(self.stages(self.trunk(c, noise)))


# --------------------------------------------------------------------------------------
# Discriminators
# --------------------------------------------------------------------------------------


class PatchDiscriminator(nn.Module):
    """Conditional patch critic for one stage: image ``[B, 1, s, s]`` and ``c`` → scores ``[B, 1, h', w']``.

    ``min(log2(s) - 3, max_downsamplings)`` (at least one) stride-2 convolutions shrink the
    image, so the patch each score sees grows with the stage. The broadcast projection of
    ``c`` is concatenated to the last image feature map and read by un-normalised convolutions.
    """

    def __init__(
        self,
        stage_size: int,
        cond_dim: int,
        channels: int = 64,
        cond_channels: int = 64,
        max_channels: int = 512,
        max_downsamplings: int = 4,
        num_classes: int = 0,
    ) -> None:
        super().__init__()
        if num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {num_classes}")
        if not _is_power_of_two(stage_size) or stage_size < 8:
            raise ConfigError(f"stage_size must be a power of two of at least 8, got {stage_size}")
        num_down = max(1, min(int(math.log2(stage_size)) - 3, max_downsamplings))
        widths = [min(channels * 2**i, max_channels) for i in range(num_down + 1)]
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for i in range(num_down):
            layers += [
                nn.Conv2d(widths[i], widths[i + 1], 4, stride=2, padding=1),
                nn.InstanceNorm2d(widths[i + 1], affine=True),
                nn.LeakyReLU(0.2),
            ]
        self.image_features = nn.Sequential(*layers)
        self.cond_projection = nn.Sequential(nn.Linear(cond_dim, cond_channels), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(
            nn.Conv2d(widths[-1] + cond_channels, widths[-1], 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(widths[-1], 1, 3, padding=1),
        )
        self.output_size = stage_size // 2**num_down
        # AC-GAN (Odena et al. 2017): finding logits from the image features only, so the head
        # has to see the finding in the image (it never reads c): a 1×1 convolution scores every
        # patch and a finding is as present as its strongest patch shows it (max pooling: the
        # findings are local, and InstanceNorm leaves a spatial mean of the features uninformative).
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1) if num_classes else None

    def forward(self, image: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.score(self.image_features(image), c)

    def score(self, features: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Patch scores from :attr:`image_features` output and the condition."""
        return self.joint(torch.cat([features, _broadcast(self.cond_projection(c), features)], dim=1))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Finding logits ``[B, num_classes]`` from :attr:`image_features` output (needs ``num_classes``)."""
        if self.classifier is None:
            raise ConfigError("this critic has no findings head (num_classes = 0)")
        return self.classifier(features).amax(dim=(2, 3))

    def score_and_classify(self, image: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch scores and finding logits of ``image`` from one pass of the image features."""
        features = self.image_features(image)
        return self.score(features, c), self.classify(features)


class XRayGANDiscriminators(nn.ModuleDict):
    """``discriminators[view][stage]``: one :class:`PatchDiscriminator` per view and stage."""

    def __init__(self, config: XRayGANConfig) -> None:
        super().__init__(
            {
                view: nn.ModuleList(
                    PatchDiscriminator(
                        size,
                        config.cond_dim,
                        config.disc_channels,
                        config.cond_channels,
                        config.max_channels,
                        config.disc_max_downsamplings,
                    )
                    for size in config.stage_sizes
                )
                for view in config.views
            }
        )
        self.config = config


def gradient_penalty(
    discriminator: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    c: torch.Tensor,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP penalty ``E[(‖∇x D(x̂, c)‖₂ − 1)²]`` on per-sample interpolates x̂ (Gulrajani et al.).

    The critic value of an image is the mean of its patch scores. ``real`` and ``fake`` are
    detached; gradients flow into the discriminator (and into ``c`` if it requires them).
    The caller multiplies by λ (10 in the official code).
    """
    epsilon = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype, generator=generator)
    interpolates = (epsilon * real.detach() + (1.0 - epsilon) * fake.detach()).requires_grad_(True)
    critic = discriminator(interpolates, c).flatten(1).mean(dim=1)
    (gradients,) = torch.autograd.grad(critic.sum(), interpolates, create_graph=True)
    return ((gradients.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()


# --------------------------------------------------------------------------------------
# The runnable model
# --------------------------------------------------------------------------------------


@dataclass
class XRayGANModelConfig(ReportModelConfig):
    """What decides an :class:`XRayGAN`'s architecture and input: the ``model`` part of a run config.

    ``encoder_kind: flat`` is the w/o HAE ablation, ``generator_kind: single_shot`` the w/o
    MSCGAN one (the w/o VCN ablation changes only the training). ``max_sentences`` and
    ``max_words`` are how much of a report the encoder reads. ``vocab_size`` comes from the
    data: a run config's model leaves it unset (0) and the trainer fills it in from the
    vocabulary (:meth:`with_vocabulary`); a checkpoint's stored model config has the real size.
    """

    vocab_size: int = 0  # 0: unset (a run config's model); the data's vocabulary decides it
    # report encoder (§2.1)
    encoder_kind: str = "hierarchical"  # "flat": the w/o HAE ablation
    embed_dim: int = 128  # word embedding size
    hidden: int = 128  # LSTM units per direction; the condition c has 4 * hidden dims
    encoder_dropout: float = 0.0
    share_embedding: bool = True  # findings and impression share one word embedding
    flat_pooling: str = "mean"  # flat encoder only: mean of the states, or the last forward/backward states
    max_sentences: int = MAX_SENTENCES  # longer sections are truncated
    max_words: int = MAX_WORDS  # longer sentences are truncated
    # generators and discriminators (§2.2)
    generator_kind: str = "multi_scale"  # "single_shot": the w/o MSCGAN ablation
    base_size: int = 32  # resolution of the basic generator
    num_stages: int = 4  # 32 → 64 → 128 → 256
    alpha: float = 0.5  # blend of Eq. (1)
    noise_dim: int = 0  # noise next to c (official code: none)
    gen_channels: int = 64
    disc_channels: int = 64
    cond_channels: int = 64
    max_channels: int = 512
    disc_max_downsamplings: int = 4
    # finding logits on every critic (AC-GAN); 0: none (the paper). The trainer's aux_weight
    # uses them; they must equal the data's label count (xrg.data.findings.FINDING_KINDS).
    critic_classes: int = 0

    def __post_init__(self) -> None:
        if self.critic_classes < 0:
            raise ConfigError(f"critic_classes must be >= 0, got {self.critic_classes}")
        if self.encoder_kind not in ENCODER_KINDS:
            raise ConfigError(f"encoder_kind must be one of {ENCODER_KINDS}, got {self.encoder_kind!r}")
        if self.generator_kind not in GENERATOR_KINDS:
            raise ConfigError(f"generator_kind must be one of {GENERATOR_KINDS}, got {self.generator_kind!r}")
        self.check_report_settings()
        self.network_config()  # validates the sizes and widths

    def network_config(self) -> XRayGANConfig:
        """The MSCGAN settings of the generators and critics."""
        return XRayGANConfig(
            cond_dim=4 * self.hidden, base_size=self.base_size, num_stages=self.num_stages, alpha=self.alpha,
            noise_dim=self.noise_dim, gen_channels=self.gen_channels, disc_channels=self.disc_channels,
            cond_channels=self.cond_channels, max_channels=self.max_channels,
            disc_max_downsamplings=self.disc_max_downsamplings,
        )  # fmt: skip

    @property
    def final_size(self) -> int:
        return self.base_size * 2 ** (self.num_stages - 1)

    @property
    def trained_stages(self) -> tuple[int, ...]:
        """Stages with an adversarial phase (and a critic): all of them, or only the last for ``single_shot``."""
        if self.generator_kind == "single_shot":
            return (self.num_stages - 1,)
        return tuple(range(self.num_stages))

    def stage_size(self, stage: int) -> int:
        return self.base_size * 2**stage


class SingleShotViews(nn.Module):
    """One :class:`SingleShotGenerator` per view, called like :class:`XRayGANGenerator` (final image only)."""

    def __init__(self, config: XRayGANConfig) -> None:
        super().__init__()
        self.config = config
        self.views = nn.ModuleDict({view: SingleShotGenerator(config) for view in config.views})

    def forward(
        self, c: torch.Tensor, noise: torch.Tensor | None = None, upto_stage: int | None = None
    ) -> dict[str, list[torch.Tensor]]:
        if upto_stage not in (None, self.config.num_stages - 1):
            raise ConfigError(f"a single-shot generator only makes the final stage, not stage {upto_stage}")
        if noise is None and self.config.noise_dim:
            noise = torch.randn(c.shape[0], self.config.noise_dim, device=c.device, dtype=c.dtype)
        return {view: [generator(c, noise)] for view, generator in self.views.items()}


class XRayGAN(ConditionalGANModel):
    """The report encoder, the generators and (for training) the per-stage discriminators of a run.

    ``discriminators[view][str(stage)]`` exists for every trained stage. A model loaded with
    :meth:`from_checkpoint` has no discriminators (it only generates).
    """

    kind = "xraygan"
    config_class = XRayGANModelConfig

    def __init__(self, config: XRayGANModelConfig, with_discriminators: bool = True) -> None:
        super().__init__()
        self.config = config
        network = config.network_config()
        self.encoder = build_encoder(config.encoder_config())
        if config.generator_kind == "multi_scale":
            self.generator: nn.Module = XRayGANGenerator(network)
        else:
            self.generator = SingleShotViews(network)
        if with_discriminators:
            self.discriminators = nn.ModuleDict(
                {
                    view: nn.ModuleDict(
                        {
                            str(stage): PatchDiscriminator(
                                config.stage_size(stage),
                                network.cond_dim,
                                config.disc_channels,
                                config.cond_channels,
                                config.max_channels,
                                config.disc_max_downsamplings,
                                config.critic_classes,
                            )  # fmt: skip
                            for stage in config.trained_stages
                        }
                    )
                    for view in network.views
                }
            )

    @property
    def image_size(self) -> int:
        return self.config.final_size

    def encode(self, batch: dict[str, Any]) -> ReportEncoding:
        """Encode a :func:`collate_pairs` batch (its id and mask tensors, on the model's device)."""
        device = next(self.parameters()).device
        keys = ("findings_ids", "findings_mask", "impression_ids", "impression_mask")
        return self.encoder(*(batch[key].to(device) for key in keys))

    def generate(self, c: torch.Tensor, stage: int, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Both views' images of ``stage`` in the model range [-1, 1], ``{view: [B, 1, s, s]}``."""
        return {view: images[-1] for view, images in self.generator(c, noise, upto_stage=stage).items()}

    def generator_parameters(self, stage: int) -> list[nn.Parameter]:
        """The encoder's and the generators' parameters that produce the images of ``stage``."""
        parameters = list(self.encoder.parameters())
        for cascade in self.generator.views.values():
            if isinstance(cascade, SingleShotGenerator):
                parameters += list(cascade.parameters())
            else:
                parameters += list(cascade.basic.parameters())
                for progressive in cascade.progressive[:stage]:
                    parameters += list(progressive.parameters())
        return parameters

    def discriminator_parameters(self, stage: int) -> list[nn.Parameter]:
        return [p for per_view in self.discriminators.values() for p in per_view[str(stage)].parameters()]
