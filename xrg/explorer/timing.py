"""Response times of the explorer: the bench helper behind ``xrg bench explorer``.

:func:`time_responses` times ``generate`` and every edit button of a list of reports
(used by :func:`xrg.bench.bench_explorer`).
"""

from __future__ import annotations

from collections.abc import Iterable

from xrg.errors import ConfigError, XrgError
from xrg.explorer.core import ReportExplorer, action_name, toggles


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
