"""Helpers for the book's notebooks: one setup call and parameter validation.

``setup`` checks the common parameters (``profile``, ``seed``), seeds every generator,
picks the device, and shows (and returns) the run's provenance: code version, profile,
parameters, device, seed and start time. ``RunInfo.finish`` at the end of a notebook shows
its wall time and records the whole provenance in the output's metadata
(:data:`PROVENANCE_KEY`), where the book's provenance notebook reads it back.
``check_params`` validates papermill parameters at the top of a notebook, so a bad value
fails at once with a message naming it instead of twenty cells later.

The rest is what several notebooks need besides display, kept here so that their cells hold
only parameters, calls, display and prose: :func:`read_metrics` reads a run's
``metrics.jsonl``, :func:`pick_examples` chooses the held-out cases a chapter shows,
:func:`findings_label` names a case's present findings, :func:`image_grid` lays images out
in rows and columns (real next to generated, both views), and :func:`format_interval` and
:func:`headline_entry` format the evaluation's values with their intervals, and
:func:`mean_word_attention` averages the encoder's word attention over reports.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import time
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

import xrg
from xrg.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from xrg.data.manifest import Case

#: Output-metadata key under which ``RunInfo.finish`` records a notebook's provenance.
PROVENANCE_KEY = "xrg_provenance"


def code_version() -> str:
    """The package version plus the git commit of the checkout, when there is one.

    ``.dirty`` is appended when the library or the notebooks differ from that commit.
    """
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        if commit:
            changed = subprocess.run(
                ["git", "status", "--porcelain", "--", "xrg", "notebooks"],
                cwd=Path(__file__).resolve().parent.parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            commit += ".dirty" if changed else ""
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{xrg.__version__}+{commit}" if commit else xrg.__version__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunInfo:
    profile: str
    seed: int
    device: str
    code_version: str
    python: str
    torch: str
    started: str
    params: dict[str, Any] = field(default_factory=dict)
    t0: float = field(default_factory=time.perf_counter, repr=False)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def record(self) -> dict[str, Any]:
        """The provenance as plain JSON values, wall time so far included."""
        record = {k: v for k, v in asdict(self).items() if k != "t0"}
        record["params"] = {
            k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in self.params.items()
        }
        record["wall_seconds"] = round(self.elapsed(), 3)
        return record

    def table(self) -> Any:
        import pandas as pd

        rows = {k: v for k, v in asdict(self).items() if k not in ("params", "t0")}
        rows.update({f"param: {k}": v for k, v in self.params.items()})
        return pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))

    def finish(self, show: bool = True) -> dict[str, Any]:
        """Show the notebook's wall time and record its provenance in the output metadata."""
        record = self.record()
        if show:
            from IPython.display import Markdown, display

            text = (
                f"*Executed in {record['wall_seconds']:.1f} s on {self.device} with profile `{self.profile}`, "
                f"seed {self.seed}, xrg {self.code_version} (started {self.started}).*"
            )
            display(Markdown(text), metadata={PROVENANCE_KEY: record})
        return record


def setup(seed: int, profile: str, params: dict[str, Any] | None = None, show: bool = True) -> RunInfo:
    """Check ``profile`` and ``seed``, seed everything, choose the device, show the provenance."""
    from xrg.profiles import load_profile

    if not isinstance(profile, str) or not profile.strip():
        raise ConfigError(
            f"notebook parameter profile={profile!r} must be a profile name (tiny, cpu, paper) or a YAML path"
        )
    try:
        load_profile(profile)
    except ConfigError as exc:
        raise ConfigError(f"notebook parameter profile={profile!r}: {exc}") from exc
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigError(f"notebook parameter seed={seed!r} must be an integer in [0, 2**32 - 1]")
    seed_everything(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    info = RunInfo(
        profile=profile,
        seed=seed,
        device=device if device == "cpu" else f"cuda ({torch.cuda.get_device_name(0)})",
        code_version=code_version(),
        python=platform.python_version(),
        torch=torch.__version__,
        started=time.strftime("%Y-%m-%d %H:%M:%S"),
        params=dict(params or {}),
    )
    if show:
        from IPython.display import display

        display(info.table())
    return info


def check_params(**checks: tuple[Any, Any]) -> None:
    """Validate parameters: ``name=(value, rule)``.

    A rule is a type, a ``range`` (inclusive of its start, exclusive of its stop), a tuple
    of allowed values, or one of ``"existing_dir"``, ``"existing_file"``, ``"positive"``,
    ``"positive_or_none"``.
    """
    for name, (value, rule) in checks.items():
        problem = None
        if isinstance(rule, type):
            if not isinstance(value, rule) or (rule is int and isinstance(value, bool)):
                problem = f"must be of type {rule.__name__}"
        elif isinstance(rule, range):
            if not isinstance(value, int) or value not in rule:
                problem = f"must be an integer in [{rule.start}, {rule.stop - 1}]"
        elif isinstance(rule, tuple):
            if value not in rule:
                problem = f"must be one of {rule}"
        elif rule == "existing_dir":
            if not Path(str(value)).is_dir():
                problem = "must be an existing directory (build it with `xrg data build`)"
        elif rule == "existing_file":
            if not Path(str(value)).is_file():
                problem = "must be an existing file"
        elif rule in ("positive", "positive_or_none"):
            if not (value is None and rule == "positive_or_none"):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                    problem = "must be a positive number" + (" or None" if rule == "positive_or_none" else "")
        else:
            raise ConfigError(f"unknown parameter rule {rule!r} for {name}")
        if problem:
            raise ConfigError(f"notebook parameter {name}={value!r} {problem}")


def executed_provenance(executed_dir: str | Path, exclude: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The provenance each executed notebook in ``executed_dir`` recorded, in reading order.

    A row per ``NN_name.ipynb``: its title, what ``RunInfo.finish`` recorded (profile, seed,
    device, code version, start time, parameters, wall time) and papermill's own timing.
    A notebook without a record (executed by hand, or before it recorded one) gets a row
    saying so, rather than being left out.
    """
    import nbformat

    folder = Path(executed_dir)
    if not folder.is_dir():
        raise ConfigError(f"executed notebooks folder {folder} does not exist; run `xrg book run` first")
    rows = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        if path.stem in exclude or path.stem.endswith(".failed"):
            continue
        notebook = nbformat.read(path, as_version=4)
        title = next(
            (
                line.lstrip("# ").strip()
                for cell in notebook.cells
                if cell.cell_type == "markdown"
                for line in cell.source.splitlines()
                if line.startswith("# ")
            ),
            path.stem,
        )
        record: dict[str, Any] = {}
        for cell in notebook.cells:
            for output in cell.get("outputs", []):
                record = output.get("metadata", {}).get(PROVENANCE_KEY, record)
        papermill = notebook.metadata.get("papermill", {})
        rows.append(
            {
                "notebook": path.stem,
                "title": title,
                "profile": record.get("profile", "not recorded"),
                "seed": record.get("seed"),
                "device": record.get("device", "not recorded"),
                "code_version": record.get("code_version", "not recorded"),
                "started": record.get("started", papermill.get("start_time", "")),
                "wall_seconds": record.get("wall_seconds", papermill.get("duration")),
                "papermill_seconds": papermill.get("duration"),
                "params": record.get("params", papermill.get("parameters", {})),
                "recorded": bool(record),
            }
        )
    return rows


# --------------------------------------------------------------------------------------
# Metrics logs, examples, image grids
# --------------------------------------------------------------------------------------

#: The metrics log a training run writes into its run directory (one JSON object a line).
METRICS_FILE = "metrics.jsonl"


def read_metrics(source: str | os.PathLike, kind: str | None = None, **match: Any) -> list[dict[str, Any]]:
    """The rows of a run's metrics log, in file order; ``kind`` and ``match`` keep those equal to them.

    ``source`` is a ``metrics.jsonl`` file or a run directory holding one. ``read_metrics(run,
    "xraygan")`` keeps the rows whose ``kind`` is ``"xraygan"``; ``read_metrics(run / "vcn",
    "vcn", image_size=64)`` also those of one resolution (a row without the key never matches).
    A missing file is refused (:class:`~xrg.errors.ConfigError` naming it). A line that is not
    JSON is a torn write of a killed process, which the training loop drops when it resumes
    (:func:`xrg.train.loop.trim_metrics`): it is skipped with a warning counting such lines
    and naming them. A line that is JSON but not an object means the file is not a metrics log
    and is refused, naming the file and the line.
    """
    path = Path(source)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise ConfigError(f"metrics log {path} does not exist: train the run first (or check the run directory)")
    rows, torn = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            torn.append(number)
            continue
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path}, line {number}: a metrics row must be a JSON object, got {type(row).__name__}: {line[:60]!r}"
            )
        if kind is not None and row.get("kind") != kind:
            continue
        if any(key not in row or row[key] != value for key, value in match.items()):
            continue
        rows.append(row)
    if torn:
        shown = ", ".join(map(str, torn[:10])) + (", ..." if len(torn) > 10 else "")
        warnings.warn(
            f"{path}: skipped {len(torn)} torn line(s) (not JSON; a killed write), line(s) {shown}", stacklevel=2
        )
    return rows


def _cases_of(cases: Any) -> Sequence[Case]:
    return cases.cases if hasattr(cases, "cases") else cases


def is_abnormal(case: Case) -> bool:
    """Whether the case has a present (not negated) structured finding."""
    return any(not f.negated for f in case.structured_findings)


def pick_examples(cases: Any, count: int, seed: int | None = None) -> list[int]:
    """Indices of the ``count`` cases a chapter shows: those with a present finding first.

    ``cases`` is a sequence of :class:`~xrg.data.manifest.Case` or a dataset with a ``cases``
    list (:class:`~xrg.data.datasets.XRayPairDataset`); the indices are into it. Without
    ``seed`` the cases keep their manifest order within the abnormal and the normal group;
    with one, each group is shuffled by a generator of that seed. Either way the same input
    gives the same indices. Fewer than ``count`` cases give all of them.
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"count must be a positive integer, got {count!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ConfigError(f"seed must be a non-negative integer or None, got {seed!r}")
    items = _cases_of(cases)
    abnormal = [i for i, case in enumerate(items) if is_abnormal(case)]
    normal = [i for i, case in enumerate(items) if not is_abnormal(case)]
    if seed is not None:
        rng = np.random.default_rng(seed)
        abnormal = [abnormal[i] for i in rng.permutation(len(abnormal))]
        normal = [normal[i] for i in rng.permutation(len(normal))]
    return (abnormal + normal)[:count]


def findings_label(case: Case, width: int | None = None) -> str:
    """The case's present findings, ``"; "``-joined (``"normal"`` without any), cut to ``width``."""
    label = "; ".join(f.describe() for f in case.structured_findings if not f.negated) or "normal"
    return label if width is None else label[:width]


def _as_image(image: Any, where: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ConfigError(f"image_grid: {where} must be one grayscale image (H, W or 1, H, W), got shape {array.shape}")
    return array


def _check_shape(name: str, value: Sequence[Any] | None, length: int, what: str) -> None:
    if value is not None and len(value) != length:
        raise ConfigError(f"image_grid: {name} has {len(value)} entries for {length} {what}")


def image_grid(
    images: Sequence[Sequence[Any]],
    *,
    titles: Sequence[Sequence[str | None]] | None = None,
    column_titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    title_size: float | None = 9,
    label_size: float | None = 7,
    tight: bool = True,
) -> Figure:
    """A figure of grayscale images in rows and columns, shown in [0, 1]: real next to generated, both views.

    ``images`` is a list of rows, all of one length; an image is a (H, W) or (1, H, W) array or
    tensor, or ``None`` for an empty cell. ``titles`` (rows of strings, like ``images``) title
    each cell, ``column_titles`` the top row's cells, ``row_labels`` the first column's
    (y-axis labels; the axes then keep their frame without ticks, else they are hidden).
    ``figsize`` defaults to 2.25 x 2.4 inches a cell. Returns the figure (``fig.axes`` holds
    one axes per cell, row by row); ``plt.show()`` displays it.
    """
    import matplotlib.pyplot as plt

    rows = [list(row) for row in images]
    if not rows or not rows[0]:
        raise ConfigError("image_grid needs at least one row of at least one image")
    num_rows, num_cols = len(rows), len(rows[0])
    for number, row in enumerate(rows):
        if len(row) != num_cols:
            raise ConfigError(f"image_grid: row {number} has {len(row)} images, row 0 has {num_cols}")
    _check_shape("titles", titles, num_rows, "rows")
    for number, row in enumerate(titles or []):
        _check_shape(f"titles row {number}", row, num_cols, "columns")
    _check_shape("column_titles", column_titles, num_cols, "columns")
    _check_shape("row_labels", row_labels, num_rows, "rows")
    fig, axes = plt.subplots(num_rows, num_cols, figsize=figsize or (2.25 * num_cols, 2.4 * num_rows), squeeze=False)
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            ax = axes[r, c]
            if image is not None:
                ax.imshow(_as_image(image, f"image [{r}][{c}]"), cmap="gray", vmin=0, vmax=1)
            if row_labels is not None and image is not None:
                ax.set_xticks([])
                ax.set_yticks([])
            else:
                ax.axis("off")
            title = titles[r][c] if titles is not None else (column_titles[c] if column_titles and r == 0 else None)
            if title:
                ax.set_title(title, **({} if title_size is None else {"fontsize": title_size}))
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], **({} if label_size is None else {"fontsize": label_size}))
    if tight:
        fig.tight_layout()
    return fig


def headline_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """The ``{"value", "ci", "n"}`` of an evaluation value, or of the first of a nested group of them."""
    return entry if "value" in entry else next(iter(entry.values()))


def format_interval(entry: dict[str, Any] | None, digits: int = 3) -> str:
    """``"value [low, high]"`` of an evaluation value with its 95% interval, ``"–"`` for none."""
    if entry is None or entry.get("value") is None:
        return "–"
    low, high = entry.get("ci") or (None, None)
    if low is None or high is None:  # a number without an interval (too few cases to make one)
        return f"{entry['value']:.{digits}f}"
    return f"{entry['value']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def mean_word_attention(outputs: Iterable[Any], min_count: int = 5) -> Any:
    """Each word's mean attention weight within its sentence over pipeline outputs, highest first.

    ``outputs`` are :class:`~xrg.pipelines.XRayGANOutput` (anything with an ``attention``
    mapping of section attentions). A weight is scaled by its sentence's length, so 1.0 means
    uniform attention; words seen fewer than ``min_count`` times are left out. Returns a
    DataFrame with columns ``word``, ``attention relative to uniform`` and ``occurrences``.
    """
    import pandas as pd

    weights_by_word: dict[str, list[float]] = defaultdict(list)
    for output in outputs:
        for attention in output.attention.values():
            for words, weights in zip(attention.sentences, attention.word_weights):
                for word, weight in zip(words, weights):
                    weights_by_word[word].append(weight * len(words))  # 1.0 = uniform attention
    return pd.DataFrame(
        [(w, np.mean(v), len(v)) for w, v in weights_by_word.items() if len(v) >= min_count],
        columns=["word", "attention relative to uniform", "occurrences"],
    ).sort_values("attention relative to uniform", ascending=False)


def controls_table(model_name: str, model: dict[str, Any], controls: dict[str, dict[str, Any]], digits: int = 3) -> Any:
    """The headline metrics of ``model`` beside its controls, as a DataFrame (one row per metric).

    Columns: the model, each control (``value [95% CI]``), and "mean image wins?": "yes" where
    the report-blind mean image scores at least as well as the model, so that the number is
    read as what it is (:func:`xrg.eval.controls.compare_with_controls`).
    """
    import pandas as pd

    from xrg.eval.controls import compare_with_controls

    rows = {}
    for row in compare_with_controls(model, controls):
        arrow = "↑" if row["higher_is_better"] else "↓"
        cells = {model_name if name == "model" else name: format_interval(entry, digits)
                 for name, entry in row["entries"].items()}  # fmt: skip
        wins = row["mean_image_wins"]
        cells["mean image wins?"] = "–" if wins is None else ("yes" if wins else "no")
        rows[f"{row['metric']} {arrow}"] = cells
    return pd.DataFrame(rows).T
