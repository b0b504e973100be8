"""GAN-train (Shmelkov et al. 2018): is a synthetic archive made by the search worth learning from?

:func:`synthetic_archive` makes a labelled archive with the search: for every offered class,
``per_class`` searches from seeded latents (truncated prior, the search classifier at its
validation thresholds); each image that passed is kept, labelled with **every** class the search
classifier puts above its threshold (the searched class by construction; the others are free
and may pass too). ``uncurated`` random samples, labelled the same way, add the images the
classifier calls normal, so the archive is not all-positive.

:func:`gan_train_table` trains the same DenseNet-121 twice — once on the synthetic archive
only, once on the same number of real train renders (the real-train reference) — with the
class-weighted cross-entropy, and tests both on the real **test** renders: per-class AUROC. A
synthetic archive that teaches close to what real images teach carries the findings; one
whose AUROCs sit near 0.5 taught the classifier the search classifier's adversarial patterns.
Both classifiers are trained with the same seed, epochs, batch size and learning rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xrg.data.findings import FINDING_KINDS
from xrg.errors import ConfigError
from xrg.latent.search import TRUNCATION, SearchClassifier, search
from xrg.models.classifier import FindingClassifier, FindingClassifierConfig, class_weights, weighted_bce
from xrg.models.pggan import PGGAN, truncated_normal
from xrg.train.pathology import per_class_auroc, predict_logits


@dataclass
class SyntheticArchive:
    """Generated images ``[N, 1, S, S]`` in [0, 1] with multi-label ``labels [N, C]`` (``FINDING_KINDS`` order),
    the class each was searched for (``""`` for an uncurated sample) and the searches' pass counts."""

    images: torch.Tensor
    labels: torch.Tensor
    searched_for: list[str]
    attempts: dict[str, int]
    found: dict[str, int]


@torch.no_grad()
def _label(classifier: SearchClassifier, images: torch.Tensor) -> torch.Tensor:
    """Multi-label decisions ``[N, C]`` of the search classifier at its thresholds, in ``FINDING_KINDS`` order."""
    logits = classifier.logits(images)
    decisions = (logits >= classifier.thresholds.to(logits.device)).float()
    labels = torch.zeros(len(images), len(FINDING_KINDS))
    for column, name in enumerate(classifier.class_names):
        if name in FINDING_KINDS:
            labels[:, FINDING_KINDS.index(name)] = decisions[:, column].cpu()
    return labels


def synthetic_archive(
    model: PGGAN,
    classifier: SearchClassifier,
    classes: Sequence[str],
    per_class: int = 32,
    uncurated: int = 64,
    seed: int = 0,
    max_steps: int = 100,
    lr: float = 0.05,
    regulariser: str = "none",
    batch: int = 16,
    progress: bool = True,
) -> SyntheticArchive:
    """The archive of the module docstring; searches run in batches of ``batch`` latents."""
    if not classes:
        raise ConfigError("synthetic_archive needs at least one class to search for")
    if per_class < 1 or uncurated < 0 or batch < 1:
        raise ConfigError(f"need per_class >= 1, uncurated >= 0 and batch >= 1, got {per_class}, {uncurated}, {batch}")
    model = model.for_inference()
    images, labels, searched_for = [], [], []
    attempts, found = {}, {}
    bar = tqdm(total=len(classes) * per_class + uncurated, desc="GAN-train archive", unit="image", disable=not progress)
    for class_number, name in enumerate(classes):
        attempts[name], found[name] = per_class, 0
        for start in range(0, per_class, batch):
            count = min(batch, per_class - start)
            results = search(
                model.generate, model.config.latent_dim, classifier, name, n=count,
                seed=seed + 100_003 * (class_number + 1) + start, max_steps=max_steps, lr=lr,
                regulariser=regulariser, record_images=True,
            )  # fmt: skip
            kept = [r.image for r in results if r.success]
            if kept:
                stack = torch.stack(kept)
                images.append(stack)
                labels.append(_label(classifier, stack))
                searched_for += [name] * len(kept)
                found[name] += len(kept)
            bar.update(count)
    if uncurated:
        z = truncated_normal((uncurated, model.config.latent_dim), TRUNCATION, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            stack = torch.cat([model.generate(z[i : i + batch]) for i in range(0, uncurated, batch)])
        images.append(stack)
        labels.append(_label(classifier, stack))
        searched_for += [""] * uncurated
        bar.update(uncurated)
    bar.close()
    if not images:
        raise ConfigError(f"no search for {list(classes)} passed: there is no synthetic archive to train on")
    pictures = ((torch.cat(images).detach().cpu() + 1.0) / 2.0).clamp(0, 1)
    return SyntheticArchive(pictures, torch.cat(labels), searched_for, attempts, found)


def fit_classifier(
    images: torch.Tensor,
    labels: torch.Tensor,
    size: int,
    epochs: int = 4,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    desc: str = "classifier",
    progress: bool = True,
) -> FindingClassifier:
    """A DenseNet-121 (the evaluators' architecture) fitted on ``images [N, 1, S, S]`` in [0, 1] with class-weighted BCE."""
    if len(images) != len(labels) or len(images) < 2:
        raise ConfigError(f"need at least 2 images with one label row each, got {len(images)} and {len(labels)}")
    x = images if images.shape[-1] == size else F.interpolate(images, size=(size, size), mode="area")
    w_positive, w_negative = class_weights(labels)
    torch.manual_seed(seed)
    model = FindingClassifier(FindingClassifierConfig())
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    steps = epochs * ((len(x) + batch_size - 1) // batch_size)
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress) as bar:
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=shuffle)
            for start in range(0, len(x), batch_size):
                index = order[start : start + batch_size]
                if len(index) < 2:
                    bar.update(1)
                    continue
                loss = weighted_bce(model(x[index]), labels[index].float(), w_positive, w_negative)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update(1)
    return model.eval()


def gan_train_table(
    archive: SyntheticArchive,
    real_train: tuple[torch.Tensor, torch.Tensor],
    real_test: tuple[torch.Tensor, torch.Tensor],
    classes: Sequence[str],
    size: int = 64,
    epochs: int = 4,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, float | None]]:
    """Per class: test AUROC of the GAN-train classifier and of the real-train one, and the archive's positives.

    ``real_train`` and ``real_test`` are ``(images [N, 1, S, S] in [0, 1], labels [N, C])``; the
    real-train classifier sees as many real train images as the archive holds (the first ones of
    a seeded permutation), so the two differ only in where their images came from.
    """
    train_images, train_labels = real_train
    count = min(len(archive.images), len(train_images))
    take = torch.randperm(len(train_images), generator=torch.Generator().manual_seed(seed))[:count]
    settings = dict(size=size, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, progress=progress)
    synthetic = fit_classifier(archive.images, archive.labels, desc="GAN-train classifier", **settings)
    real = fit_classifier(train_images[take], train_labels[take], desc="real-train classifier", **settings)
    test_images, test_labels = real_test
    auroc_synthetic = per_class_auroc(predict_logits(synthetic, test_images, size), test_labels)
    auroc_real = per_class_auroc(predict_logits(real, test_images, size), test_labels)
    table: dict[str, dict[str, float | None]] = {}
    for name in classes:
        column = FINDING_KINDS.index(name)
        table[name] = {
            "gan_train_auroc": auroc_synthetic.get(name),
            "real_train_auroc": auroc_real.get(name),
            "synthetic_positives": float(archive.labels[:, column].sum()),
            "real_positives": float(train_labels[take][:, column].sum()),
            "test_positives": float(test_labels[:, column].sum()),
        }
    values = [v for v in (table[n]["gan_train_auroc"] for n in classes) if v is not None]
    reference = [v for v in (table[n]["real_train_auroc"] for n in classes) if v is not None]
    table["mean"] = {
        "gan_train_auroc": float(np.mean(values)) if values else None,
        "real_train_auroc": float(np.mean(reference)) if reference else None,
        "synthetic_positives": float(archive.labels.sum()),
        "real_positives": float(train_labels[take].sum()),
        "test_positives": float(test_labels.sum()),
    }
    return table
