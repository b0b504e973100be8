"""Shared pieces of the robustness suite: a tiny synthetic data directory (from tests/helpers.py), a tiny XRayGAN
config, a randomly initialised checkpoint written by the real checkpoint functions, and a few
real Open-i XML reports."""

from __future__ import annotations

import tarfile
from pathlib import Path

import torch

from helpers import resealed, write_synthetic_data  # noqa: F401 (re-exported: tests/helpers.py holds them)
from xrg.checkpoint import save_checkpoint
from xrg.data.reports import Vocabulary
from xrg.models.xraygan import XRayGAN, XRayGANModelConfig
from xrg.train.xraygan import XRayGANTrainConfig

#: 16² → 32², narrow layers, no VCN (vc_weight 0): a full run is 4 epochs of 3 steps.
#: Dropout and noise make the resume check cover both random number generators.
TINY = XRayGANTrainConfig(
    model=XRayGANModelConfig(
        embed_dim=8, hidden=8, base_size=16, num_stages=2, gen_channels=8, disc_channels=8, cond_channels=4,
        max_channels=32, disc_max_downsamplings=2, encoder_dropout=0.2, noise_dim=2,
    ),
    lr=(2e-3, 2e-3), batch_size=(4, 4), num_epochs=(2, 1), pretrain_epochs=1, num_samples=2, vc_weight=0.0,
    bn_recalibration_batches=2,
)  # fmt: skip
#: Train cases of :func:`write_synthetic_data` with 20 patients (splits cycle train x3, val, test).
TRAIN_CASES = 12
STEPS_PER_EPOCH = TRAIN_CASES // 4
TOTAL_STEPS = STEPS_PER_EPOCH * (1 + 2 + 1)


def random_checkpoint(path: Path, config: XRayGANTrainConfig, vocabulary: Vocabulary, seed: int = 0, **extra) -> Path:
    """A randomly initialised XRayGAN saved through :func:`save_checkpoint`, marked finished."""
    torch.manual_seed(seed)
    model = XRayGAN(XRayGANModelConfig.from_run_config(config, len(vocabulary)))
    contents = dict(
        state=model.checkpoint_state(),  # encoder, generator and discriminators
        optimizers=None,
        progress={"phase": 0, "epoch": 0, "batch": 0, "step": 0, "finished": True, "num_phases": 0},
        vcns={},
    )
    contents.update(extra)
    save_checkpoint(path, "xraygan", config, vocabulary, model_config=model.config, **contents)
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
