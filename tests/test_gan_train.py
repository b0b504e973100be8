"""GAN-train: the synthetic archive the search makes, and the two classifiers trained on it and on real images."""

from __future__ import annotations

import pytest
import torch

from helpers import torch_threads
from xrg.data.findings import FINDING_KINDS
from xrg.errors import ConfigError
from xrg.latent.gan_train import fit_classifier, gan_train_table, synthetic_archive
from xrg.latent.search import SearchClassifier
from xrg.models.pggan import PGGAN, PGGANModelConfig
from xrg.train.pathology import per_class_auroc, predict_logits

BRIGHT, TOP = "cardiomegaly", "pleural_effusion"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def toy_network(x: torch.Tensor) -> torch.Tensor:
    """Logits for every finding: 'cardiomegaly' = bright image, 'pleural_effusion' = brighter top half, the rest never."""
    logits = torch.full((len(x), len(FINDING_KINDS)), -10.0)
    bright = (x.mean(dim=(1, 2, 3)) - 0.5) * 20
    top = (x[:, :, : x.shape[2] // 2].mean(dim=(1, 2, 3)) - x[:, :, x.shape[2] // 2 :].mean(dim=(1, 2, 3))) * 20
    logits = logits.clone()
    logits[:, FINDING_KINDS.index(BRIGHT)] = bright
    logits[:, FINDING_KINDS.index(TOP)] = top
    return logits


CLASSIFIER = SearchClassifier(toy_network, FINDING_KINDS, [0.5] * len(FINDING_KINDS), input_size=16)


@pytest.fixture(scope="module")
def model() -> PGGAN:
    torch.manual_seed(0)
    return PGGAN(PGGANModelConfig(final_size=16, latent_dim=8, channel_base=128, max_channels=16)).for_inference()


def test_the_archive_labels_every_found_image_with_its_class_and_adds_uncurated_ones(model):
    archive = synthetic_archive(model, CLASSIFIER, [BRIGHT, TOP], per_class=6, uncurated=5, max_steps=40, lr=0.5,
                                batch=4, progress=False)  # fmt: skip
    assert archive.attempts == {BRIGHT: 6, TOP: 6}
    assert sum(archive.found.values()) + 5 == len(archive.images) == len(archive.labels) == len(archive.searched_for)
    assert archive.found[BRIGHT] > 0
    assert archive.images.shape[1:] == (1, 16, 16) and 0 <= archive.images.min() and archive.images.max() <= 1
    for label, name in zip(archive.labels, archive.searched_for):
        if name:
            assert label[FINDING_KINDS.index(name)] == 1  # it passed the threshold of its class
    assert archive.searched_for.count("") == 5
    # labels are the classifier's decisions on the stored images
    expected = (toy_network(archive.images) >= 0.5).float()
    assert torch.equal(archive.labels, expected)
    again = synthetic_archive(model, CLASSIFIER, [BRIGHT, TOP], per_class=6, uncurated=5, max_steps=40, lr=0.5,
                              batch=4, progress=False)  # fmt: skip
    assert torch.equal(archive.images, again.images)  # seeded


def test_an_archive_needs_a_class_and_sane_counts(model):
    with pytest.raises(ConfigError, match="at least one class"):
        synthetic_archive(model, CLASSIFIER, [], progress=False)
    with pytest.raises(ConfigError, match="per_class"):
        synthetic_archive(model, CLASSIFIER, [BRIGHT], per_class=0, progress=False)
    with pytest.raises(ConfigError, match="unknown class"):
        synthetic_archive(model, CLASSIFIER, ["no such finding"], per_class=1, uncurated=0, progress=False)


def _bright_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images, half of them brighter: label 'cardiomegaly' says which."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, len(FINDING_KINDS))
    labels[: n // 2, FINDING_KINDS.index(BRIGHT)] = 1
    images = (torch.rand(n, 1, 32, 32, generator=g) * 0.5 + 0.25 * labels[:, :1, None, None]).clamp(0, 1)
    return images, labels


def test_fit_classifier_learns_a_separable_finding():
    images, labels = _bright_images(64, seed=0)
    model = fit_classifier(images, labels, size=32, epochs=4, batch_size=16, lr=1e-3, progress=False)
    test_images, test_labels = _bright_images(40, seed=1)
    auroc = per_class_auroc(predict_logits(model, test_images, 32), test_labels)
    assert auroc[BRIGHT] > 0.9
    assert auroc[TOP] is None  # no positives: undefined, not 0.5


def test_the_table_compares_synthetic_and_real_training_on_real_test_images():
    synthetic_images, synthetic_labels = _bright_images(32, seed=2)
    from xrg.latent.gan_train import SyntheticArchive

    archive = SyntheticArchive(synthetic_images, synthetic_labels, [BRIGHT] * 32, {BRIGHT: 32}, {BRIGHT: 32})
    real = _bright_images(80, seed=3)
    test = _bright_images(40, seed=4)
    table = gan_train_table(archive, real, test, [BRIGHT], size=32, epochs=3, batch_size=16, progress=False)
    assert set(table) == {BRIGHT, "mean"}
    row = table[BRIGHT]
    assert row["real_positives"] <= 32 and row["synthetic_positives"] == 16 and row["test_positives"] == 20
    assert row["gan_train_auroc"] > 0.8 and row["real_train_auroc"] > 0.8  # both archives carry the finding
    assert table["mean"]["gan_train_auroc"] == row["gan_train_auroc"]
