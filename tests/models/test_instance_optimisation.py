"""Instance optimisation (``gvsl match --refine``): recovers known motion, stays consistent, stops."""

import dataclasses

import numpy as np
import pytest
import torch

from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.services.matching import match
from models import DEMO_WIDTHS, GVSL, PAPER_HEADS, RefineSchedule, local_ncc, refine_coordinates
from models.spatial import affine_points, voxel_grid, warp

SMALL = RefineSchedule(affine_levels=((16, 60), (32, 15)), deformable_levels=((16, 8, 30), (32, 8, 15)))
SHAPE = (32, 32, 32)


@pytest.fixture(scope="module")
def image():
    from gvsl_app.data.preprocess import normalise, resize_array

    vol, _ = make_cardiac_subject(3, SHAPE)
    return torch.from_numpy(resize_array(normalise(vol), SHAPE))[None, None]


def _shifted(image, shift):
    """``moving`` such that moving(p + shift) == image(p): the true map is p -> p + shift."""
    true = voxel_grid(SHAPE)[None] + torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1)
    inverse = voxel_grid(SHAPE)[None] - torch.tensor(shift, dtype=torch.float32).view(1, 3, 1, 1, 1)
    return warp(image, inverse, padding_mode="border"), true


def test_recovers_a_known_translation_from_the_identity(image):
    moving, true = _shifted(image, (2.0, -1.5, 1.0))
    start = voxel_grid(SHAPE)[None]
    coords, _ = refine_coordinates(moving, image, start, SMALL)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))
    err_before = (start - true)[inner].norm(dim=1).mean()
    err_after = (coords - true)[inner].norm(dim=1).mean()
    assert err_after < 0.35 * err_before, (float(err_before), float(err_after))
    ncc_before = -local_ncc(warp(moving, start), image)
    ncc_after = -local_ncc(warp(moving, coords), image)
    assert ncc_after > ncc_before + 0.1


def test_returned_affine_is_the_global_part_of_the_map(image):
    moving, _ = _shifted(image, (1.0, 0.0, -2.0))
    start = voxel_grid(SHAPE)[None] + 0.5  # a non-identity starting map
    coords, affine = refine_coordinates(
        moving, image, start, RefineSchedule(affine_levels=((32, 20),), deformable_levels=())
    )
    assert affine.shape == (1, 3, 4)
    assert not torch.allclose(affine, torch.eye(3, 4)[None])
    torch.testing.assert_close(affine_points(affine, start), coords, atol=1e-4, rtol=0)


def test_step_callback_reports_progress_and_stops_early(image):
    moving, _ = _shifted(image, (1.0, 1.0, 1.0))
    seen = []
    start = voxel_grid(SHAPE)[None]
    coords, _ = refine_coordinates(moving, image, start, SMALL, step=lambda f: seen.append(f) or len(seen) >= 5)
    assert len(seen) == 5 and seen == sorted(seen) and 0 < seen[0] < seen[-1] < 1
    assert coords.shape == start.shape and torch.isfinite(coords).all()


def test_batch_of_two_is_refused(image):
    with pytest.raises(ValueError, match="one pair"):
        refine_coordinates(
            image.repeat(2, 1, 1, 1, 1),
            image.repeat(2, 1, 1, 1, 1),
            voxel_grid(SHAPE)[None].repeat(2, 1, 1, 1, 1),
            SMALL,
        )


def test_match_refine_improves_dice_and_keeps_itk_outputs_consistent(tmp_path):
    import SimpleITK as sitk

    from gvsl_app.io.images import volume_to_sitk

    fixed, fl = make_cardiac_subject(1, (40, 40, 40))
    moving, ml = make_cardiac_subject(2, (40, 40, 40))
    identity = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)  # predicts ~the identity
    plain = match(fixed, moving, model=identity, size=32, device="cpu", moving_labels=ml, fixed_labels=fl, refine=False)
    stages = []
    refined = match(
        fixed,
        moving,
        model=identity,
        size=32,
        device="cpu",
        moving_labels=ml,
        fixed_labels=fl,
        schedule=SMALL,
        progress=lambda stage, frac: stages.append(stage),
    )
    r = refined.report
    assert r.mean_dice_after > plain.report.mean_dice_after + 0.1
    assert r.ncc_after > plain.report.ncc_after
    assert r.refined.steps == SMALL.total_steps and r.seconds["refine_s"] > 0
    assert "refine" in stages and r.folding_percent < 1.0
    out = refined.save(tmp_path / "o")
    field = sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    again = sitk.Resample(
        sitk.Cast(volume_to_sitk(moving), sitk.sitkFloat32),
        volume_to_sitk(fixed),
        sitk.DisplacementFieldTransform(field),
        sitk.sitkLinear,
        float(moving.array.min()),
    )
    np.testing.assert_allclose(sitk.GetArrayFromImage(again), refined.warped.array, atol=1e-2)
    # a stop request ends the refinement early and still returns a complete result
    calls = []
    stopped = match(
        fixed,
        moving,
        model=identity,
        size=32,
        device="cpu",
        schedule=SMALL,
        should_stop=lambda: calls.append(1) or len(calls) > 3,
    )
    assert len(calls) == 4 and stopped.displacement_mm.shape == (*fixed.shape, 3)
    assert stopped.report.refined.steps_done == 4 < SMALL.total_steps and stopped.report.refined.stopped


def test_folding_penalty_unfolds_a_folded_starting_map(image):
    from models.spatial import jacobian_determinant

    start = voxel_grid(SHAPE)[None].clone()
    z = torch.arange(32, dtype=torch.float32)
    bump = torch.exp(-((z - 16) ** 2) / 8.0)  # a narrow wave along x that folds the map
    start[:, 2] += 6.0 * bump.view(1, 1, 1, 32)  # x moves by a bump in x: dx/dx < 0 on one flank
    assert (jacobian_determinant(start) <= 0).float().mean() > 0.02
    fast = RefineSchedule(
        affine_levels=(), deformable_levels=((32, 32, 40),), deformable_lr=0.05, tolerance=0, smoothness_side=32
    )
    folded = []
    for weight in (0.0, 10.0):
        coords, _ = refine_coordinates(image, image, start, dataclasses.replace(fast, folding=weight))
        folded.append(float((jacobian_determinant(coords) <= 0).float().mean()))
    assert folded[1] < 0.5 * folded[0], folded


def test_whole_field_refinement_regularises_the_starting_displacement_too(image):
    # A starting map whose displacement is voxel-scale noise, which no coarse control grid can
    # represent: refined as a whole (the default), the noise is replaced by a smooth field
    # (here the identity, as moving == fixed); with only the correction regularised it stays.
    torch.manual_seed(0)
    identity = voxel_grid(SHAPE)[None]
    start = identity + torch.randn(1, 3, *SHAPE)
    eye = torch.eye(3, 4)[None]
    errors = {}
    for whole in (True, False):
        schedule = dataclasses.replace(SMALL, whole_field=whole)
        coords, _ = refine_coordinates(image, image, start, schedule, affine=eye)
        errors[whole] = float((coords - identity).norm(dim=1).mean())
    assert errors[True] < 0.3 * errors[False], errors
    assert errors[False] > 1.0  # the noise (mean norm ~1.6 voxels) is still there


def test_fine_smoothness_stiffens_the_fine_correction_without_pulling_back_the_coarse_field(image):
    # The starting map is already the true one, a smooth displacement of ~3 voxels (what the
    # coarse levels found). A stiff whole-field smoothness pulls it back towards the identity;
    # the same weight on the fine level's own correction (fine_smoothness) leaves it where it
    # is and only keeps that correction smooth.
    from models.losses import smoothness

    identity = voxel_grid(SHAPE)[None]
    z = torch.arange(32, dtype=torch.float32)
    wave = 3.0 * torch.sin(np.pi * z / 31)  # zero at the borders, 3 voxels in the middle
    true = identity.clone()
    true[:, 2] += wave.view(1, 1, 32, 1)  # x displaced as a function of y
    true[:, 0] += wave.view(1, 1, 1, 32)  # z displaced as a function of x
    fixed = warp(image, true, padding_mode="border")  # fixed(p) = image(true(p)): the map is `true`
    level = RefineSchedule(
        affine_levels=(),
        deformable_levels=((32, 16, 40),),
        smoothness_side=32,
        fine_side=16,
        tolerance=0,
        deformable_lr=0.005,
    )
    eye = torch.eye(3, 4)[None]
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    err, rough, maps = {}, {}, {}
    for name, schedule in {
        "free": dataclasses.replace(level, smoothness=0.0),
        "whole": dataclasses.replace(level, smoothness=2.0),
        "fine": dataclasses.replace(level, smoothness=0.0, fine_smoothness=2.0),
        "fine-off": dataclasses.replace(level, smoothness=0.0, fine_smoothness=2.0, fine_side=32),  # 32 not above
        "fine-whole": dataclasses.replace(level, smoothness=0.0, fine_smoothness=2.0, fine_residual=False),
    }.items():
        maps[name], _ = refine_coordinates(image, fixed, true, schedule, affine=eye)
        err[name] = float((maps[name] - true)[inner].norm(dim=1).mean())
        rough[name] = float(smoothness(maps[name] - true))
    # (seen: free 0.71, whole 1.19, fine 0.40 voxels; roughness free 0.094, fine 0.0015)
    assert err["whole"] > 0.8, err  # the stiff whole field gives up part of the true displacement
    assert err["fine"] < 0.5 * err["whole"], err  # the residual-only stiffness keeps it
    assert rough["fine"] < 0.2 * rough["free"], rough  # and damps the fine correction
    torch.testing.assert_close(maps["fine-off"], maps["free"])  # only levels above fine_side are stiffened
    torch.testing.assert_close(maps["fine-whole"], maps["whole"])  # fine_residual off: the whole field, as smoothness


def test_bending_keeps_a_large_smooth_deformation_that_smoothness_pulls_back(image):
    # The starting map is the true one: a stretch of up to 3 voxels (a linear ramp, what a
    # cardiac pair's coarse levels find). Squared first differences charge a ramp and pull it
    # back towards the identity; the bending energy charges only curvature, so the same weight
    # leaves it in place and still damps a rough correction.
    from models.losses import smoothness

    identity = voxel_grid(SHAPE)[None]
    ramp = torch.linspace(-3.0, 3.0, 32)
    true = identity.clone()
    true[:, 0] += ramp.view(1, 32, 1, 1)  # z stretched about the centre
    fixed = warp(image, true, padding_mode="border")
    level = RefineSchedule(
        affine_levels=(), deformable_levels=((32, 16, 40),), smoothness_side=32, tolerance=0, deformable_lr=0.005
    )
    eye = torch.eye(3, 4)[None]
    inner = (slice(None), slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    err, rough = {}, {}
    for name, schedule in {
        "free": dataclasses.replace(level, smoothness=0.0),
        "smooth": dataclasses.replace(level, smoothness=2.0),
        "bending": dataclasses.replace(level, smoothness=0.0, bending=2.0),
    }.items():
        out, _ = refine_coordinates(image, fixed, true, schedule, affine=eye)
        err[name] = float((out - true)[inner].norm(dim=1).mean())
        rough[name] = float(smoothness(out - true))
    # (seen: free 0.63, smooth 0.72, bending 0.13 voxels)
    assert err["smooth"] > 0.5, err  # the first-difference penalty gives up part of the stretch
    assert err["bending"] < 0.4 * err["smooth"], err  # the bending energy keeps it
    assert rough["bending"] < rough["free"], rough  # and the correction it adds is smoother


def test_mind_compares_a_seeded_sample_of_voxels_and_still_recovers_a_translation(image):
    from models.instance_optimisation import _grid_at, _resize

    field = torch.randn(1, 3, 8, 8, 8)
    points = torch.randint(SHAPE[0] ** 3, (300,))
    dense = _resize(field, SHAPE).reshape(1, 3, -1)[:, :, points]
    torch.testing.assert_close(_grid_at(field, points, SHAPE).reshape(1, 3, -1), dense, atol=1e-5, rtol=0)

    moving, true = _shifted(image, (2.0, -1.5, 1.0))
    start = voxel_grid(SHAPE)[None]
    sampled = dataclasses.replace(SMALL, points=3000)
    a, _ = refine_coordinates(moving, image, start, sampled, similarity="mind")
    b, _ = refine_coordinates(moving, image, start, sampled, similarity="mind")
    other, _ = refine_coordinates(moving, image, start, dataclasses.replace(sampled, seed=1), similarity="mind")
    assert torch.equal(a, b) and not torch.equal(a, other)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))
    err_before = (start - true)[inner].norm(dim=1).mean()
    assert (a - true)[inner].norm(dim=1).mean() < 0.35 * err_before
    # local NCC needs each voxel's window: it compares every voxel whatever the schedule says
    ncc, _ = refine_coordinates(moving, image, start, sampled)
    assert torch.equal(ncc, refine_coordinates(moving, image, start, SMALL)[0])


def test_a_sampled_level_decays_its_step_size_and_gives_it_back():
    from models.instance_optimisation import _Clock

    x = torch.zeros(3, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.5)
    seen = []

    def loss():
        seen.append(opt.param_groups[0]["lr"])
        return (x - 1.0).pow(2).sum()

    clock = _Clock(10.0, None, RefineSchedule(tolerance=0.0, sampled_lr_end=0.1), None)
    clock.minimise("affine", (2, 2, 2), opt, 10, loss, sampled=True)
    assert seen[0] == 0.5 and seen[-1] == pytest.approx(0.05) and seen == sorted(seen, reverse=True)
    assert opt.param_groups[0]["lr"] == 0.5  # the next level starts from the schedule's own step
    seen.clear()
    clock.minimise("affine", (2, 2, 2), opt, 5, loss)
    assert seen == [0.5] * 5
