"""Notebooks: jupytext pairs in sync, and a papermill smoke run of each with tiny parameters."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jupytext
import nbformat
import pytest

from xrg.book import NOTEBOOKS_DIR, execute_notebook, notebook_names, notebook_parameters

PAIRS = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.py"))


def _cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source.strip()) for cell in notebook.cells]


@pytest.mark.parametrize("script", PAIRS, ids=[p.stem for p in PAIRS])
def test_py_and_ipynb_pairs_agree(script: Path):
    paired = script.with_suffix(".ipynb")
    assert paired.is_file(), f"{script.name} has no paired .ipynb; run `jupytext --sync {script}`"
    from_py = jupytext.read(script)
    from_ipynb = nbformat.read(paired, as_version=4)
    assert _cells(from_py) == _cells(from_ipynb), f"{script.name} and {paired.name} disagree; run jupytext --sync"
    tags = [cell.metadata.get("tags", []) for cell in from_ipynb.cells]
    assert sum("parameters" in t for t in tags) == 1, "exactly one papermill parameters cell"
    for cell in from_ipynb.cells:
        assert not cell.get("outputs"), f"{paired.name} is committed with outputs; commit it unexecuted"


def test_parameters_cells_parse_as_papermill_reads_them():
    """Every name in a parameters cell is one papermill sees (a comment it cannot parse drops it)."""
    import papermill

    for script in PAIRS:
        cell = next(c for c in jupytext.read(script).cells if "parameters" in c.metadata.get("tags", []))
        names = {m.group(1) for m in re.finditer(r"^(\w+)\s*:\s*\w+\s*=", cell.source, flags=re.M)}
        declared = set(papermill.inspect_notebook(str(script.with_suffix(".ipynb"))))
        assert names == declared, f"{script.name}: papermill reads {sorted(declared)} from {sorted(names)}"


SMOKE_TESTED = {
    "01_data",
    "02_encoder",
    "03_vcn",
    "04_xraygan",
    "05_evaluation",
    "06_baselines_ablations",
    "07_pggan_latent",
    "08_diffusevae_moco",
    "09_report_explorer",
    "10_performance",
    "99_provenance",
}


def test_every_notebook_has_a_smoke_test():
    assert set(notebook_names()) == SMOKE_TESTED, "add a smoke test for each new notebook"


def glued(notebook_path: Path) -> dict[str, object]:
    """Values a notebook glued with myst-nb, by key."""
    values = {}
    for cell in nbformat.read(notebook_path, as_version=4).cells:
        for output in cell.get("outputs", []):
            meta = output.get("metadata", {}).get("scrapbook")
            if meta:
                values[meta["name"]] = output["data"].get(meta.get("mime_prefix", "") + "text/plain")
    return values


def errors(notebook_path: Path) -> list[str]:
    return [
        output.get("ename", "")
        for cell in nbformat.read(notebook_path, as_version=4).cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]


def executed(tiny_book, notebook: str) -> Path:
    path = Path(tiny_book["executed"]) / f"{notebook}.ipynb"
    assert path.is_file(), f"the tiny book did not execute {notebook}"
    return path


@pytest.mark.slow
def test_the_tiny_book_executes_every_notebook_and_records_provenance(tiny_book):
    from xrg.notebook import executed_provenance

    for notebook in notebook_names():
        assert not errors(executed(tiny_book, notebook)), f"{notebook} has error outputs"
    rows = executed_provenance(tiny_book["executed"], exclude=("99_provenance",))
    assert [row["notebook"] for row in rows] == [n for n in notebook_names() if n != "99_provenance"]
    for row in rows:
        assert row["recorded"], f"{row['notebook']} does not call run.finish()"
        assert row["profile"] == "tiny" and row["seed"] == 0 and row["device"] == "cpu"
        assert row["wall_seconds"] > 0 and row["code_version"]
        assert row["params"]["data_dir"] == str(tiny_book["data"])


@pytest.mark.slow
def test_01_data_runs_with_tiny_parameters(tiny_book):
    values = glued(executed(tiny_book, "01_data"))
    assert int(values["n_reports"]) > 3300  # the whole embedded Open-i corpus is read
    assert int(values["n_cases"]) == 40  # the tiny profile's data
    assert 0.0 <= float(values["labeller_micro_f1"]) <= 1.0


@pytest.mark.slow
def test_xraygan_notebooks_run_with_tiny_parameters(tiny_book):
    assert float(glued(executed(tiny_book, "02_encoder"))["encoder_padding_max_diff"]) < 1e-5
    vcn = glued(executed(tiny_book, "03_vcn"))
    assert 0.0 <= float(vcn["vcn_test_auroc"]) <= 1.0 and 0.0 < float(vcn["vcn_real_vc"]) < 1.0
    xraygan = glued(executed(tiny_book, "04_xraygan"))
    assert 0.0 < float(xraygan["xraygan_generated_vc"]) < 1.0
    # the canonical-target row's pairs, and one report edited (up to) three ways
    assert 1 <= int(xraygan["xraygan_improved_num_edits"]) <= 3
    assert (Path(tiny_book["runs"]) / "experiments" / "xraygan_improved" / "checkpoint.pt").is_file()
    # Trained once by the first notebook that needed it, found by the others.
    assert (Path(tiny_book["runs"]) / "xraygan" / "checkpoint.pt").is_file()


@pytest.mark.slow
def test_05_evaluation_runs_with_tiny_parameters(tiny_book):
    values = glued(executed(tiny_book, "05_evaluation"))
    assert float(values["eval_fid"]) >= 0.0
    assert 0.0 < float(values["eval_vc_generated"]) < 1.0 and 0.0 < float(values["eval_vc_real"]) < 1.0
    assert -1.0 <= float(values["eval_ssim_frontal"]) <= 1.0
    assert float(values["eval_memorisation_ratio"]) > 0.0
    eval_json = json.loads((Path(tiny_book["runs"]) / "xraygan" / "eval.json").read_text())
    manifest = (Path(tiny_book["data"]) / "manifest.jsonl").read_text().splitlines()
    assert eval_json["num_reports"] == sum(json.loads(line)["split"] == "test" for line in manifest)


@pytest.mark.slow
def test_06_baselines_ablations_runs_with_tiny_parameters(tiny_book):
    values = glued(executed(tiny_book, "06_baselines_ablations"))
    experiment = Path(tiny_book["runs"]) / "experiments"
    for table, methods in (
        ("table1", ("gan_int_cls", "stackgan", "attngan", "xraygan", "xraygan_improved")),
        ("table2", ("xraygan_no_vcn", "xraygan_no_mscgan", "xraygan_no_hae", "xraygan", "xraygan_improved")),
    ):
        for method in methods:
            assert float(values[f"{table}_{method}_fid"]) >= 0.0
            assert 0.0 < float(values[f"{table}_{method}_vc"]) < 1.0
        assert (experiment / f"{table}.md").is_file()
    summary = json.loads((experiment / "table1.json").read_text())
    assert set(summary["rows"]) == {"gan_int_cls", "stackgan", "attngan", "xraygan", "xraygan_improved"}
    assert summary["left_out"] == {}  # the book's data build has canonical-pose targets


@pytest.mark.slow
def test_09_report_explorer_runs_with_tiny_parameters(tiny_book):
    path = executed(tiny_book, "09_report_explorer")
    values = glued(path)
    assert 0.0 < float(values["explorer_response_s"]) < 30.0
    assert int(values["explorer_num_edits"]) >= 1
    state = nbformat.read(path, as_version=4).metadata["widgets"]["application/vnd.jupyter.widget-state+json"]
    models = {model["model_name"] for model in state["state"].values()}
    assert {"ImageModel", "TextareaModel", "ButtonModel"} <= models, f"saved widget models: {sorted(models)}"


@pytest.mark.slow
def test_07_pggan_latent_runs_with_tiny_parameters(tiny_book):
    path = executed(tiny_book, "07_pggan_latent")
    values = glued(path)
    assert int(values["pggan_final_size"]) == 32
    assert float(values["pggan_train_s"]) > 0.0 and float(values["pggan_train_min"]) >= 0.0
    assert int(values["latent_num_offered"]) >= 1  # the tiny profile offers every finding with a test positive
    for key in ("latent_success_densenet121_none", "latent_confirmed_densenet121_none", "latent_success_pggan_norm"):
        assert 0.0 <= float(values[key]) <= 1.0, key
    assert float(values["latent_fid_stratified"]) >= 0.0 and float(values["latent_fid_synthetic"]) > 0.0
    assert int(values["latent_archive_size"]) >= 8  # the uncurated samples at least
    assert 0.0 < float(values["latent_response_s"]) < 30.0
    state = nbformat.read(path, as_version=4).metadata["widgets"]["application/vnd.jupyter.widget-state+json"]
    models = {model["model_name"] for model in state["state"].values()}
    assert {"ImageModel", "FloatSliderModel", "DropdownModel", "ButtonModel"} <= models, sorted(models)


@pytest.mark.slow
def test_08_diffusevae_moco_runs_with_tiny_parameters(tiny_book):
    values = glued(executed(tiny_book, "08_diffusevae_moco"))
    assert int(values["dv_image_size"]) == 32 and float(values["dv_train_s"]) > 0.0
    for stage in ("vae", "moco", "ddpm", "finetune"):
        assert float(values[f"dv_train_{stage}_s"]) > 0.0, stage
    assert int(values["dv_num_conditions"]) >= 1
    for key in ("dv_knn_clustered", "dv_knn_plain", "dv_knn_chance"):
        assert 0.0 <= float(values[key]) <= 1.0, key
    assert 0.0 <= float(values["dv_rep_before"]) <= 2.0 and 0.0 <= float(values["dv_rep_after"]) <= 2.0
    assert -1.0 <= float(values["dv_detection_real"]) <= 1.0 and int(values["dv_report_cases"]) >= 2
    assert float(values["dv_speed_ddim_fast"]) > float(values["dv_speed_ancestral"]) > 0.0
    # the sampler chosen on validation is one of the settings tried (tiny: speed_steps [2, 3], η 0 or 1)
    assert int(values["dv_eval_steps"]) in (2, 3) and float(values["dv_eval_eta"]) in (0.0, 1.0)
    assert 0.0 <= float(values["dv_rep_mean"]) <= 2.0 and 0.0 <= float(values["dv_rep_retrieval"]) <= 2.0


@pytest.mark.slow
def test_10_performance_measures_phases_batches_processes_and_operators(tiny_book):
    values = glued(executed(tiny_book, "10_performance"))
    assert float(values["perf_gan_images_per_s"]) > 0.0 and int(values["perf_gan_image_size"]) == 32
    assert float(values["perf_gan_gflop_per_image"]) > 0.0
    assert 0.0 < float(values["perf_best_percent_of_peak"]) < 100.0
    assert float(values["perf_process_speedup"]) > 0.0 and int(values["perf_processes_max"]) == 2
    assert 0.0 < float(values["perf_conv_percent"]) < 100.0
    assert int(values["perf_speedup_size"]) == 32
    assert float(values["perf_speedup_float32"]) > 0.0 and float(values["perf_speedup_fast"]) > 0.0


@pytest.mark.slow
def test_the_evaluators_are_made_before_any_notebook_reads_them(tiny_book):
    # run_book makes them first; 05-08 then only load them (none of them trains a classifier).
    from datetime import datetime

    assert tiny_book["timings"]["evaluators"] > 0.0
    classifier = Path(tiny_book["runs"]) / "experiments" / "evaluators" / "classifier.pt"
    made = classifier.stat().st_mtime
    for name in ("05_evaluation", "06_baselines_ablations", "07_pggan_latent", "08_diffusevae_moco"):
        metadata = nbformat.read(executed(tiny_book, name), as_version=4).metadata
        started = datetime.fromisoformat(metadata["papermill"]["start_time"]).timestamp()
        assert made < started, f"{name} started before the evaluators were made"


@pytest.mark.slow
def test_99_provenance_tabulates_the_run(tiny_book):
    values = glued(executed(tiny_book, "99_provenance"))
    assert int(values["run_num_notebooks"]) == len(notebook_names()) - 1
    assert values["run_profile"].strip("'") == "tiny" and values["run_devices"].strip("'") == "cpu"
    assert float(values["run_total_minutes"]) > 0.0
    assert int(values["run_num_cases"]) == 40


@pytest.mark.slow
def test_rerunning_the_book_with_nothing_changed_executes_nothing(tiny_book):
    from xrg.book import run_book

    paths = Path(tiny_book["executed"]), Path(tiny_book["data"]).parent, Path(tiny_book["runs"]).parent
    timings = run_book("tiny", executed_dir=paths[0], data_root=paths[1], runs_root=paths[2], progress=False)
    assert {name: seconds for name, seconds in timings.items() if name not in ("data", "evaluators")} == dict.fromkeys(
        notebook_names(), 0.0
    )
    # A changed chapter makes the provenance page stale, and only it is executed again.
    chapter = paths[0] / "03_vcn.ipynb"
    notebook = nbformat.read(chapter, as_version=4)
    notebook.metadata["touched_by_test"] = True
    nbformat.write(notebook, chapter)
    timings = run_book(
        "tiny", only=["03_vcn"], executed_dir=paths[0], data_root=paths[1], runs_root=paths[2], progress=False
    )
    assert timings["03_vcn"] == 0.0 and timings["99_provenance"] > 0.0


def test_bad_notebook_parameters_fail_at_once(tmp_path):
    import papermill

    for bad, name in (
        ({"data_dir": str(tmp_path / "missing")}, "data_dir"),
        ({"profile": "nonesuch"}, "profile"),
        ({"seed": -3}, "seed"),
    ):
        params = notebook_parameters("tiny", "01_data")
        params.update(bad)
        with pytest.raises(papermill.PapermillExecutionError, match=name):
            execute_notebook("01_data", params, output_dir=tmp_path, progress=False)
        assert not (tmp_path / "01_data.ipynb").exists()  # a failed run never lands under the final name
        assert (tmp_path / "01_data.failed.ipynb").is_file()


def test_unknown_parameters_are_refused(tmp_path):
    from xrg.book import run_book
    from xrg.errors import ConfigError

    with pytest.raises(ConfigError, match="declares only"):
        notebook_parameters("tiny", "03_vcn", {"03_vcn": {"num_epoch": 3}})
    params_file = tmp_path / "params.yaml"
    params_file.write_text("03_vnc: {seed: 1}\n")
    with pytest.raises(ConfigError, match="unknown notebooks"):
        run_book("tiny", params_file=params_file, executed_dir=tmp_path, data_root=tmp_path, runs_root=tmp_path)
