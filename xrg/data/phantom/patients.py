"""Patients and randomness: a patient's anatomy and exposure from its seed, seeded streams,
the shape changes a render asks of the sampling grid, and the rendered pair.
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
    def sample(cls, seed: int) -> PatientParams:
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
