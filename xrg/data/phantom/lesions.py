"""The lesions: how each finding kind is drawn into the canonical attenuation volume.

One function per finding kind, ``draw_<kind>(renderer, volume, finding, rng, shape)``: it
edits ``volume`` (the ``[z, y, x]`` cube of :meth:`PhantomRenderer._new_volume
<xrg.data.phantom.renderer.PhantomRenderer._new_volume>`) in the CT's own space using the
renderer's organ masks and landmarks, draws from ``rng`` (the finding's own stream), and
asks the sampling grid for anatomy that moves through ``shape``; it raises :class:`_Skip`
when it cannot draw. :data:`DRAWERS` maps every kind to its function, in drawing order;
:func:`drawer_for` looks a kind up. The helpers (where to draw: sides, lung zones, a place
inside the lung; how: balls, tubes, boxes, noise, scaling) take the renderer first too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from xrg.data.findings import FINDING_KINDS, SEVERITY_SCALE, Finding
from xrg.data.phantom._numeric import _rotation, _spline
from xrg.data.phantom.ct import FIELD_OF_VIEW_MM, MU_WATER
from xrg.data.phantom.patients import _Shape
from xrg.errors import FindingError

if TYPE_CHECKING:
    from xrg.data.phantom.renderer import PhantomRenderer

#: A drawer: ``(renderer, volume, finding, rng, shape) -> None``.
Drawer = Callable[["PhantomRenderer", np.ndarray, Finding, np.random.Generator, _Shape], None]


#: A pixel of the 64² images the evaluators judge (mm; the patient's size varies by ±6 %).
EVALUATION_PIXEL_MM = FIELD_OF_VIEW_MM / 64
#: The smallest projected size (mm) a focal finding is drawn at: three evaluation pixels, so
#: that a granuloma can be told from noise at 64² (smaller, true-to-life sizes change one or
#: two pixels there and no evaluator can judge them).
MIN_VISIBLE_MM = 3.0 * EVALUATION_PIXEL_MM
#: Attenuation of a granuloma (partly calcified) and of a calcified granuloma (calcium).
GRANULOMA_MU = MU_WATER * 4.0
CALCIFIED_MU = MU_WATER * 10.0


class _Skip(Exception):
    """A finding that cannot be drawn; the message is the reason counted in ``skipped``."""


# --- where to draw ----------------------------------------------------------------------------


def _sides(r: PhantomRenderer, finding: Finding, rng: np.random.Generator) -> list[str]:
    """The patient sides a finding is drawn on; an unstated side comes from the finding's
    own random stream (so from the seed)."""
    if finding.side == "bilateral":
        return ["right", "left"]
    if finding.side is not None:
        return [finding.side]
    return [("right", "left")[int(rng.integers(2))]]


def _coords(r: PhantomRenderer, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable millimetre coordinates ``z, y, x`` of the voxel centres of ``box``."""
    a = r._axis_mm
    return a[box[0]][:, None, None], a[box[1]][None, :, None], a[box[2]][None, None, :]


def _region(r: PhantomRenderer, side: str, zone: str | None) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Soft mask (0..1) of a lung zone: on the right the upper, middle and lower lobes; on
    the left the upper lobe above the hilum, the lingula below it, and the lower lobe;
    the whole lung when ``zone`` is None."""
    if zone is None:
        box = r.anatomy.lung_box[side]
        return box, r._lung_of(side, box)
    if side == "right":
        name = {"upper": "right_upper", "middle": "right_middle", "lower": "right_lower"}[zone]
    else:
        name = "left_lower" if zone == "lower" else "left_upper"
    box = r.anatomy.lobe_box[name]
    weight = r._soft[name][box].astype(np.float32) * np.float32(1 / 255)
    if side == "left" and zone in ("upper", "middle"):
        z = _coords(r, box)[0]
        below = 1.0 / (1.0 + np.exp(-(z - r.anatomy.hilum["left"][2]) / 8.0))
        weight = weight * (below if zone == "middle" else 1.0 - below).astype(np.float32)
    return box, weight


def _zone(r: PhantomRenderer, finding: Finding, rng: np.random.Generator, weights=(0.25, 0.25, 0.5)) -> str:
    if finding.zone is not None:
        return finding.zone
    return ("upper", "middle", "lower")[int(rng.choice(3, p=weights))]


def _place(r: PhantomRenderer, box, weight: np.ndarray, radius_mm: float, rng: np.random.Generator) -> np.ndarray:
    """A random centre ``(x, y, z)`` mm inside the region where a ball of ``radius_mm``
    stays inside the lung (or as deep as the region allows)."""
    depth = r._lung_edt[box].astype(np.float32) * np.float32(r.voxel_mm)
    inside = weight > 0.5
    if not inside.any():
        raise _Skip("lung zone not found")
    ok = inside & (depth >= radius_mm + r.voxel_mm)
    if not ok.any():
        ok = inside & (depth >= 0.8 * depth[inside].max())
    idx = np.argwhere(ok)
    chance = depth[ok] ** 2 + 1e-3  # favour the depth of the lung over its rim, as in projection
    pick = idx[int(rng.choice(len(idx), p=chance / chance.sum()))] + np.array([s.start for s in box])
    return (pick[::-1] + 0.5 + rng.uniform(-0.5, 0.5, 3)) * r.voxel_mm


def _local_box(r: PhantomRenderer, center: np.ndarray, half_mm: np.ndarray | float) -> tuple[slice, slice, slice]:
    half = np.broadcast_to(np.asarray(half_mm, dtype=np.float64), (3,))
    lo = np.floor((center - half) / r.voxel_mm).astype(int)
    hi = np.ceil((center + half) / r.voxel_mm).astype(int) + 1
    size = r.volume_size
    lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
    return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])


# --- how to draw ----------------------------------------------------------------------------


def _ball(
    r: PhantomRenderer, volume: np.ndarray, center: np.ndarray, radius: float, mu: float, spread: float = 0.0
) -> None:
    """A ball of attenuation ``mu`` (soft edge one voxel wide), whose total volume stays
    right when it is smaller than a voxel; ``spread`` > 0 blurs its edge (mm)."""
    h = r.voxel_mm
    box = _local_box(r, center, radius + 2 * h + 2 * spread)
    z, y, x = _coords(r, box)
    distance = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
    weight = np.clip(0.5 + (radius - distance) / (h + spread), 0.0, 1.0).astype(np.float32)
    total = float(weight.sum()) * h**3
    if total <= 0:
        return
    weight *= np.float32(4.0 / 3.0 * np.pi * radius**3 / total)
    region = volume[box]
    region += weight * (np.float32(mu) - region)


def _tube(r: PhantomRenderer, volume: np.ndarray, points: np.ndarray, line_density: float) -> None:
    """A thin dense wire or catheter along the polyline ``points`` (mm): mass
    ``line_density`` (mu * mm^2 per mm of length) splatted trilinearly into the volume."""
    h = r.voxel_mm
    steps = np.linalg.norm(np.diff(points, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    samples = np.arange(0.0, arc[-1], h / 3.0)
    if len(samples) == 0:
        return
    path = np.stack([np.interp(samples, arc, points[:, k]) for k in range(3)], axis=1)
    mass = line_density * (h / 3.0) / h**3
    position = path / h - 0.5  # voxel index coordinates (x, y, z)
    base = np.floor(position).astype(int)
    frac = position - base
    size = r.volume_size
    for corner in range(8):
        offset = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
        index = base + offset
        weight = np.prod(np.where(offset, frac, 1.0 - frac), axis=1) * mass
        ok = np.all((index >= 0) & (index < size), axis=1)
        np.add.at(volume, (index[ok, 2], index[ok, 1], index[ok, 0]), weight[ok].astype(np.float32))


def _box_weight(
    r: PhantomRenderer, center, half, rotation_deg, corner_mm: float = 0.0
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Voxel box and partial-volume weight of a box with ``half`` extents (x, y, z) mm,
    corners rounded by ``corner_mm``, rotated by ``rotation_deg`` about its centre."""
    h = r.voxel_mm
    box = _local_box(r, center, float(np.linalg.norm(half)) + 2 * h)
    z, y, x = _coords(r, box)
    rot = _rotation(rotation_deg).T
    d = [x - center[0], y - center[1], z - center[2]]
    local = [rot[i, 0] * d[0] + rot[i, 1] * d[1] + rot[i, 2] * d[2] for i in range(3)]
    q = [np.abs(local[i]) - (half[i] - corner_mm) for i in range(3)]
    outside = np.sqrt(sum(np.maximum(qi, 0.0) ** 2 for qi in q))
    inside = np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0.0)
    sdf = outside + inside - corner_mm
    return box, np.clip(0.5 - sdf / h, 0.0, 1.0).astype(np.float32)


def _box_shape(r: PhantomRenderer, volume, center, half, rotation_deg, mu: float, corner_mm: float = 0.0) -> None:
    box, weight = _box_weight(r, center, half, rotation_deg, corner_mm)
    region = volume[box]
    region += weight * (np.float32(mu) - region)


def _smooth_noise(
    r: PhantomRenderer, shape: tuple[int, ...], rng: np.random.Generator, cell_mm: float = 18.0
) -> np.ndarray:
    """Zero-mean, unit-variance random field with blobs about ``cell_mm`` across."""
    field_ = np.zeros(shape, dtype=np.float32)
    for cell, gain in ((cell_mm, 1.0), (cell_mm / 2.5, 0.45)):
        cells = [max(2, int(round(n * r.voxel_mm / cell)) + 1) for n in shape]
        coarse = torch.from_numpy(rng.standard_normal(cells).astype(np.float32))[None, None]
        field_ += gain * F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
    return (field_ - field_.mean()) / max(float(field_.std()), 1e-6)


def _scaled_sample(r: PhantomRenderer, channels: np.ndarray, box, center: np.ndarray, factor) -> np.ndarray:
    """Sample ``channels`` (C, *box shape) at ``center + (p - center) / factor`` for the
    voxels p of ``box`` (trilinear, zero outside the box): the content shrunk (factor < 1)
    towards ``center`` or grown (factor > 1); ``factor`` is a number or one per axis
    (x, y, z). A scaling is separable: one linear interpolation along each axis."""
    factors = np.broadcast_to(np.asarray(factor, dtype=np.float64), (3,))
    out = np.ascontiguousarray(channels, dtype=np.float32)
    for axis, (c, f) in zip((3, 2, 1), zip(center, factors)):  # x, y, z
        part = box[axis - 1]
        n = part.stop - part.start
        position = (np.arange(n) + part.start + 0.5) * r.voxel_mm
        source = (c + (position - c) / f) / r.voxel_mm - 0.5 - part.start  # box voxel index
        low = np.floor(source).astype(np.int64)
        frac = source - low
        shape = [1] * out.ndim
        shape[axis] = n
        weights = [
            np.where((index >= 0) & (index < n), weight, 0.0).astype(np.float32).reshape(shape)
            for index, weight in ((low, 1.0 - frac), (low + 1, frac))
        ]
        result = np.take(out, np.clip(low, 0, n - 1), axis=axis)
        result *= weights[0]
        upper = np.take(out, np.clip(low + 1, 0, n - 1), axis=axis)
        upper *= weights[1]
        result += upper
        out = result
    return out


# --- the findings ---------------------------------------------------------------------------


def draw_cardiomegaly(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """The heart grows, mostly transversely and to the left (see :func:`resize_heart`): the
    frontal silhouette widens by about 32/50/71 mm for mild/moderate/severe, and a
    cardiothoracic-ratio proxy on 64² frontal renders rises monotonically with severity
    (``tests/test_judgeable_findings.py``)."""
    shape.heart_factor = shape.heart_factor * (1.0 + np.array([0.42, 0.18, 0.1]) * SEVERITY_SCALE[finding.severity])


#: How far (mm) below the hilum point the heart's growth fades in: the ventricles and the
#: right atrium enlarge, the great vessels above them (at the hila) do not move.
HEART_GROWTH_FADE_MM = 12.0
#: Transverse widening (mm) of the heart per unit of its x factor above 1 (severe
#: cardiomegaly: 0.42, so 71 mm), and the share of it on the patient's left (the left
#: ventricle; the right atrium takes the rest).
HEART_WIDENING_MM = 170.0
HEART_LEFT_SHARE = 0.75
#: Softness (Gaussian sigma, mm) of the border of the tissue a growing heart takes over.
HEART_BORDER_MM = 3.0


def resize_heart(r: PhantomRenderer, volume: np.ndarray, factor: np.ndarray) -> None:
    """Resize the cardiac silhouette by ``factor`` (x, y, z): ``y`` and ``z`` scale it about
    its centre; ``x`` above 1 widens it transversely by ``(factor - 1)`` :data:`HEART_WIDENING_MM`,
    :data:`HEART_LEFT_SHARE` of it to the left, by sweeping each border outwards (a dilation
    along x: a wider heart keeps a border as deep, so as sharp on the film, as a normal one,
    not the thin tapered rim a scaling gives), and below 1 scales it.

    The tissue between the old and the new outline becomes heart: a larger heart takes the
    place of lung and of pericardial and retrosternal fat (never of bone, chest wall or
    diaphragm), a smaller one leaves aerated lung. The heart's own content does not move,
    so nothing it holds (the vessel roots closed into the silhouette, contrast) is dragged
    into the hila; the growth fades in below the hila (:data:`HEART_GROWTH_FADE_MM`) and every
    weight is a soft mask, so the new border is as smooth as the old one.
    """
    factor = np.broadcast_to(np.asarray(factor, dtype=np.float64), (3,))
    if np.allclose(factor, 1.0):
        return
    a = r.anatomy
    h = r.voxel_mm
    center = a.heart_center + np.array([8.0, 0.0, 5.0])  # the left ventricle grows most
    widening = max(factor[0] - 1.0, 0.0) * HEART_WIDENING_MM
    left_mm, right_mm = HEART_LEFT_SHARE * widening, (1.0 - HEART_LEFT_SHARE) * widening
    scale = np.array([min(factor[0], 1.0), factor[1], factor[2]])
    lo = np.array([s.start for s in a.lobe_box["heart"]][::-1]) * h
    hi = np.array([s.stop for s in a.lobe_box["heart"]][::-1]) * h
    lo, hi = np.minimum(lo, center + (lo - center) * scale), np.maximum(hi, center + (hi - center) * scale)
    lo[0], hi[0] = lo[0] - right_mm, hi[0] + left_mm
    box = _local_box(r, (lo + hi) / 2.0, (hi - lo) / 2.0 + 2 * h)
    heart = r._soft["heart"][box].astype(np.float32) * np.float32(1 / 255)
    scaled = _scaled_sample(r, heart[None], box, center, scale)[0]
    z, _, x = _coords(r, box)
    if widening > 0:
        on_left = (1.0 / (1.0 + np.exp(-(x - center[0]) / 6.0))).astype(np.float32)
        # the border bulges most from the heart's middle down to the apex and not at all at
        # its top (the great vessels): the sweep grows smoothly with depth
        top = a.heart_center[2] - a.heart_radius[2]
        t = np.clip((z - top) / (a.heart_center[2] + 10.0 - top), 0.0, 1.0)
        reach = (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # 0 at the top, 1 from the middle
        swept = scaled.copy()
        for distance, towards_left, weight in ((left_mm, True, on_left), (right_mm, False, 1.0 - on_left)):
            voxels = reach[:, 0, 0] * np.float32(distance / h)  # sweep of each slice, in voxels
            for k in range(1, min(int(np.ceil(voxels.max())), scaled.shape[2] - 1) + 1):
                moved = np.zeros_like(scaled)  # the outline moved k voxels outwards
                if towards_left:  # +x
                    moved[..., k:] = scaled[..., :-k]
                else:
                    moved[..., :-k] = scaled[..., k:]
                within = np.clip(voxels - k + 1, 0.0, 1.0)[:, None, None]
                np.maximum(swept, moved * (weight * within), out=swept)
        scaled = swept
    scaled = np.clip(scaled, 0.0, 1.0)
    below_hila = 1.0 / (1.0 + np.exp(-(z - a.hilum["right"][2]) / HEART_GROWTH_FADE_MM))
    region = volume[box]
    inside = heart > 0.9
    mu_heart = np.float32(np.median(region[inside]) if inside.any() else MU_WATER)
    # growth: lung and fat (soft weights: a fat voxel is one below water) become heart
    grow = np.clip(scaled - heart, 0.0, 1.0) * below_hila.astype(np.float32)
    grow = ndi.gaussian_filter(grow, HEART_BORDER_MM / h)  # a border as soft as the CT's own
    fat = np.clip((np.float32(MU_WATER * 0.98) - region) / np.float32(MU_WATER * 0.1), 0.0, 1.0)
    replaceable = np.minimum(r._lung_of(None, box) + fat, 1.0)
    region += (grow * replaceable) * (mu_heart - region)
    # shrinking (a factor below 1; where all grow, a non-convex outline scaled may miss a
    # notch of the old one, which stays): the heart's rim becomes aerated lung
    if np.any(factor < 1.0):
        shrink = np.clip(heart - scaled, 0.0, 1.0) * below_hila.astype(np.float32)
        region += shrink * (np.float32(MU_WATER * 0.2) - region)


def draw_pleural_effusion(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """Water filling the lowest part of the pleural space up to a level, with a meniscus
    that climbs along the chest wall: first the posterior sulcus (lateral view), then the
    costophrenic angle (frontal), then a basal opacity with a curved upper edge."""
    strength = SEVERITY_SCALE[finding.severity]
    sides = _sides(r, finding, rng)
    h = r.voxel_mm
    for side in sides:
        box = r.anatomy.lung_box[side]
        lung = r._lung_of(side, box)
        z = _coords(r, box)[0]
        depth = r._lung_edt[box].astype(np.float32) * np.float32(h)
        base, dome = r.anatomy.lung_base_z[side], r.anatomy.dome_z[side]
        # fluid surface: mild fills the sulci below the dome, moderate covers the dome,
        # severe reaches the mid zone
        surface = np.interp(strength, (0.45, 0.7, 1.0), (base - 0.5 * (base - dome), dome + 12.0, dome - 45.0))
        surface += rng.uniform(-6.0, 6.0)
        # the meniscus: fluid climbs the lateral chest wall, and a little along every surface
        wall = _lateral_distance(r, side, box)
        meniscus = (18.0 + 0.3 * max(base - surface, 0.0)) * np.exp(-wall / 35.0) + 6.0 * np.exp(-depth / 8.0)
        # the whole pleural space fills, edge voxels included (else air lines the wall)
        fluid = np.clip((z - surface + meniscus) / h + 0.5, 0.0, 1.0) * np.minimum(2.0 * lung, 1.0)
        region = volume[box]
        region += fluid.astype(np.float32) * (np.float32(MU_WATER * 1.01) - region)


def draw_opacity(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """Airspace consolidation: patchy soft-tissue density filling part of a lobe."""
    strength = SEVERITY_SCALE[finding.severity]
    for side in _sides(r, finding, rng):
        zone = _zone(r, finding, rng)
        box, weight = _region(r, side, zone)
        patches = _smooth_noise(r, weight.shape, rng)
        inside = weight > 0.5
        if not inside.any():
            raise _Skip("lung zone not found")
        coverage = 0.3 + 0.55 * strength
        threshold = np.quantile(patches[inside], 1.0 - coverage)
        filled = 1.0 / (1.0 + np.exp(-(patches - threshold) / 0.35))
        amount = (0.55 + 0.45 * strength) * filled * weight
        region = volume[box]
        region += amount.astype(np.float32) * (np.float32(MU_WATER * 1.03) - region)


def draw_atelectasis(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """Mild: a plate-like (discoid) band of density, a few mm thick, in the zone (lower by
    default). Moderate/severe: the lobe collapses towards its attachment into a dense
    wedge, and for a lower lobe the hemidiaphragm rises. Unstated severity: either."""
    strength = SEVERITY_SCALE[finding.severity]
    for side in _sides(r, finding, rng):
        zone = _zone(r, finding, rng, weights=(0.15, 0.2, 0.65))
        box, weight = _region(r, side, zone)
        if finding.severity == "mild" or (finding.severity is None and rng.uniform() < 0.5):
            center = _place(r, box, weight, 10.0, rng)
            tilt = rng.uniform(-12, 12, 2)
            half = np.array([rng.uniform(25, 40), rng.uniform(25, 45), 1.8])
            plate_box, plate = _box_weight(r, center, half, (tilt[0], tilt[1], 0.0), corner_mm=1.5)
            plate *= r._lung_of(side, plate_box) * np.float32(0.9)
            region = volume[plate_box]
            region += plate * (np.float32(MU_WATER) - region)
            shape.diaphragm_side_mm[side] -= 4.0
            continue
        scale = 1.0 - 0.38 * strength
        # a collapsing lobe keeps its attachments: the lower lobe to the posterior medial
        # diaphragm, the upper lobe to the superior mediastinum, the middle lobe/lingula
        # to the heart border
        a = r.anatomy
        anchor = a.hilum[side].copy()
        if zone == "lower":
            anchor[1] += 25.0
            anchor[2] = a.dome_z[side] + 10.0
        elif zone == "upper":
            anchor[1] -= 10.0
            anchor[2] = a.lung_apex_z[side] + 0.25 * (a.dome_z[side] - a.lung_apex_z[side])
        else:
            anchor[1] -= 25.0
            anchor[2] += 20.0
        collapsed = _scaled_sample(r, weight[None], box, anchor, scale)[0]
        amount = np.clip(collapsed, 0.0, 1.0) * weight * np.float32(0.92)
        region = volume[box]
        region += amount.astype(np.float32) * (np.float32(MU_WATER * 1.02) - region)
        if zone == "lower":
            shape.diaphragm_side_mm[side] -= 6.0 + 12.0 * strength


def draw_nodule(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """A soft-tissue ball (severity = size: from 1.2 :data:`MIN_VISIBLE_MM`, about 17 mm,
    to 35 mm, a mass), slightly lobulated when large."""
    strength = SEVERITY_SCALE[finding.severity]
    smallest = 1.2 * MIN_VISIBLE_MM
    diameter = (smallest + (35.0 - smallest) * (strength - 0.45) / 0.55) * rng.uniform(0.95, 1.1)
    diameter = float(np.clip(diameter, smallest, 38.0))
    for side in _sides(r, finding, rng):
        zone = finding.zone if finding.zone is not None else None
        box, weight = _region(r, side, zone)
        center = _place(r, box, weight, diameter / 2, rng)
        _ball(r, volume, center, diameter / 2, MU_WATER * 1.5)
        for _ in range(2 if diameter > 15 else 0):  # lobulation of a mass
            offset = rng.normal(0.0, 1.0, 3)
            offset *= diameter * 0.25 / np.linalg.norm(offset)
            _ball(r, volume, center + offset, diameter * 0.32, MU_WATER * 1.5)


def draw_granuloma(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """A small ball, 1.1 to 1.25 times :data:`MIN_VISIBLE_MM` across (15-18 mm), at
    GRANULOMA_MU: denser than a nodule (partly calcified), smaller than any nodule."""
    for side in _sides(r, finding, rng):
        box, weight = _region(r, side, finding.zone)
        diameter = MIN_VISIBLE_MM * rng.uniform(1.1, 1.25)
        _ball(r, volume, _place(r, box, weight, diameter / 2, rng), diameter / 2, GRANULOMA_MU)


def draw_calcified_granuloma(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """The smallest and densest focal finding: a ball of calcium 0.75-0.9 :data:`MIN_VISIBLE_MM`
    across (11-13 mm) at CALCIFIED_MU, denser than bone, so that with its partial volume
    and the display's detail enhancement it still covers three evaluation pixels."""
    for side in _sides(r, finding, rng):
        box, weight = _region(r, side, finding.zone)
        diameter = MIN_VISIBLE_MM * rng.uniform(0.8, 0.95)
        _ball(r, volume, _place(r, box, weight, diameter / 2, rng), diameter / 2, CALCIFIED_MU)


def draw_pneumothorax(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """The lung shrinks towards its hilum and base; the rim it leaves at the apex and the
    lateral wall is air without lung markings, edged by the visceral pleural line."""
    strength = SEVERITY_SCALE[finding.severity]
    scale = 1.0 - 0.42 * strength**1.3
    for side in _sides(r, finding, rng):
        a = r.anatomy
        box = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, r.volume_size)) for s in a.lung_box[side])
        lung = r._lung_of(side, box)
        region = volume[box]
        apex, base = a.lung_apex_z[side], a.lung_base_z[side]
        center = np.array([a.hilum[side][0], a.hilum[side][1], apex + 0.9 * (base - apex)])
        sampled = _scaled_sample(r, np.stack([lung, region * lung]), box, center, scale)
        lung_q = np.clip(sampled[0], 0.0, 1.0)
        collapsed = np.minimum(sampled[1] / scale**3, MU_WATER)
        pleura = 4.0 * lung_q * (1.0 - lung_q) * MU_WATER * 0.6
        new = collapsed + pleura  # air (mu = 0) where the lung has left
        region += lung * (new.astype(np.float32) - region)


def draw_emphysema(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """Fewer lung tissue, most in the upper zones; hyperinflated lungs: domes low and
    flat, a deeper chest (barrel) and a narrow heart."""
    strength = SEVERITY_SCALE[finding.severity]
    a = r.anatomy
    for side in ("left", "right"):
        box = a.lung_box[side]
        z = _coords(r, box)[0]
        upper = np.clip((a.lung_base_z[side] - z) / (a.lung_base_z[side] - a.lung_apex_z[side]), 0.0, 1.0)
        loss = 0.5 * strength * (0.6 + 0.4 * upper)
        volume[box] *= (1.0 - r._lung_of(side, box) * loss).astype(np.float32)
    shape.diaphragm_mm += 8.0 + 14.0 * strength
    shape.flatten = min(0.8, shape.flatten + 0.2 + 0.35 * strength)
    shape.ap_scale *= 1.0 + 0.07 * strength
    shape.heart_factor = shape.heart_factor * np.array([1.0 - 0.08 * strength, 1.0, 1.0])


def draw_edema(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """Both lungs: perihilar ("bat-wing") and basal haze, and Kerley B lines: short
    horizontal septal lines at the lateral lung bases."""
    strength = SEVERITY_SCALE[finding.severity]
    a = r.anatomy
    for side in ("left", "right"):
        box = a.lung_box[side]
        z, y, x = _coords(r, box)
        hx, hy, hz = a.hilum[side]
        perihilar = np.exp(-(((x - hx) / 75.0) ** 2 + ((y - hy) / 90.0) ** 2 + ((z - hz) / 80.0) ** 2))
        basal = np.clip((z - hz) / (a.lung_base_z[side] - hz), 0.0, 1.0)
        patchy = 0.75 + 0.25 * _smooth_noise(r, r._lung_of(side, box).shape, rng, cell_mm=25.0)
        haze = MU_WATER * 0.5 * strength * (perihilar + 0.4 * basal) * np.clip(patchy, 0.3, 1.5)
        volume[box] += (r._lung_of(side, box) * haze).astype(np.float32)
        density = np.float32(MU_WATER * 0.7 * (0.5 + 0.5 * strength))
        for _ in range(int(round(4 + 8 * strength))):
            zz = a.lung_base_z[side] - rng.uniform(40.0, 110.0)
            yy = rng.uniform(y.min() + 30, y.max() - 30)
            lateral = _lateral_lung_edge(r, side, zz, yy)
            if lateral is None:
                continue
            length = rng.uniform(10.0, 18.0)
            inward = 1.0 if side == "right" else -1.0
            center = np.array([lateral + inward * length / 2, yy, zz])
            line_box, line = _box_weight(r, center, np.array([length / 2, rng.uniform(5, 10), 0.5]), (0, 0, 0))
            volume[line_box] += line * r._lung_of(side, line_box) * density


def _lateral_lung_edge(r: PhantomRenderer, side: str, z_mm: float, y_mm: float) -> float | None:
    """x (mm) of the outer lung edge of ``side`` at height z and depth y, if lung is there."""
    zi, yi = int(z_mm / r.voxel_mm), int(y_mm / r.voxel_mm)
    if not (0 <= zi < r.volume_size and 0 <= yi < r.volume_size):
        return None
    row = np.flatnonzero(r._lung_of(side, (zi, yi, slice(None))) > 0.5)
    if len(row) == 0:
        return None
    edge = row.min() if side == "right" else row.max()
    return (edge + 0.5) * r.voxel_mm


def _lateral_distance(r: PhantomRenderer, side: str, box) -> np.ndarray:
    """Distance (mm) in x from each voxel of ``box`` to the outer edge of that lung's row."""
    lung = r._lung_of(side, box) > 0.5
    count = lung.shape[2]
    if side == "right":
        edge = np.where(lung.any(axis=2), np.argmax(lung, axis=2), count)
        offset = np.arange(count)[None, None, :] - edge[..., None]
    else:
        edge = np.where(lung.any(axis=2), count - 1 - np.argmax(lung[..., ::-1], axis=2), -1)
        offset = edge[..., None] - np.arange(count)[None, None, :]
    return np.maximum(offset, 0).astype(np.float32) * np.float32(r.voxel_mm)


def draw_hypoinflation(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """Low lung volumes: domes high, lungs short and denser, markings crowded."""
    strength = SEVERITY_SCALE[finding.severity]
    rise = 14.0 + 26.0 * strength
    shape.diaphragm_mm -= rise
    height = r._lung_height_mm
    for side in ("left", "right"):
        box = r.anatomy.lung_box[side]
        volume[box] *= 1.0 + r._lung_of(side, box) * np.float32(rise / (height - rise))
    shape.heart_factor = shape.heart_factor * np.array([1.0 + 0.06 * strength, 1.0, 1.0])


def draw_pacemaker(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """A titanium generator in a subcutaneous pocket below the clavicle (default left) and
    one or two leads through the subclavian vein and the SVC into the right heart."""
    side = finding.side if finding.side in ("left", "right") else "left"
    a = r.anatomy
    clavicle = a.clavicle[side]
    outward = -1.0 if side == "right" else 1.0
    gx = clavicle["center"][0] + outward * 5.0
    gz = clavicle["center"][2] + 38.0
    last = r.volume_size - 1
    skin = a.anterior_y[min(int(gz / r.voxel_mm), last), min(int(gx / r.voxel_mm), last)]
    gy = (skin if np.isfinite(skin) else clavicle["center"][1] - 20.0) + 10.0
    generator = np.array([gx, gy, gz])
    tilt = rng.uniform(-15, 15)
    _box_shape(r, volume, generator, np.array([22.0, 3.5, 20.0]), (0.0, tilt, 0.0), 0.4, corner_mm=8.0)
    header = generator + np.array([0.0, 0.0, -24.0])
    _box_shape(r, volume, header, np.array([14.0, 3.5, 5.0]), (0.0, tilt, 0.0), MU_WATER * 1.6, corner_mm=2.0)
    v = a.veins
    below_clavicle = 0.5 * (clavicle["center"] + clavicle["medial"]) + np.array([0.0, 10.0, 10.0])
    bcv = v[f"bcv_{side}"]
    turn = header + np.array([-outward * 12.0, 2.0, -8.0])
    common = [header, turn, below_clavicle, bcv, v["svc_top"], v["svc_bottom"], v["right_atrium"]]
    tricuspid = 0.5 * (v["right_atrium"] + v["rv_apex"])
    _tube(r, volume, _spline(np.array(common + [tricuspid, v["rv_apex"]])), 0.5)
    if rng.uniform() < 0.7:  # dual chamber: a second lead into the right atrial appendage
        appendage = v["right_atrium"] + np.array([5.0, -18.0, -22.0])
        _tube(r, volume, _spline(np.array(common + [appendage])), 0.5)


def draw_central_line(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """A radio-opaque catheter from the jugular or subclavian vein of that side (default
    right) through the brachiocephalic vein and the SVC, its tip at the cavoatrial junction."""
    side = finding.side if finding.side in ("left", "right") else "right"
    a = r.anatomy
    v = a.veins
    outward = -1.0 if side == "right" else 1.0
    bcv = v[f"bcv_{side}"]
    tip = v["svc_top"] + 0.85 * (v["svc_bottom"] - v["svc_top"])
    if rng.uniform() < 0.6:  # internal jugular
        entry = np.array([bcv[0] + outward * 18.0, bcv[1] + 5.0, 0.0])
        path = [entry, np.array([bcv[0] + outward * 12.0, bcv[1], bcv[2] * 0.5]), bcv]
    else:  # subclavian
        clavicle = a.clavicle[side]
        entry = clavicle["lateral"] + np.array([-outward * 15.0, 5.0, 18.0])
        path = [entry, clavicle["center"] + np.array([0.0, 12.0, 10.0]), bcv]
    path += [v["svc_top"], tip]
    _tube(r, volume, _spline(np.array(path)), 1.2)


def draw_sternotomy(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """Median sternotomy wires: a vertical row of steel loops around the sternum, each
    with a dense twisted knot in front."""
    a = r.anatomy
    top, bottom = a.sternum_z
    count = int(rng.integers(5, 8))
    for z in np.linspace(top + 8.0, bottom - 12.0, count):
        zi = int(np.clip(z / r.voxel_mm, 0, r.volume_size - 1))
        rows = np.flatnonzero(a.sternum_xy[:, 2] > 0)
        zi = rows[np.argmin(np.abs(rows - zi))]
        sx, sy, half_width, half_depth = a.sternum_xy[zi]
        t = np.linspace(0, 2 * np.pi, 48)
        tilt = np.deg2rad(rng.uniform(20, 40))
        ax, ay = half_width + 3.0, half_depth + 2.5
        loop = np.stack(
            [sx + ax * np.cos(t), sy + ay * np.sin(t) * np.cos(tilt), z + ay * np.sin(t) * np.sin(tilt)], axis=1
        )
        _tube(r, volume, loop, 1.0)
        knot = np.array([[sx, sy - ay, z - 3.0], [sx + 1.5, sy - ay - 3.0, z], [sx - 1.5, sy - ay - 4.0, z + 3.0]])
        _tube(r, volume, _spline(knot), 2.5)


def draw_scoliosis(r: PhantomRenderer, volume, finding: Finding, rng, shape: _Shape) -> None:
    """The thoracic spine bends sideways, convex to ``side`` (default by seed), with a
    smaller lumbar counter-curve; the thorax follows."""
    strength = SEVERITY_SCALE[finding.severity]
    side = _sides(r, finding, rng)[0] if finding.side != "bilateral" else "right"
    amplitude = 30.0 * strength**1.5
    shape.scoliosis_mm += amplitude if side == "right" else -amplitude


#: The drawer of every finding kind, in drawing order: findings that change the heart's size
#: first (the heart is then resized once, :func:`resize_heart`), then densities, then devices
#: on top.
DRAWERS: dict[str, Drawer] = {
    "emphysema": draw_emphysema,
    "hypoinflation": draw_hypoinflation,
    "cardiomegaly": draw_cardiomegaly,
    "edema": draw_edema,
    "pleural_effusion": draw_pleural_effusion,
    "opacity": draw_opacity,
    "atelectasis": draw_atelectasis,
    "pneumothorax": draw_pneumothorax,
    "nodule": draw_nodule,
    "granuloma": draw_granuloma,
    "calcified_granuloma": draw_calcified_granuloma,
    "pacemaker": draw_pacemaker,
    "central_line": draw_central_line,
    "sternotomy": draw_sternotomy,
    "scoliosis": draw_scoliosis,
}
DRAW_ORDER: tuple[str, ...] = tuple(DRAWERS)
if sorted(DRAW_ORDER) != sorted(FINDING_KINDS):
    raise AssertionError(
        f"the phantom's drawers {sorted(DRAW_ORDER)} do not match the finding kinds {sorted(FINDING_KINDS)}"
    )


def drawer_for(kind: str) -> tuple[int, Drawer]:
    """The drawing position and the drawer of finding ``kind``;
    :class:`~xrg.errors.FindingError` for a kind the phantom cannot draw."""
    if kind not in DRAWERS:
        raise FindingError(f"the phantom has no drawer for finding kind {kind!r}; it draws {', '.join(DRAW_ORDER)}")
    return DRAW_ORDER.index(kind), DRAWERS[kind]
