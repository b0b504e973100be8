"""Snapshots: the explorer or its app driven from code, one edit of each kind, for the static book.

:func:`snapshot_rows` applies and undoes one button of each kind (:data:`KINDS_OF_EDIT`);
:func:`snapshot_table` tabulates the rows and :func:`~xrg.explorer.figures.plot_snapshots`
draws them.
"""

from __future__ import annotations

from collections.abc import Sequence

from xrg.data.edits import ReportEdit
from xrg.explorer.core import ExplorerView, Toggle, action_name, toggles

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
