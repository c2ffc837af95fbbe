"""The match at full resolution: the map and warp computed in slabs, and large scans analysed
on a coarser grid over the same field of view.
"""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from gvsl_app.data.synthetic import make_cardiac_subject
from gvsl_app.io.images import volume_to_sitk
from gvsl_app.io.volume import Volume
from gvsl_app.services import match_geometry, match_grid
from gvsl_app.services.match_geometry import map_on_fixed_grid, upsampled_slab, warp_volume
from gvsl_app.services.match_grid import analysis_grid, analysis_volume
from gvsl_app.services.match_map import NetworkMap
from gvsl_app.services.matching import match
from models import DEMO_WIDTHS, GVSL, PAPER_HEADS, RefineSchedule
from models.spatial import jacobian_determinant, voxel_grid

ROT = (0.9848, -0.1736, 0.0, 0.1736, 0.9848, 0.0, 0.0, 0.0, 1.0)


def _smooth_field(shape, amplitude, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, 4, 4, 4, generator=g) * amplitude
    return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)[0]


def test_slab_upsampling_equals_the_whole_trilinear_resize():
    disp = _smooth_field((7, 9, 5), 2.0, 0)
    whole = F.interpolate(disp[None], size=(37, 20, 23), mode="trilinear", align_corners=True)[0]
    parts = torch.cat([upsampled_slab(disp, (37, 20, 23), z0, min(37, z0 + 10)) for z0 in range(0, 37, 10)], dim=1)
    torch.testing.assert_close(parts, whole, atol=1e-5, rtol=1e-5)


def test_map_on_the_fixed_grid_in_slabs_is_the_whole_map_composed_with_the_initial_alignment(monkeypatch):
    fixed = Volume(np.zeros((37, 21, 26), np.float32), (1.1, 0.9, 2.0), (-10.0, 5.0, 3.0), ROT)
    grid = (12, 10, 11)
    coords = voxel_grid(grid)[None] + _smooth_field(grid, 0.8, 1)[None]
    net = NetworkMap(coords, torch.eye(3, 4)[None], 0.0, 0.0, 0.0, 0.0)
    init = np.eye(4)
    init[:3, :3] = np.array([[0.98, -0.17, 0.05], [0.17, 0.98, 0.0], [-0.05, 0.0, 1.02]])
    init[:3, 3] = (4.0, -7.0, 2.5)
    monkeypatch.setattr(match_geometry, "SLAB", 5)  # 8 slabs, the last of 2 slices
    disp_mm, jac, _ = map_on_fixed_grid(net, fixed, init)
    # the same map computed on the whole grid at once
    scale = torch.tensor([(n - 1) / (s - 1) for n, s in zip(fixed.shape, grid)]).view(3, 1, 1, 1)
    d_vox = F.interpolate(coords - voxel_grid(grid)[None], size=fixed.shape, mode="trilinear", align_corners=True)[0]
    d_vox = d_vox * scale
    m = fixed.index_to_physical_matrix()
    zyx = voxel_grid(fixed.shape).double().permute(1, 2, 3, 0).numpy()
    points = zyx @ m[:3, :3].T + m[:3, 3]
    inner = points + d_vox.double().permute(1, 2, 3, 0).numpy() @ m[:3, :3].T  # x + d(x), in mm
    expect = inner @ init[:3, :3].T + init[:3, 3] - points
    np.testing.assert_allclose(disp_mm, expect, atol=2e-4)
    whole_map = voxel_grid(fixed.shape)[None] + d_vox[None]
    whole_jac = jacobian_determinant(whole_map)[0, 0].numpy() * np.linalg.det(init[:3, :3])
    np.testing.assert_allclose(jac, whole_jac, atol=1e-5)


@pytest.fixture(scope="module")
def oblique_pair():
    """A moving scan on an oblique, anisotropic grid and a fixed grid it only partly covers."""
    fixed, _ = make_cardiac_subject(21, (30, 34, 28), spacing=(1.3, 1.1, 1.6))
    moving, labels = make_cardiac_subject(22, (26, 32, 30), spacing=(1.2, 1.4, 1.5))
    moving = Volume(moving.array.astype(np.int16), moving.spacing, (-4.0, 6.0, -3.0), ROT, source="moving")
    labels = Volume(labels.array, moving.spacing, moving.origin, ROT, source="labels")
    disp = _smooth_field(fixed.shape, 3.0, 2).permute(1, 2, 3, 0).numpy().astype(np.float32)
    return fixed, moving, labels, disp


def _sitk_resample(volume, fixed, disp, interpolator, fill):
    field = sitk.GetImageFromArray(disp.astype(np.float64), isVector=True)
    field.CopyInformation(volume_to_sitk(fixed))
    image = volume_to_sitk(volume)
    if interpolator == sitk.sitkLinear:
        image = sitk.Cast(image, sitk.sitkFloat32)
    out = sitk.Resample(image, volume_to_sitk(fixed), sitk.DisplacementFieldTransform(field), interpolator, fill)
    return sitk.GetArrayFromImage(out)


def test_the_slab_warp_is_simpleitks_resampling_through_the_exported_field(oblique_pair, monkeypatch):
    fixed, moving, labels, disp = oblique_pair
    monkeypatch.setattr(match_geometry, "SLAB", 7)
    fill = float(moving.array.min())
    ours = warp_volume(moving, fixed, disp)
    ref = _sitk_resample(moving, fixed, disp, sitk.sitkLinear, fill)
    outside = ref == fill
    assert 0.02 < outside.mean() < 0.9  # part of the fixed grid lies outside the moving scan
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-3 * float(np.ptp(moving.array)))
    ours_l = warp_volume(labels, fixed, disp, is_label=True)
    ref_l = _sitk_resample(labels, fixed, disp, sitk.sitkNearestNeighbor, 0)
    assert ours_l.dtype == labels.array.dtype and len(np.unique(ref_l)) > 3
    assert (ours_l != ref_l).mean() < 1e-4  # equal but for rounding ties at exactly half a voxel


def test_a_large_scan_is_analysed_on_a_coarser_grid_over_the_same_field_of_view():
    shape, spacing = analysis_grid((300, 512, 512), (0.7, 0.7, 1.25))
    assert shape == (150, 256, 256)  # the proportions the refinement's levels follow
    np.testing.assert_allclose(spacing, (0.7 * 511 / 255, 0.7 * 511 / 255, 1.25 * 299 / 149))
    assert analysis_grid((161, 193, 157), (1.0, 1.0, 1.0)) == ((161, 193, 157), (1.0, 1.0, 1.0))
    image, _ = make_cardiac_subject(23, (40, 44, 36), spacing=(1.0, 0.8, 1.2))
    image = Volume(image.array, image.spacing, (3.0, -2.0, 5.0), ROT, source="big")
    small = analysis_volume(image, side=22)
    assert small.shape == (20, 22, 18) and small.meta["analysis_grid_of"] == [40, 44, 36]
    first, last = (image.index_to_physical_matrix() @ np.array([*p, 1.0]) for p in ((0, 0, 0), (39, 43, 35)))
    m = small.index_to_physical_matrix()
    np.testing.assert_allclose(m @ np.array([0, 0, 0, 1.0]), first, atol=1e-9)
    np.testing.assert_allclose(m @ np.array([19, 21, 17, 1.0]), last, atol=1e-9)
    # block-averaged, not decimated: the coarse scan is as smooth as the fine one's blocks
    assert abs(float(small.array.mean()) - float(image.array.mean())) < 0.05 * float(np.ptp(image.array))
    assert analysis_volume(image) is image  # nothing above the default side: the scan itself


def test_a_pair_larger_than_the_analysis_side_matches_as_well_on_the_coarser_grid(monkeypatch):
    fixed, fl = make_cardiac_subject(31, (44, 44, 44))
    moving, ml = make_cardiac_subject(32, (44, 44, 44))
    torch.manual_seed(0)
    model = GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS)
    model.working_size = 24
    short = RefineSchedule(affine_levels=((24, 30),), deformable_levels=((24, 8, 20),))
    kw = dict(model=model, moving_labels=ml, fixed_labels=fl, init="none", schedule=short)
    full = match(fixed, moving, **kw)
    monkeypatch.setattr(match_grid, "ANALYSIS_SIDE", 30)
    coarse = match(fixed, moving, **kw)
    assert coarse.warped.shape == fixed.shape == coarse.jacobian.shape
    assert coarse.displacement_mm.shape == (*fixed.shape, 3)
    before, a, b = full.report.mean_dice_before, full.report.mean_dice_after, coarse.report.mean_dice_after
    assert b > before + 0.05  # it did match
    assert abs(a - b) < 0.02, (a, b)
    # where the moving scan has data is its own field of view, not the coarser grid's (whose
    # voxels reach further out): here 10 % of the fixed grid lies outside it
    assert full.report.moving_data_share < 0.95
    assert coarse.report.moving_data_share == pytest.approx(full.report.moving_data_share, abs=0.05)
