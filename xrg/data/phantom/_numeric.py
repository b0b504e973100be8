"""Small numeric helpers of the phantom: bounding boxes, hat weights, rotations, resizing, splines."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from xrg.errors import ResourceError


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
