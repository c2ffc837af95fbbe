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
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .volume import Volume

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
    1: (220, 60, 60),     # LV: red
    2: (60, 110, 220),    # RV: blue
    3: (240, 150, 60),    # LA: orange
    4: (90, 200, 230),    # RA: cyan
    5: (230, 200, 70),    # Myocardium: yellow
    6: (200, 70, 180),    # Aorta: magenta
    7: (80, 190, 100),    # Pulmonary artery: green
}
"""RGB (0-255) per label, e.g. for a napari labels layer (divide by 255 for napari colors)."""

REFERENCE_SIZE = 96
"""Spacing ranges below are for a 96-voxel axis; other sizes scale them so the physical field
of view does not depend on the requested array shape."""

SPACING_XY_RANGE = (0.9, 1.2)   # mm, x == y (in-plane), for a 96-voxel axis
SPACING_Z_RANGE = (1.25, 1.9)   # mm, slice direction, for a 96-voxel axis (always > in-plane)


def subject_seed(seed: int, index: int) -> int:
    """The seed of subject ``index`` of a dataset generated with ``seed``."""
    return int(seed) * 100003 + int(index)


# --------------------------------------------------------------------------- geometry helpers

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
    out = np.tensordot(bz, ctrl.astype(np.float32), axes=(1, 0))          # nz, gy, gx
    out = np.tensordot(out, by, axes=(1, 1))                               # nz, gx, ny
    out = np.tensordot(out, bx, axes=(1, 1))                               # nz, ny, nx
    return out


class _Frame:
    """Coordinates of all voxels in a local frame: u = F^T (q - c), as three (z,y,x) arrays."""

    def __init__(self, q: tuple[np.ndarray, np.ndarray, np.ndarray], centre, rot=None):
        qx, qy, qz = (q[i] - np.float32(centre[i]) for i in range(3))
        if rot is None:
            self.u = (qx, qy, qz)
        else:
            f = np.asarray(rot, dtype=np.float32)
            self.u = tuple(f[0, i] * qx + f[1, i] * qy + f[2, i] * qz for i in range(3))

    def ellipsoid(self, semi, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
        """Normalised squared radius: < 1 inside the ellipsoid (semi-axes along frame axes)."""
        return sum(((u - np.float32(o)) / np.float32(a)) ** 2 for u, a, o in zip(self.u, semi, offset))


def _tube(q, points: np.ndarray, radii: np.ndarray, step: float = 0.6) -> np.ndarray:
    """Boolean mask of voxels within ``radius`` of the polyline through ``points`` (anatomical mm).

    The polyline is sampled every ``step`` mm with linearly interpolated radii; distances come from
    a k-d tree restricted to the tube's bounding box, so the cost scales with the tube, not the volume.
    """
    pts, rad = [], []
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        n = max(int(np.ceil(np.linalg.norm(b - a) / step)), 1)
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        pts.append(a + t * (b - a))
        rad.append(ra + t[:, 0] * (rb - ra))
    pts.append(points[-1:])
    rad.append(radii[-1:])
    pts, rad = np.concatenate(pts), np.concatenate(rad)
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


# --------------------------------------------------------------------------- the subject

def _draw_spacing(rng: np.random.Generator, shape) -> tuple[float, float, float]:
    nz, ny, nx = shape
    sxy = rng.uniform(*SPACING_XY_RANGE)
    sz = rng.uniform(*SPACING_Z_RANGE)
    return (sxy * REFERENCE_SIZE / nx, sxy * REFERENCE_SIZE / ny, sz * REFERENCE_SIZE / nz)


def make_cardiac_subject(seed: int, shape=(96, 96, 96), *, abnormal: bool = False,
                         spacing=None) -> tuple[Volume, Volume]:
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

    Returns
    -------
    (image, labels): ``image`` int16 Hounsfield units, ``labels`` uint8 with values of
    :data:`CARDIAC_LABELS`; both on the same grid (origin at the centre of the field of view,
    identity direction). ``image.meta`` records seed, abnormality and the drawn parameters.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {shape}")
    ss = np.random.SeedSequence(int(seed))
    rng_geo, rng_abn, rng_noise = (np.random.default_rng(s) for s in ss.spawn(3))
    U = rng_geo.uniform

    # ---------------------------------------------------------------- grid in physical mm
    drawn_spacing = _draw_spacing(rng_geo, shape)
    spacing = tuple(float(s) for s in (spacing if spacing is not None else drawn_spacing))
    nz, ny, nx = shape
    sx, sy, sz = spacing
    origin = (-(nx - 1) / 2 * sx, -(ny - 1) / 2 * sy, -(nz - 1) / 2 * sz)
    px = (origin[0] + sx * np.arange(nx, dtype=np.float32))[None, None, :]
    py = (origin[1] + sy * np.arange(ny, dtype=np.float32))[None, :, None]
    pz = (origin[2] + sz * np.arange(nz, dtype=np.float32))[:, None, None]

    # ---------------------------------------------------------------- pose + smooth deformation
    rot = _random_rotation(rng_geo, 15.0).astype(np.float32)
    trans = U(-4.0, 4.0, size=3).astype(np.float32)
    n_ctrl = 5
    amp = U(2.0, 4.0)  # mm, std of control displacements
    ctrl = rng_geo.normal(0.0, amp, size=(3, n_ctrl, n_ctrl, n_ctrl))
    bz, by, bx = (_rbf_basis(c.ravel(), n_ctrl) for c in (pz, py, px))
    dx, dy, dz = (_smooth_field(ctrl[i], bz, by, bx) for i in range(3))
    ex, ey, ez = px - trans[0], py - trans[1], pz - trans[2]
    # q = R^T (p - t) + d(p)
    q = tuple(rot[0, i] * ex + rot[1, i] * ey + rot[2, i] * ez + d for i, d in enumerate((dx, dy, dz)))
    del ex, ey, ez, dx, dy, dz

    # ---------------------------------------------------------------- HU values of this subject
    hu_air = -1000.0
    hu_lung = U(-850, -750)
    hu_fat = U(-120, -80)
    hu_soft = U(30, 55)
    hu_bone = U(600, 800)
    hu_myo = U(60, 120)
    hu_blood_l = U(280, 450)
    hu_blood_r = U(250, hu_blood_l)  # right heart usually a little less enhanced
    noise_sigma = U(10, 30)
    blur_sigma = U(0.7, 1.2)

    def jit(v, rel=0.08):
        return np.asarray(v, dtype=float) * U(1 - rel, 1 + rel, size=np.shape(v))

    hs = U(0.92, 1.08)  # global heart scale

    # ---------------------------------------------------------------- thorax (image only)
    hu = np.full(shape, hu_air, dtype=np.float32)
    lab = np.zeros(shape, dtype=np.uint8)
    body = _Frame(q, (0.0, U(6, 10), 0.0))
    body_f = body.ellipsoid((U(82, 92), U(53, 59), 1e6))
    hu[body_f < 1.0] = hu_fat
    hu[body_f < U(0.80, 0.88)] = hu_soft
    for side in (-1, 1):
        lung = _Frame(q, (side * U(46, 52), U(10, 16), U(8, 16)))
        hu[lung.ellipsoid(jit((30, 38, 95))) < 1.0] = hu_lung
    spine = _Frame(q, (0.0, U(47, 52), 0.0))
    sf = spine.ellipsoid((U(10, 13), U(10, 13), 1e6))
    hu[sf < 1.0] = hu_bone
    hu[sf < 0.2] = hu_soft  # spinal canal

    # ---------------------------------------------------------------- heart
    # ventricular frame: long axis from apex (left, anterior, inferior) to base
    tilt = _rot_x(np.deg2rad(-U(13, 23))) @ _rot_y(np.deg2rad(-U(15, 25)))
    vc = np.array([U(6, 10), U(0, 4), U(-16, -10)])
    vf = _Frame(q, vc, tilt)
    a_lv = jit((15.0, 15.0, 27.0), 0.12) * hs
    t_myo = U(6.5, 9.0) * hs
    base = 0.5 * a_lv[2]
    below_base = vf.u[2] < np.float32(base)
    env = _Frame(q, vc + tilt @ np.array([-6.0, 2.0, base]), None)
    hu[env.ellipsoid(jit((36.0, 33.0, 40.0), 0.06) * hs) < 1.0] = hu_fat  # epicardial/pericardial fat

    myo_outer_semi = a_lv + np.array([t_myo, t_myo, 0.8 * t_myo])
    myo_outer = np.sqrt(vf.ellipsoid(myo_outer_semi))
    abn_info: dict = {"abnormal": bool(abnormal)}
    # abnormality parameters always drawn (own stream) so normal/abnormal twins share everything else
    kind = "lesion" if rng_abn.uniform() < 0.5 else "thickening"
    theta = rng_abn.uniform(0, 2 * np.pi)
    if kind == "thickening":  # free wall only (lateral/anterior/posterior, away from the septum)
        theta = rng_abn.uniform(-0.6 * np.pi, 0.6 * np.pi)
    height = rng_abn.uniform(-0.6, 0.2)  # fraction of the long semi-axis
    mid = a_lv + 0.5 * np.array([t_myo, t_myo, 0.8 * t_myo])
    rho = np.sqrt(max(1.0 - height ** 2, 0.05))
    centre_u = np.array([mid[0] * rho * np.cos(theta), mid[1] * rho * np.sin(theta), mid[2] * height])
    radius = rng_abn.uniform(7.0, 11.0)
    drop = rng_abn.uniform(20.0, 40.0)
    thick = rng_abn.uniform(4.0, 7.0)
    near_abn = None
    if abnormal:
        cu = vf.u
        r2 = sum((cu[i] - np.float32(centre_u[i])) ** 2 for i in range(3))
        near_abn = r2 < np.float32(radius ** 2)
        abn_info.update(kind=kind, centre_mm_ventricular_frame=centre_u.round(2).tolist(),
                        radius_mm=round(radius, 2))
        if kind == "lesion":
            abn_info["hu_drop"] = round(drop, 2)
        else:
            abn_info["thickening_mm"] = round(thick, 2)
            bump = np.float32(thick / myo_outer_semi.mean()) * np.exp(-r2 / np.float32(2 * (0.8 * radius) ** 2))

    in_myo = (myo_outer < 1.0) & below_base
    # right ventricle: crescent around the septum, with a thin unlabelled free wall
    rv_c = np.array([-a_lv[0] - 2.0, -7.0, -2.0]) * np.array([hs, hs, hs])
    rv_semi = jit((17.0, 16.0, 24.0), 0.12) * hs
    rv_f = vf.ellipsoid(rv_semi, rv_c)
    rv_wall = np.sqrt(vf.ellipsoid(rv_semi + 3.0, rv_c)) < 1.0
    hu[rv_wall & below_base & ~in_myo] = hu_myo
    hu[in_myo] = hu_myo
    lab[in_myo] = 5
    if abnormal and kind == "thickening":
        extra = (myo_outer < 1.0 + bump) & below_base & (lab == 0) & ~(rv_wall & below_base)
        hu[extra] = hu_myo
        lab[extra] = 5
    lv = (vf.ellipsoid(a_lv) < 1.0) & below_base
    hu[lv] = hu_blood_l
    lab[lv] = 1
    rv = (rv_f < 1.0) & below_base & ~in_myo
    hu[rv] = hu_blood_r
    lab[rv] = 2

    # atria, above the base plane (cranial)
    ra = vf.ellipsoid(jit((13.0, 13.0, 15.0), 0.12) * hs, np.array([-a_lv[0] - 8.0, -1.0, base + 9.0]) * [1, hs, 1]) < 1.0
    hu[ra] = hu_blood_r
    lab[ra] = 4
    la = vf.ellipsoid(jit((17.0, 12.0, 11.0), 0.12) * hs, np.array([3.0, 9.0 * hs, base + 10.0 * hs])) < 1.0
    hu[la] = hu_blood_l
    lab[la] = 3

    # great vessels: tubes in the anatomical frame, rooted in the ventricular outflow tracts
    def to_anat(u):
        return vc + tilt @ np.asarray(u, dtype=float)

    pa_root = to_anat([-a_lv[0] * 0.45, -a_lv[1] - 0.55 * t_myo - 2.0, base - 6.0])
    r_pa = U(8.0, 10.0) * hs
    bif = pa_root + np.array([U(8, 12), U(2, 6), U(26, 32)]) * hs
    pa_pts = np.array([pa_root, pa_root + np.array([U(2, 5), -U(2, 5), U(14, 18)]) * hs, bif,
                       bif + np.array([U(16, 22), U(12, 18), -U(0, 4)]) * hs,
                       bif + np.array([U(28, 34), U(20, 26), -U(6, 10)]) * hs])
    pa = _tube(q, pa_pts, np.array([r_pa, r_pa, r_pa, 0.8 * r_pa, 0.65 * r_pa]))
    # right pulmonary artery: from the bifurcation, passing posterior to the ascending aorta
    rpa_pts = np.array([bif, bif + np.array([-U(14, 18), U(12, 16), -U(0, 3)]) * hs,
                        bif + np.array([-U(34, 40), U(14, 18), -U(4, 8)]) * hs])
    pa |= _tube(q, rpa_pts, np.array([0.8 * r_pa, 0.7 * r_pa, 0.6 * r_pa]))
    hu[pa] = hu_blood_r
    lab[pa] = 7

    ao_root = to_anat([-0.3 * a_lv[0], -0.3 * a_lv[1], base - 6.0])
    r_ao = U(8.0, 9.5) * hs
    ao_pts = np.array([
        ao_root,
        ao_root + np.array([-U(2, 5), -U(1, 4), U(20, 26)]) * hs,           # ascending
        ao_root + np.array([U(0, 3), U(6, 10), U(38, 44)]) * hs,            # arch top
        ao_root + np.array([U(10, 14), U(24, 28), U(32, 38)]) * hs,         # arch, going back
        ao_root + np.array([U(14, 18), U(34, 38), U(12, 18)]) * hs,         # descending
        ao_root + np.array([U(15, 19), U(36, 40), -150.0]),                 # leaves the field
    ])
    ao = _tube(q, ao_pts, np.array([r_ao, r_ao, 0.9 * r_ao, 0.85 * r_ao, 0.75 * r_ao, 0.75 * r_ao]))
    hu[ao] = hu_blood_l
    lab[ao] = 6

    if abnormal and kind == "lesion":
        les = near_abn & (lab == 5)
        hu[les] -= np.float32(drop)
        abn_info["voxels"] = int(les.sum())
    elif abnormal:
        abn_info["voxels"] = int(extra.sum())

    # ---------------------------------------------------------------- acquisition
    img = ndi.gaussian_filter(hu, blur_sigma, mode="nearest")
    img += rng_noise.standard_normal(shape, dtype=np.float32) * np.float32(noise_sigma)
    img = np.clip(np.rint(img), -1024, 3071).astype(np.int16)

    meta = {
        "kind": "cardiac", "seed": int(seed), **abn_info,
        "hu": {"blood_left": round(hu_blood_l, 1), "blood_right": round(hu_blood_r, 1),
               "myocardium": round(hu_myo, 1), "fat": round(hu_fat, 1), "soft_tissue": round(hu_soft, 1),
               "lung": round(hu_lung, 1), "bone": round(hu_bone, 1)},
        "noise_sigma_hu": round(noise_sigma, 2), "blur_sigma_voxels": round(blur_sigma, 3),
        "rotation": rot.astype(float).round(5).tolist(), "translation_mm": trans.astype(float).round(3).tolist(),
        "deformation_std_mm": round(amp, 3), "heart_scale": round(hs, 4),
    }
    image = Volume(img, spacing=spacing, origin=origin, source=f"synthetic cardiac seed {seed}", meta=meta)
    labels = Volume(lab, spacing=spacing, origin=origin, source=f"synthetic cardiac labels seed {seed}",
                    meta={"kind": "cardiac", "seed": int(seed), "label_names": dict(CARDIAC_LABELS)})
    return image, labels


# --------------------------------------------------------------------------- datasets

def abnormal_flags(n: int, seed: int) -> np.ndarray:
    """The 0/1 classes of a classification dataset: exactly ``n // 2`` abnormal, shuffled by ``seed``."""
    flags = np.zeros(int(n), dtype=np.int64)
    flags[: int(n) // 2] = 1
    return np.random.default_rng(int(seed)).permutation(flags)


def cardiac_dataset(out_dir: str | os.PathLike, n: int, seed: int, *, shape=(96, 96, 96),
                    classification: bool = False) -> Path:
    """Write ``n`` synthetic cardiac subjects as a data folder and return it.

    Layout: ``images/case_XXX.nii.gz`` (int16 HU), ``labels/case_XXX.nii.gz`` (uint8), and with
    ``classification=True`` a ``labels.csv`` (``name,label``; 1 = abnormal myocardium) with exactly
    ``n // 2`` abnormal subjects in a seed-dependent order. Subject ``i`` uses the seed
    ``seed * 100003 + i`` (:func:`subject_seed`); without ``classification`` all are normal.
    """
    from .io import write_volume

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
        image, labels = make_cardiac_subject(subject_seed(seed, i), shape, abnormal=bool(flags[i]))
        write_volume(image, out / "images" / f"{name}.nii.gz")
        write_volume(labels, out / "labels" / f"{name}.nii.gz", is_label=True)
        rows.append((name, int(flags[i])))
    if classification:
        with open(out / "labels.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["name", "label"])
            w.writerows(rows)
    return out
