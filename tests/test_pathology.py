"""The search classifiers of latent class optimisation: trained on the train split, thresholds from
validation, a learning rate that drops on a plateau, the critic backbone, and their refusals.

The bit-exact resume is in tests/test_resume.py with every other trainer's."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from helpers import PGGAN_TINY, metric_rows, torch_threads, write_synthetic_data
from xrg.checkpoint import load_checkpoint
from xrg.data.findings import FINDING_KINDS
from xrg.errors import CheckpointError, ConfigError
from xrg.models.pggan import PGGAN, CriticClassifier
from xrg.profiles import load_profile
from xrg.train.pathology import (
    PathologyTrainConfig,
    classifier_name,
    load_search_classifier,
    train_pathology_classifier,
)
from xrg.train.pggan import PGGANTrainer

DENSENET = PathologyTrainConfig(image_size=32, num_epochs=2, batch_size=6, seed=1)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """30 synthetic patients at 32² whose reports carry cardiomegaly and opacity labels (18 train, 6 val, 6 test)."""
    return write_synthetic_data(tmp_path_factory.mktemp("labelled"), num_patients=30, image_size=32, labelled=True)


@pytest.fixture(scope="module")
def pggan_run(labelled, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pggan") / "run"
    assert PGGANTrainer(PGGAN_TINY, labelled, run, progress=False).train().finished
    return run


def test_the_densenet_is_fitted_on_train_and_thresholded_on_validation(labelled, tmp_path):
    model, metrics, path = train_pathology_classifier(labelled, DENSENET, tmp_path, progress=False)
    assert path == tmp_path / classifier_name("densenet") and path.is_file()
    assert metrics["num_train"] == 18 and metrics["num_val"] == 6 and metrics["num_test"] == 6
    thresholds = metrics["thresholds"]
    # a threshold only where validation has positives and negatives, a logit beside each probability
    defined = {name for name, value in thresholds.items() if value is not None}
    assert defined <= {"cardiomegaly", "opacity"} and defined
    for name in defined:
        p = thresholds[name]
        assert metrics["threshold_logits"][name] == pytest.approx(
            torch.logit(torch.tensor(p)).clamp(-20, 20).item(), abs=1e-4
        )
    assert metrics["val_auroc"]["pleural_effusion"] is None
    rows = [row for row in metric_rows(tmp_path) if row["kind"] == "classifier"]
    assert [row["epoch"] for row in rows] == [0, 1] and all(row["backbone"] == "densenet" for row in rows)

    classifier = load_search_classifier(path)
    assert classifier.class_names == FINDING_KINDS and classifier.input_size == 32
    assert (
        classifier.thresholds[FINDING_KINDS.index("pleural_effusion")] == 20.0
    )  # no threshold: unreachable, never a guess
    logits = classifier.logits(torch.zeros(2, 1, 64, 64))  # generated images of another size are resized
    assert logits.shape == (2, len(FINDING_KINDS))
    assert not any(p.requires_grad for p in classifier.network.parameters())


def test_the_learning_rate_drops_when_validation_auroc_stops_improving(labelled, tmp_path):
    # a learning rate too small to change the validation AUROC: a plateau from the second epoch
    config = dataclasses.replace(DENSENET, lr=1e-12, num_epochs=3, plateau_patience=0, plateau_factor=0.5)
    train_pathology_classifier(labelled, config, tmp_path, progress=False)
    rows = [row for row in metric_rows(tmp_path) if row["kind"] == "classifier"]
    assert [row["lr"] for row in rows] == pytest.approx([1e-12, 5e-13, 2.5e-13])


def test_the_critic_backbone_starts_from_the_trained_pggan_critic(labelled, pggan_run, tmp_path):
    pggan = PGGAN(PGGAN_TINY.model)
    pggan.load_checkpoint_state(load_checkpoint(pggan_run / "checkpoint.pt", "pggan")["state"])
    start = CriticClassifier.from_critic(pggan.critic, len(FINDING_KINDS))
    for name, tensor in start.critic.state_dict().items():
        assert torch.equal(tensor, pggan.critic.state_dict()[name])
    config = PathologyTrainConfig(backbone="critic", num_epochs=1, batch_size=6)
    model, metrics, path = train_pathology_classifier(
        labelled, config, tmp_path, pggan_checkpoint=pggan_run / "checkpoint.pt", progress=False
    )
    assert isinstance(model, CriticClassifier) and metrics["input_size"] == 16 and path.name == "search_critic.pt"
    trained = model.critic.state_dict()
    assert any(
        not torch.equal(trained[name], tensor) for name, tensor in start.critic.state_dict().items()
    )  # end to end
    classifier = load_search_classifier(path)
    assert classifier.input_size == 16 and classifier.logits(torch.zeros(3, 1, 16, 16)).shape == (3, len(FINDING_KINDS))


def test_bad_requests_are_refused_by_name(labelled, pggan_run, tmp_path):
    with pytest.raises(ConfigError, match="needs the PGGAN run"):
        train_pathology_classifier(labelled, PathologyTrainConfig(backbone="critic"), tmp_path, progress=False)
    with pytest.raises(ConfigError, match="backbone must be one of"):
        PathologyTrainConfig(backbone="resnet")
    stopped = tmp_path / "stopped"
    PGGANTrainer(PGGAN_TINY, labelled, stopped, progress=False).train(max_steps=1)
    with pytest.raises(CheckpointError, match="stopped PGGAN training"):
        train_pathology_classifier(
            labelled,
            PathologyTrainConfig(backbone="critic"),
            tmp_path,
            pggan_checkpoint=stopped / "checkpoint.pt",
            progress=False,
        )
    no_val = write_synthetic_data(tmp_path / "noval", num_patients=3, image_size=32, labelled=True)  # train cases only
    with pytest.raises(ConfigError, match="no val split"):
        train_pathology_classifier(no_val, DENSENET, tmp_path / "out", progress=False)
    with pytest.raises(CheckpointError, match="not a search classifier"):
        load_search_classifier(_evaluation_like_classifier(tmp_path))


def _evaluation_like_classifier(tmp_path: Path) -> Path:
    """A finding-classifier checkpoint without search thresholds (as the evaluators write them)."""
    from xrg.data.reports import Vocabulary
    from xrg.models.classifier import FindingClassifier

    path = tmp_path / "classifier.pt"
    FindingClassifier().save(path, run_config=DENSENET, vocabulary=Vocabulary.build(["a b"]), metrics={})
    return path


def test_every_profile_builds_both_backbones():
    for name in ("tiny", "cpu", "paper"):
        profile = load_profile(name)
        assert PathologyTrainConfig.from_profile(profile, "densenet").backbone == "densenet"
        assert PathologyTrainConfig.from_profile(profile, "critic").backbone == "critic"
