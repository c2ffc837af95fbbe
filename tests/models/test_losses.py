"""Losses: local NCC, smoothness, MSE."""

import pytest
import torch
import torch.nn.functional as F

from models import local_ncc, multiscale_ncc, restoration_mse, smoothness
from models.losses import bending_energy
from models.spatial import voxel_grid, warp


def test_ncc_of_an_image_with_itself_is_the_minimum():
    torch.manual_seed(0)
    a = torch.rand(1, 1, 24, 24, 24)
    b = torch.rand(1, 1, 24, 24, 24)
    self_loss = local_ncc(a, a)
    assert self_loss < -0.99
    assert local_ncc(a, b) > self_loss + 0.5
    assert local_ncc(a, 0.5 * a + 0.2) < -0.99  # invariant to linear intensity change


def test_ncc_is_finite_on_constant_images_and_small_sizes():
    c = torch.full((1, 1, 5, 6, 7), 0.3)
    loss = local_ncc(c, c)
    assert torch.isfinite(loss)


def test_ncc_gradient_is_finite():
    a = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    local_ncc(a, torch.rand(1, 1, 16, 16, 16)).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


def test_smoothness_zero_for_constant_field_and_known_values_otherwise():
    assert smoothness(torch.ones(1, 3, 8, 8, 8)) == 0
    assert smoothness(torch.full((1, 3, 8, 8, 8), -5.0)) == 0  # any translation is free
    # u_z = 2 z: squared z-difference 4 on one of three components, none along y or x
    # -> mean over components 4 / 3 for the z term, averaged with two zero terms: 4 / 9
    z = torch.arange(8.0).view(1, 1, 8, 1, 1).expand(1, 1, 8, 8, 8)
    ramp = torch.cat([2.0 * z, torch.zeros(1, 2, 8, 8, 8)], 1)
    assert float(smoothness(ramp)) == pytest.approx(4 / 9)
    # every component alternating +1/-1 along x: squared difference 4 everywhere along x -> 4 / 3
    checker = ((-1.0) ** torch.arange(8.0)).view(1, 1, 1, 1, 8).expand(1, 3, 8, 8, 8)
    assert float(smoothness(checker)) == pytest.approx(4 / 3)
    assert smoothness(checker) > smoothness(ramp) > 0  # rough fields cost more than smooth ones


def test_bending_energy_is_zero_for_affine_fields_and_counts_curvature():
    g = torch.stack(torch.meshgrid(*(torch.arange(8.0),) * 3, indexing="ij"))[None]  # (1, 3, 8, 8, 8): z, y, x
    a = torch.tensor([[0.3, -0.2, 0.1], [0.05, 0.4, -0.3], [0.2, 0.1, -0.1]])
    affine = torch.einsum("ij,bjzyx->bizyx", a, g) + torch.tensor([1.0, -2.0, 3.0]).view(1, 3, 1, 1, 1)
    assert float(bending_energy(affine)) == pytest.approx(0.0, abs=1e-9)  # any affine field is free
    assert float(smoothness(affine)) > 0.01  # where first differences charge it
    # u_z = z^2: second z-difference 2 on one of three components -> (4 / 3) / 9 per the definition
    z = g[:, :1]
    bowl = torch.cat([z * z, torch.zeros(1, 2, 8, 8, 8)], 1)
    assert float(bending_energy(bowl)) == pytest.approx(4 / 27)
    # a mixed term: u_x = z * y has d2/dzdy = 1 everywhere, counted twice -> 2 * (1 / 3) / 9
    saddle = torch.cat([torch.zeros(1, 2, 8, 8, 8), g[:, :1] * g[:, 1:2]], 1)
    assert float(bending_energy(saddle)) == pytest.approx(2 / 27)


def test_mse():
    a = torch.zeros(1, 1, 4, 4, 4)
    assert restoration_mse(a, a + 2) == 4


def test_multiscale_ncc_pulls_a_structure_from_further_away_than_local_ncc():
    p = voxel_grid((48, 48, 48))

    def cube(cx):
        d = torch.maximum(torch.maximum((p[0] - 24).abs(), (p[1] - 24).abs()), (p[2] - cx).abs())
        return (d < 8).float()[None, None]

    fixed, moving = cube(20.0), cube(28.0)  # 8 voxels apart: the answer is to sample at x + 8
    grads = []
    for loss_fn in (local_ncc, multiscale_ncc):
        t = torch.zeros(1, requires_grad=True)
        coords = torch.cat([p[None, :2], p[None, 2:] + t], 1)
        loss_fn(warp(moving, coords), fixed).backward()
        grads.append(float(t.grad))
    single, multi = grads
    assert multi < 0  # descending the loss moves the sampling towards +8
    assert abs(multi) > 10 * abs(single)
    assert multiscale_ncc(fixed, fixed) < multiscale_ncc(moving, fixed) - 0.3


@pytest.mark.parametrize("window", [3, 9, 15])
def test_box_sums_equal_a_direct_sum_over_the_zero_padded_window(window):
    from models.losses import _box_sum

    torch.manual_seed(0)
    x = torch.rand(1, 2, 7, 11, 12, dtype=torch.float64)  # sides smaller than the window too
    pad = window // 2
    padded = F.pad(x, (pad,) * 6)
    direct = torch.zeros_like(x)
    for dz in range(window):
        for dy in range(window):
            for dx in range(window):
                direct += padded[:, :, dz : dz + 7, dy : dy + 11, dx : dx + 12]
    torch.testing.assert_close(_box_sum(x, window), direct)


def test_the_ncc_damping_is_the_pretraining_option_ncc_eps():
    """``ncc_eps`` reaches the matching loss: on window sums' scale (VoxelMorph's 1e-5 / 729^2)
    a scan matched to itself scores about -1; the default 1e-5 on window means damps the
    low-contrast windows (docs/results/matching.md, benchmarks/ncc_eps_probe.py).
    """
    from gvsl_app.data.datasets import PairDataset
    from gvsl_app.training.config import PretrainConfig
    from gvsl_app.training.objective import PretrainObjective
    from models import DEMO_WIDTHS, GVSL

    scan = PairDataset("synthetic:cardiac", 32, n_synthetic=2).volumes[0:1]
    model = GVSL(widths=DEMO_WIDTHS).eval()  # starts at (near) the identity map
    scores = {}
    for eps in (1e-5, 1e-5 / 729**2):
        cfg = PretrainConfig(variant="matching", ncc_eps=eps)
        with torch.no_grad():
            scores[eps] = float(PretrainObjective(model, cfg)(scan, scan, scan)["ncc"])
    assert scores[1e-5 / 729**2] < -0.99 and scores[1e-5] > -0.95
    with pytest.raises(ValueError, match="ncc_eps"):
        PretrainConfig(ncc_eps=0.0)


def test_masked_ncc_ignores_what_lies_outside_the_mask_and_equals_plain_ncc_under_a_full_one():
    torch.manual_seed(0)
    a, b = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    b = 0.5 * a + 0.5 * b
    full = torch.ones(1, 1, 16, 16, 16)
    assert float(local_ncc(a, b, weight=full)) == pytest.approx(float(local_ncc(a, b)), abs=1e-5)
    half = full.clone()
    half[:, :, 8:] = 0
    changed = a.clone()
    changed[:, :, 8:] = 1.0  # an edge where a partial field of view ends: outside the mask
    masked = float(local_ncc(a, b, weight=half))
    assert float(local_ncc(changed, b, weight=half)) == pytest.approx(masked, abs=1e-6)
    assert float(local_ncc(changed, b)) != pytest.approx(float(local_ncc(a, b)), abs=1e-3)
