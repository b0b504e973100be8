"""The comparison's reuse rule: a table row reuses a finished run only when it is the same run."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

from helpers import XRAYGAN_TINY, resealed, torch_threads, write_synthetic_data
from xrg import experiments
from xrg.checkpoint import CHECKPOINT_NAME, read_checkpoint
from xrg.experiments import REUSED_NAME, Experiment, reused_from, table_markdown
from xrg.profiles import load_profile
from xrg.train.runs import DATA_RECORD_NAME, data_fingerprint, ensure_run, reusable_run

#: One short stage pair without VCNs: seconds on the synthetic data.
CONFIG = dataclasses.replace(XRAYGAN_TINY, vc_weight=0.0, num_epochs=(1, 1), pretrain_epochs=0)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("showcase") / "xraygan"
    with torch_threads(1):
        ensure_run(CONFIG, data_dir, run, progress=False)
    return run


def test_a_run_trained_by_ensure_run_records_its_data(finished_run, data_dir):
    assert (finished_run / DATA_RECORD_NAME).is_file()
    assert data_fingerprint(data_dir) is not None
    assert reusable_run(finished_run, "xraygan", CONFIG, data_dir)[0]


def test_another_config_seed_data_or_an_unfinished_run_is_not_reused(finished_run, data_dir, tmp_path):
    ok, why = reusable_run(finished_run, "xraygan", dataclasses.replace(CONFIG, seed=CONFIG.seed + 1), data_dir)
    assert not ok and "seed" in why
    ok, why = reusable_run(finished_run, "xraygan", dataclasses.replace(CONFIG, lr=(1e-4, 1e-4)), data_dir)
    assert not ok and "lr" in why
    other_data = write_synthetic_data(tmp_path / "other-data", num_patients=30, seed=1)
    ok, why = reusable_run(finished_run, "xraygan", CONFIG, other_data)
    assert not ok and "another data build" in why

    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished_run, unfinished)
    payload = read_checkpoint(unfinished / CHECKPOINT_NAME)
    payload["progress"] = {**payload["progress"], "finished": False}
    torch.save(resealed(payload), unfinished / CHECKPOINT_NAME)
    ok, why = reusable_run(unfinished, "xraygan", CONFIG, data_dir)
    assert not ok and "unfinished" in why

    unrecorded = tmp_path / "unrecorded"
    shutil.copytree(finished_run, unrecorded)
    (unrecorded / DATA_RECORD_NAME).unlink()
    ok, why = reusable_run(unrecorded, "xraygan", CONFIG, data_dir)
    assert not ok and DATA_RECORD_NAME in why
    assert not reusable_run(tmp_path / "missing", "xraygan", CONFIG, data_dir)[0]


def test_the_xraygan_row_copies_the_same_run_instead_of_training_it(finished_run, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(experiments, "xraygan_config", lambda profile, method: CONFIG)
    experiment = Experiment.create("tiny", data_dir, tmp_path / "experiments", progress=False)
    experiment.reuse_runs = (finished_run,)
    run_dir = experiment.ensure_run("xraygan")
    assert (run_dir / CHECKPOINT_NAME).read_bytes() == (finished_run / CHECKPOINT_NAME).read_bytes()
    assert reused_from(run_dir) == str(finished_run.resolve()) and (run_dir / REUSED_NAME).is_file()
    assert experiment.ensure_run("xraygan") == run_dir  # now its own finished run
    summary = {"real": {}, "rows": {}, "profile": "tiny", "data_dir": str(data_dir),
               "runs": {"xraygan": {"reused_from": reused_from(run_dir)}}}  # fmt: skip
    assert f"XRayGAN: not trained again; the finished run `{finished_run.resolve()}` was reused" in table_markdown(
        summary
    )

    monkeypatch.setattr(experiments, "xraygan_config", lambda profile, method: dataclasses.replace(CONFIG, seed=5))
    assert experiment.reusable_source(dataclasses.replace(CONFIG, seed=5)) is None  # a different run is trained
    other = Experiment.create(load_profile("tiny"), data_dir, tmp_path / "elsewhere" / "experiments", progress=False)
    assert other.reuse_candidates() == [tmp_path / "elsewhere" / "xraygan"]  # the book's layout by default


def test_the_improved_row_needs_canonical_targets_and_is_left_out_with_the_reason_without_them(tmp_path):
    plain = write_synthetic_data(tmp_path / "plain", num_patients=10)
    canonical = write_synthetic_data(tmp_path / "canonical", num_patients=10, canonical=True)
    for table in experiments.TABLES:
        methods, left_out = Experiment.create("tiny", canonical, tmp_path / "out").table_methods(table)
        assert methods == experiments.TABLES[table] and left_out == {}
        methods, left_out = Experiment.create("tiny", plain, tmp_path / "out").table_methods(table)
        assert "xraygan_improved" not in methods and "xraygan" in methods
        assert set(left_out) == {"xraygan_improved"} and "--canonical-targets" in left_out["xraygan_improved"]
    config = experiments.xraygan_config(load_profile("cpu"), "xraygan_improved")
    paper = experiments.xraygan_config(load_profile("cpu"), "xraygan")
    assert config.rec_target == "canonical" and dataclasses.replace(config, rec_target="posed") == paper
    from xrg.config import config_to_dict
    from xrg.eval.generators import xraygan_method

    assert xraygan_method(config_to_dict(config)) == "xraygan_improved"
    with pytest.raises(experiments.ConfigError, match="unknown table"):
        Experiment.create("tiny", plain, tmp_path / "out").table_methods("table3")
