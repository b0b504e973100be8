"""Plain helpers the test modules share: ``from helpers import ...`` (pytest puts ``tests/`` on the path).

Tiny training configs, a small synthetic data directory, metric rows, SIGTERM at a chosen step
and a one-thread context for torch. The fixtures built on them are in ``conftest.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrg.checkpoint import INTEGRITY_ALGORITHM, INTEGRITY_KEY, payload_digest
from xrg.data.findings import Finding
from xrg.data.images import save_png
from xrg.data.manifest import Case, write_manifest
from xrg.data.reports import Vocabulary
from xrg.models.baselines import BaselineModelConfig
from xrg.models.diffusevae import ConditionConfig, UNetConfig, VAEConfig
from xrg.models.moco import MoCoConfig
from xrg.models.pggan import PGGANModelConfig
from xrg.models.xraygan import XRayGANModelConfig
from xrg.train.baselines import BaselineTrainConfig
from xrg.train.diffusevae import DDPMStage, DiffuseVAETrainConfig, FinetuneStage, MoCoStage, VAEStage
from xrg.train.pggan import PGGANTrainConfig
from xrg.train.vcn import VCNTrainConfig
from xrg.train.xraygan import XRayGANTrainConfig

#: 16² → 32², narrow layers; with the VCNs of :data:`VCN_TINY` (the ``vcn_run`` fixture).
XRAYGAN_TINY = XRayGANTrainConfig(
    model=XRayGANModelConfig(
        embed_dim=8, hidden=8, base_size=16, num_stages=2, gen_channels=8, disc_channels=8, cond_channels=4,
        max_channels=32, disc_max_downsamplings=2,
    ),
    lr=(2e-3, 2e-3), batch_size=(6, 6), num_epochs=(2, 2), pretrain_epochs=1, num_samples=2,
)  # fmt: skip
VCN_TINY = VCNTrainConfig(num_epochs=1, batch_size=8)
#: 32², narrow layers; ``replaced(BASELINE_TINY, model={"method": ...})`` for the other methods.
BASELINE_TINY = BaselineTrainConfig(
    model=BaselineModelConfig(
        embed_dim=8, hidden=8, image_size=32, base_size=16, noise_dim=8, ca_dim=8, gen_channels=8, disc_channels=8,
        max_channels=32,
    ),
    lr=1e-3, batch_size=6, num_epochs=2, num_samples=2, bn_recalibration_batches=2,
)  # fmt: skip
#: 4² → 16², 16-d latent, 16 channels; 18 train cases in batches of 6 make 3 steps an epoch.
PGGAN_TINY = PGGANTrainConfig(
    model=PGGANModelConfig(final_size=16, latent_dim=16, channel_base=256, max_channels=16),
    batch_size=(6, 6, 6), num_epochs=(1, 2, 1), num_samples=2,
)  # fmt: skip
#: DiffuseVAE + MoCo at 16², 20 timesteps; 18 train cases in batches of 6 make 3 steps an epoch, 2 epochs a stage.
DIFFUSEVAE_TINY = DiffuseVAETrainConfig(
    condition=ConditionConfig(mode="findings", cond_dim=8, embed_dim=8, hidden=8),
    vae=VAEStage(model=VAEConfig(image_size=16, base_channels=4, max_channels=16, latent_dim=8), num_epochs=2, batch_size=6),
    moco=MoCoStage(model=MoCoConfig(image_size=16, width=4, feature_dim=8, queue_size=10), num_epochs=2, batch_size=6),
    ddpm=DDPMStage(model=UNetConfig(image_size=16, base_channels=8, channel_mults=(1, 2), timesteps=20), num_epochs=2,
                   batch_size=6, lr=1e-3),
    finetune=FinetuneStage(num_epochs=2, batch_size=6),
    sample_steps=4, num_samples=2,
)  # fmt: skip
UNTIMED = ("seconds", "images_per_s")


def replaced(config: Any, model: dict[str, Any] | None = None, **changes: Any) -> Any:
    """``dataclasses.replace`` of a run config; ``model`` holds changes of its nested model config."""
    if model:
        changes["model"] = dataclasses.replace(config.model, **model)
    return dataclasses.replace(config, **changes)


def write_synthetic_data(
    out: Path,
    num_patients: int = 20,
    image_size: int = 32,
    seed: int = 0,
    labelled: bool = False,
    canonical: bool = False,
) -> Path:
    """A data directory whose two views of a patient share a patient-specific brightness.

    The frontal shows an ellipse and the lateral a band whose width also follows the patient;
    the report says whether the heart (the width) is enlarged and the lungs (the brightness)
    dense. Splits cycle train, train, train, val, test. With ``labelled`` an enlarged heart is
    also a structured ``cardiomegaly`` finding and dense lungs an ``opacity`` (labels to judge).
    With ``canonical`` every train case also gets canonical-pose targets: the images the text
    alone implies (brightness 0.3 or 0.7, width 0.15 or 0.25), without the patient's own values.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    cases = []

    def draw(level: float, width: float) -> tuple[np.ndarray, np.ndarray]:
        frontal = 0.7 * level + 0.3 * ((((xx - 0.5) / width) ** 2 + ((yy - 0.5) / 0.35) ** 2) < 1)
        return frontal, 0.7 * level + 0.3 * (np.abs(xx - 0.5) < 0.8 * width)

    for i in range(num_patients):
        level, width = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.3)
        case_id = f"case{i:03d}"
        for view, image in zip(("frontal", "lateral"), draw(level, width)):
            save_png(out / "images" / f"{case_id}_{view}.png", np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1))
        heart = "enlarged" if width > 0.2 else "normal"
        lungs = "dense" if level > 0.5 else "clear"
        split = ("train", "train", "train", "val", "test")[i % 5]
        targets = {}
        if canonical and split == "train":
            for view, image in zip(
                ("frontal", "lateral"), draw(0.7 if lungs == "dense" else 0.3, 0.25 if heart == "enlarged" else 0.15)
            ):
                targets[view] = f"images/{case_id}_{view}_canonical.png"
                save_png(out / targets[view], image)
        cases.append(
            Case(
                id=case_id,
                patient_id=f"patient{i}",
                split=split,
                findings=f"The heart is {heart}. The lungs are {lungs}.",
                impression="No effusion.",
                structured_findings=[
                    Finding(kind)
                    for kind, present in (("cardiomegaly", heart == "enlarged"), ("opacity", lungs == "dense"))
                    if labelled and present
                ],
                frontal=f"images/{case_id}_frontal.png",
                lateral=f"images/{case_id}_lateral.png",
                canonical=targets,
            )  # fmt: skip
        )
    write_manifest(out, cases)
    Vocabulary.build([f"{c.findings} {c.impression}" for c in cases if c.split == "train"]).save(out / "vocab.json")
    return out


def new_run(tmp_path: Path, vcn_run: Path, name: str = "run") -> Path:
    """A fresh XRayGAN run directory holding a copy of the VCNs in ``vcn_run``."""
    run = tmp_path / name
    shutil.copytree(vcn_run / "vcn", run / "vcn")
    return run


def metric_rows(run: Path) -> list[dict]:
    """The rows of ``run/metrics.jsonl``."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    """Metric rows without their wall-clock fields, which no two runs share."""
    return [{k: v for k, v in row.items() if k not in UNTIMED} for row in rows]


def stop_at(monkeypatch, module, name: str, steps: set[int]) -> list[int]:
    """Wrap ``module.name`` (called once per step) to send SIGTERM to this process at the given calls."""
    real, calls = getattr(module, name), []

    def wrapped(*args, **kwargs):
        calls.append(len(calls) + 1)
        if calls[-1] in steps:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler of StopRequests runs at once, in this thread
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` threads inside the block.

    Tiny networks gain nothing from a second thread, and on a busy two-core machine a second
    thread spin-waiting for the first makes every call many times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def resealed(payload: dict) -> dict:
    """``payload`` with its checksum recomputed: as xrg itself would have written it."""
    payload = {key: value for key, value in payload.items() if key != INTEGRITY_KEY}
    payload[INTEGRITY_KEY] = {"algorithm": INTEGRITY_ALGORITHM, "digest": payload_digest(payload)}
    return payload
