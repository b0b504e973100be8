"""The explorer's UI-free core: :class:`ReportExplorer`, its views, its edit history and its buttons.

:meth:`ReportExplorer.generate` turns a report into an :class:`ExplorerView` (XRayGAN's pair,
the phantom ground truth, attention, findings and the edits that apply);
:meth:`~ReportExplorer.edit`, :meth:`~ReportExplorer.undo` and :meth:`~ReportExplorer.reset`
move along its history. :func:`toggles` lists a view's edit buttons as :class:`Toggle`.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from xrg.data.edits import ReportEdit, apply_edit, possible_edits
from xrg.data.findings import SEVERITIES, Finding, label_text
from xrg.data.reports import normalize_text, report_text, split_report_text
from xrg.errors import ConfigError, EmptyReportError, ReportError

if TYPE_CHECKING:
    from xrg.data.phantom import PhantomRenderer
    from xrg.pipelines import SectionAttention, XRayGANPipeline

#: Longest report the explorer takes, in characters (Open-i reports are under 2,000; the
#: encoder reads 16 sentences of 24 words per section anyway).
MAX_REPORT_CHARS = 20_000

#: The four image panels, in display order.
PANELS: tuple[tuple[str, str], ...] = (
    ("frontal", "XRayGAN frontal"),
    ("lateral", "XRayGAN lateral"),
    ("phantom_frontal", "phantom frontal (truth)"),
    ("phantom_lateral", "phantom lateral (truth)"),
)


@dataclass
class ExplorerView:
    """What the explorer shows for one report.

    Images are float32 ``(size, size)`` arrays in [0, 1]: ``frontal``/``lateral`` are
    XRayGAN's, ``phantom_frontal``/``phantom_lateral`` the CT phantom's rendering of
    ``findings`` (what :func:`~xrg.data.findings.label_text` reads from the FINDINGS and
    IMPRESSION, negated ones included but not drawn) into patient ``patient_seed``.
    ``edits`` are the ``(operation, kind, argument)`` of :func:`~xrg.data.edits.possible_edits`;
    ``edit`` is the edit that made this view from the previous one (``None`` for a report as
    typed). ``timing`` holds seconds per step (``labels``, ``edit``, ``xraygan``, ``phantom``)
    and ``total``.
    """

    text: str
    findings: list[Finding]
    frontal: np.ndarray
    lateral: np.ndarray
    phantom_frontal: np.ndarray
    phantom_lateral: np.ndarray
    attention: dict[str, SectionAttention]
    edits: list[tuple[str, str, str | None]]
    timing: dict[str, float]
    seed: int
    patient_seed: int
    edit: ReportEdit | None = None
    drawn: list[Finding] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    unknown_words: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """The response time: edit (if any), generation, labelling and phantom rendering."""
        return self.timing["total"]

    @property
    def present(self) -> list[Finding]:
        """The findings present (not negated)."""
        return [f for f in self.findings if not f.negated]

    @property
    def image_size(self) -> int:
        return int(self.frontal.shape[-1])

    def images(self) -> dict[str, np.ndarray]:
        """The four panels by name (see :data:`PANELS`)."""
        return {name: getattr(self, name) for name, _ in PANELS}


def check_report_text(text: object, max_chars: int = MAX_REPORT_CHARS) -> str:
    """``text`` if the explorer can take it, else a :class:`~xrg.errors.ReportError` saying why."""
    if not isinstance(text, str):
        raise ReportError(f"the report must be text (a str), got {type(text).__name__}")
    if len(text) > max_chars:
        raise ReportError(
            f"the report is {len(text):,} characters long; the explorer takes at most {max_chars:,} "
            "(the encoder reads 16 sentences of 24 words per section)"
        )
    if not normalize_text(text):
        raise EmptyReportError("the report is empty; type findings, e.g. 'FINDINGS: Small left pleural effusion.'")
    return text


def _check_seed(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def _report_findings(text: str) -> list[Finding]:
    """The findings of the FINDINGS and IMPRESSION sections (what the edits and the pipeline read)."""
    findings, impression = split_report_text(text)
    return label_text(report_text(findings, impression))


class ReportExplorer:
    """Report text → XRayGAN pair, phantom ground truth, attention and edits (no UI).

    ``seed`` seeds XRayGAN's noise input (it matters only for a model with ``noise_dim > 0``)
    and is the default phantom patient; ``patient_seed`` fixes the phantom patient whose
    anatomy the ground truth is drawn into. Both stay fixed across edits, so an edited
    report differs from the original in its findings only. The phantom is rendered at the
    pipeline's resolution.
    """

    def __init__(
        self,
        pipeline: XRayGANPipeline,
        renderer: PhantomRenderer,
        seed: int = 0,
        patient_seed: int | None = None,
        max_chars: int = MAX_REPORT_CHARS,
    ) -> None:
        self.pipeline = pipeline
        self.renderer = renderer
        self.seed = _check_seed(seed, "seed")
        self.patient_seed = self.seed if patient_seed is None else _check_seed(patient_seed, "patient_seed")
        if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 1:
            raise ConfigError(f"max_chars must be a positive integer, got {max_chars!r}")
        self.max_chars = max_chars
        self.history: list[ExplorerView] = []

    @classmethod
    def from_run(
        cls,
        run_dir: str | os.PathLike,
        seed: int = 0,
        patient_seed: int | None = None,
        device: str | torch.device = "cpu",
        volume_size: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> ReportExplorer:
        """An explorer over a trained XRayGAN run (a run directory or checkpoint file) and a
        phantom renderer at the CT grid that suits the run's resolution."""
        from xrg.data.phantom import PhantomRenderer, volume_size_for
        from xrg.pipelines import XRayGANPipeline

        pipeline = XRayGANPipeline.from_checkpoint(run_dir, device=device)
        renderer = PhantomRenderer(volume_size or volume_size_for(pipeline.image_size), cache_dir=cache_dir)
        return cls(pipeline, renderer, seed=seed, patient_seed=patient_seed)

    @property
    def image_size(self) -> int:
        return self.pipeline.image_size

    @property
    def view(self) -> ExplorerView | None:
        """The view shown now (``None`` before the first :meth:`generate`)."""
        return self.history[-1] if self.history else None

    def warmup(self) -> None:
        """Render and generate once, so the first response a learner waits for is not the slow one."""
        self._render("FINDINGS: Mild cardiomegaly. Small left pleural effusion.", None, {})

    def generate(self, report_text: str, patient_seed: int | None = None) -> ExplorerView:
        """Generate ``report_text`` and start a new edit history from it.

        ``patient_seed``, when given, becomes the phantom patient from now on (a report
        picked from a dataset brings its case's patient).
        """
        text = check_report_text(report_text, self.max_chars)
        if patient_seed is not None:
            self.patient_seed = _check_seed(patient_seed, "patient_seed")
        view = self._render(text, None, {})
        self.history = [view]
        return view

    def edit(self, operation: str, kind: str, argument: str | None = None) -> ExplorerView:
        """Apply one edit of :func:`~xrg.data.edits.possible_edits` to the current report and
        regenerate with the same seeds. Raises :class:`~xrg.errors.ReportError` (or its
        :class:`~xrg.data.edits.EditError`) when the edit does not apply."""
        current = self.view
        if current is None:
            raise ReportError("no report to edit yet: call generate(report_text) first")
        start = time.perf_counter()
        edit = apply_edit(current.text, operation, kind, argument)
        timing = {"edit": time.perf_counter() - start}
        text = check_report_text(edit.text, self.max_chars)
        view = self._render(text, edit, timing)
        self.history.append(view)
        return view

    def undo(self) -> ExplorerView:
        """Go back to the view before the last edit (no regeneration)."""
        if len(self.history) < 2:
            raise ReportError("nothing to undo: the report shown has not been edited")
        self.history.pop()
        return self.history[-1]

    def reset(self) -> ExplorerView:
        """Go back to the report as it was generated, before any edit."""
        if not self.history:
            raise ReportError("no report yet: call generate(report_text) first")
        del self.history[1:]
        return self.history[0]

    def _render(self, text: str, edit: ReportEdit | None, timing: dict[str, float]) -> ExplorerView:
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(self.seed)
        with warnings.catch_warnings():  # truncation notes come back in output.warnings
            warnings.simplefilter("ignore", UserWarning)
            output = self.pipeline(text, generator=generator)
        timing["xraygan"] = time.perf_counter() - start
        start = time.perf_counter()
        findings = _report_findings(text)
        edits = possible_edits(text)
        timing["labels"] = time.perf_counter() - start
        start = time.perf_counter()
        pair = self.renderer.render(findings, seed=self.patient_seed, size=self.image_size)
        timing["phantom"] = time.perf_counter() - start
        timing["total"] = sum(timing.values())
        return ExplorerView(
            text=text,
            findings=findings,
            frontal=output.frontal[0].numpy(),
            lateral=output.lateral[0].numpy(),
            phantom_frontal=pair.frontal,
            phantom_lateral=pair.lateral,
            attention=output.attention,
            edits=edits,
            timing=timing,
            seed=self.seed,
            patient_seed=self.patient_seed,
            edit=edit,
            drawn=list(pair.drawn),
            skipped=dict(pair.skipped),
            unknown_words=list(output.unknown_words),
            warnings=list(output.warnings),
        )


# --------------------------------------------------------------------------------------
# Toggles: the buttons of a view
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toggle:
    """One button: the edit ``(operation, kind, argument)`` and how it is labelled."""

    operation: str
    kind: str
    argument: str | None
    label: str  # button text: negate, milder, more severe, flip to right, make present

    @property
    def edit(self) -> tuple[str, str, str | None]:
        return (self.operation, self.kind, self.argument)

    @property
    def description(self) -> str:
        """What the edit does, e.g. ``pleural effusion: flip to right``."""
        return f"{self.kind.replace('_', ' ')}: {self.label}"


def _severity_rank(finding: Finding) -> int:
    return SEVERITIES.index(finding.severity or "moderate")


def toggles(view_or_text: ExplorerView | str) -> list[Toggle]:
    """The buttons of a report: per detected finding, the edits of
    :func:`~xrg.data.edits.possible_edits` that negate it, make it one step milder or more
    severe, flip its side, or make a negated finding present (severity jumps of two steps,
    mild ↔ severe, are left to two clicks). Ordered like :func:`possible_edits`."""
    if isinstance(view_or_text, ExplorerView):
        text, findings, edits = view_or_text.text, view_or_text.findings, view_or_text.edits
    else:
        text = check_report_text(view_or_text)
        findings, edits = _report_findings(text), possible_edits(text)
    result = []
    for operation, kind, argument in edits:
        if operation == "negate":
            label = "negate"
        elif operation == "add":
            label = "make present"
        elif operation == "flip_side":
            label = f"flip to {argument}"
        elif operation == "set_severity":
            ranks = [_severity_rank(f) for f in findings if f.kind == kind and not f.negated]
            target = SEVERITIES.index(argument)
            if ranks and target == min(ranks) - 1:
                label = "milder"
            elif ranks and target == max(ranks) + 1:
                label = "more severe"
            else:
                continue
        else:  # an operation this explorer does not know: leave it out
            continue
        result.append(Toggle(operation, kind, argument, label))
    return result


def action_name(toggle: Toggle | None) -> str:
    """``generate`` for a report as typed, else the toggle's kind of edit (``flip side`` for any side)."""
    if toggle is None:
        return "generate"
    return "flip side" if toggle.operation == "flip_side" else toggle.label
