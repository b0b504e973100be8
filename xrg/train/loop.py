"""The resumable training loops: the phased GAN runs (XRayGAN, the Table-1 baselines) and the offline networks.

A GAN run trains *phases* (a stage, or pre-training) of epochs of seeded batches. Its checkpoint
(``RUN/checkpoint.pt``, written at the start, after every epoch and when stopped) holds the
encoder, generator and discriminator weights, the optimizer states of the current phase, the
phase/epoch/batch position, the torch RNG state and the shuffle generator's state at the start
of the epoch, so a resumed run redraws that epoch's order, skips the batches already done
and ends bit-identical to an uninterrupted one on CPU. Resuming also tidies what a killed
process leaves: partial ``.NAME.*.tmp`` files, and metric rows of epochs the checkpoint does
not include (they are redone). A non-finite loss stops the run with
:class:`~xrg.errors.TrainingDiverged`, naming the step and the last good checkpoint.

The module has four parts, read top to bottom:

* :class:`Step`: what a model family says about its run (its ``kind``, phases, data and
  model; what trains in a phase and its optimizers; the batch size; one optimisation step;
  what happens at an epoch end; what is logged, and its checkpoint extras). Each family has
  one: :class:`~xrg.train.xraygan.XRayGANStep`, :class:`~xrg.train.baselines.BaselineStep`.
  What both GAN families share besides — the train sets (:class:`TrainData`), the seeded
  BatchNorm recalibration (:func:`recalibrate_generators`) and the sample grids
  (:func:`write_sample_grid`) — is here too.
* :class:`RunState` and :func:`trim_metrics`: the resumable state both loops keep and restore
  (position, torch and cuda RNG, shuffle generator and its epoch-start state, epoch totals,
  optimizer states) and the tidying of metric rows a resumed state does not include.
* :class:`PhasedTrainer`: the loop of a GAN run over a :class:`Step`, written out in
  :meth:`PhasedTrainer.train` (phases, then epochs, then batches). The family trainers
  (:class:`~xrg.train.xraygan.XRayGANTrainer`, :class:`~xrg.train.baselines.BaselineTrainer`)
  are this class with a constructor that builds their step.
* :class:`EpochLoop`: the loop of the offline networks (the VCNs, the evaluation
  classifier): one model, one optimizer, seeded epochs; its resumable state (the same
  :class:`RunState`) lives in ``NAME.partial.pt`` beside the final ``NAME.pt``, and a stop
  signal ends it with :class:`~xrg.errors.TrainingStopped`, which says how to resume. It keeps
  its own short loop body rather than being a one-phase :class:`PhasedTrainer`: it saves on a
  timer instead of every epoch, raises on a stop instead of returning, and its step function
  draws from the shuffle generator, so sharing one body would need as many switches as it has lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset
from tqdm.auto import tqdm

from xrg.checkpoint import CHECKPOINT_NAME, load_checkpoint
from xrg.data.datasets import XRayPairDataset, collate_pairs
from xrg.data.images import save_png
from xrg.data.manifest import read_manifest
from xrg.data.reports import Vocabulary
from xrg.errors import CheckpointError, ConfigError, TrainingDiverged, TrainingStopped
from xrg.io import append_jsonl, atomic_write_jsonl, remove_temporaries
from xrg.locks import directory_lock
from xrg.models.xraygan import to_image_range, to_model_range
from xrg.train import distributed
from xrg.train.runtime import StopRequests, epoch_batches, recalibrate_batchnorm, set_lr

METRICS_NAME = "metrics.jsonl"
SAMPLES_DIR = "samples"
#: Validation cases (train cases without a val split) generated at every epoch end to measure
#: how much the images vary between reports (:meth:`Step.monitor`).
MONITOR_CASES = 32
#: The keys :meth:`Step.monitor` adds to every metrics row of a GAN run.
MONITOR_KEYS: tuple[str, ...] = ("variation", "variation_real")


@dataclass
class Position:
    """Where a run is: the next batch to train is ``batch`` of ``epoch`` of phase ``phase``."""

    phase: int = 0
    epoch: int = 0
    batch: int = 0
    step: int = 0  # optimizer steps done in all phases


@dataclass
class TrainResult:
    """How a call to :meth:`PhasedTrainer.train` ended."""

    run_dir: Path
    checkpoint: Path
    finished: bool
    step: int
    stopped_by: str | None = None  # "max_steps", "SIGINT" or "SIGTERM" when not finished


class NonFinite(Exception):
    """Raised inside a step; the trainer turns it into :class:`TrainingDiverged` with the run's context."""


def require_finite(losses: dict[str, torch.Tensor], where: str) -> None:
    """Raise :class:`NonFinite` when a loss is not finite; under torchrun on every rank when one rank's is not."""
    bad = [name for name, value in losses.items() if not torch.isfinite(value).all()]
    if distributed.any_rank(int(bool(bad))) and not bad:
        raise NonFinite(f"a non-finite loss on another process in the {where}")
    if bad:
        shown = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in losses.items())
        raise NonFinite(f"non-finite {', '.join(bad)} in the {where} ({shown})")


@contextlib.contextmanager
def frozen(modules: Iterable[nn.Module]) -> Iterator[None]:
    """No gradients into ``modules`` inside the block (the critics during a generator update); restored after."""
    modules = list(modules)
    for module in modules:
        module.requires_grad_(False)
    try:
        yield
    finally:
        for module in modules:
            module.requires_grad_(True)


def generator_update(
    optimizer: torch.optim.Optimizer, losses: dict[str, torch.Tensor], g_loss: torch.Tensor
) -> dict[str, float]:
    """Step ``optimizer`` on ``g_loss`` (refused before stepping when any loss is not finite); the losses as floats."""
    losses["g_loss"] = g_loss
    require_finite(losses, "generator loss")
    optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    optimizer.step()
    return {name: float(value.detach()) for name, value in losses.items()}


class PhaseLike(Protocol):
    name: str
    stage: int
    image_size: int
    num_epochs: int

    def lr_at(self, epoch: int, config: Any) -> float: ...


@dataclass(frozen=True)
class ConstantRatePhase:
    """A phase at one image size and batch size with one learning rate throughout (PGGAN's stages, DiffuseVAE's)."""

    name: str
    stage: int
    image_size: int
    num_epochs: int
    batch_size: int
    lr: float

    def lr_at(self, epoch: int, config: Any) -> float:
        return self.lr


@dataclass
class Optimizers:
    """The optimizers of one phase (no discriminator optimizer while pre-training)."""

    phase_index: int
    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None
    #: the discriminator's learning rate over the generator's (two time-scale updates; 1: one rate)
    critic_lr_scale: float = 1.0

    def all(self) -> Iterator[torch.optim.Optimizer]:
        yield self.generator
        if self.discriminator is not None:
            yield self.discriminator

    def set_lr(self, lr: float) -> None:
        """The generator's learning rate ``lr``, the discriminator's ``critic_lr_scale × lr``."""
        set_lr(self.generator, lr)
        if self.discriminator is not None:
            set_lr(self.discriminator, lr * self.critic_lr_scale)


# --------------------------------------------------------------------------------------
# What a model family says: its Step, and what the GAN families share
# --------------------------------------------------------------------------------------


def train_subset(num_cases: int, cases: int, seed: int) -> list[int] | None:
    """``cases`` of ``num_cases`` train cases, drawn by a generator seeded with ``seed`` and
    sorted; None (all of them) for 0 or at least as many as there are.

    A run with ``train_cases`` trains on this subset at every stage, and two runs with the same
    seed see the same cases (the rows of a comparison are trained on the same data).
    """
    if cases < 0:
        raise ConfigError(f"train_cases must be >= 0 (0: the whole train split), got {cases}")
    if cases == 0 or cases >= num_cases:
        return None
    order = torch.randperm(num_cases, generator=torch.Generator().manual_seed(seed))
    return sorted(order[:cases].tolist())


class TrainData:
    """The train split at every image size a run's phases need, its vocabulary and the sample-grid cases."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        image_sizes: Any,
        max_sentences: int,
        max_words: int,
        canonical: bool = False,
        train_cases: int = 0,
        subset_seed: int = 0,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.max_sentences, self.max_words = max_sentences, max_words
        self.train_sets = {
            size: XRayPairDataset(
                self.data_dir,
                "train",
                image_size=size,
                max_sentences=max_sentences,
                max_words=max_words,
                canonical=canonical,
            )  # fmt: skip
            for size in sorted(set(image_sizes))
        }
        self.vocabulary = next(iter(self.train_sets.values())).vocab
        #: The train cases the run sees (indices into the train split), None: all of them.
        self.case_indices = train_subset(len(next(iter(self.train_sets.values()))), train_cases, subset_seed)
        if self.case_indices is not None:
            self.train_sets = {size: Subset(dataset, self.case_indices) for size, dataset in self.train_sets.items()}
        self._sample_batches: dict[int, dict[str, Any]] = {}

    def sample_batch(self, image_size: int, count: int) -> dict[str, Any]:
        """The first ``count`` validation cases at ``image_size`` (train cases if there is no val split):
        the cases of the sample grids and of the epoch-end monitor."""
        key = (image_size, count)
        if key not in self._sample_batches:
            has_val = any(case.split == "val" for case in read_manifest(self.data_dir))
            dataset = XRayPairDataset(
                self.data_dir, "val" if has_val else "train", image_size=image_size, vocab=self.vocabulary,
                max_sentences=self.max_sentences, max_words=self.max_words,
            )  # fmt: skip
            self._sample_batches[key] = collate_pairs([dataset[i] for i in range(min(count, len(dataset)))])
        return self._sample_batches[key]


def between_report_variation(images: dict[str, torch.Tensor]) -> float | None:
    """How much a batch's images differ between its cases: the per-pixel standard deviation
    across the cases, averaged over pixels and views, in the image range [0, 1]. A generator
    that draws one image whatever the report scores 0; None for fewer than two cases."""
    values = [to_image_range(x.detach().float()).std(dim=0).mean() for x in images.values() if x.shape[0] > 1]
    return float(torch.stack(values).mean()) if values else None


class Step:
    """What one model family does in :class:`PhasedTrainer`'s loop; a family subclasses it.

    It holds the run's ``config`` (with its ``seed``), ``phases``, ``data`` (:class:`TrainData`),
    ``model`` (a :class:`~xrg.models.base.CheckpointedModel` of ``kind`` with discriminators,
    which saves and loads its own weights), ``device`` and ``run_dir``, and names its
    checkpoint and metrics ``kind``, the ``metric_keys`` of a metrics row, the ``loss_keys``
    averaged into it and the ``extras`` every row and the checkpoint's progress carry (the
    baselines' ``method``). A family implements :meth:`optimizers`, :meth:`batch_size`,
    :meth:`update`, :meth:`recalibrate` and :meth:`write_samples`; the rest have defaults.
    """

    kind: str
    metric_keys: tuple[str, ...]
    loss_keys: tuple[str, ...]
    #: Real images one case gives a step (both views; 1 for a one-view family), for ``images_per_s``.
    images_per_case: int = 2
    #: The run's resumable state (its position), bound by :class:`PhasedTrainer`: a step whose
    #: schedule depends on where the run is (PGGAN's fade-in) reads it, so a resume repeats it.
    run_state: RunState

    def __init__(
        self, config: Any, phases: list[Any], data: TrainData, model: Any, device: torch.device, run_dir: Path
    ) -> None:
        self.config, self.phases, self.data, self.model = config, phases, data, model
        self.device, self.run_dir = device, Path(run_dir)
        self.extras: dict[str, Any] = {}

    # ---- what trains --------------------------------------------------------------------

    def optimizers(self, phase: Any, phase_index: int) -> Optimizers:
        """Fresh optimizers over what ``phase`` trains."""
        raise NotImplementedError

    def train_mode(self, phase: Any) -> None:
        """Train/eval modes and frozen parts for ``phase``; set at the start of each of its epochs."""
        self.model.train()

    def batch_size(self, phase: Any) -> int:
        raise NotImplementedError

    def train_set(self, phase: Any) -> Any:
        """The train cases of ``phase`` (by default the train split at its image size)."""
        return self.data.train_sets[phase.image_size]

    def update(self, phase: Any, batch: dict[str, Any], optimizers: Optimizers) -> dict[str, float]:
        """One optimisation step on ``batch``; its float losses. Raises :class:`NonFinite` before stepping on a bad loss."""
        raise NotImplementedError

    # ---- at an epoch end ----------------------------------------------------------------

    def end_epoch(self, phase: Any, position: Position) -> dict[str, float | None]:
        """Work at the end of an epoch, before its checkpoint: BatchNorm statistics, the sample
        grid, then the monitor, whose values go into the epoch's metrics row. Under torchrun every
        rank recalibrates (on its shard of the batches); rank 0 alone writes the grid and monitors."""
        self.recalibrate(phase, position)
        if not distributed.is_main():
            return {}
        self.write_samples(phase)
        return self.monitor(phase)

    def recalibrate(self, phase: Any, position: Position) -> int:
        """Re-estimate the BatchNorm statistics of the generators ``phase`` trains (:func:`recalibrate_generators`)."""
        raise NotImplementedError

    def sample_images(self, phase: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The images of ``phase``'s stage for ``batch``, as the run would generate them: generators in
        eval mode, noise from a generator seeded with the run's seed; ``{view: [B, 1, s, s]}`` in [-1, 1]."""
        raise NotImplementedError

    def sample_name(self, phase: Any) -> str:
        """The file name of ``phase``'s sample grid in ``RUN/samples/``."""
        return f"stage{phase.stage}_{phase.image_size}px.png"

    def write_samples(self, phase: Any) -> Path | None:
        """Write the sample grid of ``phase`` (:func:`write_sample_grid`) over ``config.num_samples`` cases."""
        if self.config.num_samples == 0:
            return None
        batch = self.data.sample_batch(phase.image_size, self.config.num_samples)
        return write_sample_grid(self, self.sample_name(phase), batch, self.sample_images(phase, batch))

    def monitor(self, phase: Any) -> dict[str, float | None]:
        """What the evaluation would see, measured while training: the between-report variation
        (:func:`between_report_variation`) of the images of :data:`MONITOR_CASES` validation cases,
        and of their real images. A run collapsing to one mean image shows ``variation`` ≪ ``variation_real``."""
        batch = self.data.sample_batch(phase.image_size, MONITOR_CASES)
        with torch.random.fork_rng(devices=[]):  # the training's random stream stays as it was
            fake = self.sample_images(phase, batch)
        real = real_images(batch, tuple(fake), self.device)
        return {"variation": between_report_variation(fake), "variation_real": between_report_variation(real)}

    # ---- what is logged, and the checkpoint -----------------------------------------------

    def phase_label(self, phase: Any) -> str:
        """The phase as error messages name it."""
        return f"{phase.name} phase, stage {phase.stage}"

    def progress_label(self, phase: Any) -> str:
        """The phase's progress bar title."""
        return f"{phase.name} stage {phase.stage} ({phase.image_size}px)"

    def checkpoint_extras(self) -> dict[str, Any]:
        """What the family adds to every checkpoint."""
        return {}

    def verify_checkpoint(self, payload: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint that does not belong to this run beyond its config and vocabulary."""


def recalibrate_generators(
    module: nn.Module,
    step: Step,
    phase: Any,
    position: Position,
    forward: Callable[[dict[str, Any], torch.Generator], Any],
) -> int:
    """Re-estimate ``module``'s BatchNorm statistics on ``config.bn_recalibration_batches`` train batches.

    See :func:`xrg.train.runtime.recalibrate_batchnorm`. ``forward(batch, noise_source)`` runs
    the generators on one batch at ``phase``'s image size. The batches come from their own
    generator seeded by the run seed, the phase and the epoch of ``position``, and any noise
    from another (``noise_source``), so the global RNG (and so a resumed run) is untouched.
    Under torchrun each rank runs its shard of every batch and the statistics are averaged.
    """
    count = step.config.bn_recalibration_batches
    if count == 0:
        return 0
    train_set = step.data.train_sets[phase.image_size]
    seed = (step.config.seed * 1_000_003 + position.phase * 1_009 + position.epoch) % 2**63
    order = epoch_batches(len(train_set), step.batch_size(phase), torch.Generator().manual_seed(seed))[:count]
    noise_source = torch.Generator().manual_seed(seed + 1)

    def forward_passes() -> Iterator[None]:
        for indices in order:
            forward(collate_pairs([train_set[i] for i in distributed.shard(indices)]), noise_source)
            yield None

    layers = recalibrate_batchnorm(module, forward_passes)
    distributed.average_buffers(module)
    return layers


def real_images(batch: dict[str, Any], views: tuple[str, ...], device: torch.device) -> dict[str, torch.Tensor]:
    return {view: to_model_range(batch[view].to(device)) for view in views}


#: What the L2 reconstruction loss compares a generated image with: the case's own render
#: (``posed``, the paper's objective: a randomly posed patient, mostly unpredictable from the
#: text) or the same findings in the average patient in a fixed pose (``canonical``).
REC_TARGETS = ("posed", "canonical")


def reconstruction_targets(
    batch: dict[str, Any], views: tuple[str, ...], device: torch.device, rec_target: str
) -> dict[str, torch.Tensor]:
    """The L2 targets of ``batch`` in model range (see :data:`REC_TARGETS`)."""
    if rec_target == "posed":
        return real_images(batch, views, device)
    return {view: to_model_range(batch[f"{view}_canonical"].to(device)) for view in views}


def sample_grid(real: dict[str, torch.Tensor], fake: dict[str, torch.Tensor], border: int = 2) -> np.ndarray:
    """One row per case: real frontal, generated frontal, real lateral, generated lateral ([0, 1])."""
    columns = [image for view in real for image in (real[view], fake[view])]
    count, size = columns[0].shape[0], columns[0].shape[-1]
    step = size + border
    grid = np.ones((count * step + border, len(columns) * step + border), dtype=np.float32)
    for col, images in enumerate(columns):
        images = to_image_range(images).clamp(0, 1).detach().cpu().numpy()
        for row in range(count):
            top, left = border + row * step, border + col * step
            grid[top : top + size, left : left + size] = images[row, 0]
    return grid


def write_sample_grid(step: Step, name: str, batch: dict[str, Any], fake: dict[str, torch.Tensor]) -> Path:
    """``RUN/samples/NAME``: the grid of ``batch``'s real images beside the generated ``fake`` ones."""
    real = real_images(batch, tuple(fake), step.device)
    return save_png(step.run_dir / SAMPLES_DIR / name, sample_grid(real, fake))


# --------------------------------------------------------------------------------------
# The resumable state both loops keep
# --------------------------------------------------------------------------------------


class RunState:
    """The position, the RNG states and the epoch totals of a training, as a checkpoint keeps them.

    ``shuffle`` draws each epoch's batch order; ``epoch_shuffle`` is its state when the current
    epoch began, so a resumed epoch redraws the same order (:meth:`epoch_batches`). Two layouts
    exist, both kept as they were written: ``phased`` (the GAN runs' ``checkpoint.pt``: the
    progress has a ``phase``, and ``rng.shuffle`` is the epoch-start state mid-epoch, the steps
    never drawing from it) and the offline networks' (``NAME.partial.pt``: ``rng.shuffle`` is
    the state now, since their steps draw from it too, and ``rng.epoch_shuffle`` the one at the
    epoch start). The torch RNG (and the cuda one on a cuda ``device``) is saved and restored
    with it; optimizer states go through :meth:`optimizer_state` and :meth:`restore_optimizers`.
    """

    def __init__(self, seed: int, device: torch.device, *, phased: bool) -> None:
        self.device, self.phased = device, phased
        self.shuffle = torch.Generator().manual_seed(seed)
        self.epoch_shuffle = self.shuffle.get_state()
        self.position = Position()
        self.totals: dict[str, float] = {}
        # False after restoring a phased state mid-epoch: the shuffle state after the epoch's
        # draw is then not stored, and redrawing the epoch's order recreates it.
        self._current_shuffle_known = True

    # ---- capture and restore ------------------------------------------------------------

    def rng(self) -> dict[str, torch.Tensor]:
        if self.phased:
            rng = {"torch": torch.get_rng_state()}
            rng["shuffle"] = self.shuffle.get_state() if self.position.batch == 0 else self.epoch_shuffle
        else:
            rng = {
                "torch": torch.get_rng_state(),
                "shuffle": self.shuffle.get_state(),
                "epoch_shuffle": self.epoch_shuffle,
            }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def progress(self, **extras: Any) -> dict[str, Any]:
        """The ``progress`` entry of a checkpoint: the position (without ``phase`` unless phased) and ``extras``."""
        position = dataclasses.asdict(self.position)
        if not self.phased:
            del position["phase"]
        return {**position, **extras}

    def restore(self, payload: Mapping[str, Any]) -> None:
        """Position, RNG states and epoch totals from a checkpoint ``payload`` this state's layout wrote."""
        progress = payload["progress"]
        keys = ("phase", "epoch", "batch", "step") if self.phased else ("epoch", "batch", "step")
        self.position = Position(**{key: int(progress[key]) for key in keys})
        rng = payload["rng"]
        # Generator states must be CPU byte tensors, whatever map_location moved them to.
        torch.set_rng_state(rng["torch"].cpu())
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)
        self.shuffle.set_state(rng["shuffle"].cpu())
        self.epoch_shuffle = (rng["shuffle"] if self.phased else rng["epoch_shuffle"]).cpu()
        self._current_shuffle_known = not self.phased
        self.totals = dict(payload["epoch_totals"])

    @staticmethod
    def optimizer_state(optimizers: Optimizers) -> dict[str, Any]:
        discriminator = optimizers.discriminator
        return {
            "phase": optimizers.phase_index,
            "generator": optimizers.generator.state_dict(),
            "discriminator": None if discriminator is None else discriminator.state_dict(),
        }

    @staticmethod
    def restore_optimizers(optimizers: Optimizers, stored: Mapping[str, Any]) -> None:
        optimizers.generator.load_state_dict(stored["generator"])
        if optimizers.discriminator is not None:
            optimizers.discriminator.load_state_dict(stored["discriminator"])

    # ---- during an epoch -------------------------------------------------------------------

    def epoch_batches(self, num_items: int, batch_size: int) -> list[list[int]]:
        """This epoch's batches; mid-epoch the order is redrawn from the epoch's start state."""
        if self.position.batch == 0:
            self.epoch_shuffle = self.shuffle.get_state()
            self.totals = {}
            self._current_shuffle_known = True
            return epoch_batches(num_items, batch_size, self.shuffle)
        now = self.shuffle.get_state()
        self.shuffle.set_state(self.epoch_shuffle)
        batches = epoch_batches(num_items, batch_size, self.shuffle)
        if self._current_shuffle_known:
            self.shuffle.set_state(now)
        self._current_shuffle_known = True
        return batches

    def count_step(self, amounts: Mapping[str, float], started: float) -> None:
        """One step done: the position moves on and ``amounts`` (and the step's seconds since ``started``) add up."""
        self.position.batch += 1
        self.position.step += 1
        for name, value in amounts.items():
            self.totals[name] = self.totals.get(name, 0) + value
        self.totals["seconds"] = self.totals.get("seconds", 0.0) + time.perf_counter() - started

    def next_epoch(self) -> None:
        self.position.epoch += 1
        self.position.batch = 0
        self.totals = {}


def trim_metrics(
    path: Path, drop: Callable[[dict[str, Any]], bool], notes: list[str] | None = None, after: str = ""
) -> int:
    """Rewrite the JSON-lines file ``path`` (atomically) without the rows ``drop`` selects and torn lines.

    A training killed after an epoch's row was appended but before its state was saved redoes
    that epoch on resume; without this its row would appear twice. A row ``drop`` cannot read
    (it raises ``KeyError``, ``TypeError``, ``ValueError`` or ``AttributeError``) is dropped
    too. When any is dropped, a note saying so (lines ``written after`` ``after``) goes to ``notes``.
    """
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or drop(row):
                dropped += 1
                continue
        except (ValueError, TypeError, KeyError, AttributeError):
            dropped += 1
            continue
        kept.append(row)
    if dropped:
        atomic_write_jsonl(path, kept)
        if notes is not None:
            notes.append(f"dropped {dropped} line(s) of {path} written after {after}")
    return dropped


# --------------------------------------------------------------------------------------
# The loop of the GAN runs
# --------------------------------------------------------------------------------------


@dataclass
class RunFiles:
    """A GAN run's directory, checked for a new run or a resume (:meth:`check`)."""

    run_dir: Path
    checkpoint_path: Path
    metrics_path: Path
    #: What was tidied up after an earlier run was killed (printed by the command line).
    notes: list[str]

    @classmethod
    def check(
        cls, run_dir: str | os.PathLike, kind: str, resume: bool, tidy: tuple[str, ...] = (SAMPLES_DIR,)
    ) -> RunFiles:
        """Paths; a new run refuses an existing checkpoint, a resume needs one; partial files go."""
        run_dir = Path(run_dir)
        files = cls(run_dir, run_dir / CHECKPOINT_NAME, run_dir / METRICS_NAME, [])
        if resume and not files.checkpoint_path.is_file():
            raise CheckpointError(f"nothing to resume: {files.checkpoint_path} does not exist")
        if resume:  # a damaged or foreign checkpoint is refused now, before any other work is done
            load_checkpoint(files.checkpoint_path, kind)
        if not resume and files.checkpoint_path.is_file():
            raise CheckpointError(
                f"{run_dir} already holds a run ({files.checkpoint_path}); pass --resume (resume=True) "
                "to continue it, or choose another output directory"
            )
        if not run_dir.is_dir() or not distributed.is_main():
            return files
        # A process killed while writing leaves ``.NAME.*.tmp`` files (never a partial NAME); only
        # the directory's one writer may remove them.
        with directory_lock(run_dir, "run directory"):
            for directory in (run_dir, *(run_dir / name for name in tidy)):
                removed = remove_temporaries(directory)
                if removed:
                    files.notes.append(f"removed {len(removed)} partial file(s) a killed run left in {directory}")
        return files


#: How a stop request travels between ranks (the largest wins).
_STOP_CODES = {None: 0, "max_steps": 1, "SIGINT": 2, "SIGTERM": 3}


def stop_requested(stop: StopRequests, world: distributed.World) -> str | None:
    """The signal that asks this loop to stop, seen by this rank or (under torchrun) by any rank; None."""
    if not world.distributed:
        return stop.requested
    code = distributed.any_rank(_STOP_CODES.get(stop.requested, 3))
    return {value: name for name, value in _STOP_CODES.items()}[code]


class PhasedTrainer:
    """A GAN run of the :class:`Step` ``family`` in the checked directory ``files``: checkpoints, exact resume, the loop.

    ``resume=True`` loads the checkpoint (it must hold a run of the step's config and
    vocabulary); :meth:`train` runs the loop. The family trainers build their step and call
    this constructor; ``model``, ``config``, ``phases``, ``train_sets`` and ``vocabulary`` are
    the step's.
    """

    def __init__(
        self, family: Step, files: RunFiles, *, seed: int, device: torch.device, progress: bool, resume: bool
    ) -> None:
        self.family, self.files, self.device = family, files, device
        self.world = distributed.world()
        self.progress = progress and self.world.is_main
        self.state = RunState(seed, device, phased=True)
        self.gradients = distributed.GradientSync()
        family.run_state = self.state
        self.optimizers: Optimizers | None = None
        self._last_saved_step = 0
        #: Whether the checkpoint file, if there is one, is this trainer's (resumed from or written by it).
        self._checkpoint_is_ours = resume
        if resume:
            self._load(files.checkpoint_path)
        # Under torchrun: every rank has checked the directory before rank 0 writes into it, starts
        # from rank 0's weights and draws noise of its own.
        distributed.barrier()
        distributed.broadcast_module(self.model)
        distributed.reseed_rank(seed, self.position.step)
        if self.world.rank > 0:  # a resumed epoch's totals so far are rank 0's, counted once
            self.state.totals = {name: 0.0 for name in self.state.totals}

    kind = property(lambda self: self.family.kind)
    config = property(lambda self: self.family.config)
    model = property(lambda self: self.family.model)
    phases = property(lambda self: self.family.phases)
    data_dir = property(lambda self: self.family.data.data_dir)
    train_sets = property(lambda self: self.family.data.train_sets)
    vocabulary = property(lambda self: self.family.data.vocabulary)
    run_dir = property(lambda self: self.files.run_dir)
    checkpoint_path = property(lambda self: self.files.checkpoint_path)
    metrics_path = property(lambda self: self.files.metrics_path)
    notes = property(lambda self: self.files.notes)
    position = property(lambda self: self.state.position)
    shuffle = property(lambda self: self.state.shuffle)

    @property
    def finished(self) -> bool:
        return self.position.phase >= len(self.phases)

    # ---- checkpoints ------------------------------------------------------------------

    def save(self) -> Path:
        """Write ``RUN/checkpoint.pt`` for the current position (rank 0; the other ranks wait for it)."""
        self._last_saved_step = self.position.step
        self._checkpoint_is_ours = True
        if not self.world.is_main:
            distributed.barrier()
            return self.checkpoint_path
        optimizers = None
        if self.optimizers is not None and self.optimizers.phase_index == self.position.phase:
            optimizers = self.state.optimizer_state(self.optimizers)
        self.model.save(
            self.checkpoint_path,
            run_config=self.config,
            vocabulary=self.vocabulary,
            optimizers=optimizers,
            progress=self.state.progress(finished=self.finished, num_phases=len(self.phases), **self.family.extras),
            rng=self.state.rng(),
            epoch_totals=dict(self.state.totals),
            **self.family.checkpoint_extras(),
        )
        distributed.barrier()
        return self.checkpoint_path

    def _load(self, path: Path) -> None:
        payload = load_checkpoint(
            path, self.kind, config=self.config, vocabulary=self.vocabulary, map_location=self.device
        )
        self.family.verify_checkpoint(payload, path)
        try:
            self.model.load_checkpoint_state(payload["state"])
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match the model its config describes: {exc}") from exc
        self.state.restore(payload)
        self._last_saved_step = self.position.step
        index = {(phase.name, phase.stage): i for i, phase in enumerate(self.phases)}
        done = (self.position.phase, self.position.epoch)

        def later(row: dict[str, Any]) -> bool:  # a row of an epoch the checkpoint does not include
            return row.get("kind") == self.kind and (index[(row["phase"], row["stage"])], int(row["epoch"])) >= done

        if self.world.is_main:
            trim_metrics(self.metrics_path, later, self.notes, after="the checkpoint")
        stored = payload["optimizers"]
        if stored is not None and stored["phase"] == self.position.phase and not self.finished:
            self._set_optimizers(self.family.optimizers(self.phases[self.position.phase], self.position.phase))
            self.state.restore_optimizers(self.optimizers, stored)

    def _set_optimizers(self, optimizers: Optimizers) -> None:
        """The phase's optimizers; under torchrun each all-reduces its gradients before it steps."""
        self.gradients.detach()
        self.optimizers = optimizers
        self.gradients.attach(optimizers.all())

    # ---- the loop ---------------------------------------------------------------------

    def train(self, max_steps: int | None = None) -> TrainResult:
        """Train to the end, or until the run has done ``max_steps`` steps in all, or a stop signal.

        A stopped run writes a checkpoint first; ``resume=True`` continues it exactly.
        """
        lock = directory_lock(self.run_dir, "run directory") if self.world.is_main else contextlib.nullcontext()
        with lock:
            if self.checkpoint_path.is_file() and not self._checkpoint_is_ours:
                raise CheckpointError(
                    f"{self.checkpoint_path} was written by another run after this one was set up; "
                    "resume that run (--resume) or choose another output directory"
                )
            if not self.checkpoint_path.is_file():
                self.save()
            with StopRequests() as stop:
                while not self.finished:
                    phase = self.phases[self.position.phase]
                    stopped = self._train_phase(phase, max_steps, stop)
                    if stopped:
                        self.save()
                        return TrainResult(self.run_dir, self.checkpoint_path, False, self.position.step, stopped)
                    self.state.position = Position(phase=self.position.phase + 1, step=self.position.step)
                    self.optimizers = None
                    self.save()
        return TrainResult(self.run_dir, self.checkpoint_path, True, self.position.step)

    def _train_phase(self, phase: Any, max_steps: int | None, stop: StopRequests) -> str | None:
        """Train the remaining epochs of ``phase``; the reason it stopped early, or None."""
        family, state, position = self.family, self.state, self.position
        if self.optimizers is None:
            self._set_optimizers(family.optimizers(phase, position.phase))
        train_set = family.train_set(phase)
        batch_size = family.batch_size(phase)
        per_epoch = len(epoch_batches(len(train_set), batch_size, torch.Generator().manual_seed(0)))
        bar = tqdm(
            total=phase.num_epochs * per_epoch,
            initial=position.epoch * per_epoch + position.batch,
            desc=family.progress_label(phase),
            unit="step",
            disable=not self.progress,
        )
        try:
            while position.epoch < phase.num_epochs:
                if max_steps is not None and position.step >= max_steps:
                    return "max_steps"
                batches = state.epoch_batches(len(train_set), batch_size)
                lr = phase.lr_at(position.epoch, self.config)
                self.optimizers.set_lr(lr)
                family.train_mode(phase)
                for indices in batches[position.batch :]:
                    started = time.perf_counter()
                    local = distributed.shard(indices, self.world)
                    self.gradients.share = len(local) / len(indices)
                    batch = collate_pairs([train_set[i] for i in local])
                    try:
                        losses = family.update(phase, batch, self.optimizers)
                    except NonFinite as error:
                        raise self._diverged(error, phase) from None
                    state.count_step({**losses, "batches": 1, "images": family.images_per_case * len(local)}, started)
                    bar.update()
                    bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k in ("d_loss", "g_loss", "rec_loss")})
                    requested = stop_requested(stop, self.world)
                    if requested:
                        return requested
                    if max_steps is not None and position.step >= max_steps and position.batch < len(batches):
                        return "max_steps"
                self._end_epoch(phase, lr)
        finally:
            bar.close()
        return None

    def _end_epoch(self, phase: Any, lr: float) -> None:
        """The epoch's metrics row, the step's epoch-end work, then the checkpoint."""
        totals, position = distributed.sum_totals(self.state.totals), self.position
        batches = max(totals.get("batches", 0), 1)
        seconds = totals.get("seconds", 0.0)
        row: dict[str, Any] = {key: None for key in self.family.metric_keys}
        row.update(
            kind=self.kind, phase=phase.name, stage=phase.stage, image_size=phase.image_size,
            epoch=position.epoch, step=position.step, lr=lr, seconds=seconds,
            images_per_s=totals.get("images", 0) / seconds if seconds > 0 else None, **self.family.extras,
        )  # fmt: skip
        row.update({name: totals[name] / batches for name in self.family.loss_keys if name in totals})
        row.update(self.family.end_epoch(phase, position))
        if self.world.is_main:
            append_jsonl(self.metrics_path, row)
        self.state.next_epoch()
        self.save()

    def _diverged(self, error: NonFinite, phase: Any) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged at step {self.position.step + 1} ({self.family.phase_label(phase)}, "
            f"{phase.image_size}px, epoch {self.position.epoch}, batch {self.position.batch}): {error}. "
            f"The last good checkpoint, {self.checkpoint_path} (step {self._last_saved_step}), is kept; "
            "lower the learning rates or the loss weights and start a new run"
        )


# --------------------------------------------------------------------------------------
# The loop of the offline networks (VCNs, the evaluation classifier)
# --------------------------------------------------------------------------------------

PARTIAL_SUFFIX = ".partial.pt"
#: An epoch end writes the resumable checkpoint when this many seconds passed since the last
#: one (so a SIGKILL loses at most about this much work, and short trainings write none).
PARTIAL_SAVE_SECONDS = 60.0


def partial_path(final: str | os.PathLike) -> Path:
    """Where a training whose model goes to ``final`` (``NAME.pt``) keeps its resumable state: ``NAME.partial.pt``."""
    final = Path(final)
    stem = final.name[: -len(".pt")] if final.name.endswith(".pt") else final.name
    return final.with_name(stem + PARTIAL_SUFFIX)


class EpochLoop:
    """Seeded epochs over one model and optimizer that stop on SIGINT/SIGTERM and resume exactly.

    The resumable state goes to :func:`partial_path` of ``final_path`` — never under the final
    name, and marked ``progress.finished = False`` so that no loader takes it for a trained
    model — atomically: after the step that was running when SIGINT or SIGTERM came (then
    :class:`~xrg.errors.TrainingStopped` is raised, naming the file and ``resume``, the call
    that continues), and at epoch ends every :data:`PARTIAL_SAVE_SECONDS`. It holds the model
    and optimizer states and a :class:`RunState` (the epoch/batch/step position, the torch RNG
    state, the shuffle generator's state at the start of the epoch, to redraw its batch order,
    and now, since the step function may draw from it too, and the epoch's running totals).
    :meth:`run` continues from it when it exists (refusing one of other settings, vocabulary or
    data), so the weights end bit-identical to an uninterrupted run on CPU; metric rows of this
    training written after it (by a killed process) are dropped first (:func:`trim_metrics`).
    The caller writes the final checkpoint, then calls :meth:`finish`, which removes the partial file.

    ``metric_match`` selects this training's rows in ``metrics_path`` (besides ``kind`` for the
    epoch rows and ``kind + "_test"`` for the test row).
    """

    def __init__(
        self, *, kind: str, label: str, final_path: Path, config: Any, vocabulary: Vocabulary, model: torch.nn.Module,
        optimizer: torch.optim.Optimizer, num_items: int, batch_size: int, num_epochs: int, seed: int,
        device: torch.device, metrics_path: Path, metric_match: Mapping[str, Any], data_key: str, resume: str,
        progress: bool = True, scheduler: Any = None,
    ) -> None:  # fmt: skip
        self.kind, self.label, self.config, self.vocabulary = kind, label, config, vocabulary
        self.final_path, self.path = Path(final_path), partial_path(final_path)
        self.model, self.optimizer, self.device = model, optimizer, device
        #: a learning-rate scheduler stepped by the caller (e.g. at epoch ends); its state is resumed too
        self.scheduler = scheduler
        self.num_items, self.batch_size, self.num_epochs = num_items, batch_size, num_epochs
        self.metrics_path, self.metric_match, self.data_key = Path(metrics_path), dict(metric_match), data_key
        self.world = distributed.world()
        self.resume_hint, self.progress = resume, progress and self.world.is_main
        self.state = RunState(seed, device, phased=False)
        self.seed = seed
        self.gradients = distributed.GradientSync()
        self.gradients.attach([optimizer])
        self.notes: list[str] = []
        self.per_epoch = len(epoch_batches(num_items, batch_size, torch.Generator().manual_seed(0)))
        self._last_save = time.perf_counter()

    shuffle = property(lambda self: self.state.shuffle)
    epoch = property(lambda self: self.state.position.epoch)
    batch = property(lambda self: self.state.position.batch)
    step = property(lambda self: self.state.position.step)

    # ---- the resumable state -------------------------------------------------------------

    def save(self) -> Path:
        """Write the resumable state (rank 0; the other ranks wait for it)."""
        if not self.world.is_main:
            distributed.barrier()
            self._last_save = time.perf_counter()
            return self.path
        self.model.save(
            self.path, run_config=self.config, vocabulary=self.vocabulary,
            optimizer=self.optimizer.state_dict(), rng=self.state.rng(), epoch_totals=dict(self.state.totals),
            data=self.data_key, progress=self.state.progress(finished=False),
            **({} if self.scheduler is None else {"scheduler": self.scheduler.state_dict()}),
        )  # fmt: skip
        distributed.barrier()
        self._last_save = time.perf_counter()
        return self.path

    def _load(self) -> None:
        keep = f"it holds a stopped {self.label} training: continue it with the same settings and data, or delete it to start over"
        try:  # on the CPU: the generator states must stay there, and load_state_dict moves the rest
            payload = load_checkpoint(self.path, self.kind, self.config, self.vocabulary, map_location="cpu")
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; {keep}") from exc
        if payload.get("data") != self.data_key or payload.get("progress", {}).get("finished") is not False:
            raise CheckpointError(f"{self.path} was written for other training data (or is not resumable); {keep}")
        try:
            self.model.load_state_dict(payload["state"])
            self.optimizer.load_state_dict(payload["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(payload["scheduler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{self.path} does not match the model its config describes: {exc}; {keep}") from exc
        self.state.restore(payload)
        self.notes.append(f"resumed the {self.label} training from {self.path} (step {self.step})")

    def _tidy(self) -> None:
        """Partial writes of a killed process, and metric rows the resumed state does not include."""
        for name in (self.path.name, self.final_path.name):
            for leftover in self.path.parent.glob(f".{name}.*.tmp"):
                leftover.unlink(missing_ok=True)

        def later(row: dict[str, Any]) -> bool:
            if any(row.get(key) != value for key, value in self.metric_match.items()):
                return False
            return row.get("kind") == f"{self.kind}_test" or (
                row.get("kind") == self.kind and int(row["epoch"]) >= self.epoch
            )

        trim_metrics(self.metrics_path, later, self.notes, after="the saved state")

    def complete(self, test_row: dict[str, Any], save: Callable[[], Any]) -> None:
        """The end of the training: ``test_row`` into the metrics, the final model written by ``save()``,
        then the resumable state removed (:meth:`finish`). Under torchrun rank 0 writes; all ranks wait."""
        if self.world.is_main:
            append_jsonl(self.metrics_path, test_row)
            save()
        self.finish()

    def finish(self) -> None:
        """Remove the resumable state (call once the final checkpoint is written; rank 0's file)."""
        if self.world.is_main:
            self.path.unlink(missing_ok=True)
        distributed.barrier()

    # ---- the loop ----------------------------------------------------------------------

    def run(
        self,
        step: Callable[[list[int], torch.Generator], tuple[float, dict[str, float]]],
        epoch_row: Callable[[int, int, dict[str, float]], dict[str, Any]],
    ) -> int:
        """Train to the end (resuming when there is a saved state); returns the steps done.

        ``step(indices, shuffle)`` does one update and returns its loss (for the progress bar)
        and the amounts to add up over the epoch; ``epoch_row(epoch, step, totals)`` is the
        epoch's metrics row (``totals`` has ``seconds`` too).
        """
        lock = directory_lock(self.path.parent, "run directory") if self.world.is_main else contextlib.nullcontext()
        with lock:
            distributed.barrier()  # every rank sees the saved state, or none does
            if self.path.is_file():
                self._load()
                if self.world.rank > 0:  # the resumed epoch's totals so far are rank 0's, counted once
                    self.state.totals = {name: 0.0 for name in self.state.totals}
            distributed.reseed_rank(self.seed, self.step)
            if self.world.is_main:
                self._tidy()
            state, position = self.state, self.state.position
            bar = tqdm(
                total=self.num_epochs * self.per_epoch, initial=min(position.step, self.num_epochs * self.per_epoch),
                desc=self.label, unit="step", disable=not self.progress,
            )  # fmt: skip
            try:
                with StopRequests() as stop:
                    while position.epoch < self.num_epochs:
                        if position.batch == 0:  # steps draw from the shuffle per rank: start the epoch as rank 0
                            distributed.broadcast_generator(state.shuffle)
                        batches = state.epoch_batches(self.num_items, self.batch_size)
                        for indices in batches[position.batch :]:
                            started = time.perf_counter()
                            local = distributed.shard(indices, self.world)
                            self.gradients.share = len(local) / len(indices)
                            loss, amounts = step(local, state.shuffle)
                            state.count_step(amounts, started)
                            bar.update()
                            bar.set_postfix(loss=f"{loss:.3f}")
                            requested = stop_requested(stop, self.world)
                            if requested:
                                raise self._stopped(requested)
                        row = epoch_row(position.epoch, position.step, distributed.sum_totals(state.totals))
                        if self.world.is_main:
                            append_jsonl(self.metrics_path, row)
                        state.next_epoch()
                        if distributed.any_rank(int(time.perf_counter() - self._last_save >= PARTIAL_SAVE_SECONDS)):
                            self.save()
            finally:
                bar.close()
            return position.step

    def _stopped(self, signal_name: str) -> TrainingStopped:
        path = self.save()
        return TrainingStopped(
            f"{self.label} training stopped ({signal_name}) after step {self.step} of "
            f"{self.num_epochs * self.per_epoch}; its state is saved in {path} (not a trained model: the final "
            f"one goes to {self.final_path}). To resume, call {self.resume_hint} again: it continues from that "
            "state and ends with the weights of an uninterrupted run",
            signal=signal_name, step=self.step, checkpoint=path, resume=self.resume_hint,
        )  # fmt: skip
