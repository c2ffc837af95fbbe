"""The refinement's schedule: the levels, steps and weights of
:func:`models.instance_optimisation.refine_coordinates`, and the named presets.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RefineSchedule:
    """Levels and weights of :func:`refine_coordinates`.

    The defaults were chosen on synthetic cardiac pairs from a handful of variants: levels
    and smoothness on ``bench_match.py``'s default seeds 1000-1005, the folding weight on
    seeds 2000-2007 (folding 1.39 % -> 0.26 % of voxels at equal Dice); ``bench_match.py
    --seed-base 3000`` checks them on pairs they never saw. The finest level was added for
    brain MR at its own resolution (``bench_brain_match.py``, docs/results/matching.md).

    ``affine_levels``: (image side, Adam steps) per level; ``deformable_levels``: (image
    side, control-grid side, steps). An image side is the longest side of that level's
    images (the others keep the scan's proportions); a level never works above the images'
    own resolution, so on small images the finest levels run at it (or are skipped when an
    identical level ran already). ``smoothness`` weighs the mean squared difference of
    neighbouring control points, summed over the three axes and measured in voxels of an
    image of longest side ``smoothness_side`` (so that adding a finer level does not change
    how smooth the coarser ones are);
    ``folding`` the mean of ``relu(-det J)`` of the whole map at each level's resolution, so
    that folds a network's own displacement brings along are unfolded too; on levels finer
    than ``folding_side`` it is evaluated on a copy of the map at that side.
    ``whole_field`` (used when the starting map's affine part is given): the control grid
    starts from the network's own displacement and the smoothness weighs all of it, so that
    a refinement from the network solves the same problem as one from the identity, only
    from a closer start; off, the network's displacement stays as it is and only the
    correction on top of it is regularised. ``tolerance`` > 0 ends a level early once the
    loss's mean over the last ``patience`` steps improves on the mean over the ``patience``
    before by less than that (in NCC units). ``lr_side`` > 0 scales the deformable step size
    on levels of longest side above it by ``lr_side / side``, so that an Adam step moves the
    control points by the same number of that level's voxels as at ``lr_side`` (off by
    default; on brain MR at 1 mm halving the 96 level's step added +0.007 Dice, issue #16 in
    docs/results/matching.md section 6). ``fine_smoothness`` > 0 adds, on levels of longest side
    above ``fine_side``, a second smoothness term of that weight (measured like
    ``smoothness``) on the correction that level adds only (the control grid minus where the
    level started it), so that the fine levels are stiff without pulling back the large
    deformation the coarse levels found (a stiffer ``smoothness`` weighs the whole field and
    does; off by default); with ``fine_residual`` off that term weighs the whole field
    instead, like ``smoothness`` but on the fine levels only. Neither became the default: on
    brain MR at 1 mm a stiff correction at 96 lost Dice, and the whole-field term that gained
    (pair 0 0.870 -> 0.875) cost the cardiac pairs 0.916 -> 0.818 (issue #16, second round,
    docs/results/matching.md section 6). ``bending`` > 0 adds a bending energy of that weight
    (:func:`models.losses.bending_energy`: squared second differences of the control grid,
    summed over the nine second derivatives, in the same voxels as ``smoothness``) on the
    whole field at every deformable level: zero for any affine field, it lets a large smooth
    deformation stand and charges only its curvature. ``points`` > 0 compares a pointwise
    similarity (MIND) on that many fixed voxels per step, drawn afresh at every step (with a
    generator seeded by ``seed``, so a refinement is repeatable), on levels that have more
    voxels: stochastic sampling as elastix's random coordinate sampler does it. Local NCC and
    NGF need each voxel's neighbours and always compare every voxel. On a sampled level the
    step size falls linearly to ``sampled_lr_end`` times its start over the level's steps (the
    decaying gain of stochastic gradient descent, as elastix's), so that the sample's noise
    does not leave the map jittering about its optimum.
    """

    affine_levels: tuple[tuple[int, int], ...] = ((24, 150), (48, 30))
    deformable_levels: tuple[tuple[int, int, int], ...] = ((24, 12, 80), (48, 16, 40), (96, 16, 20))
    window: int = 9
    smoothness: float = 0.02
    smoothness_side: int = 48
    folding_side: int = 48
    folding: float = 10.0
    affine_lr: float = 0.01
    deformable_lr: float = 0.02
    lr_side: int = 0
    fine_smoothness: float = 0.0
    fine_side: int = 48
    fine_residual: bool = True
    bending: float = 0.0
    whole_field: bool = True
    tolerance: float = 3e-4
    patience: int = 10
    points: int = 0
    seed: int = 0
    sampled_lr_end: float = 0.1

    @property
    def total_steps(self) -> int:
        """The steps of every level, planned."""
        return sum(n for _, n in self.affine_levels) + sum(n for _, _, n in self.deformable_levels)


REFINE_PRESETS: dict[str, RefineSchedule] = {
    "standard": RefineSchedule(),
    "brain": RefineSchedule(deformable_levels=((24, 12, 80), (48, 16, 40), (96, 16, 40)), lr_side=48, bending=0.2),
}
"""Named refinement schedules. ``standard`` (the default) suits inter-subject CT with large
deformations (the cardiac pairs); ``brain`` suits brain MR and other scans at ~1 mm whose
deformation is small and smooth: the 96 level's step halved (``lr_side=48``) and run for 40
steps, and a bending energy of 0.2. On 1 mm MNI-derived brain pairs ``brain`` matches or beats
SimpleITK's affine + B-spline where ``standard`` stays below it, and on the cardiac pairs it
loses ~0.1 Dice (their large deformations need the freedom the bending takes away):
docs/results/matching.md section 6, third round."""


def refine_preset(name: str) -> RefineSchedule:
    """The :data:`REFINE_PRESETS` schedule called ``name``; a ValueError lists the names otherwise."""
    try:
        return REFINE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown refinement preset {name!r}: choose one of {', '.join(REFINE_PRESETS)}") from None
