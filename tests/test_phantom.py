"""The CT phantom renderer: shapes, determinism, locality, laterality and display conventions.

One renderer at a 64^3 grid is built per module (its cache lives in the session's cache
directory), so the whole file runs in well under a minute on two CPU cores.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xrg.data.findings import FINDING_KINDS, Finding
from xrg.data.phantom import (
    HEART,
    STERNUM,
    VERTEBRAE,
    PatientParams,
    PhantomRenderer,
    RenderedPair,
    volume_size_for,
)
from xrg.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
VOLUME = 64
SIZE = 64


@pytest.fixture(scope="module")
def renderer(_cache_dir: Path) -> PhantomRenderer:
    return PhantomRenderer(volume_size=VOLUME, cache_dir=_cache_dir)


@pytest.fixture(scope="module")
def normal(renderer: PhantomRenderer) -> RenderedPair:
    return renderer.render([], seed=11, size=SIZE)


def _digest(pair: RenderedPair) -> str:
    return hashlib.sha256(pair.frontal.tobytes() + pair.lateral.tobytes()).hexdigest()


def _column_centroid(image: np.ndarray) -> float:
    weights = np.clip(image, 0.0, None).sum(axis=0)
    return float((weights * np.arange(image.shape[1])).sum() / weights.sum())


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_dtype_and_range(renderer: PhantomRenderer, size: int) -> None:
    pair = renderer.render([Finding("pleural_effusion", side="left")], seed=1, size=size)
    for image in (pair.frontal, pair.lateral):
        assert image.shape == (size, size)
        assert image.dtype == np.float32
        assert np.isfinite(image).all()
        assert image.min() >= 0.0 and image.max() <= 1.0
        assert image.std() > 0.1  # an image, not a flat field
    assert pair.drawn == [Finding("pleural_effusion", side="left")]
    assert not pair.skipped


def test_same_arguments_give_identical_images(renderer: PhantomRenderer, _cache_dir: Path) -> None:
    findings = [Finding("opacity", side="right", zone="lower"), Finding("pacemaker")]
    first = renderer.render(findings, seed=5, size=SIZE)
    again = renderer.render(findings, seed=5, size=SIZE)
    fresh = PhantomRenderer(volume_size=VOLUME, cache_dir=_cache_dir).render(findings, seed=5, size=SIZE)
    assert _digest(first) == _digest(again) == _digest(fresh)


def test_identical_across_processes(renderer: PhantomRenderer, _cache_dir: Path) -> None:
    code = (
        "import hashlib, torch; torch.set_num_threads(2)\n"
        "from xrg.data.findings import Finding\n"
        "from xrg.data.phantom import PhantomRenderer\n"
        f"r = PhantomRenderer({VOLUME}, cache_dir={str(_cache_dir)!r})\n"
        f"p = r.render([Finding('nodule', side='left')], seed=9, size={SIZE})\n"
        "print(hashlib.sha256(p.frontal.tobytes() + p.lateral.tobytes()).hexdigest())\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert out.stdout.strip() == _digest(renderer.render([Finding("nodule", side="left")], seed=9, size=SIZE))


def test_patient_params_come_from_the_seed() -> None:
    a, b = PatientParams.sample(3), PatientParams.sample(3)
    assert a == b and np.array_equal(a.elastic_mm, b.elastic_mm)
    assert PatientParams.sample(4) != a
    for seed in range(20):
        p = PatientParams.sample(seed)
        assert all(0.8 <= s <= 1.2 for s in p.scale)  # body size times width, depth, height
        assert all(abs(r) <= 3.0 for r in p.rotation_deg)


def test_different_seeds_are_different_patients(renderer: PhantomRenderer, normal: RenderedPair) -> None:
    other = renderer.render([], seed=12, size=SIZE)
    assert np.abs(other.frontal - normal.frontal).mean() > 0.01
    assert np.abs(other.lateral - normal.lateral).mean() > 0.01


def test_right_effusion_changes_only_the_right_base(renderer: PhantomRenderer, normal: RenderedPair) -> None:
    pair = renderer.render([Finding("pleural_effusion", side="right", severity="moderate")], seed=11, size=SIZE)
    frontal = pair.frontal - normal.frontal
    lateral = pair.lateral - normal.lateral
    half = SIZE // 2
    # the patient's right base is the lower part of the viewer's LEFT half
    assert frontal[half:, :half].mean() > 0.03
    assert np.abs(frontal[:, half + 4 :]).max() < 0.02  # the other side is untouched
    assert np.abs(frontal[: SIZE // 4]).max() < 0.02  # and so are the apices
    # on the lateral the fluid is low, in the posterior sulcus
    assert lateral[half:].mean() > 0.01
    assert np.abs(lateral[: SIZE // 4]).max() < 0.02


@pytest.mark.parametrize("kind", ["opacity", "nodule"])
def test_laterality(renderer: PhantomRenderer, normal: RenderedPair, kind: str) -> None:
    centroids = {}
    for side in ("right", "left"):
        severity = "severe" if kind == "nodule" else None
        pair = renderer.render([Finding(kind, side=side, severity=severity)], seed=11, size=SIZE)
        change = np.clip(pair.frontal - normal.frontal, 0.0, None)
        assert change.sum() > 0.5
        centroids[side] = _column_centroid(change)
    # frontal (PA) convention: the patient's right is on the viewer's left
    assert centroids["right"] < SIZE / 2 < centroids["left"]


def test_heart_is_on_the_viewers_right(renderer: PhantomRenderer) -> None:
    for seed in (0, 1, 2):
        frontal, _ = renderer.project_structure([HEART], seed=seed, size=SIZE)
        assert _column_centroid(frontal) > SIZE / 2


def test_lateral_has_anterior_on_the_viewers_left(renderer: PhantomRenderer) -> None:
    _, sternum = renderer.project_structure([STERNUM], seed=0, size=SIZE)
    _, spine = renderer.project_structure(VERTEBRAE, seed=0, size=SIZE)
    assert _column_centroid(sternum) < _column_centroid(spine)


def test_head_is_up(renderer: PhantomRenderer) -> None:
    frontal, lateral = renderer.project_structure([HEART], seed=0, size=SIZE)
    lungs_frontal, _ = renderer.project_structure([10, 11, 12, 13, 14], seed=0, size=SIZE)
    rows = np.arange(SIZE)
    heart_row = (frontal.sum(axis=1) * rows).sum() / frontal.sum()
    apex_row = rows[lungs_frontal.sum(axis=1) > 0][0]
    assert apex_row < heart_row  # the lung apices are above the heart


def test_cardiomegaly_is_graded(renderer: PhantomRenderer, normal: RenderedPair) -> None:
    heart, _ = renderer.project_structure([HEART], seed=11, size=SIZE)
    region = heart > 0
    gains = []
    for severity in ("mild", "moderate", "severe"):
        pair = renderer.render([Finding("cardiomegaly", severity=severity)], seed=11, size=SIZE)
        gains.append(float((pair.frontal - normal.frontal).sum()))
        outside = np.abs(pair.frontal - normal.frontal)[:, : SIZE // 5]
        assert outside.max() < 0.02  # the right chest wall does not move
    assert 0 < gains[0] < gains[1] < gains[2]
    assert region.any()


@pytest.mark.parametrize("kind", FINDING_KINDS)
def test_every_kind_is_drawn_and_changes_the_image(renderer: PhantomRenderer, normal: RenderedPair, kind: str) -> None:
    finding = Finding(kind)
    pair = renderer.render([finding], seed=11, size=SIZE)
    assert pair.drawn == [finding]
    assert not pair.skipped
    change = max(np.abs(pair.frontal - normal.frontal).max(), np.abs(pair.lateral - normal.lateral).max())
    assert change > 0.03, kind  # noise is the same: any change is the finding


def test_negated_findings_are_counted_not_drawn(renderer: PhantomRenderer, normal: RenderedPair) -> None:
    findings = [Finding("pneumothorax", side="left", negated=True), Finding("pleural_effusion", negated=True)]
    pair = renderer.render(findings, seed=11, size=SIZE)
    assert np.array_equal(pair.frontal, normal.frontal) and np.array_equal(pair.lateral, normal.lateral)
    assert pair.drawn == [] and pair.skipped == {"negated": 2}


def test_several_findings_and_repeats(renderer: PhantomRenderer) -> None:
    nodule = Finding("nodule", side="left")
    findings = [nodule, nodule, Finding("cardiomegaly"), Finding("edema")]
    pair = renderer.render(findings, seed=3, size=SIZE)
    assert pair.drawn == findings  # the input order is kept


@pytest.mark.parametrize("size", [31, 257, 0, 64.0, True, "64"])
def test_size_out_of_range(renderer: PhantomRenderer, size) -> None:
    with pytest.raises(ConfigError):
        renderer.render([], seed=0, size=size)


def test_volume_size_is_checked(_cache_dir: Path) -> None:
    with pytest.raises(ConfigError):
        PhantomRenderer(volume_size=8, cache_dir=_cache_dir)
    assert volume_size_for(64) == volume_size_for(128) == 128 and volume_size_for(256) > 128


def test_no_table_on_the_lateral(normal: RenderedPair) -> None:
    # the CT table would be a bright vertical bar behind the back; the edges must be air
    assert normal.lateral[:, :2].mean() < 0.05
    assert normal.lateral[:, -2:].mean() < 0.05


def test_lungs_dark_bones_bright(renderer: PhantomRenderer, normal: RenderedPair) -> None:
    lungs, _ = renderer.project_structure([10, 11, 12, 13, 14], seed=11, size=SIZE)
    spine, _ = renderer.project_structure(VERTEBRAE, seed=11, size=SIZE)
    lung_pixels = (lungs > 60) & (spine == 0)
    assert normal.frontal[lung_pixels].mean() + 0.3 < normal.frontal[spine > 20].mean()


def test_cache_is_reused(renderer: PhantomRenderer, _cache_dir: Path) -> None:
    assert renderer.cache_path.is_file() and renderer.cache_path.parent == _cache_dir
    again = PhantomRenderer(volume_size=VOLUME, cache_dir=_cache_dir)
    assert np.array_equal(again.labels, renderer.labels)


def test_scoliosis_is_convex_to_its_side(renderer: PhantomRenderer) -> None:
    thoracic = list(range(32, 44))  # T12..T1
    centroids = {}
    for side in ("right", "left"):
        scoliosis = [Finding("scoliosis", side=side, severity="severe")]
        frontal, _ = renderer.project_structure(thoracic, seed=2, size=SIZE, findings=scoliosis)
        centroids[side] = _column_centroid(frontal)
    straight, _ = renderer.project_structure(thoracic, seed=2, size=SIZE)
    # convex to the patient's right bows the spine to the viewer's left on a PA image
    assert centroids["right"] + 1.0 < _column_centroid(straight) < centroids["left"] - 1.0


def test_hypoinflation_shrinks_and_emphysema_inflates_the_lungs(renderer: PhantomRenderer) -> None:
    def lungs(findings) -> tuple[float, float]:
        """Projected lung volume and the mean row of the lungs (larger = lower)."""
        frontal, _ = renderer.project_structure([10, 11, 12, 13, 14], seed=4, size=SIZE, findings=findings)
        rows = np.arange(SIZE)
        return float(frontal.sum()), float((frontal.sum(axis=1) * rows).sum() / frontal.sum())

    volume, row = lungs([])
    small, high = lungs([Finding("hypoinflation", severity="mild")])
    large, low = lungs([Finding("emphysema", severity="mild")])
    assert small < 0.95 * volume and high < row - 1.0  # domes up, lungs short
    assert large > 1.05 * volume and low > row + 1.0  # domes down, lungs tall


def test_pacemaker_defaults_to_the_left_chest(renderer: PhantomRenderer, normal: RenderedPair) -> None:
    pair = renderer.render([Finding("pacemaker")], seed=11, size=SIZE)
    change = np.clip(pair.frontal - normal.frontal, 0.0, None)
    row, column = np.unravel_index(change.argmax(), change.shape)
    assert column > SIZE / 2 and row < SIZE / 2  # the generator: upper chest, viewer's right


def test_bench_refuses_bad_arguments() -> None:
    from xrg.bench import bench_data

    with pytest.raises(ConfigError):
        bench_data(sizes=(16,), n_pairs=1, workers=1)
    with pytest.raises(ConfigError):
        bench_data(sizes=(64,), n_pairs=0, workers=1)
