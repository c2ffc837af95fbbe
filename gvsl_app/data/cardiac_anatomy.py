"""Anatomy of the synthetic cardiac CT phantom: thorax, heart chambers, myocardium, great vessels.

Each ``paint_*`` function draws its structure's shape parameters from the subject's geometry
stream and writes Hounsfield units (``hu``) and, for the seven MM-WHS structures, label values
(``lab``) in place, evaluated at the anatomical coordinates ``q`` (see
:mod:`gvsl_app.data.synthetic`). The subject is reproducible only if these are called in the
order :func:`gvsl_app.data.synthetic.make_cardiac_subject` uses, because they share one
random stream; later structures overwrite earlier ones, which is how the layering (e.g. the
myocardium under the LV cavity) is expressed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
from numpy.typing import ArrayLike

from gvsl_app.data.phantom_geometry import Coords, _Frame, _rot_x, _rot_y, _tube

AIR_HU = -1000.0

# label values, as listed in gvsl_app.data.synthetic.CARDIAC_LABELS
LV, RV, LA, RA, MYOCARDIUM, AORTA, PULMONARY_ARTERY = range(1, 8)


@dataclass(frozen=True)
class TissueHU:
    """Hounsfield units of the tissues of one subject (contrast-enhanced blood pools)."""

    lung: float
    fat: float
    soft_tissue: float
    bone: float
    myocardium: float
    blood_left: float
    blood_right: float


def draw_tissue_hu(rng: np.random.Generator) -> TissueHU:
    """Draw the subject's tissue HU values; the right heart is never brighter than the left."""
    lung = rng.uniform(-850, -750)
    fat = rng.uniform(-120, -80)
    soft = rng.uniform(30, 55)
    bone = rng.uniform(600, 800)
    myo = rng.uniform(60, 120)
    blood_l = rng.uniform(280, 450)
    blood_r = rng.uniform(250, blood_l)  # right heart usually a little less enhanced
    return TissueHU(lung, fat, soft, bone, myo, blood_l, blood_r)


def tissue_meta(tissue: TissueHU) -> dict[str, float]:
    """The tissue HU values as recorded in the image meta (rounded to 0.1 HU)."""
    return {
        "blood_left": round(tissue.blood_left, 1),
        "blood_right": round(tissue.blood_right, 1),
        "myocardium": round(tissue.myocardium, 1),
        "fat": round(tissue.fat, 1),
        "soft_tissue": round(tissue.soft_tissue, 1),
        "lung": round(tissue.lung, 1),
        "bone": round(tissue.bone, 1),
    }


def _jitter(rng: np.random.Generator, values: ArrayLike, rel: float = 0.08) -> np.ndarray:
    """``values`` each scaled by an independent factor uniform in [1 - rel, 1 + rel]."""
    return np.asarray(values, dtype=float) * rng.uniform(1 - rel, 1 + rel, size=np.shape(values))


def paint_thorax(q: Coords, rng: np.random.Generator, tissue: TissueHU, hu: np.ndarray) -> None:
    """Body outline (fat, soft tissue), both lungs and the spine; image only, no labels."""
    U = rng.uniform
    body = _Frame(q, (0.0, U(6, 10), 0.0))
    body_f = body.ellipsoid((U(82, 92), U(53, 59), 1e6))
    hu[body_f < 1.0] = tissue.fat
    hu[body_f < U(0.80, 0.88)] = tissue.soft_tissue
    for side in (-1, 1):
        lung = _Frame(q, (side * U(46, 52), U(10, 16), U(8, 16)))
        hu[lung.ellipsoid(_jitter(rng, (30, 38, 95))) < 1.0] = tissue.lung
    spine = _Frame(q, (0.0, U(47, 52), 0.0))
    sf = spine.ellipsoid((U(10, 13), U(10, 13), 1e6))
    hu[sf < 1.0] = tissue.bone
    hu[sf < 0.2] = tissue.soft_tissue  # spinal canal


@dataclass
class HeartFrame:
    """The ventricular frame: long axis from the apex (left, anterior, inferior) to the base.

    ``frame`` holds every voxel's coordinates in it; ``lv_semi`` are the LV cavity's
    semi-axes, ``t_myo`` the myocardial wall thickness, ``base`` the height of the base
    plane (the ventricles lie below it, the atria above) and ``scale`` the global heart scale.
    """

    centre: np.ndarray
    tilt: np.ndarray
    frame: _Frame
    lv_semi: np.ndarray
    t_myo: float
    base: float
    below_base: np.ndarray
    scale: float

    @property
    def myo_outer_semi(self) -> np.ndarray:
        """Semi-axes of the myocardium's outer surface (the wall is thinner along the long axis)."""
        return self.lv_semi + np.array([self.t_myo, self.t_myo, 0.8 * self.t_myo])

    def to_anat(self, u: ArrayLike) -> np.ndarray:
        """A point given in the ventricular frame, in anatomical coordinates."""
        return self.centre + self.tilt @ np.asarray(u, dtype=float)


def draw_heart_frame(q: Coords, rng: np.random.Generator, scale: float) -> HeartFrame:
    """Draw the heart's pose and ventricle size (``scale``: the global heart scale)."""
    U = rng.uniform
    tilt = _rot_x(np.deg2rad(-U(13, 23))) @ _rot_y(np.deg2rad(-U(15, 25)))
    centre = np.array([U(6, 10), U(0, 4), U(-16, -10)])
    frame = _Frame(q, centre, tilt)
    lv_semi = _jitter(rng, (15.0, 15.0, 27.0), 0.12) * scale
    t_myo = U(6.5, 9.0) * scale
    base = 0.5 * lv_semi[2]
    below_base = frame.u[2] < np.float32(base)
    return HeartFrame(centre, tilt, frame, lv_semi, t_myo, base, below_base, scale)


def paint_pericardial_fat(
    q: Coords, rng: np.random.Generator, heart: HeartFrame, fat_hu: float, hu: np.ndarray
) -> None:
    """Epicardial/pericardial fat: an ellipsoid around the whole heart, painted before the heart."""
    env = _Frame(q, heart.centre + heart.tilt @ np.array([-6.0, 2.0, heart.base]), None)
    hu[env.ellipsoid(_jitter(rng, (36.0, 33.0, 40.0), 0.06) * heart.scale) < 1.0] = fat_hu


# --------------------------------------------------------------------------- abnormality


@dataclass(frozen=True)
class Abnormality:
    """A local myocardial abnormality: a hypo-enhanced ``"lesion"`` or a free-wall ``"thickening"``.

    ``centre`` (ventricular frame, mm) lies mid-wall; ``radius`` (mm) bounds the lesion and sets
    the width of the thickening; ``hu_drop`` and ``thickening_mm`` are the two kinds' strengths.
    """

    kind: str
    centre: np.ndarray
    radius: float
    hu_drop: float
    thickening_mm: float

    def info(self) -> dict:
        """Kind, position and strength as recorded in the image meta."""
        info: dict = {
            "kind": self.kind,
            "centre_mm_ventricular_frame": self.centre.round(2).tolist(),
            "radius_mm": round(self.radius, 2),
        }
        if self.kind == "lesion":
            info["hu_drop"] = round(self.hu_drop, 2)
        else:
            info["thickening_mm"] = round(self.thickening_mm, 2)
        return info

    def distance2(self, heart: HeartFrame) -> np.ndarray:
        """Squared distance (mm^2) of every voxel from the abnormality's centre."""
        cu = heart.frame.u
        return cast(np.ndarray, sum((cu[i] - np.float32(self.centre[i])) ** 2 for i in range(3)))

    def wall_bump(self, heart: HeartFrame, r2: np.ndarray) -> np.ndarray:
        """Gaussian increase of the myocardium's outer normalised radius around the centre."""
        scale = np.float32(self.thickening_mm / heart.myo_outer_semi.mean())
        return scale * np.exp(-r2 / np.float32(2 * (0.8 * self.radius) ** 2))


def draw_abnormality(rng: np.random.Generator, heart: HeartFrame) -> Abnormality:
    """Draw an abnormality from its own stream ``rng``: a thickening always on the free wall."""
    kind = "lesion" if rng.uniform() < 0.5 else "thickening"
    theta = rng.uniform(0, 2 * np.pi)
    if kind == "thickening":  # free wall only (lateral/anterior/posterior, away from the septum)
        theta = rng.uniform(-0.6 * np.pi, 0.6 * np.pi)
    height = rng.uniform(-0.6, 0.2)  # fraction of the long semi-axis
    t_myo = heart.t_myo
    mid = heart.lv_semi + 0.5 * np.array([t_myo, t_myo, 0.8 * t_myo])
    rho = np.sqrt(max(1.0 - height**2, 0.05))
    centre = np.array([mid[0] * rho * np.cos(theta), mid[1] * rho * np.sin(theta), mid[2] * height])
    radius = rng.uniform(7.0, 11.0)
    drop = rng.uniform(20.0, 40.0)
    thick = rng.uniform(4.0, 7.0)
    return Abnormality(kind, centre, radius, drop, thick)


def paint_lesion(abn: Abnormality, r2: np.ndarray, hu: np.ndarray, lab: np.ndarray) -> int:
    """Darken the myocardium within the lesion's radius; returns the number of voxels changed."""
    les = (r2 < np.float32(abn.radius**2)) & (lab == MYOCARDIUM)
    hu[les] -= np.float32(abn.hu_drop)
    return int(les.sum())


# --------------------------------------------------------------------------- chambers and vessels


def paint_ventricles(
    rng: np.random.Generator,
    heart: HeartFrame,
    tissue: TissueHU,
    hu: np.ndarray,
    lab: np.ndarray,
    bump: np.ndarray | None = None,
) -> int:
    """Myocardium, LV cavity and the RV crescent around the septum (with a thin unlabelled wall).

    ``bump`` (see :meth:`Abnormality.wall_bump`) thickens the myocardium where it is not
    already another structure; returns the number of voxels added that way.
    """
    vf, a_lv, hs, below_base = heart.frame, heart.lv_semi, heart.scale, heart.below_base
    myo_outer = np.sqrt(vf.ellipsoid(heart.myo_outer_semi))
    in_myo = (myo_outer < 1.0) & below_base
    rv_c = np.array([-a_lv[0] - 2.0, -7.0, -2.0]) * np.array([hs, hs, hs])
    rv_semi = _jitter(rng, (17.0, 16.0, 24.0), 0.12) * hs
    rv_f = vf.ellipsoid(rv_semi, rv_c)
    rv_wall = np.sqrt(vf.ellipsoid(rv_semi + 3.0, rv_c)) < 1.0
    hu[rv_wall & below_base & ~in_myo] = tissue.myocardium
    hu[in_myo] = tissue.myocardium
    lab[in_myo] = MYOCARDIUM
    n_extra = 0
    if bump is not None:
        extra = (myo_outer < 1.0 + bump) & below_base & (lab == 0) & ~(rv_wall & below_base)
        hu[extra] = tissue.myocardium
        lab[extra] = MYOCARDIUM
        n_extra = int(extra.sum())
    lv = (vf.ellipsoid(a_lv) < 1.0) & below_base
    hu[lv] = tissue.blood_left
    lab[lv] = LV
    rv = (rv_f < 1.0) & below_base & ~in_myo
    hu[rv] = tissue.blood_right
    lab[rv] = RV
    return n_extra


def paint_atria(rng: np.random.Generator, heart: HeartFrame, tissue: TissueHU, hu: np.ndarray, lab: np.ndarray) -> None:
    """Right and left atrium, above the base plane (cranial)."""
    vf, a_lv, hs, base = heart.frame, heart.lv_semi, heart.scale, heart.base
    ra_centre = np.array([-a_lv[0] - 8.0, -1.0, base + 9.0]) * [1, hs, 1]
    ra = vf.ellipsoid(_jitter(rng, (13.0, 13.0, 15.0), 0.12) * hs, ra_centre) < 1.0
    hu[ra] = tissue.blood_right
    lab[ra] = RA
    la = vf.ellipsoid(_jitter(rng, (17.0, 12.0, 11.0), 0.12) * hs, np.array([3.0, 9.0 * hs, base + 10.0 * hs])) < 1.0
    hu[la] = tissue.blood_left
    lab[la] = LA


def _pulmonary_artery(q: Coords, rng: np.random.Generator, heart: HeartFrame, radius_scale: float = 1.0) -> np.ndarray:
    """Trunk from the RV outflow tract to the bifurcation, the left and the right branch
    (``radius_scale`` thins the tubes without changing any draw: the hard phantom's vessels).
    """
    U, a_lv, hs = rng.uniform, heart.lv_semi, heart.scale
    pa_root = heart.to_anat([-a_lv[0] * 0.45, -a_lv[1] - 0.55 * heart.t_myo - 2.0, heart.base - 6.0])
    r_pa = U(8.0, 10.0) * hs * radius_scale
    bif = pa_root + np.array([U(8, 12), U(2, 6), U(26, 32)]) * hs
    pa_pts = np.array(
        [
            pa_root,
            pa_root + np.array([U(2, 5), -U(2, 5), U(14, 18)]) * hs,
            bif,
            bif + np.array([U(16, 22), U(12, 18), -U(0, 4)]) * hs,
            bif + np.array([U(28, 34), U(20, 26), -U(6, 10)]) * hs,
        ]
    )
    pa = _tube(q, pa_pts, np.array([r_pa, r_pa, r_pa, 0.8 * r_pa, 0.65 * r_pa]))
    # right pulmonary artery: from the bifurcation, passing posterior to the ascending aorta
    rpa_pts = np.array(
        [
            bif,
            bif + np.array([-U(14, 18), U(12, 16), -U(0, 3)]) * hs,
            bif + np.array([-U(34, 40), U(14, 18), -U(4, 8)]) * hs,
        ]
    )
    pa |= _tube(q, rpa_pts, np.array([0.8 * r_pa, 0.7 * r_pa, 0.6 * r_pa]))
    return pa


def _aorta(q: Coords, rng: np.random.Generator, heart: HeartFrame, radius_scale: float = 1.0) -> np.ndarray:
    """From the LV outflow tract: ascending, arching back and descending out of the field of view
    (``radius_scale`` as for :func:`_pulmonary_artery`).
    """
    U, a_lv, hs = rng.uniform, heart.lv_semi, heart.scale
    ao_root = heart.to_anat([-0.3 * a_lv[0], -0.3 * a_lv[1], heart.base - 6.0])
    r_ao = U(8.0, 9.5) * hs * radius_scale
    ao_pts = np.array(
        [
            ao_root,
            ao_root + np.array([-U(2, 5), -U(1, 4), U(20, 26)]) * hs,  # ascending
            ao_root + np.array([U(0, 3), U(6, 10), U(38, 44)]) * hs,  # arch top
            ao_root + np.array([U(10, 14), U(24, 28), U(32, 38)]) * hs,  # arch, going back
            ao_root + np.array([U(14, 18), U(34, 38), U(12, 18)]) * hs,  # descending
            ao_root + np.array([U(15, 19), U(36, 40), -150.0]),  # leaves the field
        ]
    )
    return _tube(q, ao_pts, np.array([r_ao, r_ao, 0.9 * r_ao, 0.85 * r_ao, 0.75 * r_ao, 0.75 * r_ao]))


def paint_great_vessels(
    q: Coords,
    rng: np.random.Generator,
    heart: HeartFrame,
    tissue: TissueHU,
    hu: np.ndarray,
    lab: np.ndarray,
    radius_scale: float = 1.0,
) -> None:
    """Pulmonary artery, then aorta: tubes in the anatomical frame rooted in the outflow tracts
    (``radius_scale`` < 1: thinner vessels, the same draws).
    """
    pa = _pulmonary_artery(q, rng, heart, radius_scale)
    hu[pa] = tissue.blood_right
    lab[pa] = PULMONARY_ARTERY
    ao = _aorta(q, rng, heart, radius_scale)
    hu[ao] = tissue.blood_left
    lab[ao] = AORTA


def paint_heart(
    q: Coords,
    rng: np.random.Generator,
    rng_abn: np.random.Generator,
    scale: float,
    tissue: TissueHU,
    hu: np.ndarray,
    lab: np.ndarray,
    *,
    abnormal: bool,
) -> dict:
    """Paint the heart and great vessels (after the thorax); returns the abnormality meta.

    The abnormality is drawn from ``rng_abn`` even when ``abnormal`` is False, so a normal and
    an abnormal twin share every other draw and differ only in the myocardium.
    """
    heart = draw_heart_frame(q, rng, scale)
    paint_pericardial_fat(q, rng, heart, tissue.fat, hu)
    abn = draw_abnormality(rng_abn, heart)
    r2 = abn.distance2(heart) if abnormal else None
    bump = abn.wall_bump(heart, r2) if r2 is not None and abn.kind == "thickening" else None
    n_thickened = paint_ventricles(rng, heart, tissue, hu, lab, bump)
    paint_atria(rng, heart, tissue, hu, lab)
    paint_great_vessels(q, rng, heart, tissue, hu, lab)
    if r2 is None:
        return {"abnormal": False}
    info = {"abnormal": True, **abn.info()}
    # the lesion is applied last so that it only darkens what is still myocardium
    info["voxels"] = paint_lesion(abn, r2, hu, lab) if abn.kind == "lesion" else n_thickened
    return info
