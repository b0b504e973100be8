"""The ipywidgets front end of the PGGAN latent explorer: :class:`LatentApp` (``display(app.widget)``).

Everything it shows comes from :class:`~xrg.latent.explorer.LatentExplorer`; the callbacks
only call :meth:`LatentApp.new_patient`, :meth:`~LatentApp.move`, :meth:`~LatentApp.find`,
:meth:`~LatentApp.series` and :meth:`~LatentApp.undo`, which code (and the book's snapshots)
can call too. ipywidgets is imported only when an app is made.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

import numpy as np

from xrg.errors import ConfigError
from xrg.explorer.app import StatusApp
from xrg.explorer.figures import png_bytes
from xrg.latent.explorer import LatentExplorer, LatentView
from xrg.latent.search import REGULARISERS, TRUNCATION

#: What an image not yet drawn or an unused strip slot (hidden) shows: a small blank picture, since
#: an empty value is a broken image in the saved page.
BLANK_PNG = png_bytes(np.ones((8, 8), dtype=np.float32))
#: Direction sliders run over ±this many units of latent length.
SLIDER_RANGE = 3.0


def logits_html(view: LatentView, explorer: LatentExplorer, classes: Sequence[str] | None = None) -> str:
    """A table of both classifiers' probabilities per class, a mark where each passes its threshold.

    The search classifier is the one the search climbs; the evaluator (independent, never used
    by the search) is the check. Classes the app does not offer are left out (``classes``).
    """
    import torch

    names = list(classes) if classes is not None else list(explorer.class_names)
    search_passes = view.search_passes(explorer.search_classifier)
    evaluator_passes = {}
    if view.evaluator_logits is not None and explorer.evaluator is not None:
        for name, t in zip(explorer.evaluator.class_names, explorer.evaluator.thresholds):
            evaluator_passes[name] = view.evaluator_logits[name] >= float(t)
    rows = ["<tr><th style='text-align:left'>finding</th><th>search classifier</th><th>evaluator</th></tr>"]
    for name in names:
        p = float(torch.sigmoid(torch.tensor(view.search_logits[name])))
        cell = f"{p:.2f} {'&#10003;' if search_passes.get(name) else ''}"
        if view.evaluator_logits is not None and name in view.evaluator_logits:
            q = float(torch.sigmoid(torch.tensor(view.evaluator_logits[name])))
            other = f"{q:.2f} {'&#10003;' if evaluator_passes.get(name) else ''}"
        else:
            other = "–"
        rows.append(f"<tr><td>{html.escape(name)}</td><td style='text-align:center'>{cell}</td>"
                    f"<td style='text-align:center'>{other}</td></tr>")  # fmt: skip
    return (
        "<table class='xrg-logits'>" + "".join(rows) + "</table>"
        "<small>probabilities; &#10003;: above the classifier's validation threshold</small>"
    )


class LatentApp(StatusApp):
    """An ipywidgets app over a :class:`LatentExplorer`: ``display(app.widget)``.

    Top row: patient seed, **New patient**, the truncation slider, **Undo**. Then one slider
    per latent direction, the class picker with a severity slider (target probability; ticked
    "threshold" uses the class's validation threshold instead), the regulariser, **Find** and
    **Patient series**; the status line with the response time; the image beside both
    classifiers' probabilities; the search trajectory (or the series) below.
    """

    def __init__(
        self, explorer: LatentExplorer, classes: Sequence[str] | None = None, image_width: int = 256,
        strip_width: int = 96, strip_count: int = 6,
    ) -> None:  # fmt: skip
        import ipywidgets as widgets

        self.explorer = explorer
        self.classes = list(classes) if classes is not None else list(explorer.class_names)
        unknown = [name for name in self.classes if name not in explorer.class_names]
        if not self.classes or unknown:
            raise ConfigError(f"classes must be some of {list(explorer.class_names)}, got {self.classes}")
        self.strip_count = strip_count
        self._widgets = widgets
        self._moving = False
        small = widgets.Layout(width="auto")
        self.seed = widgets.BoundedIntText(value=0, min=0, max=2**32 - 1, description="patient", layout=small)
        self.new_button = widgets.Button(description="New patient", icon="user", button_style="primary")
        self.truncation = widgets.FloatSlider(value=TRUNCATION, min=0.1, max=2.0, step=0.05,
                                              description="truncation", continuous_update=False)  # fmt: skip
        self.undo_button = widgets.Button(description="Undo", icon="undo", disabled=True)
        self.sliders = [
            widgets.FloatSlider(value=0.0, min=-SLIDER_RANGE, max=SLIDER_RANGE, step=0.1,
                                description=f"direction {k + 1}", continuous_update=False)
            for k in range(len(explorer.directions))
        ]  # fmt: skip
        self.class_picker = widgets.Dropdown(options=self.classes, value=self.classes[0], description="finding")
        self.severity = widgets.FloatSlider(value=0.9, min=0.5, max=0.99, step=0.01, description="severity",
                                            continuous_update=False)  # fmt: skip
        self.at_threshold = widgets.Checkbox(value=True, description="at the class threshold", indent=False)
        self.regulariser = widgets.Dropdown(options=list(REGULARISERS), value="none", description="regulariser")
        self.find_button = widgets.Button(description="Find", icon="search", button_style="success")
        self.series_button = widgets.Button(description="Patient series", icon="clone")
        self.status = widgets.HTML("<i>Pick a patient seed and press New patient.</i>")
        # a search runs up to the step budget (seconds at 128² on a CPU): its steps show as they go
        self.search_progress = widgets.IntProgress(value=0, min=0, max=explorer.search_steps, description="search",
                                                   layout=widgets.Layout(visibility="hidden"))  # fmt: skip
        self.image = widgets.Image(value=BLANK_PNG, format="png", width=image_width, height=image_width)
        self.logits = widgets.HTML()
        self.strip_title = widgets.HTML()
        self.strip = [
            widgets.Image(
                value=BLANK_PNG, format="png", width=strip_width, height=strip_width, layout={"visibility": "hidden"}
            )
            for _ in range(strip_count)
        ]
        self.strip_labels = [widgets.HTML() for _ in range(strip_count)]
        cells = [widgets.VBox([image, label]) for image, label in zip(self.strip, self.strip_labels)]
        self.last_response_s: float | None = None
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.seed, self.new_button, self.truncation, self.undo_button]),
                widgets.HTML("<b>Move along the generator's main directions</b>"),
                widgets.GridBox(self.sliders, layout=widgets.Layout(grid_template_columns="repeat(3, auto)")),
                widgets.HTML("<b>Search for a finding</b>"),
                widgets.HBox([self.class_picker, self.severity, self.at_threshold]),
                widgets.HBox([self.regulariser, self.find_button, self.series_button]),
                widgets.HBox([self.status, self.search_progress]),
                widgets.HBox([self.image, self.logits]),
                self.strip_title,
                widgets.HBox(cells),
            ]
        )
        self.new_button.on_click(lambda _: self._quietly(self.new_patient, int(self.seed.value)))
        self.truncation.observe(lambda _: self._quietly(self.new_patient, int(self.seed.value)), names="value")
        for slider in self.sliders:
            slider.observe(self._on_slide, names="value")
        self.find_button.on_click(lambda _: self._quietly(self.find))
        self.series_button.on_click(lambda _: self._quietly(self.series))
        self.undo_button.on_click(lambda _: self._quietly(self.undo))

    # -- driving the app (callbacks and code) -------------------------------------------

    def new_patient(self, seed: int) -> LatentView:
        """The patient of ``seed`` at the truncation slider's value; the direction sliders go back to 0."""
        self._set_seed(seed)
        view = self._guarded(lambda: self.explorer.new_patient(seed, float(self.truncation.value)))
        self._set_sliders(view.offsets)
        return view

    def move(self, offsets: Sequence[float]) -> LatentView:
        """Move the patient to ``offsets`` along the directions (the sliders follow)."""
        self._set_sliders(offsets)
        return self._guarded(lambda: self.explorer.move(tuple(offsets)))

    def find(self, class_name: str | None = None, severity: float | None = None) -> LatentView:
        """Search for ``class_name`` (default: the picker's) at ``severity`` (default: the slider, or the threshold)."""
        if class_name is not None:
            if class_name not in self.classes:
                raise ConfigError(f"unknown class {class_name!r}; the app offers: {', '.join(self.classes)}")
            self.class_picker.value = class_name
        if severity is not None:
            self.at_threshold.value = False
            self.severity.value = severity
        name = self.class_picker.value
        target = None if self.at_threshold.value else float(self.severity.value)
        self.search_progress.value, self.search_progress.layout.visibility = 0, "visible"

        def progress(step: int, active: int) -> None:
            self.search_progress.value = step

        try:
            view = self._guarded(
                lambda: self.explorer.find(name, target, regulariser=self.regulariser.value, progress=progress),
                "search",
            )
        finally:
            self.search_progress.layout.visibility = "hidden"
        self._set_sliders(view.offsets)
        return view

    def series(self, count: int | None = None) -> LatentView:
        """A patient series around the current image for the picker's class."""
        count = count or self.strip_count
        return self._guarded(lambda: self.explorer.series(self.class_picker.value, count=count), "make a series")

    def undo(self) -> LatentView:
        view = self._guarded(self.explorer.undo, "undo")
        self._set_sliders(view.offsets)
        return view

    # -- internals ----------------------------------------------------------------------

    def _status_text(self, view: LatentView, seconds: float) -> str:
        return f"{view.action} — {seconds:.2f} s"

    def _set_seed(self, seed: int) -> None:
        self._moving = True
        try:
            self.seed.value = seed
        finally:
            self._moving = False

    def _set_sliders(self, offsets: Sequence[float]) -> None:
        self._moving = True
        try:
            for slider, value in zip(self.sliders, offsets):
                slider.value = float(np.clip(value, -SLIDER_RANGE, SLIDER_RANGE))
        finally:
            self._moving = False

    def _on_slide(self, change: dict[str, Any]) -> None:
        if self._moving or self.explorer.view is None:
            return
        self._quietly(self.move, [float(slider.value) for slider in self.sliders])

    def _show(self, view: LatentView) -> None:
        self.image.value = png_bytes(view.image)
        self.logits.value = logits_html(view, self.explorer, self.classes)
        self.undo_button.disabled = len(self.explorer.history) < 2
        frames: list[tuple[Any, str]] = []
        if view.series is not None:
            kept = view.series.kept.tolist()
            self.strip_title.value = f"<b>Patient series</b> ({sum(kept)} of {len(kept)} keep {view.series.class_name})"
            frames = [(view.series.images[i], "keeps" if kept[i] else "loses") for i in range(len(kept))]
        elif view.search is not None and view.search.images is not None:
            result = view.search
            steps = np.unique(np.linspace(0, result.steps, min(self.strip_count, result.steps + 1)).round().astype(int))
            column = result.class_names.index(result.class_name)
            self.strip_title.value = (
                f"<b>Search trajectory</b> for {html.escape(result.class_name)} "
                f"({'passed' if result.success else 'failed'} after {result.steps} steps)"
            )
            frames = [(result.images[s], f"step {s}: logit {float(result.logits[s, column]):+.2f}") for s in steps]
        else:
            self.strip_title.value = ""
        for k, (image, label) in enumerate(zip(self.strip, self.strip_labels)):
            if k < len(frames):
                picture = ((frames[k][0] + 1.0) / 2.0).clamp(0, 1)
                image.value, label.value = png_bytes(picture), f"<small>{html.escape(frames[k][1])}</small>"
                image.layout.visibility = "visible"
            else:
                # a blank picture, not b"": an empty PNG is a broken image in the saved page
                image.value, label.value = BLANK_PNG, ""
                image.layout.visibility = "hidden"
