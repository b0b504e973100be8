"""Scoring DiffuseVAE (the whitepaper's §4 and §6, and what it left as future work), with controls.

Everything is judged by the book's independent evaluators (the evaluation DenseNet-121 trained
on the rendered cohort, :mod:`xrg.train.evaluators`), at its thresholds (Youden's J on the
cohort's held-out part, :func:`xrg.latent.sample.evaluator_judge`), on the test split:

* :func:`condition_table` — the whitepaper's table for its three conditions (pneumonia-like
  opacity, pleural effusion, healthy lungs) and every other finding the evaluator can judge:
  per condition the FID (evaluator features) of ``n`` samples against the real test images of
  that condition, the **fidelity** (the share of samples the evaluator calls positive for every
  finding asked for; for the normal chest, for none of the judgeable findings), the same rates
  of the real test images of the condition (the ceiling) and of the real images *without* it
  (the chance line), the **diversity** (mean MS-SSIM between samples; 1: all the same) and
  **memorisation** (nearest-train-image distance of samples over that of real test images; ≈ 1:
  no copying). Each generator row sits beside its controls: the population-mean train image
  (it draws one image for every condition), retrieval (train images with the condition, drawn
  at random: what copying the training set would score) and the real test images.
* :func:`representation_scores` — the reconstructed representation score (§4): ``1 − cos`` of
  the MoCo embeddings of a real image and of its DiffuseVAE reconstruction (the VAE's
  reconstruction refined by the DDPM from noise); lower is better.
* :func:`report_detection` — the report-level measure XRayGAN's tables use
  (:func:`~xrg.eval.judge.finding_detection`: detection minus false-alarm rate over the
  judgeable findings) for images made from the test reports, so that the two families can be
  compared on the same reports (the frontal view: DiffuseVAE draws one view).
* :func:`sampling_speed` — images per second of ancestral sampling and of DDIM at several step counts.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrg.data.datasets import XRayPairDataset
from xrg.data.findings import FINDING_KINDS, Finding, describe_findings
from xrg.errors import ConfigError
from xrg.eval import judge as _judge_metrics  # noqa: F401  (registers finding_detection)
from xrg.eval.metrics import _frechet_distance, _mean_estimate, compute
from xrg.models.diffusevae import DiffuseVAE
from xrg.models.xraygan import to_image_range, to_model_range

#: The whitepaper's three conditions (§6), as finding sets.
WHITEPAPER_CONDITIONS: dict[str, tuple[str, ...]] = {
    "pneumonia-like opacity": ("opacity",),
    "pleural effusion": ("pleural_effusion",),
    "healthy lungs": (),
}


def condition_name(kinds: Sequence[str]) -> str:
    """A finding set as the table names it ("healthy lungs" for none)."""
    for name, value in WHITEPAPER_CONDITIONS.items():
        if tuple(kinds) == value:
            return name
    return "; ".join(kind.replace("_", " ") for kind in kinds)


def members(labels: torch.Tensor, kinds: Sequence[str]) -> torch.Tensor:
    """Rows of multi-hot ``labels`` with every finding of ``kinds`` (for no kinds: rows without any finding)."""
    labels = labels > 0.5
    if not kinds:
        return ~labels.any(dim=1)
    return labels[:, [FINDING_KINDS.index(kind) for kind in kinds]].all(dim=1)


@dataclass
class RealImages:
    """One split's images of a view, ``[N, 1, S, S]`` in [0, 1], with their labels and report texts."""

    images: torch.Tensor
    labels: torch.Tensor
    texts: list[str]
    case_ids: list[str]
    #: what a judge computed on these images (:meth:`Judge.of_real`), by judge and quantity
    computed: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, data_dir: str | os.PathLike, split: str, image_size: int, view: str = "frontal",
             limit: int | None = None) -> RealImages:  # fmt: skip
        dataset = XRayPairDataset(data_dir, split, image_size=image_size, max_sentences=1, max_words=1)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        items = [dataset[i] for i in range(count)]
        if not items:
            raise ConfigError(f"{data_dir} has no {split} cases to score against")
        return cls(
            torch.stack([item[view] for item in items]), torch.stack([item["labels"] for item in items]),
            [item["report_text"] for item in items], [item["case_id"] for item in items],
        )  # fmt: skip


def condition_batch(model: DiffuseVAE, kinds_list: Sequence[Sequence[str]], texts: Sequence[str] | None = None,
                    vocabulary: Any = None) -> dict[str, Any]:  # fmt: skip
    """The model's condition input for cases of finding sets ``kinds_list``
    (:meth:`~xrg.pipelines.DiffuseVAEPipeline.condition_batch`); a report model reads ``texts``, by
    default the short report each finding set describes."""
    from xrg.pipelines import DiffuseVAEPipeline

    pipe = DiffuseVAEPipeline(model, vocabulary or getattr(model.checkpoint_info, "vocabulary", None))
    if texts is None:
        report = pipe.mode == "report"
        texts = [describe_findings([Finding(kind) for kind in kinds]) if report else "" for kinds in kinds_list]
    return pipe.condition_batch([tuple(kinds) for kinds in kinds_list], list(texts))


def _rows(batch: Mapping[str, Any], start: int, stop: int) -> dict[str, Any]:
    return {key: value[start:stop] for key, value in batch.items()}


@torch.no_grad()
def generate(model: DiffuseVAE, batch: Mapping[str, Any], count: int, *, steps: int | None, guidance: float = 1.0,
             eta: float = 0.0, seed: int = 0, batch_size: int = 64, x_vae: torch.Tensor | None = None,
             part: str = "image") -> torch.Tensor:  # fmt: skip
    """``count`` images ``[count, 1, S, S]`` in [0, 1] under the conditions of ``batch``'s rows, in
    batches of ``batch_size`` (batch ``b`` seeded with ``seed + b``); ``part = "vae"``: the VAE draws."""
    device = next(model.parameters()).device
    out = []
    for number, start in enumerate(range(0, count, batch_size)):
        stop = min(start + batch_size, count)
        rows = {k: v.to(device) for k, v in _rows(batch, start, stop).items()}
        given = None if x_vae is None else x_vae[start:stop].to(device)
        if part == "vae" and given is None:
            c = model.vae.condition(rows, stop - start)
            images = model.vae.sample(c, torch.Generator().manual_seed(seed + number)).clamp(-1, 1)
        else:
            images = model.generate(rows, stop - start, generator=torch.Generator().manual_seed(seed + number),
                                    steps=steps, guidance=guidance, eta=eta, x_vae=given)[part]  # fmt: skip
        out.append(to_image_range(images).clamp(0, 1).cpu())
    return torch.cat(out)


@torch.no_grad()
def reconstruct(model: DiffuseVAE, images: torch.Tensor, batch: Mapping[str, Any], *, steps: int | None,
                eta: float = 0.0, seed: int = 0, batch_size: int = 64) -> torch.Tensor:  # fmt: skip
    """DiffuseVAE reconstructions of ``images`` ``[N, 1, S, S]`` in [0, 1]: the VAE's reconstruction
    (posterior mean) under the case's condition, refined by the DDPM from noise."""
    device = next(model.parameters()).device
    x_vae = []
    for start in range(0, len(images), batch_size):
        rows = {k: v.to(device) for k, v in _rows(batch, start, start + batch_size).items()}
        x = to_model_range(images[start : start + batch_size].to(device))
        x_vae.append(model.vae.reconstruct(x, model.vae.condition(rows, len(x))).clamp(-1, 1).cpu())
    return generate(model, batch, len(images), steps=steps, eta=eta, seed=seed, batch_size=batch_size,
                    x_vae=torch.cat(x_vae))  # fmt: skip


@torch.no_grad()
def representation_scores(moco: Any, real: torch.Tensor, reconstructed: torch.Tensor, num_resamples: int = 200,
                          seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The reconstructed representation score: mean ``1 − cos`` of the MoCo embeddings of each real
    image and its reconstruction (both ``[N, 1, S, S]`` in [0, 1]), with a bootstrap interval."""
    from xrg.models.moco import representation_distance

    device = next(moco.parameters()).device
    distances = torch.cat([
        representation_distance(moco, to_model_range(real[i : i + 64].to(device)),
                                to_model_range(reconstructed[i : i + 64].to(device))).cpu()
        for i in range(0, len(real), 64)
    ])  # fmt: skip
    return _mean_estimate(distances.double(), num_resamples, seed)


# --------------------------------------------------------------------------------------
# The condition table
# --------------------------------------------------------------------------------------


@dataclass
class Judge:
    """The evaluator as the tables use it: features for FID, calls at its thresholds, the findings it can judge."""

    features: Callable[[torch.Tensor], torch.Tensor]  # [N, 1, S, S] in [0, 1] -> [N, D]
    calls: Callable[[torch.Tensor], torch.Tensor]  # [N, 1, S, S] in [0, 1] -> [N, len(FINDING_KINDS)] bool
    probabilities: Callable[[torch.Tensor], torch.Tensor]  # [N, 1, S, S] in [0, 1] -> [N, len(FINDING_KINDS)]
    judgeable: tuple[str, ...]
    thresholds: dict[str, float | None]

    @classmethod
    def from_classifier(cls, judge: Any, judgeable: Sequence[str]) -> Judge:
        """The evaluation classifier as :func:`xrg.latent.sample.evaluator_judge` returns it (a
        ``SearchClassifier`` with the cohort's held-out Youden thresholds), judging ``judgeable``."""
        from xrg.latent.evaluate import evaluator_features

        network, size = judge.network, judge.input_size

        def logits(images: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return torch.cat([judge.logits(images[i : i + 64] * 2 - 1).cpu() for i in range(0, len(images), 64)])

        thresholds = {name: float(torch.sigmoid(t)) for name, t in zip(FINDING_KINDS, judge.thresholds)}
        return cls(
            features=lambda images: evaluator_features(network, images, size),
            calls=lambda images: logits(images) >= judge.thresholds,
            probabilities=lambda images: torch.sigmoid(logits(images)),
            judgeable=tuple(judgeable), thresholds=thresholds,
        )  # fmt: skip

    def of_real(self, real: RealImages, what: str) -> torch.Tensor:
        """``features`` or ``calls`` of a split's real images, computed once per judge and split."""
        key = (id(self), what)
        if key not in real.computed:
            real.computed[key] = getattr(self, what)(real.images)
        return real.computed[key]


def _fidelity(calls: torch.Tensor, kinds: Sequence[str], judgeable: Sequence[str]) -> torch.Tensor:
    """Per image: called positive for every finding of ``kinds`` (the normal chest: for no judgeable finding)."""
    if not kinds:
        return ~calls[:, [FINDING_KINDS.index(k) for k in judgeable]].any(dim=1)
    return calls[:, [FINDING_KINDS.index(k) for k in kinds]].all(dim=1)


def score_images(images: torch.Tensor, kinds: Sequence[str], judge: Judge, real_features: torch.Tensor,
                 train_features: torch.Tensor, test_features: torch.Tensor, *, diversity_group: int = 4,
                 num_resamples: int = 200, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """One row of the condition table for ``images`` made for condition ``kinds`` (module docstring)."""
    features = judge.features(images)
    row: dict[str, Any] = {"n": len(images)}
    if len(real_features) >= 2 and len(features) >= 2:  # the closed form: torchmetrics' takes seconds at D = 1024
        row["fid"] = {"value": max(_frechet_distance(real_features.double(), features.double()), 0.0),
                      "n": len(features), "n_real": len(real_features)}  # fmt: skip
    else:
        row["fid"] = None
    row["fidelity"] = _mean_estimate(
        _fidelity(judge.calls(images), kinds, judge.judgeable).double(), num_resamples, seed
    )
    groups = len(images) // diversity_group
    distinct = len(torch.unique(images.flatten(1), dim=0)) > 1
    row["diversity"] = compute("ms_ssim_diversity", samples=images[: groups * diversity_group].reshape(
        groups, diversity_group, *images.shape[1:]), num_resamples=num_resamples, seed=seed) if groups >= 1 and distinct \
        else {"value": 1.0, "ci": [1.0, 1.0], "n": groups}  # fmt: skip
    row["memorisation"] = compute("memorisation", generated_features=features, train_features=train_features,
                                  test_features=test_features, num_closest=0, num_resamples=num_resamples, seed=seed)  # fmt: skip
    return row


def scorable_conditions(
    conditions: Sequence[Sequence[str]], test_labels: torch.Tensor, minimum: int = 2
) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    """The conditions with at least ``minimum`` test images (an FID needs two), and why each other one is left out."""
    kept, skipped = [], {}
    for kinds in conditions:
        found = int(members(test_labels, kinds).sum())
        if found >= minimum:
            kept.append(tuple(kinds))
        else:
            skipped[condition_name(kinds)] = f"{found} test image(s) < {minimum}"
    return kept, skipped


def condition_table(
    generators: Mapping[str, Callable[[Sequence[str], int, int], torch.Tensor]],
    conditions: Sequence[Sequence[str]],
    judge: Judge,
    test: RealImages,
    train: RealImages,
    *,
    n: int = 64,
    seed: int = 0,
    num_resamples: int = 200,
    progress: Any = None,
) -> list[dict[str, Any]]:
    """Rows ``{condition, method, kind, n, fid, fidelity, diversity, memorisation}`` for every
    condition and method, the controls (``mean image``, ``retrieval``, ``real``) included.

    ``generators[method](kinds, n, seed)`` makes ``n`` images ``[n, 1, S, S]`` in [0, 1] of a
    condition. ``real`` is the test images of the condition (up to ``n``), scored against the
    test images of the condition — so its FID is 0 by construction, and its fidelity is the
    ceiling; ``chance`` is the fidelity of the real test images *without* the condition.
    """
    test_features, train_features = judge.of_real(test, "features"), judge.of_real(train, "features")
    test_calls = judge.of_real(test, "calls")
    mean_image = train.images.mean(dim=0, keepdim=True)
    rows = []
    for number, kinds in enumerate(conditions):
        kinds = tuple(kinds)
        name = condition_name(kinds)
        inside, train_inside = members(test.labels, kinds), members(train.labels, kinds)
        if int(inside.sum()) < 2:
            raise ConfigError(f"the test split has {int(inside.sum())} images of {name!r}: too few to score it")
        real_features = test_features[inside]
        outside_fidelity = _fidelity(test_calls[~inside], kinds, judge.judgeable).double()
        chance = _mean_estimate(outside_fidelity, num_resamples, seed) if len(outside_fidelity) else None
        common = {"condition": name, "findings": list(kinds), "test_images": int(inside.sum()), "chance": chance}
        pick = torch.randperm(int(train_inside.sum()), generator=torch.Generator().manual_seed(seed + number))[:n]
        made = {method: ("generator", make(kinds, n, seed + 1000 * number)) for method, make in generators.items()}
        made["mean image"] = ("control", mean_image.expand(n, -1, -1, -1).clone())
        made["retrieval"] = ("control", train.images[train_inside][pick])
        made["real"] = ("control", test.images[inside][:n])
        for method, (kind, images) in made.items():
            if len(images) < 2:
                continue
            row = score_images(images, kinds, judge, real_features, train_features, test_features,
                               num_resamples=num_resamples, seed=seed)  # fmt: skip
            rows.append({**common, "method": method, "kind": kind, **row})
            if progress is not None:
                progress.update()
    return rows


# --------------------------------------------------------------------------------------
# Report-level detection (the measure XRayGAN's tables use) and sampling speed
# --------------------------------------------------------------------------------------


def report_detection(images: torch.Tensor, labels: torch.Tensor, judge: Judge, num_resamples: int = 200,
                     seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """:func:`~xrg.eval.judge.finding_detection` of images made for test reports with ``labels``."""
    return compute(
        "finding_detection", probs=judge.probabilities(images), labels=labels, thresholds=judge.thresholds,
        names=FINDING_KINDS, included=list(judge.judgeable), num_resamples=num_resamples, seed=seed,
    )  # fmt: skip


def case_kinds(labels: torch.Tensor) -> list[tuple[str, ...]]:
    """The finding set of each case of multi-hot ``labels`` ``[N, len(FINDING_KINDS)]``."""
    return [tuple(k for k, v in zip(FINDING_KINDS, row) if v > 0.5) for row in labels]


def case_quality(images: torch.Tensor, labels: torch.Tensor, judge: Judge, real: RealImages, num_resamples: int = 200,
                 seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """How good images made for cases with ``labels`` are, one per case: their FID against all of
    ``real``'s images (evaluator features) and :func:`report_detection`; the sampler sweep's measure."""
    if len(images) < 2:
        raise ConfigError(f"an FID needs at least 2 images, got {len(images)}")
    fid = _frechet_distance(judge.of_real(real, "features").double(), judge.features(images).double())
    return {"fid": max(fid, 0.0), "n": len(images),
            "detection": report_detection(images, labels, judge, num_resamples=num_resamples, seed=seed)}  # fmt: skip


@torch.no_grad()
def sampling_speed(model: DiffuseVAE, step_counts: Sequence[int | None], *, count: int = 16, repeats: int = 1,
                   guidance: float = 1.0) -> list[dict[str, Any]]:  # fmt: skip
    """Images per second (median of ``repeats``) of ``count`` samples at each DDIM step count (None: ancestral, all T)."""
    batch = condition_batch(model, [()] * count)
    rows = []
    for steps in step_counts:
        seconds = []
        for repeat in range(repeats):
            started = time.perf_counter()
            generate(model, batch, count, steps=steps, guidance=guidance, seed=repeat, batch_size=count)
            seconds.append(time.perf_counter() - started)
        median = float(np.median(seconds))
        rows.append({
            "sampler": "ancestral" if steps is None else "ddim", "steps": steps or model.schedule.timesteps,
            "images": count, "seconds": median, "images_per_s": count / median,
        })  # fmt: skip
    return rows


def load_stage(run_root: str | os.PathLike, stage: str, device: str | torch.device = "cpu") -> Any:
    """The trained model of ``run_root/STAGE`` (a VAE, MoCo or DiffuseVAE by stage)."""
    from xrg.checkpoint import CHECKPOINT_NAME
    from xrg.models.diffusevae import stage_model

    return stage_model(stage).from_checkpoint(Path(run_root) / stage / CHECKPOINT_NAME, map_location=device)


def retrieve_by_labels(labels: torch.Tensor, train: RealImages, seed: int = 0) -> torch.Tensor:
    """For each row of ``labels``, a train image whose finding set is nearest (fewest differing
    findings; ties drawn with a generator seeded by ``seed``): the retrieval control of a table."""
    generator = torch.Generator().manual_seed(seed)
    distance = ((labels[:, None, :] > 0.5) != (train.labels[None, :, :] > 0.5)).sum(dim=2).double()
    distance = distance + torch.rand(distance.shape, generator=generator, dtype=torch.float64) * 0.5
    return train.images[distance.argmin(dim=1)]


@torch.no_grad()
def embeddings(moco: Any, images: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """MoCo embeddings ``[N, D]`` (normalised) of images ``[N, 1, S, S]`` in [0, 1]."""
    device = next(moco.parameters()).device
    moco = moco.eval()
    return torch.cat([
        moco.embed(to_model_range(images[i : i + batch_size].to(device))).cpu() for i in range(0, len(images), batch_size)
    ])  # fmt: skip


def category_separation(
    embedded: torch.Tensor, categories: torch.Tensor, seed: int = 0, num_resamples: int = 200
) -> dict[str, Any]:
    """How well an embedding groups images by finding category: the silhouette (cosine) and the
    leave-one-out 5-nearest-neighbour category accuracy beside its chance (the majority share)."""
    from sklearn.metrics import silhouette_score

    x = torch.nn.functional.normalize(embedded.double(), dim=1)
    similarity = x @ x.T
    similarity.fill_diagonal_(-float("inf"))
    neighbours = similarity.topk(5, dim=1).indices
    votes = categories[neighbours]
    predicted = torch.mode(votes, dim=1).values
    correct = (predicted == categories).double()
    counts = torch.bincount(categories)
    present = int((counts > 0).sum())
    silhouette = float(silhouette_score(x.numpy(), categories.numpy(), metric="cosine")) if present > 1 else None
    return {
        "silhouette": silhouette,
        "knn_accuracy": _mean_estimate(correct, num_resamples, seed),
        "chance": float(counts.max()) / len(categories),
        "n": len(categories),
    }


def feature_distance(a: torch.Tensor, b: torch.Tensor, num_resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Mean ``1 − cos`` between paired feature rows ``a[i]``, ``b[i]`` (e.g. the evaluator's), with a bootstrap interval."""
    a, b = (torch.nn.functional.normalize(x.double(), dim=1) for x in (a, b))
    return _mean_estimate(1 - (a * b).sum(dim=1), num_resamples, seed)
