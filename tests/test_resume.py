"""Stop and resume, for every trainer that resumes: bit-identical to an uninterrupted run.

Each case trains a tiny run straight through, and another that is stopped several times —
mid-epoch, at epoch ends, at a phase boundary — and resumed each time. The two final
checkpoints must hold the same weights and the same everything else (optimizer and RNG
states, progress, test metrics), and the metric rows must agree but for their timing.

* XRayGAN and the Table-1 baselines (:class:`~xrg.train.loop.PhasedTrainer`) stop with
  ``train(max_steps=...)`` and continue with ``resume=True``.
* The VCN and the evaluation classifier (:class:`~xrg.train.loop.EpochLoop`) stop on SIGTERM,
  sent from inside a step, and continue when called again.

The CLI, the kill and the crash variants are in tests/robustness/.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

import xrg.train.evaluators
import xrg.train.pathology
import xrg.train.vcn
from helpers import (
    BASELINE_TINY,
    DIFFUSEVAE_TINY,
    PGGAN_TINY,
    UNTIMED,
    VCN_TINY,
    XRAYGAN_TINY,
    metric_rows,
    new_run,
    replaced,
    stop_at,
    torch_threads,
    without_timing,
)
from xrg.checkpoint import load_checkpoint
from xrg.errors import TrainingStopped
from xrg.eval.evaluators import CLASSIFIER_NAME, ClassifierTrainConfig
from xrg.models.diffusevae import stage_model
from xrg.train.baselines import BASELINE_METHODS, BaselineTrainer
from xrg.train.diffusevae import STAGE_NEEDS, STAGES, DiffuseVAETrainer, stage_checkpoint
from xrg.train.evaluators import train_classifier
from xrg.train.loop import PhasedTrainer, partial_path
from xrg.train.pathology import PathologyTrainConfig, classifier_name, train_pathology_classifier
from xrg.train.pggan import PGGANTrainer
from xrg.train.vcn import VCN_DIR, train_vcn, vcn_path
from xrg.train.xraygan import XRayGANTrainer


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@dataclasses.dataclass
class Env:
    data_dir: Path
    tmp_path: Path
    monkeypatch: pytest.MonkeyPatch
    request: pytest.FixtureRequest


@dataclasses.dataclass(frozen=True)
class Phased:
    """XRayGAN or a baseline: 18 train cases in batches of 6 make 3 steps an epoch."""

    kind: str
    make: Callable[..., PhasedTrainer]  # (data_dir, run, resume) -> trainer
    total_steps: int
    stops: tuple[int, ...]
    needs_vcns: bool = False

    def new_run(self, env: Env, name: str) -> Path:
        return (
            new_run(env.tmp_path, env.request.getfixturevalue("vcn_run"), name)
            if self.needs_vcns
            else env.tmp_path / name
        )

    def straight(self, env: Env, run: Path) -> None:
        result = self.make(env.data_dir, run, resume=False).train()
        assert result.finished and result.step == self.total_steps

    def stop(self, env: Env, run: Path, step: int, previous: int) -> None:
        result = self.make(env.data_dir, run, resume=previous > 0).train(max_steps=step)
        assert not result.finished and result.step == step and result.stopped_by == "max_steps"

    def finish(self, env: Env, run: Path) -> None:
        assert self.make(env.data_dir, run, resume=True).train().finished

    def checkpoint(self, run: Path) -> Path:
        return run / "checkpoint.pt"

    def metrics(self, run: Path) -> list[dict]:
        return metric_rows(run)


@dataclasses.dataclass(frozen=True)
class DiffuseVAEStage(Phased):
    """One stage of a DiffuseVAE run (``RUN/STAGE``), the stages it needs trained first (the same in both runs)."""

    stage: str = "vae"

    def checkpoint(self, run: Path) -> Path:
        return stage_checkpoint(run, self.stage)

    def metrics(self, run: Path) -> list[dict]:
        return metric_rows(run / self.stage)


def diffusevae_stage(stage: str) -> Callable[..., PhasedTrainer]:
    def make(data: Path, run: Path, resume: bool) -> PhasedTrainer:
        def prepare(name: str) -> None:
            for need in STAGE_NEEDS[name]:
                prepare(need)
                if not stage_checkpoint(run, need).is_file():
                    assert DiffuseVAETrainer(DIFFUSEVAE_TINY, need, data, run, progress=False).train().finished

        prepare(stage)
        return DiffuseVAETrainer(DIFFUSEVAE_TINY, stage, data, run, progress=False, resume=resume)

    return make


@dataclasses.dataclass(frozen=True)
class Stoppable:
    """The VCN or the evaluation classifier: ``train(data_dir, run)`` resumes by itself; SIGTERM
    is sent during the call of ``module.step_function`` (once a step) that ends a stopped part."""

    kind: str
    train: Callable[[Path, Path], Any]
    final: Callable[[Path], Path]  # run -> the trained model's file
    metrics_dir: Callable[[Path], Path]  # run -> the folder of its metrics.jsonl
    module: ModuleType
    step_function: str
    total_steps: int
    stops: tuple[int, ...]

    def new_run(self, env: Env, name: str) -> Path:
        return env.tmp_path / name

    def straight(self, env: Env, run: Path) -> None:
        self.train(env.data_dir, run)
        assert load_checkpoint(self.final(run), self.kind)["step"] == self.total_steps

    def stop(self, env: Env, run: Path, step: int, previous: int) -> None:
        with env.monkeypatch.context() as patch:
            calls = stop_at(patch, self.module, self.step_function, {step - previous})
            with pytest.raises(TrainingStopped) as caught:
                self.train(env.data_dir, run)
        stopped = caught.value
        assert len(calls) == step - previous and stopped.step == step and stopped.signal == "SIGTERM"
        assert stopped.checkpoint == partial_path(self.final(run)) and stopped.checkpoint.is_file()
        assert not self.final(run).exists()

    def finish(self, env: Env, run: Path) -> None:
        self.train(env.data_dir, run)
        assert not partial_path(self.final(run)).exists()

    def checkpoint(self, run: Path) -> Path:
        return self.final(run)

    def metrics(self, run: Path) -> list[dict]:
        return metric_rows(self.metrics_dir(run))


# Dropout and noise use the torch RNG, shuffling its own generator: both must be restored.
XRAYGAN = replaced(XRAYGAN_TINY, model={"encoder_dropout": 0.2, "noise_dim": 3}, lr_decay_every=1, num_epochs=(1, 2))
# Dropout, noise, CA samples and wrong reports use the torch RNG, shuffling its own generator.
BASELINE = replaced(BASELINE_TINY, model={"encoder_dropout": 0.2}, lr_decay_every=1, num_epochs=4)
VCN = dataclasses.replace(VCN_TINY, image_size=16, num_epochs=2, batch_size=6)
CLASSIFIER = ClassifierTrainConfig(image_size=32, num_epochs=2, batch_size=6, seed=3)
# patience 0: the plateau scheduler may cut the rate after the first epoch, so its state must resume too
SEARCH = PathologyTrainConfig(image_size=32, num_epochs=2, batch_size=6, seed=3, plateau_patience=0)

CASES = {
    # 12 steps: pretraining 0-3, stage 0 3-6, stage 1 6-12. Stops mid-epoch (2, 4), at the end
    # of stage 0 (6) and at an epoch boundary of stage 1 (9).
    "xraygan": Phased(
        "xraygan", lambda data, run, resume: XRayGANTrainer(XRAYGAN, data, run, VCN_TINY, progress=False, resume=resume),
        total_steps=12, stops=(2, 4, 6, 9), needs_vcns=True,
    ),
    # 12 steps in 4 epochs (stackgan: Stage I the first two). Stops mid-epoch (2, 4, 8) and at the
    # end of epoch 2, Stage I's (6).
    **{
        f"baseline-{method}": Phased(
            "baseline",
            lambda data, run, resume, method=method: BaselineTrainer(
                replaced(BASELINE, model={"method": method}), data, run, progress=False, resume=resume
            ),
            total_steps=12, stops=(2, 4, 6, 8),
        )
        for method in BASELINE_METHODS
    },
    # 12 steps: 4² 0-3, 8² 3-9 (α fades in over 3-6), 16² 9-12. Stops mid-epoch (2), mid-fade (4),
    # at the end of the fade-in (6) and at the end of the 8² stage (9): α is a function of the position.
    "pggan": Phased(
        "pggan", lambda data, run, resume: PGGANTrainer(PGGAN_TINY, data, run, progress=False, resume=resume),
        total_steps=12, stops=(2, 4, 6, 9),
    ),
    # Every DiffuseVAE stage: 6 steps in 2 epochs (the VAE's sampling, MoCo's augmentations and queue, the
    # DDPM's timesteps, noise and condition dropout, the moving average). Stops mid-epoch (2), at the
    # last step of epoch 0 (3) and in epoch 1 (4).
    **{
        f"diffusevae-{stage}": DiffuseVAEStage(
            stage_model(stage).kind,
            diffusevae_stage(stage), total_steps=6, stops=(2, 3, 4), stage=stage,
        )
        for stage in STAGES
    },
    # 6 steps in 2 epochs. Stops mid-epoch (2), at the last step of epoch 0 (3) and at the first of epoch 1 (4).
    "vcn": Stoppable(
        "vcn", lambda data, run: train_vcn(data, VCN, run, progress=False), lambda run: vcn_path(run, VCN.image_size),
        lambda run: run / VCN_DIR, xrg.train.vcn, "vcn_step", total_steps=6, stops=(2, 3, 4),
    ),
    # 6 steps in 2 epochs. Stops mid-epoch (2), then once more in the next epoch (4).
    "classifier": Stoppable(
        "classifier", lambda data, out: train_classifier(data, CLASSIFIER, out, progress=False),
        lambda out: out / CLASSIFIER_NAME, lambda out: out, xrg.train.evaluators, "weighted_bce",
        total_steps=6, stops=(2, 4),
    ),
    # 6 steps in 2 epochs; stops mid-epoch (2) and after the epoch end that stepped the scheduler (4).
    "search-classifier": Stoppable(
        "classifier", lambda data, out: train_pathology_classifier(data, SEARCH, out, progress=False),
        lambda out: out / classifier_name("densenet"), lambda out: out, xrg.train.pathology, "weighted_bce",
        total_steps=6, stops=(2, 4),
    ),
}  # fmt: skip


def weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A checkpoint's ``state`` by name; XRayGAN and the baselines nest it by part (``generator.NAME``)."""
    flat = {}
    for key, value in state.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": tensor for name, tensor in value.items()})
        else:
            flat[key] = value
    return flat


def differences(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Where two checkpoint payloads differ: tensors bit for bit, containers key by key, floats exactly."""
    if isinstance(expected, torch.Tensor):
        same = (
            isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype and expected.shape == actual.shape
            and torch.equal(expected, actual)
        )  # fmt: skip
        return [] if same else [where]
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or expected.keys() != actual.keys():
            return [f"{where}: keys {sorted(map(str, expected))} != {sorted(map(str, actual or {}))}"]
        return [d for key in expected for d in differences(expected[key], actual[key], f"{where}.{key}")]
    if isinstance(expected, list | tuple):
        if type(actual) is not type(expected) or len(actual) != len(expected):
            return [f"{where}: {expected!r} != {actual!r}"]
        return [d for i, (e, a) in enumerate(zip(expected, actual)) for d in differences(e, a, f"{where}[{i}]")]
    both_nan = isinstance(expected, float) and isinstance(actual, float) and math.isnan(expected) and math.isnan(actual)
    return (
        []
        if both_nan or (type(expected) is type(actual) and expected == actual)
        else [f"{where}: {expected!r} != {actual!r}"]
    )


@pytest.mark.parametrize("name", list(CASES))
def test_a_stopped_and_resumed_run_ends_bit_identical_to_a_straight_run(name, tmp_path, monkeypatch, data_dir, request):
    case = CASES[name]
    env = Env(data_dir, tmp_path, monkeypatch, request)
    straight = case.new_run(env, "straight")
    case.straight(env, straight)

    stopped = case.new_run(env, "stopped")
    previous = 0
    for step in case.stops:
        assert previous < step < case.total_steps
        case.stop(env, stopped, step, previous)
        previous = step
    case.finish(env, stopped)

    expected = load_checkpoint(case.checkpoint(straight), case.kind)
    actual = load_checkpoint(case.checkpoint(stopped), case.kind)
    want, got = weights(expected["state"]), weights(actual["state"])
    assert got.keys() == want.keys() and len(want) > 20
    for key, tensor in want.items():
        assert torch.equal(tensor, got[key]), f"{key} differs"
    for payload in (expected, actual):  # the epoch's running totals count its wall time
        if "epoch_totals" in payload:
            payload["epoch_totals"] = {k: v for k, v in payload["epoch_totals"].items() if k not in UNTIMED}
    assert differences(expected, actual) == []  # optimizer and RNG states, progress, test metrics
    assert actual["progress"]["finished"] is True and actual["progress"]["step"] == case.total_steps

    rows = without_timing(case.metrics(stopped))
    assert rows and rows == without_timing(case.metrics(straight))
