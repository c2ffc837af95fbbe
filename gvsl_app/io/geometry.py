"""Comparing the grids of two volumes: shape, spacing, origin and direction, within a tolerance."""

from __future__ import annotations

import numpy as np

from gvsl_app.io.volume import Volume

#: Relative tolerance used when two grids are compared (spacing relative to itself, origin
#: relative to the voxel size, direction cosines absolutely): files written by different
#: tools round geometry differently (float32 NIfTI headers, DICOM decimal strings).
GEOMETRY_RTOL = 1e-3


def geometry_differences(a: Volume, b: Volume, rtol: float = GEOMETRY_RTOL) -> list[str]:
    """Human-readable list of how ``a``'s grid differs from ``b``'s (empty when the same).

    Spacing is compared relatively, origin relative to the larger voxel size (a thousandth
    of a voxel is far below anything visible, but absolute millimetre tolerances would be
    wrong for both 0.3 mm and 5 mm grids), direction cosines absolutely.
    """
    out = []
    if a.shape != b.shape:
        out.append(f"shape (z, y, x) {a.shape} vs {b.shape}")
    sa, sb = np.asarray(a.spacing), np.asarray(b.spacing)
    if not np.allclose(sa, sb, rtol=rtol, atol=0):
        out.append(f"spacing {_fmt(a.spacing)} vs {_fmt(b.spacing)} mm")
    voxel = max(float(sa.max()), float(sb.max()), 1e-9)
    if not np.allclose(a.origin, b.origin, rtol=0, atol=rtol * voxel):
        out.append(f"origin {_fmt(a.origin)} vs {_fmt(b.origin)} mm")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=rtol):
        out.append(f"direction {_fmt(a.direction)} vs {_fmt(b.direction)}")
    return out


def same_geometry(a: Volume, b: Volume, rtol: float = GEOMETRY_RTOL) -> bool:
    """True when ``a`` and ``b`` share shape, spacing, origin and direction (see ``geometry_differences``)."""
    return not geometry_differences(a, b, rtol)


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
