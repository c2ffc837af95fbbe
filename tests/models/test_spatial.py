"""Spatial transformer: exact identity, translations and rotations on non-cubic grids."""

import math

import numpy as np
import torch

from models.spatial import (
    affine_from_parameters,
    identity_affine,
    jacobian_determinant,
    sampling_coordinates,
    warp,
)


def blob(shape, centre, sigma=2.0):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return torch.from_numpy(np.exp(-r2 / (2 * sigma**2))).float()[None, None]


def centroid(img):
    a = img[0, 0].numpy()
    grids = np.meshgrid(*[np.arange(n) for n in a.shape], indexing="ij")
    return np.array([(g * a).sum() / a.sum() for g in grids])


def test_zero_displacement_and_identity_affine_are_exact():
    torch.manual_seed(0)
    img = torch.rand(2, 1, 13, 17, 11)
    coords = sampling_coordinates((13, 17, 11), affine=identity_affine(2), displacement=torch.zeros(2, 3, 13, 17, 11))
    assert torch.allclose(warp(img, coords), img, atol=1e-6)
    coords = sampling_coordinates((13, 17, 11), displacement=torch.zeros(2, 3, 13, 17, 11))
    assert torch.allclose(warp(img, coords), img, atol=1e-6)
    assert torch.allclose(warp(img, sampling_coordinates((13, 17, 11), affine=identity_affine(2))), img, atol=1e-6)


def test_translation_moves_a_blob_by_that_many_voxels_on_a_non_cubic_grid():
    shape = (20, 32, 26)
    img = blob(shape, (10, 16, 13))
    aff = identity_affine(1)
    aff[0, :, 3] = torch.tensor([-3.0, 5.0, -2.0])  # sample at p + t: content moves by -t
    out = warp(img, sampling_coordinates(tuple(img.shape[2:]), affine=aff))
    np.testing.assert_allclose(centroid(out) - centroid(img), [3.0, -5.0, 2.0], atol=0.05)


def test_rotation_by_90_degrees_matches_rot90_on_a_non_cubic_volume():
    torch.manual_seed(0)
    shape = (12, 20, 20)  # rotation in the (y, x) plane, z differs
    img = torch.rand(1, 1, *shape)
    aff = affine_from_parameters(
        torch.tensor([[math.pi / 2, 0.0, 0.0]]), torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 6), shape
    )
    out = warp(img, sampling_coordinates(tuple(img.shape[2:]), affine=aff))[0, 0].numpy()
    ref = img[0, 0].numpy()
    candidates = [np.rot90(ref, k, axes=(1, 2)) for k in (1, 3)]
    errs = [np.abs(out - c).max() for c in candidates]
    assert min(errs) < 1e-4, errs


def test_rotation_stays_rigid_on_anisotropic_spacing():
    shape = (16, 32, 32)
    spacing = (2.0, 1.0, 1.0)  # (z, y, x) mm
    aff = affine_from_parameters(
        torch.tensor([[0.0, 0.3, 0.0]]), torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 6), shape, spacing=spacing
    )
    d = torch.diag(torch.tensor(spacing))
    lin_mm = d @ aff[0, :, :3] @ torch.linalg.inv(d)
    assert torch.allclose(lin_mm @ lin_mm.T, torch.eye(3), atol=1e-5)


def test_composed_map_is_a_single_resampling():
    torch.manual_seed(0)
    shape = (16, 18, 20)
    img = torch.rand(1, 1, *shape)
    u = torch.zeros(1, 3, *shape)
    u[:, 2] = 1.0  # one voxel along x
    aff = identity_affine(1)
    aff[0, 1, 3] = 1.0  # one voxel along y
    once = warp(img, sampling_coordinates(shape, affine=aff, displacement=u))
    # integer shifts: a single resampling is an exact shift of the voxels
    assert torch.allclose(once[0, 0, :, :-1, :-1], img[0, 0, :, 1:, 1:], atol=1e-5)


def test_jacobian_of_identity_is_one_and_folding_is_negative():
    shape = (10, 12, 14)
    coords = sampling_coordinates(shape, affine=identity_affine(1))
    assert torch.allclose(jacobian_determinant(coords), torch.ones(1, 1, *shape), atol=1e-5)
    flipped = coords.clone()
    flipped[:, 2] = -flipped[:, 2]
    assert (jacobian_determinant(flipped) < 0).all()


def test_composing_two_affine_maps_equals_the_map_of_the_composed_affine():
    from models.spatial import compose_affines, compose_coordinates

    shape = (10, 12, 14)
    a, b = identity_affine(1), identity_affine(1)
    a[0, :, 3] = torch.tensor([1.0, -2.0, 0.5])
    b[0, :3, :3] = torch.tensor([[1.0, 0.1, 0.0], [0.0, 0.95, 0.0], [0.05, 0.0, 1.02]])
    ab = compose_affines(a, b)
    p = torch.tensor([3.0, 4.0, 5.0, 1.0])
    np.testing.assert_allclose(ab[0] @ p, a[0] @ torch.cat([b[0] @ p, torch.ones(1)]), atol=1e-6)
    maps = compose_coordinates(sampling_coordinates(shape, affine=a), sampling_coordinates(shape, affine=b))
    inside = (slice(None), slice(None), slice(2, -2), slice(2, -2), slice(2, -2))  # border values outside
    np.testing.assert_allclose(maps[inside], sampling_coordinates(shape, affine=ab)[inside], atol=1e-4)
    assert torch.equal(compose_affines(identity_affine(1), b), b)


def test_maps_and_affines_stay_fp32_exact_inside_a_bf16_autocast_pass():
    """GPU training and matching run the network in bf16; the geometry must not be rounded
    with it (bf16 steps are 0.5 voxel near coordinate 100).
    """
    import math

    from models import DEMO_WIDTHS, GVSL
    from models.spatial import affine_from_parameters, sampling_coordinates

    shape = (128, 96, 64)
    args = (torch.tensor([[0.02, -0.03, math.radians(5)]]), torch.tensor([[1.3, -2.1, 0.7]]))
    args += (torch.tensor([[1.05, 0.97, 1.0]]), torch.zeros(1, 6))
    exact = sampling_coordinates(shape, affine=affine_from_parameters(*args, shape), batch=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = sampling_coordinates(shape, affine=affine_from_parameters(*args, shape), batch=1)
        out = GVSL(widths=DEMO_WIDTHS).eval()(torch.rand(1, 1, 32, 32, 32), torch.rand(1, 1, 32, 32, 32))
    assert inside.dtype == torch.float32 and (inside - exact).abs().max() < 1e-4
    assert out.affine.dtype == torch.float32
