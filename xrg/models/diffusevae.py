"""DiffuseVAE: a VAE whose blurry output a DDPM refines (the whitepaper's §3.1; Pandey et al. 2022).

The image generation module of the third model family, for one view (frontal by default):

* :class:`VAE` (§3.1.1): a convolutional encoder to a ``latent_dim`` Gaussian latent and a
  decoder back, trained on the ELBO. Its reconstructions and prior samples are blurry by
  design: they are the DDPM's condition.
* :class:`UNet` and :class:`NoiseSchedule` (§3.1.2): ε-prediction on ``[x_t ; x_vae]``, the noisy
  image concatenated with the VAE's output (DiffuseVAE's "generator-refiner", formulation 1),
  a linear or cosine β schedule (Ho et al. 2020; Nichol & Dhariwal 2021), ancestral sampling
  and DDIM (Song et al. 2021) with any number of steps and η.
* Conditioning beyond the whitepaper (which names it future work): a condition vector from a
  finding set (multi-disease generation) or from the report text through the hierarchical
  report encoder (prompt-based generation), :class:`ConditionEncoder`. The VAE is a
  conditional VAE (the decoder reads ``[z ; c]``), the UNet adds ``c`` to its time embedding,
  which every residual block reads through adaptive group normalisation (scale and shift).
  Classifier-free guidance (Ho & Salimans 2022): training drops the condition (the learned
  null vector instead) with some probability; sampling mixes ``ε_u + s·(ε_c − ε_u)``, so scale
  0 is the unconditional prediction and 1 the conditional one.

:class:`DiffuseVAE` owns the VAE, the UNet and its moving average and is what the ``ddpm`` and
``finetune`` stages save; the VAE alone is the ``vae`` stage's model. The representation
model of §3.2–3.3 is :mod:`xrg.models.moco`.

Written by hand rather than taken from ``diffusers``: its schedulers and ``UNet2DModel`` would do,
but it brings seven packages (the Hub client, its downloader, an HTTP stack) to an offline
library for a hundred lines of schedule arithmetic, which the tests check against closed forms.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.data.findings import FINDING_KINDS
from xrg.data.manifest import VIEWS
from xrg.errors import ConfigError
from xrg.models.base import CheckpointedModel, moving_average_step
from xrg.models.encoder import ReportModelConfig, build_encoder

#: Where the condition vector comes from: nothing (unconditional), the case's finding set, or its report text.
CONDITION_MODES: tuple[str, ...] = ("none", "findings", "report")
SCHEDULES: tuple[str, ...] = ("linear", "cosine")


# --------------------------------------------------------------------------------------
# The condition
# --------------------------------------------------------------------------------------


@dataclass
class ConditionConfig(ReportModelConfig):
    """What a network is conditioned on and, for ``mode = "report"``, the report encoder's settings."""

    mode: str = "findings"
    cond_dim: int = 64  # size of the condition vector c
    # the hierarchical report encoder (mode "report"); vocab_size comes from the data
    vocab_size: int = 0
    embed_dim: int = 64
    hidden: int = 64
    encoder_dropout: float = 0.0
    share_embedding: bool = True
    max_sentences: int = 8
    max_words: int = 24

    def __post_init__(self) -> None:
        if self.mode not in CONDITION_MODES:
            raise ConfigError(f"condition mode must be one of {CONDITION_MODES}, got {self.mode!r}")
        if self.cond_dim < 1:
            raise ConfigError(f"cond_dim must be positive, got {self.cond_dim}")
        self.check_report_settings()


class ConditionEncoder(nn.Module):
    """A batch's condition → ``c [B, cond_dim]``, or the learned null vector where ``drop`` is True.

    ``findings``: a linear map of the multi-hot labels over :data:`~xrg.data.findings.FINDING_KINDS`;
    ``report``: the hierarchical report encoder, then a linear map; ``none``: always the null vector.
    """

    def __init__(self, config: ConditionConfig) -> None:
        super().__init__()
        self.config = config
        self.null = nn.Parameter(torch.zeros(config.cond_dim))
        if config.mode == "findings":
            self.project = nn.Linear(len(FINDING_KINDS), config.cond_dim)
        elif config.mode == "report":
            self.encoder = build_encoder(config.encoder_config())
            self.project = nn.Linear(self.encoder.config.cond_dim, config.cond_dim)

    def forward(self, batch: dict[str, Any], count: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        """``c`` for the ``count`` cases of ``batch`` (``labels``, or the report ids and masks)."""
        null = self.null.expand(count, -1)
        if self.config.mode == "none":
            return null
        device = self.null.device
        if self.config.mode == "findings":
            c = self.project(batch["labels"].to(device=device, dtype=self.null.dtype))
        else:
            keys = ("findings_ids", "findings_mask", "impression_ids", "impression_mask")
            c = self.project(self.encoder(*(batch[key].to(device) for key in keys)).c)
        if drop is not None:
            c = torch.where(drop.to(device).unsqueeze(1), null, c)
        return c


def condition_drop(count: int, probability: float, device: torch.device) -> torch.Tensor | None:
    """Which of ``count`` cases train unconditionally (classifier-free guidance); None for probability 0."""
    if probability <= 0:
        return None
    return torch.rand(count, device=device) < probability


# --------------------------------------------------------------------------------------
# The VAE (§3.1.1)
# --------------------------------------------------------------------------------------


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _levels(image_size: int, smallest: int = 4) -> int:
    if image_size < 8 or image_size & (image_size - 1):
        raise ConfigError(f"image_size must be a power of two of at least 8, got {image_size}")
    return int(math.log2(image_size // smallest))


@dataclass
class VAEConfig:
    """The VAE's architecture: halve the image down to 4², doubling the channels up to ``max_channels``."""

    image_size: int = 64
    view: str = "frontal"
    base_channels: int = 32
    max_channels: int = 256
    latent_dim: int = 64
    condition: ConditionConfig = field(default_factory=ConditionConfig)

    def __post_init__(self) -> None:
        _levels(self.image_size)
        if self.view not in VIEWS:
            raise ConfigError(f"view must be one of {VIEWS}, got {self.view!r}")
        if self.base_channels < 1 or self.max_channels < self.base_channels or self.latent_dim < 1:
            raise ConfigError(
                f"need 1 <= base_channels <= max_channels and latent_dim >= 1, got {self.base_channels}, "
                f"{self.max_channels}, {self.latent_dim}"
            )

    def channels(self) -> list[int]:
        """Channels at image_size, image_size/2, …, 4."""
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(_levels(self.image_size) + 1)]

    @classmethod
    def from_run_config(cls, config: Any, vocab_size: int) -> VAEConfig:
        return with_vocabulary(config.vae, vocab_size)


def with_vocabulary(config: Any, vocab_size: int) -> Any:
    """``config`` (a VAE or UNet config) with its condition's vocabulary size set."""
    import dataclasses

    return dataclasses.replace(config, condition=config.condition.with_vocabulary(vocab_size))


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    kernel = 4 if stride == 2 else 3
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding=1),
        nn.GroupNorm(_groups(out_channels), out_channels),
        nn.SiLU(),
    )


@dataclass
class VAEOutput:
    reconstruction: torch.Tensor
    mean: torch.Tensor
    logvar: torch.Tensor


class VAE(CheckpointedModel):
    """A conditional VAE for ``[B, 1, S, S]`` images in [-1, 1] (see the module docstring)."""

    kind = "diffusevae_vae"
    config_class = VAEConfig
    unfinished_hint = "resume its training (xrg train diffusevae --stage vae ... --resume)"

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        channels = config.channels()
        cond_dim = config.condition.cond_dim
        self.condition = ConditionEncoder(config.condition)
        layers: list[nn.Module] = [_block(1, channels[0])]
        layers += [_block(a, b, stride=2) for a, b in zip(channels[:-1], channels[1:])]
        self.encoder = nn.Sequential(*layers, nn.Flatten())
        flat = channels[-1] * 16
        self.to_posterior = nn.Linear(flat + cond_dim, 2 * config.latent_dim)
        self.from_latent = nn.Sequential(nn.Linear(config.latent_dim + cond_dim, flat), nn.SiLU())
        up: list[nn.Module] = []
        for a, b in zip(channels[::-1][:-1], channels[::-1][1:]):
            up += [nn.Upsample(scale_factor=2, mode="nearest"), _block(a, b)]
        self.decoder = nn.Sequential(*up, nn.Conv2d(channels[0], 1, 3, padding=1))

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior's mean and log-variance ``[B, latent_dim]`` of images ``x`` under condition ``c``."""
        mean, logvar = self.to_posterior(torch.cat([self.encoder(x), c], dim=1)).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 1, S, S]`` (model range, unclamped) from latents ``z`` under ``c``."""
        top = self.config.channels()[-1]
        return self.decoder(self.from_latent(torch.cat([z, c], dim=1)).view(-1, top, 4, 4))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> VAEOutput:
        """Encode, draw ``z`` by the reparameterisation trick, decode."""
        mean, logvar = self.encode(x, c)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        return VAEOutput(self.decode(z, c), mean, logvar)

    def reconstruct(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The decoded posterior mean of ``x`` (no sampling): the DDPM's condition in training."""
        return self.decode(self.encode(x, c)[0], c)

    def sample(self, c: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decoded prior samples, one per row of ``c``."""
        z = torch.randn(c.shape[0], self.config.latent_dim, generator=generator, device="cpu").to(c.device)
        return self.decode(z, c)


def elbo_terms(x: torch.Tensor, out: VAEOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image reconstruction error (summed squared error) and KL divergence to N(0, I), batch means."""
    reconstruction = (out.reconstruction - x).pow(2).flatten(1).sum(1).mean()
    kl = 0.5 * (out.mean.pow(2) + out.logvar.exp() - 1.0 - out.logvar).sum(1).mean()
    return reconstruction, kl


# --------------------------------------------------------------------------------------
# The noise schedule and the samplers (§3.1.2)
# --------------------------------------------------------------------------------------


def make_betas(schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """β_1..β_T (float64): ``linear`` from ``beta_start`` to ``beta_end`` scaled to T = 1000
    (Ho et al.), or ``cosine`` (Nichol & Dhariwal, s = 0.008, β ≤ 0.999)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if timesteps < 1:
        raise ConfigError(f"timesteps must be positive, got {timesteps}")
    if schedule == "linear":
        scale = 1000.0 / timesteps
        return torch.linspace(beta_start * scale, min(beta_end * scale, 0.999), timesteps, dtype=torch.float64)
    s = 0.008
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)


def _at(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values[t]`` shaped to broadcast over ``like`` (``[B, 1, 1, 1]``)."""
    return values.to(like.device)[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule:
    """The forward process q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) for t = 0..T−1, and its posterior."""

    def __init__(self, schedule: str, timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> None:
        self.timesteps = timesteps
        self.betas = make_betas(schedule, timesteps, beta_start, beta_end)
        self.alphas = 1.0 - self.betas
        self.alpha_bar = torch.cumprod(self.alphas, dim=0)
        self.alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alpha_bar[:-1]])
        #: the variance of q(x_{t-1} | x_t, x_0), β̃_t (0 at t = 0)
        self.posterior_variance = self.betas * (1.0 - self.alpha_bar_prev) / (1.0 - self.alpha_bar)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε."""
        return _at(self.alpha_bar.sqrt(), t, x0) * x0 + _at((1 - self.alpha_bar).sqrt(), t, x0) * noise

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x̂_0 = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t."""
        return (x_t - _at((1 - self.alpha_bar).sqrt(), t, x_t) * eps) / _at(self.alpha_bar.sqrt(), t, x_t)

    def posterior_mean(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The mean of q(x_{t-1} | x_t, x_0)."""
        a, ab, ab_prev = self.alphas, self.alpha_bar, self.alpha_bar_prev
        c0 = _at(ab_prev.sqrt() * self.betas / (1 - ab), t, x_t)
        ct = _at(a.sqrt() * (1 - ab_prev) / (1 - ab), t, x_t)
        return c0 * x0 + ct * x_t

    def ddim_timesteps(self, steps: int) -> list[int]:
        """``steps`` timesteps from T−1 down to 0, evenly spaced (``steps = T``: every one)."""
        if not 1 <= steps <= self.timesteps:
            raise ConfigError(f"steps must be between 1 and the schedule's {self.timesteps} timesteps, got {steps}")
        points = torch.linspace(0, self.timesteps - 1, steps, dtype=torch.float64).round().long()
        return sorted(set(points.tolist()), reverse=True)


# --------------------------------------------------------------------------------------
# The UNet
# --------------------------------------------------------------------------------------


@dataclass
class UNetConfig:
    """The ε-network and its noise schedule (the schedule is part of the model: sampling needs it)."""

    image_size: int = 64
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level per entry, halving the resolution between levels
    num_res_blocks: int = 1
    attention: bool = True  # self-attention at the lowest resolution
    dropout: float = 0.0
    schedule: str = "linear"
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    condition: ConditionConfig = field(default_factory=ConditionConfig)

    def __post_init__(self) -> None:
        _levels(self.image_size)
        if not self.channel_mults or any(m < 1 for m in self.channel_mults) or self.base_channels < 1:
            raise ConfigError(f"need base_channels >= 1 and positive channel_mults, got {self.channel_mults}")
        if self.image_size >> (len(self.channel_mults) - 1) < 4:
            raise ConfigError(
                f"{len(self.channel_mults)} levels halve a {self.image_size}² image below 4²: use fewer channel_mults"
            )
        if self.num_res_blocks < 1 or not 0 <= self.dropout < 1:
            raise ConfigError(
                f"need num_res_blocks >= 1 and dropout in [0, 1), got {self.num_res_blocks}, {self.dropout}"
            )
        make_betas(self.schedule, self.timesteps, self.beta_start, self.beta_end)
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError(f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}")

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, self.timesteps, self.beta_start, self.beta_end)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of integer timesteps (Vaswani et al.; the DDPM's)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float().unsqueeze(1) * frequencies.unsqueeze(0)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ResBlock(nn.Module):
    """Two 3×3 convolutions; the embedding scales and shifts the second group norm (adaptive GN)."""

    def __init__(self, in_channels: int, out_channels: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_channels), in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_channels)
        self.norm2 = nn.GroupNorm(_groups(out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.attention = nn.MultiheadAttention(channels, num_heads=1, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """ε̂(x_t, t, x_vae, c): ``[x_t ; x_vae]`` in, the predicted noise out (see the module docstring)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        base = config.base_channels
        emb_dim = 4 * base
        self.condition = ConditionEncoder(config.condition)
        self.time = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond = nn.Linear(config.condition.cond_dim, emb_dim)
        self.conv_in = nn.Conv2d(2, base, 3, padding=1)
        levels = [base * m for m in config.channel_mults]
        self.down = nn.ModuleList()
        skips, channels = [base], base
        for i, width in enumerate(levels):
            for _ in range(config.num_res_blocks):
                self.down.append(ResBlock(channels, width, emb_dim, config.dropout))
                channels = width
                skips.append(channels)
            if i < len(levels) - 1:
                self.down.append(nn.Conv2d(channels, channels, 3, stride=2, padding=1))
                skips.append(channels)
        self.mid1 = ResBlock(channels, channels, emb_dim, config.dropout)
        self.mid_attention = SelfAttention(channels) if config.attention else nn.Identity()
        self.mid2 = ResBlock(channels, channels, emb_dim, config.dropout)
        self.up = nn.ModuleList()
        for i, width in reversed(list(enumerate(levels))):
            for _ in range(config.num_res_blocks + 1):
                self.up.append(ResBlock(channels + skips.pop(), width, emb_dim, config.dropout))
                channels = width
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.norm_out = nn.GroupNorm(_groups(channels), channels)
        self.conv_out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, x_vae: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        emb = self.time(timestep_embedding(t, self.config.base_channels)) + self.cond(c)
        h = self.conv_in(torch.cat([x_t, x_vae], dim=1))
        stack = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            stack.append(h)
        h = self.mid2(self.mid_attention(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, stack.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def guided_eps(
    unet: UNet, x_t: torch.Tensor, t: torch.Tensor, x_vae: torch.Tensor, c: torch.Tensor, guidance: float
) -> torch.Tensor:
    """Classifier-free guidance: ε_u + s·(ε_c − ε_u) with ``s = guidance`` (0: unconditional, 1: conditional)."""
    null = unet.condition.null.expand_as(c)
    if guidance == 1.0:
        return unet(x_t, t, x_vae, c)
    if guidance == 0.0:
        return unet(x_t, t, x_vae, null)
    both = unet(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([x_vae, x_vae]), torch.cat([c, null]))
    eps_c, eps_u = both.chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


def _noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(like.shape, generator=generator, device="cpu", dtype=like.dtype).to(like.device)


@torch.no_grad()
def sample_ancestral(
    unet: UNet, schedule: NoiseSchedule, x_vae: torch.Tensor, c: torch.Tensor, *, guidance: float = 1.0,
    generator: torch.Generator | None = None, clip: bool = True, progress: Any = None,
) -> torch.Tensor:  # fmt: skip
    """DDPM ancestral sampling over all T steps: x_{t−1} ~ N(μ̃(x̂_0, x_t), β̃_t) with x̂_0 from ε̂ (clipped to [-1, 1])."""
    x = _noise(x_vae, generator)
    for t in reversed(range(schedule.timesteps)):
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        x0 = schedule.predict_x0(x, tt, guided_eps(unet, x, tt, x_vae, c, guidance))
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
        x = schedule.posterior_mean(x0, x, tt)
        if t > 0:
            x = x + float(schedule.posterior_variance[t].sqrt()) * _noise(x, generator)
        if progress is not None:
            progress.update()
    return x


@torch.no_grad()
def sample_ddim(
    unet: UNet, schedule: NoiseSchedule, x_vae: torch.Tensor, c: torch.Tensor, *, steps: int, eta: float = 0.0,
    guidance: float = 1.0, generator: torch.Generator | None = None, clip: bool = True, progress: Any = None,
) -> torch.Tensor:  # fmt: skip
    """DDIM over ``steps`` timesteps (Song et al. Eq. 12): η = 0 is deterministic given x_T; η = 1 with
    every timestep is ancestral sampling (σ_t² = β̃_t)."""
    x = _noise(x_vae, generator)
    times = schedule.ddim_timesteps(steps)
    for i, t in enumerate(times):
        previous = times[i + 1] if i + 1 < len(times) else -1
        ab = float(schedule.alpha_bar[t])
        ab_prev = float(schedule.alpha_bar[previous]) if previous >= 0 else 1.0
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        eps = guided_eps(unet, x, tt, x_vae, c, guidance)
        x0 = schedule.predict_x0(x, tt, eps)
        if clip:
            x0 = x0.clamp(-1.0, 1.0)
            eps = (x - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        sigma = eta * math.sqrt(max((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev), 0.0))
        x = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _noise(x, generator)
        if progress is not None:
            progress.update()
    return x


# --------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------


@dataclass
class DiffuseVAEConfig:
    """The VAE and the UNet of one DiffuseVAE; they read the same image size and view."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self) -> None:
        if self.vae.image_size != self.unet.image_size:
            raise ConfigError(
                f"the VAE ({self.vae.image_size}²) and the UNet ({self.unet.image_size}²) must read the same image size"
            )

    @classmethod
    def from_run_config(cls, config: Any, vocab_size: int) -> DiffuseVAEConfig:
        return cls(vae=with_vocabulary(config.vae, vocab_size), unet=with_vocabulary(config.unet, vocab_size))


class DiffuseVAE(CheckpointedModel):
    """The VAE, the ε-UNet and the UNet's moving average (which sampling uses)."""

    kind = "diffusevae"
    config_class = DiffuseVAEConfig
    unfinished_hint = "resume its training (xrg train diffusevae --stage ddpm|finetune ... --resume)"

    def __init__(self, config: DiffuseVAEConfig) -> None:
        super().__init__()
        self.config = config
        self.vae = VAE(config.vae)
        self.unet = UNet(config.unet)
        self.unet_ema = UNet(config.unet)
        self.unet_ema.load_state_dict(self.unet.state_dict())
        self.unet_ema.requires_grad_(False)
        self.register_buffer("images_seen", torch.zeros((), dtype=torch.long))
        self.schedule = config.unet.noise_schedule()

    @property
    def view(self) -> str:
        return self.config.vae.view

    @property
    def image_size(self) -> int:
        return self.config.vae.image_size

    def update_ema(self, batch_images: int, half_life_images: float, rampup: float | None) -> float:
        """Move ``unet_ema`` towards ``unet`` (:func:`~xrg.models.base.moving_average_step`, as PGGAN's generator average)."""
        self.images_seen += batch_images
        return moving_average_step(self.unet_ema, self.unet, batch_images, float(self.images_seen), half_life_images,
                                   rampup)  # fmt: skip

    @torch.no_grad()
    def generate(
        self, batch: dict[str, Any], count: int, *, generator: torch.Generator | None = None, steps: int | None = None,
        guidance: float = 1.0, eta: float = 0.0, x_vae: torch.Tensor | None = None, use_ema: bool = True,
        progress: Any = None,
    ) -> dict[str, torch.Tensor]:  # fmt: skip
        """``count`` images of the condition in ``batch``: a VAE prior sample (or the given ``x_vae``),
        refined by the UNet with DDIM in ``steps`` steps (None: ancestral sampling over all T).

        Returns ``{"vae": ..., "image": ...}``, ``[count, 1, S, S]`` in [-1, 1].
        """
        unet = self.unet_ema if use_ema else self.unet
        if x_vae is None:
            x_vae = self.vae.sample(self.vae.condition(batch, count), generator)
        x_vae = x_vae.clamp(-1.0, 1.0)
        c = unet.condition(batch, count)
        if steps is None:
            image = sample_ancestral(unet, self.schedule, x_vae, c, guidance=guidance, generator=generator,
                                     progress=progress)  # fmt: skip
        else:
            image = sample_ddim(unet, self.schedule, x_vae, c, steps=steps, eta=eta, guidance=guidance,
                                generator=generator, progress=progress)  # fmt: skip
        return {"vae": x_vae, "image": image.clamp(-1.0, 1.0)}


def stage_model(stage: str) -> type[CheckpointedModel]:
    """The model class a DiffuseVAE run's stage saves (``vae``: the VAE, ``moco``: MoCo, ``ddpm``/``finetune``: DiffuseVAE)."""
    from xrg.models.moco import MoCo

    models: dict[str, type[CheckpointedModel]] = {"vae": VAE, "moco": MoCo, "ddpm": DiffuseVAE, "finetune": DiffuseVAE}
    if stage not in models:
        raise ConfigError(f"unknown diffusevae stage {stage!r}; the stages are {', '.join(models)}")
    return models[stage]


def finding_labels(names: Sequence[str]) -> torch.Tensor:
    """The multi-hot label vector ``[len(FINDING_KINDS)]`` of finding kind names (already checked)."""
    labels = torch.zeros(len(FINDING_KINDS))
    for name in names:
        labels[FINDING_KINDS.index(name)] = 1.0
    return labels


#: Other names of finding sets a condition may use (lower case, spaces for underscores); the
#: empty tuple is the normal chest. The whitepaper's three conditions are "pneumonia",
#: "pleural effusion" and "healthy lungs".
CONDITION_ALIASES: dict[str, tuple[str, ...]] = {
    "normal": (),
    "healthy": (),
    "healthy lungs": (),
    "no finding": (),
    "no findings": (),
    "effusion": ("pleural_effusion",),
    "pneumonia": ("opacity",),
    "pneumonia-like opacity": ("opacity",),
    "consolidation": ("opacity",),
}


def parse_condition(text: str) -> tuple[str, ...]:
    """The finding kinds of a condition like ``"pleural effusion; cardiomegaly"`` (``;`` or ``,`` between
    findings; ``normal`` for none), in :data:`~xrg.data.findings.FINDING_KINDS` order.

    An unknown name is refused with :class:`~xrg.errors.ConfigError` listing the conditions.
    """
    if not isinstance(text, str) or not text.strip():
        raise ConfigError("a condition names one or more findings, e.g. 'pleural effusion; cardiomegaly', or 'normal'")
    kinds: set[str] = set()
    for part in text.replace(",", ";").split(";"):
        name = " ".join(part.strip().lower().replace("_", " ").split())
        if not name:
            continue
        if name in CONDITION_ALIASES:
            kinds.update(CONDITION_ALIASES[name])
        elif name.replace(" ", "_") in FINDING_KINDS:
            kinds.add(name.replace(" ", "_"))
        else:
            known = [kind.replace("_", " ") for kind in FINDING_KINDS] + sorted(CONDITION_ALIASES)
            raise ConfigError(f"unknown condition {part.strip()!r}; the conditions are: {', '.join(known)}")
    return tuple(kind for kind in FINDING_KINDS if kind in kinds)
