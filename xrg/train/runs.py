"""Runs the notebooks share: load a finished run, else resume or train it.

Heavy steps load what exists, else compute (STYLE.md 5): re-executing the book does not
retrain, and a run that was killed part-way is resumed rather than started again.

A run trained here records the data build it was trained on (``RUN/data.json``:
:func:`data_fingerprint` of the data directory), so another consumer, such as the XRayGAN row
of :mod:`xrg.experiments`, can reuse the finished run instead of training the same one again
(:func:`reusable_run`): only when its checkpoint is finished, its stored run config (seed
included) equals the one wanted and its data record names the same data build.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from xrg.checkpoint import load_checkpoint
from xrg.errors import CheckpointError, XrgError
from xrg.io import atomic_write_json, read_json_mapping
from xrg.profiles import load_profile
from xrg.train.vcn import VCNTrainConfig
from xrg.train.xraygan import CHECKPOINT_NAME, XRayGANTrainConfig, XRayGANTrainer

#: The data build a run was trained on, written by :func:`ensure_run` next to the checkpoint.
DATA_RECORD_NAME = "data.json"


def data_fingerprint(data_dir: str | os.PathLike) -> str | None:
    """A sha256 over the cases, images and vocabulary of a data directory; None without a manifest.

    The manifest (cases, splits, texts) and the vocabulary count byte for byte; the images by
    their sha256: from the build's render records (``renders.jsonl``, as a sorted set of lines,
    so the order workers finished in does not matter) or, without them (an imported or
    hand-made data directory), by hashing every image file the manifest names.
    """
    data_dir = Path(data_dir)
    manifest = data_dir / "manifest.jsonl"
    if not manifest.is_file():
        return None
    digest = hashlib.sha256()
    digest.update(b"manifest\0" + hashlib.sha256(manifest.read_bytes()).digest())
    vocab = data_dir / "vocab.json"
    digest.update(b"vocab\0" + (hashlib.sha256(vocab.read_bytes()).digest() if vocab.is_file() else b"-"))
    renders = data_dir / "renders.jsonl"
    if renders.is_file():
        lines = sorted(line for line in renders.read_bytes().splitlines() if line.strip())
        digest.update(b"renders\0" + hashlib.sha256(b"\n".join(lines)).digest())
        return digest.hexdigest()
    for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        for view in ("frontal", "lateral"):
            name = row.get(view) if isinstance(row, dict) else None
            path = data_dir / name if isinstance(name, str) else None
            data = path.read_bytes() if path is not None and path.is_file() else b"<missing>"
            digest.update(f"{view}\0{name}\0".encode() + hashlib.sha256(data).digest())
    return digest.hexdigest()


def write_data_record(run_dir: str | os.PathLike, data_dir: str | os.PathLike) -> None:
    """Record in ``RUN/data.json`` which data build the run in ``run_dir`` was trained on."""
    record = {"data_dir": str(Path(data_dir).resolve()), "fingerprint": data_fingerprint(data_dir)}
    atomic_write_json(Path(run_dir) / DATA_RECORD_NAME, record)


def reusable_run(run_dir: str | os.PathLike, kind: str, config: Any, data_dir: str | os.PathLike) -> tuple[bool, str]:
    """Whether the run in ``run_dir`` can stand in for a run of ``kind`` with ``config`` on ``data_dir``.

    Returns ``(reusable, why)``. Reusable only when its checkpoint loads, is finished, was
    written with the same run config (every field, the seed included) and the run's data
    record names the same data build (:func:`data_fingerprint`); a run without a record is
    never reused.
    """
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if not path.is_file():
        return False, f"{path} does not exist"
    try:
        payload = load_checkpoint(path, kind, config=config)
    except CheckpointError as error:
        return False, str(error)
    if not payload.get("progress", {}).get("finished"):
        return False, f"{path} is from an unfinished training run"
    record_path = run_dir / DATA_RECORD_NAME
    if not record_path.is_file():
        return False, f"{run_dir} does not record the data it was trained on ({DATA_RECORD_NAME})"
    try:
        record = read_json_mapping(record_path, "run data record", "delete it")
    except XrgError as error:  # a damaged record: not reusable, and say why
        return False, f"{record_path}: {error}"
    wanted = data_fingerprint(data_dir)
    if wanted is None or record.get("fingerprint") != wanted:
        return False, f"{run_dir} was trained on another data build than {data_dir}"
    return True, f"finished {kind} run in {run_dir} with the same config, seed and data"


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
    return _load_or_train(
        "xraygan", config, data_dir, run_dir,
        lambda resume: XRayGANTrainer(config, data_dir, run_dir, vcn_config, device=device, resume=resume,
                                      progress=progress),
    )  # fmt: skip


def _load_or_train(
    kind: str, config: Any, data_dir: str | os.PathLike, run_dir: str | os.PathLike, make_trainer
) -> Path:
    """``RUN/checkpoint.pt`` of a finished ``kind`` run with ``config`` (another config is refused), else
    the checkpoint of ``make_trainer(resume)`` trained (resumed when a stopped run is there), recording its data."""
    run_dir = Path(run_dir)
    path = run_dir / CHECKPOINT_NAME
    if path.is_file():
        payload = load_checkpoint(path, kind, config=config)
        if payload.get("progress", {}).get("finished"):
            return path
    checkpoint = make_trainer(path.is_file()).train().checkpoint
    write_data_record(run_dir, data_dir)
    return checkpoint


def ensure_pggan_run(
    profile: str,
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """The checkpoint of the profile's PGGAN run (``pggan:`` section) in ``run_dir``: loaded, resumed or trained.

    A run directory holding a PGGAN run with other settings is refused (the checkpoint says
    which fields differ).
    """
    from xrg.train.pggan import PGGANTrainConfig, PGGANTrainer

    config = PGGANTrainConfig.from_profile(load_profile(profile))
    return _load_or_train(
        "pggan", config, data_dir, run_dir,
        lambda resume: PGGANTrainer(config, data_dir, run_dir, device=device, resume=resume, progress=progress),
    )  # fmt: skip


def ensure_diffusevae_run(
    profile: str,
    data_dir: str | os.PathLike,
    run_root: str | os.PathLike,
    stages: tuple[str, ...] = ("vae", "moco", "ddpm", "finetune"),
    overrides: dict[str, Any] | None = None,
    moco_run: str | os.PathLike | None = None,
    ddpm_run: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, Path]:
    """The checkpoints of the profile's DiffuseVAE stages (``diffusevae:`` section plus ``overrides``)
    in ``run_root/STAGE``, in order: each loaded, resumed or trained, with the seconds each training took.

    Returns ``{stage: checkpoint}``; ``run_root/train_seconds.json`` records the wall time of every
    stage trained here (kept from earlier calls for the stages that were already there).
    """
    import time

    from xrg.models.diffusevae import stage_model
    from xrg.train.diffusevae import DiffuseVAETrainConfig, DiffuseVAETrainer

    config = DiffuseVAETrainConfig.from_profile(load_profile(profile), overrides)
    run_root = Path(run_root)
    timings_path = run_root / "train_seconds.json"
    timings = json.loads(timings_path.read_text(encoding="utf-8")) if timings_path.is_file() else {}
    checkpoints = {}
    for stage in stages:
        kind = stage_model(stage).kind
        started = time.perf_counter()
        trained = []

        def make(resume: bool, stage: str = stage, trained: list[str] = trained) -> Any:
            trained.append(stage)
            return DiffuseVAETrainer(config, stage, data_dir, run_root, device=device, resume=resume,
                                     progress=progress, moco_run=moco_run, ddpm_run=ddpm_run)  # fmt: skip

        checkpoints[stage] = _load_or_train(kind, config, data_dir, run_root / stage, make)
        if trained:
            timings[stage] = time.perf_counter() - started
            atomic_write_json(timings_path, timings)
    return checkpoints


def ensure_search_classifier(
    profile: str,
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    backbone: str = "densenet",
    pggan_checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Path:
    """The profile's search classifier of ``backbone`` in ``out_dir`` (``search_<backbone>.pt``): loaded or trained.

    A stopped training is resumed (:func:`~xrg.train.pathology.train_pathology_classifier`); a
    classifier trained with other settings is refused.
    """
    from xrg.train.pathology import PathologyTrainConfig, classifier_name, train_pathology_classifier

    config = PathologyTrainConfig.from_profile(load_profile(profile), backbone)
    path = Path(out_dir) / classifier_name(backbone)
    if path.is_file():
        kind = "critic_classifier" if backbone == "critic" else "classifier"
        load_checkpoint(path, kind, config=config)
        return path
    _, _, path = train_pathology_classifier(
        data_dir, config, out_dir, pggan_checkpoint=pggan_checkpoint, device=device, progress=progress
    )
    return path
