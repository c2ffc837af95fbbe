"""Preprocessing between files and the network: physical resampling, overlap, resizing, intensities.

The pipeline (docs/design/architecture.md) is: the moving volume is resampled onto the fixed grid in
physical space (:func:`resample_to`, after :func:`check_overlap` made sure the two scans
share space at all), both are mapped to [0, 1] (:func:`normalise`), and both are resized to
the network's working cube and back (:func:`resize_array`, ``align_corners=True`` like all
sampling in the project).
"""

from __future__ import annotations

import itertools
import logging
from typing import Literal

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from gvsl_app.io.geometry import same_geometry
from gvsl_app.io.images import volume_to_sitk
from gvsl_app.io.volume import Volume

logger = logging.getLogger(__name__)

__all__ = [
    "CT_WINDOW",
    "MR_PERCENTILES",
    "resample_to",
    "physical_bounds",
    "physical_overlap",
    "check_overlap",
    "resize_array",
    "detect_modality",
    "normalise",
]

#: Hounsfield window mapped to [0, 1] for CT, for pre-training and downstream alike.
#: The official GVSL code was inconsistent: pre-training clipped the raw values to
#: [0, 2048] without an offset, while the downstream code added +1024 first (i.e. used
#: [-1024, 1024] HU). Using one HU window everywhere is the consistent version of their
#: range: air (-1000 HU) maps to ~0, water to 0.5, dense bone and contrast saturate at 1.
CT_WINDOW: tuple[float, float] = (-1024.0, 1024.0)

#: Percentiles of the MR intensities mapped to 0 and 1 (robust to a few hot voxels).
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: Thresholds of :func:`detect_modality`: CT has air far below 0 and bone/contrast well
#: above 0 in Hounsfield units; MR intensities are non-negative arbitrary units.
CT_MIN_BELOW = -500.0
CT_MAX_ABOVE = 300.0

# Percentiles of very large volumes are estimated on a regular subsample of this many
# voxels: exact enough for a robust [0, 1] mapping and it keeps normalise() fast on 512^3.
_PERCENTILE_SAMPLE = 1 << 24

Modality = Literal["ct", "mr"]


# --------------------------------------------------------------------------------------
# Physical resampling and overlap
# --------------------------------------------------------------------------------------


def _nan_to_min(arr: np.ndarray) -> np.ndarray:
    """Replace NaN by the minimum of the other voxels (NaN would spread through interpolation)."""
    if arr.dtype.kind != "f":
        return arr
    nan = np.isnan(arr)
    if not nan.any():
        return arr
    finite = arr[~nan]
    arr = arr.copy()
    arr[nan] = finite.min() if finite.size else 0.0
    return arr


def resample_to(
    volume: Volume,
    reference: Volume,
    *,
    is_label: bool = False,
    default_value: float | None = None,
    nearest_outside: bool = False,
    transform: np.ndarray | None = None,
) -> Volume:
    """Resample ``volume`` onto ``reference``'s grid in physical space (SimpleITK).

    Every output voxel takes the value found at its physical position (millimetres,
    accounting for spacing, origin and direction of both volumes), so the result overlays
    the reference exactly. Images use linear interpolation and come back as ``float32``
    (an integer output would round away the interpolation); labels use nearest neighbour
    and keep their integer type and exact label values. Positions outside ``volume`` get
    ``default_value``: the volume's minimum for images (background, e.g. air in CT, rather
    than an artificial 0 that is mid-grey in Hounsfield units), 0 for labels; with
    ``nearest_outside`` they take the nearest voxel's value instead (for a grid over the same
    field of view whose edge voxels lie up to half a voxel past ``volume``'s). NaN voxels
    of an image are treated as its minimum, as :func:`normalise` does. When both grids are
    already the same, the voxels are returned unchanged (no interpolation blur). The result
    keeps ``volume``'s source, original pixel type and meta, plus ``meta["resampled_to"]``.
    ``transform`` (a 4x4 physical matrix taking a reference point to the point of ``volume``
    it shows, such as an initial alignment) places ``volume`` first; none is the identity.
    """
    arr = np.asarray(volume.array)
    if is_label:
        if arr.dtype.kind == "f":
            raise ValueError(
                f"{volume.source or 'label map'}: labels to resample must be integers (got {arr.dtype}); "
                "use io.read_labels, which checks and converts them"
            )
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        fill = 0.0 if default_value is None else float(default_value)
    else:
        arr = _nan_to_min(arr.astype(np.float32, copy=False))
        fill = float(arr.min()) if default_value is None else float(default_value)
    meta = dict(volume.meta, resampled_to=reference.source)
    moved = transform is not None and not np.allclose(transform, np.eye(4))
    if not moved and volume.shape == reference.shape and same_geometry(volume, reference, rtol=1e-6):
        out = arr.copy()
    else:
        placed = affine_transform(transform) if transform is not None and moved else None
        out = _resampled(volume.with_array(arr), reference, placed, is_label, fill, nearest_outside)
    return Volume(
        out,
        reference.spacing,
        reference.origin,
        reference.direction,
        dtype=volume.dtype,
        source=volume.source,
        meta=meta,
    )


def _resampled(
    volume: Volume,
    reference: Volume,
    transform: sitk.Transform | None,
    is_label: bool,
    fill: float,
    nearest_outside: bool,
) -> np.ndarray:
    """SimpleITK's resampling of ``volume`` onto ``reference``'s grid (through ``transform``)."""
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in reference.shape[::-1]])
    f.SetOutputSpacing(reference.spacing)
    f.SetOutputOrigin(reference.origin)
    f.SetOutputDirection(reference.direction)
    f.SetTransform(transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity))
    f.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)
    f.SetDefaultPixelValue(fill)
    f.SetUseNearestNeighborExtrapolator(nearest_outside)
    return sitk.GetArrayFromImage(f.Execute(volume_to_sitk(volume)))


def affine_transform(matrix: np.ndarray) -> sitk.AffineTransform:
    """The SimpleITK transform of a 4x4 physical matrix (output point -> input point)."""
    t = sitk.AffineTransform(3)
    t.SetMatrix(np.asarray(matrix, float)[:3, :3].flatten().tolist())
    t.SetTranslation(np.asarray(matrix, float)[:3, 3].tolist())
    return t


def _index_to_physical(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """(M, origin) with physical = M @ (x, y, z) index + origin."""
    return volume.direction_matrix @ np.diag(volume.spacing), np.asarray(volume.origin, float)


def _box_corners(volume: Volume) -> np.ndarray:
    """The 8 corners of the voxel-extent box, in continuous (x, y, z) index coordinates.

    Voxels are taken as cells of one spacing centred on their index, so the box of an
    n-voxel axis is [-0.5, n - 0.5]: two adjacent, non-overlapping tiles of one scan share
    a face and overlap 0.
    """
    n = np.asarray(volume.shape[::-1], float)
    return np.array([[-0.5 + c * n[i] for i, c in enumerate(bits)] for bits in itertools.product((0, 1), repeat=3)])


def physical_bounds(volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box ``(lo, hi)`` in mm, physical (x, y, z), of the voxel extent."""
    m, o = _index_to_physical(volume)
    pts = _box_corners(volume) @ m.T + o
    return pts.min(axis=0), pts.max(axis=0)


def physical_centre(volume: Volume) -> np.ndarray:
    """The physical centre (x, y, z) in mm of the volume's grid (its middle voxel position)."""
    m = volume.index_to_physical_matrix()  # (z, y, x) index -> physical (x, y, z)
    return m[:3, :3] @ ((np.asarray(volume.shape, float) - 1.0) / 2.0) + m[:3, 3]


def physical_overlap(a: Volume, b: Volume) -> float:
    """Fraction (0 to 1) of ``a``'s physical box that lies inside ``b``'s physical box.

    Boxes are the voxel extents oriented by each volume's direction, so rotated scans are
    handled. When the two grids' axes are parallel (the usual case, any flips or axis
    permutations included) the fraction is exact; otherwise it is measured on a 32^3
    lattice of points spread over ``a``'s box (about 3% resolution, exact 0 for disjoint
    boxes), which is all a "do these scans share space" check needs.
    """
    ma, oa = _index_to_physical(a)
    mb, ob = _index_to_physical(b)
    na = np.asarray(a.shape[::-1], float)
    nb = np.asarray(b.shape[::-1], float)
    # Continuous index of b for a continuous index of a: ib = r @ ia + t.
    mb_inv = np.linalg.inv(mb)
    r = mb_inv @ ma
    t = mb_inv @ (oa - ob)
    rn = np.abs(r) / np.abs(r).max(axis=1, keepdims=True)
    if ((rn > 1e-6).sum(axis=1) == 1).all() and ((rn > 1e-6).sum(axis=0) == 1).all():
        # Parallel axes: a's box is an axis-aligned box in b's index space.
        corners = _box_corners(a) @ r.T + t
        lo, hi = corners.min(axis=0), corners.max(axis=0)
        inter = np.clip(np.minimum(hi, nb - 0.5) - np.maximum(lo, -0.5), 0.0, None)
        return float(np.clip(np.prod(inter / (hi - lo)), 0.0, 1.0))
    k = 32
    axes = [(np.arange(k) + 0.5) / k * na[i] - 0.5 for i in range(3)]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    ib = pts @ r.T + t
    inside = np.all((ib >= -0.5) & (ib <= nb - 0.5), axis=1)
    return float(inside.mean())


def _describe_box(volume: Volume) -> str:
    lo, hi = physical_bounds(volume)
    return ", ".join(f"{ax} {l:.1f}..{h:.1f}" for ax, l, h in zip("xyz", lo, hi)) + " mm"


def check_overlap(fixed: Volume, moving: Volume) -> float:
    """Make sure ``moving`` shares physical space with ``fixed``; return the overlap fraction.

    Resampling ``moving`` onto a grid it does not overlap yields a volume filled with the
    background value, which the network would then happily "match". An empty overlap
    (usually two exports with unrelated origins) raises ``ValueError`` naming both files
    and their extents; a small overlap (< 10% of the fixed box) is logged as a warning.
    """
    frac = physical_overlap(fixed, moving)
    if frac <= 0.0:
        raise ValueError(
            f"fixed {fixed.source or '(in memory)'} ({_describe_box(fixed)}) and moving "
            f"{moving.source or '(in memory)'} ({_describe_box(moving)}) do not overlap in physical space: "
            "their coordinates come from unrelated frames (e.g. different origins after export). "
            "Re-export them in the scanner frame, or set the moving origin to the fixed one before matching."
        )
    if frac < 0.1:
        logger.warning(
            "moving %s covers only %.1f%% of fixed %s in physical space",
            moving.source or "(in memory)",
            100 * frac,
            fixed.source or "(in memory)",
        )
    return frac


# --------------------------------------------------------------------------------------
# Working-cube resizing
# --------------------------------------------------------------------------------------


def _as_shape(shape: int | tuple[int, ...]) -> tuple[int, int, int]:
    if isinstance(shape, (int, np.integer)):
        shape = (int(shape),) * 3
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"target shape must be 3 positive sizes (z, y, x) or one int, got {shape}")
    return shape


def resize_array(array: np.ndarray, shape: int | tuple[int, int, int], *, is_label: bool = False) -> np.ndarray:
    """Resize a 3D array to ``shape`` (an int means a cube) with the project's corner convention.

    ``align_corners=True``: the first and last voxel centres of input and output coincide,
    as for every sampling in the project, so going to the working cube and back keeps the
    grid registered. Images: trilinear (``torch.nn.functional.interpolate``), returned as
    ``float32``. Labels: nearest neighbour under the same convention (output voxel ``i``
    takes input voxel ``round(i * (n_in - 1) / (n_out - 1))``), which keeps the exact label
    values and the array's integer type. No anti-aliasing: strong downsampling of a noisy
    image aliases, as with the official code.
    """
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"resize_array expects a 3D (z, y, x) array, got shape {arr.shape}")
    shape = _as_shape(shape)
    if arr.shape == shape:
        return arr.copy() if is_label else arr.astype(np.float32, copy=True)
    if is_label:
        idx = [np.rint(np.linspace(0.0, n_in - 1, n_out)).astype(np.intp) for n_in, n_out in zip(arr.shape, shape)]
        return arr[np.ix_(*idx)]
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    with torch.no_grad():
        out = F.interpolate(t, size=shape, mode="trilinear", align_corners=True)
    return out[0, 0].numpy()


# --------------------------------------------------------------------------------------
# Intensities
# --------------------------------------------------------------------------------------


def _finite_values(arr: np.ndarray) -> np.ndarray:
    flat = np.asarray(arr).reshape(-1)
    if flat.dtype.kind == "f":
        flat = flat[np.isfinite(flat)]
    return flat


def detect_modality(volume: Volume | np.ndarray) -> Modality:
    """Guess whether a volume is CT (Hounsfield units) or MR.

    Rule: a DICOM modality tag read by :func:`io.read_volume` (``meta["dicom"]["modality"]``
    of ``CT`` or ``MR``) wins. Otherwise the values decide: CT when the minimum of the
    finite voxels is <= ``CT_MIN_BELOW`` (-500 HU: air, lung) and the maximum is >=
    ``CT_MAX_ABOVE`` (300 HU: bone, contrast); anything else is MR (non-negative arbitrary
    units). A CT stored without its rescale intercept (air at 0 instead of -1000) reads as
    MR by this rule: pass ``modality="ct"`` and shift it (or fix the file) in that case.
    """
    if isinstance(volume, Volume):
        tag = str(volume.meta.get("dicom", {}).get("modality", "")).upper()
        if tag in ("CT", "MR"):
            return tag.lower()  # type: ignore[return-value]
        arr = volume.array
    else:
        arr = np.asarray(volume)
    vals = _finite_values(arr)
    if vals.size == 0:
        return "mr"
    lo, hi = float(vals.min()), float(vals.max())
    return "ct" if lo <= CT_MIN_BELOW and hi >= CT_MAX_ABOVE else "mr"


def normalise(
    volume_or_array: Volume | np.ndarray,
    modality: str = "auto",
    *,
    window: tuple[float, float] = CT_WINDOW,
    percentiles: tuple[float, float] = MR_PERCENTILES,
) -> np.ndarray:
    """Map intensities to ``float32`` in [0, 1], the network's input range.

    ``modality`` is ``"ct"``, ``"mr"`` or ``"auto"`` (:func:`detect_modality`). CT: values
    are clipped to the Hounsfield ``window`` (default ``CT_WINDOW`` = [-1024, 1024] HU) and
    scaled linearly, a fixed mapping that does not depend on the content, so the same HU
    value gives the same input in pre-training, fine-tuning, matching, on whole volumes and
    on crops. MR: the ``percentiles`` (default 0.5 and 99.5) of the finite voxels map to 0
    and 1 and the result is clipped (percentiles of volumes above 16M voxels are estimated
    on a regular subsample). NaN voxels are treated as the volume's minimum (and +/-inf as
    its maximum/minimum), so they end up as background, never as NaN. A constant volume
    (no contrast to scale) gives zeros with a logged warning for MR; for CT the fixed
    window still applies (so a constant crop keeps its HU meaning) and a warning is logged.
    """
    arr = volume_or_array.array if isinstance(volume_or_array, Volume) else np.asarray(volume_or_array)
    name = volume_or_array.source if isinstance(volume_or_array, Volume) and volume_or_array.source else "volume"
    modality = str(modality).lower()
    if modality == "auto":
        modality = detect_modality(volume_or_array)
    if modality not in ("ct", "mr"):
        raise ValueError(f"modality must be 'auto', 'ct' or 'mr', got {modality!r}")
    x = np.array(arr, dtype=np.float32, copy=True)
    if x.size == 0:
        return x
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        if not _replace_non_finite(x, name):
            return np.zeros_like(x)
    if modality == "ct":
        return _scale_ct_window(x, window, name)
    return _scale_mr_percentiles(x, percentiles, name)


def _replace_non_finite(x: np.ndarray, name: str) -> bool:
    """NaN and -inf to the finite minimum, +inf to the maximum, in place; ``False`` when none is finite."""
    vals = x[np.isfinite(x)]
    if vals.size == 0:
        logger.warning("%s: no finite voxels; normalised to zeros", name)
        return False
    lo_v, hi_v = float(vals.min()), float(vals.max())
    x[np.isnan(x)] = lo_v
    x[np.isposinf(x)] = hi_v
    x[np.isneginf(x)] = lo_v
    return True


def _scale_ct_window(x: np.ndarray, window: tuple[float, float], name: str) -> np.ndarray:
    """``x`` clipped to the Hounsfield ``window`` and scaled to [0, 1], in place."""
    vmin, vmax = float(x.min()), float(x.max())
    w0, w1 = float(window[0]), float(window[1])
    if not w1 > w0:
        raise ValueError(f"CT window must be (low, high) with low < high, got {window}")
    if vmin == vmax:
        logger.warning("%s: constant volume (%g HU); mapped through the CT window as is", name, vmin)
    np.clip(x, w0, w1, out=x)
    x -= w0
    x /= w1 - w0
    return x


def _scale_mr_percentiles(x: np.ndarray, percentiles: tuple[float, float], name: str) -> np.ndarray:
    """``x`` with its ``percentiles`` mapped to 0 and 1, clipped, in place (zeros when constant)."""
    vmin, vmax = float(x.min()), float(x.max())
    p0, p1 = float(percentiles[0]), float(percentiles[1])
    if not 0.0 <= p0 < p1 <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    if vmin == vmax:
        logger.warning("%s: constant volume (value %g); no contrast to normalise, returning zeros", name, vmin)
        return np.zeros_like(x)
    flat = x.reshape(-1)
    if flat.size > _PERCENTILE_SAMPLE:
        flat = flat[:: -(-flat.size // _PERCENTILE_SAMPLE)]
    lo, hi = (float(v) for v in np.percentile(flat, [p0, p1]))
    if hi <= lo:
        # Over (p1 - p0)% of the voxels share one value (e.g. a mostly-empty background):
        # fall back to the full range, which is known not to be degenerate here.
        lo, hi = vmin, vmax
    x -= lo
    x /= hi - lo
    np.clip(x, 0.0, 1.0, out=x)
    return x
