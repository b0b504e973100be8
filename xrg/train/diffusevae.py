"""Training DiffuseVAE and its MoCo representation model in four stages (the whitepaper's §3), on the shared loop.

A DiffuseVAE run directory ``RUN`` holds one run per stage, each a
:class:`~xrg.train.loop.PhasedTrainer` run with the conventions of every trainer (atomic
``weights_only`` checkpoints at the start, after every epoch and on SIGINT/SIGTERM, bit-exact
resume on CPU, ``TrainingDiverged``, ``metrics.jsonl``, sample grids, a progress bar):

* ``RUN/vae`` (§3.1.1): the conditional VAE on the ELBO, ``‖x − x̂‖² + kl_weight·KL``.
* ``RUN/moco`` (§3.2–3.3): MoCo on two augmentations of each train image,
  ``L_moco + cluster_weight·L_kmeans`` (:mod:`xrg.models.moco`); SGD with momentum as in MoCo.
* ``RUN/ddpm`` (§3.1.2–3.1.3): the ε-UNet on ``[x_t ; VAE(x)]`` with the VAE of ``RUN/vae``
  frozen, ``‖ε − ε̂‖²`` at a uniform timestep, the condition replaced by the null vector with
  probability ``cond_dropout`` (classifier-free guidance); a moving average of the UNet.
* ``RUN/finetune`` (§3.4): the DDPM of ``RUN/ddpm`` trained further on
  ``‖ε − ε̂‖² + representation_weight·(1 − cos(MoCo(x), MoCo(x̂_0)))``, x̂_0 the clean image the
  UNet's ε̂ implies, with the MoCo of ``RUN/moco`` (or ``moco_run``) frozen.

``vae`` and ``moco`` need nothing; ``ddpm`` needs a finished ``vae``; ``finetune`` a finished
``ddpm`` and ``moco``. Every stage trains on the same seeded ``train_cases`` of the train split.
With ``init_from = OTHER_RUN`` the ``vae`` and ``ddpm`` stages start from that run's weights but
those of the condition encoder (:func:`warm_start`): the report-prompted model starts from the
finding-set model and learns to read reports.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from xrg.checkpoint import CHECKPOINT_NAME
from xrg.config import config_from_mapping, merge_settings
from xrg.errors import CheckpointError, ConfigError
from xrg.models.diffusevae import (
    VAE,
    ConditionConfig,
    DiffuseVAE,
    DiffuseVAEConfig,
    UNetConfig,
    VAEConfig,
    condition_drop,
    elbo_terms,
    stage_model,
)
from xrg.models.moco import MoCo, MoCoConfig, representation_distance
from xrg.models.xraygan import to_model_range
from xrg.profiles import Profile
from xrg.train.loop import (
    MONITOR_KEYS,
    SAMPLES_DIR,
    ConstantRatePhase,
    Optimizers,
    PhasedTrainer,
    Position,
    RunFiles,
    Step,
    TrainData,
    require_finite,
)

STAGES: tuple[str, ...] = ("vae", "moco", "ddpm", "finetune")
#: What each stage needs finished first.
STAGE_NEEDS: dict[str, tuple[str, ...]] = {"vae": (), "moco": (), "ddpm": ("vae",), "finetune": ("ddpm", "moco")}


@dataclass
class StageSchedule:
    """How long and how fast one stage trains."""

    num_epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3

    def check(self, stage: str) -> None:
        if self.num_epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ConfigError(
                f"{stage}: need num_epochs >= 1, batch_size >= 2 and lr > 0, got {self.num_epochs}, "
                f"{self.batch_size}, {self.lr}"
            )


@dataclass
class VAEStage(StageSchedule):
    model: VAEConfig = field(default_factory=VAEConfig)
    kl_weight: float = 1.0  # β of the ELBO's KL term


@dataclass
class MoCoStage(StageSchedule):
    model: MoCoConfig = field(default_factory=MoCoConfig)
    lr: float = 0.03
    sgd_momentum: float = 0.9
    weight_decay: float = 1e-4
    cluster_weight: float = 1.0  # λ of the clustering loss (0: plain MoCo, the ablation)


@dataclass
class DDPMStage(StageSchedule):
    model: UNetConfig = field(default_factory=UNetConfig)
    lr: float = 2e-4
    cond_dropout: float = 0.1  # probability of training a case unconditionally (classifier-free guidance)
    ema_half_life_images: float = 5_000.0
    ema_rampup: float | None = 0.05


@dataclass
class FinetuneStage(StageSchedule):
    lr: float = 1e-4
    representation_weight: float = 0.1  # λ of the representation loss (§3.4)


@dataclass
class DiffuseVAETrainConfig:
    """Everything the four stages of one DiffuseVAE run are built and trained from."""

    condition: ConditionConfig = field(default_factory=ConditionConfig)  # the VAE's and the UNet's
    vae: VAEStage = field(default_factory=VAEStage)
    moco: MoCoStage = field(default_factory=MoCoStage)
    ddpm: DDPMStage = field(default_factory=DDPMStage)
    finetune: FinetuneStage = field(default_factory=FinetuneStage)
    train_cases: int = 0  # a seeded subset of the train split for every stage (0: all of it)
    sample_steps: int = 20  # DDIM steps of the sample grids and the epoch-end monitor
    sample_guidance: float = 1.0
    sample_eta: float = 1.0  # DDIM η of the grids and the monitor (η = 0 left residual noise at 10-50 steps on cpu)
    seed: int = 0
    num_samples: int = 8
    # A finished run whose VAE and DDPM start this run's (every weight but the condition encoder's,
    # :func:`warm_start`): the report-prompted model starts from the finding-set model ("": from scratch).
    init_from: str = ""

    def __post_init__(self) -> None:
        for stage in STAGES:
            getattr(self, stage).check(stage)
        sizes = {self.vae.model.image_size, self.ddpm.model.image_size}
        views = {self.vae.model.view, self.moco.model.view}
        if len(sizes) != 1 or len(views) != 1:
            raise ConfigError(
                f"the VAE, the UNet and MoCo must read one image size and view, got sizes {sorted(sizes)} "
                f"(vae.model, ddpm.model) and views {sorted(views)} (vae.model, moco.model)"
            )
        if self.vae.kl_weight < 0 or self.moco.cluster_weight < 0 or self.finetune.representation_weight < 0:
            raise ConfigError("kl_weight, cluster_weight and representation_weight must be non-negative")
        if not 0 <= self.ddpm.cond_dropout < 1:
            raise ConfigError(f"ddpm.cond_dropout must be in [0, 1), got {self.ddpm.cond_dropout}")
        if self.condition.mode != "none" and self.ddpm.cond_dropout == 0 and self.sample_guidance != 1.0:
            raise ConfigError("sample_guidance other than 1 needs an unconditional model: set ddpm.cond_dropout > 0")
        if not 0 <= self.sample_eta <= 1:
            raise ConfigError(f"sample_eta must be in [0, 1], got {self.sample_eta}")
        if self.sample_steps < 1 or self.num_samples < 0 or self.train_cases < 0:
            raise ConfigError("need sample_steps >= 1, num_samples >= 0 and train_cases >= 0")
        self.ddpm.model.noise_schedule().ddim_timesteps(self.sample_steps)

    @property
    def image_size(self) -> int:
        return self.vae.model.image_size

    @property
    def view(self) -> str:
        return self.vae.model.view

    def model_config(self, vocab_size: int) -> DiffuseVAEConfig:
        """The DiffuseVAE of this run for ``vocab_size`` words (the condition filled into both networks)."""
        condition = self.condition.with_vocabulary(vocab_size)
        return DiffuseVAEConfig(
            vae=dataclasses.replace(self.vae.model, condition=condition),
            unet=dataclasses.replace(self.ddpm.model, condition=condition),
        )

    @classmethod
    def from_profile(cls, profile: Profile, overrides: dict[str, Any] | None = None) -> DiffuseVAETrainConfig:
        """The profile's ``diffusevae:`` section plus ``overrides`` (nested or dotted: ``ddpm.model.timesteps``)."""
        values = merge_settings({"seed": profile.seed}, profile.section("diffusevae"), overrides or {})
        return config_from_mapping(cls, values, where=f"diffusevae settings of profile {profile.name!r}",
                                   prefix="diffusevae")  # fmt: skip


#: A stage's one phase (the loop's unit).
Phase = ConstantRatePhase


def stage_phase(config: DiffuseVAETrainConfig, stage: str) -> Phase:
    schedule = getattr(config, stage)
    return Phase(stage, STAGES.index(stage), config.image_size, schedule.num_epochs, schedule.batch_size, schedule.lr)


def optimise(
    optimizer: torch.optim.Optimizer, losses: dict[str, torch.Tensor], loss_name: str = "loss"
) -> dict[str, float]:
    """Step ``optimizer`` on ``losses[loss_name]`` (refused before stepping when a loss is not finite)."""
    require_finite(losses, f"{loss_name}")
    optimizer.zero_grad(set_to_none=True)
    losses[loss_name].backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in losses.items()}


# --------------------------------------------------------------------------------------
# The stages' steps
# --------------------------------------------------------------------------------------


class StageStep(Step):
    """What the four stages share: one view, one phase, no BatchNorm recalibration."""

    images_per_case = 1
    stage: str

    def __init__(self, config: DiffuseVAETrainConfig, data: TrainData, model: Any, device: torch.device,
                 run_dir: Path) -> None:  # fmt: skip
        super().__init__(config, [stage_phase(config, self.stage)], data, model, device, run_dir)
        self.extras = {"diffusevae_stage": self.stage, "view": config.view}

    @property
    def view(self) -> str:
        return self.config.view

    def images(self, batch: dict[str, Any]) -> torch.Tensor:
        return to_model_range(batch[self.view].to(self.device))

    def batch_size(self, phase: Phase) -> int:
        return phase.batch_size

    def recalibrate(self, phase: Phase, position: Position) -> int:
        return 0

    def sample_name(self, phase: Phase) -> str:
        return f"{self.stage}_{phase.image_size}px.png"

    def phase_label(self, phase: Phase) -> str:
        return f"{self.stage} stage"

    def progress_label(self, phase: Phase) -> str:
        return f"diffusevae {self.stage} ({phase.image_size}px)"

    def seeded(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.config.seed)


class VAEStep(StageStep):
    stage = "vae"
    kind = VAE.kind
    loss_keys = ("loss", "reconstruction", "kl")
    metric_keys = ("kind", "phase", "stage", "image_size", "epoch", "step", *loss_keys, "lr", "seconds",
                   "images_per_s", *MONITOR_KEYS)  # fmt: skip

    def optimizers(self, phase: Phase, phase_index: int) -> Optimizers:
        return Optimizers(phase_index, torch.optim.Adam(self.model.parameters(), lr=phase.lr), None)

    def update(self, phase: Phase, batch: dict[str, Any], optimizers: Optimizers) -> dict[str, float]:
        x = self.images(batch)
        out = self.model(x, self.model.condition(batch, x.shape[0]))
        reconstruction, kl = elbo_terms(x, out)
        loss = reconstruction + self.config.vae.kl_weight * kl
        return optimise(optimizers.generator, {"loss": loss, "reconstruction": reconstruction, "kl": kl})

    @torch.no_grad()
    def sample_images(self, phase: Phase, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Prior samples under the conditions of ``batch``'s cases (seeded latents)."""
        self.model.eval()
        try:
            c = self.model.condition(batch, len(batch["case_id"]))
            return {self.view: self.model.sample(c, self.seeded()).clamp(-1, 1)}
        finally:
            self.model.train()


class DiffusionStep(StageStep):
    """The DDPM and the fine-tuning stages: ε-prediction on ``[x_t ; VAE(x)]``, the UNet's moving average."""

    kind = DiffuseVAE.kind

    def optimizers(self, phase: Phase, phase_index: int) -> Optimizers:
        return Optimizers(phase_index, torch.optim.Adam(self.model.unet.parameters(), lr=phase.lr), None)

    def train_mode(self, phase: Phase) -> None:
        self.model.train()
        self.model.vae.eval().requires_grad_(False)
        self.model.unet_ema.eval()

    def diffusion_terms(
        self, batch: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The ε loss of ``batch`` and what the representation loss needs: (losses, x, x_t, t, ε̂)."""
        model, x = self.model, self.images(batch)
        count = x.shape[0]
        with torch.no_grad():
            x_vae = model.vae.reconstruct(x, model.vae.condition(batch, count)).clamp(-1, 1)
        t = torch.randint(0, model.schedule.timesteps, (count,), device=self.device)
        noise = torch.randn_like(x)
        x_t = model.schedule.q_sample(x, t, noise)
        c = model.unet.condition(batch, count, condition_drop(count, self.config.ddpm.cond_dropout, self.device))
        eps = model.unet(x_t, t, x_vae, c)
        return {"diffusion_loss": F.mse_loss(eps, noise)}, x, x_t, t, eps

    def after_step(self, count: int) -> float:
        ddpm = self.config.ddpm
        return self.model.update_ema(count, ddpm.ema_half_life_images, ddpm.ema_rampup)

    @torch.no_grad()
    def sample_images(self, phase: Phase, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """DDIM samples (``sample_steps``, η = 0, the moving average) under the conditions of ``batch``'s cases."""
        out = self.model.generate(batch, len(batch["case_id"]), generator=self.seeded(),
                                  steps=self.config.sample_steps, guidance=self.config.sample_guidance, eta=self.config.sample_eta)  # fmt: skip
        return {self.view: out["image"]}


class DDPMStep(DiffusionStep):
    stage = "ddpm"
    loss_keys = ("loss", "diffusion_loss", "ema_beta")
    metric_keys = ("kind", "phase", "stage", "image_size", "epoch", "step", *loss_keys, "lr", "seconds",
                   "images_per_s", *MONITOR_KEYS)  # fmt: skip

    def update(self, phase: Phase, batch: dict[str, Any], optimizers: Optimizers) -> dict[str, float]:
        losses, x, *_ = self.diffusion_terms(batch)
        losses["loss"] = losses["diffusion_loss"]
        result = optimise(optimizers.generator, losses)
        result["ema_beta"] = self.after_step(x.shape[0])
        return result


class FinetuneStep(DiffusionStep):
    stage = "finetune"
    loss_keys = ("loss", "diffusion_loss", "representation_loss", "ema_beta")
    metric_keys = ("kind", "phase", "stage", "image_size", "epoch", "step", *loss_keys, "lr", "seconds",
                   "images_per_s", *MONITOR_KEYS)  # fmt: skip

    def __init__(self, config: DiffuseVAETrainConfig, data: TrainData, model: DiffuseVAE, moco: MoCo,
                 device: torch.device, run_dir: Path) -> None:  # fmt: skip
        super().__init__(config, data, model, device, run_dir)
        self.moco = moco.to(device).eval().requires_grad_(False)

    def update(self, phase: Phase, batch: dict[str, Any], optimizers: Optimizers) -> dict[str, float]:
        losses, x, x_t, t, eps = self.diffusion_terms(batch)
        x0 = self.model.schedule.predict_x0(x_t, t, eps).clamp(-1, 1)
        losses["representation_loss"] = representation_distance(self.moco, x, x0).mean()
        losses["loss"] = (
            losses["diffusion_loss"] + self.config.finetune.representation_weight * losses["representation_loss"]
        )
        result = optimise(optimizers.generator, losses)
        result["ema_beta"] = self.after_step(x.shape[0])
        return result


class MoCoStep(StageStep):
    stage = "moco"
    kind = MoCo.kind
    loss_keys = ("loss", "moco_loss", "cluster_loss")
    metric_keys = ("kind", "phase", "stage", "image_size", "epoch", "step", *loss_keys, "lr", "seconds",
                   "images_per_s")  # fmt: skip

    def optimizers(self, phase: Phase, phase_index: int) -> Optimizers:
        settings = self.config.moco
        optimizer = torch.optim.SGD(self.model.query_encoder.parameters(), lr=phase.lr,
                                    momentum=settings.sgd_momentum, weight_decay=settings.weight_decay)  # fmt: skip
        return Optimizers(phase_index, optimizer, None)

    def train_mode(self, phase: Phase) -> None:
        self.model.train()

    def update(self, phase: Phase, batch: dict[str, Any], optimizers: Optimizers) -> dict[str, float]:
        x = self.images(batch)
        out = self.model.losses(x, batch["labels"].to(self.device), self.config.moco.cluster_weight)
        keys, categories = out.pop("keys"), out.pop("categories")
        result = optimise(optimizers.generator, out)
        self.model.momentum_update()
        self.model.enqueue(keys, categories)
        return result

    def write_samples(self, phase: Phase) -> Path | None:
        return None  # a representation model draws no images

    def monitor(self, phase: Phase) -> dict[str, float | None]:
        return {}


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------


#: The step of each stage.
STAGE_STEPS: dict[str, type[StageStep]] = {"vae": VAEStep, "moco": MoCoStep, "ddpm": DDPMStep, "finetune": FinetuneStep}


def stage_network(config: DiffuseVAETrainConfig, stage: str, vocab_size: int) -> Any:
    """The freshly initialised network ``stage`` trains (from torch's current seed): the VAE, MoCo, or
    the whole DiffuseVAE (its UNet trained, its VAE frozen) for the DDPM and the fine-tuning."""
    if stage == "vae":
        return VAE(config.model_config(vocab_size).vae)
    if stage == "moco":
        return MoCo(config.moco.model)
    return DiffuseVAE(config.model_config(vocab_size))


def stage_checkpoint(run_root: str | os.PathLike, stage: str) -> Path:
    return Path(run_root) / stage / CHECKPOINT_NAME


def _finished_stage(run_root: Path, stage: str, need: str, model_class: Any) -> Any:
    path = stage_checkpoint(run_root, need)
    if not path.is_file():
        raise CheckpointError(
            f"the {stage} stage needs a finished {need} stage, and {path} does not exist: "
            f"run xrg train diffusevae --stage {need} with the same --out first"
        )
    return model_class.from_checkpoint(path)


def warm_start(network: torch.nn.Module, source: torch.nn.Module, where: str | os.PathLike) -> list[str]:
    """Copy ``source``'s weights into ``network`` (a VAE or a UNet) but the condition encoder's where
    it differs; returns the keys left at their initialisation.

    Every weight outside ``condition.`` must be in ``source`` with the same shape (the same network
    of another condition), else :class:`CheckpointError` names the ones that are not.
    """
    own, theirs = network.state_dict(), source.state_dict()
    mismatched = [k for k, v in own.items() if not k.startswith("condition.")
                  and (k not in theirs or theirs[k].shape != v.shape)]  # fmt: skip
    if mismatched:
        raise CheckpointError(
            f"{where} holds another network than this run's ({len(mismatched)} weights differ, e.g. "
            f"{', '.join(mismatched[:3])}): warm start only from a run of the same sizes"
        )
    kept = [k for k, v in own.items() if k not in theirs or theirs[k].shape != v.shape]
    network.load_state_dict({k: (own[k] if k in kept else theirs[k]) for k in own})
    return kept


def stage_file(path: str | os.PathLike, stage: str) -> Path:
    """The ``stage`` checkpoint of ``path``: the file, ``path/checkpoint.pt`` or a DiffuseVAE run's ``path/STAGE/checkpoint.pt``."""
    path = Path(path)
    for candidate in (path, path / CHECKPOINT_NAME, path / stage / CHECKPOINT_NAME):
        if candidate.is_file():
            return candidate
    raise CheckpointError(
        f"{path} holds no {stage} checkpoint (neither a file, nor {CHECKPOINT_NAME} nor {stage}/{CHECKPOINT_NAME} in it)"
    )


class DiffuseVAETrainer(PhasedTrainer):
    """One stage of the DiffuseVAE run in ``run_root`` (it writes ``run_root/STAGE``; see the module docstring).

    ``moco_run`` and ``ddpm_run``: the MoCo and DDPM runs the fine-tuning starts from,
    ``run_root/moco`` and ``run_root/ddpm`` by default (another run's: the ablation without the
    clustering loss fine-tunes the main run's DDPM with a MoCo trained without it).
    """

    def __init__(
        self, config: DiffuseVAETrainConfig, stage: str, data_dir: str | os.PathLike, run_root: str | os.PathLike,
        device: str | torch.device = "cpu", resume: bool = False, progress: bool = True,
        moco_run: str | os.PathLike | None = None,
        ddpm_run: str | os.PathLike | None = None,
    ) -> None:  # fmt: skip
        stage_model(stage)  # an unknown stage is refused, naming the stages
        device, run_root = torch.device(device), Path(run_root)
        condition = config.condition
        data = TrainData(data_dir, (config.image_size,), max_sentences=condition.max_sentences,
                         max_words=condition.max_words, train_cases=config.train_cases, subset_seed=config.seed)  # fmt: skip
        vocab_size = len(data.vocabulary)
        model_config = config.model_config(vocab_size)
        step_class = STAGE_STEPS[stage]
        files = RunFiles.check(run_root / stage, step_class.kind, resume, tidy=(SAMPLES_DIR,))
        torch.manual_seed(config.seed)
        model = stage_network(config, stage, vocab_size)
        extra: dict[str, Any] = {}
        if config.init_from and stage in ("vae", "ddpm") and not resume:
            source_path = stage_file(config.init_from, stage)
            if stage == "vae":
                warm_start(model, VAE.from_checkpoint(source_path), source_path)
            else:  # the source's averaged UNet, the better weights, starts both of this run's
                warm_start(model.unet, DiffuseVAE.from_checkpoint(source_path).unet_ema, source_path)
                model.unet_ema.load_state_dict(model.unet.state_dict())
        if stage == "ddpm" and not resume:
            vae = _finished_stage(run_root, stage, "vae", VAE)
            self._require_same(vae.config, model_config.vae, "vae", vae.checkpoint_info.path)
            model.vae.load_state_dict(vae.state_dict())
        if stage == "finetune":
            moco = (
                _finished_stage(run_root, stage, "moco", MoCo)
                if moco_run is None
                else MoCo.from_checkpoint(stage_file(moco_run, "moco"))
            )
            if moco.config.view != config.view:
                raise ConfigError(
                    f"the MoCo of {moco.checkpoint_info.path} reads {moco.config.view} images, not {config.view}"
                )
            extra["moco"] = moco
            if not resume:
                ddpm = (
                    _finished_stage(run_root, stage, "ddpm", DiffuseVAE)
                    if ddpm_run is None
                    else DiffuseVAE.from_checkpoint(stage_file(ddpm_run, "ddpm"))
                )
                self._require_same(ddpm.config, model_config, "ddpm", ddpm.checkpoint_info.path)
                model.load_state_dict(ddpm.state_dict())
        model = model.to(device)
        step = step_class(config, data, model, device=device, run_dir=files.run_dir, **extra)
        self.stage = stage
        super().__init__(step, files, seed=config.seed, device=device, progress=progress, resume=resume)

    @staticmethod
    def _require_same(stored: Any, expected: Any, stage: str, path: Path) -> None:
        if stored != expected:
            from xrg.config import config_differences, config_to_dict

            differences = config_differences(config_to_dict(stored), config_to_dict(expected))
            raise CheckpointError(
                f"{path} holds a {stage} model of other settings than this run's ({'; '.join(differences)}); "
                "train that stage again with these settings, or use the settings it was trained with"
            )
