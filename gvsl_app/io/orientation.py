"""Voxel axis order and world axes: a scan whose voxel axes are permuted relative to the
world's (a head acquired coronally or sagittally) shown, and computed on, in world order, and
results put back on the file's own voxel grid.

The napari reader shows such a scan axis-aligned (napari cannot slice it otherwise) and the
engine's segmentation runs on it axis-aligned (a network sees the anatomy as it was trained
on), both with :func:`axis_aligned`; :func:`file_frame` and :func:`volume_in_file_frame`
undo it. Geometry is ITK's (see :class:`~gvsl_app.io.volume.Volume`); "world (z, y, x)" is
physical millimetres in (z, y, x) order, as napari layers are placed.
"""

from __future__ import annotations

import itertools

import numpy as np

from gvsl_app.io.volume import Volume

_REV = np.eye(3)[::-1]  # swaps (x, y, z) <-> (z, y, x)


def geometry_from_matrix(matrix: np.ndarray) -> dict:
    """ITK ``spacing``/``origin``/``direction`` from a data-to-world (z, y, x) 4x4 matrix."""
    lin = _REV @ np.asarray(matrix, dtype=float)[:3, :3] @ _REV  # physical xyz per xyz index
    spacing = np.linalg.norm(lin, axis=0)
    if np.any(spacing <= 0):
        raise ValueError("the layer's transform has a zero scale; cannot derive a voxel spacing")
    direction = lin / spacing
    origin = _REV @ np.asarray(matrix, dtype=float)[:3, 3]
    return {
        "spacing": tuple(spacing.tolist()),
        "origin": tuple(origin.tolist()),
        "direction": tuple(direction.flatten().tolist()),
    }


SNAP_ATOL = 1e-5
"""Direction cosines within this of a signed permutation are that permutation (float32 noise
of NIfTI headers; at most 2.6 micrometres over a 256 mm field of view)."""


def _nearest_axes(d_world: np.ndarray) -> tuple[int, ...]:
    """For each data axis (z, y, x) the world axis it runs closest to, one world axis each
    (the signed permutation nearest in the Frobenius sense, none on a zero cosine).
    """
    best: tuple | None = None
    for perm in itertools.permutations(range(3)):
        vals = np.abs(d_world[list(perm), [0, 1, 2]])
        key = (bool(np.all(vals > 1e-6)), float(vals.sum()))
        if best is None or key > best[0]:
            best = (key, perm)
    assert best is not None
    return tuple(best[1])


def _permutation_matrix(axes, flips=(False, False, False), file_shape=(1, 1, 1)) -> np.ndarray:
    """The 4x4 map from indices of ``array.transpose(axes)`` (then reversed along the shown
    axes ``k`` where ``flips[k]``) to indices of ``array`` (of shape ``file_shape``).
    """
    m = np.eye(4)
    m[:3, :3] = 0.0
    for k, a in enumerate(axes):
        m[int(a), k] = -1.0 if flips[k] else 1.0
        m[int(a), 3] = float(file_shape[int(a)] - 1) if flips[k] else 0.0
    return m


def _flipped(array: np.ndarray, flips) -> np.ndarray:
    return array[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def _index_matrix(volume: Volume, d_world: np.ndarray) -> np.ndarray:
    """Data (z, y, x) index -> world (z, y, x) mm with the given world-ordered direction."""
    m = np.eye(4)
    m[:3, :3] = d_world @ np.diag(np.asarray(volume.spacing, dtype=float)[::-1])
    m[:3, 3] = np.asarray(volume.origin, dtype=float)[::-1]
    return m


def axis_aligned(volume: Volume) -> tuple[Volume, dict | None]:
    """``volume`` with its voxel axes in world (z, y, x) order, physically identical, and a
    record of what was done (``None`` when nothing was).

    napari slices a layer along world axes: a scan whose voxel axes are permuted relative
    to them (a head acquired coronally or sagittally: direction ``(1,0,0, 0,0,-1, 0,1,0)``)
    has no 2D view napari can draw (a singular slice transform). Its voxels are transposed
    so that each voxel axis runs along the world axis it is closest to, and reversed along
    the axes that run against it, so that the layer's affine is the identity (``scale``
    and ``translate`` only; napari's thick slices lose a flipped axis). What remains is the
    rotation to the nearest axis-aligned orientation of a truly oblique scan. A scan whose
    axes are not permuted is left as it is (its flips stay in the affine, as before).
    Cosines within :data:`SNAP_ATOL` of a signed permutation are snapped to it, so the
    affine is exactly diagonal. Every voxel keeps its physical position (up to the snap).

    The record (the napari layer's ``metadata["gvsl_orientation"]``): ``file_direction`` and
    ``file_shape`` of the file, ``axes`` and ``flips`` (``shown =
    file_array.transpose(axes)``, then reversed along each shown axis ``k`` where
    ``flips[k]``), ``snapped`` and ``residual_deg`` (the angle between the voxel axes and
    the world axes after that: 0 unless the scan is oblique). :func:`file_frame` undoes it.
    """
    d_world = _REV @ volume.direction_matrix @ _REV  # rows world (z, y, x), columns data (z, y, x)
    world_of = _nearest_axes(d_world)
    signed = np.zeros((3, 3))
    for a, w in enumerate(world_of):
        signed[w, a] = 1.0 if d_world[w, a] >= 0 else -1.0
    off = float(np.abs(d_world - signed).max())
    snapped = 0.0 < off <= SNAP_ATOL
    axes = tuple(world_of.index(k) for k in range(3))
    shown_dir = (signed if snapped else d_world) @ _permutation_matrix(axes)[:3, :3]
    signs = np.sign(np.diag(shown_dir))
    rotation = shown_dir @ np.diag(signs)  # flips taken out: a rotation near identity
    flips = tuple(bool(f) for f in signs < 0) if axes != (0, 1, 2) else (False, False, False)
    residual = float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
    if axes == (0, 1, 2) and not snapped and off <= SNAP_ATOL:
        return volume, None
    record = {
        "file_direction": tuple(volume.direction),
        "file_shape": tuple(int(n) for n in volume.shape),
        "axes": axes,
        "flips": flips,
        "snapped": bool(snapped),
        "residual_deg": residual if off > SNAP_ATOL else 0.0,
    }
    if axes == (0, 1, 2) and not snapped:
        return volume, record  # oblique but already closest to the world axes: nothing moved
    matrix = _index_matrix(volume, signed if snapped else d_world) @ _permutation_matrix(axes, flips, volume.shape)
    array = np.ascontiguousarray(_flipped(volume.array.transpose(axes), flips))
    return volume.with_array(array, dtype=volume.dtype, **geometry_from_matrix(matrix)), record


def file_frame(array: np.ndarray, matrix: np.ndarray, record: dict | None) -> tuple[np.ndarray, dict]:
    """The voxels and ITK geometry to write for a layer's ``array`` and data-to-world
    ``matrix``: in the file's own axis order when ``record`` (from :func:`axis_aligned`)
    describes this grid, so a scan, its segmentation or a result on its grid is saved on
    the file's voxel grid; else as shown. Both are physically identical.
    """
    axes = tuple(int(a) for a in (record or {}).get("axes", (0, 1, 2)))
    flips = tuple(bool(f) for f in (record or {}).get("flips", (False, False, False)))
    file_shape = tuple(int(n) for n in (record or {}).get("file_shape", array.shape))
    if record is None or array.shape != tuple(file_shape[a] for a in axes):
        return array, geometry_from_matrix(matrix)
    array = grid_in_file_order(array, record)
    to_shown = _permutation_matrix(axes, flips, file_shape)  # file index of each shown index
    geo = geometry_from_matrix(np.asarray(matrix, dtype=float) @ np.linalg.inv(to_shown))
    file_direction = tuple(float(d) for d in record["file_direction"])
    if record.get("snapped") and np.allclose(geo["direction"], file_direction, rtol=0, atol=2 * SNAP_ATOL):
        geo["direction"] = file_direction  # the snap undone: the file's header, exactly
    return array, geo


def grid_in_file_order(array: np.ndarray, record: dict) -> np.ndarray:
    """``array`` on a grid shown per ``record`` (:func:`axis_aligned`) in the file's voxel
    order; axes after the first three (a displacement field's components) stay as they are.
    """
    axes = tuple(int(a) for a in record.get("axes", (0, 1, 2)))
    flipped = _flipped(array, record.get("flips", (False, False, False)))
    return np.ascontiguousarray(np.transpose(flipped, (*np.argsort(axes), *range(3, array.ndim))))


def volume_in_file_frame(volume: Volume, record: dict | None) -> Volume:
    """``volume`` (an engine result on a reoriented layer's grid) on the file's own voxel grid
    when ``record`` describes its grid (see :func:`file_frame`), else ``volume`` itself.
    """
    if record is None:
        return volume
    matrix = _index_matrix(volume, _REV @ volume.direction_matrix @ _REV)
    array, geo = file_frame(volume.array, matrix, record)
    if array is volume.array:
        return volume
    return volume.with_array(array, dtype=volume.dtype, **geo)
