"""The teaching report explorer: edit a report, regenerate, compare with the phantom truth.

An educator types or picks a report; the explorer shows XRayGAN's frontal and lateral
images next to the CT phantom's rendering of the findings the labeller reads from the same
report (the ground truth the model was trained to imitate), the words and sentences the
hierarchical encoder attended to, and one button per edit that applies to a detected
finding: negate it, make it milder or more severe, move it to the other side, or make a
negated finding present. An edit rewrites the report (:mod:`xrg.data.edits`) and
regenerates with the same noise seed and the same phantom patient, so only the edit
changes the picture.

Two layers:

* :class:`ReportExplorer` is the UI-free core: :meth:`~ReportExplorer.generate` a report
  into an :class:`ExplorerView`, :meth:`~ReportExplorer.edit` it, :meth:`~ReportExplorer.undo`;
  :func:`toggles` lists the buttons of a view, :func:`attention_html` and
  :func:`findings_html` render its text panels (all text escaped);
* :class:`ExplorerApp` is the ipywidgets front end over it (``display(app.widget)``), with
  :meth:`~ExplorerApp.load`, :meth:`~ExplorerApp.apply` and :meth:`~ExplorerApp.pick` to drive
  it from code (the book's executed snapshots)::

      explorer = ReportExplorer.from_run("runs/cpu/xraygan")
      view = explorer.generate("FINDINGS: Mild cardiomegaly. Small left pleural effusion.")
      view = explorer.edit("flip_side", "pleural_effusion", "right")
      app = ExplorerApp(explorer, load_report_choices("data/cpu"))

Bad input (not a string, empty, longer than :data:`MAX_REPORT_CHARS`, no readable words,
an edit that does not apply) raises a :class:`~xrg.errors.XrgError` subclass naming it;
the app shows the message in its status line instead.
"""

from __future__ import annotations

import html
import io
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from xrg.data.edits import ReportEdit, apply_edit, possible_edits
from xrg.data.findings import FINDING_KINDS, SEVERITIES, Finding, label_text
from xrg.data.images import to_uint8
from xrg.data.reports import normalize_text, split_report_text
from xrg.errors import ConfigError, EmptyReportError, ReportError, XrgError

if TYPE_CHECKING:
    from xrg.data.phantom import PhantomRenderer
    from xrg.pipelines import SectionAttention, XRayGANPipeline

__all__ = [
    "KINDS_OF_EDIT",
    "MAX_REPORT_CHARS",
    "PANELS",
    "action_name",
    "ExplorerApp",
    "ExplorerView",
    "ReportChoice",
    "ReportExplorer",
    "Toggle",
    "attention_html",
    "check_report_text",
    "findings_html",
    "load_report_choices",
    "one_of_each",
    "pick_report",
    "plot_snapshots",
    "png_bytes",
    "snapshot_rows",
    "snapshot_table",
    "status_text",
    "time_responses",
    "toggles",
]

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


# --------------------------------------------------------------------------------------
# The core
# --------------------------------------------------------------------------------------


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
    attention: dict[str, "SectionAttention"]
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
    return label_text(f"{findings} {impression}".strip())


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
        pipeline: "XRayGANPipeline",
        renderer: "PhantomRenderer",
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
    ) -> "ReportExplorer":
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


# --------------------------------------------------------------------------------------
# Text panels
# --------------------------------------------------------------------------------------

_SHADE = "255, 140, 0"  # orange, like the encoder chapter's attention plots


def attention_html(attention: dict[str, "SectionAttention"], unknown_words: Iterable[str] = ()) -> str:
    """The report as the encoder weighed it: one row per sentence, a bar of the sentence's
    weight, then its words, each shaded by word weight × sentence weight (the most weighed
    word of the report fully shaded). Words are escaped (:func:`html.escape`); words the
    vocabulary does not know (read as ``<unk>``) are underlined with a dotted line."""
    if not attention:
        return "<p><i>This model's encoder has no attention weights (the flat encoder ablation).</i></p>"
    unknown = set(unknown_words)
    products = [
        w * s
        for section in attention.values()
        for weights, s in zip(section.word_weights, section.sentence_weights)
        for w in weights
    ]
    top = max(products, default=0.0) or 1.0
    parts = ['<div style="font-family: sans-serif; font-size: 13px; line-height: 1.9">']
    for name, section in attention.items():
        parts.append(f'<div style="font-weight: bold; margin-top: 4px">{html.escape(name.upper())}</div>')
        if not section.sentences:
            parts.append('<div style="color: #888"><i>(empty)</i></div>')
            continue
        for words, weights, sentence_weight in zip(section.sentences, section.word_weights, section.sentence_weights):
            bar = max(0.0, min(1.0, float(sentence_weight))) * 60
            parts.append(
                '<div style="display: flex; align-items: center; gap: 6px">'
                f'<span title="sentence weight {sentence_weight:.3f}" style="flex: none; width: 60px; height: 10px; '
                f'background: #eee; display: inline-block"><span style="display: block; height: 10px; '
                f'width: {bar:.1f}px; background: rgb({_SHADE})"></span></span>'
                f'<span style="flex: none; width: 34px; font-family: monospace; font-size: 11px">'
                f"{sentence_weight:.2f}</span><span>"
            )
            for word, weight in zip(words, weights):
                alpha = max(0.0, min(1.0, weight * sentence_weight / top))
                style = f"background: rgba({_SHADE}, {alpha:.3f}); padding: 1px 2px; border-radius: 2px"
                title = f"word {weight:.3f} × sentence {sentence_weight:.3f}"
                if word in unknown:
                    style += "; text-decoration: underline dotted"
                    title += "; not in the vocabulary (read as <unk>)"
                parts.append(f'<span title="{html.escape(title)}" style="{style}">{html.escape(word)}</span> ')
            parts.append("</span></div>")
    parts.append("</div>")
    return "".join(parts)


def findings_html(view: ExplorerView) -> str:
    """The labelled findings (present, negated, not drawn) and the sentences the last edit
    changed (before struck through, after underlined), all text escaped."""
    present = ", ".join(html.escape(f.describe()) for f in view.present) or "none (a normal chest)"
    negated = ", ".join(html.escape(f.describe()) for f in view.findings if f.negated) or "none"
    parts = [
        '<div style="font-family: sans-serif; font-size: 13px">',
        f"<div><b>Present:</b> {present}</div>",
        f"<div><b>Negated:</b> {negated}</div>",
    ]
    not_drawn = [reason for reason in view.skipped if reason != "negated"]
    if not_drawn:
        parts.append(f"<div><b>Not drawn:</b> {html.escape(', '.join(sorted(not_drawn)))}</div>")
    if view.unknown_words:
        words = ", ".join(dict.fromkeys(view.unknown_words))
        parts.append(f"<div><b>Words the model does not know:</b> {html.escape(words)}</div>")
    if view.edit is None:
        parts.append('<div style="margin-top: 6px; color: #666"><i>No edit yet: click a button above.</i></div>')
    else:
        parts.append(f'<div style="margin-top: 6px"><b>Edit:</b> {html.escape(view.edit.label)}</div><ul>')
        for before, after in view.edit.changed_sentences:
            old = f'<del style="color: #a33">{html.escape(before)}</del>' if before else "<i>(new)</i>"
            new = f'<ins style="color: #262">{html.escape(after)}</ins>' if after else "<i>(removed)</i>"
            parts.append(f"<li>{old} → {new}</li>")
        parts.append("</ul>")
    for note in view.warnings:
        parts.append(f'<div style="color: #a60">note: {html.escape(note)}</div>')
    parts.append("</div>")
    return "".join(parts)


def png_bytes(image: np.ndarray | torch.Tensor) -> bytes:
    """An 8-bit greyscale PNG of a float image in [0, 1] (``(H, W)`` or ``(1, H, W)``)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def status_text(view: ExplorerView, response_s: float | None = None) -> str:
    """One line: what was done and how long it took (``response_s``: the app's whole response,
    display included; else the explorer's time)."""
    t = view.timing
    action = f"applied {view.edit.label}" if view.edit is not None else "generated"
    seconds = view.seconds if response_s is None else response_s
    steps = f"XRayGAN {t['xraygan']:.2f} s, phantom {t['phantom']:.2f} s"
    return (
        f"{action} in {seconds:.2f} s ({steps}) at {view.image_size}² · "
        f"{len(view.present)} present finding(s) · phantom patient {view.patient_seed}"
    )


def action_name(toggle: Toggle | None) -> str:
    """``generate`` for a report as typed, else the toggle's kind of edit (``flip side`` for any side)."""
    if toggle is None:
        return "generate"
    return "flip side" if toggle.operation == "flip_side" else toggle.label


def time_responses(
    explorer: ReportExplorer, reports: Iterable[tuple[str, int | None]], repeats: int = 1
) -> tuple[dict[str, list[float]], int]:
    """Seconds of each response: ``generate`` of every ``(text, patient_seed)`` and each edit
    button of it (applied to the report as generated, then undone), ``repeats`` times.
    Returns ``{action: [seconds, ...]}`` (see :func:`action_name`) and how many listed edits
    failed verification (those are not timed)."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be a positive integer, got {repeats!r}")
    times: dict[str, list[float]] = {"generate": []}
    failed = 0
    for text, patient_seed in reports:
        for _ in range(repeats):
            view = explorer.generate(text, patient_seed=patient_seed)
            times["generate"].append(view.seconds)
            for toggle in toggles(view):
                try:
                    edited = explorer.edit(*toggle.edit)
                except XrgError:
                    failed += 1
                    continue
                times.setdefault(action_name(toggle), []).append(edited.seconds)
                explorer.undo()
    return times, failed


# --------------------------------------------------------------------------------------
# Reports to pick from
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Snapshots: the app driven from code, for the static book
# --------------------------------------------------------------------------------------

#: The kinds of edit a snapshot shows one of each, in this order.
KINDS_OF_EDIT: tuple[str, ...] = ("negate", "milder", "more severe", "flip side", "make present")


def one_of_each(view: ExplorerView) -> list[Toggle]:
    """The first button of each kind of edit (:data:`KINDS_OF_EDIT`) the view offers."""
    chosen: dict[str, Toggle] = {}
    for toggle in toggles(view):
        chosen.setdefault(action_name(toggle), toggle)
    return [chosen[kind] for kind in KINDS_OF_EDIT if kind in chosen]


def _change_text(edit: ReportEdit) -> str:
    return "   ".join(
        f"“{before}” → “{after}”" if before and after else f"“{before or after}” {'removed' if before else 'added'}"
        for before, after in edit.changed_sentences
    )


def snapshot_rows(apply, undo, original: ExplorerView) -> list[tuple[str, str, ExplorerView]]:
    """``(name, rewritten sentences, view)``: the report as written, then one edit of each kind.

    ``apply(operation, kind, argument)`` and ``undo()`` are an explorer's or an app's, so
    each edit starts from the original report and the app ends where it started.
    """
    rows = [("as written", "", original)]
    for toggle in one_of_each(original):
        edited = apply(*toggle.edit)
        rows.append((toggle.description, _change_text(edited.edit) if edited.edit else "", edited))
        undo()
    return rows


def plot_snapshots(rows: Sequence[tuple[str, str, ExplorerView]], title: str):
    """A figure with one row per snapshot: XRayGAN's pair, then the phantom's, and the edit's sentences."""
    import textwrap

    import matplotlib.pyplot as plt

    height = 2.75 * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, height), squeeze=False,
                             gridspec_kw=dict(hspace=0.32, wspace=0.04))  # fmt: skip
    fig.subplots_adjust(left=0.07, right=0.99, top=1 - 0.55 / height, bottom=0.3 / height)
    for r, (name, change, view) in enumerate(rows):
        for c, (key, _) in enumerate(PANELS):
            axes[r, c].imshow(view.images()[key], cmap="gray", vmin=0, vmax=1)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(textwrap.fill(name, 22), fontsize=9)
        if change:
            caption = textwrap.fill(textwrap.shorten(change, 270, placeholder=" …"), 140)
            axes[r, 0].text(0, -0.04, caption, transform=axes[r, 0].transAxes, fontsize=7.5, va="top", ha="left",
                            color="#333", clip_on=False)  # fmt: skip
    for c, (_, label) in enumerate(PANELS):
        axes[0, c].set_title(label, fontsize=9)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / height)
    return fig


def snapshot_table(rows: Sequence[tuple[str, str, ExplorerView]]):
    """One line per snapshot: the findings present after it, sentences rewritten, response time."""
    import pandas as pd

    return pd.DataFrame(
        {
            "edit": [name for name, _, _ in rows],
            "present findings after": ["; ".join(f.describe() for f in view.present) or "none" for _, _, view in rows],
            "sentences rewritten": [len(view.edit.changed_sentences) if view.edit else 0 for _, _, view in rows],
            "response s": [round(view.seconds, 3) for _, _, view in rows],
        }
    ).set_index("edit")


@dataclass(frozen=True)
class ReportChoice:
    """A report of a data directory: its text as the explorer takes it and its phantom patient."""

    id: str
    text: str
    patient_seed: int | None
    label: str


def _case_text(findings: str, impression: str) -> str:
    parts = [f"FINDINGS: {findings.strip()}" if findings.strip() else "",
             f"IMPRESSION: {impression.strip()}" if impression.strip() else ""]  # fmt: skip
    return "\n".join(p for p in parts if p)


def load_report_choices(
    data_dir: str | os.PathLike, split: str | None = "test", limit: int | None = None
) -> list[ReportChoice]:
    """The reports of one split of a data directory (``None``: all), in manifest order, each
    with its case's phantom patient seed and a label naming its present findings."""
    from xrg.data.manifest import SPLITS, read_manifest

    if split is not None and split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    choices = []
    for case in read_manifest(data_dir):
        if split is not None and case.split != split:
            continue
        text = _case_text(case.findings, case.impression)
        if not text:
            continue
        try:
            present = [f.describe() for f in _report_findings(text) if not f.negated]
        except ReportError:
            continue
        label = f"{case.id}: {', '.join(present) if present else 'normal'}"
        choices.append(ReportChoice(case.id, text, case.seed, label if len(label) <= 90 else label[:87] + "..."))
        if limit is not None and len(choices) >= limit:
            break
    return choices


def pick_report(choices: Sequence[ReportChoice], report_id: str = "") -> ReportChoice:
    """The choice with id ``report_id``; for ``""`` the first that offers the most kinds of
    edit (negate, a severity change, a side flip, make present), a good first example."""
    if not choices:
        raise ConfigError("there are no reports to choose from (is the data directory's test split empty?)")
    if report_id:
        for choice in choices:
            if choice.id == report_id:
                return choice
        raise ConfigError(f"report {report_id!r} is not among the {len(choices)} reports (e.g. {choices[0].id!r})")

    def score(choice: ReportChoice) -> int:
        operations = {t.operation for t in toggles(choice.text)}
        return sum(op in operations for op in ("negate", "set_severity", "flip_side")) * 2 + ("add" in operations)

    return max(choices, key=score)  # max keeps the first of equals


# --------------------------------------------------------------------------------------
# The ipywidgets front end
# --------------------------------------------------------------------------------------


class ExplorerApp:
    """An ipywidgets app over a :class:`ReportExplorer`: ``display(app.widget)``.

    A dropdown of ``choices`` (reports of a data directory) and a text area to type in; a
    Generate button; one row of edit buttons per detected finding (:func:`toggles`), plus
    Undo and Original; the four image panels (XRayGAN frontal and lateral, phantom frontal
    and lateral); the attention and findings panels; a status line with the response
    time. The callbacks only call :meth:`load`, :meth:`apply`, :meth:`undo` and
    :meth:`reset`, which code can call too; they show errors in the status line.
    """

    def __init__(self, explorer: ReportExplorer, choices: Sequence[ReportChoice] = (), image_width: int = 192) -> None:
        import ipywidgets as widgets

        self.explorer = explorer
        self.choices = list(choices)
        self._widgets = widgets
        self.picker = widgets.Dropdown(
            options=[("(type a report below)", -1)] + [(c.label, i) for i, c in enumerate(self.choices)],
            value=-1,
            description="Test report",
            style={"description_width": "initial"},
            layout=widgets.Layout(width="100%"),
        )
        self.text = widgets.Textarea(
            placeholder="Type a report, e.g. FINDINGS: Mild cardiomegaly. Small left pleural effusion.",
            layout=widgets.Layout(width="100%", height="7em"),
        )
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="play",
                                              tooltip="generate the report in the text box")  # fmt: skip
        self.undo_button = widgets.Button(description="Undo edit", icon="undo", disabled=True)
        self.reset_button = widgets.Button(description="Original", icon="home", disabled=True,
                                           tooltip="back to the report before any edit")  # fmt: skip
        self.status = widgets.HTML(value="<i>Pick or type a report and press Generate.</i>")
        self.toggle_box = widgets.VBox()
        self.images = {
            name: widgets.Image(format="png", width=image_width, height=image_width) for name, _ in PANELS
        }
        self.attention = widgets.HTML()
        self.findings = widgets.HTML()
        self.toggle_buttons: list[tuple[Toggle, Any]] = []
        self.last_response_s: float | None = None  # seconds of the last response, display included
        self._picking = False
        self._buttons: list[Any] = []  # pools of the toggle rows' widgets, reused (see _pooled)
        self._labels: list[Any] = []
        self._rows: list[Any] = []
        self._no_toggles = widgets.HTML(
            "<i>No finding the edits apply to: type one, e.g. 'Small left pleural effusion.'</i>"
        )
        panels = [
            widgets.VBox([widgets.HTML(f"<b>{html.escape(title)}</b>"), self.images[name]],
                         layout=widgets.Layout(align_items="center"))
            for name, title in PANELS
        ]  # fmt: skip
        self.widget = widgets.VBox(
            [
                self.picker,
                self.text,
                widgets.HBox([self.generate_button, self.undo_button, self.reset_button]),
                self.status,
                widgets.HTML("<b>Edit a detected finding</b>"),
                self.toggle_box,
                widgets.HBox(panels),
                widgets.HBox(
                    [
                        widgets.VBox([widgets.HTML("<b>What the encoder attended to</b>"), self.attention],
                                     layout=widgets.Layout(width="60%")),
                        widgets.VBox([widgets.HTML("<b>Findings read from the report</b>"), self.findings],
                                     layout=widgets.Layout(width="40%")),
                    ]
                ),  # fmt: skip
            ]
        )
        self.generate_button.on_click(lambda _: self._quietly(self.load, self.text.value))
        self.undo_button.on_click(lambda _: self._quietly(self.undo))
        self.reset_button.on_click(lambda _: self._quietly(self.reset))
        self.picker.observe(self._on_pick, names="value")

    # -- driving the app (callbacks and code) -------------------------------------------

    def load(self, text: str, patient_seed: int | None = None) -> ExplorerView:
        """Generate ``text`` (it also goes into the text box) and show it."""
        if isinstance(text, str):
            self.text.value = text
        return self._guarded(lambda: self.explorer.generate(text, patient_seed=patient_seed))

    def pick(self, report_id: str = "") -> ExplorerView:
        """Select the choice with this id in the dropdown (``""``: :func:`pick_report`'s
        default) and show it, drawn into its case's phantom patient."""
        choice = pick_report(self.choices, report_id)
        self._picking = True  # the dropdown's observer would load it a second time
        try:
            self.picker.value = self.choices.index(choice)
        finally:
            self._picking = False
        return self.load(choice.text, patient_seed=choice.patient_seed)

    def apply(self, operation: str, kind: str, argument: str | None = None) -> ExplorerView:
        """Apply one edit to the report shown, regenerate and show it."""
        view = self._guarded(lambda: self.explorer.edit(operation, kind, argument))
        self.text.value = view.text
        return view

    def undo(self) -> ExplorerView:
        view = self._guarded(self.explorer.undo, verb="undo")
        self.text.value = view.text
        return view

    def reset(self) -> ExplorerView:
        view = self._guarded(self.explorer.reset, verb="reset")
        self.text.value = view.text
        return view

    @property
    def toggles(self) -> list[Toggle]:
        """The edit buttons shown now."""
        return [toggle for toggle, _ in self.toggle_buttons]

    # -- internals ----------------------------------------------------------------------

    def _guarded(self, action, verb: str = "generate") -> ExplorerView:
        start = time.perf_counter()
        self.status.value = "<i>working…</i>"
        try:
            view = action()
        except XrgError as exc:
            self.status.value = f'<span style="color: #b00">could not {verb}: {html.escape(str(exc))}</span>'
            raise
        self._show(view)
        self.last_response_s = time.perf_counter() - start
        self.status.value = html.escape(status_text(view, self.last_response_s))
        return view

    def _quietly(self, method, *args) -> None:
        """A callback: run ``method``; an input error is already in the status line."""
        try:
            method(*args)
        except XrgError:
            pass

    def _on_pick(self, change: dict[str, Any]) -> None:
        index = change["new"]
        if self._picking or index is None or index < 0:
            return
        choice = self.choices[index]
        self._quietly(self.load, choice.text, choice.patient_seed)

    def _show(self, view: ExplorerView) -> None:
        for name, image in view.images().items():
            self.images[name].value = png_bytes(image)
        self.attention.value = attention_html(view.attention, view.unknown_words)
        self.findings.value = findings_html(view)
        self.undo_button.disabled = len(self.explorer.history) < 2
        self.reset_button.disabled = len(self.explorer.history) < 2
        self._build_toggles(view)

    def _pooled(self, pool: list, index: int, make) -> Any:
        """Widget ``index`` of ``pool``, made when missing: the rows are reused, not rebuilt,
        so a saved notebook's widget state does not grow with every click."""
        while len(pool) <= index:
            pool.append(make(len(pool)))
        return pool[index]

    def _click(self, index: int) -> None:
        if index < len(self.toggle_buttons):
            self._quietly(self.apply, *self.toggle_buttons[index][0].edit)

    def _build_toggles(self, view: ExplorerView) -> None:
        widgets = self._widgets

        def make_button(index: int) -> Any:
            button = widgets.Button(layout=widgets.Layout(width="auto"))
            button.on_click(lambda _: self._click(index))
            return button

        self.toggle_buttons = []
        rows = []
        by_kind: dict[str, list[Toggle]] = {}
        for toggle in toggles(view):
            by_kind.setdefault(toggle.kind, []).append(toggle)
        for r, kind in enumerate(sorted(by_kind, key=FINDING_KINDS.index)):
            stated = [f.describe() for f in view.findings if f.kind == kind and not f.negated]
            label = self._pooled(self._labels, r, lambda _: widgets.HTML(layout=widgets.Layout(width="260px")))
            label.value = html.escape(", ".join(stated) or f"no {kind.replace('_', ' ')}")
            buttons = []
            for toggle in by_kind[kind]:
                button = self._pooled(self._buttons, len(self.toggle_buttons), make_button)
                button.description = toggle.label
                button.tooltip = " ".join(p for p in toggle.edit if p)
                buttons.append(button)
                self.toggle_buttons.append((toggle, button))
            row = self._pooled(self._rows, r, lambda _: widgets.HBox())
            row.children = [label, *buttons]
            rows.append(row)
        if not rows:
            rows.append(self._no_toggles)
        self.toggle_box.children = rows
