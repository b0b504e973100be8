"""Training XRayGAN stage by stage (Yang et al. §2.4 objective, §3.2 settings).

The report encoder (§2.1), the two view cascades of the MSCGAN (§2.2) and their patch
critics are trained together in *phases*: optional plain-L2 pre-training at the first
trained stage (the official code gives stage 0 twenty epochs of it), then one adversarial
phase per stage, 32² → 64² → 128² → 256² in the paper. In the phase of stage ``n``:

* what trains: the encoder and both views' generators of stages ``0..n`` with the stage-``n``
  learning rate (Adam, β = (0.9, 0.999)), and the stage-``n`` discriminators of both views with
  the same rate (``critic_lr_scale`` times it and Adam betas ``critic_betas``, when set: two
  time-scale updates). Earlier stages keep training, as in the official code; later stages are
  not used yet. Optimizers start fresh in every phase; the learning rate is multiplied by
  ``lr_decay`` (0.2) every ``lr_decay_every`` (20) epochs of the phase.
* targets: the real images downsampled to the stage size by area averaging (the dataset's
  ``image_size``), mapped to the models' [-1, 1]; the critics always see these. The L2 term
  compares with them too (``rec_target: posed``, the paper), or with the same findings drawn
  into the average patient in a fixed pose (``rec_target: canonical``), a target the text
  predicts: a posed render is mostly patient and pose, which the best L2 answer averages away.
* critic loss, per view (WGAN-GP, Gulrajani et al.):
  ``D(fake) − D(real) + λ·GP`` with λ = ``gp_weight`` (10), ``n_critic`` (1) critic updates per
  generator update on the same batch; the critic sees the condition ``c`` detached.
* generator loss: ``adv_weight · Σ_views −D(fake) + rec_weight · Σ_views MSE(fake, real)
  − vc_weight · mean P(same patient | fake frontal, fake lateral)`` with weights 1, 100 and 1
  (§3.2). With ``aux_weight > 0`` (not in the paper; AC-GAN, Odena et al. 2017) every critic
  also has a findings head on its image features: the critic loss adds ``aux_weight`` × its
  BCE against the case's finding labels on the real images, the generator loss the same BCE of
  the head on the generated images against the report's labels. The view-consistency reward
  comes from the frozen VCN of the stage's resolution (:mod:`xrg.train.vcn`): gradients flow through it into the generated images, never into
  its weights. ``vc_weight = 0`` is the "w/o VCN" ablation and needs no VCN. With
  ``findings_weight > 0`` (not in the paper) a frozen findings reward, a search classifier
  trained on the train split (``findings_reward``; never the evaluator), adds
  ``findings_weight`` × its BCE of the generated image of its view against the report's labels,
  in pre-training as well.

The ablations of Table 2 are config values: ``model.encoder_kind: flat`` (w/o HAE),
``model.generator_kind: single_shot`` (w/o MSCGAN: one phase at the final size with the last
stage's learning rate, batch size and epochs) and ``vc_weight: 0`` (w/o VCN).

Runs are resumable to the bit on CPU: a checkpoint (``RUN/checkpoint.pt``, written at the
start, after every epoch and when stopped) holds the weights, the optimizer states, the
phase/epoch/batch position, the torch RNG state and the shuffle generator's state at the
start of the epoch; a resumed run redraws that epoch's order and skips the batches already
done. Per-epoch metrics are appended to ``RUN/metrics.jsonl``; sample grids (real and
generated, both views) are written to ``RUN/samples/``. A NaN or infinite loss stops the run
with :class:`~xrg.errors.TrainingDiverged` before any optimizer step is taken on it.

The code has three parts: the config and its phases (:class:`XRayGANTrainConfig`,
:func:`training_phases`); the steps (:func:`pretrain_step`, :func:`gan_step`), plain
functions of the model, a batch and the optimizers; and the run. :class:`XRayGANStep` is
what XRayGAN tells the shared loop of :mod:`xrg.train.loop` (its optimizers, batch size,
step, epoch-end BatchNorm recalibration and sample grid, and the VCN hashes every checkpoint
carries); :class:`XRayGANTrainer` builds the data, the VCNs, the model and that step, and is
otherwise :class:`~xrg.train.loop.PhasedTrainer`, whose loop, checkpoints and resume are the
baselines' too.

The model of a run, :class:`~xrg.models.xraygan.XRayGAN`, is built from the run config's
``model`` with the data's vocabulary size (:meth:`~xrg.models.xraygan.XRayGANModelConfig.from_run_config`) and writes
the checkpoints itself (:meth:`~xrg.models.base.CheckpointedModel.save`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xrg.checkpoint import read_checkpoint
from xrg.config import config_from_mapping, merge_settings
from xrg.data.findings import FINDING_KINDS
from xrg.errors import CheckpointError, ConfigError
from xrg.latent.search import SearchClassifier
from xrg.models.encoder import EncoderConfig
from xrg.models.vcn import ViewConsistencyNet
from xrg.models.xraygan import XRayGAN, XRayGANConfig, XRayGANModelConfig, gradient_penalty
from xrg.profiles import Profile
from xrg.train.loop import (  # noqa: F401 (CHECKPOINT_NAME, METRICS_NAME, SAMPLES_DIR, sample_grid: re-exported)
    CHECKPOINT_NAME,
    METRICS_NAME,
    MONITOR_KEYS,
    REC_TARGETS,
    SAMPLES_DIR,
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
    reconstruction_targets,
    require_finite,
    sample_grid,
)
from xrg.train.pathology import load_search_classifier
from xrg.train.vcn import VCNResult, VCNTrainConfig, ensure_vcns, file_sha256

#: Keys of every line of ``RUN/metrics.jsonl`` (losses absent from a phase are null).
METRIC_KEYS: tuple[str, ...] = (
    "kind", "phase", "stage", "image_size", "epoch", "step", "d_loss", "g_loss", "adv_loss", "rec_loss",
    "vc_loss", "vc_prob", "gp", "aux_d_loss", "aux_g_loss", "findings_loss", "lr", "seconds", "images_per_s",
    *MONITOR_KEYS,
)  # fmt: skip
LOSS_KEYS: tuple[str, ...] = (
    "d_loss", "g_loss", "adv_loss", "rec_loss", "vc_loss", "vc_prob", "gp", "aux_d_loss", "aux_g_loss",
    "findings_loss",
)  # fmt: skip


@dataclass
class XRayGANTrainConfig:
    """Everything one XRayGAN run is built and trained from; defaults are the paper's (§3.2).

    ``model`` is the architecture (:class:`~xrg.models.xraygan.XRayGANModelConfig`, its
    ``vocab_size`` left unset: the trainer takes it from the data); the other fields are the
    training's. Per-stage settings (``lr``, ``batch_size``, ``num_epochs``) have one entry per
    stage; a ``single_shot`` generator uses the last entry only.
    """

    model: XRayGANModelConfig = field(default_factory=XRayGANModelConfig)
    # objective (§2.4, weights of §3.2)
    adv_weight: float = 1.0
    rec_weight: float = 100.0
    vc_weight: float = 1.0  # 0: the w/o VCN ablation
    gp_weight: float = 10.0  # WGAN-GP λ
    n_critic: int = 1  # critic updates per generator update
    # AC-GAN findings term (needs model.critic_classes): the critics' findings heads learn the
    # case's finding labels on the real images (BCE), the generator pays the same BCE of its
    # images' logits against the report's labels; 0: off (the paper)
    aux_weight: float = 0.0
    # A frozen findings reward (not in the paper): a search classifier trained by `xrg train
    # pathology` on the train split (never the evaluator) reads the generated image of its view, and
    # the generator pays ``findings_weight`` × its BCE against the report's labels, in pre-training and
    # in the adversarial phases (as the VCN's reward, gradients reach the images, never its weights)
    findings_weight: float = 0.0
    findings_reward: str = ""  # that classifier's checkpoint
    # optimisation (§3.2)
    lr: tuple[float, ...] = (3e-4, 3e-4, 2e-4, 1e-4)  # per stage
    batch_size: tuple[int, ...] = (96, 56, 24, 12)  # per stage
    num_epochs: tuple[int, ...] = (90, 90, 120, 120)  # per stage (official code)
    pretrain_epochs: int = 20  # plain-L2 epochs before the first adversarial phase
    lr_decay: float = 0.2
    lr_decay_every: int = 20  # epochs
    betas: tuple[float, float] = (0.9, 0.999)
    # the critics' optimiser (the paper's: the generators'): a learning rate ``critic_lr_scale``
    # times the stage's (TTUR, Heusel et al. 2017) and Adam betas ``critic_betas`` (None: ``betas``)
    critic_lr_scale: float = 1.0
    critic_betas: tuple[float, float] | None = None
    # the L2 target (xrg.train.loop.REC_TARGETS): the case's posed render (the paper) or its
    # findings in the average patient in a fixed pose (needs `xrg data build --canonical-targets`)
    rec_target: str = "posed"
    # run
    seed: int = 0
    num_samples: int = 4  # validation cases in each sample grid
    bn_recalibration_batches: int = 20  # train batches that re-estimate BatchNorm statistics each epoch (0: off)
    # train cases the run sees: a subset of the train split drawn with the run's seed, the same at
    # every stage and for every run with that seed (xrg.train.loop.train_subset); 0: all of them
    train_cases: int = 0
    # arithmetic of the training steps (not in the paper; the defaults are the plain way):
    # "bfloat16" runs them under torch.autocast (convolutions and matrix products in bfloat16,
    # weights, losses and optimizer state in float32; bfloat16 needs no loss scaling), and
    # channels_last stores the generators', critics' and VCNs' activations and weights NHWC
    precision: str = "float32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not isinstance(self.channels_last, bool):
            raise ConfigError(f"channels_last must be true or false, got {self.channels_last!r}")
        if not isinstance(self.model, XRayGANModelConfig):
            raise ConfigError(f"model must be an XRayGANModelConfig, got {self.model!r}")
        if self.model.vocab_size:
            raise ConfigError(
                f"a run config's model leaves vocab_size unset (0), got {self.model.vocab_size}: "
                "the trainer takes it from the data's vocabulary"
            )
        num_stages = self.model.num_stages
        for name in ("lr", "batch_size", "num_epochs"):
            values = getattr(self, name)
            if len(values) != num_stages:
                raise ConfigError(f"{name} needs one value per stage ({num_stages}), got {list(values)}")
            if not all(v > 0 for v in values):
                raise ConfigError(f"{name} values must be positive, got {list(values)}")
        if min(self.batch_size) < 2:
            raise ConfigError(f"batch sizes must be at least 2 (BatchNorm), got {list(self.batch_size)}")
        for name in (
            "adv_weight",
            "rec_weight",
            "vc_weight",
            "gp_weight",
            "aux_weight",
            "findings_weight",
            "pretrain_epochs",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be non-negative, got {getattr(self, name)}")
        if isinstance(self.train_cases, bool) or not isinstance(self.train_cases, int) or self.train_cases < 0:
            raise ConfigError(
                f"train_cases must be an integer >= 0 (0: the whole train split), got {self.train_cases!r}"
            )
        if self.bn_recalibration_batches < 0:
            raise ConfigError(f"bn_recalibration_batches must be >= 0, got {self.bn_recalibration_batches}")
        if self.n_critic < 1 or self.lr_decay_every < 1 or not 0 < self.lr_decay <= 1 or self.num_samples < 0:
            raise ConfigError(
                "need n_critic >= 1, lr_decay_every >= 1, 0 < lr_decay <= 1 and num_samples >= 0, got "
                f"{self.n_critic}, {self.lr_decay_every}, {self.lr_decay}, {self.num_samples}"
            )
        for name in ("betas", "critic_betas"):
            betas = getattr(self, name)
            if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
                raise ConfigError(f"{name} must be two numbers in [0, 1), got {betas}")
        if self.betas is None:
            raise ConfigError("betas must be two numbers in [0, 1), got None")
        if self.rec_target not in REC_TARGETS:
            raise ConfigError(f"rec_target must be one of {REC_TARGETS}, got {self.rec_target!r}")
        if self.critic_lr_scale <= 0:
            raise ConfigError(f"critic_lr_scale must be positive, got {self.critic_lr_scale}")
        classes = self.model.critic_classes
        if classes not in (0, len(FINDING_KINDS)):
            raise ConfigError(
                f"model.critic_classes must be 0 (no findings head) or the {len(FINDING_KINDS)} finding "
                f"labels of the data, got {classes}"
            )
        if self.findings_weight > 0 and not self.findings_reward:
            raise ConfigError(
                f"findings_weight {self.findings_weight} needs findings_reward: the checkpoint of a search "
                "classifier (xrg train pathology --backbone densenet ...)"
            )
        if self.aux_weight > 0 and not classes:
            raise ConfigError(
                f"aux_weight {self.aux_weight} needs critics with a findings head: "
                f"set model.critic_classes: {len(FINDING_KINDS)}"
            )

    @classmethod
    def from_profile(cls, profile: Profile, overrides: dict[str, Any] | None = None) -> XRayGANTrainConfig:
        """The profile's ``xraygan:`` section plus ``overrides`` (nested or dotted: ``model.hidden``).

        The seed defaults to the profile's.
        """
        values = merge_settings({"seed": profile.seed}, profile.section("xraygan"), overrides or {})
        return config_from_mapping(cls, values, where=f"xraygan settings of profile {profile.name!r}", prefix="xraygan")

    def model_for(self, vocab_size: int) -> XRayGANModelConfig:
        """The architecture this run trains, for a vocabulary of ``vocab_size`` words."""
        return self.model.with_vocabulary(vocab_size)

    def encoder_config(self, vocab_size: int) -> EncoderConfig:
        return self.model_for(vocab_size).encoder_config()

    def model_config(self) -> XRayGANConfig:
        return self.model.network_config()

    @property
    def final_size(self) -> int:
        return self.model.final_size

    @property
    def trained_stages(self) -> tuple[int, ...]:
        """Stages with an adversarial phase: all of them, or only the last for ``single_shot``."""
        return self.model.trained_stages

    def stage_size(self, stage: int) -> int:
        return self.model.stage_size(stage)

    @property
    def vcn_sizes(self) -> tuple[int, ...]:
        """Resolutions that need a VCN: every adversarial stage's, none when ``vc_weight`` is 0."""
        return tuple(self.stage_size(stage) for stage in self.trained_stages) if self.vc_weight > 0 else ()


@dataclass(frozen=True)
class Phase:
    """One block of training at one stage: ``pretrain`` (L2 only) or ``gan``."""

    name: str
    stage: int
    image_size: int
    num_epochs: int
    batch_size: int
    lr: float

    def lr_at(self, epoch: int, config: XRayGANTrainConfig) -> float:
        return self.lr * config.lr_decay ** (epoch // config.lr_decay_every)


def training_phases(config: XRayGANTrainConfig) -> list[Phase]:
    """The phases of a run, in order (see the module docstring)."""
    phases = []
    for stage in config.trained_stages:
        settings = dict(
            stage=stage, image_size=config.stage_size(stage), batch_size=config.batch_size[stage], lr=config.lr[stage]
        )
        if stage == config.trained_stages[0] and config.pretrain_epochs:
            phases.append(Phase("pretrain", num_epochs=config.pretrain_epochs, **settings))
        phases.append(Phase("gan", num_epochs=config.num_epochs[stage], **settings))
    return phases


# --------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------


def make_optimizers(model: XRayGAN, phase: Phase, phase_index: int, config: XRayGANTrainConfig) -> Optimizers:
    betas = tuple(config.betas)
    generator = torch.optim.Adam(model.generator_parameters(phase.stage), lr=phase.lr, betas=betas)
    discriminator = None
    if phase.name == "gan":
        critic_betas = tuple(config.critic_betas) if config.critic_betas is not None else betas
        discriminator = torch.optim.Adam(
            model.discriminator_parameters(phase.stage), lr=phase.lr * config.critic_lr_scale, betas=critic_betas
        )
    return Optimizers(phase_index, generator, discriminator, config.critic_lr_scale)


@dataclass
class FindingsReward:
    """The frozen findings reward: a search classifier of one view (``findings_reward``), and its file's hash."""

    classifier: SearchClassifier
    view: str
    sha256: str

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device) -> FindingsReward:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(
                f"findings_reward {path} does not exist: train one on this data's train split with "
                "xrg train pathology --backbone densenet --profile P --data DATA --out DIR"
            )
        classifier = load_search_classifier(path, device)
        view = str((read_checkpoint(path, "cpu").get("metrics") or {}).get("view", "frontal"))
        return cls(classifier, view, file_sha256(path))

    def loss(self, fake: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The classifier's BCE of the generated image of its view against the cases' labels."""
        return F.binary_cross_entropy_with_logits(self.classifier.logits(fake[self.view]), labels)


def pretrain_step(
    model: XRayGAN,
    batch: dict[str, Any],
    phase: Phase,
    optimizers: Optimizers,
    config: XRayGANTrainConfig,
    reward: FindingsReward | None = None,
) -> dict[str, float]:
    """Plain L2 reconstruction of both views at the phase's stage (no critic, no VCN), plus the findings reward's term."""
    device = next(model.parameters()).device
    target = reconstruction_targets(batch, tuple(model.generator.views), device, config.rec_target)
    fake = model.generate(model.encode(batch).c, phase.stage)
    rec_loss = sum(F.mse_loss(fake[view], target[view]) for view in target)
    g_loss = config.rec_weight * rec_loss
    losses = {"rec_loss": rec_loss}
    if reward is not None:
        losses["findings_loss"] = reward.loss(fake, batch["labels"].to(device))
        g_loss = g_loss + config.findings_weight * losses["findings_loss"]
    return generator_update(optimizers.generator, losses, g_loss)


def judge(
    critic: torch.nn.Module, image: torch.Tensor, c: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``critic``'s patch scores of ``image`` and, with ``labels``, its findings head's BCE against
    them (one pass of the image features); without ``labels`` the BCE is 0 and no head is run."""
    if labels is None:
        return critic(image, c), torch.zeros((), device=image.device)
    score, logits = critic.score_and_classify(image, c)
    return score, F.binary_cross_entropy_with_logits(logits, labels)


def judge_real_and_fake(
    critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor, c: torch.Tensor, labels: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``critic``'s patch scores of the ``real`` and the (detached) ``fake`` images in one call on
    both, and the findings head's BCE on the real ones (0 without ``labels``).

    The critics normalise per sample (InstanceNorm, no BatchNorm), so one batch of 2B gives each
    image the score it gets alone, with one pass through the critic instead of two.
    """
    images = torch.cat([real, fake.detach()])
    both = torch.cat([c, c])
    if labels is None:
        scores = critic(images, both)
        bce = torch.zeros((), device=real.device)
    else:
        scores, logits = critic.score_and_classify(images, both)
        bce = F.binary_cross_entropy_with_logits(logits[: real.shape[0]], labels)
    return scores[: real.shape[0]], scores[real.shape[0] :], bce


#: The arithmetic a run's training steps may use (``XRayGANTrainConfig.precision``).
PRECISIONS = ("float32", "bfloat16")


def step_precision(config: XRayGANTrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of ``config.precision`` on ``device`` (float32: no autocast)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16")


def use_channels_last(config: XRayGANTrainConfig, *modules: nn.Module | None) -> None:
    """Store ``modules``' weights (and so their convolutions' outputs) NHWC when ``config.channels_last``."""
    if config.channels_last:
        for module in modules:
            if module is not None:
                module.to(memory_format=torch.channels_last)


def gan_step(
    model: XRayGAN,
    vcn: ViewConsistencyNet | None,
    batch: dict[str, Any],
    phase: Phase,
    optimizers: Optimizers,
    config: XRayGANTrainConfig,
    reward: FindingsReward | None = None,
) -> dict[str, float]:
    """``n_critic`` WGAN-GP critic updates, then one generator update (module docstring).

    ``vcn`` is the frozen VCN of the stage's size, or None when ``vc_weight`` is 0; ``reward`` the
    frozen findings reward, or None when ``findings_weight`` is 0.
    """
    assert optimizers.discriminator is not None
    stage_key = str(phase.stage)
    critics = {view: model.discriminators[view][stage_key] for view in model.discriminators}
    device = next(model.parameters()).device
    real = real_images(batch, tuple(critics), device)
    target = (
        real if config.rec_target == "posed" else reconstruction_targets(batch, tuple(critics), device, "canonical")
    )
    c = model.encode(batch).c
    fake = model.generate(c, phase.stage)
    condition = c.detach()
    labels = batch["labels"].to(device) if config.aux_weight > 0 else None

    for _ in range(config.n_critic):
        d_loss = torch.zeros((), device=c.device)
        gp_total = torch.zeros((), device=c.device)
        aux_d_loss = torch.zeros((), device=c.device)
        for view, critic in critics.items():
            gp = gradient_penalty(critic, real[view], fake[view], condition)
            real_score, fake_score, real_bce = judge_real_and_fake(critic, real[view], fake[view], condition, labels)
            aux_d_loss = aux_d_loss + real_bce
            wasserstein = fake_score.mean() - real_score.mean()
            d_loss = d_loss + wasserstein + config.gp_weight * gp
            gp_total = gp_total + gp.detach()
        d_loss = d_loss + config.aux_weight * aux_d_loss
        require_finite({"d_loss": d_loss, "gp": gp_total}, "critic loss")
        optimizers.discriminator.zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers.discriminator.step()

    with frozen(critics.values()):
        adv_loss = torch.zeros((), device=c.device)
        aux_g_loss = torch.zeros((), device=c.device)
        for view, critic in critics.items():
            fake_score, fake_bce = judge(critic, fake[view], c, labels)
            adv_loss = adv_loss - fake_score.mean()
            aux_g_loss = aux_g_loss + fake_bce
        rec_loss = sum(F.mse_loss(fake[view], target[view]) for view in critics)
        g_loss = config.adv_weight * adv_loss + config.rec_weight * rec_loss + config.aux_weight * aux_g_loss
        losses = {"d_loss": d_loss, "gp": gp_total, "adv_loss": adv_loss, "rec_loss": rec_loss}
        if labels is not None:
            losses.update(aux_d_loss=aux_d_loss.detach(), aux_g_loss=aux_g_loss)
        if vcn is not None:
            vc_prob = vcn.prob(fake["frontal"], fake["lateral"]).mean()
            g_loss = g_loss - config.vc_weight * vc_prob
            losses.update(vc_loss=-vc_prob, vc_prob=vc_prob)
        if reward is not None:
            findings_loss = reward.loss(fake, batch["labels"].to(device))
            g_loss = g_loss + config.findings_weight * findings_loss
            losses.update(findings_loss=findings_loss)
        return generator_update(optimizers.generator, losses, g_loss)


# --------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------


class XRayGANStep(Step):
    """XRayGAN in the shared loop: pre-training or WGAN-GP phases against the frozen VCNs (module docstring).

    ``vcns`` are the frozen VCNs by image size (none when ``vc_weight`` is 0); every checkpoint
    names their files' hashes, and a resume refuses one trained against other VCNs.
    """

    kind = "xraygan"
    metric_keys = METRIC_KEYS
    loss_keys = LOSS_KEYS

    def __init__(
        self,
        config: XRayGANTrainConfig,
        phases: list[Phase],
        data: TrainData,
        model: XRayGAN,
        vcns: dict[int, VCNResult],
        device: torch.device,
        run_dir: Path,
        reward: FindingsReward | None = None,
    ) -> None:
        super().__init__(config, phases, data, model, device, run_dir)
        self.vcns = vcns
        self.reward = reward
        # Checkpoints name the VCN files they were trained against, so a resume cannot swap them.
        self.vcn_hashes = {str(size): file_sha256(result.path) for size, result in sorted(vcns.items())}

    def optimizers(self, phase: Phase, phase_index: int) -> Optimizers:
        return make_optimizers(self.model, phase, phase_index, self.config)

    def batch_size(self, phase: Phase) -> int:
        return phase.batch_size

    def update(self, phase: Phase, batch: dict[str, Any], optimizers: Optimizers) -> dict[str, float]:
        with step_precision(self.config, self.device):
            if phase.name == "pretrain":
                return pretrain_step(self.model, batch, phase, optimizers, self.config, self.reward)
            vcn = self.vcns[phase.image_size].model if self.config.vc_weight > 0 else None
            return gan_step(self.model, vcn, batch, phase, optimizers, self.config, self.reward)

    def recalibrate(self, phase: Phase, position: Position) -> int:
        """Re-estimate the generators' BatchNorm statistics on train batches at ``phase``'s stage."""

        def forward(batch: dict[str, Any], noise_source: torch.Generator) -> None:
            noise = None
            if self.config.model.noise_dim:
                noise = torch.randn(len(batch["case_id"]), self.config.model.noise_dim, generator=noise_source)
                noise = noise.to(self.device)
            self.model.generate(self.model.encode(batch).c, phase.stage, noise)

        return recalibrate_generators(self.model.generator, self, phase, position, forward)

    @torch.no_grad()
    def sample_images(self, phase: Phase, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """``phase``'s stage images of ``batch`` in eval mode (noise seeded with the run's seed)."""
        self.model.eval()
        try:
            c = self.model.encode(batch).c
            noise = None
            if self.config.model.noise_dim:
                source = torch.Generator().manual_seed(self.config.seed)
                noise = torch.randn(len(batch["case_id"]), self.config.model.noise_dim, generator=source)
                noise = noise.to(self.device)
            return self.model.generate(c, phase.stage, noise)
        finally:
            self.model.train()

    def sample_name(self, phase: Phase) -> str:
        return (
            f"stage{phase.stage}_{phase.image_size}px.png"
            if phase.name == "gan"
            else f"pretrain_{phase.image_size}px.png"
        )

    def checkpoint_extras(self) -> dict[str, Any]:
        extras: dict[str, Any] = {"vcns": self.vcn_hashes}
        if self.reward is not None:
            extras["findings_reward"] = self.reward.sha256
        return extras

    def verify_checkpoint(self, payload: dict[str, Any], path: Path) -> None:
        if payload["vcns"] != self.vcn_hashes:
            raise CheckpointError(
                f"checkpoint {path} was trained against other VCNs than those now in {self.run_dir / 'vcn'} "
                f"(sizes {sorted(payload['vcns'])}); restore them or start a new run"
            )
        if payload.get("findings_reward") != (self.reward.sha256 if self.reward else None):
            raise CheckpointError(
                f"checkpoint {path} was trained against another findings reward than {self.config.findings_reward} "
                "(its file changed); restore it or start a new run"
            )


class XRayGANTrainer(PhasedTrainer):
    """One XRayGAN run in ``run_dir`` over the data directory ``data_dir``.

    A new run refuses a ``run_dir`` that already holds a checkpoint; ``resume=True``
    continues one, after checking that it was written with the same config, the same
    vocabulary and the same VCNs. The VCNs (for ``vc_weight > 0``) are loaded from
    ``RUN/vcn`` or trained there first, with ``vcn_config`` at every trained stage size.
    This class only builds the run: its :class:`XRayGANStep` (``trainer.family``) goes
    through the loop, checkpoints and resume of :class:`~xrg.train.loop.PhasedTrainer`.
    """

    def __init__(
        self,
        config: XRayGANTrainConfig,
        data_dir: str | os.PathLike,
        run_dir: str | os.PathLike,
        vcn_config: VCNTrainConfig | None = None,
        device: str | torch.device = "cpu",
        resume: bool = False,
        progress: bool = True,
    ) -> None:
        device = torch.device(device)
        phases = training_phases(config)
        data = TrainData(
            data_dir, (phase.image_size for phase in phases), config.model.max_sentences, config.model.max_words,
            canonical=config.rec_target == "canonical", train_cases=config.train_cases, subset_seed=config.seed,
        )  # fmt: skip
        files = RunFiles.check(run_dir, XRayGANStep.kind, resume, tidy=(SAMPLES_DIR, "vcn"))
        vcns: dict[int, VCNResult] = {}
        if config.vc_weight > 0:
            base = vcn_config or VCNTrainConfig(seed=config.seed)
            vcn_configs = [dataclasses.replace(base, image_size=size) for size in config.vcn_sizes]
            vcns = ensure_vcns(files.run_dir, data.data_dir, vcn_configs, data.vocabulary, device, progress)
        reward = FindingsReward.load(config.findings_reward, device) if config.findings_weight > 0 else None
        torch.manual_seed(config.seed)
        model = XRayGAN(XRayGANModelConfig.from_run_config(config, len(data.vocabulary))).to(device)
        use_channels_last(config, model, *(result.model for result in vcns.values()))
        step = XRayGANStep(config, phases, data, model, vcns, device, files.run_dir, reward)
        super().__init__(step, files, seed=config.seed, device=device, progress=progress, resume=resume)

    @property
    def vcns(self) -> dict[int, VCNResult]:
        """The frozen VCNs by image size (none when ``vc_weight`` is 0)."""
        return self.family.vcns

    def recalibrate(self, phase: Phase) -> int:
        """Re-estimate the generators' BatchNorm statistics for ``phase`` at the current position (:meth:`XRayGANStep.recalibrate`)."""
        return self.family.recalibrate(phase, self.position)

    def write_samples(self, phase: Phase) -> Path | None:
        """Write the sample grid of ``phase`` (:meth:`XRayGANStep.write_samples`)."""
        return self.family.write_samples(phase)
