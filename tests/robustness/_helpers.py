"""Shared pieces of the robustness suite: a tiny synthetic data directory, a tiny XRayGAN
config, a randomly initialised checkpoint written by the real checkpoint functions, and a few
real Open-i XML reports."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from xrg.data.images import save_png
from xrg.data.manifest import Case, write_manifest
from xrg.data.reports import Vocabulary
from xrg.train.checkpoint import INTEGRITY_ALGORITHM, INTEGRITY_KEY, payload_digest, save_checkpoint
from xrg.train.xraygan import XRayGAN, XRayGANTrainConfig

#: 16² → 32², narrow layers, no VCN (vc_weight 0): a full run is 4 epochs of 3 steps.
#: Dropout and noise make the resume check cover both random number generators.
TINY = XRayGANTrainConfig(
    embed_dim=8, hidden=8, base_size=16, num_stages=2, gen_channels=8, disc_channels=8, cond_channels=4,
    max_channels=32, disc_max_downsamplings=2, lr=(2e-3, 2e-3), batch_size=(4, 4), num_epochs=(2, 1),
    pretrain_epochs=1, num_samples=2, vc_weight=0.0, encoder_dropout=0.2, noise_dim=2, bn_recalibration_batches=2,
)  # fmt: skip
#: Train cases of :func:`write_synthetic_data` with 20 patients (splits cycle train x3, val, test).
TRAIN_CASES = 12
STEPS_PER_EPOCH = TRAIN_CASES // 4
TOTAL_STEPS = STEPS_PER_EPOCH * (1 + 2 + 1)


def write_synthetic_data(out: Path, num_patients: int = 20, image_size: int = 32, seed: int = 0) -> Path:
    """A small data directory: per patient an ellipse (frontal) and a band (lateral), a short report."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    cases = []
    for i in range(num_patients):
        level, width = rng.uniform(0.15, 0.85), rng.uniform(0.1, 0.3)
        frontal = 0.7 * level + 0.3 * ((((xx - 0.5) / width) ** 2 + ((yy - 0.5) / 0.35) ** 2) < 1)
        lateral = 0.7 * level + 0.3 * (np.abs(xx - 0.5) < 0.8 * width)
        case_id = f"case{i:03d}"
        for view, image in (("frontal", frontal), ("lateral", lateral)):
            save_png(out / "images" / f"{case_id}_{view}.png", np.clip(image + rng.normal(0, 0.02, image.shape), 0, 1))
        heart = "enlarged" if width > 0.2 else "normal"
        lungs = "dense" if level > 0.5 else "clear"
        cases.append(
            Case(
                id=case_id, patient_id=f"patient{i}", split=("train", "train", "train", "val", "test")[i % 5],
                findings=f"The heart is {heart}. The lungs are {lungs}.", impression="No effusion.",
                structured_findings=[], frontal=f"images/{case_id}_frontal.png", lateral=f"images/{case_id}_lateral.png",
            )  # fmt: skip
        )
    write_manifest(out, cases)
    Vocabulary.build([f"{c.findings} {c.impression}" for c in cases if c.split == "train"]).save(out / "vocab.json")
    return out


def resealed(payload: dict) -> dict:
    """``payload`` with its checksum recomputed: as xrg itself would have written it."""
    payload = {key: value for key, value in payload.items() if key != INTEGRITY_KEY}
    payload[INTEGRITY_KEY] = {"algorithm": INTEGRITY_ALGORITHM, "digest": payload_digest(payload)}
    return payload


def random_checkpoint(path: Path, config: XRayGANTrainConfig, vocabulary: Vocabulary, seed: int = 0, **extra) -> Path:
    """A randomly initialised XRayGAN saved through :func:`save_checkpoint`, marked finished."""
    torch.manual_seed(seed)
    model = XRayGAN(config, len(vocabulary))
    contents = dict(
        state={
            "encoder": model.encoder.state_dict(),
            "generator": model.generator.state_dict(),
            "discriminators": model.discriminators.state_dict(),
        },
        optimizers=None,
        progress={"phase": 0, "epoch": 0, "batch": 0, "step": 0, "finished": True, "num_phases": 0},
        vcns={},
    )
    contents.update(extra)
    save_checkpoint(path, "xraygan", config, vocabulary, **contents)
    return path


def real_openi_xml(count: int = 24) -> list[tuple[str, bytes]]:
    """The first ``count`` report XML files of the Open-i archive shipped in torchxrayvision."""
    from xrg.resources import openi_reports_tgz

    found: list[tuple[str, bytes]] = []
    with tarfile.open(openi_reports_tgz(), "r:*") as archive:
        for member in archive:
            if member.isreg() and member.name.endswith(".xml"):
                handle = archive.extractfile(member)
                assert handle is not None
                found.append((member.name, handle.read()))
                if len(found) == count:
                    break
    return found


def tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every path under ``root`` (links not followed) with its kind and size: a filesystem snapshot."""
    snapshot = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        snapshot[path.relative_to(root).as_posix()] = (kind, 0 if kind == "dir" else info.st_size)
    return snapshot
