"""Hard synthetic cardiac CT phantoms (``synthetic:cardiac-hard``, ``gvsl sample cardiac-hard``).

A downstream data set on which a few labelled subjects should not suffice (issue #33, item 1):
the seven MM-WHS structures of :mod:`gvsl_app.data.synthetic`, drawn with the same anatomy
(:mod:`gvsl_app.data.cardiac_anatomy`), but with what makes real scans hard:

* **pose**: a rotation of up to 30 degrees about a random axis (``cardiac``: 15) and a shift of
  up to 12 mm in-plane and 15 mm along z (``cardiac``: 4 mm);
* **size and shape**: a heart scale in 0.82-1.18 (``cardiac``: 0.92-1.08), an anisotropic
  stretch of the anatomy of 0.88-1.12 per axis, and a stronger smooth deformation (control
  displacements of 3-6 mm std; ``cardiac``: 2-4 mm);
* **partial fields of view**: each of the six faces of the volume is cut, with probability
  0.3, by 5-20 % of its axis (at most two faces): there the image is -1024 HU (outside the
  reconstructed field) and the labels are 0, and a structure shifted out of the grid is simply
  not there;
* **intensity overlap**: the left and the right blood pools are drawn independently from the
  same range (220-380 HU, so either may be the brighter: intensity does not tell LV from RV or
  the aorta from the pulmonary artery), the myocardium (90-150 HU) overlaps the soft tissue
  (50-100 HU) and the unenhanced walls;
* **unlabelled look-alikes**: the superior and inferior vena cava, four pulmonary veins and two
  coronary arteries (1.2-2 mm radius, on the epicardium) are painted with blood intensities
  but labelled background, as MM-WHS leaves them: only the context tells them from the
  labelled pools;
* **thin structures**: the myocardium is 3-5 mm thick (``cardiac``: 6.5-9 mm) and the great
  vessels' radii are scaled by 0.55-0.75;
* **acquisition**: noise of 25-60 HU (``cardiac``: 10-30), blur of 0.8-1.5 voxels, and a smooth
  bias: a multiplicative gain of +-10 % and an additive offset of +-(20-50) HU varying across
  the field of view (beam hardening, scatter and reconstruction differences of real CT).

The labels are :data:`gvsl_app.data.synthetic.CARDIAC_LABELS` (1 LV ... 7 pulmonary artery).
Every subject is a deterministic function of (seed, shape); its streams
(``SeedSequence((seed, HARD_STREAM)).spawn(2)``: geometry and appearance, noise) are
independent of the ``cardiac`` subject of the same seed. The ``cardiac`` generator and its
recorded studies are untouched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
from scipy import ndimage as ndi

from gvsl_app.data.cardiac_anatomy import (
    AIR_HU,
    HeartFrame,
    TissueHU,
    draw_heart_frame,
    paint_atria,
    paint_great_vessels,
    paint_pericardial_fat,
    paint_thorax,
    paint_ventricles,
    tissue_meta,
)
from gvsl_app.data.phantom_geometry import Coords, _rbf_basis, _smooth_field, _tube
from gvsl_app.data.synthetic import CARDIAC_LABELS, _draw_spacing, _voxel_centres, subject_seed
from gvsl_app.io.volume import Volume

__all__ = ["HARD_RANGES", "cardiac_hard_dataset", "make_cardiac_hard_subject"]

HARD_STREAM = 33
"""Mixed into the seed so that a hard subject shares no draw with the ``cardiac`` one of its seed."""

OUTSIDE_FOV_HU = -1024
"""The image value outside the (cut) field of view."""

HARD_RANGES: dict[str, tuple[float, float]] = {
    "rotation_deg": (0.0, 30.0),
    "shift_xy_mm": (-12.0, 12.0),
    "shift_z_mm": (-15.0, 15.0),
    "heart_scale": (0.82, 1.18),
    "stretch": (0.88, 1.12),
    "deformation_std_mm": (3.0, 6.0),
    "fov_cut_fraction": (0.05, 0.20),
    "blood_hu": (220.0, 380.0),
    "myocardium_hu": (90.0, 150.0),
    "soft_tissue_hu": (50.0, 100.0),
    "myocardium_mm": (3.0, 5.0),
    "vessel_radius_scale": (0.55, 0.75),
    "coronary_radius_mm": (1.2, 2.0),
    "noise_hu": (25.0, 60.0),
    "blur_voxels": (0.8, 1.5),
    "bias_gain": (-0.10, 0.10),
    "bias_offset_hu": (20.0, 50.0),
}
"""The drawn ranges, as documented above and in docs/guide/data.md (tests read them)."""

FOV_CUT_PROBABILITY = 0.3
MAX_FOV_CUTS = 2


def _u(rng: np.random.Generator, key: str) -> float:
    lo, hi = HARD_RANGES[key]
    return float(rng.uniform(lo, hi))


def _hard_pose(rng: np.random.Generator, p: Coords) -> tuple[Coords, dict]:
    """Anatomical coordinates ``q = (R^T (p - t) + d(p)) / stretch`` and the drawn pose."""
    px, py, pz = p
    angle = _u(rng, "rotation_deg")
    axis = rng.normal(size=3)  # a uniformly random axis (Rodrigues, as _random_rotation)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(angle)
    rot = (np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)).astype(np.float32)
    trans = np.array([_u(rng, "shift_xy_mm"), _u(rng, "shift_xy_mm"), _u(rng, "shift_z_mm")], np.float32)
    stretch = np.array([_u(rng, "stretch") for _ in range(3)], np.float32)
    amp = _u(rng, "deformation_std_mm")
    n_ctrl = 5
    ctrl = rng.normal(0.0, amp, size=(3, n_ctrl, n_ctrl, n_ctrl))
    bz, by, bx = (_rbf_basis(c.ravel(), n_ctrl) for c in (pz, py, px))
    d = [_smooth_field(ctrl[i], bz, by, bx) for i in range(3)]
    e = (px - trans[0], py - trans[1], pz - trans[2])
    q = tuple((rot[0, i] * e[0] + rot[1, i] * e[1] + rot[2, i] * e[2] + d[i]) / stretch[i] for i in range(3))
    pose = {
        "rotation_deg": round(angle, 3),
        "rotation": rot.astype(float).round(5).tolist(),
        "translation_mm": trans.astype(float).round(3).tolist(),
        "stretch": stretch.astype(float).round(4).tolist(),
        "deformation_std_mm": round(amp, 3),
    }
    return cast(Coords, q), pose


def _hard_tissue(rng: np.random.Generator) -> TissueHU:
    """Tissue HU with overlap: left and right blood from one range, myocardium near soft tissue."""
    return TissueHU(
        lung=float(rng.uniform(-870, -700)),
        fat=float(rng.uniform(-120, -60)),
        soft_tissue=_u(rng, "soft_tissue_hu"),
        bone=float(rng.uniform(400, 800)),
        myocardium=_u(rng, "myocardium_hu"),
        blood_left=_u(rng, "blood_hu"),
        blood_right=_u(rng, "blood_hu"),
    )


def _paint_lookalikes(
    q: Coords, rng: np.random.Generator, heart: HeartFrame, tissue: TissueHU, hu: np.ndarray, lab: np.ndarray
) -> dict:
    """Unlabelled vessels with blood intensities (venae cavae, pulmonary veins, coronaries),
    painted only where no labelled structure is; returns their voxel count per kind.
    """
    U, a, hs, base = rng.uniform, heart.lv_semi, heart.scale, heart.base
    ra = heart.to_anat(np.array([-a[0] - 8.0, -1.0, base + 9.0]) * [1, hs, 1])
    la = heart.to_anat([3.0, 9.0 * hs, base + 10.0 * hs])
    tubes: list[tuple[str, np.ndarray, np.ndarray | list[float], int]] = []
    r = U(6.0, 9.0) * hs
    tubes.append(("vena_cava", np.array([ra, ra + [U(-4, 4), U(-2, 4), 25.0], ra + [0.0, 0.0, 150.0]]), [r, r, r], 0))
    r = U(7.0, 10.0) * hs
    tubes.append(("vena_cava", np.array([ra, ra + [U(-4, 4), U(0, 6), -30.0], ra + [0.0, 5.0, -150.0]]), [r, r, r], 0))
    for side in (-1, 1):
        for up in (-1, 1):
            end = la + np.array([side * U(22, 30), U(14, 22), up * U(5, 10)]) * hs
            r = U(3.5, 5.5) * hs
            tubes.append(("pulmonary_vein", np.array([la, end]), [r, 0.8 * r], 1))
    t = heart.t_myo
    outer = heart.lv_semi + np.array([t, t, 0.8 * t]) + 1.5

    def on_surface(h: float, angle: float) -> np.ndarray:
        """The point of the ventricle's outer surface at height ``h`` (-1..1) and ``angle``."""
        ring = np.sqrt(1 - h * h)
        return heart.to_anat([outer[0] * ring * np.cos(angle), outer[1] * ring * np.sin(angle), outer[2] * h])

    theta = np.deg2rad(U(200, 230))  # the anterior interventricular groove
    lad = [on_surface(h, theta) for h in np.linspace(0.45, -0.85, 7)]
    rc = _u(rng, "coronary_radius_mm")
    tubes.append(("coronary", np.array(lad), np.linspace(rc, 0.7 * rc, len(lad)), 1))
    lcx = [on_surface(0.45, g) for g in np.deg2rad(np.linspace(U(150, 170), U(-40, -20), 7))]  # the AV groove
    rc = _u(rng, "coronary_radius_mm")
    tubes.append(("coronary", np.array(lcx), np.linspace(rc, 0.7 * rc, len(lcx)), 1))
    counts: dict[str, int] = {}
    for kind, pts, radii, left in tubes:
        mask = _tube(q, np.asarray(pts, float), np.asarray(radii, float)) & (lab == 0)
        hu[mask] = tissue.blood_left if left else tissue.blood_right * np.float32(0.85)
        counts[kind] = counts.get(kind, 0) + int(mask.sum())
    return counts


def _cut_fov(rng: np.random.Generator, shape: tuple[int, int, int]) -> list[dict]:
    """At most :data:`MAX_FOV_CUTS` faces cut, each with :data:`FOV_CUT_PROBABILITY`."""
    cuts: list[dict] = []
    for face in rng.permutation(6):
        cut = rng.uniform() < FOV_CUT_PROBABILITY
        frac = _u(rng, "fov_cut_fraction")
        if cut and len(cuts) < MAX_FOV_CUTS:
            axis, end = int(face) // 2, ("low", "high")[int(face) % 2]
            cuts.append({"axis": "zyx"[axis], "end": end, "voxels": max(1, int(round(frac * shape[axis])))})
    return cuts


def _outside(cuts: list[dict], shape: tuple[int, int, int]) -> np.ndarray:
    out = np.zeros(shape, bool)
    for c in cuts:
        axis, n = "zyx".index(c["axis"]), c["voxels"]
        index: list[slice] = [slice(None)] * 3
        index[axis] = slice(0, n) if c["end"] == "low" else slice(shape[axis] - n, None)
        out[tuple(index)] = True
    return out


def _acquire_hard(hu: np.ndarray, p: Coords, rng: np.random.Generator, rng_noise: np.random.Generator) -> tuple:
    """Blur, smooth gain and offset fields, noise: the image (float32) and the drawn values."""
    blur, noise = _u(rng, "blur_voxels"), _u(rng, "noise_hu")
    img = ndi.gaussian_filter(hu, blur, mode="nearest")
    n_ctrl = 3
    bz, by, bx = (_rbf_basis(c.ravel(), n_ctrl) for c in (p[2], p[1], p[0]))
    gain_ctrl = rng.uniform(*HARD_RANGES["bias_gain"], size=(n_ctrl,) * 3)
    offset_amp = _u(rng, "bias_offset_hu")
    offset_ctrl = rng.uniform(-offset_amp, offset_amp, size=(n_ctrl,) * 3)
    gain = 1.0 + _smooth_field(gain_ctrl, bz, by, bx)
    offset = _smooth_field(offset_ctrl, bz, by, bx)
    img = img * gain.astype(np.float32) + offset.astype(np.float32)
    img += rng_noise.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise)
    info = {
        "blur_sigma_voxels": round(blur, 3),
        "noise_sigma_hu": round(noise, 2),
        "bias_offset_hu": round(offset_amp, 2),
    }
    return img, info


def make_cardiac_hard_subject(seed: int, shape: Sequence[int] = (96, 96, 96)) -> tuple[Volume, Volume]:
    """One hard synthetic cardiac CT subject (module docstring) and its label map.

    Returns ``(image, labels)``: int16 Hounsfield units and uint8 values of
    :data:`gvsl_app.data.synthetic.CARDIAC_LABELS` on the same grid (origin at the centre of the
    field of view, identity direction, spacing drawn as for ``cardiac``); ``image.meta`` records
    the drawn pose, size, tissue values, cuts of the field of view, look-alike vessels and
    acquisition. Deterministic in (seed, shape).
    """
    shape3 = tuple(int(s) for s in shape)
    if len(shape3) != 3 or min(shape3) < 8:
        raise ValueError(f"shape must be three sizes >= 8, got {shape3}")
    size = cast(tuple[int, int, int], shape3)
    rng, rng_noise = (np.random.default_rng(s) for s in np.random.SeedSequence((int(seed), HARD_STREAM)).spawn(2))
    spacing = _draw_spacing(rng, size)
    origin, p = _voxel_centres(size, spacing)
    q, pose = _hard_pose(rng, p)
    tissue = _hard_tissue(rng)
    heart_scale = _u(rng, "heart_scale")
    hu = np.full(size, AIR_HU, dtype=np.float32)
    lab = np.zeros(size, dtype=np.uint8)
    paint_thorax(q, rng, tissue, hu)
    heart = draw_heart_frame(q, rng, heart_scale)
    heart.t_myo = _u(rng, "myocardium_mm") * heart_scale  # thin myocardium
    paint_pericardial_fat(q, rng, heart, tissue.fat, hu)
    paint_ventricles(rng, heart, tissue, hu, lab)
    paint_atria(rng, heart, tissue, hu, lab)
    vessel_scale = _u(rng, "vessel_radius_scale")
    paint_great_vessels(q, rng, heart, tissue, hu, lab, radius_scale=vessel_scale)
    lookalikes = _paint_lookalikes(q, rng, heart, tissue, hu, lab)
    cuts = _cut_fov(rng, size)
    img, acq = _acquire_hard(hu, p, rng, rng_noise)
    outside = _outside(cuts, size)
    img[outside] = OUTSIDE_FOV_HU
    lab[outside] = 0
    image_arr = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    meta = {
        "kind": "cardiac-hard",
        "seed": int(seed),
        **pose,
        "heart_scale": round(heart_scale, 4),
        "myocardium_mm": round(heart.t_myo, 3),
        "vessel_radius_scale": round(vessel_scale, 4),
        "hu": tissue_meta(tissue),
        "fov_cuts": cuts,
        "lookalike_voxels": lookalikes,
        **acq,
        "contrast": "ct",
    }
    image = Volume(image_arr, spacing=spacing, origin=origin, source=f"synthetic cardiac-hard seed {seed}", meta=meta)
    labels = Volume(
        lab,
        spacing=spacing,
        origin=origin,
        source=f"synthetic cardiac-hard labels seed {seed}",
        meta={"kind": "cardiac-hard", "seed": int(seed), "label_names": dict(CARDIAC_LABELS)},
    )
    return image, labels


def cardiac_hard_dataset(out_dir: str | os.PathLike, n: int, seed: int, *, shape: Sequence[int] = (96, 96, 96)) -> Path:
    """Write ``n`` hard cardiac subjects as a data folder (``images/``, ``labels/``, as
    :func:`gvsl_app.data.synthetic.cardiac_dataset`; subject ``i`` uses ``subject_seed(seed, i)``).
    """
    from gvsl_app.io.images import write_volume

    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    width = max(3, len(str(int(n) - 1)))
    for i in range(int(n)):
        name = f"case_{i:0{width}d}"
        image, labels = make_cardiac_hard_subject(subject_seed(seed, i), shape)
        write_volume(image, out / "images" / f"{name}.nii.gz")
        write_volume(labels, out / "labels" / f"{name}.nii.gz", is_label=True)
    return out
