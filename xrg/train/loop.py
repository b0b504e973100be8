"""The resumable training loop XRayGAN and the Table-1 baselines share.

A run trains *phases* (a stage, or pre-training) of epochs of seeded batches. Its checkpoint
(``RUN/checkpoint.pt``, written at the start, after every epoch and when stopped) holds the
encoder, generator and discriminator weights, the optimizer states of the current phase, the
phase/epoch/batch position, the torch RNG state and the shuffle generator's state at the start
of the epoch, so a resumed run redraws that epoch's order, skips the batches already done
and ends bit-identical to an uninterrupted one on CPU. Resuming also tidies what a killed
process leaves: partial ``.NAME.*.tmp`` files, and metric rows of epochs the checkpoint does
not include (they are redone). A non-finite loss stops the run with
:class:`~xrg.errors.TrainingDiverged`, naming the step and the last good checkpoint.

:class:`PhasedTrainer` holds that machinery; a subclass builds its phases, datasets and
model, and says how one step goes (:meth:`PhasedTrainer._step`).

:class:`EpochLoop` is the same for the offline networks (the VCNs, the evaluation
classifier): one model, one optimizer, seeded epochs; its resumable state lives in
``NAME.partial.pt`` beside the final ``NAME.pt`` and a stop signal ends it with
:class:`~xrg.errors.TrainingStopped`, which says how to resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from xrg.checkpoint import CHECKPOINT_NAME, load_checkpoint
from xrg.data.datasets import XRayPairDataset, collate_pairs
from xrg.data.manifest import read_manifest
from xrg.data.reports import Vocabulary
from xrg.errors import CheckpointError, TrainingDiverged, TrainingStopped
from xrg.io import append_jsonl, atomic_write_jsonl, remove_temporaries
from xrg.locks import directory_lock
from xrg.train.runtime import StopRequests, epoch_batches, set_lr

METRICS_NAME = "metrics.jsonl"
SAMPLES_DIR = "samples"


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
    bad = [name for name, value in losses.items() if not torch.isfinite(value).all()]
    if bad:
        shown = ", ".join(f"{name}={float(value.detach()):.4g}" for name, value in losses.items())
        raise NonFinite(f"non-finite {', '.join(bad)} in the {where} ({shown})")


class PhaseLike(Protocol):
    name: str
    stage: int
    image_size: int
    num_epochs: int


@dataclass
class Optimizers:
    """The optimizers of one phase (no discriminator optimizer while pre-training)."""

    phase_index: int
    generator: torch.optim.Optimizer
    discriminator: torch.optim.Optimizer | None

    def all(self) -> Iterator[torch.optim.Optimizer]:
        yield self.generator
        if self.discriminator is not None:
            yield self.discriminator


class PhasedTrainer:
    """Checkpoints, exact resume, the epoch loop and metric rows of a phased GAN run.

    A subclass sets ``kind`` (the checkpoint and metrics kind), ``metric_keys`` and
    ``loss_keys``, and in its ``__init__`` the attributes ``config``, ``run_dir``, ``device``,
    ``progress``, ``phases``, ``train_sets`` (by image size), ``vocabulary`` and ``model`` (a
    :class:`~xrg.models.base.CheckpointedModel` of ``kind`` with discriminators, which saves and
    loads its own weights), calling :meth:`_check_run_dir` first and
    :meth:`_start` last. It implements :meth:`_make_optimizers`, :meth:`_batch_size`,
    :meth:`_step` and :meth:`_after_epoch`; the other hooks have defaults.
    """

    kind: str
    metric_keys: tuple[str, ...]
    loss_keys: tuple[str, ...]

    # ---- set-up ---------------------------------------------------------------------------

    def _load_train_sets(self, data_dir: Path, image_sizes: Any, max_sentences: int, max_words: int) -> None:
        """``train_sets`` (the train split at every size a phase needs) and ``vocabulary``."""
        self.data_dir = Path(data_dir)
        self._max_sentences, self._max_words = max_sentences, max_words
        self.train_sets = {
            size: XRayPairDataset(
                self.data_dir, "train", image_size=size, max_sentences=max_sentences, max_words=max_words
            )
            for size in sorted(set(image_sizes))
        }
        self.vocabulary = next(iter(self.train_sets.values())).vocab

    def _sample_batch(self, image_size: int, count: int) -> dict[str, Any]:
        """The cases of the sample grids at ``image_size``: validation cases, or train cases if there is no val split."""
        if image_size not in self._sample_batches:
            has_val = any(case.split == "val" for case in read_manifest(self.data_dir))
            dataset = XRayPairDataset(
                self.data_dir, "val" if has_val else "train", image_size=image_size, vocab=self.vocabulary,
                max_sentences=self._max_sentences, max_words=self._max_words,
            )  # fmt: skip
            self._sample_batches[image_size] = collate_pairs([dataset[i] for i in range(min(count, len(dataset)))])
        return self._sample_batches[image_size]

    def _check_run_dir(self, run_dir: Path, resume: bool, tidy: tuple[str, ...] = (SAMPLES_DIR,)) -> None:
        """Paths; a new run refuses an existing checkpoint, a resume needs one; partial files go."""
        self.run_dir = Path(run_dir)
        self.checkpoint_path = self.run_dir / CHECKPOINT_NAME
        self.metrics_path = self.run_dir / METRICS_NAME
        if resume and not self.checkpoint_path.is_file():
            raise CheckpointError(f"nothing to resume: {self.checkpoint_path} does not exist")
        if resume:  # a damaged or foreign checkpoint is refused now, before any other work is done
            load_checkpoint(self.checkpoint_path, self.kind)
        if not resume and self.checkpoint_path.is_file():
            raise CheckpointError(
                f"{self.run_dir} already holds a run ({self.checkpoint_path}); pass --resume (resume=True) "
                "to continue it, or choose another output directory"
            )
        #: What was tidied up after an earlier run was killed (printed by the command line).
        self.notes: list[str] = []
        #: Whether the checkpoint file, if there is one, is this trainer's (resumed from or written by it).
        self._checkpoint_is_ours = resume
        if not self.run_dir.is_dir():
            return
        # A process killed while writing leaves ``.NAME.*.tmp`` files (never a partial NAME); only
        # the directory's one writer may remove them.
        with directory_lock(self.run_dir, "run directory"):
            for directory in (self.run_dir, *(self.run_dir / name for name in tidy)):
                removed = remove_temporaries(directory)
                if removed:
                    self.notes.append(f"removed {len(removed)} partial file(s) a killed run left in {directory}")

    def _start(self, seed: int, resume: bool) -> None:
        """The shuffle generator and the position; then the checkpoint's state when resuming."""
        self.shuffle = torch.Generator().manual_seed(seed)
        self.position = Position()
        self.optimizers: Optimizers | None = None
        self._epoch_start_shuffle = self.shuffle.get_state()
        self._epoch_totals: dict[str, float] = {}
        self._last_saved_step = 0
        self._sample_batches: dict[int, dict[str, Any]] = {}
        if resume:
            self._load(self.checkpoint_path)

    @property
    def finished(self) -> bool:
        return self.position.phase >= len(self.phases)

    # ---- hooks --------------------------------------------------------------------------

    def _make_optimizers(self, phase: Any, phase_index: int) -> Optimizers:
        raise NotImplementedError

    def _batch_size(self, phase: Any) -> int:
        raise NotImplementedError

    def _step(self, phase: Any, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on ``batch``; raises :class:`NonFinite` before stepping on a bad loss."""
        raise NotImplementedError

    def _after_epoch(self, phase: Any) -> None:
        """Work at the end of an epoch, before its checkpoint (BatchNorm statistics, sample grids)."""

    def _begin_phase(self, phase: Any) -> None:
        """Set-up of a phase each time its loop (re)starts."""

    def _train_mode(self, phase: Any) -> None:
        self.model.train()

    def _checkpoint_extras(self) -> dict[str, Any]:
        return {}

    def _progress_extras(self) -> dict[str, Any]:
        return {}

    def _verify_checkpoint(self, payload: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint that does not belong to this run beyond its config and vocabulary."""

    def _metric_extras(self) -> dict[str, Any]:
        return {}

    def _phase_label(self, phase: Any) -> str:
        return f"{phase.name} phase, stage {phase.stage}"

    # ---- checkpoints ------------------------------------------------------------------

    def save(self) -> Path:
        """Write ``RUN/checkpoint.pt`` for the current position."""
        shuffle_state = self.shuffle.get_state() if self.position.batch == 0 else self._epoch_start_shuffle
        optimizers = None
        if self.optimizers is not None and self.optimizers.phase_index == self.position.phase:
            discriminator = self.optimizers.discriminator
            optimizers = {
                "phase": self.optimizers.phase_index,
                "generator": self.optimizers.generator.state_dict(),
                "discriminator": None if discriminator is None else discriminator.state_dict(),
            }
        rng = {"torch": torch.get_rng_state(), "shuffle": shuffle_state}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        self.model.save(
            self.checkpoint_path,
            run_config=self.config,
            vocabulary=self.vocabulary,
            optimizers=optimizers,
            progress={
                **dataclasses.asdict(self.position),
                "finished": self.finished,
                "num_phases": len(self.phases),
                **self._progress_extras(),
            },  # fmt: skip
            rng=rng,
            epoch_totals=dict(self._epoch_totals),
            **self._checkpoint_extras(),
        )
        self._last_saved_step = self.position.step
        self._checkpoint_is_ours = True
        return self.checkpoint_path

    def _load(self, path: Path) -> None:
        payload = load_checkpoint(
            path, self.kind, config=self.config, vocabulary=self.vocabulary, map_location=self.device
        )
        self._verify_checkpoint(payload, path)
        state = payload["state"]
        try:
            self.model.load_checkpoint_state(state)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint {path} does not match the model its config describes: {exc}") from exc
        progress = payload["progress"]
        self.position = Position(**{k: int(progress[k]) for k in ("phase", "epoch", "batch", "step")})
        # Generator states must be CPU byte tensors, whatever map_location moved them to.
        torch.set_rng_state(payload["rng"]["torch"].cpu())
        if "cuda" in payload["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["rng"]["cuda"].cpu(), self.device)
        self.shuffle.set_state(payload["rng"]["shuffle"].cpu())
        self._epoch_start_shuffle = payload["rng"]["shuffle"].cpu()
        self._epoch_totals = dict(payload["epoch_totals"])
        self._last_saved_step = self.position.step
        self._trim_metrics()
        stored = payload["optimizers"]
        if stored is not None and stored["phase"] == self.position.phase and not self.finished:
            self.optimizers = self._make_optimizers(self.phases[self.position.phase], self.position.phase)
            self.optimizers.generator.load_state_dict(stored["generator"])
            if self.optimizers.discriminator is not None:
                self.optimizers.discriminator.load_state_dict(stored["discriminator"])

    def _trim_metrics(self) -> None:
        """Drop metric rows of epochs the checkpoint does not include (and torn lines).

        A run killed after an epoch's row was appended but before its checkpoint was written
        redoes that epoch on resume; without this its row would appear twice.
        """
        if not self.metrics_path.is_file():
            return
        index = {(phase.name, phase.stage): i for i, phase in enumerate(self.phases)}
        done = (self.position.phase, self.position.epoch)
        kept, dropped = [], 0
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
                key = (index[(row["phase"], row["stage"])], int(row["epoch"])) if row.get("kind") == self.kind else None
            except (ValueError, KeyError, TypeError, AttributeError):  # a torn or foreign line
                dropped += 1
                continue
            if key is not None and key >= done:
                dropped += 1
                continue
            kept.append(row)
        if dropped:
            atomic_write_jsonl(self.metrics_path, kept)
            self.notes.append(f"dropped {dropped} line(s) of {self.metrics_path} written after the checkpoint")

    # ---- the loop ---------------------------------------------------------------------

    def _diverged(self, error: NonFinite, phase: Any) -> TrainingDiverged:
        return TrainingDiverged(
            f"training diverged at step {self.position.step + 1} ({self._phase_label(phase)}, "
            f"{phase.image_size}px, epoch {self.position.epoch}, batch {self.position.batch}): {error}. "
            f"The last good checkpoint, {self.checkpoint_path} (step {self._last_saved_step}), is kept; "
            "lower the learning rates or the loss weights and start a new run"
        )

    def train(self, max_steps: int | None = None) -> TrainResult:
        """Train to the end, or until the run has done ``max_steps`` steps in all, or a stop signal.

        A stopped run writes a checkpoint first; ``resume=True`` continues it exactly.
        """
        with directory_lock(self.run_dir, "run directory"):
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
                    self.position = Position(phase=self.position.phase + 1, step=self.position.step)
                    self.optimizers = None
                    self.save()
        return TrainResult(self.run_dir, self.checkpoint_path, True, self.position.step)

    def _batches_per_epoch(self, phase: Any) -> int:
        train_set = self.train_sets[phase.image_size]
        return len(epoch_batches(len(train_set), self._batch_size(phase), torch.Generator().manual_seed(0)))

    def _train_phase(self, phase: Any, max_steps: int | None, stop: StopRequests) -> str | None:
        """Train the remaining epochs of ``phase``; the reason it stopped early, or None."""
        if self.optimizers is None:
            self.optimizers = self._make_optimizers(phase, self.position.phase)
        self._begin_phase(phase)
        train_set = self.train_sets[phase.image_size]
        per_epoch = self._batches_per_epoch(phase)
        bar = tqdm(
            total=phase.num_epochs * per_epoch,
            initial=self.position.epoch * per_epoch + self.position.batch,
            desc=self._progress_label(phase),
            unit="step",
            disable=not self.progress,
        )
        try:
            while self.position.epoch < phase.num_epochs:
                if max_steps is not None and self.position.step >= max_steps:
                    return "max_steps"
                if self.position.batch == 0:
                    self._epoch_start_shuffle = self.shuffle.get_state()
                    self._epoch_totals = {}
                else:
                    self.shuffle.set_state(self._epoch_start_shuffle)
                batches = epoch_batches(len(train_set), self._batch_size(phase), self.shuffle)
                lr = phase.lr_at(self.position.epoch, self.config)
                for optimizer in self.optimizers.all():
                    set_lr(optimizer, lr)
                self._train_mode(phase)
                for indices in batches[self.position.batch :]:
                    started = time.perf_counter()
                    batch = collate_pairs([train_set[i] for i in indices])
                    try:
                        losses = self._step(phase, batch)
                    except NonFinite as error:
                        raise self._diverged(error, phase) from None
                    self.position.batch += 1
                    self.position.step += 1
                    totals = self._epoch_totals
                    for name, value in losses.items():
                        totals[name] = totals.get(name, 0.0) + value
                    totals["batches"] = totals.get("batches", 0) + 1
                    totals["images"] = totals.get("images", 0) + 2 * len(indices)  # both views
                    totals["seconds"] = totals.get("seconds", 0.0) + time.perf_counter() - started
                    bar.update()
                    bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items() if k in ("d_loss", "g_loss", "rec_loss")})
                    if stop.requested:
                        return stop.requested
                    if max_steps is not None and self.position.step >= max_steps and self.position.batch < len(batches):
                        return "max_steps"
                self._end_epoch(phase, lr)
        finally:
            bar.close()
        return None

    def _progress_label(self, phase: Any) -> str:
        return f"{phase.name} stage {phase.stage} ({phase.image_size}px)"

    def _end_epoch(self, phase: Any, lr: float) -> None:
        totals = self._epoch_totals
        batches = max(totals.get("batches", 0), 1)
        seconds = totals.get("seconds", 0.0)
        row: dict[str, Any] = {key: None for key in self.metric_keys}
        row.update(
            kind=self.kind, phase=phase.name, stage=phase.stage, image_size=phase.image_size,
            epoch=self.position.epoch, step=self.position.step, lr=lr, seconds=seconds,
            images_per_s=totals.get("images", 0) / seconds if seconds > 0 else None, **self._metric_extras(),
        )  # fmt: skip
        row.update({name: totals[name] / batches for name in self.loss_keys if name in totals})
        append_jsonl(self.metrics_path, row)
        self._after_epoch(phase)
        self.position.epoch += 1
        self.position.batch = 0
        self._epoch_totals = {}
        self.save()


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


def trim_metrics(path: Path, drop: Callable[[dict[str, Any]], bool]) -> int:
    """Rewrite the JSON-lines file ``path`` (atomically) without the rows ``drop`` selects and torn lines."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or drop(row):
                dropped += 1
                continue
        except (ValueError, TypeError, KeyError):
            dropped += 1
            continue
        kept.append(row)
    if dropped:
        atomic_write_jsonl(path, kept)
    return dropped


class EpochLoop:
    """Seeded epochs over one model and optimizer that stop on SIGINT/SIGTERM and resume exactly.

    The resumable state goes to :func:`partial_path` of ``final_path`` — never under the final
    name, and marked ``progress.finished = False`` so that no loader takes it for a trained
    model — atomically: after the step that was running when SIGINT or SIGTERM came (then
    :class:`~xrg.errors.TrainingStopped` is raised, naming the file and ``resume``, the call
    that continues), and at epoch ends every :data:`PARTIAL_SAVE_SECONDS`. It holds the model
    and optimizer states, the epoch/batch/step position, the torch RNG state, the shuffle
    generator's state at the start of the epoch (to redraw its batch order) and now (the step
    function may draw from it too), and the epoch's running totals. :meth:`run` continues from
    it when it exists (refusing one of other settings, vocabulary or data), so the weights end
    bit-identical to an uninterrupted run on CPU; metric rows of this training written after
    it (by a killed process) are dropped first. The caller writes the final checkpoint, then
    calls :meth:`finish`, which removes the partial file.

    ``metric_match`` selects this training's rows in ``metrics_path`` (besides ``kind`` for the
    epoch rows and ``kind + "_test"`` for the test row).
    """

    def __init__(
        self, *, kind: str, label: str, final_path: Path, config: Any, vocabulary: Vocabulary, model: torch.nn.Module,
        optimizer: torch.optim.Optimizer, num_items: int, batch_size: int, num_epochs: int, seed: int,
        device: torch.device, metrics_path: Path, metric_match: Mapping[str, Any], data_key: str, resume: str,
        progress: bool = True,
    ) -> None:  # fmt: skip
        self.kind, self.label, self.config, self.vocabulary = kind, label, config, vocabulary
        self.final_path, self.path = Path(final_path), partial_path(final_path)
        self.model, self.optimizer, self.device = model, optimizer, device
        self.num_items, self.batch_size, self.num_epochs = num_items, batch_size, num_epochs
        self.metrics_path, self.metric_match, self.data_key = Path(metrics_path), dict(metric_match), data_key
        self.resume_hint, self.progress = resume, progress
        self.shuffle = torch.Generator().manual_seed(seed)
        self._epoch_shuffle = self.shuffle.get_state()
        self.epoch = self.batch = self.step = 0
        self.totals: dict[str, float] = {}
        self.notes: list[str] = []
        self.per_epoch = len(epoch_batches(num_items, batch_size, torch.Generator().manual_seed(0)))
        self._last_save = time.perf_counter()

    # ---- the resumable state -------------------------------------------------------------

    def save(self) -> Path:
        rng = {
            "torch": torch.get_rng_state(),
            "shuffle": self.shuffle.get_state(),
            "epoch_shuffle": self._epoch_shuffle,
        }
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        self.model.save(
            self.path, run_config=self.config, vocabulary=self.vocabulary,
            optimizer=self.optimizer.state_dict(), rng=rng, epoch_totals=dict(self.totals), data=self.data_key,
            progress={"epoch": self.epoch, "batch": self.batch, "step": self.step, "finished": False},
        )  # fmt: skip
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
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{self.path} does not match the model its config describes: {exc}; {keep}") from exc
        progress = payload["progress"]
        self.epoch, self.batch, self.step = (int(progress[k]) for k in ("epoch", "batch", "step"))
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(payload["rng"]["cuda"], self.device)
        self.shuffle.set_state(payload["rng"]["shuffle"])
        self._epoch_shuffle = payload["rng"]["epoch_shuffle"]
        self.totals = dict(payload["epoch_totals"])
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

        dropped = trim_metrics(self.metrics_path, later)
        if dropped:
            self.notes.append(f"dropped {dropped} line(s) of {self.metrics_path} written after the saved state")

    def finish(self) -> None:
        """Remove the resumable state (call once the final checkpoint is written)."""
        self.path.unlink(missing_ok=True)

    # ---- the loop ----------------------------------------------------------------------

    def _batches(self) -> list[list[int]]:
        """This epoch's batches; mid-epoch the order is redrawn from the epoch's start state."""
        if self.batch == 0:
            self._epoch_shuffle = self.shuffle.get_state()
            self.totals = {}
            return epoch_batches(self.num_items, self.batch_size, self.shuffle)
        now = self.shuffle.get_state()
        self.shuffle.set_state(self._epoch_shuffle)
        batches = epoch_batches(self.num_items, self.batch_size, self.shuffle)
        self.shuffle.set_state(now)
        return batches

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
        with directory_lock(self.path.parent, "run directory"):
            return self._run(step, epoch_row)

    def _run(
        self,
        step: Callable[[list[int], torch.Generator], tuple[float, dict[str, float]]],
        epoch_row: Callable[[int, int, dict[str, float]], dict[str, Any]],
    ) -> int:
        if self.path.is_file():
            self._load()
        self._tidy()
        bar = tqdm(
            total=self.num_epochs * self.per_epoch, initial=min(self.step, self.num_epochs * self.per_epoch),
            desc=self.label, unit="step", disable=not self.progress,
        )  # fmt: skip
        try:
            with StopRequests() as stop:
                while self.epoch < self.num_epochs:
                    batches = self._batches()
                    for indices in batches[self.batch :]:
                        started = time.perf_counter()
                        loss, amounts = step(indices, self.shuffle)
                        self.batch += 1
                        self.step += 1
                        for name, value in amounts.items():
                            self.totals[name] = self.totals.get(name, 0) + value
                        self.totals["seconds"] = self.totals.get("seconds", 0.0) + time.perf_counter() - started
                        bar.update()
                        bar.set_postfix(loss=f"{loss:.3f}")
                        if stop.requested:
                            raise self._stopped(stop.requested)
                    append_jsonl(self.metrics_path, epoch_row(self.epoch, self.step, dict(self.totals)))
                    self.epoch, self.batch, self.totals = self.epoch + 1, 0, {}
                    if time.perf_counter() - self._last_save >= PARTIAL_SAVE_SECONDS:
                        self.save()
        finally:
            bar.close()
        return self.step

    def _stopped(self, signal_name: str) -> TrainingStopped:
        path = self.save()
        return TrainingStopped(
            f"{self.label} training stopped ({signal_name}) after step {self.step} of "
            f"{self.num_epochs * self.per_epoch}; its state is saved in {path} (not a trained model: the final "
            f"one goes to {self.final_path}). To resume, call {self.resume_hint} again: it continues from that "
            "state and ends with the weights of an uninterrupted run",
            signal=signal_name, step=self.step, checkpoint=path, resume=self.resume_hint,
        )  # fmt: skip
