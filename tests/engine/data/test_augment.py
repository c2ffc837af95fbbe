"""GVSL augmentations: shapes on odd small volumes, determinism, invariants of each transform."""

import numpy as np
import pytest
import torch

from gvsl_app.data.augment import (
    AppearanceTransform,
    Compose,
    GVSLPairAugment,
    InPaint,
    LocalPixelShuffle,
    NonLinearIntensity,
    OutPaint,
    RandomAffine,
    RandomElastic,
    SpatialAugment,
    make_generator,
)
from models.spatial import jacobian_determinant, sampling_coordinates

SHAPE = (13, 17, 19)


def smooth_volume(batch=2, shape=SHAPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 1, *[max(2, n // 3) for n in shape], generator=g)
    x = torch.nn.functional.interpolate(x, size=shape, mode="trilinear", align_corners=True)
    return (x - x.amin()) / (x.amax() - x.amin())


def unique_volume(batch=2, shape=SHAPE, seed=0):
    """Every voxel holds a distinct value, so its value says where it came from."""
    n = int(np.prod(shape))
    vals = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(seed + b)) for b in range(batch)])
    return (vals.float() / (n - 1)).reshape(batch, 1, *shape)


TRANSFORMS = {
    "shuffle": lambda: LocalPixelShuffle(1.0),
    "nonlinear": lambda: NonLinearIntensity(1.0),
    "inpaint": lambda: InPaint(1.0),
    "outpaint": lambda: OutPaint(1.0),
    "appearance": lambda: AppearanceTransform(1.0, 1.0, 1.0),
    "compose": lambda: Compose([NonLinearIntensity(1.0), InPaint(1.0)]),
    "spatial": lambda: SpatialAugment(),
}


def run(t, x, seed):
    return t(x, generator=make_generator(seed))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_transform_on_odd_small_volume_and_batch_2(name):
    x = unique_volume() if name == "shuffle" else smooth_volume()
    out = run(TRANSFORMS[name](), x, 0)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1
    for b in range(2):
        assert not torch.equal(out[b], x[b]), f"{name} left sample {b} unchanged"


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_same_seed_same_result_other_seed_different(name):
    x = unique_volume() if name == "shuffle" else smooth_volume()
    t = TRANSFORMS[name]()
    a, b, c = run(t, x, 7), run(t, x, 7), run(t, x, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_generator_given_to_the_object_and_missing_generator_is_an_error():
    x = smooth_volume()
    t = NonLinearIntensity(1.0, generator=make_generator(3))
    assert torch.equal(t(x), NonLinearIntensity(1.0)(x, generator=make_generator(3)))
    with pytest.raises(ValueError, match="generator"):
        InPaint(1.0)(x)
    with pytest.raises(ValueError, match=r"\(B, C, D, H, W\)"):
        InPaint(1.0)(x[0], generator=0)


def test_local_shuffle_permutes_only_within_small_blocks():
    x = unique_volume()
    for max_block in (2, 4):
        out = LocalPixelShuffle(1.0, max_block=max_block)(x, generator=make_generator(1))
        n = int(np.prod(SHAPE))
        for b in range(2):
            # same multiset of values (a permutation of the voxels)
            assert torch.equal(out[b].flatten().sort().values, x[b].flatten().sort().values)
            assert not torch.equal(out[b], x[b])
            # every voxel comes from within its block: displacement < block edge on each axis
            where_from = torch.empty(n, dtype=torch.long)
            where_from[(x[b].flatten() * (n - 1)).round().long()] = torch.arange(n)
            src = where_from[(out[b].flatten() * (n - 1)).round().long()]
            src_zyx = np.stack(np.unravel_index(src.numpy(), SHAPE))
            dst_zyx = np.stack(np.unravel_index(np.arange(n), SHAPE))
            assert np.abs(src_zyx - dst_zyx).max() <= max_block - 1


def test_local_shuffle_handles_tiny_and_flat_volumes():
    for shape in [(1, 2, 3), (1, 1, 9), (2, 2, 2), (5, 1, 7)]:
        x = unique_volume(1, shape)
        out = LocalPixelShuffle(1.0)(x, generator=make_generator(0))
        assert out.shape == x.shape
        assert torch.equal(out.flatten().sort().values, x.flatten().sort().values)


def test_local_shuffle_every_block_when_n_blocks_is_large_and_none_with_prob_0():
    x = unique_volume(1, (16, 16, 16))
    assert torch.equal(LocalPixelShuffle(0.0)(x, generator=make_generator(0)), x)
    out = LocalPixelShuffle(1.0, max_block=4, n_blocks=10**6)(x, generator=make_generator(0))
    assert (out != x).float().mean() > 0.5


def test_nonlinear_keeps_range_and_is_a_function_of_intensity():
    x = torch.linspace(0, 1, 13 * 17 * 19).reshape(1, 1, *SHAPE).repeat(8, 1, 1, 1, 1)
    x = x[:, :, torch.randperm(13)]  # same values, shuffled positions
    out = NonLinearIntensity(1.0)(x, generator=make_generator(5))
    assert out.min() >= 0 and out.max() <= 1
    for b in range(8):
        order = x[b].flatten().argsort()
        curve = out[b].flatten()[order]
        assert (curve[-1] - curve[0]).abs() > 0.5  # maps the range onto most of [0, 1], up or down
        assert not torch.allclose(curve, x[b].flatten()[order], atol=1e-3)
    # both monotone (0 -> 0, 1 -> 1) and flipped curves occur across samples
    first = out[:, 0].flatten(1)[:, x[0, 0].flatten().argmin()]
    assert (first < 0.1).any() and (first > 0.9).any()


def box_of(mask):
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    return lo, hi


def test_inpaint_replaces_a_box_and_nothing_else():
    x = smooth_volume(2, (24, 30, 36))
    out = InPaint(1.0, n_boxes=1)(x, generator=make_generator(2))
    for b in range(2):
        changed = (out[b, 0] != x[b, 0]).numpy()
        lo, hi = box_of(changed)
        assert changed[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].all()
        assert changed.sum() == np.prod(hi - lo)
        for n, e in zip((24, 30, 36), hi - lo):
            assert n // 6 <= e <= n // 3


def test_outpaint_keeps_only_a_box():
    x = smooth_volume(2, (28, 21, 35))
    out = OutPaint(1.0, n_boxes=1)(x, generator=make_generator(4))
    for b in range(2):
        kept = (out[b, 0] == x[b, 0]).numpy()
        lo, hi = box_of(kept)
        assert kept[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]].all()
        assert kept.sum() == np.prod(hi - lo)  # nothing kept outside the box
        for n, e in zip((28, 21, 35), hi - lo):
            assert 3 * n // 7 <= e <= 4 * n // 7 + 1


def test_decisions_are_per_sample():
    x = smooth_volume(32, (8, 8, 8))
    out = InPaint(0.5)(x, generator=make_generator(0))
    changed = [(not torch.equal(out[b], x[b])) for b in range(32)]
    assert 4 < sum(changed) < 28


def test_spatial_draw_applies_identically_to_a_pair():
    x = smooth_volume()
    aug = SpatialAugment()
    coords = aug.coordinates(SHAPE, 2, generator=make_generator(0))
    assert coords.shape == (2, 3, *SHAPE)
    a, b = aug.apply(x, coords), aug.apply(x.clone(), coords)
    assert torch.equal(a, b) and not torch.equal(a, x)
    a, b = aug(x, x.clone(), generator=make_generator(1))
    assert torch.equal(a, b)
    m, f, mi = GVSLPairAugment(aug, AppearanceTransform(1.0, 1.0, 1.0))(x, x.clone(), make_generator(2))
    assert torch.equal(m, f) and not torch.equal(mi, m)


def test_labels_warped_with_nearest_keep_exact_values():
    g = torch.Generator().manual_seed(0)
    lab = torch.tensor([0, 3, 7])[torch.randint(3, (2, 1, *SHAPE), generator=g)]
    img = smooth_volume()
    aug = SpatialAugment(RandomAffine(rotation_deg=20, scale=0.2), RandomElastic(magnitude=0.04))
    w_img, w_lab = aug(img, lab, generator=make_generator(3))
    assert w_lab.dtype == lab.dtype and w_lab.shape == lab.shape
    assert set(torch.unique(w_lab).tolist()) <= {0, 3, 7}
    assert not torch.equal(w_lab, lab)
    assert w_img.shape == img.shape


def test_composed_coordinates_equal_models_spatial_sampling_coordinates():
    shape = (12, 15, 18)
    aug = SpatialAugment(
        RandomAffine(rotation_deg=20, shear_deg=8, translation=0.1), RandomElastic(grid=4, magnitude=0.05)
    )
    fast = aug.coordinates(shape, 2, generator=make_generator(9))
    g = make_generator(9)
    aff = aug.affine.sample(shape, 2, g, torch.device("cpu"))
    disp = aug.elastic.sample(shape, 2, g, torch.device("cpu"))
    ref = sampling_coordinates(shape, affine=aff, displacement=disp)
    assert torch.allclose(fast, ref, atol=1e-4)


def test_default_spatial_augmentation_does_not_fold():
    coords = SpatialAugment().coordinates((24, 24, 24), 4, generator=make_generator(0))
    assert jacobian_determinant(coords).min() > 0


def test_spatial_parts_can_be_switched_off_to_the_identity():
    x = smooth_volume()
    out = SpatialAugment(affine=False, elastic=False)(x, generator=0)
    assert torch.allclose(out, x, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_transforms_run_on_cuda_with_a_cuda_generator():
    x = smooth_volume().cuda()
    g = make_generator(0, "cuda")
    m, f, mi = GVSLPairAugment.default()(x, x.clone(), g)
    assert m.device.type == "cuda" and torch.equal(m, f) and mi.shape == x.shape
    # a CPU generator also works on CUDA data (random numbers drawn on CPU, then moved)
    out = AppearanceTransform(1.0, 1.0, 1.0)(x, generator=make_generator(0))
    assert out.device.type == "cuda"
