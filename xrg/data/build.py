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

import hashlib
import json
import multiprocessing as mp
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xrg.data.findings import Finding, label_text, mesh_to_findings, text_corrections
from xrg.data.images import png_bytes
from xrg.data.manifest import VIEWS, VOCAB_NAME, Case, patient_split, stable_hash, write_manifest
from xrg.data.reports import Report, Vocabulary, load_openi_reports, report_text
from xrg.errors import ConfigError, DataDirError
from xrg.io import append_jsonl, atomic_write_bytes, atomic_write_json, read_json_mapping
from xrg.locks import own_output_dir

BUILD_NAME = "build.json"
#: One JSON line per rendered pair: case id, digest of the rendering settings, SHA-256 of each image.
RENDERS_NAME = "renders.jsonl"
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
    findings_source: str = "mesh"  # drawn: curated MeSH (sides from the text), the text labeller, or both
    min_word_freq: int = 1  # vocabulary cut-off (train split counts)
    # also render every train case's findings into the average patient in a fixed pose
    # (PhantomRenderer.render(canonical=True)): the text-predictable L2 target of
    # ``xraygan.rec_target: canonical``; adding them to a finished build renders only them
    canonical_targets: bool = False

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 256:
            raise ConfigError(f"image_size must be in 32..256, got {self.image_size}")
        if not 16 <= self.volume_size <= 512:
            raise ConfigError(f"volume_size must be in 16..512, got {self.volume_size}")
        if not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be in [0, 2**32), got {self.seed}")
        if self.min_word_freq < 1:
            raise ConfigError(f"min_word_freq must be at least 1, got {self.min_word_freq}")
        if self.max_reports is not None and self.max_reports < 3:
            raise ConfigError(f"max_reports must be at least 3 (one per split) or None, got {self.max_reports}")
        if not 1 <= self.workers <= 64:
            raise ConfigError(f"workers must be in 1..64, got {self.workers}")
        if self.findings_source not in FINDINGS_SOURCES:
            raise ConfigError(f"findings_source must be one of {FINDINGS_SOURCES}, got {self.findings_source!r}")

    @classmethod
    def from_profile(cls, data: dict[str, Any], seed: int, **overrides: Any) -> DataBuildConfig:
        from xrg.config import config_from_mapping

        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"unknown data settings in profile: {sorted(unknown)}")
        values = {**data, "seed": seed, **{k: v for k, v in overrides.items() if v is not None}}
        return config_from_mapping(cls, values, where="data settings")

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
    """Structured findings of a report from MeSH, the text labeller, or both. MeSH findings
    take the side the report's text names and gain the sternotomy wires it mentions
    (:func:`~xrg.data.findings.text_corrections`)."""
    mesh, unmapped = mesh_to_findings(report.mesh)
    text = label_text(report_text(report.findings, report.impression))
    if source == "text":
        return text, Counter()
    mesh, _ = text_corrections(mesh, text)
    if source == "mesh":
        return mesh, unmapped
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


#: Suffix of a case's canonical-pose renders (``images/ID_VIEW_canonical.png``) and of its ledger id.
CANONICAL = "canonical"

RenderJob = tuple[str, list[dict], int, int, str] | tuple[str, list[dict], int, int, str, bool]


def canonical_paths(case_id: str) -> dict[str, str]:
    """The manifest paths of a case's canonical-pose renders, by view."""
    return {view: f"images/{case_id}_{view}_{CANONICAL}.png" for view in VIEWS}


def _render_job(job: RenderJob) -> tuple[str, dict, dict[str, str]]:
    case_id, findings_json, seed, size, out, *rest = job
    canonical = bool(rest and rest[0])
    findings = [Finding.from_dict(d) for d in findings_json]
    pair = _WORKER_RENDERER.render(findings, seed=seed, size=size, canonical=canonical)
    digests = {}
    for view in VIEWS:
        data = png_bytes(getattr(pair, view))
        name = f"{case_id}_{view}_{CANONICAL}.png" if canonical else f"{case_id}_{view}.png"
        atomic_write_bytes(Path(out) / "images" / name, data)
        digests[view] = hashlib.sha256(data).hexdigest()
    return case_id, dict(pair.skipped), digests


def _ledger_id(job: RenderJob) -> str:
    return f"{job[0]}/{CANONICAL}" if len(job) > 5 and job[5] else job[0]


def _key_digest(key: dict[str, Any]) -> str:
    """The digest of a build's rendering settings, with the renderer's version (:data:`RENDERER_VERSION`)."""
    from xrg.data.phantom import RENDERER_VERSION

    return hashlib.sha256(json.dumps({**key, "renderer": RENDERER_VERSION}, sort_keys=True).encode("utf-8")).hexdigest()


def _job_digest(findings: Sequence[dict[str, Any]], seed: int, canonical: bool = False) -> str:
    """The digest of what one pair shows: its findings and its patient (or the canonical one)."""
    shown = [list(findings), None if seed is None else int(seed)] + ([CANONICAL] if canonical else [])
    return hashlib.sha256(json.dumps(shown, sort_keys=True).encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def reusable_renders(
    out: str | os.PathLike, cases: Sequence[Case], key: dict[str, Any], canonical: bool = False
) -> set[str]:
    """Ids of ``cases`` whose two images in ``out`` are this build's renders, by :data:`RENDERS_NAME`
    (with ``canonical``: whose two canonical-pose renders, :func:`canonical_paths`, are).

    A case is reused only when the ledger recorded it with the same rendering settings and
    renderer version, the same findings and patient seed, and both files still have the
    recorded SHA-256; a same-named image from anywhere else (or a damaged one, or one drawn
    from other findings) is rendered again. Damaged ledger lines (a killed append) are ignored.
    """
    out = Path(out)
    ledger = out / RENDERS_NAME
    if not ledger.is_file():
        return set()
    recorded: dict[str, dict[str, Any]] = {}
    wanted = _key_digest(key)
    with open(ledger, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and row.get("key") == wanted and isinstance(row.get("id"), str):
                recorded[row["id"]] = row

    def ledger_id(case: Case) -> str:
        return f"{case.id}/{CANONICAL}" if canonical else case.id

    def path(case: Case, view: str) -> str:
        return canonical_paths(case.id)[view] if canonical else getattr(case, view)

    return {
        case.id for case in cases
        if ledger_id(case) in recorded
        and recorded[ledger_id(case)].get("job")
        == _job_digest([f.to_dict() for f in case.structured_findings], case.seed, canonical)
        and all(_file_sha256(out / path(case, view)) == recorded[ledger_id(case)].get(view) for view in VIEWS)
    }  # fmt: skip


def render_pairs(
    jobs: Sequence[RenderJob],
    volume_size: int,
    workers: int,
    progress: bool = True,
    desc: str = "rendering pairs",
    key: dict[str, Any] | None = None,
) -> Counter:
    """Render ``(case_id, findings_json, seed, size, out[, canonical])`` jobs into ``out/images`` with
    worker processes (``canonical``: into the average patient, :func:`canonical_paths`).

    Each finished pair is recorded in ``out/``:data:`RENDERS_NAME` with the SHA-256 of its
    two files and the digest of the rendering settings ``key`` (see :func:`reusable_renders`).
    Returns the reasons (and counts) of findings that could not be drawn.
    """
    not_drawn: Counter = Counter()
    if not jobs:
        return not_drawn
    key_digest = _key_digest(key or {})
    workers = min(workers, len(jobs))
    bar = tqdm(total=len(jobs), desc=desc, unit="pair", disable=not progress)

    def record(result: tuple[str, dict, dict[str, str]], job: RenderJob) -> None:
        _, skipped, digests = result
        canonical = len(job) > 5 and bool(job[5])
        if not canonical:  # the canonical renders draw the same findings: count them once
            not_drawn.update(skipped)
        row = {"id": _ledger_id(job), "key": key_digest, "job": _job_digest(job[1], job[2], canonical), **digests}
        append_jsonl(Path(job[4]) / RENDERS_NAME, row)
        bar.update()

    if workers == 1:
        _init_worker(volume_size)
        for job in jobs:
            record(_render_job(job), job)
    else:
        context = mp.get_context("spawn")
        with context.Pool(workers, initializer=_init_worker, initargs=(volume_size,)) as pool:
            for job, result in zip(jobs, pool.imap(_render_job, jobs, chunksize=4)):
                record(result, job)
    bar.close()
    return not_drawn


def read_build_record(data_dir: str | os.PathLike) -> dict[str, Any]:
    """What ``xrg data build`` recorded in ``DATA_DIR/build.json``: its config, case counts, skips."""
    path = Path(data_dir) / BUILD_NAME
    if not path.is_file():
        raise DataDirError(f"{path} does not exist: {data_dir} was not written by `xrg data build`")
    return read_json_mapping(path, "data build record", "rebuild the data directory with `xrg data build`")


def _check_resumable(out: Path, config: DataBuildConfig) -> None:
    path = out / BUILD_NAME
    if not path.is_file():
        return
    previous = read_json_mapping(path, "data build record", "delete it (and the images) to rebuild")
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
    force: bool = False,
) -> BuildSummary:
    """Render the dataset into ``out``; see the module docstring.

    ``out`` must be new, empty or an earlier phantom build (``force`` overrides); it is
    locked against a second writer, and only images recorded as this build's renders are reused.
    """
    with own_output_dir(out, "phantom-dataset", force=force) as out:
        return _build_dataset(out, config, reports_source, progress)


def _build_dataset(
    out: Path, config: DataBuildConfig, reports_source: str | os.PathLike | None, progress: bool
) -> BuildSummary:
    start = time.perf_counter()
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
        if config.canonical_targets and cases[-1].split == "train":
            cases[-1].canonical = canonical_paths(case_id)

    reused = reusable_renders(out, cases, config.rendering_key())
    todo = [
        (c.id, [f.to_dict() for f in c.structured_findings], c.seed, config.image_size, str(out))
        for c in cases
        if c.id not in reused
    ]
    canonical_reused = reusable_renders(out, [c for c in cases if c.canonical], config.rendering_key(), True)
    todo += [
        (c.id, [f.to_dict() for f in c.structured_findings], c.seed, config.image_size, str(out), True)
        for c in cases
        if c.canonical and c.id not in canonical_reused
    ]
    not_drawn = render_pairs(
        todo, config.volume_size, config.workers, progress, f"rendering {config.image_size}px pairs",
        key=config.rendering_key(),
    )  # fmt: skip

    train_texts = [report_text(c.findings, c.impression) for c in cases if c.split == "train"]
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
        n_reused=len(cases) + sum(1 for c in cases if c.canonical) - len(todo),  # pairs, canonical ones too
        per_split={s: per_split.get(s, 0) for s in ("train", "val", "test")},
        skipped_reports=Counter(collection.skipped),
        unmapped_mesh=unmapped,
        not_drawn=not_drawn,
        vocab_size=len(vocab),
        seconds=time.perf_counter() - start,
    )
