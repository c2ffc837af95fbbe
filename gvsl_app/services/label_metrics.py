"""Per-structure comparison of two label maps in physical space: volumes, Dice, HD95, ASSD.

The distances are MONAI's (``compute_hausdorff_distance`` at the 95th percentile and the
symmetric ``compute_average_surface_distance``) with the voxel spacing passed in, so an
anisotropic scan is measured in millimetres, not voxels. A structure's row says when a
metric is undefined instead of inventing a number: present in neither map (Dice 0/0) or
in only one (no surface to measure a distance to); summaries average the defined values
only and say how many there were.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from gvsl_app.io.volume import Volume

__all__ = [
    "StructureMetrics",
    "check_label_map",
    "compare_label_maps",
    "summarise_structures",
    "nothing_to_compare",
    "ABSENT_FROM_BOTH",
    "disagreement_map",
    "structure_centres",
    "METRIC_COLUMNS",
    "DISAGREEMENT_NAMES",
]

DISAGREEMENT_NAMES = {1: "only in the label map", 2: "only in the reference", 3: "different structures"}
"""Values of :func:`disagreement_map`."""

ABSENT_FROM_BOTH = "absent from both maps: Dice and distances undefined"
"""The note of a structure in neither map (its Dice is 0/0)."""

METRIC_COLUMNS = ("label", "name", "volume_ml", "ref_volume_ml", "dice", "hd95_mm", "assd_mm", "note")
"""The columns of one structure's row, in table order."""


@dataclass(frozen=True)
class StructureMetrics:
    """One structure of a label map, against an optional reference (``None``: undefined)."""

    label: int
    name: str
    volume_ml: float
    ref_volume_ml: float | None = None
    dice: float | None = None
    hd95_mm: float | None = None
    assd_mm: float | None = None
    note: str = ""

    def row(self) -> dict:
        """The metrics as one table row (a dict of the fields)."""
        return asdict(self)


def check_label_map(volume: Volume, what: str = "label map") -> np.ndarray:
    """The integer array of a label map, or a ``ValueError`` naming the file and the problem.

    Non-integer values (an image or a linearly resampled map), NaN and negative labels are
    refused: each would silently corrupt every volume and overlap.
    """
    arr = np.asarray(volume.array)
    src = volume.source or "(in memory)"
    if arr.ndim != 3:
        raise ValueError(f"{what} {src}: expected a 3D label map, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ValueError(f"{what} {src}: contains NaN or infinite values; a label map holds integers")
        if not np.array_equal(arr, np.round(arr)):
            raise ValueError(
                f"{what} {src}: has fractional values (an image, or a label map resampled with linear "
                "interpolation); use the label map itself, resampled with nearest neighbour"
            )
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iub":
        raise ValueError(f"{what} {src}: values of type {arr.dtype} are not labels")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{what} {src}: has negative labels (min {int(arr.min())}); labels are 0 (background) or more")
    return arr


def _spacing_zyx(volume: Volume) -> tuple[float, float, float]:
    sx, sy, sz = volume.spacing
    return (float(sz), float(sy), float(sx))


def _distances(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """HD95 and symmetric ASSD in mm between two non-empty binary masks (MONAI)."""
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    sp = [list(spacing)]
    with warnings.catch_warnings():
        # MONAI 1.5 warns about an argument its own metrics pass internally; nothing for a user to do
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        hd = compute_hausdorff_distance(p, r, include_background=True, percentile=95, spacing=sp)
        asd = compute_average_surface_distance(p, r, include_background=True, symmetric=True, spacing=sp)
    return float(hd.reshape(-1)[0]), float(asd.reshape(-1)[0])


def compare_label_maps(
    pred: Volume,
    ref: Volume | None = None,
    names: dict[int, str] | None = None,
    labels: Iterable[int] | None = None,
    distances: bool = True,
) -> list[StructureMetrics]:
    """Volume (mL) of every structure of ``pred`` and, with ``ref`` on the same grid, its Dice,
    95 % Hausdorff distance and average symmetric surface distance in mm.

    ``labels`` (default: every non-zero value in either map) fixes the rows, so a structure
    asked for and absent from both maps gets a row saying so; ``names`` maps values to
    structure names (a value without one is named ``label N``). Both maps must be
    integer label maps on the same grid (same shape; resample with nearest neighbour first
    otherwise). ``distances=False`` skips HD95/ASSD, the slow part for large maps.
    """
    p = check_label_map(pred, "label map")
    r = check_label_map(ref, "reference") if ref is not None else None
    if ref is not None and r is not None and r.shape != p.shape:
        raise ValueError(
            f"label map {pred.source} has shape {p.shape} but the reference {ref.source} has {r.shape}: both must "
            "lie on one grid (resample one onto the other with nearest neighbour first)"
        )
    names = names or {}
    voxel_ml = float(np.prod(pred.spacing)) / 1000.0
    present = set(np.unique(p).tolist()) | (set(np.unique(r).tolist()) if r is not None else set())
    # Rows for the structures present (or asked for), not for every name of a colour table:
    # a FreeSurfer table names 1300 structures, and each row scans the whole volume.
    values = sorted({int(v) for v in (labels if labels is not None else present) if int(v) != 0})
    spacing = _spacing_zyx(pred)
    out = []
    for v in values:
        mp = p == v
        n_pred = int(mp.sum())
        row: dict[str, Any] = {"label": v, "name": names.get(v, f"label {v}"), "volume_ml": n_pred * voxel_ml}
        if r is not None:
            mr = r == v
            n_ref = int(mr.sum())
            row["ref_volume_ml"] = n_ref * voxel_ml
            if n_pred == 0 and n_ref == 0:
                row["note"] = ABSENT_FROM_BOTH
            else:
                row["dice"] = 2.0 * int(np.logical_and(mp, mr).sum()) / (n_pred + n_ref)
                if n_pred == 0 or n_ref == 0:
                    row["note"] = f"absent from the {'label map' if n_pred == 0 else 'reference'}: distances undefined"
                elif distances:
                    row["hd95_mm"], row["assd_mm"] = _distances(mp, mr, spacing)
        elif n_pred == 0:
            row["note"] = "absent from the label map"
        out.append(StructureMetrics(**row))
    return out


def nothing_to_compare(with_reference: bool) -> StructureMetrics:
    """The row a table shows for a case without any structure (every voxel 0 in both maps),
    so the case is listed and says why it has no metrics rather than silently missing.
    """
    where = "the label map or the reference" if with_reference else "the label map"
    return StructureMetrics(
        label=0,
        name="(no structure)",
        volume_ml=0.0,
        ref_volume_ml=0.0 if with_reference else None,
        note=f"no structure in {where} (every voxel is 0): nothing to compare",
    )


def summarise_structures(rows: Sequence[StructureMetrics]) -> dict[str, dict[str, float | int | None]]:
    """Per metric: the mean and standard deviation over the rows where it is defined, and how
    many rows that was (an undefined value is left out, never averaged as NaN or 0).
    """
    out: dict[str, dict[str, float | int | None]] = {}
    for key in ("volume_ml", "dice", "hd95_mm", "assd_mm"):
        vals = [getattr(r, key) for r in rows if getattr(r, key) is not None and math.isfinite(getattr(r, key))]
        out[key] = {
            "mean": float(np.mean(vals)) if vals else None,
            "std": float(np.std(vals)) if vals else None,
            "n": len(vals),
        }
    return out


def disagreement_map(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Where two label maps on one grid differ (uint8, :data:`DISAGREEMENT_NAMES`): 1 labelled
    only in ``pred`` (false positive), 2 only in ``ref`` (false negative), 3 both labelled
    but as different structures; 0 where they agree.
    """
    out = np.zeros(pred.shape, np.uint8)
    p, r = pred != 0, ref != 0
    out[p & ~r] = 1
    out[~p & r] = 2
    out[p & r & (pred != ref)] = 3
    return out


def structure_centres(labels: np.ndarray, values: Iterable[int]) -> dict[int, tuple[float, float, float]]:
    """Centre of mass (voxel indices z, y, x) of each given value present in ``labels``."""
    from scipy import ndimage

    values = [int(v) for v in values]
    present = [v for v in values if v != 0 and np.any(labels == v)]
    if not present:
        return {}
    centres = ndimage.center_of_mass(np.ones(labels.shape, np.uint8), labels, present)
    return {v: (float(c[0]), float(c[1]), float(c[2])) for v, c in zip(present, centres)}
