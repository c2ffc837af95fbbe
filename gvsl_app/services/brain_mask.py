"""A classical brain mask (skull stripping) for T1-weighted MR heads, before the brain segmenter.

The shipped brain segmenter was trained on skull-stripped phantoms (the MNI template has no
skull); on a whole head it would call scalp and neck tissue "grey matter". :func:`brain_mask`
finds the brain first, so the segmenter sees what it was trained on.

The rule (morphology on intensities; no model, no atlas), on the image's own grid with
structuring elements sized in millimetres:

1. the head: voxels above :data:`HEAD_FRACTION` x ``t``, ``t`` the Otsu threshold of the
   whole volume (intensities scaled between their 0.5th and 99.5th percentiles), holes filled
   (in 3D and slice by slice: the field of view cuts the head open), the largest connected part;
2. tissue: head voxels above :data:`TISSUE_FRACTION` x ``t`` (grey and white matter, fat,
   marrow and muscle; CSF, bone and air fall below);
3. an erosion of that by :data:`ERODE_MM` cuts the thin bridges between the brain and the
   scalp (across the dark skull, the skull base, the optic nerves), and the largest part left
   is the brain's core;
4. that core is grown back by the same radius plus :data:`MARGIN_MM` (kept inside the head),
   closed and its holes filled (ventricles), so the mask holds brain and the CSF around it.

An image whose mask keeps more than ``1 -`` :data:`STRIPPED_BELOW` of its head is taken as
already skull-stripped and left whole (:attr:`BrainMask.applied` False). The constants were
chosen on one real head (ITK's ``KmeansTest_T1UCharRaw.nii.gz``, Debian's
insighttoolkit5-examples) and phantom heads (``models/weights/README.md``, "Whole heads"):
brain-mask Dice 0.963 against that head's reference mask, 0.980-0.989 on twelve phantom heads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from gvsl_app.io.volume import Volume

__all__ = [
    "ERODE_MM",
    "HEAD_FRACTION",
    "MARGIN_MM",
    "STRIPPED_BELOW",
    "TISSUE_FRACTION",
    "BrainMask",
    "brain_mask",
    "csf_threshold",
    "dark_grey_matter_to_csf",
]

HEAD_FRACTION = 0.5
"""Head threshold as a fraction of the Otsu threshold of the whole volume (step 1)."""

TISSUE_FRACTION = 0.8
"""Tissue threshold as a fraction of the head's Otsu threshold (step 2)."""

ERODE_MM = 5.0
"""Erosion radius (mm) that separates the brain from the scalp and neck (step 3)."""

MARGIN_MM = 1.0
"""Extra growth (mm) past the eroded radius when the core is grown back, for the CSF and cortex rim."""

STRIPPED_BELOW = 0.15
"""A mask that removes less than this fraction of the head: the image is already skull-stripped."""


@dataclass(frozen=True)
class BrainMask:
    """A brain mask on the image's grid and what it removed.

    Attributes:
        mask: Boolean ``(z, y, x)`` array, True inside the brain (and the CSF around it); all
            True when not ``applied``.
        head_ml: Volume of the head (step 1) in millilitres.
        brain_ml: Volume of the brain mask in millilitres (before the skull-stripped test).
        applied: False when the image was taken as already skull-stripped (or had no head).
    """

    mask: np.ndarray
    head_ml: float
    brain_ml: float
    applied: bool

    @property
    def removed_fraction(self) -> float:
        """Fraction of the head that the mask leaves out (about 0 on a skull-stripped image)."""
        return 0.0 if self.head_ml <= 0 else max(0.0, 1.0 - self.brain_ml / self.head_ml)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def _ball(radius_mm: float, spacing_zyx: np.ndarray) -> np.ndarray:
    if radius_mm <= 0:
        return np.ones((1, 1, 1), dtype=bool)
    r = np.maximum(np.floor(radius_mm / spacing_zyx), 0).astype(int)
    grids = np.ogrid[tuple(slice(-int(n), int(n) + 1) for n in r)]
    dist = sum(((g * s) / radius_mm) ** 2 for g, s in zip(grids, spacing_zyx))
    return np.asarray(dist <= 1.0)


def _fill(mask: np.ndarray) -> np.ndarray:
    """Holes filled in 3D, then in every slice along each axis: a head cut by the field of view
    (the neck, the top) is open at the volume's edge, where a 3D fill leaks out.
    """
    out = np.asarray(ndi.binary_fill_holes(mask))
    for axis in range(3):
        moved = np.moveaxis(out, axis, 0)
        for k in range(moved.shape[0]):
            moved[k] = ndi.binary_fill_holes(moved[k])
    return out


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask.astype(bool)
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return np.asarray(lab == int(np.argmax(sizes)))


def brain_mask(image: Volume) -> BrainMask:
    """The brain mask of a T1-weighted MR ``image`` (a head or an already skull-stripped brain)."""
    x = np.nan_to_num(np.asarray(image.array, dtype=np.float32))
    sp = np.asarray(image.spacing[::-1], dtype=float)  # z, y, x
    voxel_ml = float(np.prod(sp)) / 1000.0
    lo, hi = np.percentile(x, [0.5, 99.5])
    x = np.clip((x - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    t = _otsu(x.ravel())
    head = _largest(_fill(x > HEAD_FRACTION * t))
    whole = np.ones(x.shape, dtype=bool)
    if not head.any():
        return BrainMask(whole, 0.0, 0.0, applied=False)
    head_ml = float(head.sum()) * voxel_ml
    core = _largest(ndi.binary_erosion(head & (x > TISSUE_FRACTION * t), _ball(ERODE_MM, sp)))
    if not core.any():  # too small or too thin to erode: nothing to strip
        return BrainMask(whole, head_ml, head_ml, applied=False)
    grown = ndi.binary_dilation(core, _ball(ERODE_MM + MARGIN_MM, sp)) & head
    closed = ndi.binary_closing(grown, _ball(2.0 * MARGIN_MM, sp)) & head
    mask = np.asarray(ndi.binary_fill_holes(closed))
    brain_ml = float(mask.sum()) * voxel_ml
    if brain_ml > (1.0 - STRIPPED_BELOW) * head_ml:
        return BrainMask(whole, head_ml, brain_ml, applied=False)
    return BrainMask(mask, head_ml, brain_ml, applied=True)


def _otsu3(values: np.ndarray, bins: int = 128) -> tuple[float, float]:
    """The two thresholds of a three-class Otsu split of ``values`` (dark, middle, bright)."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2.0
    n = np.concatenate([[0.0], np.cumsum(hist, dtype=np.float64)])
    m = np.concatenate([[0.0], np.cumsum(hist * centres)])
    i, j = np.meshgrid(np.arange(1, bins), np.arange(1, bins), indexing="ij")  # class 0: bins < i, 1: i..j-1, 2: >= j
    valid = j > i
    w0, w1, w2 = n[i], n[j] - n[i], n[-1] - n[j]
    s0, s1, s2 = m[i], m[j] - m[i], m[-1] - m[j]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = s0**2 / w0 + s1**2 / w1 + s2**2 / w2
    between[~valid | (w0 == 0) | (w1 == 0) | (w2 == 0)] = -np.inf
    a, b = np.unravel_index(int(np.argmax(between)), between.shape)
    return float(edges[int(i[a, b])]), float(edges[int(j[a, b])])


def csf_threshold(image: np.ndarray, brain: np.ndarray) -> float:
    """The CSF / grey matter intensity boundary of a T1 brain: the lower threshold of a
    three-class Otsu split (CSF, grey, white matter) of the intensities inside ``brain``.
    """
    return _otsu3(np.asarray(image, dtype=np.float64)[brain])[0]


def dark_grey_matter_to_csf(labels: np.ndarray, image: np.ndarray, grey: int, csf: int) -> tuple[np.ndarray, float]:
    """``labels`` with its grey matter voxels darker than :func:`csf_threshold` relabelled CSF.

    The segmenter learned grey matter from the MNI template's smooth probability maps, where
    the sulci and the brain's rim take the grey matter label, and calls most CSF grey matter
    (its CSF class stays weak). On T1, CSF is darker than grey matter: this moves the dark
    part back. Returns the new labels and the threshold used.
    """
    brain = labels > 0
    if not brain.any():
        return labels, float("nan")
    t = csf_threshold(image, brain)
    out = labels.copy()
    out[(labels == grey) & (np.asarray(image) < t)] = csf
    return out, t
