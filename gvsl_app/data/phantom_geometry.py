"""Geometry primitives of the synthetic phantoms: rotations, smooth fields and implicit shapes.

Shared by the cardiac CT phantom (:mod:`gvsl_app.data.synthetic`, whose structures are laid
out in :mod:`gvsl_app.data.cardiac_anatomy`) and the brain MR subjects
(:mod:`gvsl_app.data.brain`). Everything works on whole volumes at once: coordinates are
three broadcastable ``(z, y, x)`` float32 arrays (x, y, z components) in millimetres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from scipy.spatial import cKDTree

Coords = tuple[np.ndarray, np.ndarray, np.ndarray]
"""The x, y and z coordinates of every voxel, three broadcastable ``(z, y, x)`` arrays."""


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """Rotation about a uniformly random axis by an angle uniform in [0, max_deg] (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    ang = np.deg2rad(rng.uniform(0.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(ang) * k + (1 - np.cos(ang)) * (k @ k)


def _rbf_basis(coords: np.ndarray, n_ctrl: int) -> np.ndarray:
    """(len(coords), n_ctrl) Gaussian basis, rows summing to 1, control points spanning coords."""
    lo, hi = float(coords.min()), float(coords.max())
    centres = np.linspace(lo, hi, n_ctrl)
    width = 0.7 * (hi - lo) / max(n_ctrl - 1, 1) + 1e-6
    b = np.exp(-0.5 * ((coords[:, None] - centres[None, :]) / width) ** 2)
    return (b / b.sum(axis=1, keepdims=True)).astype(np.float32)


def _smooth_field(ctrl: np.ndarray, bz: np.ndarray, by: np.ndarray, bx: np.ndarray) -> np.ndarray:
    """Tensor-product interpolation of a (gz, gy, gx) control grid to (nz, ny, nx)."""
    out = np.tensordot(bz, ctrl.astype(np.float32), axes=(1, 0))  # nz, gy, gx
    out = np.tensordot(out, by, axes=(1, 1))  # nz, gx, ny
    out = np.tensordot(out, bx, axes=(1, 1))  # nz, ny, nx
    return out


class _Frame:
    """Coordinates of all voxels in a local frame: u = F^T (q - c), as three (z,y,x) arrays."""

    def __init__(self, q: Coords, centre: Sequence[float] | np.ndarray, rot: np.ndarray | None = None) -> None:
        qx, qy, qz = (q[i] - np.float32(centre[i]) for i in range(3))
        if rot is None:
            self.u: tuple[np.ndarray, ...] = (qx, qy, qz)
        else:
            f = np.asarray(rot, dtype=np.float32)
            self.u = tuple(f[0, i] * qx + f[1, i] * qy + f[2, i] * qz for i in range(3))

    def ellipsoid(
        self, semi: Sequence[float] | np.ndarray, offset: Sequence[float] | np.ndarray = (0.0, 0.0, 0.0)
    ) -> np.ndarray:
        """Normalised squared radius: < 1 inside the ellipsoid (semi-axes along frame axes)."""
        terms = (((u - np.float32(o)) / np.float32(a)) ** 2 for u, a, o in zip(self.u, semi, offset))
        return cast(np.ndarray, sum(terms))  # three terms, so never the empty sum's int 0


def _tube(q: Coords, points: np.ndarray, radii: np.ndarray, step: float = 0.6) -> np.ndarray:
    """Boolean mask of voxels within ``radius`` of the polyline through ``points`` (anatomical mm).

    The polyline is sampled every ``step`` mm with linearly interpolated radii; distances come from
    a k-d tree restricted to the tube's bounding box, so the cost scales with the tube, not the volume.
    """
    pts_parts: list[np.ndarray] = []
    rad_parts: list[np.ndarray] = []
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        pts_parts.append(a + t * (b - a))
        rad_parts.append(ra + t[:, 0] * (rb - ra))
    pts_parts.append(points[-1:])
    rad_parts.append(radii[-1:])
    pts, rad = np.concatenate(pts_parts), np.concatenate(rad_parts)
    rmax = float(rad.max())
    lo, hi = pts.min(0) - rmax, pts.max(0) + rmax
    box = np.ones(q[0].shape, dtype=bool)
    for i in range(3):
        box &= (q[i] >= lo[i]) & (q[i] <= hi[i])
    idx = np.flatnonzero(box)
    mask = np.zeros(q[0].size, dtype=bool)
    if idx.size:
        cand = np.stack([q[i].ravel()[idx] for i in range(3)], axis=1)
        dist, nearest = cKDTree(pts).query(cand, distance_upper_bound=rmax)
        ok = np.isfinite(dist)
        inside = np.zeros(idx.size, dtype=bool)
        inside[ok] = dist[ok] <= rad[nearest[ok]]
        mask[idx[inside]] = True
    return mask.reshape(q[0].shape)
