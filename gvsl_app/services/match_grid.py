"""The grid a match analyses a large scan on: the same field of view, at most ``ANALYSIS_SIDE``
voxels a side.

Everything before the final map (placing the moving scan, the network's cube, the
refinement's levels, which are at most 96 voxels a side) needs no more than this; only the
map on the fixed grid and the warp of the original moving scan are computed at full
resolution. A 512 x 512 x 300 CT analysed at full size held a 315 MB copy of each scan per
step (placed, normalised, masked) for levels a fifth as fine.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from gvsl_app.data.preprocess import resample_to
from gvsl_app.io.images import volume_to_sitk
from gvsl_app.io.volume import Volume

ANALYSIS_SIDE = 256
"""The most voxels a side of the analysis grid: twice the refinement's finest level (96) with
room to spare, and above the sides of the scans the presets were tuned on, which are
therefore analysed on their own grids, unchanged."""


def analysis_grid(shape: tuple[int, ...], spacing: tuple[float, ...], side: int | None = None):
    """The analysis grid's shape (z, y, x) and spacing (x, y, z) for a grid of ``shape`` and
    ``spacing``: every side scaled by one factor so that the longest is ``side`` (the grid's
    proportions, which the refinement's levels follow, stay), with the spacing that keeps the
    first and last voxel centres where they were (so a map in normalised coordinates, corner to
    corner, means the same on both grids).
    """
    k = min(1.0, (side or ANALYSIS_SIDE) / max(shape))
    new_shape = tuple(max(2, round(int(n) * k)) if k < 1 else int(n) for n in shape)
    zyx_spacing = spacing[::-1]
    new_spacing = tuple(s * (n - 1) / max(m - 1, 1) for s, n, m in zip(zyx_spacing, shape, new_shape))
    return new_shape, tuple(new_spacing[::-1])


def analysis_volume(volume: Volume, side: int | None = None) -> Volume:
    """``volume`` on its analysis grid (:func:`analysis_grid`), or itself when no side exceeds
    ``side`` (default ``ANALYSIS_SIDE``). The voxels are first averaged in blocks of the whole factor (BinShrink, so the
    coarser grid does not alias fine detail), then linearly resampled onto the grid; edge
    voxels take the nearest value rather than the background.
    """
    side = side or ANALYSIS_SIDE
    if max(volume.shape) <= side:
        return volume
    shape, spacing = analysis_grid(volume.shape, volume.spacing, side)
    factors = [max(1, (n - 1) // max(m - 1, 1)) for n, m in zip(volume.shape, shape)]
    image = sitk.Cast(volume_to_sitk(volume), sitk.sitkFloat32)
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors[::-1])
    shrunk = Volume(
        sitk.GetArrayFromImage(image),
        image.GetSpacing(),
        image.GetOrigin(),
        image.GetDirection(),
        dtype=volume.dtype,
        source=volume.source,
        meta=volume.meta,
    )
    grid = Volume(np.zeros(shape, np.uint8), spacing, volume.origin, volume.direction, source=volume.source)
    out = resample_to(shrunk, grid, nearest_outside=True)
    out.meta = dict(volume.meta, analysis_grid_of=list(volume.shape))
    return out
