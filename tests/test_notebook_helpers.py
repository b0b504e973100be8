"""The notebook helpers of ``xrg.notebook`` besides setup: metrics logs, examples, image grids,
interval formatting; and the one ``VIEWS`` and ``report_text`` the library and notebooks share."""

from __future__ import annotations

import json
import warnings
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch

from xrg.data.findings import Finding
from xrg.data.manifest import VIEWS, Case
from xrg.data.reports import report_text, split_report_text
from xrg.errors import ConfigError
from xrg.notebook import (
    findings_label,
    format_interval,
    headline_entry,
    image_grid,
    is_abnormal,
    mean_word_attention,
    pick_examples,
    read_metrics,
)

matplotlib.use("Agg")


def write_log(path, rows, tail=""):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + tail, encoding="utf-8")
    return path


ROWS = [
    {"kind": "vcn", "image_size": 32, "epoch": 0, "loss": 0.7},
    {"kind": "vcn", "image_size": 64, "epoch": 0, "loss": 0.6},
    {"kind": "vcn_test", "image_size": 32, "auroc": 0.9},
    {"kind": "xraygan", "phase": "stage", "epoch": 1},
]


# --------------------------------------------------------------------------------------
# read_metrics
# --------------------------------------------------------------------------------------


def test_read_metrics_reads_every_row_from_a_file_or_its_run_dir(tmp_path):
    write_log(tmp_path / "metrics.jsonl", ROWS)
    assert read_metrics(tmp_path / "metrics.jsonl") == ROWS
    assert read_metrics(tmp_path) == ROWS
    assert read_metrics(str(tmp_path)) == ROWS


def test_read_metrics_filters_by_kind_and_fields(tmp_path):
    write_log(tmp_path / "metrics.jsonl", ROWS)
    assert read_metrics(tmp_path, "vcn") == ROWS[:2]
    assert read_metrics(tmp_path, kind="vcn", image_size=64) == [ROWS[1]]
    assert read_metrics(tmp_path, image_size=32) == [ROWS[0], ROWS[2]]
    assert read_metrics(tmp_path, phase="stage") == [ROWS[3]]  # rows without the key never match
    assert read_metrics(tmp_path, "nothing") == []


def test_read_metrics_refuses_a_missing_file_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="metrics.jsonl does not exist"):
        read_metrics(tmp_path)
    with pytest.raises(ConfigError, match="other.jsonl"):
        read_metrics(tmp_path / "other.jsonl")


def test_read_metrics_skips_a_torn_line_with_a_warning_naming_it(tmp_path):
    path = write_log(tmp_path / "metrics.jsonl", ROWS[:2], tail='{"kind": "vcn", "ep')
    with pytest.warns(UserWarning, match=r"skipped 1 torn line\(s\).*line\(s\) 3"):
        assert read_metrics(path, "vcn") == ROWS[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_log(path, ROWS, tail="\n\n")  # blank lines are no rows and no warning
        assert read_metrics(path) == ROWS


def test_read_metrics_refuses_a_line_that_is_not_an_object(tmp_path):
    path = write_log(tmp_path / "metrics.jsonl", [ROWS[0], [1, 2], ROWS[1]])
    with pytest.raises(ConfigError, match=r"metrics.jsonl, line 2: a metrics row must be a JSON object, got list"):
        read_metrics(path)


# --------------------------------------------------------------------------------------
# pick_examples, findings_label
# --------------------------------------------------------------------------------------


def case(number, findings=()):
    return Case(
        id=f"c{number}", patient_id=f"p{number}", split="test", findings="x", impression="",
        structured_findings=list(findings), frontal=f"{number}_f.png", lateral=f"{number}_l.png",
    )  # fmt: skip


CASES = [
    case(0),
    case(1, [Finding("cardiomegaly", severity="mild")]),
    case(2, [Finding("pleural_effusion", side="left", negated=True)]),
    case(3, [Finding("nodule", side="right", zone="upper")]),
    case(4),
    case(5, [Finding("edema")]),
]


def test_pick_examples_puts_cases_with_a_present_finding_first_in_manifest_order():
    assert [is_abnormal(c) for c in CASES] == [False, True, False, True, False, True]
    assert pick_examples(CASES, 4) == [1, 3, 5, 0]
    assert pick_examples(CASES, 100) == [1, 3, 5, 0, 2, 4]
    assert pick_examples(SimpleNamespace(cases=CASES), 2) == [1, 3]  # a dataset: its cases


def test_pick_examples_is_seeded_and_deterministic():
    picks = {seed: pick_examples(CASES, 6, seed=seed) for seed in range(8)}
    assert all(pick_examples(CASES, 6, seed=seed) == picks[seed] for seed in range(8))
    assert all(sorted(p[:3]) == [1, 3, 5] and sorted(p[3:]) == [0, 2, 4] for p in picks.values())
    assert len({tuple(p) for p in picks.values()}) > 1
    assert pick_examples(CASES, 2, seed=3) == picks[3][:2]


@pytest.mark.parametrize("count", [0, -1, 1.5, True, "2"])
def test_pick_examples_refuses_a_bad_count(count):
    with pytest.raises(ConfigError, match="count must be a positive integer"):
        pick_examples(CASES, count)


def test_pick_examples_refuses_a_bad_seed():
    with pytest.raises(ConfigError, match="seed must be"):
        pick_examples(CASES, 2, seed=-1)


def test_findings_label_names_present_findings_only():
    assert findings_label(CASES[0]) == "normal"
    assert findings_label(CASES[2]) == "normal"
    assert findings_label(CASES[1]) == CASES[1].structured_findings[0].describe()
    assert len(findings_label(CASES[3], width=5)) == 5


# --------------------------------------------------------------------------------------
# image_grid
# --------------------------------------------------------------------------------------


def test_image_grid_has_one_axes_per_cell_with_titles_and_labels():
    import matplotlib.pyplot as plt

    images = [[np.zeros((8, 8)), torch.ones(1, 8, 8), np.full((1, 1, 8, 8), 0.5)] for _ in range(2)]
    fig = image_grid(images, column_titles=("a", "b", "c"), row_labels=("r0", "r1"))
    assert len(fig.axes) == 6
    assert [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"] and fig.axes[3].get_title() == ""
    assert [fig.axes[0].get_ylabel(), fig.axes[3].get_ylabel()] == ["r0", "r1"]
    assert fig.axes[0].get_xticks().size == 0 and fig.axes[0].axison  # a frame for the label, no ticks
    assert fig.axes[1].images[0].get_array().shape == (8, 8)
    assert tuple(fig.get_size_inches()) == pytest.approx((2.25 * 3, 2.4 * 2))
    plt.close(fig)


def test_image_grid_titles_every_cell_and_hides_axes_without_row_labels():
    import matplotlib.pyplot as plt

    fig = image_grid([[np.zeros((4, 4)), None]], titles=[["one", "two"]], figsize=(4, 2), title_size=8, tight=False)
    assert len(fig.axes) == 2 and [ax.get_title() for ax in fig.axes] == ["one", "two"]
    assert not fig.axes[0].axison and not fig.axes[1].images  # None leaves the cell empty
    assert fig.axes[0].title.get_fontsize() == 8
    assert tuple(fig.get_size_inches()) == pytest.approx((4, 2))
    plt.close(fig)


@pytest.mark.parametrize(
    "images, kwargs, message",
    [
        ([], {}, "at least one row"),
        ([[np.zeros((4, 4))], [np.zeros((4, 4)), np.zeros((4, 4))]], {}, "row 1 has 2 images, row 0 has 1"),
        ([[np.zeros((4, 4))]], {"column_titles": ("a", "b")}, "column_titles has 2 entries for 1 columns"),
        ([[np.zeros((4, 4))]], {"row_labels": ()}, "row_labels has 0 entries for 1 rows"),
        ([[np.zeros((4, 4))]], {"titles": [["a", "b"]]}, "titles row 0 has 2 entries"),
        ([[np.zeros((3, 4, 4))]], {}, r"image \[0\]\[0\] must be one grayscale image"),
    ],
)
def test_image_grid_refuses_bad_input(images, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        image_grid(images, **kwargs)


# --------------------------------------------------------------------------------------
# evaluation values, attention
# --------------------------------------------------------------------------------------


def test_format_interval_and_headline_entry():
    entry = {"value": 0.12345, "ci": [0.1, 0.2], "n": 9}
    assert format_interval(entry) == "0.123 [0.100, 0.200]"
    assert format_interval(entry, digits=1) == "0.1 [0.1, 0.2]"
    assert format_interval(None) == format_interval({"value": None}) == "–"
    assert headline_entry(entry) is entry
    assert headline_entry({"both": entry, "other": {}}) is entry


def test_mean_word_attention_scales_to_uniform_and_drops_rare_words():
    attention = SimpleNamespace(sentences=[["a", "b"], ["a"]], word_weights=[[0.75, 0.25], [1.0]])
    outputs = [SimpleNamespace(attention={"findings": attention})] * 2
    table = mean_word_attention(outputs, min_count=2)
    assert list(table["word"]) == ["a", "b"]
    assert table["attention relative to uniform"].tolist() == pytest.approx([1.25, 0.5])
    assert table["occurrences"].tolist() == [4, 2]
    assert list(mean_word_attention(outputs, min_count=3)["word"]) == ["a"]


# --------------------------------------------------------------------------------------
# the shared constants and text helper
# --------------------------------------------------------------------------------------


def test_views_are_defined_once_and_shared():
    from xrg.data import datasets
    from xrg.eval import generators
    from xrg.models import baselines, xraygan
    from xrg.pipelines import XRayGANPipeline

    assert VIEWS == ("frontal", "lateral")
    assert datasets.VIEWS is generators.VIEWS is baselines.VIEWS is VIEWS
    assert xraygan.XRayGANConfig().views is VIEWS and XRayGANPipeline.views is VIEWS


def test_report_text_plain_and_with_headers():
    assert report_text("Heart normal.", "No acute disease.") == "Heart normal. No acute disease."
    assert report_text("", "No acute disease.") == report_text(" ", "No acute disease. ") == "No acute disease."
    assert report_text("", "") == ""
    headed = report_text("Heart normal.", "No acute disease.", headers=True)
    assert headed == "FINDINGS: Heart normal.\nIMPRESSION: No acute disease."
    assert report_text(" ", "Clear.", headers=True) == "IMPRESSION: Clear."
    assert report_text("Clear.", "", headers=True) == "FINDINGS: Clear."
    assert report_text("", " ", headers=True) == ""
    for findings, impression in [("Heart normal.", "Clear."), ("", "Clear."), ("Heart normal.", "")]:
        # what a pipeline reads back is the same as from the old always-both-headers form
        old = f"FINDINGS: {findings}\nIMPRESSION: {impression}"
        assert split_report_text(report_text(findings, impression, headers=True)) == split_report_text(old)


def test_read_build_record_reads_build_json_and_refuses_a_missing_one(tmp_path):
    from xrg.data.build import read_build_record
    from xrg.errors import DataDirError

    with pytest.raises(DataDirError, match="build.json does not exist"):
        read_build_record(tmp_path)
    (tmp_path / "build.json").write_text('{"n_cases": 3, "config": {}}', encoding="utf-8")
    assert read_build_record(tmp_path) == {"n_cases": 3, "config": {}}
    (tmp_path / "build.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(DataDirError, match="damaged"):
        read_build_record(tmp_path)
