"""The pathology classifiers that latent class optimisation searches with (the dissertation's §3.3–3.4).

Two backbones, one recipe, trained on the data directory's **train split only** (the images
PGGAN learned from; never the evaluation cohort, whose classifier must stay independent to
confirm what a search finds):

* ``densenet``: the torchvision DenseNet-121 of :class:`~xrg.models.classifier.FindingClassifier`
  (random initialisation: nothing can be downloaded here; §3.3 started from ImageNet), at
  ``image_size`` — generated images are resized to it, the bottleneck §4.3 blamed for the
  DenseNet searches' failures;
* ``critic``: the trained PGGAN critic with its scoring layer replaced by a linear layer of one
  logit per finding, trained end to end at the PGGAN's final size
  (:class:`~xrg.models.pggan.CriticClassifier`, §3.4).

The recipe (§3.3): multi-label, the class-weighted cross-entropy of Eq. (3.1) with the counts
of the train split, Adam at ``lr``, the learning rate multiplied by ``plateau_factor`` (0.1)
when the validation macro-AUROC has not improved for ``plateau_patience`` epochs
(``ReduceLROnPlateau``), and per-class thresholds at the validation split's Youden J — the
thresholds the search must pass. Test AUROC is reported, never used.

The training is an :class:`~xrg.train.loop.EpochLoop`: SIGINT/SIGTERM saves
``OUT/NAME.partial.pt`` (the scheduler's state with the rest) and calling again resumes it to
the weights of an uninterrupted run. :func:`load_search_classifier` gives the trained model as
the :class:`~xrg.latent.search.SearchClassifier` the search uses.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xrg.checkpoint import checkpoint_model_config, load_checkpoint, read_checkpoint
from xrg.config import config_from_mapping, merge_settings
from xrg.data.datasets import XRayPairDataset, resize_image
from xrg.data.findings import FINDING_KINDS
from xrg.data.manifest import VIEWS, read_manifest
from xrg.errors import CheckpointError, ConfigError, TrainingDiverged
from xrg.eval.judge import youden_thresholds
from xrg.latent.search import SearchClassifier
from xrg.models.base import CheckpointedModel
from xrg.models.classifier import FindingClassifier, FindingClassifierConfig, class_weights, weighted_bce
from xrg.models.pggan import PGGAN, CriticClassifier, PGGANModelConfig
from xrg.profiles import Profile
from xrg.train.loop import EpochLoop
from xrg.train.vcn import training_data_key

BACKBONES = ("densenet", "critic")
METRICS_NAME = "metrics.jsonl"


def classifier_name(backbone: str) -> str:
    """The file a trained search classifier of ``backbone`` is kept in."""
    return f"search_{backbone}.pt"


@dataclass
class PathologyTrainConfig:
    """How a search classifier is trained (the architecture follows from ``backbone``)."""

    backbone: str = "densenet"
    view: str = "frontal"
    image_size: int = 128  # the DenseNet's input; the critic takes the PGGAN's final size
    num_epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    plateau_patience: int = 2
    plateau_factor: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.view not in VIEWS:
            raise ConfigError(f"view must be one of {VIEWS}, got {self.view!r}")
        if not 8 <= self.image_size <= 1024:
            raise ConfigError(f"image_size must be in 8..1024, got {self.image_size}")
        if self.num_epochs < 1 or self.batch_size < 2 or self.plateau_patience < 0:
            raise ConfigError(
                f"need num_epochs >= 1, batch_size >= 2 and plateau_patience >= 0, got "
                f"{self.num_epochs}, {self.batch_size}, {self.plateau_patience}"
            )
        if self.lr <= 0 or self.weight_decay < 0 or not 0 < self.plateau_factor < 1:
            raise ConfigError(
                f"need lr > 0, weight_decay >= 0 and 0 < plateau_factor < 1, got "
                f"{self.lr}, {self.weight_decay}, {self.plateau_factor}"
            )

    @classmethod
    def from_profile(
        cls, profile: Profile, backbone: str, overrides: dict[str, Any] | None = None
    ) -> PathologyTrainConfig:
        """The profile's ``pathology:`` section (its ``critic:`` subsection for that backbone) plus ``overrides``."""
        section = profile.section("pathology")
        critic = section.pop("critic", {}) or {}
        values = merge_settings(
            {"seed": profile.seed, "backbone": backbone},
            section,
            critic if backbone == "critic" else {},
            overrides or {},
        )
        return config_from_mapping(
            cls, values, where=f"pathology settings of profile {profile.name!r}", prefix="pathology"
        )


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, size: int, batch_size: int = 64) -> torch.Tensor:
    """Logits of ``images [N, 1, H, W]`` in [0, 1], resized to ``size``, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = [
        model(resize_image(images[i : i + batch_size], size).to(device)).cpu()
        for i in range(0, len(images), batch_size)
    ]
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, len(FINDING_KINDS))


def per_class_auroc(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float | None]:
    """ROC AUC per finding (None where a split has no positives or no negatives) and their ``macro`` mean."""
    from torchmetrics.functional.classification import binary_auroc

    result: dict[str, float | None] = {}
    for k, name in enumerate(FINDING_KINDS):
        positives = int(labels[:, k].sum())
        result[name] = float(binary_auroc(logits[:, k], labels[:, k].long())) if 0 < positives < len(labels) else None
    defined = [v for v in result.values() if v is not None]
    result["macro"] = sum(defined) / len(defined) if defined else None
    return result


def _split(data_dir: Path, split: str, size: int, vocab: Any = None) -> XRayPairDataset | None:
    """The cases of ``split`` at ``size``; None when the data has none."""
    if not any(case.split == split for case in read_manifest(data_dir)):
        return None
    return XRayPairDataset(data_dir, split, image_size=size, vocab=vocab, max_sentences=1, max_words=1)


def train_pathology_classifier(
    data_dir: str | os.PathLike,
    config: PathologyTrainConfig,
    out_dir: str | os.PathLike,
    pggan_checkpoint: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> tuple[CheckpointedModel, dict[str, Any], Path]:
    """Train the search classifier of ``config.backbone`` on ``data_dir``'s train split (module docstring).

    The ``critic`` backbone starts from the critic of the finished PGGAN run ``pggan_checkpoint``
    (its ``RUN/checkpoint.pt``). Returns the frozen model, its metrics (validation and test AUROC
    per finding, the Youden thresholds as probabilities and logits) and the checkpoint path
    ``OUT/search_<backbone>.pt``.
    """
    device, data_dir, out_dir = torch.device(device), Path(data_dir), Path(out_dir)
    if config.backbone == "critic":
        if pggan_checkpoint is None:
            raise ConfigError("the critic backbone needs the PGGAN run whose critic it starts from (--pggan RUN)")
        payload = load_checkpoint(pggan_checkpoint, "pggan")
        if payload.get("progress", {}).get("finished") is False:
            raise CheckpointError(
                f"{pggan_checkpoint} is a stopped PGGAN training; finish it (xrg train pggan ... --resume) first"
            )
        pggan = PGGAN(checkpoint_model_config(payload, PGGANModelConfig, pggan_checkpoint))
        pggan.load_checkpoint_state(payload["state"])
        size = pggan.config.final_size
    else:
        size = config.image_size
    train_set = _split(data_dir, "train", size)
    if train_set is None:
        raise ConfigError(f"{data_dir} has no train split to train a search classifier on")
    val_set = _split(data_dir, "val", size, train_set.vocab)
    test_set = _split(data_dir, "test", size, train_set.vocab)
    if val_set is None:
        raise ConfigError(f"{data_dir} has no val split: the search thresholds and the plateau are chosen on it")
    view = config.view
    labels = torch.stack([train_set[i]["labels"] for i in range(len(train_set))])
    w_positive, w_negative = (w.to(device) for w in class_weights(labels))
    torch.manual_seed(config.seed)
    if config.backbone == "critic":
        model: CheckpointedModel = CriticClassifier.from_critic(pggan.critic, len(FINDING_KINDS)).to(device)
    else:
        model = FindingClassifier(FindingClassifierConfig()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
    )
    val_images = torch.stack([val_set[i][view] for i in range(len(val_set))])
    val_labels = torch.stack([val_set[i]["labels"] for i in range(len(val_set))])
    path = out_dir / classifier_name(config.backbone)
    loop = EpochLoop(
        kind=model.kind, label=f"search classifier ({config.backbone}, {size}px)", final_path=path, config=config,
        vocabulary=train_set.vocab, model=model, optimizer=optimizer, num_items=len(train_set),
        batch_size=config.batch_size, num_epochs=config.num_epochs, seed=config.seed, device=device,
        metrics_path=out_dir / METRICS_NAME, metric_match={"backbone": config.backbone},
        data_key=training_data_key(train_set), progress=progress, scheduler=scheduler,
        resume="xrg train pathology with the same settings (or train_pathology_classifier() with the same arguments)",
    )  # fmt: skip

    def step(indices: list[int], shuffle: torch.Generator) -> tuple[float, dict[str, float]]:
        items = [train_set[i] for i in indices]
        x = torch.stack([item[view] for item in items]).to(device)
        y = torch.stack([item["labels"] for item in items]).to(device)
        loss = weighted_bce(model(x), y, w_positive, w_negative)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"the {config.backbone} search classifier's loss became {float(loss)} at step {loop.step + 1} "
                f"(epoch {loop.epoch}); lower pathology.lr"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        return value, {"loss_sum": value * len(indices), "images": len(x)}

    def epoch_row(epoch: int, step: int, totals: dict[str, float]) -> dict[str, Any]:
        val_auroc = per_class_auroc(predict_logits(model, val_images, size), val_labels)["macro"]
        scheduler.step(val_auroc if val_auroc is not None else 0.0)
        model.train()
        seconds = totals.get("seconds", 0.0)
        return {"kind": model.kind, "backbone": config.backbone, "epoch": epoch, "step": step,
                "loss": totals.get("loss_sum", 0.0) / max(len(train_set), 1), "val_macro_auroc": val_auroc,
                "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                "images_per_s": totals.get("images", 0) / seconds if seconds > 0 else None}  # fmt: skip

    model.train()
    steps = loop.run(step, epoch_row)
    model.for_inference()
    val_logits = predict_logits(model, val_images, size)
    probabilities = youden_thresholds(torch.sigmoid(val_logits), val_labels.long(), FINDING_KINDS)
    metrics: dict[str, Any] = {
        "backbone": config.backbone, "input_size": size, "view": view,
        "val_auroc": per_class_auroc(val_logits, val_labels),
        "thresholds": probabilities,
        "threshold_logits": {k: _logit(p) for k, p in probabilities.items()},
        "num_train": len(train_set), "num_val": len(val_set),
    }  # fmt: skip
    if test_set is not None:
        test_images = torch.stack([test_set[i][view] for i in range(len(test_set))])
        test_labels = torch.stack([test_set[i]["labels"] for i in range(len(test_set))])
        metrics.update(
            test_auroc=per_class_auroc(predict_logits(model, test_images, size), test_labels), num_test=len(test_set)
        )
    loop.complete(
        {"kind": f"{model.kind}_test", **metrics},
        lambda: model.save(path, run_config=config, vocabulary=train_set.vocab, metrics=metrics, step=steps,
                           progress={"epoch": config.num_epochs, "batch": 0, "step": steps, "finished": True}),
    )  # fmt: skip
    return model, metrics, path


def _logit(probability: float | None) -> float | None:
    """The logit of a threshold probability, kept finite (a threshold of 1 or 0 becomes ±20)."""
    if probability is None:
        return None
    p = min(max(float(probability), 1e-9), 1 - 1e-9)
    return max(-20.0, min(20.0, math.log(p / (1 - p))))


def load_search_classifier(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> SearchClassifier:
    """A trained search classifier (either backbone) as the search uses it, with its validation thresholds.

    A finding without a threshold (no validation positives) gets an unreachable one (+20 logits):
    a search for it fails rather than passing on a guess.
    """
    path = Path(path)
    kind = str(read_checkpoint(path, "cpu").get("kind"))
    payload = load_checkpoint(path, "critic_classifier" if kind == "critic_classifier" else "classifier")
    model_class = CriticClassifier if payload["kind"] == "critic_classifier" else FindingClassifier
    model = model_class.from_payload(payload, path).to(map_location)
    metrics = payload.get("metrics") or {}
    logits = metrics.get("threshold_logits")
    if not isinstance(logits, dict):
        raise CheckpointError(f"{path} has no search thresholds: it is not a search classifier (xrg train pathology)")
    thresholds = [20.0 if logits.get(name) is None else float(logits[name]) for name in FINDING_KINDS]
    return SearchClassifier(model, FINDING_KINDS, thresholds, int(metrics.get("input_size", 128)))
