"""Pairwise matching service: outputs on the fixed grid, ITK interoperability, bad input."""

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from gvsl_app.io.images import volume_to_sitk
from gvsl_app.io.volume import Volume
from gvsl_app.services.matching import FALLBACK_TOLERANCE, match
from models import DEMO_WIDTHS, GVSL, PAPER_HEADS, RefineSchedule, local_ncc
from models.checkpoint import CheckpointError
from models.similarity import Similarity


def phantom(shape, centre, spacing, origin, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), seed=0):
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum(((gi - c) / (n / 4)) ** 2 for gi, c, n in zip(g, centre, shape))
    img = np.where(r2 < 1, 300.0, -800.0) + np.where(r2 < 0.3, 200.0, 0) + rng.normal(0, 5, shape)
    lab = (r2 < 1).astype(np.uint8) + (r2 < 0.3).astype(np.uint8)
    v = Volume(img.astype(np.float32), spacing, origin, direction, source=f"phantom{seed}")
    return v, v.with_array(lab, source=f"phantom{seed}-labels")


def _dice(a, b):
    """Dice of two boolean masks, counted by hand (1.0 when both are empty, as the reports)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


@pytest.fixture(scope="module")
def perturbed_weights(tmp_path_factory):
    """A width-8 GVSL whose heads predict a clearly non-identity map."""
    torch.manual_seed(0)
    m = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)
    with torch.no_grad():
        for lin in (m.affine_head.rotation, m.affine_head.translation, m.affine_head.scaling):
            lin.bias.copy_(torch.tensor([0.3, -0.2, 0.25]))
        m.deformable_head.flow.weight.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("w") / "gvsl_test.pt"
    torch.save({"format": "gvsl-studio", "kind": "pretrain", "model_config": m.config(), "model": m.state_dict()}, path)
    return path


@pytest.fixture()
def pair(tmp_path):
    rot = np.array([[0.9848, -0.1736, 0], [0.1736, 0.9848, 0], [0, 0, 1]]).flatten()
    fixed, fl = phantom((30, 40, 36), (15, 20, 18), (1.0, 1.2, 2.0), (-20.0, -25.0, -30.0), seed=1)
    moving, ml = phantom((34, 36, 40), (16, 17, 21), (1.1, 1.0, 1.8), (-22.0, -20.0, -28.0), rot, seed=2)
    return fixed, moving, fl, ml


def test_outputs_live_on_the_fixed_grid_and_itk_resample_reproduces_warped(pair, perturbed_weights, tmp_path):
    fixed, moving, fl, ml = pair
    res = match(
        fixed,
        moving,
        weights=perturbed_weights,
        size=32,
        device="cpu",
        moving_labels=ml,
        fixed_labels=fl,
        fallback=False,
        refine=False,
    )
    out = res.save(tmp_path / "out")
    for name in (
        "warped.nii.gz",
        "warped_labels.nii.gz",
        "displacement.nii.gz",
        "affine.tfm",
        "jacobian.nii.gz",
        "report.json",
    ):
        assert (out / name).is_file(), name
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    field = sitk.ReadImage(str(out / "displacement.nii.gz"), sitk.sitkVectorFloat64)
    assert warped.GetSize() == tuple(reversed(fixed.shape)) == field.GetSize()
    np.testing.assert_allclose(field.GetSpacing(), fixed.spacing)
    np.testing.assert_allclose(field.GetOrigin(), fixed.origin)
    assert np.abs(sitk.GetArrayFromImage(field)).max() > 1.0  # a real, non-identity map (mm)
    # the moving image exactly as the engine saw it (a NIfTI round trip would round its
    # rotated direction to the format's float32 quaternion)
    mov_img = sitk.Cast(volume_to_sitk(moving), sitk.sitkFloat32)
    ref = sitk.Resample(
        mov_img, warped, sitk.DisplacementFieldTransform(field), sitk.sitkLinear, float(moving.array.min())
    )
    np.testing.assert_allclose(sitk.GetArrayFromImage(ref), sitk.GetArrayFromImage(warped), atol=1e-2)
    report = json.loads((out / "report.json").read_text())
    assert report == json.loads(json.dumps(res.report.to_json()))  # the file holds the result's report
    assert report["device"] == "cpu" and report["working_size"] == 32
    assert report["ncc_after"] == report["ncc_network"] != report["ncc_before"]  # no refinement, no fallback
    seconds = {k: v for k, v in report["seconds"].items() if k != "total_s"}
    assert report["seconds"]["total_s"] == pytest.approx(sum(seconds.values()), abs=1e-3)
    # Dice and folding recounted from the files written and the input labels
    warped_labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warped_labels.nii.gz")))
    assert set(np.unique(warped_labels)) <= {0, 1, 2}
    unwarped = sitk.GetArrayFromImage(  # moving labels overlaid on the fixed grid, no transform
        sitk.Resample(volume_to_sitk(ml), volume_to_sitk(fl), sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    )
    ref = fl.array
    for k in (1, 2):
        assert report["dice_after"][str(k)] == pytest.approx(_dice(warped_labels == k, ref == k), abs=1e-6), k
        assert report["dice_before"][str(k)] == pytest.approx(_dice(unwarped == k, ref == k), abs=1e-6), k
    after = [_dice(warped_labels == k, ref == k) for k in (1, 2)]
    assert report["mean_dice_after"] == pytest.approx(np.mean(after))
    jac = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "jacobian.nii.gz")))
    assert report["folding_percent"] == pytest.approx(100.0 * (jac <= 0).mean(), abs=1e-9)
    assert report["jacobian_min"] == pytest.approx(float(jac.min()), rel=1e-6)


def test_displacement_image_is_built_once_but_every_caller_gets_its_own(pair, perturbed_weights, monkeypatch, tmp_path):
    fixed, moving, _, _ = pair
    res = match(
        fixed, moving, weights=perturbed_weights, size=32, device="cpu", fallback=False, refine=False, init="none"
    )
    built = []
    real = sitk.GetImageFromArray
    monkeypatch.setattr(
        sitk, "GetImageFromArray", lambda *a, **k: (built.append(1) if k.get("isVector") else None) or real(*a, **k)
    )
    res.save(tmp_path / "out")
    assert built == []  # neither the warp nor save() needed an ITK copy of the field
    first = res.displacement_image()
    assert len(built) == 1 and first.GetPixelID() == sitk.sitkVectorFloat64
    sitk.DisplacementFieldTransform(first)  # takes the image's buffer and leaves it empty
    assert first.GetNumberOfPixels() == 0
    again = res.displacement_image()
    assert again.GetSize() == tuple(reversed(fixed.shape))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(again), res.displacement_mm)
    assert len(built) == 1
    res.displacement_mm = res.displacement_mm * 0.5  # a new array: the image follows it
    np.testing.assert_allclose(sitk.GetArrayFromImage(res.displacement_image()), res.displacement_mm)


def test_affine_tfm_is_the_global_part_in_physical_space(pair, perturbed_weights, tmp_path):
    fixed, moving, _, _ = pair
    model_path = perturbed_weights
    res = match(fixed, moving, weights=model_path, size=32, device="cpu", fallback=False, refine=False, init="none")
    res.save(tmp_path / "o")
    tfm = sitk.ReadTransform(str(tmp_path / "o" / "affine.tfm"))
    # an affine-only model: the total displacement equals the affine part
    m = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)
    ck = torch.load(model_path, weights_only=True)
    m.load_state_dict(ck["model"])
    with torch.no_grad():
        m.deformable_head.flow.weight.zero_()
    res2 = match(fixed, moving, model=m, size=32, device="cpu", fallback=False, refine=False, init="none")
    mat = res2.affine_physical
    idx = fixed.index_to_physical_matrix()
    for voxel in [(3, 4, 5), (20, 30, 10), (15, 20, 18)]:
        x = idx @ np.array([*voxel, 1.0])
        expect = (mat @ x)[:3] - x[:3]
        np.testing.assert_allclose(res2.displacement_mm[voxel], expect, atol=0.05)
    np.testing.assert_allclose(np.array(tfm.TransformPoint((0.0, 0.0, 0.0))), res.affine_physical[:3, 3], atol=1e-4)


def test_identity_network_warps_nothing(pair, tmp_path):
    fixed, _, fl, _ = pair
    m = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)
    res = match(
        fixed, fixed, model=m, size=32, device="cpu", moving_labels=fl, fixed_labels=fl, refine=False, init="none"
    )
    assert np.abs(res.displacement_mm).max() < 0.05
    assert res.report.mean_dice_after > 0.99
    assert res.report.folding_percent == 0.0


def test_a_map_that_lowers_the_similarity_falls_back_to_the_identity(pair, perturbed_weights):
    fixed, moving, fl, ml = pair
    kept = match(
        fixed, moving, weights=perturbed_weights, size=32, device="cpu", fallback=False, refine=False, init="none"
    )
    assert kept.report.ncc_after < kept.report.ncc_before  # this network makes the pair less alike
    assert kept.report.fallback == []
    res = match(
        fixed,
        moving,
        weights=perturbed_weights,
        size=32,
        device="cpu",
        moving_labels=ml,
        fixed_labels=fl,
        refine=False,
        init="none",
    )
    assert len(res.report.fallback) == 1 and "used the identity" in res.report.fallback[0]
    assert res.report.ncc_after == res.report.ncc_before
    assert res.report.ncc_network == pytest.approx(kept.report.ncc_after)
    assert np.abs(res.displacement_mm).max() < 1e-4
    np.testing.assert_allclose(res.affine_physical, np.eye(4), atol=1e-6)
    assert res.report.mean_dice_after == pytest.approx(res.report.mean_dice_before, abs=1e-6)


@pytest.mark.parametrize("drop, falls_back", [(0.2 * FALLBACK_TOLERANCE, False), (5 * FALLBACK_TOLERANCE, True)])
def test_only_a_map_lowering_the_similarity_beyond_interpolation_noise_falls_back(pair, monkeypatch, drop, falls_back):
    import gvsl_app.services.matching as service

    fixed, moving, _, _ = pair
    real = service.network_map

    def network_map(*args, **kwargs):  # the real map, its similarity then lowered by ``drop``
        out, dev = real(*args, **kwargs)
        return dataclasses.replace(out, score_after=out.score_before - drop, ncc_after=out.ncc_before - drop), dev

    monkeypatch.setattr(service, "network_map", network_map)
    torch.manual_seed(0)
    m = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)  # starts at the identity map (to ~1e-5)
    res = match(fixed, moving, model=m, size=32, device="cpu", refine=False, init="none")
    assert (len(res.report.fallback) == 1) is falls_back


def test_scans_of_a_modality_the_weights_never_saw_are_warned_about(pair):
    fixed, moving, _, _ = pair
    m = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)
    m.trained_modalities = frozenset({"ct"})
    mr = moving.with_array(moving.array - moving.array.min(), source="moving-mr.nii.gz")  # no air below -500
    res = match(fixed, mr, model=m, size=32, device="cpu", refine=False, init="none")
    assert len(res.report.warnings) == 1
    assert "moving-mr.nii.gz" in res.report.warnings[0] and "looks like MR" in res.report.warnings[0]
    assert match(fixed, moving, model=m, size=32, device="cpu", refine=False, init="none").report.warnings == []
    fixed_mr = fixed.with_array(fixed.array - fixed.array.min(), source="fixed-mr.nii.gz")
    both = match(fixed_mr, mr, model=m, size=32, device="cpu", refine=False, init="none").report.warnings
    assert len(both) == 1 and "fixed-mr.nii.gz and the moving scan moving-mr.nii.gz look like MR" in both[0]


@pytest.mark.parametrize("size", [0, 8, -4])
def test_working_size_too_small_for_the_network_is_refused(pair, size):
    fixed, moving, _, _ = pair
    with pytest.raises(ValueError, match=rf"--size must be >= 16 \(the network pools four times\), got {size}"):
        match(fixed, moving, model=GVSL(widths=DEMO_WIDTHS), size=size, device="cpu", refine=False, init="none")


def test_a_moving_scan_covering_part_of_the_fixed_one_is_warned_about(pair):
    from gvsl_app.data.perturb import slab

    fixed, moving, _, _ = pair
    m = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)
    whole = match(fixed, moving, model=m, size=32, device="cpu", refine=False)
    assert not any("covers only" in w for w in whole.report.warnings)
    part = slab(moving, 0, 0.0, 0.3).with_array(slab(moving, 0, 0.0, 0.3).array, source="slab.nii.gz")
    res = match(fixed, part, model=m, size=32, device="cpu", refine=False)
    (warning,) = [w for w in res.report.warnings if "covers only" in w]
    assert "slab.nii.gz" in warning and f"{100 * res.report.quality.coverage:.0f} %" in warning
    assert res.report.quality.coverage < 0.5 <= whole.report.quality.coverage


def test_nan_and_infinite_voxels_are_background_with_a_note(pair):
    fixed, moving, _, _ = pair
    arr = moving.array.copy()
    arr[:3] = np.nan
    arr[-2:, :4] = np.inf
    holey = moving.with_array(arr, source="holey.nii.gz")
    res = match(
        fixed, holey, model=GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS), size=32, device="cpu", refine=False, init="none"
    )
    (note,) = [w for w in res.report.warnings if "NaN/infinite" in w]
    assert "holey.nii.gz" in note and f"{int((~np.isfinite(arr)).sum())} NaN/infinite voxel(s)" in note
    assert np.isfinite(res.warped.array).all() and res.warped.array.max() <= np.nanmax(arr[np.isfinite(arr)]) + 1e-3


@pytest.mark.parametrize("which", ["fixed", "moving"])
def test_a_scan_with_one_value_everywhere_gets_the_identity_and_says_why(pair, perturbed_weights, which):
    fixed, moving, fl, ml = pair
    flat = {"fixed": fixed, "moving": moving}[which]
    flat = flat.with_array(np.full(flat.shape, -1000.0, np.float32), source="air.nii.gz")
    f, m = (flat, moving) if which == "fixed" else (fixed, flat)
    # this network's map folds and moves the pair; against a flat scan no NCC can say so
    res = match(f, m, weights=perturbed_weights, size=32, device="cpu", refine=True)
    (note,) = [w for w in res.report.warnings if "one value everywhere" in w]
    assert which in note and "air.nii.gz" in note and "-1000" in note
    assert np.abs(res.displacement_mm).max() < 1e-4 and res.report.folding_percent == 0.0
    np.testing.assert_allclose(res.affine_physical, np.eye(4), atol=1e-6)
    assert res.report.refined is None  # no refinement asked of a pair it cannot judge


def test_volumes_too_small_to_match_are_refused(pair):
    fixed, _, _, _ = pair
    tiny = Volume(np.zeros((2, 2, 2), np.float32), (1.0, 1.0, 1.0), fixed.origin, source="tiny.nii.gz")
    with pytest.raises(ValueError, match="tiny.nii.gz has shape \\(2, 2, 2\\); matching needs at least 4"):
        match(fixed, tiny, model=GVSL(widths=DEMO_WIDTHS), size=32, device="cpu", refine=False, init="none")


def test_empty_overlap_is_refused_only_when_the_files_frames_are_asked_for(pair):
    fixed, moving, fl, ml = pair
    far = Volume(moving.array, moving.spacing, (1000.0, 1000.0, 1000.0), moving.direction, source="far.nii.gz")
    with pytest.raises(ValueError, match="overlap"):
        match(fixed, far, model=GVSL(widths=DEMO_WIDTHS), size=32, device="cpu", refine=False, init="none")


def test_a_pair_in_unrelated_frames_is_aligned_as_well_as_in_one_frame(pair):
    """Another export of the moving scan (its origin moved 1 m) matches exactly as the original."""
    from gvsl_app.data.perturb import moved_frame

    fixed, moving, fl, ml = pair
    model = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)
    shift = (150.0, -90.0, 300.0)
    far, far_labels = moved_frame(moving, shift), moved_frame(ml, shift)
    near = match(fixed, moving, model=model, size=32, moving_labels=ml, fixed_labels=fl, refine=False)
    res = match(fixed, far, model=model, size=32, moving_labels=far_labels, fixed_labels=fl, refine=False)
    assert res.report.physical_overlap == 0.0 and res.report.mean_dice_before == 0.0
    assert res.report.init["chosen"] != "none"
    assert res.report.mean_dice_after == pytest.approx(near.report.mean_dice_after, abs=0.02)
    assert res.report.mean_dice_after > 0.8
    np.testing.assert_allclose(
        res.report.init["translation_mm"], np.add(near.report.init["translation_mm"], shift), atol=1.5
    )


def test_labels_on_another_grid_are_refused(pair):
    fixed, moving, fl, _ = pair
    with pytest.raises(ValueError, match="labels"):
        match(
            fixed,
            moving,
            model=GVSL(widths=DEMO_WIDTHS),
            size=32,
            device="cpu",
            moving_labels=fl,
            refine=False,
            init="none",
        )


def test_checkpoint_of_another_width_is_refused_clearly(pair, tmp_path):
    fixed, moving, _, _ = pair
    m = GVSL(widths=(4, 8, 16, 32, 64, 32, 16, 8, 4))
    sd = {k: v for k, v in m.state_dict().items()}
    sd["unet.inc.double_conv.0.weight"] = torch.zeros(8, 1, 3, 3, 3)  # inconsistent file
    p = tmp_path / "bad.pt"
    torch.save(sd, p)
    with pytest.raises(CheckpointError, match="widths"):
        match(fixed, moving, weights=p, size=32, device="cpu", refine=False, init="none")


def test_more_network_passes_compose_into_one_map(tmp_path):
    """passes=2 = the network applied to its own result, composed: the same as warping with the
    first map, predicting again and sampling the first map's displacement at the second map.
    """
    import torch

    from gvsl_app.data.preprocess import normalise, resample_to
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.services import match_network as N
    from gvsl_app.services import matching as M
    from models.spatial import voxel_grid, warp

    torch.manual_seed(3)
    model = GVSL(widths=DEMO_WIDTHS).eval()
    with torch.no_grad():  # a network that predicts a visible map: larger last-layer weights
        for head in model.deformable_head.heads:
            head.flow.weight.normal_(0.0, 0.05)
    fixed, _ = make_cardiac_subject(5, (32, 32, 32))
    moving, _ = make_cardiac_subject(6, (32, 32, 32))
    one = M.match(
        fixed, moving, model=model, size=32, device="cpu", fallback=False, passes=1, refine=False, init="none"
    )
    two = M.match(
        fixed, moving, model=model, size=32, device="cpu", fallback=False, passes=2, refine=False, init="none"
    )
    assert two.report.network_passes == 2 and one.report.network_passes == 1
    assert not np.allclose(one.displacement_mm, two.displacement_mm)
    f_w = N.working_cube(normalise(fixed), (32, 32, 32))
    m_w = N.working_cube(normalise(resample_to(moving, fixed)), (32, 32, 32))
    first, _, _ = N.run_network(model, m_w, f_w, torch.device("cpu"))
    again, _, _ = N.run_network(model, warp(m_w, first), f_w, torch.device("cpu"))
    grid = voxel_grid((32, 32, 32)).unsqueeze(0)
    composed = again + warp(first - grid, again, padding_mode="border")
    by_hand = warp(m_w, composed)
    out, _ = N.network_map(model, (f_w, m_w), torch.device("cpu"), 2, Similarity("ncc"))
    assert torch.allclose(out.coordinates, composed, atol=1e-5)
    assert out.ncc_after == pytest.approx(float(-local_ncc(by_hand, f_w)), abs=1e-6)
    with pytest.raises(ValueError, match="--passes must be >= 1"):
        M.match(fixed, moving, model=model, size=32, device="cpu", passes=0, refine=False, init="none")


def test_a_refinement_preset_is_named_in_the_report_and_an_unknown_one_refused_before_any_work(pair):
    fixed, moving, _, _ = pair
    with pytest.raises(ValueError, match=r"--refine-preset must be one of auto, standard, brain, got 'lung'"):
        match(fixed, moving, weights="/nonexistent/weights.pt", refine_preset="lung")  # before loading weights
    model = GVSL(widths=DEMO_WIDTHS)
    r = match(fixed, moving, model=model, size=32, refine_preset="brain").report.refined
    assert r.preset == "brain" and r.schedule["bending"] == 0.2 and r.levels[-1]["stage"] == "deformable"
    own = match(fixed, moving, model=model, size=32, schedule=RefineSchedule(deformable_levels=((24, 8, 5),)))
    assert own.report.refined.preset is None  # a schedule of one's own has no name
    assert match(fixed, moving, model=model, size=32, refine=False, refine_preset="brain").report.refined is None
