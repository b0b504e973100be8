"""Pathology samples from a PGGAN: PNGs and a manifest of both classifiers, the independent
evaluator's confirmation, and the command line (train pathology, pggan sample)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from helpers import PGGAN_TINY, torch_threads, write_synthetic_data
from test_latent_search import toy_network
from xrg.cli import main
from xrg.data.findings import FINDING_KINDS
from xrg.errors import ConfigError, DataDirError
from xrg.eval.evaluators import COHORT_DIR, ClassifierTrainConfig
from xrg.latent.evaluate import search_rates
from xrg.latent.sample import MANIFEST_NAME, confirming_classifier, judged_searches, sample_pathology, summary
from xrg.latent.search import SearchClassifier
from xrg.models.pggan import PGGAN
from xrg.train.evaluators import train_classifier
from xrg.train.pggan import PGGANTrainer


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    return write_synthetic_data(tmp_path_factory.mktemp("labelled"), num_patients=30, image_size=32, labelled=True)


@pytest.fixture(scope="module")
def pggan_run(labelled, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pggan") / "run"
    assert PGGANTrainer(PGGAN_TINY, labelled, run, progress=False).train().finished
    return run


def toy(thresholds: tuple[float, float]) -> SearchClassifier:
    return SearchClassifier(toy_network, ("bright", "top"), thresholds=thresholds, input_size=8)


def test_found_images_are_written_and_every_search_is_in_the_manifest(pggan_run, tmp_path):
    model = PGGAN.from_checkpoint(pggan_run / "checkpoint.pt")
    # the search wants 'bright'; the evaluator agrees on 'bright' at a lower bar, never on 'top'
    evaluator = toy((-50.0, 50.0))
    records = sample_pathology(model, toy((0.0, 0.0)), "bright", tmp_path, n=3, seed=5, evaluator=evaluator,
                               max_steps=40, lr=0.5)  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / MANIFEST_NAME).read_text().splitlines()]
    assert [line["seed"] for line in lines] == [5, 6, 7] and len(records) == 3
    for line in lines:
        assert set(line["search_logits"]) == {"bright", "top"}
        if line["success"]:
            assert (tmp_path / line["image"]).is_file() and line["search_logits"]["bright"] >= 0.0
            assert line["confirmed"] is True and line["evaluator_threshold"] == pytest.approx(0.0, abs=1e-12)
            assert set(line["evaluator_probabilities"]) == {"bright", "top"}
        else:
            assert line["image"] is None and line["confirmed"] is None and line["steps"] == 40
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(line["image"] for line in lines if line["success"])
    figures = summary(records, evaluated=True)
    assert figures["searches"] == 3 and figures["search_success_rate"] == sum(r.success for r in records) / 3
    assert figures["confirmed_rate"] == figures["search_success_rate"]

    # an evaluator that never agrees: the search still passes, the confirmed rate is 0 — a gap, not hidden
    sceptic = sample_pathology(model, toy((0.0, 0.0)), "bright", tmp_path / "sceptic", n=3, seed=5,
                               evaluator=toy((50.0, 50.0)), max_steps=40, lr=0.5)  # fmt: skip
    assert [r.success for r in sceptic] == [r.success for r in records]
    assert summary(sceptic, evaluated=True)["confirmed_rate"] == 0.0
    assert summary(sceptic, evaluated=False)["confirmed_rate"] is None


def test_the_confirming_evaluator_thresholds_on_its_cohorts_held_out_part(labelled, tmp_path):
    evaluators = tmp_path / "evaluators"
    shutil.copytree(labelled, evaluators / COHORT_DIR)  # a cohort to train and threshold on
    train_classifier(evaluators / COHORT_DIR, ClassifierTrainConfig(image_size=32, num_epochs=1, batch_size=6), evaluators,
                     progress=False)  # fmt: skip
    judge = confirming_classifier(evaluators)
    assert judge.class_names == FINDING_KINDS and judge.input_size == 32
    # a finding without positives on the cohort's held-out part is never confirmed
    assert judge.thresholds[FINDING_KINDS.index("pneumothorax")] == 20.0
    assert judge.logits(torch.zeros(2, 1, 16, 16)).shape == (2, len(FINDING_KINDS))
    with pytest.raises(DataDirError, match="holds no evaluation classifier"):
        confirming_classifier(tmp_path / "nothing")


def test_the_command_line_trains_a_search_classifier_and_samples_a_finding(labelled, pggan_run, tmp_path, capsys):
    search = tmp_path / "search"
    assert main(["train", "pathology", "--profile", "tiny", "--data", str(labelled), "--out", str(search), "--quiet",
                 "--set", "num_epochs=1", "--set", "batch_size=6"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "search_densenet.pt" in printed and "cardiomegaly" in printed
    common = ["pggan", "sample", "--checkpoint", str(pggan_run), "--classifier", str(search / "search_densenet.pt"),
              "--n", "2", "--max-steps", "3"]  # fmt: skip
    out = tmp_path / "samples"
    assert main(common + ["--class", "effusion", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "unknown class 'effusion'; the classes are: cardiomegaly, pleural_effusion" in error
    assert not out.exists()  # refused before anything was written
    with pytest.raises(SystemExit) as refused:
        main(common + ["--class", "cardiomegaly", "--severity", "1.5", "--out", str(out)])
    assert refused.value.code == 2
    assert "must be in (0, 1)" in capsys.readouterr().err
    assert main(common + ["--class", "cardiomegaly", "--out", str(out)]) == 0
    assert "search_success_rate" in capsys.readouterr().out
    lines = [json.loads(line) for line in (out / MANIFEST_NAME).read_text().splitlines()]
    assert len(lines) == 2 and all(line["class_name"] == "cardiomegaly" for line in lines)
    assert len(list(out.glob("*.png"))) == sum(line["success"] for line in lines)
    assert all(line["steps"] <= 3 for line in lines)
    assert main(["train", "pathology", "--backbone", "critic", "--profile", "tiny", "--data", str(labelled),
                 "--out", str(tmp_path / "critic")]) == 2  # fmt: skip
    assert "--pggan RUN" in capsys.readouterr().err
    # the explorer benchmark over the same run and classifier prints median and p90 per response
    assert main(["bench", "pggan-explorer", "--run-dir", str(pggan_run), "--classifier", str(search / "search_densenet.pt"),
                 "--repeats", "1", "--max-steps", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "PGGAN latent explorer" in printed and "at 16²" in printed
    for response in ("new patient", "move", "undo", "series", "find"):
        assert re.search(rf"^{response}\s+1\s+\d+\.\d{{3}}\s+\d+\.\d{{3}}$", printed, flags=re.M), response


def test_judged_searches_count_what_the_evaluator_confirms(pggan_run):
    model = PGGAN.from_checkpoint(pggan_run / "checkpoint.pt")
    always, never = toy((-20.0, -20.0)), toy((20.0, 20.0))  # a search passes at step 0 / never passes
    lines = judged_searches(model, always, ["bright"], evaluator=always, n=3, max_steps=2, batch=2)
    assert [line["index"] for line in lines["bright"]] == [0, 1, 2]
    assert all(line["success"] and line["steps"] == 0 and line["confirmed"] for line in lines["bright"])
    rates = search_rates(judged_searches(model, always, ["bright"], evaluator=never, n=3, max_steps=2))
    assert rates["bright"] == {"searches": 3, "success_rate": 1.0, "confirmed_rate": 0.0, "median_steps": 0,
                               "passed_at_start_rate": 1.0, "confirmed_at_start_rate": 0.0}  # fmt: skip
    failed = search_rates(judged_searches(model, never, ["top"], evaluator=always, n=2, max_steps=2))
    assert failed["top"]["success_rate"] == 0.0 and failed["top"]["median_steps"] is None
    # the controls: the starting images, judged before any step
    assert failed["top"]["passed_at_start_rate"] == 0.0 and failed["top"]["confirmed_at_start_rate"] == 1.0
    with pytest.raises(ConfigError, match="unknown class"):
        judged_searches(model, always, ["effusion"], n=1)
