"""What the matching chooses from the scans when the user does not: the refinement preset
(brain MR at ~1 mm gets the stiffer, finer ``brain`` schedule) and the similarity (MIND-SSC
across modalities and contrasts, local NCC within one).
"""

from __future__ import annotations

import dataclasses

from gvsl_app.data.preprocess import detect_modality
from gvsl_app.io.volume import Volume
from gvsl_app.options import MatchOptions, MatchSimilarity, RefinePreset
from models import RefineSchedule, refine_preset
from models.similarity import Similarity

__all__ = [
    "MIND_FOLDING",
    "MIND_POINTS",
    "for_similarity",
    "BRAIN_SPACING_MM",
    "HEAD_EXTENT_MM",
    "CONTRAST_CORRELATION",
    "auto_preset",
    "choose_schedule",
    "choose_similarity",
]


def choose_schedule(
    opts: MatchOptions, schedule: RefineSchedule | None, fixed: Volume, moving: Volume
) -> tuple[str | None, str, RefineSchedule | None]:
    """The refinement's preset name, why it was chosen, and its schedule (none without
    ``refine``; a schedule of one's own has no name); ``auto`` picks the preset from the scans
    (:func:`auto_preset`).
    """
    if not opts.refine:
        return None, "", None
    if schedule is not None:
        return None, "a schedule of the caller's own", schedule
    if opts.refine_preset == RefinePreset.AUTO:
        preset, why = auto_preset(fixed, moving)
    else:
        preset, why = str(opts.refine_preset), "chosen by the user"
    return preset, why, refine_preset(preset)


BRAIN_SPACING_MM = 2.1
"""Largest voxel side of a scan the ``auto`` refinement preset takes for brain MR: up to about
2 mm the brain preset is as good or better (two MNI-derived pairs at 96^3, voxels of 1.7 x 2.0
x 1.7 mm: T1 against T2 0.794 -> 0.823 mean tissue Dice, SimpleITK's MI recipe 0.824; T1
against T1 0.837 -> 0.839; at about twice the refinement's time)."""


HEAD_EXTENT_MM = (150.0, 300.0)
"""Longest physical side of a field of view the ``auto`` preset takes for a head."""


def auto_preset(fixed: Volume, moving: Volume) -> tuple[str, str]:
    """``brain`` for MR of at most ~2 mm voxels over a head-sized field of view (both scans),
    else ``standard``; and why, in words.

    The brain preset is stiffer and finer: on three 1 mm MNI-derived brain pairs it gains
    (0.865 -> 0.884 mean tissue Dice, equal to SimpleITK's affine + B-spline), on the cardiac
    pairs' large deformations it loses ~0.1 (docs/results/matching.md section 6).
    """
    for name, v in (("fixed", fixed), ("moving", moving)):
        extent = max(n * s for n, s in zip(v.shape[::-1], v.spacing))
        if detect_modality(v) != "mr":
            return "standard", f"chosen from the scans: the {name} scan is not MR"
        if max(v.spacing) > BRAIN_SPACING_MM:
            return "standard", f"chosen from the scans: the {name} scan's voxels exceed {BRAIN_SPACING_MM} mm"
        if not HEAD_EXTENT_MM[0] <= extent <= HEAD_EXTENT_MM[1]:
            return (
                "standard",
                f"chosen from the scans: the {name} scan's field of view ({extent:.0f} mm) is not a head's",
            )
    return "brain", f"chosen from the scans: MR of voxels <= {BRAIN_SPACING_MM} mm over a head-sized field of view"


CONTRAST_CORRELATION = 0.2
"""Below this correlation of the two scans' intensities once placed, ``auto`` takes them for
two contrasts (T1 against T2 correlates negatively) and compares MIND descriptors instead."""


def choose_similarity(opts: MatchOptions, fixed: Volume, moving: Volume, correlation: float) -> tuple[Similarity, str]:
    """The refinement's similarity and why it was chosen: the user's, or MIND-SSC when the
    scans look like two modalities or their intensities, once placed, correlate at less than
    :data:`CONTRAST_CORRELATION`, else local NCC.
    """
    if opts.similarity != MatchSimilarity.AUTO:
        return Similarity(str(opts.similarity)), "chosen by the user"
    fm, mm = detect_modality(fixed), detect_modality(moving)
    if fm != mm:
        return Similarity("mind"), f"the fixed scan looks like {fm.upper()}, the moving one like {mm.upper()}"
    corr = correlation
    if corr < CONTRAST_CORRELATION:
        return Similarity("mind"), (
            f"the scans' intensities correlate at {corr:.2f} once placed (< {CONTRAST_CORRELATION}): two contrasts"
        )
    return Similarity("ncc"), f"one contrast (intensities correlate at {corr:.2f} once placed)"


MIND_FOLDING = 50.0
"""The refinement's folding weight when it compares MIND descriptors (10 for NCC): MIND's
squared differences pull harder on a fold than local NCC does, and at 10 a CT-MR cardiac pair
folded 2.5 % of its voxels; at 50 it folds 0.46 % (Dice 0.830 -> 0.818; another pair 0.881 ->
0.883, docs/results/matching.md section 8)."""


MIND_POINTS = 32768
"""Fixed voxels a MIND refinement compares per step on levels that have more (one per block of a
jittered grid, drawn afresh each step, the step size decaying over the level;
``RefineSchedule.points``). MIND warps 12 descriptor channels, so at 96^3 a step on every voxel
costs ~6x a local NCC step. On two T1-against-T2 brain pairs at 96^3 the Dice stayed 0.8231 ->
0.8229 and the match took about half the time; on three CT-MR cardiac pairs at 64^3 the Dice went
0.8506 -> 0.8531 and the folding down (docs/results/matching.md section 8, fourth round)."""


def for_similarity(
    schedule: RefineSchedule | None, similarity: Similarity, preset: str | None
) -> RefineSchedule | None:
    """A preset's schedule adapted to the similarity (MIND: :data:`MIND_FOLDING` and
    :data:`MIND_POINTS` sampled voxels per step); a schedule of the caller's own (``preset``
    None) is used as given.
    """
    if schedule is None or preset is None or similarity.name != "mind":
        return schedule
    return dataclasses.replace(schedule, folding=max(schedule.folding, MIND_FOLDING), points=MIND_POINTS)
