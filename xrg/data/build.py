"""Build the embedded default dataset: real Open-i reports rendered through a real CT.

For every usable report (non-empty FINDINGS or IMPRESSION) the curated MeSH findings are
mapped to structured findings and drawn into the CT of a patient whose anatomy is varied
by a seed, then projected to a frontal and a lateral radiograph (:mod:`xrg.data.phantom`).
The result is a data directory in the shared manifest format (:mod:`xrg.data.manifest`):
``manifest.jsonl``, ``vocab.json`` (train split only), ``build.json`` and ``images/``.

The build is deterministic for a seed, uses several worker processes, shows a progress bar
and is resumable: a case whose two images exist is not rendered again, so a killed build
continues where it stopped, and a finished build re-runs in seconds.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from xrg.data.findings import Finding, label_text, mesh_to_findings
from xrg.data.images import save_png
from xrg.data.manifest import VOCAB_NAME, Case, patient_split, stable_hash, write_manifest
from xrg.data.reports import Report, Vocabulary, load_openi_reports
from xrg.errors import ConfigError, DataDirError
from xrg.io import atomic_write_json

BUILD_NAME = "build.json"
FINDINGS_SOURCES = ("mesh", "text", "union")


@dataclass(frozen=True)
class DataBuildConfig:
    """Settings of one dataset build; saved as ``build.json`` beside the manifest."""

    image_size: int = 128  # stored image resolution (32..256)
    volume_size: int = 128  # CT resampling grid of the renderer
    max_reports: int | None = None  # seeded sample of usable reports; None = all
    seed: int = 0  # patient anatomy, sample and split
    workers: int = 2  # rendering processes
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    findings_source: str = "mesh"  # what is drawn: curated MeSH, the text labeller, or their union
    min_word_freq: int = 1  # vocabulary cut-off (train split counts)

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 256:
            raise ConfigError(f"image_size must be in 32..256, got {self.image_size}")
        if self.max_reports is not None and self.max_reports < 3:
            raise ConfigError(f"max_reports must be at least 3 (one per split) or None, got {self.max_reports}")
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {self.workers}")
        if self.findings_source not in FINDINGS_SOURCES:
            raise ConfigError(f"findings_source must be one of {FINDINGS_SOURCES}, got {self.findings_source!r}")

    @classmethod
    def from_profile(cls, data: dict[str, Any], seed: int, **overrides: Any) -> "DataBuildConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown data settings in profile: {sorted(unknown)}")
        values = {**data, "seed": seed, **{k: v for k, v in overrides.items() if v is not None}}
        if "split_fractions" in values:
            values["split_fractions"] = tuple(values["split_fractions"])
        return cls(**values)

    def rendering_key(self) -> dict[str, Any]:
        """The settings that decide the pixels; a resumed build must match them."""
        return {k: v for k, v in asdict(self).items() if k in ("image_size", "volume_size", "seed", "findings_source")}


@dataclass
class BuildSummary:
    out: Path
    n_cases: int
    n_rendered: int
    n_reused: int
    per_split: dict[str, int]
    skipped_reports: Counter = field(default_factory=Counter)
    unmapped_mesh: Counter = field(default_factory=Counter)
    not_drawn: Counter = field(default_factory=Counter)
    vocab_size: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [
            f"dataset {self.out}: {self.n_cases} cases ({', '.join(f'{k} {v}' for k, v in self.per_split.items())}), "
            f"{self.n_rendered} rendered, {self.n_reused} reused, vocabulary {self.vocab_size} words, "
            f"{self.seconds:.1f} s",
        ]
        if self.skipped_reports:
            lines.append("skipped reports: " + ", ".join(f"{k} {v}" for k, v in self.skipped_reports.most_common()))
        if self.unmapped_mesh:
            top = ", ".join(f"{k} {v}" for k, v in self.unmapped_mesh.most_common(8))
            lines.append(f"MeSH terms without a drawable finding (top 8 of {len(self.unmapped_mesh)}): {top}")
        if self.not_drawn:
            lines.append("findings not drawn: " + ", ".join(f"{k} {v}" for k, v in self.not_drawn.most_common()))
        return "\n".join(lines)


def case_findings(report: Report, source: str) -> tuple[list[Finding], Counter]:
    """Structured findings of a report from MeSH, the text labeller, or both."""
    mesh, unmapped = mesh_to_findings(report.mesh)
    if source == "mesh":
        return mesh, unmapped
    text = label_text(f"{report.findings} {report.impression}")
    if source == "text":
        return text, Counter()
    kinds = {f.kind for f in mesh if not f.negated}
    extra = [f for f in text if not f.negated and f.kind not in kinds]
    return mesh + extra, unmapped


def patient_seed(base_seed: int, patient_id: str) -> int:
    """The phantom anatomy seed of a patient: stable across runs and machines."""
    return stable_hash(f"{base_seed}:{patient_id}") % (2**31 - 1)


def select_reports(reports: Sequence[Report], max_reports: int | None, seed: int) -> list[Report]:
    ordered = sorted(reports, key=lambda r: int(r.report_id) if r.report_id.isdigit() else r.report_id)
    if max_reports is None or max_reports >= len(ordered):
        return ordered
    chosen = np.random.default_rng(seed).choice(len(ordered), size=max_reports, replace=False)
    return [ordered[i] for i in sorted(chosen)]


# --- rendering workers ---------------------------------------------------------------
_WORKER_RENDERER = None


def _init_worker(volume_size: int) -> None:
    global _WORKER_RENDERER
    import torch

    torch.set_num_threads(1)
    from xrg.data.phantom import PhantomRenderer

    _WORKER_RENDERER = PhantomRenderer(volume_size=volume_size)


def _render_job(job: tuple[str, list[dict], int, int, str]) -> tuple[str, dict]:
    case_id, findings_json, seed, size, out = job
    findings = [Finding.from_dict(d) for d in findings_json]
    pair = _WORKER_RENDERER.render(findings, seed=seed, size=size)
    save_png(Path(out) / "images" / f"{case_id}_frontal.png", pair.frontal)
    save_png(Path(out) / "images" / f"{case_id}_lateral.png", pair.lateral)
    return case_id, dict(pair.skipped)


def render_pairs(
    jobs: Sequence[tuple[str, list[dict], int, int, str]], volume_size: int, workers: int, progress: bool = True,
    desc: str = "rendering pairs",
) -> Counter:
    """Render ``(case_id, findings_json, seed, size, out)`` jobs into ``out/images`` with worker processes.

    Returns the reasons (and counts) of findings that could not be drawn.
    """
    not_drawn: Counter = Counter()
    if not jobs:
        return not_drawn
    workers = min(workers, len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, unit="pair", disable=not progress)
    if workers == 1:
        _init_worker(volume_size)
        for job in jobs:
            not_drawn.update(_render_job(job)[1])
            bar.update()
    else:
        context = mp.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(volume_size,)) as pool:
            for _, skipped in pool.imap_unordered(_render_job, jobs, chunksize=4):
                not_drawn.update(skipped)
                bar.update()
    bar.close()
    return not_drawn


def _check_resumable(out: Path, config: DataBuildConfig) -> None:
    path = out / BUILD_NAME
    if not path.is_file():
        return
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataDirError(f"{path} is not valid JSON; delete it (and the images) to rebuild") from exc
    old_key = previous.get("rendering_key")
    if old_key != config.rendering_key():
        raise DataDirError(
            f"{out} was built with {old_key}, but this build asks for {config.rendering_key()}; "
            f"use another --out directory or delete {out} first"
        )


def build_dataset(
    out: str | os.PathLike,
    config: DataBuildConfig,
    reports_source: str | os.PathLike | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Render the dataset into ``out``; see the module docstring."""
    start = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, config)

    collection = load_openi_reports(reports_source)
    reports = select_reports(collection.reports, config.max_reports, config.seed)
    if len(reports) < 3:
        raise DataDirError(f"only {len(reports)} usable reports in {reports_source or 'the embedded Open-i archive'}")

    assignment = patient_split([r.report_id for r in reports], config.seed, config.split_fractions)
    cases: list[Case] = []
    unmapped: Counter = Counter()
    for report in reports:
        findings, missing = case_findings(report, config.findings_source)
        unmapped.update(missing)
        case_id = f"openi-{report.report_id}"
        cases.append(
            Case(
                id=case_id,
                patient_id=report.report_id,
                split=assignment[report.report_id],
                findings=report.findings,
                impression=report.impression,
                structured_findings=findings,
                frontal=f"images/{case_id}_frontal.png",
                lateral=f"images/{case_id}_lateral.png",
                source="phantom",
                mesh=list(report.mesh),
                seed=patient_seed(config.seed, report.report_id),
            )
        )

    todo = [
        (c.id, [f.to_dict() for f in c.structured_findings], c.seed, config.image_size, str(out))
        for c in cases
        if not ((out / c.frontal).is_file() and (out / c.lateral).is_file())
    ]
    not_drawn = render_pairs(todo, config.volume_size, config.workers, progress, f"rendering {config.image_size}px pairs")

    train_texts = [f"{c.findings} {c.impression}" for c in cases if c.split == "train"]
    vocab = Vocabulary.build(train_texts, min_freq=config.min_word_freq)
    vocab.save(out / VOCAB_NAME)
    write_manifest(out, cases)
    per_split = dict(Counter(c.split for c in cases))
    atomic_write_json(
        out / BUILD_NAME,
        {
            "config": asdict(config),
            "rendering_key": config.rendering_key(),
            "n_cases": len(cases),
            "per_split": per_split,
            "skipped_reports": dict(collection.skipped),
            "unmapped_mesh": dict(unmapped),
            "xrg_version": __import__("xrg").__version__,
        },
    )
    negated = not_drawn.pop("negated", 0)
    if negated:
        not_drawn["negated (by design)"] = negated
    return BuildSummary(
        out=out,
        n_cases=len(cases),
        n_rendered=len(todo),
        n_reused=len(cases) - len(todo),
        per_split={s: per_split.get(s, 0) for s in ("train", "val", "test")},
        skipped_reports=Counter(collection.skipped),
        unmapped_mesh=unmapped,
        not_drawn=not_drawn,
        vocab_size=len(vocab),
        seconds=time.perf_counter() - start,
    )
