"""The ipywidgets front end of the explorer: :class:`ExplorerApp` (``display(app.widget)``).

ipywidgets is imported only when an app is made, so the rest of :mod:`xrg.explorer` works
without it.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

from xrg.data.findings import FINDING_KINDS
from xrg.errors import XrgError
from xrg.explorer.choices import ReportChoice, pick_report
from xrg.explorer.core import PANELS, ExplorerView, ReportExplorer, Toggle, toggles
from xrg.explorer.figures import attention_html, findings_html, png_bytes, status_text


class StatusApp:
    """What both explorer apps share: every action runs through :meth:`_guarded`, which shows
    "working…", then the view (``_show``) and its status line with the response time, or the
    input error in red; a widget callback runs through :meth:`_quietly`. Subclasses set
    ``self.status`` (an HTML widget) and define ``_show`` and ``_status_text``."""

    status: Any
    last_response_s: float | None = None

    def _guarded(self, action, verb: str = "generate") -> Any:
        start = time.perf_counter()
        self.status.value = "<i>working…</i>"
        try:
            view = action()
        except XrgError as exc:
            self.status.value = f'<span style="color: #b00">could not {verb}: {html.escape(str(exc))}</span>'
            raise
        self._show(view)
        self.last_response_s = time.perf_counter() - start
        self.status.value = html.escape(self._status_text(view, self.last_response_s))
        return view

    def _quietly(self, method, *args) -> None:
        """A callback: run ``method``; an input error is already in the status line."""
        try:
            method(*args)
        except XrgError:
            pass

    def _show(self, view: Any) -> None:
        raise NotImplementedError

    def _status_text(self, view: Any, seconds: float) -> str:
        raise NotImplementedError


class ExplorerApp(StatusApp):
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
        self.images = {name: widgets.Image(format="png", width=image_width, height=image_width) for name, _ in PANELS}
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
                        widgets.VBox(
                            [widgets.HTML("<b>What the encoder attended to</b>"), self.attention],
                            layout=widgets.Layout(width="60%"),
                        ),
                        widgets.VBox(
                            [widgets.HTML("<b>Findings read from the report</b>"), self.findings],
                            layout=widgets.Layout(width="40%"),
                        ),
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

    def _status_text(self, view: ExplorerView, seconds: float) -> str:
        return status_text(view, seconds)

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
