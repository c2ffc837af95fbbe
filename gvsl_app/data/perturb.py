"""Moving a scan on purpose: the hard pairs of the capture-range benchmark and the tests.

A real pair starts tens of millimetres and degrees apart, in unrelated frames, or with a
field of view that covers part of the other scan. These functions make such pairs from a
scan and its labels, exactly and reproducibly: the anatomy turned and shifted on a grid
padded so that nothing leaves it, the frame moved without touching the voxels, or a slab cut
out of the scan.
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk

from gvsl_app.data.preprocess import affine_transform, physical_centre
from gvsl_app.io.images import volume_to_sitk
from gvsl_app.io.volume import Volume


def euler_matrix(degrees: tuple[float, float, float]) -> np.ndarray:
    """The 3x3 rotation about physical x, then y, then z by ``degrees``."""
    ax, ay, az = (math.radians(a) for a in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def padded(volume: Volume, margin_mm: float, fill: float | None = None) -> Volume:
    """``volume`` on a grid grown by ``margin_mm`` on every side (same spacing and
    direction), the new voxels set to ``fill`` (default: the scan's minimum, its background).
    """
    if margin_mm <= 0:
        return volume
    pad = [int(math.ceil(margin_mm / s)) for s in volume.spacing]  # (x, y, z)
    value = float(np.min(volume.array)) if fill is None else float(fill)
    img = sitk.ConstantPad(volume_to_sitk(volume), pad, pad, value)
    arr = sitk.GetArrayFromImage(img).astype(volume.array.dtype, copy=False)
    return Volume(arr, img.GetSpacing(), img.GetOrigin(), img.GetDirection(), source=volume.source, meta=volume.meta)


def moved_anatomy(
    volume: Volume,
    degrees: tuple[float, float, float] = (0.0, 0.0, 0.0),
    shift_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    *,
    is_label: bool = False,
) -> Volume:
    """``volume`` with its anatomy turned by ``degrees`` about the grid's centre and shifted by
    ``shift_mm`` (physical x, y, z), on the same grid: a scan of the same body in another pose.
    Labels move by nearest neighbour; what leaves the grid is lost (pad it first).
    """
    centre = physical_centre(volume)
    rot = euler_matrix(degrees)
    # the voxel at y shows what was at R^-1 (y - c - t) + c
    back = np.eye(4)
    back[:3, :3] = rot.T
    back[:3, 3] = centre - rot.T @ (centre + np.asarray(shift_mm, float))
    img = volume_to_sitk(volume if is_label else volume.with_array(volume.array.astype(np.float32)))
    fill = 0.0 if is_label else float(np.min(volume.array))
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    out = sitk.GetArrayFromImage(sitk.Resample(img, img, affine_transform(back), interp, fill))
    return volume.with_array(out.astype(volume.array.dtype, copy=False))


def moved_frame(volume: Volume, origin_shift_mm: tuple[float, float, float]) -> Volume:
    """``volume`` with the same voxels in another physical frame (its origin moved): the same
    scan as another export or another hospital writes it.
    """
    origin = tuple(float(o) + float(d) for o, d in zip(volume.origin, origin_shift_mm))
    return volume.with_array(volume.array, origin=origin)


def slab(volume: Volume, axis: int, start: float, stop: float) -> Volume:
    """The part of ``volume`` between fractions ``start`` and ``stop`` of array axis ``axis``
    (0 = z): a partial field of view that keeps its place in physical space.
    """
    n = volume.shape[axis]
    lo, hi = int(round(start * n)), max(int(round(stop * n)), int(round(start * n)) + 1)
    index = [slice(None)] * 3
    index[axis] = slice(lo, hi)
    corner = [0, 0, 0]
    corner[axis] = lo
    origin = volume.index_to_physical_matrix() @ np.array([*corner, 1.0])
    part = np.ascontiguousarray(volume.array[tuple(index)])
    return volume.with_array(part, origin=tuple(float(v) for v in origin[:3]))


T2_LIKE_BRAIN = {1: 0.62, 2: 0.42, 3: 1.0}
"""Relative intensities of grey matter, white matter and CSF in a T2-weighted brain scan (CSF
brightest, white matter darkest: the reverse of T1), for :func:`other_contrast`."""


def other_contrast(image: Volume, labels: Volume, levels: dict[int, float] = T2_LIKE_BRAIN) -> Volume:
    """``image`` in another contrast: each labelled tissue set to its level in ``levels`` (times
    the image's 99th percentile), keeping its own texture (its voxels' ratio to the tissue's
    mean), the background as it is. With the brain labels, a T2-like scan of a T1 subject: the
    same anatomy, the tissues' order of brightness reversed.
    """
    arr = np.asarray(image.array, np.float32)
    out = arr.copy()
    top = float(np.percentile(arr, 99)) or 1.0
    for label, level in levels.items():
        inside = labels.array == label
        if inside.any():
            mean = float(arr[inside].mean()) or 1.0
            out[inside] = level * top * arr[inside] / mean
    return image.with_array(out.astype(np.float32))
