"""Networks of the three text-to-image baselines of XRayGAN's Table 1, for both X-ray views.

Each baseline draws a frontal and a lateral image from one report, with one generator (and
one discriminator per stage) per view. They read the condition of XRayGAN's hierarchical
report encoder (:mod:`xrg.models.encoder`): the report vector ``c`` and, for AttnGAN, the
word-level BiLSTM states. The noise ``z`` and the conditioning-augmentation sample ``ĉ`` are
drawn once per report and shared by both views, as both XRayGAN views share ``c``.

* **GAN-INT-CLS** (Reed et al., "Generative Adversarial Text to Image Synthesis", ICML 2016):
  ``c`` is compressed by a fully connected layer with leaky ReLU to ``ca_dim`` (128 there) and
  joined with ``z``; a DCGAN generator (transposed 4×4 convolutions, BatchNorm, ReLU, tanh)
  draws the image at the final size in one stage. The discriminator is a DCGAN encoder down to
  4×4 whose map is joined with the spatially replicated compressed ``c`` (1×1 → here 3×3
  convolution, then a 4×4 convolution to one logit). Its matching-aware loss (GAN-CLS) and the
  interpolated conditions (GAN-INT) live in :mod:`xrg.train.baselines`.
* **StackGAN** (Zhang et al., "StackGAN: Text to Photo-realistic Image Synthesis with Stacked
  Generative Adversarial Networks", ICCV 2017): conditioning augmentation (CA) maps ``c`` to
  ``μ, log σ²`` and samples ``ĉ = μ + σ·ε``; Stage I turns ``[z; ĉ]`` into a ``base_size``
  image (FC to 4×4, nearest up-sampling + 3×3 convolution blocks); Stage II encodes the Stage-I
  image down by 4 (stride-2 convolutions), joins a second CA sample, refines it with residual
  blocks and up-samples to the final size (by 4 × final/base). Discriminators as above.
* **AttnGAN** (Xu et al., "AttnGAN: Fine-Grained Text to Image Generation with Attentional
  Generative Adversarial Networks", CVPR 2018): a cascade ``base_size → … → final`` doubling
  at every stage. The first stage reads ``[z; ĉ]`` (CA of ``c``, the sentence-level
  condition); every later stage computes, for each pixel's hidden feature ``h_j``, attention
  weights ``β_j = softmax_i(h_jᵀ U e_i)`` over the report's words ``e_i`` (projected by ``U``
  to the feature width, padding masked), joins the word context ``Σ_i β_ji U e_i`` to ``h``,
  applies two residual blocks and up-samples. Every stage has a tanh image head and a
  discriminator with a conditional and an unconditional logit.

Simplified at this size: one image channel; widths set by the config; ReLU instead of
AttnGAN's GLU in up-sampling blocks; every discriminator reads ``c`` through a learned
projection (AttnGAN's reads its sentence embedding directly); AttnGAN's words are those of
both report sections, findings then impression. AttnGAN's DAMSM loss is left out: it needs an
image-text matching model pretrained on the data, which cannot be trained within the budget
here; the attention generator, CA and the conditional/unconditional discriminators are kept.
Images are in the model range [-1, 1] (:func:`xrg.models.xraygan.to_model_range`).

:class:`BaselineModel` is the runnable model of a baseline run (the HAE, the generators and,
for training, the discriminators), built from one :class:`BaselineModelConfig` and saved and
loaded with :meth:`~xrg.models.base.CheckpointedModel.save` and
:meth:`~xrg.models.base.CheckpointedModel.from_checkpoint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from xrg.data.manifest import VIEWS
from xrg.data.reports import MAX_SENTENCES, MAX_WORDS
from xrg.errors import ConfigError
from xrg.models.base import ConditionalGANModel
from xrg.models.encoder import ReportModelConfig, build_encoder
from xrg.models.xraygan import ResBlock

BASELINE_METHODS: tuple[str, ...] = ("gan_int_cls", "stackgan", "attngan")


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


@dataclass
class BaselineConfig:
    """Network settings of one baseline (``method``); sizes are powers of two."""

    method: str
    cond_dim: int = 512  # size of the report vector c
    word_dim: int = 256  # size of a word feature (AttnGAN)
    image_size: int = 256  # final resolution
    base_size: int = 64  # first stage of StackGAN and AttnGAN (unused by GAN-INT-CLS)
    noise_dim: int = 100
    ca_dim: int = 128  # size of ĉ (StackGAN, AttnGAN), of the compressed c (GAN-INT-CLS, every discriminator)
    gen_channels: int = 64  # generator width at the base (StackGAN, AttnGAN) or half the final (DCGAN) size
    disc_channels: int = 64  # discriminator width after its first convolution
    max_channels: int = 512
    views: tuple[str, ...] = VIEWS

    def __post_init__(self) -> None:
        self.views = tuple(self.views)
        if self.method not in BASELINE_METHODS:
            raise ConfigError(f"method must be one of {BASELINE_METHODS}, got {self.method!r}")
        if not _is_power_of_two(self.image_size) or not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be a power of two in 16..1024, got {self.image_size}")
        if not _is_power_of_two(self.base_size) or self.base_size < 8:
            raise ConfigError(f"base_size must be a power of two of at least 8, got {self.base_size}")
        if self.method != "gan_int_cls" and self.base_size >= self.image_size:
            raise ConfigError(
                f"{self.method} needs base_size below image_size (at least two stages), got {self.base_size} "
                f"and {self.image_size}"
            )
        if self.noise_dim < 0:
            raise ConfigError(f"noise_dim must be non-negative, got {self.noise_dim}")
        for name in ("cond_dim", "word_dim", "ca_dim", "gen_channels", "disc_channels", "max_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not self.views or len(set(self.views)) != len(self.views):
            raise ConfigError(f"views must be distinct names, at least one, got {self.views}")

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        """Resolution of every generator stage, the first to the final."""
        if self.method == "gan_int_cls":
            return (self.image_size,)
        if self.method == "stackgan":
            return (self.base_size, self.image_size)
        return tuple(self.base_size * 2**k for k in range(int(math.log2(self.image_size // self.base_size)) + 1))

    @property
    def num_stages(self) -> int:
        return len(self.stage_sizes)


# --------------------------------------------------------------------------------------
# Condition, noise, conditioning augmentation
# --------------------------------------------------------------------------------------


@dataclass
class TextCondition:
    """What a baseline generator reads: ``c [B, cond_dim]`` and (AttnGAN) ``words [B, L, D]``, ``word_mask [B, L]``."""

    c: torch.Tensor
    words: torch.Tensor | None = None
    word_mask: torch.Tensor | None = None


def compact_words(sections: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The real words of several sections, ``states [B, S, W, D]`` with ``mask [B, S, W]``, in one row.

    Returns ``words [B, L, D]`` and ``mask [B, L]``: each report's words in order (sections one
    after another) moved to the front, ``L`` the longest report's word count (at least 1).
    Attention cost then follows the words, not the padded ``S × W`` grid.
    """
    states = torch.cat([s.reshape(s.shape[0], -1, s.shape[-1]) for s, _ in sections], dim=1)
    mask = torch.cat([m.reshape(m.shape[0], -1) for _, m in sections], dim=1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    length = max(int(mask.sum(dim=1).max()), 1)
    order = order[:, :length]
    words = torch.gather(states, 1, order.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
    return words, torch.gather(mask, 1, order)


def randn_like_rows(rows: int, dim: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """``[rows, dim]`` standard normal numbers drawn on the CPU (from ``generator``, else the global RNG).

    Drawing on the CPU makes a seed give the same samples on every device.
    """
    return torch.randn(rows, dim, generator=generator).to(device=like.device, dtype=like.dtype)


class ConditioningAugmentation(nn.Module):
    """StackGAN's CA: ``c`` → FC + GLU → ``(μ, log σ²)``, sample ``ĉ = μ + σ·ε`` (ε ~ N(0, I))."""

    def __init__(self, cond_dim: int, ca_dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cond_dim, 4 * ca_dim)
        self.ca_dim = ca_dim

    def forward(
        self, c: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(ĉ, μ, log σ²)``, each ``[B, ca_dim]``."""
        mu, logvar = F.glu(self.fc(c), dim=1).chunk(2, dim=1)
        epsilon = randn_like_rows(c.shape[0], self.ca_dim, mu, generator)
        return mu + torch.exp(0.5 * logvar) * epsilon, mu, logvar


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(μ, σ²) ‖ N(0, I))`` averaged over samples and dimensions (StackGAN's code); ≥ 0."""
    return 0.5 * torch.mean(mu.pow(2) + logvar.exp() - 1.0 - logvar)


@dataclass
class GeneratorOutput:
    """Images of every stage made, lowest resolution first (``{view: [B, 1, s, s]}``), and the CA terms."""

    images: list[dict[str, torch.Tensor]]
    kl_terms: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (μ, log σ²) per CA


# --------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------


def up_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """StackGAN's up-sampling block: nearest ×2, 3×3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def deconv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """DCGAN's up-sampling block: transposed 4×4 stride-2 convolution, BatchNorm, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


def image_head(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, 1, 3, padding=1), nn.Tanh())


def _broadcast(vector: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return vector[:, :, None, None].expand(-1, -1, like.shape[-2], like.shape[-1])


class VectorTrunk(nn.Module):
    """A vector → FC (BatchNorm, ReLU) → 4×4 map → up-sampling blocks → ``out_size`` features.

    Widths halve at every doubling, ending at ``channels`` (capped at ``max_channels``).
    """

    def __init__(self, in_dim: int, out_size: int, channels: int, max_channels: int, transposed: bool = False) -> None:
        super().__init__()
        num_up = int(math.log2(out_size)) - 2
        widths = [min(channels * 2 ** (num_up - i), max_channels) for i in range(num_up + 1)]
        self.first_width = widths[0]
        self.out_channels = widths[-1]
        self.fc = nn.Sequential(
            nn.Linear(in_dim, widths[0] * 16, bias=False), nn.BatchNorm1d(widths[0] * 16), nn.ReLU()
        )
        block = deconv_block if transposed else up_block
        self.blocks = nn.Sequential(*(block(widths[i], widths[i + 1]) for i in range(num_up)))

    def forward(self, vector: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.fc(vector).reshape(vector.shape[0], self.first_width, 4, 4))


# --------------------------------------------------------------------------------------
# GAN-INT-CLS
# --------------------------------------------------------------------------------------


class DCGANGenerator(nn.Module):
    """GAN-INT-CLS's generator for one view: ``[z; LeakyReLU(FC(c))]`` → DCGAN → final image."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.compress = nn.Sequential(nn.Linear(config.cond_dim, config.ca_dim), nn.LeakyReLU(0.2))
        self.trunk = VectorTrunk(
            config.noise_dim + config.ca_dim, config.image_size // 2, config.gen_channels, config.max_channels,
            transposed=True,
        )  # fmt: skip
        self.to_image = nn.Sequential(nn.ConvTranspose2d(self.trunk.out_channels, 1, 4, stride=2, padding=1), nn.Tanh())

    def forward(self, c: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.to_image(self.trunk(torch.cat([noise, self.compress(c)], dim=1)))


class GANINTCLSGenerator(nn.Module):
    """A :class:`DCGANGenerator` per view, one shared noise draw."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = config
        self.views = nn.ModuleDict({view: DCGANGenerator(config) for view in config.views})

    def forward(
        self, condition: TextCondition, generator: torch.Generator | None = None, upto_stage: int | None = None
    ) -> GeneratorOutput:
        c = condition.c
        noise = randn_like_rows(c.shape[0], self.config.noise_dim, c, generator)
        return GeneratorOutput([{view: g(c, noise) for view, g in self.views.items()}])


# --------------------------------------------------------------------------------------
# StackGAN
# --------------------------------------------------------------------------------------


class StageIGenerator(nn.Module):
    """StackGAN Stage I for one view: ``[z; ĉ]`` → FC → 4×4 → up-sampling blocks → ``base_size`` image."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.trunk = VectorTrunk(
            config.noise_dim + config.ca_dim, config.base_size, config.gen_channels, config.max_channels
        )
        self.to_image = image_head(self.trunk.out_channels)

    def forward(self, c_hat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.to_image(self.trunk(torch.cat([noise, c_hat], dim=1)))


class StageIIGenerator(nn.Module):
    """StackGAN Stage II for one view: Stage-I image and ``ĉ`` → final image.

    The image is encoded down by 4 (by 2 from an 8² base), joined with the replicated ``ĉ``,
    refined by two residual blocks and up-sampled to the final size. The width at a
    resolution ``r`` is ``gen_channels · base_size / r`` (capped, at least 4), so the joint map
    is 4× and the final map ½× (for a 2× Stage II) the Stage-I width.
    """

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        num_down = min(2, int(math.log2(config.base_size)) - 2)
        num_up = num_down + int(math.log2(config.image_size // config.base_size))

        def width(size: int) -> int:
            return max(min(config.gen_channels * config.base_size // size, config.max_channels), 4)

        size = config.base_size
        layers: list[nn.Module] = [nn.Conv2d(1, width(size), 3, padding=1), nn.ReLU()]
        for _ in range(num_down):
            layers += [
                nn.Conv2d(width(size), width(size // 2), 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width(size // 2)),
                nn.ReLU(),
            ]
            size //= 2
        self.encode = nn.Sequential(*layers)
        joint_width = width(size)
        self.joint = nn.Sequential(
            nn.Conv2d(joint_width + config.ca_dim, joint_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(joint_width),
            nn.ReLU(),
        )
        self.residual = nn.Sequential(ResBlock(joint_width), ResBlock(joint_width))
        ups = []
        for _ in range(num_up):
            ups.append(up_block(width(size), width(size * 2)))
            size *= 2
        self.up = nn.Sequential(*ups)
        self.to_image = image_head(width(size))

    def forward(self, stage1_image: torch.Tensor, c_hat: torch.Tensor) -> torch.Tensor:
        features = self.encode(stage1_image)
        features = self.joint(torch.cat([features, _broadcast(c_hat, features)], dim=1))
        return self.to_image(self.up(self.residual(features)))


class StackGANGenerator(nn.Module):
    """Stage I and Stage II for every view; each stage has its own CA, shared by the views."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = config
        self.ca1 = ConditioningAugmentation(config.cond_dim, config.ca_dim)
        self.stage1 = nn.ModuleDict({view: StageIGenerator(config) for view in config.views})
        self.ca2 = ConditioningAugmentation(config.cond_dim, config.ca_dim)
        self.stage2 = nn.ModuleDict({view: StageIIGenerator(config) for view in config.views})

    def stage_one(self, c: torch.Tensor, generator: torch.Generator | None = None) -> GeneratorOutput:
        c_hat, mu, logvar = self.ca1(c, generator)
        noise = randn_like_rows(c.shape[0], self.config.noise_dim, c, generator)
        return GeneratorOutput([{view: g(c_hat, noise) for view, g in self.stage1.items()}], [(mu, logvar)])

    def stage_two(
        self, c: torch.Tensor, stage1: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> GeneratorOutput:
        c_hat, mu, logvar = self.ca2(c, generator)
        return GeneratorOutput([{view: g(stage1[view], c_hat) for view, g in self.stage2.items()}], [(mu, logvar)])

    def forward(
        self, condition: TextCondition, generator: torch.Generator | None = None, upto_stage: int | None = None
    ) -> GeneratorOutput:
        first = self.stage_one(condition.c, generator)
        if upto_stage == 0:
            return first
        second = self.stage_two(condition.c, first.images[0], generator)
        return GeneratorOutput(first.images + second.images, first.kl_terms + second.kl_terms)


# --------------------------------------------------------------------------------------
# AttnGAN
# --------------------------------------------------------------------------------------


class WordAttention(nn.Module):
    """AttnGAN's attention: each pixel's feature ``h_j`` attends over the projected words ``U e_i``.

    ``forward(features [B, C, H, W], words [B, L, D], mask [B, L])`` returns the word context
    ``[B, C, H, W]`` and the weights ``[B, H·W, L]``: a softmax over a report's real words,
    exactly 0 on padding; a report without words gets zero weights and a zero context.
    """

    def __init__(self, word_dim: int, channels: int) -> None:
        super().__init__()
        self.project = nn.Linear(word_dim, channels, bias=False)  # U, AttnGAN's 1×1 convolution

    def forward(
        self, features: torch.Tensor, words: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, channels, height, width = features.shape
        keys = self.project(words)  # [B, L, C]
        queries = features.flatten(2).transpose(1, 2)  # [B, HW, C]
        scores = torch.bmm(queries, keys.transpose(1, 2))  # [B, HW, L]
        # Reports without words get finite scores so the softmax stays finite; the mask zeroes them.
        valid = (mask | ~mask.any(dim=1, keepdim=True))[:, None, :]
        weights = torch.softmax(scores.masked_fill(~valid, float("-inf")), dim=-1) * mask[:, None, :]
        context = torch.bmm(weights, keys).transpose(1, 2).reshape(batch, channels, height, width)
        return context, weights


class AttentionStage(nn.Module):
    """A later AttnGAN stage of one view: ``[h; word context]`` → 2 residual blocks → up-sampling."""

    def __init__(self, word_dim: int, channels: int) -> None:
        super().__init__()
        self.attention = WordAttention(word_dim, channels)
        self.residual = nn.Sequential(ResBlock(2 * channels), ResBlock(2 * channels))
        self.up = up_block(2 * channels, channels)
        self.to_image = image_head(channels)

    def forward(self, hidden: torch.Tensor, words: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        context, _ = self.attention(hidden, words, mask)
        return self.up(self.residual(torch.cat([hidden, context], dim=1)))


class AttentionCascade(nn.Module):
    """One view's AttnGAN generators: the first stage from ``[z; ĉ]``, then attention stages."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.first = VectorTrunk(
            config.noise_dim + config.ca_dim, config.base_size, config.gen_channels, config.max_channels
        )
        self.first_image = image_head(self.first.out_channels)
        self.stages = nn.ModuleList(
            AttentionStage(config.word_dim, self.first.out_channels) for _ in range(config.num_stages - 1)
        )

    def forward(
        self, vector: torch.Tensor, words: torch.Tensor, mask: torch.Tensor, upto_stage: int
    ) -> list[torch.Tensor]:
        hidden = self.first(vector)
        images = [self.first_image(hidden)]
        for stage in self.stages[:upto_stage]:
            hidden = stage(hidden, words, mask)
            images.append(stage.to_image(hidden))
        return images


class AttnGANGenerator(nn.Module):
    """An :class:`AttentionCascade` per view; one CA and one noise draw shared by the views."""

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = config
        self.ca = ConditioningAugmentation(config.cond_dim, config.ca_dim)
        self.views = nn.ModuleDict({view: AttentionCascade(config) for view in config.views})

    def forward(
        self, condition: TextCondition, generator: torch.Generator | None = None, upto_stage: int | None = None
    ) -> GeneratorOutput:
        if condition.words is None or condition.word_mask is None:
            raise ConfigError("AttnGAN needs the report's word features (TextCondition.words and word_mask)")
        last = self.config.num_stages - 1 if upto_stage is None else upto_stage
        c = condition.c
        c_hat, mu, logvar = self.ca(c, generator)
        vector = torch.cat([randn_like_rows(c.shape[0], self.config.noise_dim, c, generator), c_hat], dim=1)
        per_view = {
            view: cascade(vector, condition.words, condition.word_mask, last) for view, cascade in self.views.items()
        }
        images = [{view: per_view[view][k] for view in per_view} for k in range(last + 1)]
        return GeneratorOutput(images, [(mu, logvar)])


# --------------------------------------------------------------------------------------
# Discriminators
# --------------------------------------------------------------------------------------


class ConditionalDiscriminator(nn.Module):
    """The discriminator of all three papers at one resolution, scoring an image and ``c``.

    :meth:`features`: stride-2 4×4 convolutions (leaky ReLU, BatchNorm after the first) down to
    a 4×4 map, widths doubling from ``channels``. :meth:`cond_logits`: the map joined with the
    replicated projection of ``c`` (FC + leaky ReLU to ``proj_dim``), a 3×3 convolution
    (BatchNorm, leaky ReLU) and a 4×4 convolution to one logit per image. With
    ``unconditional`` (AttnGAN), :meth:`uncond_logits` scores the map alone.
    """

    def __init__(
        self,
        image_size: int,
        cond_dim: int,
        proj_dim: int,
        channels: int = 64,
        max_channels: int = 512,
        unconditional: bool = False,
    ) -> None:
        super().__init__()
        if not _is_power_of_two(image_size) or image_size < 8:
            raise ConfigError(f"image_size must be a power of two of at least 8, got {image_size}")
        num_down = int(math.log2(image_size)) - 2
        widths = [min(channels * 2**i, max_channels) for i in range(num_down)]
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        for i in range(1, num_down):
            layers += [
                nn.Conv2d(widths[i - 1], widths[i], 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.LeakyReLU(0.2),
            ]
        self.image_features = nn.Sequential(*layers)
        width = widths[-1]
        self.cond_projection = nn.Sequential(nn.Linear(cond_dim, proj_dim), nn.LeakyReLU(0.2))
        self.joint = nn.Sequential(
            nn.Conv2d(width + proj_dim, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1, 4),
        )
        self.uncond = nn.Conv2d(width, 1, 4) if unconditional else None

    def features(self, image: torch.Tensor) -> torch.Tensor:
        return self.image_features(image)

    def cond_logits(self, features: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        projected = _broadcast(self.cond_projection(c), features)
        return self.joint(torch.cat([features, projected], dim=1)).flatten()

    def uncond_logits(self, features: torch.Tensor) -> torch.Tensor:
        if self.uncond is None:
            raise ConfigError("this discriminator has no unconditional head (only AttnGAN's do)")
        return self.uncond(features).flatten()

    def forward(self, image: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.cond_logits(self.features(image), c)


def build_generator(config: BaselineConfig) -> GANINTCLSGenerator | StackGANGenerator | AttnGANGenerator:
    """The generator of ``config.method``: ``forward(condition, generator, upto_stage) -> GeneratorOutput``."""
    return {"gan_int_cls": GANINTCLSGenerator, "stackgan": StackGANGenerator, "attngan": AttnGANGenerator}[
        config.method
    ](config)


def build_discriminators(config: BaselineConfig) -> nn.ModuleDict:
    """``discriminators[view][str(stage)]``: one :class:`ConditionalDiscriminator` per view and stage."""
    return nn.ModuleDict(
        {
            view: nn.ModuleDict(
                {
                    str(stage): ConditionalDiscriminator(
                        size,
                        config.cond_dim,
                        config.ca_dim,
                        config.disc_channels,
                        config.max_channels,
                        unconditional=config.method == "attngan",
                    )  # fmt: skip
                    for stage, size in enumerate(config.stage_sizes)
                }
            )
            for view in config.views
        }
    )


# --------------------------------------------------------------------------------------
# The runnable model
# --------------------------------------------------------------------------------------


@dataclass
class BaselineModelConfig(ReportModelConfig):
    """What decides a :class:`BaselineModel`'s architecture and input: the ``model`` part of a baseline run config.

    ``vocab_size`` comes from the data: a run config's model leaves it unset (0) and the
    trainer fills it in (:meth:`with_vocabulary`); a checkpoint's stored model config has the real size.
    """

    vocab_size: int = 0  # 0: unset (a run config's model); the data's vocabulary decides it
    method: str = "gan_int_cls"  # one of BASELINE_METHODS
    # report encoder: XRayGAN's HAE (§2.1), trained jointly from scratch
    embed_dim: int = 128
    hidden: int = 128  # LSTM units per direction; c has 4 * hidden dims
    encoder_dropout: float = 0.0
    share_embedding: bool = True  # findings and impression share one word embedding
    max_sentences: int = MAX_SENTENCES
    max_words: int = MAX_WORDS
    # networks
    image_size: int = 256  # final resolution
    base_size: int = 64  # StackGAN Stage I, AttnGAN's first stage (64 for 256 in both papers)
    noise_dim: int = 100
    ca_dim: int = 128  # ĉ of the CA (StackGAN 128, AttnGAN 100), GAN-INT-CLS's compressed text (128)
    gen_channels: int = 64
    disc_channels: int = 64
    max_channels: int = 512

    def __post_init__(self) -> None:
        if self.encoder_dropout < 0:
            raise ConfigError(f"encoder_dropout must be non-negative, got {self.encoder_dropout}")
        self.check_report_settings()
        self.network_config()  # validates the method, sizes and widths

    def network_config(self) -> BaselineConfig:
        """The settings of the generators and discriminators."""
        return BaselineConfig(
            method=self.method, cond_dim=4 * self.hidden, word_dim=2 * self.hidden, image_size=self.image_size,
            base_size=self.base_size, noise_dim=self.noise_dim, ca_dim=self.ca_dim, gen_channels=self.gen_channels,
            disc_channels=self.disc_channels, max_channels=self.max_channels,
        )  # fmt: skip


class StagePhase(Protocol):
    """A block of training as :class:`BaselineModel` reads it: the generator stages up to ``stage``."""

    stage: int


class BaselineModel(ConditionalGANModel):
    """The report encoder, the baseline's generators and (for training) its discriminators.

    ``discriminators[view][str(stage)]`` exists for every generator stage. A model loaded with
    :meth:`from_checkpoint` has no discriminators (it only generates). The methods taking a
    ``phase`` (anything with a ``stage``: a training phase of :mod:`xrg.train.baselines`) say
    what that phase trains, freezes and generates.
    """

    kind = "baseline"
    config_class = BaselineModelConfig

    def __init__(self, config: BaselineModelConfig, with_discriminators: bool = True) -> None:
        super().__init__()
        self.config = config
        self.net_config = config.network_config()
        self.encoder = build_encoder(config.encoder_config())
        self.generator = build_generator(self.net_config)
        if with_discriminators:
            self.discriminators = build_discriminators(self.net_config)

    @classmethod
    def mismatch_message(cls, path: Path, config: BaselineModelConfig, error: BaseException) -> str:
        return f"checkpoint {path} does not match its config ({config.method}): {error}"

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, batch: dict[str, Any]) -> TextCondition:
        """The condition of a :func:`collate_pairs` batch (its id and mask tensors)."""
        keys = ("findings_ids", "findings_mask", "impression_ids", "impression_mask")
        inputs = [batch[key].to(self.device) for key in keys]
        encoding = self.encoder(*inputs)
        if self.config.method != "attngan":
            return TextCondition(encoding.c)
        sections = [(encoding.findings.word_states, inputs[1]), (encoding.impression.word_states, inputs[3])]
        words, mask = compact_words(sections)
        return TextCondition(encoding.c, words, mask)

    def frozen_modules(self, phase: StagePhase) -> list[nn.Module]:
        """What ``phase`` reads without training it: StackGAN Stage II freezes all that makes Stage I."""
        if self.config.method == "stackgan" and phase.stage == 1:
            return [self.encoder, self.generator.ca1, self.generator.stage1]
        return []

    def trained_generator_modules(self, phase: StagePhase) -> list[nn.Module]:
        if self.config.method == "stackgan":
            if phase.stage == 0:
                return [self.encoder, self.generator.ca1, self.generator.stage1]
            return [self.generator.ca2, self.generator.stage2]
        return [self.encoder, self.generator]

    def trained_stages(self, phase: StagePhase) -> tuple[int, ...]:
        """Generator stages whose images meet a discriminator in ``phase``."""
        if self.config.method == "attngan":
            return tuple(range(phase.stage + 1))
        return (phase.stage,)

    def discriminator_parameters(self, phase: StagePhase) -> list[nn.Parameter]:
        return [
            p for per_view in self.discriminators.values() for stage in self.trained_stages(phase)
            for p in per_view[str(stage)].parameters()
        ]  # fmt: skip

    def train_mode(self, phase: StagePhase) -> None:
        self.train()
        for module in self.frozen_modules(phase):
            module.eval()

    def generate_for(
        self, phase: StagePhase, batch: dict[str, Any], generator: torch.Generator | None = None
    ) -> tuple[TextCondition, GeneratorOutput]:
        """The condition and the trainable part of the generator output of ``phase``.

        For StackGAN Stage II the condition and the Stage-I images come without gradients and
        the output holds only Stage II (its image and its CA term).
        """
        if self.config.method == "stackgan" and phase.stage == 1:
            with torch.no_grad():
                condition = self.encode(batch)
                first = self.generator.stage_one(condition.c, generator)
            return condition, self.generator.stage_two(condition.c, first.images[0], generator)
        condition = self.encode(batch)
        return condition, self.generator(condition, generator, upto_stage=phase.stage)

    def stage_images(self, phase: StagePhase, output: GeneratorOutput) -> dict[int, dict[str, torch.Tensor]]:
        """``{stage: {view: image}}`` of the stages trained in ``phase``."""
        stages = self.trained_stages(phase)
        return dict(zip(stages, output.images[-len(stages) :]))
