"""Initial alignment of a pair before the network: where the moving scan starts.

Two scans of two people, two sites or two modalities often start tens of millimetres and
degrees apart, or in unrelated physical frames (another export, another origin). Classical
tools (ANTs, elastix) initialise from the images' geometry or moments before anything else;
so does this module. Every candidate is a physical affine ``T`` taking a fixed point to the
moving point that should sit on it (SimpleITK's resampling convention), scored by the
normalised mutual information of the two scans on a coarse grid over the fixed scan, weighted
by how much of the fixed scan's content the moving scan covers there. Mutual information
does not care which contrast each scan has, so the same scores serve CT against MR.

Candidates: ``none`` (the files' own frames), ``geometry`` (centres of the fields of view),
``mass`` (centres of intensity mass) and ``moments`` (principal axes of the intensity mass,
each of the four proper sign choices of the axes), then a search of rotations about the
chosen centre, from the best candidate and from the best one that keeps the files'
orientation (turns by at most :data:`UPRIGHT_DEG`). ``auto`` keeps the best of all of them,
except that a candidate turning the moving scan by more than that must score clearly higher
(:data:`TURN_MARGIN`) than the best one that does not; a named mode keeps its own best.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy.ndimage import map_coordinates

from gvsl_app.data.perturb import euler_matrix
from gvsl_app.data.preprocess import normalise, physical_centre
from gvsl_app.io.images import volume_to_sitk
from gvsl_app.io.volume import Volume
from gvsl_app.options import InitMode

log = logging.getLogger(__name__)

COARSE_SIDE = 40
"""Longest side, in voxels, of the grids the candidates are scored on (~0.1 s for all)."""

BINS = 24
"""Histogram bins per scan of the mutual information."""

ROTATION_STEPS_DEG = (30.0, 12.0, 5.0)
"""The rotation search: about each axis, -step, 0 and +step (27 rotations a round), each
round centred on the best so far; three rounds reach any rotation within ~45 degrees of the
start to within a few degrees."""


UPRIGHT_DEG = 90.0
"""A placement that turns the moving scan by more than this (about any axis) turns it against
its file's orientation: the files' direction cosines say which way is head, left and front even
when their origins are unrelated, and two scans of one anatomy are rarely turned against each
other by more than their patients' poses allow. Such a turn is the principal axes' sign
ambiguity more often than the truth: on a CT-MR cardiac pair shifted 27 mm in an unrelated
frame the moments' flipped candidate (178 deg) outscored the truth (0.084 against 0.079) until
the rotation search also ran from the unflipped start (0.098)."""

TURN_MARGIN = 0.05
"""How much higher (relatively) a placement turning by more than :data:`UPRIGHT_DEG` must score
than the best upright one for ``auto`` to keep it: on a CT-MR cardiac pair turned 37 deg in an
unrelated frame a 170-degree flip scored 0.1069 against the truth's 0.1060."""


@dataclass(frozen=True)
class InitialAlignment:
    """Where the moving scan starts: ``matrix`` (4x4, fixed point -> moving point, mm), the
    mode asked for, the candidate chosen, its ``score`` and every candidate's score, the
    share of the fixed scan's content the moving scan covers once placed (``coverage``), the
    share of the moving scan's content that lands on the fixed scan (``moving_coverage``), and
    the correlation of their intensities there (low or negative across contrasts).
    """

    matrix: np.ndarray
    mode: str
    chosen: str
    score: float
    coverage: float
    moving_coverage: float = 1.0
    correlation: float = 1.0
    candidates: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        """The report's ``init`` entry."""
        return {
            "mode": self.mode,
            "chosen": self.chosen,
            "score": round(self.score, 4),
            "coverage": round(self.coverage, 4),
            "moving_coverage": round(self.moving_coverage, 4),
            "correlation": round(self.correlation, 4),
            "rotation_deg": round(turn_deg(self.matrix), 2),
            "translation_mm": [round(float(v), 2) for v in self.matrix[:3, 3]],
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
            "candidates": {k: round(v, 4) for k, v in self.candidates.items()},
        }


@dataclass
class _Coarse:
    """A scan on a coarse grid: its image, normalised intensities, voxel centres in mm and
    the intensity weights its mass and moments are taken with.
    """

    image: sitk.Image
    values: np.ndarray
    points: np.ndarray
    weights: np.ndarray

    @property
    def centre_of_mass(self) -> np.ndarray:
        return (self.points * self.weights[:, None]).sum(0) / max(float(self.weights.sum()), 1e-12)

    def principal_axes(self) -> np.ndarray:
        """Columns: the principal axes of the intensity mass, largest spread first."""
        d = self.points - self.centre_of_mass
        cov = (d * self.weights[:, None]).T @ d / max(float(self.weights.sum()), 1e-12)
        vals, vecs = np.linalg.eigh(cov)
        return vecs[:, np.argsort(vals)[::-1]]


def shrink_factors(shape: tuple[int, ...]) -> list[int]:
    """The whole factors (per array axis, z y x) that shrink a grid of ``shape`` to about
    :data:`COARSE_SIDE` voxels a side: the coarse grids of the initial alignment and the verdict.
    """
    return [max(1, int(math.ceil(n / COARSE_SIDE))) for n in shape]


def _coarse(volume: Volume) -> _Coarse:
    """``volume`` shrunk by whole factors (averaging) to about :data:`COARSE_SIDE` voxels a side."""
    img = sitk.Cast(volume_to_sitk(volume.with_array(normalise(volume))), sitk.sitkFloat32)
    factors = shrink_factors(volume.shape)[::-1]  # SimpleITK's (x, y, z)
    small = sitk.BinShrink(img, factors) if max(factors) > 1 else img
    values = sitk.GetArrayFromImage(small).astype(np.float64)  # (z, y, x)
    idx = np.stack(np.meshgrid(*(np.arange(n) for n in values.shape), indexing="ij"), -1).reshape(-1, 3)[:, ::-1]
    direction = np.asarray(small.GetDirection()).reshape(3, 3)
    points = idx * np.asarray(small.GetSpacing()) @ direction.T + np.asarray(small.GetOrigin())
    flat = values.reshape(-1)
    # mass above the scan's background (air, outside the body), so a scan's empty margins do
    # not pull its centre towards the middle of the field of view
    floor = float(np.percentile(flat, 20))
    return _Coarse(small, flat, points, np.clip(flat - floor, 0.0, None))


def _translation(t: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = t
    return out


def _about(rotation: np.ndarray, fixed_centre: np.ndarray, moving_centre: np.ndarray) -> np.ndarray:
    """The affine that turns a fixed point about ``fixed_centre`` and puts that centre on ``moving_centre``."""
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = moving_centre - rotation @ fixed_centre
    return out


class _Scorer:
    """Scores a placement of the moving scan: NMI - 1 of the pair on the fixed coarse grid
    where the moving scan has data, times the overlap: the larger of the share of the fixed
    scan's content the moving scan covers and the share of the moving scan's content that
    lands on the fixed scan. The larger of the two, so that a moving scan covering part of
    the fixed one (a slab, half an organ) scores fully where it belongs, while two scans that
    barely touch score little however alike their small overlap is.
    """

    def __init__(self, fixed: _Coarse, moving: _Coarse) -> None:
        self.fixed, self.moving = fixed, moving
        self.f_bins = _bins(fixed.values, fixed.values)
        self.content = fixed.weights / max(float(fixed.weights.sum()), 1e-12)
        self.to_index, self.origin, self.size = _index_frame(moving.image)
        self.array = moving.values.reshape(sitk.GetArrayFromImage(moving.image).shape)
        self.moving_content = moving.weights / max(float(moving.weights.sum()), 1e-12)
        self.fixed_to_index, self.fixed_origin, self.fixed_size = _index_frame(fixed.image)

    def moving_coverage(self, matrix: np.ndarray) -> float:
        """Share of the moving scan's content that lands on the fixed scan once placed by ``matrix``."""
        back = np.linalg.inv(matrix)
        points = self.moving.points @ back[:3, :3].T + back[:3, 3]
        idx = (points - self.fixed_origin) @ self.fixed_to_index.T
        inside = np.all((idx >= -0.5) & (idx <= self.fixed_size - 0.5), axis=1)
        return float((self.moving_content * inside).sum())

    def sample(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The moving scan's values at physical ``points`` (N, 3) and whether each lies inside it."""
        idx = (points - self.origin) @ self.to_index.T  # (x, y, z)
        inside = np.all((idx >= -0.5) & (idx <= self.size - 0.5), axis=1)
        values = map_coordinates(self.array, idx[:, ::-1].T, order=1, mode="nearest")
        return values, inside

    def placed(self, matrix: np.ndarray) -> np.ndarray:
        """The fixed coarse grid's points moved by ``matrix`` into the moving scan."""
        return self.fixed.points @ matrix[:3, :3].T + matrix[:3, 3]

    def coverage(self, matrix: np.ndarray) -> float:
        """Share of the fixed scan's content that the moving scan covers once placed by ``matrix``."""
        return float((self.content * self.sample(self.placed(matrix))[1]).sum())

    def correlation(self, matrix: np.ndarray) -> float:
        """Pearson correlation of the two scans' intensities where both show content: near 1
        for one contrast, low or negative across contrasts (T1 against T2, CT against MR).
        """
        m, inside = self.sample(self.placed(matrix))
        # where both show tissue (above their mean: not air, not the background around a
        # brain), so that the contrast inside the body decides, not body against background
        both = inside & (self.fixed.values > self.fixed.values.mean()) & (m > self.moving.values.mean())
        if both.sum() < 64:
            return 0.0
        a, b = self.fixed.values[both], m[both]
        if a.std() == 0 or b.std() == 0:
            return 0.0
        return float(np.corrcoef(a, b)[0, 1])

    def at_points(self, points: np.ndarray, moving_coverage: float = 0.0) -> float:
        """The score of the moving scan sampled at ``points`` (the fixed coarse grid, mapped),
        its content landing on the fixed scan in the share ``moving_coverage``.
        """
        m, mask = self.sample(points)
        if mask.sum() < 64:
            return 0.0
        joint = np.bincount(
            self.f_bins[mask] * BINS + _bins(m[mask], self.moving.values), minlength=BINS * BINS
        ).astype(np.float64)
        p = joint / joint.sum()
        pf, pm = p.reshape(BINS, BINS).sum(1), p.reshape(BINS, BINS).sum(0)
        h_joint = _entropy(p)
        nmi = (_entropy(pf) + _entropy(pm)) / h_joint if h_joint > 0 else 1.0
        return (nmi - 1.0) * max(float((self.content * mask).sum()), moving_coverage)

    def __call__(self, matrix: np.ndarray) -> float:
        return self.at_points(self.placed(matrix), self.moving_coverage(matrix))


def _index_frame(image: sitk.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mm -> (x, y, z) index matrix, origin, size (x, y, z)) of an image's grid: a point ``p``
    is at continuous index ``(p - origin) @ M.T``, inside when within [-0.5, size - 0.5].
    """
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    to_index = np.linalg.inv(direction @ np.diag(image.GetSpacing()))
    return to_index, np.asarray(image.GetOrigin()), np.asarray(image.GetSize(), float)


def _bins(values: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Histogram bin of each value, over the range of ``reference`` (its scan's values)."""
    lo, hi = float(reference.min()), float(reference.max())
    return np.clip(((values - lo) / max(hi - lo, 1e-12) * BINS).astype(np.int64), 0, BINS - 1)


def _entropy(q: np.ndarray) -> float:
    q = q[q > 0]
    return float(-(q * np.log(q)).sum())


def initial_alignment(
    fixed: Volume, moving: Volume, mode: InitMode | str = InitMode.AUTO, pair: PairScore | None = None
) -> InitialAlignment:
    """The initial alignment of ``moving`` onto ``fixed`` by ``mode`` (see :class:`InitMode`).

    ``none`` keeps the files' frames (and scores them); the other modes try their candidates
    and keep the best by the score of the module's docstring, ``auto`` over all candidates.
    A candidate under the identity's score never replaces it, so a pair that already shares
    a frame stays where it is unless moving it makes the pair clearly more alike; with
    ``auto`` it also stays when the best candidate moves no point of the fixed scan's content
    by as much as one voxel of the coarse grid (~5 mm on a head), a correction below what
    that grid resolves (on 1 mm brain pairs such a 1.6 mm move cost the refinement up to 0.007
    Dice). ``pair``
    (the pair's :class:`PairScore`, made here when not given) lets a caller judge the finished
    match by the same measure.
    """
    mode = InitMode(str(mode))
    pair = pair or PairScore(fixed, moving)
    score = pair.scorer
    f, m = score.fixed, score.moving
    found: dict[str, tuple[float, np.ndarray]] = {"none": (score(np.eye(4)), np.eye(4))}
    if mode is not InitMode.NONE:
        found.update(_candidates(fixed, moving, f, m, mode, score))
    pool = {k: v for k, v in found.items() if mode is InitMode.AUTO or k == "none" or k.startswith(str(mode))}
    best = max(pool, key=lambda k: pool[k][0])
    if mode is not InitMode.NONE and best == "none" and len(pool) > 1 and found["none"][0] <= 0.0:
        best = max((k for k in pool if k != "none"), key=lambda k: pool[k][0])  # no overlap at all: move it
    if mode is InitMode.AUTO:
        best = _upright_unless_clearly_worse(pool, best)
    if mode is InitMode.AUTO and best != "none" and found["none"][0] > 0.0 and _within_a_voxel(f, pool[best][1]):
        best = "none"  # a move the coarse grid cannot resolve is the refinement's to make, at full resolution
    value, matrix = pool[best]
    result = InitialAlignment(
        matrix=matrix,
        mode=str(mode),
        chosen=best,
        score=float(value),
        coverage=score.coverage(matrix),
        moving_coverage=score.moving_coverage(matrix),
        correlation=score.correlation(matrix),
        candidates={k: float(v[0]) for k, v in found.items()},
    )
    log.info("initial alignment %s: %s (score %.4f)", mode, best, value)
    return result


def turn_deg(matrix: np.ndarray) -> float:
    """The angle, in degrees, by which the 4x4 placement ``matrix`` turns the moving scan: that
    of the rotation nearest its linear part (the polar decomposition's).
    """
    u, _, vt = np.linalg.svd(matrix[:3, :3])
    cosine = (float(np.trace(u @ vt)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, cosine))))


def _upright_unless_clearly_worse(pool: dict[str, tuple[float, np.ndarray]], best: str) -> str:
    """``best``, or the best-scoring candidate of ``pool`` that turns by at most
    :data:`UPRIGHT_DEG` when ``best`` turns further without beating it by :data:`TURN_MARGIN`.
    """
    if turn_deg(pool[best][1]) <= UPRIGHT_DEG:
        return best
    upright = [k for k in pool if turn_deg(pool[k][1]) <= UPRIGHT_DEG]
    if not upright:
        return best
    alternative = max(upright, key=lambda k: pool[k][0])
    return alternative if pool[alternative][0] * (1.0 + TURN_MARGIN) >= pool[best][0] else best


def _within_a_voxel(f: _Coarse, matrix: np.ndarray) -> bool:
    """Whether ``matrix`` moves every point of the coarse fixed scan's content by less than one
    of its voxels (the largest side).
    """
    points = f.points[f.weights > 0]
    moved = points @ matrix[:3, :3].T + matrix[:3, 3]
    largest = float(np.linalg.norm(moved - points, axis=1).max()) if len(points) else 0.0
    return largest < max(f.image.GetSpacing())


def _candidates(
    fixed: Volume, moving: Volume, f: _Coarse, m: _Coarse, mode: InitMode, score: _Scorer
) -> dict[str, tuple[float, np.ndarray]]:
    """Every candidate of ``mode`` (all of them for ``auto``) with its score."""
    out: dict[str, tuple[float, np.ndarray]] = {}
    if mode in (InitMode.AUTO, InitMode.GEOMETRY):
        t = _translation(physical_centre(moving) - physical_centre(fixed))
        out["geometry"] = (score(t), t)
    cf, cm = f.centre_of_mass, m.centre_of_mass
    if mode in (InitMode.AUTO, InitMode.MASS, InitMode.MOMENTS):
        t = _translation(cm - cf)
        out["mass"] = (score(t), t)
    if mode in (InitMode.AUTO, InitMode.MOMENTS):
        ef, em = f.principal_axes(), m.principal_axes()
        for i, signs in enumerate(s for s in itertools.product((1, -1), repeat=3) if np.prod(s) > 0):
            # both bases right-handed, so the rotation between them is proper
            ef_r = ef * np.sign(np.linalg.det(ef))
            rot = (em * np.sign(np.linalg.det(em)) * np.asarray(signs)) @ ef_r.T
            t = _about(rot, cf, cm)
            out[f"moments-{i}"] = (score(t), t)
    if mode in (InitMode.AUTO, InitMode.MASS, InitMode.MOMENTS):
        starts = [k for k in out if k != "geometry"]
        start = max(starts, key=lambda k: out[k][0])
        tag = "moments" if mode is InitMode.MOMENTS else ("mass" if mode is InitMode.MASS else "search")
        out[f"{tag}-rotated"] = _rotation_search(out[start], cf, score)
        upright = [k for k in starts if turn_deg(out[k][1]) <= UPRIGHT_DEG]
        first = max(upright, key=lambda k: out[k][0]) if upright else start
        if first != start:  # the best start flipped the scan: search from the best upright one too
            out[f"{tag}-upright"] = _rotation_search(out[first], cf, score)
    return out


def _rotation_search(start: tuple[float, np.ndarray], centre: np.ndarray, score: _Scorer) -> tuple[float, np.ndarray]:
    """Rounds of 27 rotations about ``centre`` (fixed space) composed with ``start``'s
    matrix, each round about the best so far with a finer step.
    """
    best_score, best = start
    for step in ROTATION_STEPS_DEG:
        around = best
        for ax, ay, az in itertools.product((-step, 0.0, step), repeat=3):
            angles = (ax, ay, az)
            if not any(angles):
                continue
            turn = _about(euler_matrix(angles), centre, centre)  # turn the fixed point first, then place it
            candidate = around @ turn
            value = score(candidate)
            if value > best_score:
                best_score, best = value, candidate
    return best_score, best


class PairScore:
    """The initial alignment's score for any placement of the moving scan, so that a finished
    match is judged by the same measure as its start (:meth:`of_field`).
    """

    def __init__(self, fixed: Volume, moving: Volume) -> None:
        self.scorer = _Scorer(_coarse(fixed), _coarse(moving))

    def of_field(self, fixed: Volume, displacement_mm: np.ndarray, near: np.ndarray | None = None) -> float:
        """The score of the map ``x -> x + d(x)`` given on ``fixed``'s grid (z, y, x, 3), in mm;
        the share of the moving scan's content it brings onto the fixed scan is taken as the
        affine ``near``'s (the initial alignment: a map cannot be inverted cheaply).
        """
        coarse = self.scorer.fixed
        shape = sitk.GetArrayFromImage(coarse.image).shape
        # the factors BinShrink used: ceil(n / coarse side) differs from them where n is not a
        # multiple (75 voxels shrunk by 2 to 37 would be read as blocks of 3)
        factors = shrink_factors(fixed.shape)
        # the displacement at the coarse voxels: the mean over each block, as BinShrink averages
        d = np.stack([_block_mean(displacement_mm[..., i], factors, shape) for i in range(3)], -1)
        covered = self.scorer.moving_coverage(near) if near is not None else 0.0
        return self.scorer.at_points(coarse.points + d.reshape(-1, 3), covered)


def _block_mean(array: np.ndarray, factors: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """``array`` averaged over blocks of ``factors`` voxels, cropped to ``shape`` (as BinShrink does)."""
    fz, fy, fx = factors
    z, y, x = (n * f for n, f in zip(shape, factors))
    a = array[:z, :y, :x]
    if a.shape != (z, y, x):  # BinShrink drops a partial last block: so does this
        a = np.pad(a, [(0, t - n) for t, n in zip((z, y, x), a.shape)], mode="edge")
    return a.reshape(shape[0], fz, shape[1], fy, shape[2], fx).mean(axis=(1, 3, 5))
