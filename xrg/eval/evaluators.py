"""Evaluator networks trained on patients no generator ever saw.

XRayGAN's metrics need networks that judge images: a finding classifier (IS classes, the
FID/KID feature space, finding fidelity) and a view-consistency network (VC). Trained on the
generators' own data they would flatter a model that copies its training set, and the paper
itself scored VC with a VCN "trained on another subset". Here the phantom renders an
independent *evaluation cohort*: the structured findings of the data directory's TRAIN
cases (so the findings follow the same distribution; test reports are never read) drawn
into new patients, whose anatomy seeds differ from every seed in the data directory. The
cohort is a data directory of its own (``OUT/cohort``, manifest format) split by patient
into a train and a test part; on it are trained

* the DenseNet-121 finding classifier (:mod:`xrg.models.classifier`, class-weighted BCE of the
  dissertation, both views), evaluated per finding and view on the cohort's test part, and
* an evaluation VCN (:class:`~xrg.models.vcn.ViewConsistencyNet`, the same recipe as the
  training VCNs, on the cohort only), evaluated on the cohort's test part; it trains on past
  ``vcn_epochs`` until its AUROC of matched against mismatched real pairs there reaches
  ``vcn_target_auroc`` (or ``vcn_max_epochs``), and its metrics say whether it did.

Both are checkpoints in ``OUT`` that carry their settings. This module holds the settings,
the cohort, the :class:`Evaluators` record and the loading of a trained classifier; the
training (``train_classifier``, and ``ensure_evaluators``, which loads what exists, resumes an
interrupted cohort render and trains what is missing) is the training package's
``evaluators`` module, so evaluating never imports the training code.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrg.checkpoint import checkpoint_config, load_checkpoint
from xrg.config import config_from_mapping
from xrg.data.build import BUILD_NAME, render_pairs, reusable_renders
from xrg.data.findings.schema import findings_to_json
from xrg.data.manifest import VOCAB_NAME, Case, read_manifest, stable_hash, write_manifest
from xrg.data.phantom import volume_size_for
from xrg.data.reports import Vocabulary
from xrg.errors import ConfigError, DataDirError
from xrg.io import atomic_write_json, read_json_mapping
from xrg.locks import directory_lock
from xrg.models.classifier import FindingClassifier
from xrg.models.vcn import ViewConsistencyNet
from xrg.profiles import Profile

COHORT_DIR = "cohort"
COHORT_NAME = "cohort.json"
CLASSIFIER_NAME = "classifier.pt"
METRICS_NAME = "metrics.jsonl"


@dataclass
class EvaluatorConfig:
    """How the evaluation cohort is rendered and the evaluators trained (profile section ``evaluators``)."""

    image_size: int = 128  # resolution the evaluators judge (generated images are resized to it)
    cohort_size: int = 4000  # patients rendered, each with the findings of one train case (cycled)
    cohort_test_fraction: float = 0.2  # cohort patients held out to test the evaluators
    render_size: int = 0  # resolution the cohort is rendered at (0: the data directory's, else image_size)
    workers: int = 2  # rendering processes
    classifier_epochs: int = 10
    classifier_batch_size: int = 32  # cases per batch; both views of each, so twice as many images
    classifier_lr: float = 1e-3  # Adam
    classifier_weight_decay: float = 1e-4
    vcn_epochs: int = 10
    vcn_batch_size: int = 32
    vcn_lr: float = 0.01
    vcn_target_auroc: float = 0.9  # after vcn_epochs, train on epoch by epoch until the held-out AUROC reaches it
    vcn_max_epochs: int = 40  # ... or until this many epochs
    seed: int = 0

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 512:  # DenseNet-121 downsamples 32-fold
            raise ConfigError(f"evaluators image_size must be in 32..512, got {self.image_size}")
        if self.render_size and not 32 <= self.render_size <= 256:
            raise ConfigError(f"evaluators render_size must be 0 or in 32..256, got {self.render_size}")
        if self.cohort_size < 10:
            raise ConfigError(f"evaluators cohort_size must be at least 10, got {self.cohort_size}")
        if not 0.05 <= self.cohort_test_fraction <= 0.5:
            raise ConfigError(f"evaluators cohort_test_fraction must be in 0.05..0.5, got {self.cohort_test_fraction}")
        for name in ("workers", "classifier_epochs", "vcn_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluators {name} must be at least 1, got {getattr(self, name)}")
        for name in ("classifier_batch_size", "vcn_batch_size"):
            if getattr(self, name) < 2:
                raise ConfigError(f"evaluators {name} must be at least 2, got {getattr(self, name)}")
        if not 0 <= self.vcn_target_auroc <= 1:
            raise ConfigError(f"evaluators vcn_target_auroc must lie in [0, 1], got {self.vcn_target_auroc}")
        if self.vcn_max_epochs < self.vcn_epochs:
            raise ConfigError(
                f"evaluators vcn_max_epochs must be at least vcn_epochs ({self.vcn_epochs}), got {self.vcn_max_epochs}"
            )
        if not (self.classifier_lr > 0 and self.vcn_lr > 0 and self.classifier_weight_decay >= 0):
            raise ConfigError(
                "evaluators need classifier_lr > 0, vcn_lr > 0 and classifier_weight_decay >= 0, got "
                f"{self.classifier_lr}, {self.vcn_lr}, {self.classifier_weight_decay}"
            )

    @classmethod
    def from_profile(cls, profile: Profile, overrides: dict[str, Any] | None = None) -> EvaluatorConfig:
        values = {"seed": profile.seed, **profile.section("evaluators"), **(overrides or {})}
        return config_from_mapping(cls, values, where=f"evaluators section of profile {profile.name!r}")

    def classifier_config(self) -> ClassifierTrainConfig:
        return ClassifierTrainConfig(
            image_size=self.image_size, num_epochs=self.classifier_epochs, batch_size=self.classifier_batch_size,
            lr=self.classifier_lr, weight_decay=self.classifier_weight_decay, seed=self.seed,
        )  # fmt: skip


@dataclass
class ClassifierTrainConfig:
    """The settings a classifier checkpoint was trained with (a subset of :class:`EvaluatorConfig`)."""

    image_size: int = 128
    num_epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class Evaluators:
    """The frozen evaluators of one directory and what they scored on the cohort's test part."""

    classifier: FindingClassifier
    vcn: ViewConsistencyNet
    classifier_path: Path
    vcn_path: Path
    image_size: int
    metrics: dict[str, Any]
    cohort_dir: Path
    #: Features of real images already computed in this process (the same for every scored run).
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)


# --------------------------------------------------------------------------------------
# The cohort
# --------------------------------------------------------------------------------------


def cohort_source_sha256(data_dir: Path, data_cases: list[Case]) -> str:
    """A digest of what the cohort is drawn from: the train cases' findings, every patient seed, the vocabulary.

    Only these decide the cohort (``cohort_cases``), so fields that do not — the image paths, the
    canonical-pose targets of a ``--canonical-targets`` build — leave evaluators reusable.
    """
    templates = sorted((c for c in data_cases if c.split == "train"), key=lambda c: c.id)
    source = {
        "templates": [
            [c.id, c.findings, c.impression, findings_to_json(c.structured_findings), list(c.mesh)] for c in templates
        ],
        "seeds": sorted(int(c.seed) for c in data_cases if c.seed is not None),
        "vocabulary_sha256": hashlib.sha256((data_dir / VOCAB_NAME).read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode("utf-8")).hexdigest()


def cohort_seed(base_seed: int, number: int, taken: set[int]) -> int:
    """The anatomy seed of cohort patient ``number``: stable, and never one in ``taken``."""
    attempt = 0
    while True:
        seed = stable_hash(f"eval-cohort:{base_seed}:{number}:{attempt}") % (2**31 - 1)
        if seed not in taken:
            return seed
        attempt += 1


def cohort_cases(data_cases: list[Case], config: EvaluatorConfig) -> list[Case]:
    """The cohort's cases: train findings (cycled) in new patients, split by patient into train/test."""
    templates = sorted((c for c in data_cases if c.split == "train"), key=lambda c: c.id)
    if not templates:
        raise DataDirError("the data directory has no train cases to take the cohort's findings from")
    taken = {int(c.seed) for c in data_cases if c.seed is not None}
    order = np.random.default_rng(config.seed).permutation(config.cohort_size)
    num_test = max(1, int(round(config.cohort_test_fraction * config.cohort_size)))
    test_numbers = set(order[:num_test].tolist())
    cases = []
    for number in range(config.cohort_size):
        template = templates[number % len(templates)]
        seed = cohort_seed(config.seed, number, taken)
        taken.add(seed)
        case_id = f"cohort-{number:05d}"
        cases.append(
            Case(
                id=case_id, patient_id=f"cohort-{number}", split="test" if number in test_numbers else "train",
                findings=template.findings, impression=template.impression,
                structured_findings=list(template.structured_findings),
                frontal=f"images/{case_id}_frontal.png", lateral=f"images/{case_id}_lateral.png",
                source="phantom", mesh=list(template.mesh), seed=seed,
            )
        )  # fmt: skip
    return cases


def _render_settings(data_dir: Path, config: EvaluatorConfig) -> tuple[int, int]:
    """``(image size, CT grid)`` of the cohort: the data build's where there is one."""
    build = data_dir / BUILD_NAME
    if config.render_size == 0 and build.is_file():
        key = read_json_mapping(build, "data build record", "rebuild the data directory").get("config", {})
        if not isinstance(key, dict):
            raise DataDirError(f"data build record {build} is damaged (its config is not a mapping); rebuild it")
        size = int(key.get("image_size", config.image_size))
        return size, int(key.get("volume_size", volume_size_for(size)))
    size = config.render_size or min(max(config.image_size, 32), 256)
    return size, volume_size_for(size)


def ensure_cohort(
    data_dir: str | os.PathLike, config: EvaluatorConfig, cohort_dir: str | os.PathLike, progress: bool = True
) -> Path:
    """Render (or finish rendering) the evaluation cohort of ``data_dir`` into ``cohort_dir`` (locked meanwhile)."""
    with directory_lock(cohort_dir, "evaluation cohort directory"):
        return _ensure_cohort(Path(data_dir), config, Path(cohort_dir), progress)


def _ensure_cohort(data_dir: Path, config: EvaluatorConfig, cohort_dir: Path, progress: bool) -> Path:
    data_cases = read_manifest(data_dir)
    size, volume_size = _render_settings(data_dir, config)
    stamp = {
        "data_source_sha256": cohort_source_sha256(data_dir, data_cases),
        "cohort_size": config.cohort_size,
        "cohort_test_fraction": config.cohort_test_fraction,
        "seed": config.seed,
        "image_size": size,
        "volume_size": volume_size,
    }
    stamp_path = cohort_dir / COHORT_NAME
    if stamp_path.is_file():
        previous = read_json_mapping(stamp_path, "cohort record", f"delete {cohort_dir} to render the cohort again")
        if previous.get("key") != stamp:
            raise DataDirError(
                f"{cohort_dir} holds an evaluation cohort made from another data directory or other settings "
                f"({previous.get('key')} vs now {stamp}); use another evaluators directory or delete it"
            )
        if previous.get("complete"):
            return cohort_dir
    cohort_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(stamp_path, {"key": stamp, "complete": False})
    cases = cohort_cases(data_cases, config)
    reused = reusable_renders(cohort_dir, cases, stamp)
    jobs = [
        (c.id, [f.to_dict() for f in c.structured_findings], int(c.seed), size, str(cohort_dir))
        for c in cases
        if c.id not in reused
    ]
    render_pairs(jobs, volume_size, config.workers, progress, f"rendering the evaluation cohort ({size}px)", key=stamp)
    Vocabulary.load(data_dir / VOCAB_NAME).save(cohort_dir / VOCAB_NAME)  # written anew: never through a link
    write_manifest(cohort_dir, cases)
    atomic_write_json(stamp_path, {"key": stamp, "complete": True, "per_split": {
        split: sum(c.split == split for c in cases) for split in ("train", "test")}})  # fmt: skip
    return cohort_dir


# --------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------


def load_classifier(
    path: str | os.PathLike, config: ClassifierTrainConfig | None = None, device: str | torch.device = "cpu"
) -> tuple[FindingClassifier, dict[str, Any]]:
    """A classifier checkpoint (checked against the run ``config`` when given), frozen in eval mode."""
    payload = load_checkpoint(path, "classifier", config=config, map_location=device)
    model = FindingClassifier.from_payload(payload, path)  # refuses a stopped training's state
    checkpoint_config(payload, ClassifierTrainConfig, path)
    return model.to(device), dict(payload.get("metrics", {}))
