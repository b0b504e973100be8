"""Patients and randomness: a patient's anatomy and exposure from its seed, seeded streams,
the shape changes a render asks of the sampling grid, and the rendered pair.

There is one CT (the only chest CT with organ masks an installed package ships, see
``shared/DATA.md``), so every patient is that body reshaped: :class:`PatientParams` samples
an anatomical model per seed (thorax width, depth and height, heart size and position,
hemidiaphragm heights, breath, soft tissue and breasts, posture, exposure) within adult
ranges, and the renderer applies it as smooth warps of the CT and its organ masks together,
so findings drawn relative to the masks move with their organs.
"""

from __future__ import annotations

import zlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from xrg.data.findings import Finding


def _rng(seed: int, *words: object) -> np.random.Generator:
    """An independent random stream for ``seed`` and a purpose (stable across processes)."""
    keys = [int(seed) % 2**64] + [zlib.crc32(str(word).encode("utf-8")) for word in words]
    return np.random.default_rng(np.random.SeedSequence(keys))


def _normal(rng: np.random.Generator, mean: float, std: float, low: float, high: float) -> float:
    """A normal draw clipped to ``low..high`` (the documented range of a parameter)."""
    return float(np.clip(rng.normal(mean, std), low, high))


#: Documented range of every sampled scalar parameter (tuples: each component), checked by
#: the tests. Factors are relative to the CT's own patient (a supine adult with a narrowish
#: chest: lung width ~250 mm, heart width ~130 mm, cardiothoracic ratio ~0.53 on our
#: parallel-beam frontal view, right dome ~17 mm above the left).
PARAMETER_RANGES: dict[str, tuple[float, float]] = {
    # body size: adult chest dimensions scale with stature (height sd ~7 cm of ~170 cm, ~4%);
    # women's chests are ~6% smaller than men's on average
    "body_size": (0.93, 1.07),
    # inner thoracic width on PA films ~25-33 cm in adults (sd ~1.8 cm, ~6%), with body_size
    "thorax_width": (0.88, 1.12),
    # front-back depth: the thoracic index (AP / transverse diameter) is ~0.55-0.85 in adults
    # (mean ~0.7, sd ~0.06, ~9%); barrel chests (emphysema) add to this
    "thorax_depth": (0.88, 1.12),
    # height of the lungs (apex to base, ~24-30 cm on PA, ~8%), the diaphragm following
    # (scaling about mid-lung); the CT's lungs nearly fill the frame, so taller ones are
    # limited to +8% (their sulci would leave it)
    "lung_height": (0.9, 1.08),
    # breath: diaphragm lower (+) or higher (-) at the film; domes move ~1-3 cm between
    # a shallow and a full inspiration on erect PA films
    "inflation_mm": (-14.0, 14.0),
    # each hemidiaphragm on its own: the right dome lies 1-3 cm above the left in ~90% of
    # adults (Felson); the CT's difference is ~17 mm, so the two offsets keep it mostly so
    "diaphragm_left_mm": (-10.0, 10.0),
    "diaphragm_right_mm": (-10.0, 10.0),
    # transverse heart size: the normal adult cardiothoracic ratio is ~0.39-0.50 on PA films
    # (mean ~0.45, sd ~0.04, ~9%); the CT's is ~0.53 (a narrow chest), so the factor centres
    # below 1 (0.92) and normals span ~0.44-0.56
    "heart_scale": (0.8, 1.08),
    # heart position with the lower mediastinum (mm, right-left and head-feet): the heart
    # lies more vertical in tall slender chests, more transverse in stocky ones
    "heart_shift_x_mm": (-9.0, 9.0),
    "heart_shift_z_mm": (-9.0, 9.0),
    # attenuation of the non-lung soft tissue (habitus: thin to obese adults)
    "soft_tissue": (0.8, 1.3),
    # forward protrusion of each breast beyond the chest wall (mm): 0-6 for male chests,
    # 12-32 for female ones (small to medium; the field of view leaves ~35 mm in front)
    "breast_mm": (0.0, 32.0),
    # posture: rotation about x (tilt forwards), y (sideways tilt) and z (rotation of the
    # patient about the vertical), each within a few degrees as on acceptable PA films
    "rotation_deg": (-3.0, 3.0),
    # exposure: kVp/mAs scale the line integrals (a higher kVp gives lower attenuation and
    # contrast), the processing's display gamma, and quantum noise at mid-grey
    "exposure_gain": (0.9, 1.1),
    "exposure_gamma": (0.85, 1.15),
    "noise_std": (0.006, 0.02),
}


@dataclass(frozen=True)
class PatientParams:
    """The anatomy and exposure of one synthetic patient; everything comes from the seed.

    Geometry acts on the CT through one sampling grid; ``rotation_deg`` and ``shift_mm`` are
    ``(x, y, z)`` = (right-left, front-back, head-feet). The thorax is scaled about its
    centre (the spine's x, mid-depth, mid-lung height) by :attr:`scale`; the heart moves
    with the lower mediastinum by ``heart_shift_x_mm``/``heart_shift_z_mm``; the domes move
    by ``inflation_mm`` plus each side's offset, the lungs stretching between apex and
    dome. Ranges: :data:`PARAMETER_RANGES`.
    """

    body_size: float  # overall size of the chest, isotropic
    thorax_width: float  # right-left size of the chest
    thorax_depth: float  # front-back size (the AP/lateral ratio of the rib cage)
    lung_height: float  # head-feet size of the lungs, the diaphragm following
    rotation_deg: tuple[float, float, float]  # rotation about the x, y and z axes
    shift_mm: tuple[float, float, float]  # position of the body in the field of view
    elastic_mm: np.ndarray = field(repr=False, compare=False)  # (3, 5, 5, 5) smooth displacement control points
    inflation_mm: float = 0.0  # diaphragm displacement: + = deeper breath (domes lower, lungs taller)
    diaphragm_left_mm: float = 0.0  # extra displacement of the left dome (+ = lower)
    diaphragm_right_mm: float = 0.0  # extra displacement of the right dome (+ = lower)
    heart_scale: float = 1.0  # transverse size of the heart
    heart_shift_x_mm: float = 0.0  # + = towards the patient's left
    heart_shift_z_mm: float = 0.0  # + = lower
    soft_tissue: float = 1.0  # attenuation factor of non-lung soft tissue (habitus)
    breast_mm: float = 0.0  # forward protrusion of each breast
    exposure_gain: float = 1.0  # scales the line integrals before display (kVp/mAs)
    exposure_gamma: float = 1.0  # display gamma
    noise_std: float = 0.01  # detector noise, in display units at mid-grey

    @classmethod
    def sample(cls, seed: int) -> PatientParams:
        rng = _rng(seed, "patient")
        r = PARAMETER_RANGES
        female = bool(rng.uniform() < 0.5)
        return cls(
            body_size=_normal(rng, 0.97 if female else 1.03, 0.03, *r["body_size"]),
            thorax_width=_normal(rng, 1.0, 0.055, *r["thorax_width"]),
            thorax_depth=_normal(rng, 1.0, 0.06, *r["thorax_depth"]),
            lung_height=_normal(rng, 1.0, 0.04, *r["lung_height"]),
            rotation_deg=tuple(float(v) for v in rng.uniform(*r["rotation_deg"], 3)),
            shift_mm=(float(rng.uniform(-8, 8)), float(rng.uniform(-5, 5)), float(rng.uniform(-8, 8))),
            elastic_mm=rng.normal(0.0, 3.0, (3, 5, 5, 5)).astype(np.float32),
            inflation_mm=_normal(rng, 0.0, 7.0, *r["inflation_mm"]),
            diaphragm_left_mm=_normal(rng, 0.0, 4.0, *r["diaphragm_left_mm"]),
            diaphragm_right_mm=_normal(rng, 0.0, 4.0, *r["diaphragm_right_mm"]),
            heart_scale=_normal(rng, 0.92, 0.07, *r["heart_scale"]),
            heart_shift_x_mm=_normal(rng, 0.0, 4.0, *r["heart_shift_x_mm"]),
            heart_shift_z_mm=_normal(rng, 0.0, 4.0, *r["heart_shift_z_mm"]),
            soft_tissue=float(rng.uniform(*r["soft_tissue"])),
            breast_mm=float(rng.uniform(12.0, 32.0) if female else rng.uniform(0.0, 6.0)),
            exposure_gain=float(rng.uniform(*r["exposure_gain"])),
            exposure_gamma=float(rng.uniform(*r["exposure_gamma"])),
            noise_std=float(rng.uniform(*r["noise_std"])),
        )

    @classmethod
    def canonical(cls) -> PatientParams:
        """The population's average patient in a fixed pose: every anatomical parameter at the
        mean :meth:`sample` draws it around (breasts at the mean over both sexes), no rotation,
        shift or elastic warp, neutral exposure and no detector noise. Findings rendered into it
        form a reconstruction target the report's text predicts (``xrg data build`` with
        ``canonical_targets``): the same for every patient, so only the findings vary."""
        return cls(
            body_size=1.0, thorax_width=1.0, thorax_depth=1.0, lung_height=1.0,
            rotation_deg=(0.0, 0.0, 0.0), shift_mm=(0.0, 0.0, 0.0),
            elastic_mm=np.zeros((3, 5, 5, 5), dtype=np.float32),
            heart_scale=0.92, breast_mm=0.5 * (22.0 + 3.0), exposure_gain=1.0, exposure_gamma=1.0, noise_std=0.0,
        )  # fmt: skip

    @property
    def scale(self) -> tuple[float, float, float]:
        """Size factors of the thorax ``(x, y, z)`` about its centre."""
        size = self.body_size
        return (size * self.thorax_width, size * self.thorax_depth, size * self.lung_height)

    def shape(self) -> _Shape:
        """The sampling-grid changes this patient starts from; findings add to them."""
        return _Shape(
            diaphragm_mm=self.inflation_mm,
            diaphragm_side_mm={"left": self.diaphragm_left_mm, "right": self.diaphragm_right_mm},
            heart_scale_xyz=1.0 + np.array([1.0, 0.6, 0.35]) * (self.heart_scale - 1.0),
            heart_shift_mm=np.array([self.heart_shift_x_mm, 0.0, self.heart_shift_z_mm]),
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
    heart_factor: np.ndarray = field(default_factory=lambda: np.ones(3))  # findings' heart size factor (x, y, z)
    heart_scale_xyz: np.ndarray = field(default_factory=lambda: np.ones(3))  # the patient's heart size (x, y, z)
    heart_shift_mm: np.ndarray = field(default_factory=lambda: np.zeros(3))  # heart and lower mediastinum (x, y, z)
    scoliosis_mm: float = 0.0  # lateral bend at the apex of the curve; + = convex to the patient's right
    ap_scale: float = 1.0  # front-back size of the chest (barrel chest > 1)
