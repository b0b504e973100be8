"""The PGGAN latent explorer's core: directions that change the image most, moves, class search,
patient series and undo — without a browser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import torch_threads
from test_latent_search import toy_network
from xrg.errors import ConfigError
from xrg.latent.explorer import LatentExplorer, principal_directions
from xrg.latent.search import SearchClassifier
from xrg.models.pggan import PGGAN, PGGANModelConfig

CONFIG = PGGANModelConfig(final_size=16, latent_dim=8, channel_base=128, max_channels=16)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def model() -> PGGAN:
    torch.manual_seed(0)
    return PGGAN(CONFIG).for_inference()


def classifier(thresholds=(0.0, 0.0)) -> SearchClassifier:
    return SearchClassifier(toy_network, ("bright", "top"), thresholds=thresholds, input_size=8)


def test_the_first_direction_changes_the_first_features_more_than_a_random_one(model):
    directions = principal_directions(model, 3, seed=0, samples=512)
    assert directions.shape == (3, 8) and torch.allclose(directions.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(directions, principal_directions(model, 3, seed=0, samples=512))
    z = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    random = torch.nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(2)), dim=0)

    def change(direction: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model.generate(z + direction) - model.generate(z)).abs().mean())

    assert change(directions[0]) > change(random)
    with pytest.raises(ConfigError, match="count must be in 1..8"):
        principal_directions(model, 9)


def test_moves_search_series_and_undo(model):
    explorer = LatentExplorer(model, classifier(), evaluator=classifier((-1.0, 50.0)), num_directions=3,
                              search_steps=60, search_lr=0.5)  # fmt: skip
    with pytest.raises(ConfigError, match="pick a patient first"):
        explorer.move((0.0, 0.0, 0.0))
    first = explorer.new_patient(3)
    assert first.image.shape == (16, 16) and first.image.dtype == np.float32 and 0 <= first.image.min()
    assert set(first.search_logits) == {"bright", "top"} and set(first.evaluator_logits) == {"bright", "top"}
    assert first.seconds > 0 and first.z.abs().max() <= 0.7
    again = LatentExplorer(model, classifier(), num_directions=3).new_patient(3)
    assert np.array_equal(first.image, again.image) and again.evaluator_logits is None  # the seed is the patient

    moved = explorer.move((2.0, 0.0, 0.0))
    assert not np.array_equal(moved.image, first.image)
    assert torch.allclose(moved.z, first.z + 2.0 * explorer.directions[0])
    back = explorer.move((0.0, 0.0, 0.0))
    assert np.allclose(back.image, first.image, atol=1e-6)  # offsets are measured from where the patient started

    found = explorer.find("bright")
    assert found.search is not None and found.action.startswith("bright ")
    if found.search.success:
        assert found.search_logits["bright"] >= 0.0 and found.search_passes(explorer.search_classifier)["bright"]
    assert torch.equal(found.z, found.search.z)
    series = explorer.series("bright", count=4, sigma=0.05)
    assert series.series.zs.shape == (4, 8) and np.array_equal(series.image, found.image)

    assert explorer.undo() is found
    assert explorer.undo() is back
    explorer.undo(), explorer.undo()
    assert explorer.view is first
    with pytest.raises(ConfigError, match="nothing to undo"):
        explorer.undo()
    with pytest.raises(ConfigError, match="unknown class 'effusion'"):
        explorer.find("effusion")
    with pytest.raises(ConfigError, match="offsets must be 3"):
        explorer.move((1.0,))
    with pytest.raises(ConfigError, match="seed must be"):
        explorer.new_patient(-1)


def test_the_widget_app_shows_every_action_and_refuses_an_unknown_class(model):
    from xrg.latent.app import LatentApp

    explorer = LatentExplorer(model, classifier(), evaluator=classifier((0.5, 0.5)), num_directions=3,
                              search_steps=20, search_lr=0.5)  # fmt: skip
    app = LatentApp(explorer, classes=["bright"], strip_count=4)
    first = app.new_patient(3)
    shown = app.image.value
    assert shown and "xrg-logits" in app.logits.value and "bright" in app.logits.value and "top" not in app.logits.value
    assert app.undo_button.disabled and app.seed.value == 3
    app.sliders[0].value = 2.0  # the slider's callback moves the patient
    assert explorer.view.offsets[0] == 2.0 and app.image.value != shown and not app.undo_button.disabled
    view = app.find("bright", severity=0.9)
    assert view.search is not None and "Search trajectory" in app.strip_title.value
    assert app.search_progress.value == view.search.steps and app.search_progress.layout.visibility == "hidden"
    assert all(s.value == 0.0 for s in app.sliders)  # directions are measured from the found latent
    assert sum(bool(image.value) for image in app.strip) >= 1
    app.series(count=4)
    assert "Patient series" in app.strip_title.value and all(image.value for image in app.strip)
    app.undo()
    app.undo()
    assert explorer.view.offsets[0] == 2.0 and app.sliders[0].value == 2.0
    with pytest.raises(ConfigError, match="the app offers: bright"):
        app.find("top")
    assert "could not" not in app.status.value  # refused before the app did anything
    with pytest.raises(ConfigError, match="classes must be some of"):
        LatentApp(explorer, classes=["effusion"])
    assert first.image.shape == (16, 16)
