"""Scoring one trained run with one protocol: ``xrg eval`` and the rows of Tables 1 and 2.

For the test split of the data directory (reports and patients no generator trained on) the
run generates both views of every report with a seeded noise source. Then, with evaluator
networks trained on an independent phantom cohort (:mod:`xrg.eval.evaluators`: a
DenseNet-121 finding classifier and an evaluation VCN, neither ever saw a generator's
patients):

* IS on the classifier's finding logits, FID and KID on its pooled features against the real
  test renders, per view and over both views (the official XRayGAN also scored IS/FID with
  a DenseNet-121 chest X-ray classifier); with a local Inception file, the same on Inception;
* SSIM of each generated image against the ground truth of its report, per view, at the
  model's resolution;
* MS-SSIM between generations of the same report with different seeds (diversity);
* VC of generated pairs and of real pairs under the evaluation VCN;
* finding fidelity: the classifier's per-finding AUROC on generated images against the
  report's findings, per view, next to the same on the real renders (the ceiling);
* cross-view agreement of the classifier's calls on the generated frontal and lateral;
* controllability: held-out reports edited (a finding negated or its severity changed),
  both versions generated with the same seed; does the edited finding's probability move
  the intended way while the others stay put;
* memorisation: nearest-neighbour distances of generated frontals to the train split in the
  classifier's feature space, relative to the same for real test frontals.

Every number comes with a bootstrap 95% CI and its sample count; the result is written to
``RUN/eval.json`` with the checkpoints (and their sha256) it was computed from, so a stale
evaluation is recognised and redone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xrg.config import config_from_mapping
from xrg.data.datasets import XRayPairDataset, collate_pairs, resize_image
from xrg.data.findings import FINDING_KINDS, SEVERITIES
from xrg.data.reports import report_text
from xrg.errors import ConfigError, XrgError
from xrg.eval import metrics
from xrg.eval.generators import VIEWS, PairGenerator, checkpoint_path, encode_reports, load_generator
from xrg.io import atomic_write_json
from xrg.profiles import Profile

EVAL_NAME = "eval.json"
EVAL_FORMAT = "xrg-eval-1"
#: What makes an existing ``eval.json`` current: the same checkpoints, data and Inception file.
FRESHNESS_KEYS: tuple[str, ...] = ("run_sha256", "classifier_sha256", "vcn_sha256", "data_dir", "inception_weights")


@dataclass
class EvalConfig:
    """How a run is scored; one config for every row of a table."""

    num_reports: int = 0  # test reports scored (0: the whole test split)
    batch_size: int = 32  # reports generated per forward pass
    seed: int = 0  # seeds the noise of the generators and the bootstrap
    num_resamples: int = (
        200  # bootstrap resamples per CI (FID a tenth, at least 10: each resample is an eigendecomposition)
    )
    diversity_reports: int = 50  # reports generated diversity_samples times for MS-SSIM
    diversity_samples: int = 4  # seeds per report for MS-SSIM
    controllability_reports: int = 100  # test reports edited for the controllability score
    memorisation_train: int = 0  # train images searched for nearest neighbours (0: all)
    num_closest: int = 8  # closest generated/train pairs listed for the figure

    def __post_init__(self) -> None:
        for name in ("num_reports", "controllability_reports", "memorisation_train", "diversity_reports"):
            if getattr(self, name) < 0:
                raise ConfigError(f"eval {name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "num_resamples", "num_closest"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval {name} must be >= 1, got {getattr(self, name)}")
        if self.diversity_samples < 2:
            raise ConfigError(f"eval diversity_samples must be >= 2, got {self.diversity_samples}")

    @classmethod
    def from_profile(cls, profile: Profile, overrides: dict[str, Any] | None = None) -> EvalConfig:
        values = {"seed": profile.seed, **profile.section("eval"), **(overrides or {})}
        return config_from_mapping(cls, values, where=f"eval section of profile {profile.name!r}")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _batches(count: int, size: int) -> Iterator[range]:
    for start in range(0, count, size):
        yield range(start, min(start + size, count))


@torch.no_grad()
def _classify(
    classifier: torch.nn.Module, images: torch.Tensor, size: int, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features and finding logits of ``images [N, 1, H, W]`` in [0, 1] at ``size``."""
    device = next(classifier.parameters()).device
    features, logits = [], []
    for part in _batches(len(images), batch_size):
        x = resize_image(images[part.start : part.stop], size).to(device)
        pooled = classifier.features(x)
        features.append(pooled.cpu())
        logits.append(classifier.classify(pooled).cpu() if hasattr(classifier, "classify") else classifier(x).cpu())
    return torch.cat(features).double(), torch.cat(logits).double()


@torch.no_grad()
def _vc(
    vcn: torch.nn.Module, frontal: torch.Tensor, lateral: torch.Tensor, size: int, batch_size: int = 64
) -> torch.Tensor:
    """P(same patient) of each (frontal, lateral) pair under a VCN, at ``size``."""
    from xrg.models.xraygan import to_model_range

    device = next(vcn.parameters()).device
    scores = []
    for part in _batches(len(frontal), batch_size):
        f = vcn.embed(to_model_range(resize_image(frontal[part.start : part.stop], size)).to(device))
        l = vcn.embed(to_model_range(resize_image(lateral[part.start : part.stop], size)).to(device))  # noqa: E741 (lateral)
        scores.append(vcn.pair_probability(f, l).cpu())
    return torch.cat(scores).double()


def model_dataset(model: PairGenerator, data_dir: str | os.PathLike, split: str = "test") -> XRayPairDataset:
    """A split of ``data_dir`` as ``model`` reads it: at its resolution, with its vocabulary and report limits."""
    return XRayPairDataset(data_dir, split, image_size=model.image_size, vocab=model.vocabulary,
                           max_sentences=model.max_sentences, max_words=model.max_words)  # fmt: skip


def generate_for_cases(
    model: PairGenerator,
    dataset: XRayPairDataset,
    indices: Sequence[int],
    seed: int,
    batch_size: int,
    progress: bool = False,
    desc: str = "generating",
) -> dict[str, torch.Tensor]:
    """Both views for the dataset's cases ``indices``; batch ``b`` uses noise seeded ``seed + b``."""
    out: dict[str, list[torch.Tensor]] = {view: [] for view in VIEWS}
    parts = list(_batches(len(indices), batch_size))
    for number, part in enumerate(tqdm(parts, desc=desc, unit="batch", disable=not progress)):
        batch = collate_pairs([dataset[indices[i]] for i in part])
        images = model.generate(batch, torch.Generator().manual_seed(seed + number))
        for view in VIEWS:
            out[view].append(images[view])
    return {view: torch.cat(out[view]) for view in VIEWS}


def generate_for_texts(
    model: PairGenerator, texts: Sequence[str], seed: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """Both views for raw report texts; batch ``b`` uses noise seeded ``seed + b``."""
    out: dict[str, list[torch.Tensor]] = {view: [] for view in VIEWS}
    for number, part in enumerate(_batches(len(texts), batch_size)):
        batch = encode_reports([texts[i] for i in part], model.vocabulary, model.max_sentences, model.max_words)
        images = model.generate(batch, torch.Generator().manual_seed(seed + number))
        for view in VIEWS:
            out[view].append(images[view])
    return {view: torch.cat(out[view]) for view in VIEWS}


def controllability_edits(cases: Sequence[Any], limit: int, seed: int) -> list[dict[str, Any]]:
    """Edits with a known intended direction for up to ``limit`` cases, one per case.

    Each case gets one edit drawn (seeded) from those that apply to its text: negating a
    finding (its probability should fall) or moving its severity one step (rise or fall).
    Side flips do not change which findings are present, so the classifier cannot score them;
    they are left to the explorer.
    """
    from xrg.data import edits as report_edits

    rng = np.random.default_rng(seed)
    chosen = []
    for case in cases:
        if len(chosen) >= limit:
            break
        text = report_text(case.findings, case.impression, headers=True)
        try:
            options = [o for o in report_edits.possible_edits(text) if o[0] in ("negate", "set_severity")]
        except XrgError:
            continue
        if not options:
            continue
        operation, kind, argument = options[int(rng.integers(len(options)))]
        try:
            if operation == "negate":
                edit = report_edits.negate(text, kind)
                direction = -1
            else:
                edit = report_edits.set_severity(text, kind, argument)
                before = next((f.severity for f in edit.findings_before if f.kind == kind and not f.negated), None)
                rank = {s: i for i, s in enumerate(SEVERITIES)}
                direction = 1 if rank[argument] > rank.get(before or "moderate", 1) else -1
        except XrgError:
            continue
        chosen.append(
            {"case_id": case.id, "operation": operation, "kind": kind, "argument": argument, "direction": direction,
             "before": text, "after": edit.text}
        )  # fmt: skip
    return chosen


def evaluate_run(
    run: str | os.PathLike,
    data_dir: str | os.PathLike,
    evaluators: Any,
    config: EvalConfig | None = None,
    device: str | torch.device = "cpu",
    inception_weights: str | os.PathLike | None = None,
    progress: bool = True,
    force: bool = False,
) -> dict[str, Any]:
    """Score the run in ``run`` on the test split of ``data_dir``; writes and returns ``RUN/eval.json``.

    ``evaluators`` is an :class:`xrg.eval.evaluators.Evaluators`. An existing ``eval.json``
    computed from the same checkpoints and config is returned as is unless ``force``.
    """
    config = config or EvalConfig()
    started = time.perf_counter()
    run_path = checkpoint_path(run)
    run_dir = run_path.parent
    sources = {
        "run_checkpoint": str(run_path),
        "run_sha256": file_sha256(run_path),
        "classifier": str(evaluators.classifier_path),
        "classifier_sha256": file_sha256(evaluators.classifier_path),
        "vcn": str(evaluators.vcn_path),
        "vcn_sha256": file_sha256(evaluators.vcn_path),
        "data_dir": str(Path(data_dir).resolve()),
        "inception_weights": str(inception_weights) if inception_weights else None,
    }
    out_path = run_dir / EVAL_NAME
    if out_path.is_file() and not force:
        from xrg.io import read_json_mapping

        previous = read_json_mapping(out_path, "evaluation result", "delete it, or pass --force to recompute it")
        # Files are compared by content, not by the path they were reached by (relative or absolute).
        same_inputs = all(previous.get("sources", {}).get(key) == sources[key] for key in FRESHNESS_KEYS)
        if (
            previous.get("format") == EVAL_FORMAT
            and same_inputs
            and previous.get("config") == dataclasses.asdict(config)
        ):
            return previous

    model = load_generator(run_path, device)
    size, eval_size = model.image_size, evaluators.image_size
    test = model_dataset(model, data_dir, "test")
    count = len(test) if config.num_reports == 0 else min(config.num_reports, len(test))
    indices = list(range(count))
    real = {view: torch.stack([test[i][view] for i in indices]) for view in VIEWS}
    labels = torch.stack([test[i]["labels"] for i in indices]).long()
    fake = generate_for_cases(
        model, test, indices, config.seed, config.batch_size, progress, f"generating {model.method}"
    )

    resamples, fid_resamples = config.num_resamples, max(config.num_resamples // 10, 10)
    boot = {"num_resamples": resamples, "seed": config.seed}  # every other CI: the config's resamples and seed
    classifier, vcn = evaluators.classifier, evaluators.vcn
    cache = evaluators.cache
    feats: dict[tuple[str, str], torch.Tensor] = {}
    logits: dict[tuple[str, str], torch.Tensor] = {}
    for view in VIEWS:
        key = ("test", sources["data_dir"], size, count, view)
        if key not in cache:
            cache[key] = _classify(classifier, real[view], eval_size)
        feats["real", view], logits["real", view] = cache[key]
        feats["generated", view], logits["generated", view] = _classify(classifier, fake[view], eval_size)
    both = lambda table, source: torch.cat([table[source, view] for view in VIEWS])  # noqa: E731
    names = list(FINDING_KINDS)
    result: dict[str, Any] = {"format": EVAL_FORMAT, "method": model.method, "num_reports": count}

    result["is"] = metrics.compute(
        "inception_score", fake_logits=both(logits, "generated"), num_resamples=resamples, seed=config.seed
    )
    result["is_real"] = metrics.compute(
        "inception_score", fake_logits=both(logits, "real"), num_resamples=resamples, seed=config.seed
    )
    result["fid"] = {
        key: metrics.compute("fid", real_features=r, fake_features=g, num_resamples=fid_resamples, seed=config.seed)
        for key, r, g in [(view, feats["real", view], feats["generated", view]) for view in VIEWS]
        + [("both", both(feats, "real"), both(feats, "generated"))]
    }
    result["kid"] = metrics.compute(
        "kid", real_features=both(feats, "real"), fake_features=both(feats, "generated"), seed=config.seed
    )
    result["ssim"] = {view: metrics.compute("ssim", fake=fake[view], real=real[view], **boot) for view in VIEWS}
    result["ssim"]["both"] = metrics.compute(
        "ssim", fake=torch.cat([fake[v] for v in VIEWS]), real=torch.cat([real[v] for v in VIEWS]), **boot
    )
    result["vc"] = metrics.compute(
        "view_consistency", probabilities=_vc(vcn, fake["frontal"], fake["lateral"], eval_size), **boot
    )
    result["vc_real"] = metrics.compute(
        "view_consistency", probabilities=_vc(vcn, real["frontal"], real["lateral"], eval_size), **boot
    )
    probs = {key: torch.sigmoid(value) for key, value in logits.items()}
    result["fidelity"] = {
        source: {
            view: metrics.compute("finding_auroc", scores=probs[source, view], labels=labels, names=names, **boot)
            for view in VIEWS
        }
        for source in ("generated", "real")
    }
    result["cross_view_agreement"] = {
        source: metrics.compute(
            "cross_view_agreement",
            frontal_probs=probs[source, "frontal"],
            lateral_probs=probs[source, "lateral"],
            names=names,
            **boot,
        )
        for source in ("generated", "real")
    }

    # diversity: the same reports with diversity_samples seeds
    diverse = indices[: config.diversity_reports]
    if diverse:
        samples = [
            generate_for_cases(model, test, diverse, config.seed + 1000 * (k + 1), config.batch_size)
            for k in range(config.diversity_samples)
        ]
        result["diversity"] = {
            view: metrics.compute("ms_ssim_diversity", samples=torch.stack([s[view] for s in samples], dim=1), **boot)
            for view in VIEWS
        }

    # controllability: edited held-out reports, same seed before and after
    edits = controllability_edits([test.cases[i] for i in indices], config.controllability_reports, config.seed)
    if edits:
        before = generate_for_texts(model, [e["before"] for e in edits], config.seed, config.batch_size)
        after = generate_for_texts(model, [e["after"] for e in edits], config.seed, config.batch_size)
        mean_probs = lambda images: torch.stack(  # noqa: E731
            [torch.sigmoid(_classify(classifier, images[view], eval_size)[1]) for view in VIEWS]
        ).mean(0)
        result["controllability"] = metrics.compute(
            "controllability", before=mean_probs(before), after=mean_probs(after),
            edited=torch.tensor([names.index(e["kind"]) for e in edits]),
            direction=torch.tensor([float(e["direction"]) for e in edits]), names=names, **boot,
        )  # fmt: skip
        result["controllability_edits"] = [
            {k: e[k] for k in ("case_id", "operation", "kind", "argument", "direction")} for e in edits
        ]

    # memorisation: generated and real test frontals against the train split's frontals
    train = XRayPairDataset(data_dir, "train", image_size=eval_size, vocab=model.vocabulary)
    train_count = len(train) if config.memorisation_train == 0 else min(config.memorisation_train, len(train))
    key = ("train", sources["data_dir"], eval_size, train_count)
    if key not in cache:
        train_frontal = torch.stack([train[i]["frontal"] for i in range(train_count)])
        cache[key] = _classify(classifier, train_frontal, eval_size)[0]
    train_features = cache[key]
    memo = metrics.compute(
        "memorisation", generated_features=feats["generated", "frontal"], train_features=train_features,
        test_features=feats["real", "frontal"], num_closest=config.num_closest, **boot,
    )  # fmt: skip
    result["memorisation"] = memo
    result["memorisation_case_ids"] = {
        "test": [test.cases[i].id for i in indices],
        "train": [train.cases[i].id for i in range(train_count)],
    }

    if inception_weights:
        available, reason = metrics.inception_available(inception_weights)
        if available:
            incep = {
                source: metrics.inception_features(torch.cat([images[view] for view in VIEWS]), inception_weights)
                for source, images in (("real", real), ("generated", fake))
            }
            result["inception"] = {
                "is": metrics.compute(
                    "inception_score", fake_logits=incep["generated"][1], num_resamples=resamples, seed=config.seed
                ),
                "fid": metrics.compute(
                    "fid",
                    real_features=incep["real"][0],
                    fake_features=incep["generated"][0],
                    num_resamples=fid_resamples,
                    seed=config.seed,
                ),
            }
        else:
            result["inception"] = {"absent": reason}
    else:
        result["inception"] = {"absent": "no --inception-weights file given"}

    result["evaluators"] = {"image_size": eval_size, "test_metrics": getattr(evaluators, "metrics", None)}
    result["config"] = dataclasses.asdict(config)
    result["sources"] = sources
    result["seconds"] = time.perf_counter() - started
    atomic_write_json(out_path, result)
    return result
