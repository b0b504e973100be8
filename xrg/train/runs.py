"""Runs the notebooks share: load a finished run, else resume or train it.

Heavy steps load what exists, else compute (STYLE.md 5): re-executing the book does not
retrain, and a run that was killed part-way is resumed rather than started again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from xrg.checkpoint import load_checkpoint
from xrg.profiles import load_profile
from xrg.train.vcn import VCNTrainConfig
from xrg.train.xraygan import CHECKPOINT_NAME, XRayGANTrainConfig, XRayGANTrainer


def run_finished(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds an XRayGAN checkpoint of a finished run."""
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        return False
    return bool(load_checkpoint(path, "xraygan").get("progress", {}).get("finished"))


def ensure_xraygan_run(
    profile: str,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """The checkpoint of the profile's XRayGAN run in ``run_dir``: trained or resumed if needed."""
    run_dir = Path(run_dir)
    loaded = load_profile(profile)
    config = XRayGANTrainConfig.from_profile(loaded)
    vcn_config = VCNTrainConfig.from_profile(loaded, image_size=config.model.base_size)
    return ensure_run(config, data_dir, run_dir, vcn_config, device, progress)


def ensure_run(
    config: XRayGANTrainConfig,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    vcn_config: VCNTrainConfig | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """The checkpoint of an XRayGAN run with ``config`` in ``run_dir``: loaded, resumed or trained.

    A run directory holding a run with other settings is refused (its checkpoint says which
    fields differ) rather than silently reused.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if path.is_file():
        payload = load_checkpoint(path, "xraygan", config=config)
        if payload.get("progress", {}).get("finished"):
            return path
    resume = path.is_file()
    trainer = XRayGANTrainer(config, data_dir, run_dir, vcn_config, device=device, resume=resume, progress=progress)
    return trainer.train().checkpoint
