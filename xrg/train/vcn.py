"""Offline training of the view-consistency networks (XRayGAN §2.3, settings of §3.2).

One :class:`~xrg.models.vcn.ViewConsistencyNet` is trained per stage resolution, on the
TRAIN split only (the official code trained it on the test images). Each batch of B cases
gives B positive pairs — the frontal and lateral image of the same case — and up to B
negative pairs: every frontal with the lateral of another case of the batch, chosen by a
seeded cyclic shift of a random order, dropping a pair whose two cases share a patient. Both
views pass through the backbone in one call (so BatchNorm statistics cover both views, as
in evaluation), and the pairs are scored from those embeddings; the loss is binary
cross-entropy on the logits.

The paper trains the VCNs with learning rate 0.01 for 20 epochs and names no optimizer (the
official code used Adam). Here the default is SGD with momentum 0.9 at 0.01, the usual
recipe for a ResNet-18 trained from scratch; Adam at 0.01 is available (``optimizer: adam``).

The frozen network is evaluated on the TEST split (positives: every case's own pair;
negatives: every frontal with a seeded other patient's lateral): accuracy at probability
0.5, ROC AUC (torchmetrics), and the real-pair VC of Table 1, the mean P(same patient) over
the test positives. Checkpoints go to ``RUN/vcn/vcn_<size>.pt``, per-epoch metrics to
``RUN/vcn/metrics.jsonl``. A :class:`TargetedVCNTrainConfig` (the evaluation VCN's) goes on
training epoch by epoch until that AUROC reaches its target, or its ``max_epochs``.

SIGINT or SIGTERM stops the training after the current step with its state in
``RUN/vcn/vcn_<size>.partial.pt`` (:class:`~xrg.train.loop.EpochLoop`) and raises
:class:`~xrg.errors.TrainingStopped`; calling :func:`train_vcn` (or :func:`ensure_vcns`, or
the command) again continues it to the weights an uninterrupted run ends with. The partial
file is never loaded as a trained VCN.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from xrg.checkpoint import load_checkpoint
from xrg.config import config_from_mapping, merge_settings
from xrg.data.datasets import XRayPairDataset, collate_pairs
from xrg.data.reports import Vocabulary
from xrg.errors import ConfigError
from xrg.models.vcn import VCN_DIR, VCNConfig, ViewConsistencyNet, freeze, negative_partners, vcn_path
from xrg.models.xraygan import to_model_range
from xrg.profiles import Profile
from xrg.train.loop import EpochLoop, partial_path

__all__ = [
    "VCN_DIR", "TargetedVCNTrainConfig", "VCNResult", "VCNTrainConfig", "ensure_vcns", "evaluate_vcn", "file_sha256",
    "load_vcn", "negative_partners", "train_vcn", "vcn_path", "vcn_step",
]  # fmt: skip

VCN_METRICS = "metrics.jsonl"
VCN_OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


@dataclass
class VCNTrainConfig:
    """Settings of one VCN training run (one stage resolution); ``model`` is the network's architecture."""

    image_size: int = 32  # resolution the VCN scores (one VCN per MSCGAN stage)
    model: VCNConfig = field(default_factory=VCNConfig)
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam"
    lr: float = 0.01  # §3.2
    momentum: float = 0.9  # SGD momentum; Adam uses betas (0.9, 0.999)
    weight_decay: float = 0.0
    num_epochs: int = 20  # §3.2
    batch_size: int = 64  # cases per batch; each gives a positive and a negative pair
    seed: int = 0

    def __post_init__(self) -> None:
        if not 8 <= self.image_size <= 1024:
            raise ConfigError(f"vcn image_size must be in 8..1024, got {self.image_size}")
        if self.optimizer not in VCN_OPTIMIZERS:
            raise ConfigError(f"vcn optimizer must be one of {VCN_OPTIMIZERS}, got {self.optimizer!r}")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise ConfigError(
                f"vcn needs lr > 0, weight_decay >= 0 and momentum in [0, 1), got {self.lr}, {self.weight_decay}, {self.momentum}"
            )
        if not isinstance(self.model, VCNConfig):
            raise ConfigError(f"vcn model must be a VCNConfig, got {self.model!r}")
        if self.num_epochs < 1 or self.batch_size < 2:
            raise ConfigError(
                f"vcn needs num_epochs >= 1 and batch_size >= 2, got {self.num_epochs}, {self.batch_size}"
            )

    @classmethod
    def from_profile(cls, profile: Profile, image_size: int, overrides: dict[str, Any] | None = None) -> VCNTrainConfig:
        """The profile's ``vcn:`` section at ``image_size`` (nested or dotted overrides: ``model.embed_dim``).

        The seed defaults to the profile's.
        """
        values = merge_settings({"seed": profile.seed}, profile.section("vcn"), overrides or {})
        values["image_size"] = image_size
        return config_from_mapping(cls, values, where=f"vcn settings of profile {profile.name!r}", prefix="vcn")


@dataclass
class TargetedVCNTrainConfig(VCNTrainConfig):
    """A VCN run that goes on past ``num_epochs``, one epoch at a time, until it tells pairs apart.

    A VC score is evidence only from a VCN that separates real matched pairs from mismatched
    ones (a weak one gives two mean images a high VC). After ``num_epochs`` and after every
    further epoch the network is scored on the test split (for the evaluation VCN, the
    cohort's held-out part; never a generator's test split), and training stops once its
    AUROC is >= ``target_auroc`` or after ``max_epochs``. Continuing goes through the
    resumable state, so the weights equal those of a plain run of as many epochs, and a
    stopped run resumes to them. The test metrics add ``target_auroc``, ``reached``,
    ``epochs`` and ``max_epochs``.
    """

    target_auroc: float = 0.9
    max_epochs: int = 40

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.target_auroc <= 1:
            raise ConfigError(f"vcn target_auroc must lie in [0, 1], got {self.target_auroc}")
        if self.max_epochs < self.num_epochs:
            raise ConfigError(f"vcn max_epochs must be at least num_epochs ({self.num_epochs}), got {self.max_epochs}")


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _embed_views(
    model: ViewConsistencyNet, batch: dict[str, Any], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.cat([batch["frontal"], batch["lateral"]]).to(device)
    frontal, lateral = model.embed(to_model_range(images)).chunk(2)
    return frontal, lateral


@torch.no_grad()
def evaluate_vcn(
    model: ViewConsistencyNet, dataset: XRayPairDataset, seed: int = 0, batch_size: int = 64
) -> dict[str, Any]:
    """Accuracy, ROC AUC and real-pair VC on ``dataset`` (see the module docstring), as a plain dict.

    AUROC is ``None`` when the split has fewer than two patients (no negative pair exists).
    """
    # Imported here: torchmetrics takes seconds to import and generation never needs it.
    from torchmetrics.functional.classification import binary_accuracy, binary_auroc

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    frontal_parts, lateral_parts = [], []
    for start in range(0, len(dataset), batch_size):
        batch = collate_pairs([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        frontal, lateral = _embed_views(model, batch, device)
        frontal_parts.append(frontal)
        lateral_parts.append(lateral)
    model.train(was_training)
    frontal, lateral = torch.cat(frontal_parts), torch.cat(lateral_parts)
    rows, partners = negative_partners([case.patient_id for case in dataset.cases], torch.Generator().manual_seed(seed))
    positive = model.pair_probability(frontal, lateral).cpu()
    negative = model.pair_probability(frontal[rows], lateral[partners]).cpu()
    probs = torch.cat([positive, negative])
    labels = torch.cat([torch.ones_like(positive), torch.zeros_like(negative)]).long()
    return {
        "image_size": int(dataset[0]["frontal"].shape[-1]),
        "num_positive": int(positive.numel()),
        "num_negative": int(negative.numel()),
        "accuracy": float(binary_accuracy(probs, labels)),
        "auroc": float(binary_auroc(probs, labels)) if negative.numel() else None,
        "real_vc": float(positive.mean()),
    }


def vcn_step(
    model: ViewConsistencyNet, optimizer: torch.optim.Optimizer, batch: dict[str, Any], generator: torch.Generator
) -> tuple[float, int, int]:
    """One update on a batch's positive and negative pairs: ``(mean BCE, correct pairs, pairs)``."""
    device = next(model.parameters()).device
    frontal, lateral = _embed_views(model, batch, device)
    rows, partners = negative_partners(batch["patient_id"], generator)
    logits = torch.cat([model.pair_logits(frontal, lateral), model.pair_logits(frontal[rows], lateral[partners])])
    labels = torch.cat([torch.ones(frontal.shape[0]), torch.zeros(rows.numel())]).to(device)
    loss = F.binary_cross_entropy_with_logits(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach()), int(((logits > 0).float() == labels).sum()), labels.numel()


def make_vcn_optimizer(model: ViewConsistencyNet, config: VCNTrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999), weight_decay=config.weight_decay)


@dataclass
class VCNResult:
    """A trained VCN: its checkpoint, the frozen model and its test metrics."""

    path: Path
    model: ViewConsistencyNet
    metrics: dict[str, Any]


def training_data_key(dataset: XRayPairDataset) -> str:
    """A fingerprint of the cases (and patients) a network is trained on, kept in its resumable state."""
    text = "\n".join(f"{case.id}\t{case.patient_id}" for case in dataset.cases)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def train_vcn(
    data_dir: str | os.PathLike,
    config: VCNTrainConfig,
    run_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> VCNResult:
    """Train one VCN on the train split, evaluate it frozen on the test split, save it.

    Stopped by SIGINT/SIGTERM it saves ``vcn_<size>.partial.pt`` and raises
    :class:`~xrg.errors.TrainingStopped`; called again it resumes from that file.
    """
    device = torch.device(device)
    train_set = XRayPairDataset(data_dir, "train", image_size=config.image_size)
    test_set = XRayPairDataset(data_dir, "test", image_size=config.image_size, vocab=train_set.vocab)
    torch.manual_seed(config.seed)
    model = ViewConsistencyNet(VCNConfig.from_run_config(config)).to(device)
    optimizer = make_vcn_optimizer(model, config)
    path = vcn_path(run_dir, config.image_size)
    metrics_path = Path(run_dir) / VCN_DIR / VCN_METRICS
    on_device = "" if device.type == "cpu" else f", device={str(device)!r}"
    loop = EpochLoop(
        kind="vcn", label=f"VCN {config.image_size}px", final_path=path, config=config, vocabulary=train_set.vocab,
        model=model, optimizer=optimizer, num_items=len(train_set), batch_size=config.batch_size,
        num_epochs=config.num_epochs, seed=config.seed, device=device, metrics_path=metrics_path,
        metric_match={"image_size": config.image_size}, data_key=training_data_key(train_set), progress=progress,
        resume=f"xrg.train.vcn.train_vcn({str(data_dir)!r}, {config!r}, {str(run_dir)!r}{on_device}) "
        "(or ensure_vcns(), or the command that trained it)",
    )  # fmt: skip

    def step(indices: list[int], shuffle: torch.Generator) -> tuple[float, dict[str, float]]:
        batch = collate_pairs([train_set[i] for i in indices])
        loss, correct, num_pairs = vcn_step(model, optimizer, batch, shuffle)
        return loss, {"loss_sum": loss * num_pairs, "correct": correct, "seen": num_pairs, "images": 2 * len(indices)}

    def epoch_row(epoch: int, step: int, totals: dict[str, float]) -> dict[str, Any]:
        seen, seconds = max(totals.get("seen", 0), 1), totals.get("seconds", 0.0)
        return {
            "kind": "vcn",
            "image_size": config.image_size,
            "epoch": epoch,
            "step": step,
            "loss": totals.get("loss_sum", 0.0) / seen,
            "train_accuracy": totals.get("correct", 0) / seen,
            "lr": config.lr,
            "seconds": seconds,
            "images_per_s": totals.get("images", 0) / seconds if seconds > 0 else None,
        }

    model.train()
    steps = loop.run(step, epoch_row)
    if isinstance(config, TargetedVCNTrainConfig):
        while True:
            with torch.random.fork_rng(devices=[]):  # scoring leaves the training's random stream as it was
                metrics = evaluate_vcn(model, test_set, seed=config.seed)
            reached = metrics["auroc"] is not None and metrics["auroc"] >= config.target_auroc
            if reached or metrics["auroc"] is None or loop.epoch >= config.max_epochs:
                break
            loop.num_epochs = loop.epoch + 1
            loop.save()  # run() continues from the saved state (a stale periodic save must not be taken instead)
            steps = loop.run(step, epoch_row)
        metrics.update(
            target_auroc=config.target_auroc, reached=reached, epochs=loop.epoch, max_epochs=config.max_epochs
        )
    freeze(model)
    if not isinstance(config, TargetedVCNTrainConfig):
        metrics = evaluate_vcn(model, test_set, seed=config.seed)
    loop.complete(
        {"kind": "vcn_test", **metrics},
        lambda: model.save(path, run_config=config, vocabulary=train_set.vocab, metrics=metrics, step=steps,
                           progress={"epoch": loop.epoch, "batch": 0, "step": steps, "finished": True}),
    )  # fmt: skip
    return VCNResult(path=path, model=model, metrics=metrics)


def load_vcn(
    path: str | os.PathLike,
    config: VCNTrainConfig | None = None,
    vocabulary: Vocabulary | None = None,
    device: str | torch.device = "cpu",
) -> VCNResult:
    """Load a VCN checkpoint (checked against the run ``config``/``vocabulary`` when given), frozen.

    Without the checks, :meth:`ViewConsistencyNet.from_checkpoint` does the same.
    """
    payload = load_checkpoint(path, "vcn", config=config, vocabulary=vocabulary, map_location=device)
    model = ViewConsistencyNet.from_payload(payload, path)
    return VCNResult(path=Path(path), model=freeze(model.to(device)), metrics=payload.get("metrics", {}))


def ensure_vcns(
    run_dir: str | os.PathLike,
    data_dir: str | os.PathLike,
    configs: Sequence[VCNTrainConfig],
    vocabulary: Vocabulary,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[int, VCNResult]:
    """The frozen VCN of every config's size: loaded from ``RUN/vcn`` when there, else trained (or resumed)."""
    results = {}
    for config in configs:
        path = vcn_path(run_dir, config.image_size)
        if path.is_file():
            results[config.image_size] = load_vcn(path, config, vocabulary, device)
            partial_path(path).unlink(missing_ok=True)  # left by a process killed after the final save
        else:
            results[config.image_size] = train_vcn(data_dir, config, run_dir, device, progress)
    return results
