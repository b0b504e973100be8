"""The teaching report explorer (xrg.explorer): core, HTML panels, ipywidgets app, bench.

Fast: an untrained 32² XRayGAN (random weights) and the phantom at its smallest CT grid.
"""

from __future__ import annotations

import numpy as np
import pytest

from xrg.data.edits import possible_edits
from xrg.data.findings import SEVERITIES, label_text
from xrg.data.manifest import Case, write_manifest
from xrg.data.phantom import PhantomRenderer
from xrg.data.reports import Vocabulary
from xrg.errors import ConfigError, EmptyReportError, FindingError, ReportError, XrgError
from xrg.explorer import (
    MAX_REPORT_CHARS,
    ExplorerApp,
    ReportChoice,
    ReportExplorer,
    attention_html,
    findings_html,
    load_report_choices,
    pick_report,
    png_bytes,
    toggles,
)
from xrg.models.xraygan import XRayGANModelConfig
from xrg.pipelines import SectionAttention, XRayGANPipeline
from xrg.train.xraygan import XRayGANTrainConfig

TINY = XRayGANTrainConfig(
    model=XRayGANModelConfig(
        embed_dim=8, hidden=8, base_size=16, num_stages=2, gen_channels=8, disc_channels=8, cond_channels=4,
        max_channels=32, disc_max_downsamplings=2,
    ),
    lr=(2e-3, 2e-3), batch_size=(6, 6), num_epochs=(2, 2), pretrain_epochs=1, num_samples=2,
)  # fmt: skip

REPORT = (
    "FINDINGS: The heart is mildly enlarged. Small left pleural effusion. No pneumothorax.\n"
    "IMPRESSION: Mild cardiomegaly and small left effusion."
)
OTHER = (
    "FINDINGS: Patchy opacity in the right lower lobe. Calcified granuloma in the left upper lobe. "
    "IMPRESSION: Pneumonia."
)
NORMAL = "FINDINGS: The lungs are clear. IMPRESSION: No acute cardiopulmonary abnormality."
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pipe() -> XRayGANPipeline:
    return XRayGANPipeline.from_config(TINY, Vocabulary.build([REPORT, OTHER, NORMAL]), seed=0)


@pytest.fixture(scope="module")
def renderer() -> PhantomRenderer:
    return PhantomRenderer(volume_size=32)  # the cache lives in the session's XRG_CACHE_DIR


@pytest.fixture
def explorer(pipe, renderer) -> ReportExplorer:
    return ReportExplorer(pipe, renderer, seed=0, patient_seed=7)


def test_generate_gives_four_images_at_the_pipeline_size_with_attention_and_edits(explorer):
    view = explorer.generate(REPORT)
    assert explorer.view is view and explorer.image_size == 32 == view.image_size
    for name, image in view.images().items():
        assert image.shape == (32, 32) and image.dtype == np.float32, name
        assert 0.0 <= image.min() and image.max() <= 1.0
    assert not np.array_equal(view.frontal, view.phantom_frontal)
    assert view.findings == label_text("The heart is mildly enlarged. Small left pleural effusion. No pneumothorax. "
                                       "Mild cardiomegaly and small left effusion.")  # fmt: skip
    assert {f.kind for f in view.present} == {"cardiomegaly", "pleural_effusion"}
    assert {f.kind for f in view.drawn} == {"cardiomegaly", "pleural_effusion"}
    assert view.edits == possible_edits(REPORT)
    assert set(view.attention) == {"findings", "impression"}
    assert view.attention["findings"].sentences[1] == ["small", "left", "pleural", "effusion"]
    assert {"xraygan", "labels", "phantom", "total"} <= set(view.timing) and view.seconds > 0
    assert view.edit is None and view.patient_seed == 7 and view.seed == 0


def test_attention_html_shades_words_and_escapes_text():
    attention = {
        "findings": SectionAttention("findings", [["<script>alert(1)</script>", "a&b"], ["effusion"]],
                                     [[0.9, 0.1], [1.0]], [0.25, 0.75]),
        "impression": SectionAttention("impression", [], [], []),
    }  # fmt: skip
    page = attention_html(attention, unknown_words=["a&b"])
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "a&amp;b" in page
    # shading is word × sentence weight, relative to the largest: effusion 0.75 is full, the script word 0.225
    assert "rgba(255, 140, 0, 1.000)" in page and "rgba(255, 140, 0, 0.300)" in page
    assert "0.25</span>" in page and "0.75</span>" in page  # the sentence weights, next to their bars
    assert "underline dotted" in page  # the unknown word
    assert "flat encoder" in attention_html({})


def test_report_text_is_escaped_in_every_panel(explorer):
    text = "FINDINGS: Mild cardiomegaly <script>alert(1)</script>. No effusion. IMPRESSION: <b>bold</b> heart."
    view = explorer.generate(text)
    assert "<script" not in attention_html(view.attention, view.unknown_words)
    edited = explorer.edit("negate", "cardiomegaly")
    page = findings_html(edited)
    assert "<script" not in page and "&lt;script&gt;" in page  # the rewritten sentence, before
    assert "<b>bold" not in page


def test_negate_removes_the_finding_and_keeps_both_seeds(explorer, pipe, renderer):
    original = explorer.generate(REPORT)
    edited = explorer.edit("negate", "cardiomegaly")
    assert "cardiomegaly" not in {f.kind for f in edited.present}
    assert any(f.kind == "cardiomegaly" and f.negated for f in edited.findings)
    assert {f.kind for f in edited.present} == {"pleural_effusion"}
    assert edited.edit.label == "negate cardiomegaly" and edited.edit.changed_sentences
    assert edited.text != original.text and "Small left pleural effusion." in edited.text
    assert (edited.seed, edited.patient_seed) == (original.seed, original.patient_seed)
    assert edited.timing["edit"] >= 0 and edited.seconds >= edited.timing["edit"]
    assert not np.array_equal(original.phantom_frontal, edited.phantom_frontal)  # the truth changed
    assert not np.array_equal(original.frontal, edited.frontal)  # and so did the model's input
    again = ReportExplorer(pipe, renderer, seed=0, patient_seed=7).generate(REPORT)
    for name, image in original.images().items():
        assert np.array_equal(image, again.images()[name]), name  # same report, same seeds: same pixels
    assert len(explorer.history) == 2
    assert explorer.undo() is original and explorer.view is original
    explorer.edit("flip_side", "pleural_effusion", "right")
    explorer.edit("negate", "cardiomegaly")
    assert explorer.reset() is original and len(explorer.history) == 1


def test_other_edits_regenerate(explorer):
    explorer.generate(REPORT)
    severe = explorer.edit("set_severity", "cardiomegaly", "severe")
    assert [f.severity for f in severe.present if f.kind == "cardiomegaly"] == ["severe"]
    flipped = explorer.edit("flip_side", "pleural_effusion", "right")
    assert [f.side for f in flipped.present if f.kind == "pleural_effusion"] == ["right"]
    added = explorer.edit("add", "pneumothorax")
    assert "pneumothorax" in {f.kind for f in added.present}
    assert not np.array_equal(flipped.phantom_frontal, added.phantom_frontal)


@pytest.mark.parametrize(
    "text",
    [REPORT, OTHER, NORMAL, "Moderate cardiomegaly. Severe right pleural effusion. Mild edema. No pneumothorax."],
)
def test_toggles_are_the_possible_edits_of_each_finding(text):
    edits = possible_edits(text)
    shown = toggles(text)
    assert [t.edit for t in shown] == [e for e in edits if e in {t.edit for t in shown}]  # same order, a subset
    findings = label_text(" ".join(s for s in text.replace("FINDINGS:", "").split("IMPRESSION:")))
    for operation, kind, argument in edits:
        if (operation, kind, argument) in {t.edit for t in shown}:
            continue
        # left out: only severity jumps of two steps (mild <-> severe)
        assert operation == "set_severity"
        current = {SEVERITIES.index(f.severity or "moderate") for f in findings if f.kind == kind and not f.negated}
        assert all(abs(SEVERITIES.index(argument) - c) == 2 for c in current)
    for toggle in shown:
        expected = {"negate": "negate", "add": "make present", "flip_side": f"flip to {toggle.argument}"}
        if toggle.operation == "set_severity":
            assert toggle.label in ("milder", "more severe")
        else:
            assert toggle.label == expected[toggle.operation]
    present = {f.kind for f in findings if not f.negated}
    assert {t.kind for t in shown if t.operation == "negate"} == present


def test_toggle_labels_name_the_direction():
    labels = {(t.kind, t.label): t.argument for t in toggles("Moderate cardiomegaly. Mild pulmonary edema.")}
    assert labels[("cardiomegaly", "milder")] == "mild" and labels[("cardiomegaly", "more severe")] == "severe"
    assert labels[("edema", "more severe")] == "moderate" and ("edema", "milder") not in labels


@pytest.mark.parametrize(
    "text, error, words",
    [
        ("", EmptyReportError, "empty"),
        ("   \n\t ", EmptyReportError, "empty"),
        ("\x00\x01", EmptyReportError, "empty"),
        (None, ReportError, "NoneType"),
        (42, ReportError, "int"),
        (b"FINDINGS: effusion", ReportError, "bytes"),
        ("Mild cardiomegaly. " * (MAX_REPORT_CHARS // 19 + 1), ReportError, "at most"),
        ("!!! ... ???", EmptyReportError, "no words"),
        ("INDICATION: cough.", EmptyReportError, "FINDINGS or IMPRESSION"),
    ],
)
def test_bad_reports_raise_typed_errors(explorer, text, error, words):
    with pytest.raises(error, match=words):
        explorer.generate(text)
    assert explorer.view is None


def test_bad_edits_raise_typed_errors(explorer, pipe, renderer):
    with pytest.raises(ReportError, match="generate"):
        explorer.edit("negate", "cardiomegaly")
    with pytest.raises(ReportError, match="undo"):
        explorer.undo()
    explorer.generate(REPORT)
    with pytest.raises(ReportError, match="undo"):
        explorer.undo()
    with pytest.raises(FindingError, match="unknown finding kind"):
        explorer.edit("negate", "broken_heart")
    with pytest.raises(ReportError, match="not have it"):
        explorer.edit("negate", "nodule")
    with pytest.raises(ReportError, match="unknown edit operation"):
        explorer.edit("explode", "cardiomegaly")
    with pytest.raises(FindingError, match="unknown severity"):
        explorer.edit("set_severity", "cardiomegaly", "extreme")
    with pytest.raises(ReportError, match="left"):
        explorer.edit("flip_side", "pleural_effusion", "left")
    assert len(explorer.history) == 1  # nothing was pushed
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ConfigError, match="seed"):
            ReportExplorer(pipe, renderer, seed=bad)
        with pytest.raises(ConfigError, match="patient_seed"):
            explorer.generate(REPORT, patient_seed=bad)
    assert issubclass(ConfigError, XrgError) and issubclass(ReportError, XrgError)


def test_png_bytes():
    data = png_bytes(np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16))
    assert data.startswith(PNG_MAGIC)
    assert png_bytes(np.zeros((1, 8, 8), np.float32)).startswith(PNG_MAGIC)


def _write_cases(directory, texts):
    cases = [
        Case(id=f"case{i}", patient_id=f"p{i}", split="test" if i else "train", findings=findings,
             impression=impression, structured_findings=[], frontal=f"images/case{i}_frontal.png",
             lateral=f"images/case{i}_lateral.png", seed=100 + i)
        for i, (findings, impression) in enumerate(texts)
    ]  # fmt: skip
    write_manifest(directory, cases)
    return directory


def test_report_choices_from_a_data_dir(tmp_path):
    data = _write_cases(tmp_path, [("Mild cardiomegaly.", ""), ("The lungs are clear.", "Normal."),
                                   ("", "Small left pleural effusion. Moderate cardiomegaly.")])  # fmt: skip
    choices = load_report_choices(data)
    assert [c.id for c in choices] == ["case1", "case2"]  # case0 is in the train split
    assert choices[0].text == "FINDINGS: The lungs are clear.\nIMPRESSION: Normal."
    assert choices[0].label == "case1: normal"
    assert choices[1].text.startswith("IMPRESSION: ") and choices[1].patient_seed == 102
    assert "pleural effusion" in choices[1].label
    assert [c.id for c in load_report_choices(data, split=None, limit=2)] == ["case0", "case1"]
    assert pick_report(choices).id == "case2"  # the one with edits to make
    assert pick_report(choices, "case1").id == "case1"
    with pytest.raises(ConfigError, match="not among"):
        pick_report(choices, "nope")
    with pytest.raises(ConfigError, match="no reports"):
        pick_report([])
    with pytest.raises(ConfigError, match="split"):
        load_report_choices(data, split="holdout")


def _live_widgets() -> int:
    from ipywidgets.widgets.widget import _instances  # every widget not closed, as the kernel keeps them

    return len(_instances)


def test_the_app_builds_and_updates_its_widgets(explorer):
    import ipywidgets as widgets

    choices = [ReportChoice("other", OTHER, 11, "other: opacity"), ReportChoice("main", REPORT, 12, "main: effusion")]
    app = ExplorerApp(explorer, choices, image_width=96)
    assert isinstance(app.widget, widgets.VBox)
    assert set(app.images) == {"frontal", "lateral", "phantom_frontal", "phantom_lateral"}
    assert all(bytes(image.value) == b"" for image in app.images.values()) and app.undo_button.disabled

    view = app.load(REPORT)
    assert app.text.value == REPORT and "generated in" in app.status.value and "32²" in app.status.value
    before = {name: bytes(image.value) for name, image in app.images.items()}
    assert all(data.startswith(PNG_MAGIC) for data in before.values())
    assert app.toggles == toggles(view) and len(app.toggle_buttons) == len(app.toggles)
    assert "pleural" in app.attention.value and "Present:" in app.findings.value
    assert app.last_response_s is not None and app.last_response_s >= view.seconds

    edited = app.apply("negate", "cardiomegaly")
    assert "applied negate cardiomegaly" in app.status.value and app.text.value == edited.text
    assert bytes(app.images["phantom_frontal"].value) != before["phantom_frontal"]
    assert not app.undo_button.disabled and "Heart size is normal." in app.findings.value
    assert "cardiomegaly" not in {t.kind for t in app.toggles if t.operation == "negate"}

    flip = next(button for toggle, button in app.toggle_buttons if toggle.operation == "flip_side")
    flip.click()  # the button's own callback
    assert "applied flip_side pleural_effusion right" in app.status.value
    app.undo_button.click()
    assert app.explorer.view is edited and app.text.value == edited.text
    app.reset_button.click()
    assert app.explorer.view.text == REPORT and app.reset_button.disabled
    # the rows' widgets are reused: clicking does not pile up widgets (a saved notebook stores them all)
    buttons = [button for _, button in app.toggle_buttons]
    count = _live_widgets()
    for _ in range(3):
        app.apply("negate", "pleural_effusion")
        app.undo()
    assert [button for _, button in app.toggle_buttons] == buttons and _live_widgets() == count

    with pytest.raises(EmptyReportError):
        app.load("   ")
    assert "could not generate" in app.status.value and "empty" in app.status.value
    app.text.value = ""
    app.generate_button.click()  # a callback shows the error instead of raising
    assert "could not generate" in app.status.value
    with pytest.raises(ReportError):
        app.apply("negate", "nodule")
    assert "could not generate" in app.status.value and "nodule" in app.status.value

    app.picker.value = 0  # picking a report loads it, into its case's patient
    assert app.explorer.view.text == OTHER and app.explorer.view.patient_seed == 11 and app.text.value == OTHER
    view = app.pick("main")
    assert app.picker.value == 1 and view.text == REPORT and view.patient_seed == 12


def test_the_app_of_a_report_without_findings(explorer):
    app = ExplorerApp(explorer)
    app.load("Normal chest.")
    assert len(app.toggle_box.children) == 1 and "No finding" in app.toggle_box.children[0].value


def test_bench_explorer_and_its_command(explorer, tmp_path, monkeypatch, capsys):
    import xrg.explorer
    from xrg.bench import bench_explorer
    from xrg.cli import main

    monkeypatch.setattr(xrg.explorer.ReportExplorer, "from_run", classmethod(lambda cls, run_dir, seed=0: explorer))
    data = _write_cases(tmp_path, [("", "x"), ("Mild cardiomegaly. Small left pleural effusion.", ""),
                                   ("The lungs are clear.", "")])  # fmt: skip
    result = bench_explorer("RUN", data_dir=str(data), n=2)
    actions = {row["action"]: row for row in result["rows"]}
    assert {"generate", "negate", "more severe", "flip side"} <= set(actions)
    assert actions["generate"]["n"] == 2 and actions["negate"]["n"] == 2  # both findings of the first report
    assert all(0 < row["median_s"] <= row["p90_s"] for row in result["rows"]) and result["image_size"] == 32
    out = capsys.readouterr().out
    assert "report explorer over RUN at 32²" in out and "generate" in out
    assert main(["bench", "explorer", "--run-dir", "RUN", "--n", "1"]) == 0
    assert "flip side" in capsys.readouterr().out  # the built-in reports
    monkeypatch.undo()
    assert main(["bench", "explorer", "--run-dir", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_snapshots_show_one_edit_of_each_kind_and_leave_the_report_as_it_was(explorer):
    import matplotlib

    matplotlib.use("Agg")
    from xrg.explorer import KINDS_OF_EDIT, action_name, one_of_each, plot_snapshots, snapshot_rows, snapshot_table

    original = explorer.generate(REPORT, patient_seed=3)
    chosen = one_of_each(original)
    assert chosen and len({action_name(t) for t in chosen}) == len(chosen)
    assert all(action_name(t) in KINDS_OF_EDIT for t in chosen)
    rows = snapshot_rows(explorer.edit, explorer.undo, original)
    assert [name for name, _, _ in rows] == ["as written"] + [t.description for t in chosen]
    assert all(view.edit is not None and change for _, change, view in rows[1:])
    assert explorer.view.text == original.text  # every edit was undone
    assert np.array_equal(explorer.view.frontal, original.frontal)
    figure = plot_snapshots(rows, "demo")
    assert len(figure.axes) == 4 * len(rows)
    table = snapshot_table(rows)
    assert list(table.index) == [name for name, _, _ in rows] and (table["response s"] > 0).all()
    matplotlib.pyplot.close(figure)
