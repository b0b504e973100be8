"""Notebooks: jupytext pairs in sync, and a papermill smoke run of each with tiny parameters."""

from __future__ import annotations

import json
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


def test_every_notebook_has_a_smoke_test():
    assert set(notebook_names()) == {
        "01_data", "02_encoder", "03_vcn", "04_xraygan", "05_evaluation", "06_baselines_ablations"
    }, (
        "add a smoke test for each new notebook"
    )


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


@pytest.mark.slow
def test_01_data_runs_with_tiny_parameters(tiny_data, tmp_path):
    params = notebook_parameters("tiny", "01_data")
    params.update(data_dir=str(tiny_data), gallery_size=32, agreement_reports=60)
    executed = execute_notebook("01_data", params, output_dir=tmp_path)
    assert not errors(executed)
    values = glued(executed)
    assert int(values["n_reports"]) > 3300  # the whole embedded Open-i corpus is read
    assert int(values["n_cases"]) == 12
    assert 0.0 <= float(values["labeller_micro_f1"]) <= 1.0


def test_bad_notebook_parameters_fail_at_once(tmp_path):
    import papermill

    params = notebook_parameters("tiny", "01_data")
    params.update(data_dir=str(tmp_path / "missing"))
    with pytest.raises(papermill.PapermillExecutionError, match="data_dir"):
        execute_notebook("01_data", params, output_dir=tmp_path)


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory):
    """The tiny profile's XRayGAN run (VCNs included) on the 12-case dataset."""
    from xrg.train.runs import ensure_xraygan_run

    run_dir = tmp_path_factory.mktemp("tiny-run")
    ensure_xraygan_run("tiny", tiny_data, run_dir, progress=False)
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("notebook", ["02_encoder", "03_vcn", "04_xraygan"])
def test_xraygan_notebooks_run_with_tiny_parameters(notebook, tiny_data, tiny_run, tmp_path):
    params = notebook_parameters("tiny", notebook)
    params.update(data_dir=str(tiny_data), run_dir=str(tiny_run))
    executed = execute_notebook(notebook, params, output_dir=tmp_path)
    assert not errors(executed)
    values = glued(executed)
    if notebook == "02_encoder":
        assert float(values["encoder_padding_max_diff"]) < 1e-5
    if notebook == "03_vcn":
        assert 0.0 <= float(values["vcn_test_auroc"]) <= 1.0 and 0.0 < float(values["vcn_real_vc"]) < 1.0
    if notebook == "04_xraygan":
        assert 0.0 < float(values["xraygan_generated_vc"]) < 1.0
    # Re-running finds the finished run instead of training again.
    assert (tiny_run / "checkpoint.pt").is_file()


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """The experiment directory shared by the evaluation notebooks: evaluators, one run per method."""
    return tmp_path_factory.mktemp("tiny-experiment")


@pytest.mark.slow
def test_05_evaluation_runs_with_tiny_parameters(tiny_data, tiny_run, tiny_experiment, tmp_path):
    params = notebook_parameters("tiny", "05_evaluation")
    params.update(data_dir=str(tiny_data), run_dir=str(tiny_run), experiment_dir=str(tiny_experiment))
    executed = execute_notebook("05_evaluation", params, output_dir=tmp_path)
    assert not errors(executed)
    values = glued(executed)
    assert float(values["eval_fid"]) >= 0.0
    assert 0.0 < float(values["eval_vc_generated"]) < 1.0 and 0.0 < float(values["eval_vc_real"]) < 1.0
    assert -1.0 <= float(values["eval_ssim_frontal"]) <= 1.0
    assert float(values["eval_memorisation_ratio"]) > 0.0
    eval_json = json.loads((tiny_run / "eval.json").read_text())
    assert eval_json["num_reports"] == len([1 for line in (tiny_data / "manifest.jsonl").read_text().splitlines()
                                            if json.loads(line)["split"] == "test"])


@pytest.mark.slow
def test_06_baselines_ablations_runs_with_tiny_parameters(tiny_data, tiny_experiment, tmp_path):
    params = notebook_parameters("tiny", "06_baselines_ablations")
    params.update(data_dir=str(tiny_data), experiment_dir=str(tiny_experiment), num_examples=1)
    executed = execute_notebook("06_baselines_ablations", params, output_dir=tmp_path)
    assert not errors(executed)
    values = glued(executed)
    for table, methods in (("table1", ("gan_int_cls", "stackgan", "attngan", "xraygan")),
                           ("table2", ("xraygan_no_vcn", "xraygan_no_mscgan", "xraygan_no_hae", "xraygan"))):
        for method in methods:
            assert float(values[f"{table}_{method}_fid"]) >= 0.0
            assert 0.0 < float(values[f"{table}_{method}_vc"]) < 1.0
        assert (tiny_experiment / f"{table}.md").is_file()
    summary = json.loads((tiny_experiment / "table1.json").read_text())
    assert set(summary["rows"]) == {"gan_int_cls", "stackgan", "attngan", "xraygan"}
