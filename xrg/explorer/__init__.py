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

The package's modules, each re-exported here:

* :mod:`~xrg.explorer.core`: :class:`ReportExplorer`, :class:`ExplorerView`, :class:`Toggle`
  and :func:`toggles` (no UI);
* :mod:`~xrg.explorer.figures`: the HTML and PNG panels, the status line, :func:`plot_snapshots`;
* :mod:`~xrg.explorer.snapshots`: one edit of each kind, for the static book;
* :mod:`~xrg.explorer.choices`: reports of a data directory to pick from;
* :mod:`~xrg.explorer.timing`: :func:`time_responses`, behind ``xrg bench explorer``;
* :mod:`~xrg.explorer.app`: the ipywidgets :class:`ExplorerApp` (ipywidgets imported when made).
"""

from __future__ import annotations

from xrg.explorer.app import ExplorerApp
from xrg.explorer.choices import ReportChoice, load_report_choices, pick_report
from xrg.explorer.core import (
    MAX_REPORT_CHARS,
    PANELS,
    ExplorerView,
    ReportExplorer,
    Toggle,
    action_name,
    check_report_text,
    toggles,
)
from xrg.explorer.figures import attention_html, findings_html, plot_snapshots, png_bytes, status_text
from xrg.explorer.snapshots import KINDS_OF_EDIT, one_of_each, snapshot_rows, snapshot_table
from xrg.explorer.timing import time_responses

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
