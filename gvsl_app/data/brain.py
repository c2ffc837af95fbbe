"""Brain MR subjects from the MNI ICBM152 2009 template shipped inside ``nilearn`` (offline).

The ``nilearn`` package carries the ICBM152 2009a symmetric T1 template and its grey- and
white-matter probability maps at 1 mm
(``nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``,
197 x 233 x 189 voxels, uint8 0-255, skull-stripped). They are read directly with SimpleITK
(no network, no nilearn import); if the files are not where expected, ``nilearn.datasets``'
``load_mni152_template`` / ``load_mni152_gm_template`` / ``load_mni152_wm_template`` are used
instead (they also work offline at resolution 1).

Labels (:data:`BRAIN_LABELS`): the brain mask is nilearn's ``load_mni152_brain_mask`` rule (T1
template > 0.2 of its maximum) with holes filled; inside it every voxel takes the argmax of
(grey matter, white matter, CSF/other = 1 - GM - WM) probabilities.

A subject is the template cropped to the brain bounding box (plus a margin), resampled to
``shape`` through one random small affine (rotation <= 5 degrees, scaling about 0.94-1.06,
translation <= 3 mm) composed with a smooth random displacement field (linear interpolation for
the image, nearest neighbour for the labels, the same map for both), then a random gamma curve,
a multiplicative smooth bias field and Rician noise. The image is float32 and non-negative.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import cast

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from gvsl_app.data.phantom_geometry import _random_rotation
from gvsl_app.data.phantom_geometry import _rbf_basis as _rbf_basis_on
from gvsl_app.io.volume import Volume

__all__ = ["BRAIN_LABELS", "BRAIN_COLORS", "HEAD_LAYERS", "mni_template_files", "make_brain_subject", "brain_dataset"]

BRAIN_LABELS: dict[int, str] = {1: "Grey matter", 2: "White matter", 3: "CSF/other brain"}
"""Label values of the brain subjects (0 is outside the brain)."""

BRAIN_COLORS: dict[int, tuple[int, int, int]] = {1: (200, 120, 120), 2: (240, 240, 200), 3: (80, 140, 230)}

_FILES = {k: f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
BRAIN_MASK_THRESHOLD = 0.2
"""Fraction of the T1 template's maximum above which a voxel is brain (nilearn's mask rule)."""


def mni_template_files() -> dict[str, Path] | None:
    """Paths of the T1, GM and WM template files inside the installed nilearn, or None."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    files = {k: data / name for k, name in _FILES.items()}
    return files if all(p.is_file() for p in files.values()) else None


def _load_via_nilearn() -> dict[str, sitk.Image]:
    import tempfile

    import nibabel as nib
    from nilearn import datasets

    loaders = {
        "t1": datasets.load_mni152_template,
        "gm": datasets.load_mni152_gm_template,
        "wm": datasets.load_mni152_wm_template,
    }
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k, fn in loaders.items():
            path = os.path.join(tmp, f"{k}.nii.gz")
            nib.save(fn(resolution=1), path)
            out[k] = sitk.ReadImage(path, sitk.sitkFloat32)
    return out


@lru_cache(maxsize=1)
def _template():
    """(t1 in [0,1], label map uint8, reference SimpleITK image for geometry), cached."""
    files = mni_template_files()
    if files is not None:
        imgs = {k: sitk.ReadImage(str(p), sitk.sitkFloat32) for k, p in files.items()}
    else:
        try:
            imgs = _load_via_nilearn()
        except Exception as exc:  # pragma: no cover - depends on the installation
            raise FileNotFoundError(
                "the MNI ICBM152 2009 template was not found: brain samples need nilearn, which ships it "
                "(nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz); "
                "install it with: pip install 'gvsl-studio[brain]'"
            ) from exc
    arr = {k: sitk.GetArrayFromImage(im) for k, im in imgs.items()}
    t1 = arr["t1"] / max(float(arr["t1"].max()), 1e-6)
    gm = arr["gm"] / max(float(arr["gm"].max()), 1e-6)
    wm = arr["wm"] / max(float(arr["wm"].max()), 1e-6)
    mask = ndi.binary_fill_holes(t1 > BRAIN_MASK_THRESHOLD)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    lab = (np.argmax(np.stack([gm, wm, csf]), axis=0) + 1).astype(np.uint8)
    lab[~mask] = 0
    ref = sitk.Image(imgs["t1"].GetSize(), sitk.sitkUInt8)
    ref.CopyInformation(imgs["t1"])
    t1 = t1.astype(np.float32)
    t1.setflags(write=False)
    lab.setflags(write=False)
    return t1, lab, ref


HEAD_LAYERS: tuple[tuple[float, float, str], ...] = (
    (2.0, 0.12, "CSF"),
    (3.5, 0.03, "inner table of the skull"),
    (5.5, 0.50, "diploe (marrow)"),
    (7.0, 0.03, "outer table of the skull"),
    (9.0, 0.35, "galea and temporal muscle"),
    (13.0, 0.95, "scalp fat"),
    (14.5, 0.50, "skin"),
)
"""The synthetic head around the template's brain: (outer distance from the brain in mm,
T1 intensity on the template's 0-1 scale, tissue) per shell, T1 contrast as on a real scan
(fat and marrow bright, bone and CSF dark, muscle below grey matter)."""

_HEAD_PAD = (60, 24, 24)
"""Template voxels added per axis (z, y, x) on both sides for the head; z also takes the neck."""


@lru_cache(maxsize=1)
def _head_template():
    """(t1 of a whole head in [0,1], brain labels, geometry) on the template grid padded by :data:`_HEAD_PAD`.

    The template's brain wrapped in the :data:`HEAD_LAYERS` shells (by distance from the
    brain mask) and, below the lowest brain slice, a neck: an elliptic cylinder of muscle
    (0.35) in a fat ring (0.9) around a cervical spine of marrow (0.5) in bone (0.03). The
    labels stay the brain's (0 for every head tissue).
    """
    t1, lab, ref = _template()
    pz, py, px = _HEAD_PAD
    pads = ((pz, 0), (py, py), (px, px))  # the neck below (z index 0 is inferior); the top is the scalp's
    lab_p = np.pad(lab, pads)
    t1_p = np.pad(t1, pads)
    brain = lab_p > 0
    dist = np.asarray(ndi.distance_transform_edt(~brain))  # mm: the template is 1 mm isotropic
    head = np.zeros_like(t1_p)
    inner = 0.0
    for outer, value, _ in HEAD_LAYERS:
        head[(dist > inner) & (dist <= outer)] = value
        inner = outer
    nz, ny, nx = lab_p.shape
    zb = int(np.flatnonzero(brain.any(axis=(1, 2)))[0])  # lowest brain slice (the template cuts the brainstem)
    low = brain[zb]
    cy, cx = (float(np.mean(ix)) for ix in np.nonzero(low))
    yy, xx = np.ogrid[:ny, :nx]
    r = np.sqrt(((yy - cy - 10.0) / 55.0) ** 2 + ((xx - cx) / 60.0) ** 2)  # the neck's ellipse, centred behind the cord
    rs = np.sqrt(((yy - cy - 5.0) / 11.0) ** 2 + ((xx - cx) / 11.0) ** 2)  # the spine
    neck = np.select([rs <= 0.6, rs <= 1.0, r <= 0.85, r <= 1.0], [0.5, 0.03, 0.35, 0.9], 0.0).astype(np.float32)
    for z in range(zb + 1):
        cut = head[z] == 0
        head[z][cut] = neck[cut]
    t1_head = np.where(brain, t1_p, head).astype(np.float32)
    ref_p = sitk.Image(t1_head.shape[::-1], sitk.sitkUInt8)
    ref_p.SetSpacing(ref.GetSpacing())
    ref_p.SetDirection(ref.GetDirection())
    ref_p.SetOrigin(ref.TransformContinuousIndexToPhysicalPoint((-float(px), -float(py), -float(pz))))
    t1_head.setflags(write=False)
    lab_p.setflags(write=False)
    return t1_head, lab_p, ref_p


def _rbf_basis(n: int, n_ctrl: int) -> np.ndarray:
    """Gaussian basis over voxel indices 0..n-1 (the cardiac generator's, on an index axis)."""
    return _rbf_basis_on(np.arange(n, dtype=np.float64), n_ctrl)


def _smooth(ctrl: np.ndarray, shape) -> np.ndarray:
    bz, by, bx = (_rbf_basis(n, g) for n, g in zip(shape, ctrl.shape))
    out = np.tensordot(bz, ctrl.astype(np.float32), axes=(1, 0))
    out = np.tensordot(out, by, axes=(1, 1))
    return np.tensordot(out, bx, axes=(1, 1))


def make_brain_subject(seed: int, shape=(96, 96, 96), *, head: bool = False) -> tuple[Volume, Volume]:
    """One brain MR subject (T1-like image, GM/WM/CSF labels) derived from the MNI template.

    ``head=True`` gives a whole head as an MR scanner sees it: the brain inside CSF, skull,
    marrow, muscle, scalp fat and skin (:data:`HEAD_LAYERS`) and a neck below, the field of
    view the head's box with a random partial coverage (the top 0-12 mm of the head and
    20-60 mm of neck); the labels are the brain's only (0 on every other tissue).

    ``shape`` is the (z, y, x) output shape; ``None`` keeps the template's native 1 mm grid over
    the brain bounding box. The voxel spacing is the bounding box's extent divided by the shape
    (so it may be anisotropic); origin and direction place the volume in MNI physical space.
    Deterministic in ``seed``. Returns (image float32 >= 0, labels uint8 of :data:`BRAIN_LABELS`).
    """
    t1, lab, ref = _head_template() if head else _template()
    ss = np.random.SeedSequence(int(seed))
    rng_geo, rng_int, rng_noise = (np.random.default_rng(s) for s in ss.spawn(3))
    box = _head_box(t1, lab, shape, rng_geo) if head else _brain_box(lab, shape)
    warped = _warp_template(t1, lab, ref, box, rng_geo)
    img, look = _mr_appearance(warped.image, box.out_shape, rng_int, rng_noise)
    # geometry: origin = physical point of the box start; spacing = ratio * template spacing
    origin = ref.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in box.start[::-1]))
    spacing = cast("tuple[float, float, float]", tuple(float(r * s) for r, s in zip(box.ratio[::-1], ref.GetSpacing())))
    meta = {
        "kind": "brain",
        "seed": int(seed),
        **look,
        "deformation_std_mm": round(warped.amp, 3),
        "affine": warped.affine.astype(float).round(5).tolist(),
        "translation_mm": warped.translation.round(3).tolist(),
        "template": "MNI ICBM152 2009a symmetric (nilearn)",
        **({"head": True} if head else {}),
    }
    image = Volume(
        img,
        spacing=spacing,
        origin=origin,
        direction=ref.GetDirection(),
        source=f"synthetic brain seed {seed}",
        meta=meta,
    )
    label_vol = Volume(
        warped.labels,
        spacing=spacing,
        origin=origin,
        direction=ref.GetDirection(),
        source=f"synthetic brain labels seed {seed}",
        meta={"kind": "brain", "seed": int(seed), "label_names": dict(BRAIN_LABELS)},
    )
    return image, label_vol


@dataclass(frozen=True)
class _Box:
    """The template's brain bounding box (z, y, x): first voxel, size, and the output shape over it."""

    start: np.ndarray
    size: np.ndarray
    out_shape: tuple[int, int, int]

    @property
    def ratio(self) -> np.ndarray:
        """Template voxels per output voxel, per axis."""
        return (self.size - 1) / np.maximum(np.array(self.out_shape) - 1, 1)


def _brain_box(lab: np.ndarray, shape) -> _Box:
    """The brain's bounding box in the template, with a margin, and the output ``shape`` (``None``: the box's)."""
    margin = 6
    nz_idx = [np.flatnonzero(lab.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    start = np.array([max(int(ix[0]) - margin, 0) for ix in nz_idx])
    stop = np.array([min(int(ix[-1]) + margin, n - 1) for ix, n in zip(nz_idx, lab.shape)])
    box = stop - start + 1
    out_shape = tuple(int(s) for s in (box if shape is None else shape))
    if len(out_shape) != 3 or min(out_shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4 or None, got {shape}")
    return _Box(start, box, (out_shape[0], out_shape[1], out_shape[2]))


def _head_box(t1: np.ndarray, lab: np.ndarray, shape, rng: np.random.Generator) -> _Box:
    """The head's box on the padded template: the head's extent less a random top (0-12 mm), with 20-60 mm of neck."""
    margin = 4
    nz_idx = [np.flatnonzero((t1 > 0).any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    start = np.array([max(int(ix[0]) - margin, 0) for ix in nz_idx])
    stop = np.array([min(int(ix[-1]) + margin, n - 1) for ix, n in zip(nz_idx, t1.shape)])
    zb = int(np.flatnonzero(lab.any(axis=(1, 2)))[0])
    start[0] = max(zb - int(rng.integers(20, 61)), 0)
    stop[0] = stop[0] - int(rng.integers(0, 13))
    size = stop - start + 1
    out_shape = tuple(int(s) for s in (size if shape is None else shape))
    if len(out_shape) != 3 or min(out_shape) < 4:
        raise ValueError(f"shape must be three sizes >= 4 or None, got {shape}")
    return _Box(start, size, (out_shape[0], out_shape[1], out_shape[2]))


@dataclass(frozen=True)
class _Warped:
    """The template resampled through a random affine and smooth deformation, and that draw."""

    image: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    translation: np.ndarray
    amp: float


def _warp_template(
    t1: np.ndarray,
    lab: np.ndarray,
    ref: sitk.Image,
    box: _Box,
    rng: np.random.Generator,
) -> _Warped:
    """Output voxel -> template continuous index (z, y, x), in mm about the box centre; then resample."""
    start, ratio, out_shape = box.start, box.ratio, box.out_shape
    sp_zyx = np.array(ref.GetSpacing()[::-1])
    centre = (start + (box.size - 1) / 2.0) * sp_zyx
    rot = _random_rotation(rng, 5.0)
    scale = rng.uniform(0.94, 1.06) * rng.uniform(0.97, 1.03, size=3)
    A = (rot * scale[None, :]).astype(np.float32)
    trans = rng.uniform(-3.0, 3.0, size=3)
    n_ctrl = 5
    amp = rng.uniform(1.5, 3.0)  # mm
    disp = [_smooth(rng.normal(0.0, amp, size=(n_ctrl,) * 3), out_shape) for _ in range(3)]

    axes = [(start[a] + ratio[a] * np.arange(out_shape[a], dtype=np.float32)) * sp_zyx[a] - centre[a] for a in range(3)]
    grids = [axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]]
    coords = np.empty((3,) + out_shape, dtype=np.float32)
    for i in range(3):
        c = sum(A[i, j] * grids[j] for j in range(3)) + np.float32(centre[i] + trans[i]) + disp[i]
        coords[i] = c / np.float32(sp_zyx[i])
    img = ndi.map_coordinates(t1, coords, order=1, mode="constant", cval=0.0)
    labels = ndi.map_coordinates(lab, coords, order=0, mode="constant", cval=0).astype(np.uint8)
    return _Warped(img, labels, A, trans, float(amp))


def _mr_appearance(
    img: np.ndarray, out_shape: tuple[int, int, int], rng_int: np.random.Generator, rng_noise: np.random.Generator
) -> tuple[np.ndarray, dict[str, float]]:
    """MR appearance: gamma, smooth multiplicative bias, scale, Rician noise; and what was drawn."""
    gamma = float(np.exp(rng_int.uniform(-0.35, 0.35)))
    img = np.clip(img, 0.0, 1.0) ** np.float32(gamma)
    bias = np.exp(_smooth(rng_int.normal(0.0, rng_int.uniform(0.08, 0.18), size=(4, 4, 4)), out_shape))
    scale_i = rng_int.uniform(700.0, 1300.0)
    img = img * bias * np.float32(scale_i)
    sigma = np.float32(rng_int.uniform(0.01, 0.035) * scale_i)
    n1 = rng_noise.standard_normal(out_shape, dtype=np.float32) * sigma
    n2 = rng_noise.standard_normal(out_shape, dtype=np.float32) * sigma
    img = np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)
    look = {"gamma": round(gamma, 4), "noise_sigma": float(round(sigma, 3)), "intensity_scale": round(scale_i, 2)}
    return img, look


def brain_dataset(out_dir: str | os.PathLike, n: int, seed: int, shape=(96, 96, 96), *, head: bool = False) -> Path:
    """Write ``n`` brain subjects as ``images/case_XXX.nii.gz`` + ``labels/case_XXX.nii.gz``.

    ``head=True``: whole heads (:func:`make_brain_subject`).

    Subject ``i`` uses the seed ``seed * 100003 + i`` (as the cardiac datasets). Returns ``out_dir``.
    """
    from gvsl_app.data.synthetic import subject_seed
    from gvsl_app.io.images import write_volume

    out = Path(out_dir)
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    width = max(3, len(str(n - 1)))
    for i in range(n):
        name = f"case_{i:0{width}d}"
        image, labels = make_brain_subject(subject_seed(seed, i), shape, head=head)
        write_volume(image, out / "images" / f"{name}.nii.gz")
        write_volume(labels, out / "labels" / f"{name}.nii.gz", is_label=True)
    return out
