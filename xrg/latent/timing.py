"""Response times of the latent explorer, for the book and ``xrg bench pggan-explorer``.

:func:`time_latent_responses` drives a :class:`~xrg.latent.explorer.LatentExplorer` through each
kind of response a student triggers — a new patient, a direction slider, undo, a patient
series, and a class search (which runs up to the step budget, so it is reported on its own) —
and returns the seconds of each, from the call to the finished view.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from xrg.latent.explorer import LatentExplorer

RESPONSES = ("new patient", "move", "undo", "series", "find")


def time_latent_responses(
    explorer: LatentExplorer, class_name: str, repeats: int = 3, seed: int = 0, series_count: int = 6
) -> dict[str, list[float]]:
    """Seconds per response kind (``RESPONSES``), ``repeats`` times each, on patients ``seed``, ``seed + 1``, …"""
    times: dict[str, list[float]] = {name: [] for name in RESPONSES}
    count = len(explorer.directions)

    def timed(name: str, action: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = action(*args, **kwargs)
        times[name].append(time.perf_counter() - start)
        return result

    explorer.new_patient(seed)  # warm-up: the first call pays for allocations
    for r in range(repeats):
        timed("new patient", explorer.new_patient, seed + r)
        offsets = [0.0] * count
        offsets[r % count] = 1.5
        timed("move", explorer.move, offsets)
        timed("undo", explorer.undo)
        timed("series", explorer.series, class_name, count=series_count, seed=r)
        explorer.undo()
        timed("find", explorer.find, class_name)
    return times
