"""Synthetic cardiac CT-like phantoms with the seven MM-WHS structures, exact ground truth.

A subject is built in physical millimetres, vectorised with numpy, in three steps:

1. every voxel centre ``p`` (physical LPS: +x patient left, +y posterior, +z cranial) is
   mapped into the *anatomical frame* ``q = R^T (p - t) + d(p)``: a random global pose
   (rotation ``R`` up to 15 degrees about a random axis, translation ``t`` of a few mm) and
   one smooth random displacement field ``d`` (Gaussian radial basis on a coarse grid);
2. implicit functions (ellipsoids, truncated ellipsoids, tubes around curves) are
   evaluated at ``q`` and painted in a fixed priority order into a label map and an HU map;
3. the HU map is blurred (partial volume) and Gaussian noise is added.

The topology is fixed: the myocardium (a shell, truncated at the base plane) wraps the LV
cavity; the RV is a crescent on the right-anterior side of the septum; LA and RA sit above
the base (cranial); the aorta leaves the LV outflow, ascends, arches and descends
posteriorly; the pulmonary artery leaves the RV outflow and branches left and right.
Shapes, pose, deformation, HU values, noise, blur and voxel spacing vary per subject.

All randomness derives from the ``seed`` through independent ``numpy`` streams (geometry,
abnormality, noise), so a normal and an abnormal subject with the same seed are identical
except for the myocardial abnormality.

This module holds the pipeline (grid, pose, acquisition, meta) and the dataset writer; the
structures of step 2 are in :mod:`gvsl_app.data.cardiac_anatomy` and the shape primitives
(also used by :mod:`gvsl_app.data.brain`) in :mod:`gvsl_app.data.phantom_geometry`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage as ndi

from gvsl_app.data.cardiac_anatomy import AIR_HU, TissueHU, draw_tissue_hu, paint_heart, paint_thorax, tissue_meta
from gvsl_app.data.phantom_geometry import Coords, _random_rotation, _rbf_basis, _smooth_field
from gvsl_app.io.volume import Volume

__all__ = [
    "CARDIAC_LABELS",
    "CARDIAC_COLORS",
    "make_cardiac_subject",
    "cardiac_dataset",
    "subject_seed",
]

CARDIAC_LABELS: dict[int, str] = {
    1: "LV",
    2: "RV",
    3: "LA",
    4: "RA",
    5: "Myocardium",
    6: "Aorta",
    7: "Pulmonary artery",
}
"""Label values of the seven MM-WHS structures (0 is background)."""

CARDIAC_COLORS: dict[int, tuple[int, int, int]] = {
    1: (220, 60, 60),  # LV: red
    2: (60, 110, 220),  # RV: blue
    3: (240, 150, 60),  # LA: orange
    4: (90, 200, 230),  # RA: cyan
    5: (230, 200, 70),  # Myocardium: yellow
    6: (200, 70, 180),  # Aorta: magenta
    7: (80, 190, 100),  # Pulmonary artery: green
}
"""RGB (0-255) per label, e.g. for a napari labels layer (divide by 255 for napari colors)."""

REFERENCE_SIZE = 96
"""Spacing ranges below are for a 96-voxel axis; other sizes scale them so the physical field
of view does not depend on the requested array shape."""

SPACING_XY_RANGE = (0.9, 1.2)  # mm, x == y (in-plane), for a 96-voxel axis
SPACING_Z_RANGE = (1.25, 1.9)  # mm, slice direction, for a 96-voxel axis (always > in-plane)


def subject_seed(seed: int, index: int) -> int:
    """The seed of subject ``index`` of a dataset generated with ``seed``."""
    return int(seed) * 100003 + int(index)


# --------------------------------------------------------------------------- grid and pose


@dataclass(frozen=True)
class _Pose:
    """The subject's global pose (``q = R^T (p - t) + d(p)``) and its deformation's strength."""

    rotation: np.ndarray
    translation: np.ndarray
    deformation_std: float


@dataclass(frozen=True)
class _Acquisition:
    """Scanner effects: Gaussian noise (HU) and partial-volume blur (voxels)."""

    noise_sigma: float
    blur_sigma: float


def _draw_spacing(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[float, float, float]:
    """(x, y, z) spacing in mm, scaled so that the field of view does not depend on ``shape``."""
    nz, ny, nx = shape
    sxy = rng.uniform(*SPACING_XY_RANGE)
    sz = rng.uniform(*SPACING_Z_RANGE)
    return (sxy * REFERENCE_SIZE / nx, sxy * REFERENCE_SIZE / ny, sz * REFERENCE_SIZE / nz)


def _voxel_centres(
    shape: tuple[int, ...], spacing: tuple[float, float, float]
) -> tuple[tuple[float, float, float], Coords]:
    """Origin (centred field of view) and the physical x, y, z of the voxel centres (broadcastable)."""
    nz, ny, nx = shape
    sx, sy, sz = spacing
    origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz)
    px = (origin[0] + sx * np.arange(nx, dtype=np.float32))[None, None, :]
    py = (origin[1] + sy * np.arange(ny, dtype=np.float32))[None, :, None]
    pz = (origin[2] + sz * np.arange(nz, dtype=np.float32))[:, None, None]
    return origin, (px, py, pz)


def _anatomical_coords(rng: np.random.Generator, p: Coords) -> tuple[Coords, _Pose]:
    """Map the voxel centres ``p`` into the anatomical frame through a random pose and deformation.

    The pose is a rotation of up to 15 degrees about a random axis and a shift of up to 4 mm per
    axis; the deformation is a smooth field interpolated from a 5^3 grid of Gaussian control
    displacements (their std drawn in 2-4 mm).
    """
    px, py, pz = p
    rot = _random_rotation(rng, 15.0).astype(np.float32)
    trans = rng.uniform(-4.0, 4.0, size=3).astype(np.float32)
    n_ctrl = 5
    amp = rng.uniform(2.0, 4.0)  # mm, std of control displacements
    ctrl = rng.normal(0.0, amp, size=(3, n_ctrl, n_ctrl, n_ctrl))
    bz, by, bx = (_rbf_basis(c.ravel(), n_ctrl) for c in (pz, py, px))
    dx, dy, dz = (_smooth_field(ctrl[i], bz, by, bx) for i in range(3))
    ex, ey, ez = px - trans[0], py - trans[1], pz - trans[2]
    # q = R^T (p - t) + d(p)
    q = tuple(rot[0, i] * ex + rot[1, i] * ey + rot[2, i] * ez + d for i, d in enumerate((dx, dy, dz)))
    return cast(Coords, q), _Pose(rot, trans, amp)


# --------------------------------------------------------------------------- acquisition and meta


def _draw_acquisition(rng: np.random.Generator) -> _Acquisition:
    """Noise level in 10-30 HU and blur in 0.7-1.2 voxels."""
    noise_sigma = rng.uniform(10, 30)
    blur_sigma = rng.uniform(0.7, 1.2)
    return _Acquisition(noise_sigma, blur_sigma)


def _acquire(hu: np.ndarray, acq: _Acquisition, rng_noise: np.random.Generator) -> np.ndarray:
    """The scanner's image of the HU map: blurred, noisy, rounded to the int16 CT range."""
    img = ndi.gaussian_filter(hu, acq.blur_sigma, mode="nearest")
    img += rng_noise.standard_normal(hu.shape, dtype=np.float32) * np.float32(acq.noise_sigma)
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def _render(
    q: Coords,
    p: Coords,
    rng_geo: np.random.Generator,
    rng_abn: np.random.Generator,
    rng_noise: np.random.Generator,
    tissue: TissueHU,
    acq: _Acquisition,
    heart_scale: float,
    abnormal: bool,
    contrast: str,
) -> tuple[np.ndarray, np.ndarray, dict, TissueHU]:
    """Paint the thorax and the heart, then image them: (image, labels, abnormality, tissue values)."""
    if contrast == "mr":
        # the same draws in the same order, painted with MR intensities: same anatomy and labels
        tissue = MR_TISSUE
    hu = np.full(q[0].shape, AIR_HU if contrast == "ct" else 0.0, dtype=np.float32)
    lab = np.zeros(q[0].shape, dtype=np.uint8)
    paint_thorax(q, rng_geo, tissue, hu)
    abn_info = paint_heart(q, rng_geo, rng_abn, heart_scale, tissue, hu, lab, abnormal=abnormal)
    img = _acquire(hu, acq, rng_noise) if contrast == "ct" else _mr_image(hu, acq, rng_noise, p)
    return img, lab, abn_info, tissue


CONTRASTS = ("ct", "mr")
"""The renderings :func:`make_cardiac_subject` offers."""

MR_TISSUE = TissueHU(
    lung=30.0, fat=700.0, soft_tissue=260.0, bone=380.0, myocardium=180.0, blood_left=900.0, blood_right=860.0
)
"""Cine bright-blood (balanced SSFP) intensities of the phantom's tissues, arbitrary units:
blood and fat bright, myocardium and lung dark (the heart's contrast against its surroundings
is reversed in places against contrast-enhanced CT, where fat is darker than myocardium)."""


def _mr_image(signal: np.ndarray, acq: _Acquisition, rng_noise: np.random.Generator, p: Coords) -> np.ndarray:
    """The MR scanner's image of a signal map: blurred, a smooth multiplicative bias field
    (+-15 % across the field of view), Rician-like noise (magnitude of complex Gaussian noise,
    2-3 % of the blood signal), as unsigned 12-bit values.
    """
    img = ndi.gaussian_filter(signal, acq.blur_sigma, mode="nearest")
    extent = max(float(np.ptp(c)) for c in p) or 1.0
    tilt = rng_noise.uniform(-1, 1, 3)
    bias = 1.0 + 0.15 * sum(t * c / extent * 2 for t, c in zip(tilt, p)) / np.sqrt(3)
    img = img * bias.astype(np.float32)
    sigma = np.float32(acq.noise_sigma)  # 10-30 units against blood at ~900
    real = img + rng_noise.standard_normal(img.shape, dtype=np.float32) * sigma
    imag = rng_noise.standard_normal(img.shape, dtype=np.float32) * sigma
    return np.clip(np.rint(np.sqrt(real * real + imag * imag)), 0, 4095).astype(np.int16)


def _image_meta(
    seed: int, abn_info: dict, tissue: TissueHU, acq: _Acquisition, pose: _Pose, heart_scale: float
) -> dict:
    """The drawn parameters recorded in ``image.meta`` (rounded for readability)."""
    return {
        "kind": "cardiac",
        "seed": int(seed),
        **abn_info,
        "hu": tissue_meta(tissue),
        "noise_sigma_hu": round(acq.noise_sigma, 2),
        "blur_sigma_voxels": round(acq.blur_sigma, 3),
        "rotation": pose.rotation.astype(float).round(5).tolist(),
        "translation_mm": pose.translation.astype(float).round(3).tolist(),
        "deformation_std_mm": round(pose.deformation_std, 3),
        "heart_scale": round(heart_scale, 4),
    }


# --------------------------------------------------------------------------- the subject


def make_cardiac_subject(
    seed: int,
    shape: Sequence[int] = (96, 96, 96),
    *,
    abnormal: bool = False,
    spacing: Sequence[float] | None = None,
    contrast: str = "ct",
) -> tuple[Volume, Volume]:
    """One synthetic contrast-enhanced cardiac CT subject and its MM-WHS-style label map.

    Parameters
    ----------
    seed : the subject's seed; the result is a deterministic function of (seed, shape, abnormal,
        spacing).
    shape : (z, y, x) array shape.
    abnormal : add a local myocardial abnormality (hypo-enhanced lesion, 20-40 HU darker, or focal
        wall thickening of the free wall). Everything else is identical to ``abnormal=False``.
    spacing : (x, y, z) mm, ITK order; drawn per subject when None (x == y in 0.9-1.2 mm, z in
        1.25-1.9 mm for a 96-voxel axis, scaled by 96/size for other sizes).
    contrast : ``ct`` (Hounsfield units) or ``mr``: the same subject (anatomy, pose, labels)
        rendered with cine-MR-like (balanced SSFP) tissue contrasts instead: bright blood and
        fat, dark myocardium and lung, air at 0, Rician-like noise and a smooth multiplicative
        bias field (:func:`_mr_image`), for matching CT against MR of the same anatomy.

    Returns:
    -------
    (image, labels): ``image`` int16 Hounsfield units, ``labels`` uint8 with values of
    :data:`CARDIAC_LABELS`; both on the same grid (origin at the centre of the field of view,
    identity direction). ``image.meta`` records seed, abnormality and the drawn parameters.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {shape}")
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    ss = np.random.SeedSequence(int(seed))
    rng_geo, rng_abn, rng_noise = (np.random.default_rng(s) for s in ss.spawn(3))

    # Every draw below comes from rng_geo in a fixed order: reordering these calls changes every
    # subject. The spacing is drawn even when given, so that it does not shift later draws.
    drawn_spacing = _draw_spacing(rng_geo, shape)
    sx, sy, sz = (float(s) for s in (spacing if spacing is not None else drawn_spacing))
    voxel_size = (sx, sy, sz)
    origin, p = _voxel_centres(shape, voxel_size)
    q, pose = _anatomical_coords(rng_geo, p)
    tissue = draw_tissue_hu(rng_geo)
    acq = _draw_acquisition(rng_geo)
    heart_scale = rng_geo.uniform(0.92, 1.08)

    img, lab, abn_info, tissue = _render(
        q, p, rng_geo, rng_abn, rng_noise, tissue, acq, heart_scale, abnormal, contrast
    )
    meta = _image_meta(seed, abn_info, tissue, acq, pose, heart_scale)
    meta["contrast"] = contrast
    image = Volume(img, spacing=voxel_size, origin=origin, source=f"synthetic cardiac seed {seed}", meta=meta)
    labels = Volume(
        lab,
        spacing=voxel_size,
        origin=origin,
        source=f"synthetic cardiac labels seed {seed}",
        meta={"kind": "cardiac", "seed": int(seed), "label_names": dict(CARDIAC_LABELS)},
    )
    return image, labels


# --------------------------------------------------------------------------- datasets


def abnormal_flags(n: int, seed: int) -> np.ndarray:
    """The 0/1 classes of a classification dataset: exactly ``n // 2`` abnormal, shuffled by ``seed``."""
    flags = np.zeros(int(n), dtype=np.int64)
    flags[: int(n) // 2] = 1
    return np.random.default_rng(int(seed)).permutation(flags)


def cardiac_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int,
    *,
    shape: Sequence[int] = (96, 96, 96),
    classification: bool = False,
    contrast: str = "ct",
) -> Path:
    """Write ``n`` synthetic cardiac subjects as a data folder and return it.

    Layout: ``images/case_XXX.nii.gz`` (int16 HU), ``labels/case_XXX.nii.gz`` (uint8), and with
    ``classification=True`` a ``labels.csv`` (``name,label``; 1 = abnormal myocardium) with exactly
    ``n // 2`` abnormal subjects in a seed-dependent order. Subject ``i`` uses the seed
    ``seed * 100003 + i`` (:func:`subject_seed`); without ``classification`` all are normal.
    ``contrast="mr"`` renders the same subjects as cine MR (:func:`make_cardiac_subject`).
    """
    from gvsl_app.io.images import write_volume

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    flags = abnormal_flags(n, seed) if classification else np.zeros(n, dtype=np.int64)
    width = max(3, len(str(n - 1)))
    rows = []
    for i in range(n):
        name = f"case_{i:0{width}d}"
        image, labels = make_cardiac_subject(subject_seed(seed, i), shape, abnormal=bool(flags[i]), contrast=contrast)
        write_volume(image, out / "images" / f"{name}.nii.gz")
        write_volume(labels, out / "labels" / f"{name}.nii.gz", is_label=True)
        rows.append((name, int(flags[i])))
    if classification:
        with open(out / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["name", "label"])
            w.writerows(rows)
    return out
