"""Anatomy landmarks of the CT: lungs, diaphragm, heart, spine, sternum, clavicles, veins;
and the breasts a patient may add in front of its chest wall (:func:`breast_tissue`).

Measured once from the label cube (patient-independent) in cube millimetres, and stored
with the cache arrays (:meth:`Anatomy.to_arrays`, :meth:`Anatomy.from_arrays`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xrg.data.phantom._numeric import _bounding_box
from xrg.data.phantom.ct import (
    BRACHIOCEPHALIC_VEIN_LEFT,
    BRACHIOCEPHALIC_VEIN_RIGHT,
    CLAVICLE_LEFT,
    CLAVICLE_RIGHT,
    FIELD_OF_VIEW_MM,
    HEART,
    MU_WATER,
    SOFT_MASKS,
    STERNUM,
    SVC,
    TRACHEA,
    VERTEBRAE,
    _lung_mask,
)
from xrg.errors import ResourceError


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
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> Anatomy:
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
    def measure(cls, arrays: dict[str, np.ndarray]) -> Anatomy:
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


#: Attenuation of breast tissue, a mix of fat and glands (about -70 HU).
BREAST_MU = MU_WATER * 0.93


def breast_tissue(
    anatomy: Anatomy, axis_mm: np.ndarray, protrusion_mm: float
) -> list[tuple[tuple[slice, slice, slice], np.ndarray]]:
    """Attenuation of the two breasts in front of the chest wall: for each, a voxel box
    and the ``mu`` of its voxels (0 elsewhere), to be maxed into the canonical cube.

    Each breast is a half ellipsoid on the anterior skin surface, centred 80 mm either side
    of the spine a little above the lower end of the sternum (the 4th to 6th ribs), 120 mm
    wide, 100 mm high and ``protrusion_mm`` deep, tapering upwards; its steep lower edge (the
    inframammary fold) casts the curved shadow over the lung bases that PA films of women
    show. Only voxels in front of the skin are filled, so the chest wall and the organs are
    untouched.
    """
    if protrusion_mm <= 0:
        return []
    h = anatomy.voxel_mm
    size = len(axis_mm)
    half_width, half_height = 60.0, 50.0
    center_z = anatomy.sternum_z[1] - 15.0
    parts = []
    for side in ("right", "left"):
        center_x = anatomy.midline_x + (80.0 if side == "left" else -80.0)
        zs = slice(max(0, int((center_z - half_height) / h)), min(size, int(np.ceil((center_z + half_height) / h)) + 1))
        xs = slice(max(0, int((center_x - half_width) / h)), min(size, int(np.ceil((center_x + half_width) / h)) + 1))
        skin = anatomy.anterior_y[zs, xs]  # (z, x)
        if zs.stop <= zs.start or xs.stop <= xs.start or not np.isfinite(skin).any():
            continue
        top = max(0, int((np.nanmin(skin) - protrusion_mm) / h) - 1)
        ys = slice(top, min(size, int(np.ceil(np.nanmax(skin) / h)) + 1))
        z, y, x = axis_mm[zs][:, None, None], axis_mm[ys][None, :, None], axis_mm[xs][None, None, :]
        radial = ((x - center_x) / half_width) ** 2 + ((z - center_z) / half_height) ** 2
        # steep below the nipple line (the fold's sharp edge), tapering gently above it
        profile = 0.5 + 1.5 / (1.0 + np.exp((z - center_z) / 12.0))
        depth = protrusion_mm * np.clip(1.0 - radial, 0.0, None) ** profile
        ahead = np.nan_to_num(skin, nan=-1e3)[:, None, :] - y  # mm in front of the skin
        weight = np.clip((depth - ahead) / h + 0.5, 0.0, 1.0) * (ahead >= 0.0) * (depth > 0.0)
        parts.append(((zs, ys, xs), (weight * BREAST_MU).astype(np.float32)))
    return parts
