"""Patient variety in the phantom: the anatomical model sampled per seed (thorax size and
shape, heart size and position, hemidiaphragms, soft tissue and breasts, posture,
exposure), its ranges, determinism, that the warp keeps findings inside their organs and
stays one-to-one, and the ``xrg bench variety`` figures.

A 64^3 CT grid (32^3 where enough) and 32-64 pixel images keep the file to seconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from xrg.data.findings import Finding
from xrg.data.phantom import HEART, LUNG_LABELS, PatientParams, PhantomRenderer
from xrg.data.phantom.anatomy import breast_tissue
from xrg.data.phantom.patients import PARAMETER_RANGES
from xrg.errors import ConfigError

VOLUME = 64


@pytest.fixture(scope="module")
def renderer(_cache_dir: Path) -> PhantomRenderer:
    return PhantomRenderer(volume_size=VOLUME, cache_dir=_cache_dir)


def _values(params: PatientParams, name: str) -> list[float]:
    value = getattr(params, name)
    return [float(v) for v in np.ravel(value)]


def _extreme(seed: int, **overrides) -> PatientParams:
    """Patient ``seed`` with some parameters at the ends of their ranges."""
    return dataclasses.replace(PatientParams.sample(seed), **overrides)


def test_same_seed_is_the_same_patient(renderer: PhantomRenderer) -> None:
    a, b = PatientParams.sample(7), PatientParams.sample(7)
    assert a == b and np.array_equal(a.elastic_mm, b.elastic_mm)
    first, again = renderer.render([], seed=7, size=32), renderer.render([], seed=7, size=32)
    assert first.frontal.tobytes() == again.frontal.tobytes()
    assert first.lateral.tobytes() == again.lateral.tobytes()


def test_different_seeds_differ_in_every_parameter() -> None:
    a, b = PatientParams.sample(0), PatientParams.sample(1)
    for field in dataclasses.fields(PatientParams):
        first, second = np.ravel(getattr(a, field.name)), np.ravel(getattr(b, field.name))
        assert np.all(first != second), field.name


def test_parameters_stay_in_their_documented_ranges() -> None:
    samples = [PatientParams.sample(seed) for seed in range(400)]
    assert set(PARAMETER_RANGES) <= {f.name for f in dataclasses.fields(PatientParams)}
    for name, (low, high) in PARAMETER_RANGES.items():
        values = np.array([_values(p, name) for p in samples]).ravel()
        assert values.min() >= low and values.max() <= high, name
        # the range is used, not a constant: a spread of at least a tenth of it
        assert values.std() > 0.1 * (high - low), name
    # about half the patients have breasts (female), the rest a thin chest-wall layer
    female = np.mean([p.breast_mm >= 12.0 for p in samples])
    assert 0.4 < female < 0.6
    assert all(p.breast_mm <= 6.0 for p in samples if p.breast_mm < 12.0)
    sizes = {sex: np.mean([p.body_size for p in samples if (p.breast_mm >= 12.0) == sex]) for sex in (True, False)}
    assert sizes[True] < sizes[False] - 0.03  # women's chests are smaller on average
    # the scale of the thorax is the product of body size and its width, depth, height
    p = samples[0]
    assert p.scale == pytest.approx((p.body_size * p.thorax_width, p.body_size * p.thorax_depth,
                                     p.body_size * p.lung_height))  # fmt: skip


def test_a_normal_render_is_finite_and_in_unit_range(renderer: PhantomRenderer) -> None:
    for seed in (0, 1, 2, 3):
        pair = renderer.render([], seed=seed, size=32)
        for image in (pair.frontal, pair.lateral):
            assert image.shape == (32, 32) and image.dtype == np.float32
            assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
            assert image.std() > 0.1


def _warped(renderer: PhantomRenderer, cube: np.ndarray, params: PatientParams, shape) -> np.ndarray:
    buffer, volume = renderer._new_volume()
    volume[...] = cube
    return renderer._warp(buffer, params, shape)


@pytest.mark.parametrize(
    "finding", [Finding("nodule", side="right", zone="lower", severity="severe"), Finding("opacity", side="left")]
)
def test_a_finding_in_the_lung_stays_inside_the_lung_after_the_warp(renderer: PhantomRenderer, finding) -> None:
    low, high = PARAMETER_RANGES["heart_scale"]
    for params in (
        _extreme(3, heart_scale=high, heart_shift_x_mm=9.0, heart_shift_z_mm=-9.0, thorax_width=0.9, breast_mm=32.0),
        _extreme(4, heart_scale=low, heart_shift_x_mm=-9.0, heart_shift_z_mm=9.0, thorax_depth=1.12, lung_height=1.08),
    ):
        shape = params.shape()
        _, volume = renderer._patient_volume(params)
        before = volume.copy()
        renderer._draw_findings(volume, [finding], 3, shape)
        change = np.abs(volume - before)
        lung = renderer._lung_of(None, (slice(None),) * 3)
        assert change.sum() > 0
        assert (change * (lung > 0.5)).sum() / change.sum() > 0.95  # drawn in the lung
        moved_change = _warped(renderer, change, params, shape)
        moved_lung = _warped(renderer, lung, params, shape)
        assert moved_change.sum() > 0.5 * change.sum()  # still in the field of view
        assert (moved_change * (moved_lung > 0.5)).sum() / moved_change.sum() > 0.9


def test_a_rendered_nodule_shows_inside_the_projected_lung(renderer: PhantomRenderer) -> None:
    nodule = [Finding("nodule", side="left", zone="middle", severity="severe")]
    for seed in (5, 6):
        change = renderer.render(nodule, seed=seed, size=64).frontal - renderer.render([], seed=seed, size=64).frontal
        lung, _ = renderer.project_structure(LUNG_LABELS, seed=seed, size=64, findings=nodule)
        shows = change > 0.03
        assert shows.any()
        assert (lung[shows] > 0).all()


def test_the_warp_is_one_to_one_at_the_ends_of_the_ranges() -> None:
    renderer = PhantomRenderer(volume_size=32)
    low, high = PARAMETER_RANGES["heart_scale"]
    for heart in (low, high):
        for shift in (-9.0, 9.0):
            params = _extreme(2, heart_scale=heart, heart_shift_x_mm=shift, heart_shift_z_mm=-shift)
            grid = torch.stack(renderer._grid(params, params.shape())).numpy()  # (3, z, y, x)
            end = grid.shape[1] - 1
            # rows: the canonical x, y, z; columns: steps along the output's x, y, z
            steps = [np.diff(grid, axis=axis)[:, :end, :end, :end] for axis in (3, 2, 1)]
            jacobian = np.stack(steps, axis=1) / renderer.voxel_mm
            determinant = np.linalg.det(np.moveaxis(jacobian, (0, 1), (-2, -1)))
            assert determinant.min() > 0.3, (heart, shift)


def test_the_heart_moves_and_grows_with_its_mask(renderer: PhantomRenderer) -> None:
    def heart_columns(params: PatientParams) -> tuple[float, int]:
        buffer, mask = renderer._new_volume()
        mask[...] = renderer.labels == HEART
        frontal = renderer._warp(buffer, params, params.shape()).sum(axis=1)  # (z, x)
        columns = frontal.sum(axis=0)
        hit = np.flatnonzero(columns > 0.02 * columns.max())
        return float((columns * np.arange(len(columns))).sum() / columns.sum()), int(hit[-1] - hit[0] + 1)

    left, _ = heart_columns(_extreme(1, heart_shift_x_mm=9.0))
    right, _ = heart_columns(_extreme(1, heart_shift_x_mm=-9.0))
    assert left - right > 0.5 * 18.0 / renderer.voxel_mm  # + is towards the patient's left (the viewer's right)
    low, high = PARAMETER_RANGES["heart_scale"]
    _, small = heart_columns(_extreme(1, heart_scale=low))
    _, large = heart_columns(_extreme(1, heart_scale=high))
    assert large > small


def test_breasts_lie_in_front_of_the_chest_wall(renderer: PhantomRenderer) -> None:
    parts = breast_tissue(renderer.anatomy, renderer._axis_mm, 30.0)
    assert len(parts) == 2 and not breast_tissue(renderer.anatomy, renderer._axis_mm, 0.0)
    for box, mu in parts:
        assert mu.max() > 0
        assert (mu[renderer._lung_of(None, box) > 0] == 0).all()
        assert (mu[renderer.labels[box] > 0] == 0).all()  # no organ, bone or muscle label under it
    female = _extreme(9, breast_mm=30.0)
    _, with_breasts = renderer._patient_volume(female)
    _, without = renderer._patient_volume(dataclasses.replace(female, breast_mm=0.0))
    assert with_breasts.sum() > without.sum()


def test_the_heart_thorax_ratio_is_plausible(renderer: PhantomRenderer) -> None:
    from xrg.bench import variety_measurements

    ratios = [variety_measurements(renderer, seed, 64)["cardiothoracic_ratio"] for seed in range(6)]
    assert all(0.4 <= ratio <= 0.62 for ratio in ratios), ratios
    assert np.std(ratios) > 0.005  # the heart varies between patients


def test_bench_variety_prints_and_refuses(_cache_dir: Path) -> None:
    from xrg.bench import bench_variety

    lines: list[str] = []
    result = bench_variety(n_patients=3, size=32, volume_size=32, print_fn=lines.append)
    assert result["patients"] == 3 and result["volume_size"] == 32
    assert result["pairwise_mad"] > 0.01 and result["pairwise_rmse"] >= result["pairwise_mad"]
    assert 0.5 < result["lung_mask_iou"] < 1.0  # the same organ, not the same shape
    for row in result["measurements"].values():
        assert row["min"] <= row["mean"] <= row["max"] and row["std"] >= 0
    assert any("cardiothoracic_ratio" in line for line in lines)
    with pytest.raises(ConfigError, match="n_patients"):
        bench_variety(n_patients=1)
    with pytest.raises(ConfigError, match="image size"):
        bench_variety(size=8)
