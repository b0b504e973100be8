"""Latent class optimisation (Algorithm 1): it finds what the classifier wants, says when it cannot,
keeps to the prior when asked, and repeats with the seed."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import torch_threads
from xrg.errors import ConfigError
from xrg.latent.search import SearchClassifier, patient_series, search
from xrg.models.pggan import PGGAN, PGGANModelConfig

LATENT = 6


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def toy_generator():
    """z → an 8² image in [-1, 1], linear in z before the tanh."""
    torch.manual_seed(0)
    weight = torch.randn(64, LATENT) * 0.3

    def generate(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ weight.T).reshape(-1, 1, 8, 8)

    return generate


def toy_network(x: torch.Tensor) -> torch.Tensor:
    """Two classes on [0, 1] images: 'bright' (mean brightness) and 'top' (top half brighter than bottom)."""
    bright = (x.mean(dim=(1, 2, 3)) - 0.5) * 20
    top = (x[:, :, :4].mean(dim=(1, 2, 3)) - x[:, :, 4:].mean(dim=(1, 2, 3))) * 20
    return torch.stack([bright, top], dim=1)


CLASSIFIER = SearchClassifier(toy_network, ("bright", "top"), thresholds=(2.0, 2.0), input_size=8)


def test_the_search_reaches_the_class_threshold_and_records_its_trajectory():
    results = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=4, seed=1, max_steps=300, lr=0.1)
    assert len(results) == 4
    for result in results:
        assert result.success and result.target_logit >= 2.0
        assert result.zs.shape == (result.steps + 1, LATENT) and result.logits.shape == (result.steps + 1, 2)
        assert result.images.shape == (result.steps + 1, 1, 8, 8)
        if result.steps:  # before the last step it had not passed: it stops at the first step that does
            assert (result.logits[:-1, 0] < 2.0).all()
            assert result.logits[-1, 0] > result.logits[0, 0]
    assert any(r.steps > 0 for r in results)  # the prior alone does not give bright images
    assert all(torch.isfinite(r.logits[:, 1]).all() for r in results)  # the other class is tracked


def test_a_search_that_runs_out_of_steps_is_returned_as_a_failure():
    # tanh bounds the image, so a logit of 50 cannot be reached: every search must say it failed
    unreachable = SearchClassifier(toy_network, ("bright", "top"), thresholds=(50.0, 2.0), input_size=8)
    results = search(toy_generator(), LATENT, unreachable, "bright", n=3, seed=0, max_steps=12, lr=0.1)
    assert [r.success for r in results] == [False, False, False]
    assert all(r.steps == 12 and len(r.zs) == 13 for r in results)
    with_budget_zero = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=2, seed=0, max_steps=0)
    assert all(r.steps == 0 and len(r.zs) == 1 for r in with_budget_zero)


def test_searches_in_a_batch_do_not_change_each_other():
    together = search(toy_generator(), LATENT, CLASSIFIER, "top", n=3, seed=5, max_steps=200, lr=0.1)
    z = torch.stack([r.zs[0] for r in together])
    for i in range(3):
        alone = search(toy_generator(), LATENT, CLASSIFIER, "top", z=z[i : i + 1], max_steps=200, lr=0.1)[0]
        assert alone.steps == together[i].steps and torch.allclose(alone.z, together[i].z, atol=1e-6)


def test_the_same_seed_gives_the_same_search_and_another_seed_another():
    first = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=2, seed=3, max_steps=50, lr=0.1)
    again = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=2, seed=3, max_steps=50, lr=0.1)
    other = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=2, seed=4, max_steps=50, lr=0.1)
    assert all(torch.equal(a.zs, b.zs) for a, b in zip(first, again))
    assert not torch.equal(first[0].zs[0], other[0].zs[0])
    assert first[0].zs[0].abs().max() <= 0.7  # drawn from the prior truncated at 0.7


def test_severity_is_a_target_probability_and_higher_needs_more_steps():
    mild = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=4, seed=2, target=0.8, max_steps=400, lr=0.5)
    severe = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=4, seed=2, target=0.95, max_steps=400, lr=0.5)
    assert mild[0].threshold == pytest.approx(math.log(4))
    assert all(r.success for r in mild + severe)
    assert sum(r.steps for r in severe) > sum(r.steps for r in mild)
    assert all(torch.sigmoid(r.final_logits[0]) >= 0.95 - 1e-6 for r in severe)
    with pytest.raises(ConfigError, match="probability in"):
        search(toy_generator(), LATENT, CLASSIFIER, "bright", target=1.5)


def test_the_regularisers_keep_the_latent_near_the_prior():
    plain = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=4, seed=1, target=0.99, max_steps=400, lr=0.2)
    boxed = search(
        toy_generator(), LATENT, CLASSIFIER, "bright", n=4, seed=1, target=0.99, max_steps=400, lr=0.2,
        regulariser="truncate",
    )  # fmt: skip
    assert all(r.zs.abs().max() <= 0.7 + 1e-6 for r in boxed)
    assert max(r.zs.abs().max() for r in plain) > 0.7  # unregularised, the search leaves the box
    normed = search(
        toy_generator(), LATENT, CLASSIFIER, "bright", n=4, seed=1, target=0.99, max_steps=400, lr=0.2,
        regulariser="norm", prior_weight=1.0,
    )  # fmt: skip
    assert sum(float(r.z.norm()) for r in normed) < sum(float(r.z.norm()) for r in plain)


def test_bad_requests_are_refused_by_name():
    with pytest.raises(ConfigError, match="unknown class 'effusion'; the classes are: bright, top"):
        search(toy_generator(), LATENT, CLASSIFIER, "effusion")
    with pytest.raises(ConfigError, match="regulariser must be one of"):
        search(toy_generator(), LATENT, CLASSIFIER, "bright", regulariser="l1")
    with pytest.raises(ConfigError, match=r"z must be \[n, 6\]"):
        search(toy_generator(), LATENT, CLASSIFIER, "bright", z=torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="one threshold per class"):
        SearchClassifier(toy_network, ("bright", "top"), thresholds=(1.0,), input_size=8)


def test_a_patient_series_stays_near_the_found_latent_and_says_which_keep_the_class():
    found = search(toy_generator(), LATENT, CLASSIFIER, "bright", n=1, seed=1, target=0.9, max_steps=400, lr=0.5)[0]
    assert found.success
    near = patient_series(toy_generator(), CLASSIFIER, found.z, "bright", count=6, sigma=0.05, seed=0)
    far = patient_series(toy_generator(), CLASSIFIER, found.z, "bright", count=6, sigma=3.0, seed=0)
    assert near.zs.shape == (6, LATENT) and near.images.shape == (6, 1, 8, 8) and near.logits.shape == (6, 2)
    assert near.kept.float().mean() > far.kept.float().mean()
    assert (near.zs - found.z).norm(dim=1).max() < (far.zs - found.z).norm(dim=1).min()
    again = patient_series(toy_generator(), CLASSIFIER, found.z, "bright", count=6, sigma=0.05, seed=0)
    assert torch.equal(near.zs, again.zs)


def test_the_search_runs_through_a_pggan_and_resizes_for_its_classifier():
    torch.manual_seed(0)
    model = PGGAN(PGGANModelConfig(final_size=16, latent_dim=8, channel_base=128, max_channels=16)).for_inference()
    classifier = SearchClassifier(toy_network, ("bright", "top"), thresholds=(0.0, 0.0), input_size=8)
    seen = []
    results = search(
        model.generate, 8, classifier, "bright", n=2, seed=0, max_steps=30, lr=0.5,
        progress=lambda step, active: seen.append((step, active)),
    )  # fmt: skip
    assert results[0].images.shape[-1] == 16  # the generator's size; the classifier saw 8²
    assert all(r.logits[-1, 0] >= r.logits[0, 0] for r in results)
    assert seen == [] or seen[0][0] == 1


def test_patient_series_images_stay_closer_to_their_seed_image_than_random_pairs():
    torch.manual_seed(0)
    model = PGGAN(PGGANModelConfig(final_size=16, latent_dim=8, channel_base=128, max_channels=16)).for_inference()
    classifier = SearchClassifier(toy_network, ("bright", "top"), thresholds=(-20.0, -20.0), input_size=8)
    z = torch.randn(1, 8, generator=torch.Generator().manual_seed(5))[0]
    with torch.no_grad():
        seed_image = model.generate(z.unsqueeze(0))
        series = patient_series(model.generate, classifier, z, "bright", count=8, sigma=0.1, seed=0)
        others = model.generate(torch.randn(16, 8, generator=torch.Generator().manual_seed(6)))
    to_seed = (series.images - seed_image).flatten(1).norm(dim=1)
    random_pairs = (others[:8] - others[8:]).flatten(1).norm(dim=1)
    assert to_seed.max() < random_pairs.median(), (to_seed, random_pairs)
