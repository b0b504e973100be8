"""Training the Table-1 baselines (GAN-INT-CLS, StackGAN, AttnGAN) with XRayGAN's report encoder.

The paper compares XRayGAN with three text-to-image GANs "given the same hierarchical report
encoder". Here each baseline (networks in :mod:`xrg.models.baselines`) is trained with an
HAE built from scratch (:func:`xrg.models.encoder.build_encoder`, ``kind="hierarchical"``)
and trained jointly with its generators, as in XRayGAN, on the train split only. Both views
are generated, one generator and discriminator (per stage) per view, from one shared report
condition. All losses are the originals' non-saturating binary cross-entropies; Adam with
``lr`` 2e-4 and β = (0.5, 0.999), the learning rate halved every ``lr_decay_every`` (100)
epochs of a phase (GAN-INT-CLS and StackGAN; AttnGAN kept it fixed: ``lr_decay: 1``).

* ``gan_int_cls`` (Reed et al. 2016), one phase at the final size. **GAN-CLS**, the
  matching-aware discriminator: ``L_D = BCE(D(x, c), 1) + ½·[BCE(D(G(z, c), c), 0) +
  mismatch_weight · BCE(D(x, c_wrong), 0)]`` where ``c_wrong`` is the report of another case of
  the batch, of another patient (:func:`mismatched_partners`). **GAN-INT**: the generator is also
  trained on interpolated reports, ``L_G = BCE(D(G(z, c), c), 1) + BCE(D(G(z', c_β), c_β), 1)``
  with ``c_β = β·c₁ + (1 − β)·c₂``, β = 0.5, ``c₂`` the mismatched partner's report.
* ``stackgan`` (Zhang et al. 2017), two phases: Stage I at ``base_size`` for
  ``round(stage1_fraction · num_epochs)`` epochs (at least 1), then Stage II at the final size
  for the rest, with everything that makes the Stage-I image — the encoder, Stage I's CA and
  generators — frozen (eval mode, no gradients; StackGAN's text encoder was fixed throughout).
  Each stage's discriminators have the matching-aware loss above; the generator adds
  ``kl_weight`` (2 in the original) × the KL term of the stage's conditioning augmentation.
* ``attngan`` (Xu et al. 2018), one phase training the whole cascade end to end. Every stage's
  discriminator has AttnGAN's loss, ``L_D = ½·[BCE(D_u(x), 1) + BCE(D_c(x, c), 1)] +
  ⅓·[BCE(D_u(x̂), 0) + BCE(D_c(x̂, c), 0) + mismatch_weight · BCE(D_c(x, c_wrong), 0)]``; the
  generator sums ``BCE(D_u(x̂), 1) + BCE(D_c(x̂, c), 1)`` over the stages, plus ``kl_weight`` ×
  the CA KL term (1 in AttnGAN's code). The DAMSM term is left out (see
  :mod:`xrg.models.baselines`).

The discriminators see ``c`` detached; the encoder learns from the generator losses, as in
XRayGAN. ``rec_weight`` (default 0: the originals have no such term) adds ``rec_weight ×
Σ MSE(fake, real)`` over views and trained stages to the generator loss, so the baselines
can be given XRayGAN's L2 × 100 for a comparison with equal supervision; ``rec_loss`` is
logged either way. Real targets of lower stages are the real images area-downsampled.

Runs behave like XRayGAN runs: both go through the one loop of :mod:`xrg.train.loop`, each
telling it what it does through its :class:`~xrg.train.loop.Step` — here
:class:`BaselineStep` (the optimizers and frozen parts of a phase, the batch size,
:func:`train_step`, the epoch-end BatchNorm recalibration and sample grid, the ``method``
every metric row and checkpoint carries) — and :class:`BaselineTrainer` builds the data, the
model and that step and is otherwise :class:`~xrg.train.loop.PhasedTrainer`. So a new run
refuses a directory holding a checkpoint, ``resume=True`` continues one to the bit on CPU
(from the exact batch); ``RUN/checkpoint.pt`` is written at the start, after every epoch and
on SIGINT/SIGTERM; a NaN or infinite loss raises :class:`~xrg.errors.TrainingDiverged`
before any step on it; every epoch appends a row to ``RUN/metrics.jsonl`` (``kind:
"baseline"``), re-estimates the generators' BatchNorm statistics and writes
``RUN/samples/stage<k>_<size>px.png``. The model of a run,
:class:`~xrg.models.baselines.BaselineModel`, saves its checkpoint and loads from one
(:meth:`~xrg.models.base.CheckpointedModel.from_checkpoint`); the evaluation reads it as a
:class:`~xrg.eval.generators.PairGenerator`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.config import config_from_mapping, merge_settings, merge_settings_into
from xrg.data.datasets import resize_image
from xrg.errors import ConfigError
from xrg.models.baselines import (
    BASELINE_METHODS,
    VIEWS,
    BaselineConfig,
    BaselineModel,
    BaselineModelConfig,
    ConditionalDiscriminator,
    TextCondition,
    kl_divergence,
)
from xrg.models.encoder import EncoderConfig
from xrg.profiles import Profile
from xrg.train.loop import (
    MONITOR_KEYS,
    Optimizers,
    PhasedTrainer,
    Position,
    RunFiles,
    Step,
    TrainData,
    frozen,
    generator_update,
    real_images,
    recalibrate_generators,
    require_finite,
)
from xrg.train.vcn import negative_partners

__all__ = [
    "BASELINE_METHODS", "BaselineModel", "BaselineTrainConfig", "BaselineTrainer", "mismatched_partners",
    "training_phases",
]  # fmt: skip

#: Keys of every line of ``RUN/metrics.jsonl`` (losses a method lacks are null).
METRIC_KEYS: tuple[str, ...] = (
    "kind", "method", "phase", "stage", "image_size", "epoch", "step", "d_loss", "d_wrong", "g_loss", "adv_loss",
    "kl_loss", "rec_loss", "lr", "seconds", "images_per_s", *MONITOR_KEYS,
)  # fmt: skip
LOSS_KEYS: tuple[str, ...] = ("d_loss", "d_wrong", "g_loss", "adv_loss", "kl_loss", "rec_loss")
INTERPOLATION_BETA = 0.5  # GAN-INT's β (Reed et al. §4.3)


@dataclass
class BaselineTrainConfig:
    """Everything one baseline run is built and trained from; defaults follow the originals at 256².

    ``model`` is the architecture, the method included
    (:class:`~xrg.models.baselines.BaselineModelConfig`, its ``vocab_size`` left unset: the
    trainer takes it from the data); the other fields are the training's. ``num_epochs``
    counts passes over the train split in all; StackGAN gives
    ``round(stage1_fraction · num_epochs)`` (at least 1) to Stage I and the rest to Stage II.
    """

    model: BaselineModelConfig = field(default_factory=BaselineModelConfig)
    # objective
    kl_weight: float = 2.0  # StackGAN's λ (AttnGAN's code: 1)
    mismatch_weight: float = 1.0  # the (real image, wrong report) term of the discriminator
    rec_weight: float = 0.0  # L2 to the report's real image (XRayGAN: 100); the originals have none
    # optimisation
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    lr_decay: float = 0.5
    lr_decay_every: int = 100  # epochs of a phase
    batch_size: int = 64
    num_epochs: int = 600
    stage1_fraction: float = 0.5  # StackGAN: share of the epochs for Stage I
    # run
    seed: int = 0
    num_samples: int = 4  # validation cases in each sample grid
    bn_recalibration_batches: int = 20  # train batches re-estimating BatchNorm statistics each epoch (0: off)
    # train cases the run sees: a subset of the train split drawn with the run's seed, the same at
    # every stage and for every run with that seed (xrg.train.loop.train_subset); 0: all of them
    train_cases: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.model, BaselineModelConfig):
            raise ConfigError(f"model must be a BaselineModelConfig, got {self.model!r}")
        if self.model.vocab_size:
            raise ConfigError(
                f"a run config's model leaves vocab_size unset (0), got {self.model.vocab_size}: "
                "the trainer takes it from the data's vocabulary"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 < self.lr_decay <= 1 or self.lr_decay_every < 1:
            raise ConfigError(
                f"need 0 < lr_decay <= 1 and lr_decay_every >= 1, got {self.lr_decay}, {self.lr_decay_every}"
            )
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be at least 2 (BatchNorm, mismatched pairs), got {self.batch_size}")
        if self.num_epochs < 1:
            raise ConfigError(f"num_epochs must be at least 1, got {self.num_epochs}")
        if not 0 < self.stage1_fraction < 1:
            raise ConfigError(f"stage1_fraction must be in (0, 1), got {self.stage1_fraction}")
        if self.method == "stackgan" and self.num_epochs < 2:
            raise ConfigError(f"stackgan needs num_epochs >= 2 (Stage I, then Stage II), got {self.num_epochs}")
        for name in ("kl_weight", "mismatch_weight", "rec_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
        if isinstance(self.train_cases, bool) or not isinstance(self.train_cases, int) or self.train_cases < 0:
            raise ConfigError(
                f"train_cases must be an integer >= 0 (0: the whole train split), got {self.train_cases!r}"
            )
        if self.num_samples < 0 or self.bn_recalibration_batches < 0:
            raise ConfigError(
                f"num_samples and bn_recalibration_batches must be >= 0, got {self.num_samples}, "
                f"{self.bn_recalibration_batches}"
            )

    @property
    def method(self) -> str:
        """The baseline this run trains (``model.method``)."""
        return self.model.method

    @classmethod
    def from_profile(
        cls, profile: Profile, method: str, overrides: dict[str, Any] | None = None
    ) -> BaselineTrainConfig:
        """The profile's ``baselines:`` section for ``method``, then ``overrides`` (nested or dotted keys).

        Both may hold per-method sub-sections (``attngan: {kl_weight: 1.0}``, ``attngan.model.hidden``)
        that override their common settings for that method only; the seed defaults to the profile's.
        """
        where = f"baselines settings of profile {profile.name!r}"
        if method not in BASELINE_METHODS:
            raise ConfigError(f"method must be one of {BASELINE_METHODS}, got {method!r}")
        values: dict[str, Any] = {"seed": profile.seed}
        for source in (merge_settings(profile.section("baselines")), merge_settings(overrides or {})):
            merge_settings_into(values, {k: v for k, v in source.items() if k not in BASELINE_METHODS})
            specific = source.get(method, {})
            if not isinstance(specific, dict):
                raise ConfigError(f"{where}: baselines.{method} must be a mapping of settings, got {specific!r}")
            merge_settings_into(values, specific)
        model = values.get("model", {})
        if isinstance(model, dict) and "method" in model:
            raise ConfigError(f"{where}: baselines.model.method is set by the method trained ({method}), not here")
        if isinstance(model, dict):
            values["model"] = {**model, "method": method}
        return config_from_mapping(cls, values, where=where, prefix="baselines")

    def model_for(self, vocab_size: int) -> BaselineModelConfig:
        """The architecture this run trains, for a vocabulary of ``vocab_size`` words."""
        return self.model.with_vocabulary(vocab_size)

    def encoder_config(self, vocab_size: int) -> EncoderConfig:
        return self.model_for(vocab_size).encoder_config()

    def model_config(self) -> BaselineConfig:
        return self.model.network_config()


@dataclass(frozen=True)
class BaselinePhase:
    """One block of training: generator stages up to ``stage`` make ``image_size`` images."""

    name: str  # "gan" (GAN-INT-CLS), "stage1"/"stage2" (StackGAN), "joint" (AttnGAN)
    stage: int
    image_size: int
    num_epochs: int

    def lr_at(self, epoch: int, config: BaselineTrainConfig) -> float:
        return config.lr * config.lr_decay ** (epoch // config.lr_decay_every)


def training_phases(config: BaselineTrainConfig) -> list[BaselinePhase]:
    """The phases of a run, in order (see the module docstring)."""
    sizes = config.model_config().stage_sizes
    if config.method == "stackgan":
        first = max(1, int(config.num_epochs * config.stage1_fraction + 0.5))
        first = min(first, config.num_epochs - 1)
        return [
            BaselinePhase("stage1", 0, sizes[0], first),
            BaselinePhase("stage2", 1, sizes[1], config.num_epochs - first),
        ]
    name = "gan" if config.method == "gan_int_cls" else "joint"
    return [BaselinePhase(name, len(sizes) - 1, sizes[-1], config.num_epochs)]


def mismatched_partners(patient_ids: Sequence[str], generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """For GAN-CLS's wrong reports: ``(rows, partners)``, the report of case ``partners[k]`` pairs with the
    image of case ``rows[k]``; never the same case or the same patient (see
    :func:`xrg.train.vcn.negative_partners`: a random cyclic order, clashing rows dropped)."""
    return negative_partners(list(patient_ids), generator)


# --------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------


def make_optimizers(
    model: BaselineModel, phase: BaselinePhase, phase_index: int, config: BaselineTrainConfig
) -> Optimizers:
    betas = tuple(config.betas)
    generator_parameters = [p for m in model.trained_generator_modules(phase) for p in m.parameters()]
    return Optimizers(
        phase_index,
        torch.optim.Adam(generator_parameters, lr=config.lr, betas=betas),
        torch.optim.Adam(model.discriminator_parameters(phase), lr=config.lr, betas=betas),
    )


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def discriminator_loss(
    discriminator: ConditionalDiscriminator,
    real: torch.Tensor,
    fake: torch.Tensor,
    c: torch.Tensor,
    rows: torch.Tensor,
    partners: torch.Tensor,
    mismatch_weight: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The matching-aware loss of one discriminator (GAN-CLS; with AttnGAN's unconditional terms
    when it has that head) and its (real image, wrong report) term, for logging.

    ``fake`` and ``c`` should come detached. Rows of ``real`` pair with the reports ``c[partners]``.
    """
    real_features = discriminator.features(real)
    fake_features = discriminator.features(fake)
    real_right = _bce(discriminator.cond_logits(real_features, c), 1.0)
    fake_right = _bce(discriminator.cond_logits(fake_features, c), 0.0)
    wrong = torch.zeros((), device=real.device)
    if rows.numel():
        wrong = _bce(discriminator.cond_logits(real_features[rows], c[partners]), 0.0)
    if discriminator.uncond is None:
        return real_right + 0.5 * (fake_right + mismatch_weight * wrong), wrong
    real_uncond = _bce(discriminator.uncond_logits(real_features), 1.0)
    fake_uncond = _bce(discriminator.uncond_logits(fake_features), 0.0)
    loss = 0.5 * (real_uncond + real_right) + (fake_uncond + fake_right + mismatch_weight * wrong) / 3.0
    return loss, wrong


def generator_adversarial_loss(
    discriminator: ConditionalDiscriminator, fake: torch.Tensor, c: torch.Tensor
) -> torch.Tensor:
    """Non-saturating ``BCE(D(fake, c), 1)`` (+ the unconditional term for AttnGAN's discriminators)."""
    features = discriminator.features(fake)
    loss = _bce(discriminator.cond_logits(features, c), 1.0)
    if discriminator.uncond is not None:
        loss = loss + _bce(discriminator.uncond_logits(features), 1.0)
    return loss


def train_step(
    model: BaselineModel,
    batch: dict[str, Any],
    phase: BaselinePhase,
    optimizers: Optimizers,
    config: BaselineTrainConfig,
) -> dict[str, float]:
    """One discriminator update, then one generator update on the same batch (module docstring)."""
    device = model.device
    full = real_images(batch, VIEWS, device)
    condition, output = model.generate_for(phase, batch)
    fakes = model.stage_images(phase, output)
    sizes = model.net_config.stage_sizes
    reals = {stage: {view: resize_image(full[view], sizes[stage]) for view in VIEWS} for stage in fakes}
    # Area-downsampling [-1, 1] images is linear, so it commutes with to_model_range.
    rows, partners = mismatched_partners(batch["patient_id"], torch.default_generator)
    rows, partners = rows.to(device), partners.to(device)
    critics = {(stage, view): model.discriminators[view][str(stage)] for stage in fakes for view in VIEWS}
    detached = condition.c.detach()

    d_loss = torch.zeros((), device=device)
    d_wrong = torch.zeros((), device=device)
    for (stage, view), critic in critics.items():
        loss, wrong = discriminator_loss(
            critic, reals[stage][view], fakes[stage][view].detach(), detached, rows, partners, config.mismatch_weight
        )
        d_loss, d_wrong = d_loss + loss, d_wrong + wrong.detach() / len(critics)
    require_finite({"d_loss": d_loss}, "discriminator loss")
    optimizers.discriminator.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizers.discriminator.step()

    with frozen(critics.values()):
        adv_loss = sum(
            generator_adversarial_loss(critic, fakes[s][v], condition.c) for (s, v), critic in critics.items()
        )
        if config.method == "gan_int_cls" and rows.numel():
            mixed = INTERPOLATION_BETA * condition.c[rows] + (1.0 - INTERPOLATION_BETA) * condition.c[partners]
            interpolated = model.generator(TextCondition(mixed)).images[-1]
            adv_loss = adv_loss + sum(
                generator_adversarial_loss(critic, interpolated[v], mixed) for (_, v), critic in critics.items()
            )
        rec_loss = sum(F.mse_loss(fakes[s][v], reals[s][v]) for s, v in critics)
        g_loss = adv_loss + config.rec_weight * rec_loss
        losses = {"d_loss": d_loss, "d_wrong": d_wrong, "adv_loss": adv_loss, "rec_loss": rec_loss}
        if output.kl_terms:
            kl_loss = sum(kl_divergence(mu, logvar) for mu, logvar in output.kl_terms)
            g_loss = g_loss + config.kl_weight * kl_loss
            losses["kl_loss"] = kl_loss
        return generator_update(optimizers.generator, losses, g_loss)


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


class BaselineStep(Step):
    """A baseline in the shared loop: one discriminator, then one generator update per batch (module docstring).

    A phase trains :meth:`~xrg.models.baselines.BaselineModel.trained_generator_modules` and
    the discriminators of its stages; what it only reads (StackGAN Stage II: all that makes
    Stage I) is frozen and in eval mode. Metric rows and the checkpoint's progress carry the
    ``method``.
    """

    kind = "baseline"
    metric_keys = METRIC_KEYS
    loss_keys = LOSS_KEYS

    def __init__(
        self,
        config: BaselineTrainConfig,
        phases: list[BaselinePhase],
        data: TrainData,
        model: BaselineModel,
        device: torch.device,
        run_dir: Path,
    ) -> None:
        super().__init__(config, phases, data, model, device, run_dir)
        self.extras = {"method": config.method}

    def optimizers(self, phase: BaselinePhase, phase_index: int) -> Optimizers:
        return make_optimizers(self.model, phase, phase_index, self.config)

    def train_mode(self, phase: BaselinePhase) -> None:
        for module in self.model.frozen_modules(phase):
            module.requires_grad_(False)
        self.model.train_mode(phase)

    def batch_size(self, phase: BaselinePhase) -> int:
        return self.config.batch_size

    def update(self, phase: BaselinePhase, batch: dict[str, Any], optimizers: Optimizers) -> dict[str, float]:
        return train_step(self.model, batch, phase, optimizers, self.config)

    def recalibrate(self, phase: BaselinePhase, position: Position) -> int:
        """Re-estimate the BatchNorm statistics of the generators ``phase`` trains (as XRayGAN does).

        The encoder runs in eval mode (as at generation); the batches and the noise are those
        of :func:`~xrg.train.loop.recalibrate_generators`.
        """
        if self.config.bn_recalibration_batches == 0:
            return 0
        trained = nn.ModuleList(m for m in self.model.trained_generator_modules(phase) if m is not self.model.encoder)
        self.model.eval()
        try:
            return recalibrate_generators(
                trained, self, phase, position, lambda batch, noise: self.model.generate_for(phase, batch, noise)
            )
        finally:
            self.model.train_mode(phase)

    @torch.no_grad()
    def sample_images(self, phase: BaselinePhase, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``phase``'s final images of ``batch`` in eval mode (noise seeded with the run's seed)."""
        self.model.eval()
        try:
            _, output = self.model.generate_for(phase, batch, torch.Generator().manual_seed(self.config.seed))
        finally:
            self.model.train_mode(phase)
        return output.images[-1]

    def phase_label(self, phase: BaselinePhase) -> str:
        return f"{self.config.method}, {phase.name} phase"

    def progress_label(self, phase: BaselinePhase) -> str:
        return f"{self.config.method} {phase.name} ({phase.image_size}px)"


class BaselineTrainer(PhasedTrainer):
    """One baseline run in ``run_dir`` over the data directory ``data_dir`` (module docstring).

    A new run refuses a ``run_dir`` that already holds a checkpoint; ``resume=True``
    continues one, after checking that it was written with the same config and vocabulary.
    This class only builds the run: its :class:`BaselineStep` (``trainer.family``) goes
    through the loop, checkpoints and resume of :class:`~xrg.train.loop.PhasedTrainer`.
    """

    def __init__(
        self,
        config: BaselineTrainConfig,
        data_dir: str | os.PathLike,
        run_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        device = torch.device(device)
        phases = training_phases(config)
        data = TrainData(
            data_dir, (phase.image_size for phase in phases), config.model.max_sentences, config.model.max_words,
            train_cases=config.train_cases, subset_seed=config.seed,
        )  # fmt: skip
        files = RunFiles.check(run_dir, BaselineStep.kind, resume)
        torch.manual_seed(config.seed)
        model = BaselineModel(BaselineModelConfig.from_run_config(config, len(data.vocabulary))).to(device)
        step = BaselineStep(config, phases, data, model, device, files.run_dir)
        super().__init__(step, files, seed=config.seed, device=device, progress=progress, resume=resume)

    def recalibrate(self, phase: BaselinePhase) -> int:
        """Re-estimate the BatchNorm statistics for ``phase`` at the current position (:meth:`BaselineStep.recalibrate`)."""
        return self.family.recalibrate(phase, self.position)

    def write_samples(self, phase: BaselinePhase) -> Path | None:
        """Write the sample grid of ``phase`` (:meth:`BaselineStep.write_samples`)."""
        return self.family.write_samples(phase)
