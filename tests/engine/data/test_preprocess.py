"""Preprocessing: physical resampling, overlap, working-cube resizing, intensity normalisation."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest

from gvsl_app.data.preprocess import (
    CT_WINDOW,
    check_overlap,
    detect_modality,
    normalise,
    physical_overlap,
    resample_to,
    resize_array,
)
from gvsl_app.io.images import read_volume, write_volume
from gvsl_app.io.volume import Volume


def rot_z(deg: float) -> tuple[float, ...]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)


def physical_coords(vol: Volume) -> np.ndarray:
    """(z, y, x, 3) physical (x, y, z) millimetres of every voxel centre."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in vol.shape], indexing="ij"), axis=-1).astype(float)
    m = vol.index_to_physical_matrix()
    return idx @ m[:3, :3].T + m[:3, 3]


def centroid_mm(vol: Volume, weights: np.ndarray | None = None) -> np.ndarray:
    w = np.asarray(vol.array if weights is None else weights, float)
    return (physical_coords(vol) * w[..., None]).sum(axis=(0, 1, 2)) / w.sum()


def blob_volume(
    center_mm, shape=(30, 32, 34), spacing=(1.0, 1.2, 0.9), origin=(-5.0, 3.0, 10.0), direction=rot_z(0.0), sigma=3.0
) -> Volume:
    vol = Volume(np.zeros(shape, np.float32), spacing, origin, direction, source="moving_blob.nii.gz")
    d2 = ((physical_coords(vol) - np.asarray(center_mm)) ** 2).sum(-1)
    return vol.with_array((np.exp(-d2 / (2 * sigma**2)) * 1000.0 - 100.0).astype(np.float32))


# ---------------------------------------------------------------------------- resample_to


def test_resample_keeps_blob_at_same_physical_position():
    center = np.array([8.0, 20.0, 22.0])
    moving = blob_volume(center)
    ref = Volume(
        np.zeros((26, 28, 24), np.int16), (1.5, 0.8, 1.3), (-12.0, 2.0, 6.0), rot_z(20.0), source="fixed.nii.gz"
    )
    out = resample_to(moving, ref)
    assert out.shape == ref.shape
    assert out.spacing == ref.spacing and out.origin == ref.origin and out.direction == ref.direction
    assert out.array.dtype == np.float32
    assert out.source == "moving_blob.nii.gz" and out.meta["resampled_to"] == "fixed.nii.gz"
    w = out.array - out.array.min()
    np.testing.assert_allclose(centroid_mm(out, w), center, atol=0.3)
    # The test can tell: the fixture blob is where it should be, and merely resizing the
    # voxels onto the fixed grid (ignoring physical space) puts it millimetres away.
    np.testing.assert_allclose(centroid_mm(moving, moving.array - moving.array.min()), center, atol=0.3)
    naive = resize_array(moving.array, ref.shape)
    assert np.linalg.norm(centroid_mm(ref, naive - naive.min()) - center) > 3.0


def test_resample_through_files_keeps_blob_position(tmp_path):
    center = np.array([6.0, 18.0, 25.0])
    moving = read_volume(write_volume(blob_volume(center, direction=rot_z(-15.0)), tmp_path / "m.nrrd"))
    ref = read_volume(
        write_volume(
            Volume(np.zeros((20, 22, 24), np.int16), (1.4, 1.1, 1.2), (-15.0, 0.0, 8.0), rot_z(10.0)),
            tmp_path / "f.nii.gz",
        )
    )
    out = resample_to(moving, ref)
    np.testing.assert_allclose(centroid_mm(out, out.array - out.array.min()), center, atol=0.3)


def test_resample_fills_outside_with_the_minimum():
    moving = Volume(np.full((8, 8, 8), 50.0, np.float32))
    moving.array[0, 0, 0] = -1000.0
    ref = Volume(np.zeros((8, 8, 8)), origin=(100.0, 0.0, 0.0))  # entirely outside
    assert np.all(resample_to(moving, ref).array == -1000.0)
    assert np.all(resample_to(moving, ref, default_value=7.0).array == 7.0)


def test_resample_labels_keep_exact_values_and_type():
    lab = np.zeros((24, 26, 22), np.uint8)
    lab[4:12, 5:15, 3:10] = 3
    lab[14:20, 10:20, 12:20] = 7
    moving = Volume(lab, (1.1, 0.9, 1.3), (2.0, -4.0, 1.0), rot_z(10.0))
    ref = Volume(np.zeros((30, 30, 28)), (0.85, 1.25, 1.05), (-1.0, -6.0, 0.5), rot_z(-5.0))
    out = resample_to(moving, ref, is_label=True)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) == {0, 3, 7}
    for value in (3, 7):
        np.testing.assert_allclose(centroid_mm(out, out.array == value), centroid_mm(moving, lab == value), atol=0.7)


def test_resample_onto_the_same_grid_is_exact():
    rng = np.random.default_rng(0)
    vol = Volume(rng.normal(size=(6, 7, 8)).astype(np.float32), (0.7, 1.0, 2.0), (1.0, 2.0, 3.0), rot_z(30.0))
    np.testing.assert_array_equal(resample_to(vol, vol).array, vol.array)


def test_resample_nan_treated_as_minimum():
    arr = np.zeros((6, 6, 6), np.float32)
    arr[2:4, 2:4, 2:4] = np.nan
    arr[0, 0, 0] = -5.0
    ref = Volume(np.zeros((5, 5, 5)), spacing=(1.2, 1.2, 1.2))
    out = resample_to(Volume(arr), ref)
    assert np.isfinite(out.array).all() and out.array.min() == -5.0


# ---------------------------------------------------------------------------- overlap


def test_overlap_identical_half_and_disjoint():
    a = Volume(np.zeros((10, 10, 10)), source="fixed_scan.nii.gz")
    half = Volume(np.zeros((10, 10, 10)), origin=(5.0, 0.0, 0.0), source="half.nii.gz")
    far = Volume(np.zeros((10, 10, 10)), origin=(0.0, 0.0, 500.0), source="far_moving.mha")
    assert physical_overlap(a, a) == pytest.approx(1.0)
    assert physical_overlap(a, half) == pytest.approx(0.5)
    assert physical_overlap(a, far) == 0.0
    assert check_overlap(a, half) == pytest.approx(0.5)
    with pytest.raises(ValueError) as err:
        check_overlap(a, far)
    assert "fixed_scan.nii.gz" in str(err.value) and "far_moving.mha" in str(err.value)


def test_overlap_accounts_for_direction():
    # 10x10x10 box at the origin; the other box is the same voxels rotated by 180 deg about z
    # around the physical origin: it lies at negative x, y; only a 1 x 1 x 10 mm column
    # around the first voxel (half-voxel rims) is shared.
    a = Volume(np.zeros((10, 10, 10)))
    flipped = Volume(np.zeros((10, 10, 10)), direction=rot_z(180.0))
    assert physical_overlap(a, flipped) == pytest.approx(0.01, abs=1e-9)
    # Rotated by 45 deg about the same centre: the intersection is a regular octagon,
    # 2 (sqrt 2 - 1) = 0.828 of the square (measured on a lattice, so approximately).
    rot = Volume(np.zeros((10, 10, 10)), origin=(4.5 - 4.5 * math.sqrt(2), 4.5, 0.0), direction=rot_z(-45.0))
    frac = physical_overlap(a, rot)
    assert frac == pytest.approx(2 * (math.sqrt(2) - 1), abs=0.03)
    shifted = Volume(np.zeros((10, 10, 10)), origin=(40.0, 0.0, 0.0), direction=rot_z(-45.0))
    assert physical_overlap(a, shifted) == 0.0


# ---------------------------------------------------------------------------- resize_array


def test_resize_image_reproduces_linear_ramp_with_aligned_corners():
    z, y, x = np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 2, 11), np.linspace(-1, 1, 7), indexing="ij")
    ramp = (z + y + x).astype(np.float64)
    up = resize_array(ramp, (17, 21, 13))
    assert up.dtype == np.float32 and up.shape == (17, 21, 13)
    z2, y2, x2 = np.meshgrid(np.linspace(0, 1, 17), np.linspace(0, 2, 21), np.linspace(-1, 1, 13), indexing="ij")
    np.testing.assert_allclose(up, z2 + y2 + x2, atol=1e-5)
    back = resize_array(up, ramp.shape)
    np.testing.assert_allclose(back, ramp, atol=1e-5)
    assert resize_array(ramp, 5).shape == (5, 5, 5)


def test_resize_labels_nearest_keeps_values_type_and_corners():
    rng = np.random.default_rng(0)
    lab = rng.choice(np.array([0, 2, 5, 11], np.int16), size=(7, 9, 6))
    out = resize_array(lab, (13, 17, 11), is_label=True)
    assert out.dtype == np.int16 and out.shape == (13, 17, 11)
    assert set(np.unique(out)) <= {0, 2, 5, 11}
    for corner in [(0, 0, 0), (-1, -1, -1), (0, -1, 0)]:
        assert out[corner] == lab[corner]
    # Exact factor (n-1)*2+1: every input voxel is found at twice its index.
    np.testing.assert_array_equal(out[::2, ::2, ::2], lab)
    np.testing.assert_array_equal(resize_array(out, lab.shape, is_label=True), lab)


# ---------------------------------------------------------------------------- intensities


def test_ct_window_constant_and_mapping():
    assert CT_WINDOW == (-1024.0, 1024.0)
    hu = np.array([-3000, -1024, -1000, 0, 512, 1024, 3000], np.float32).reshape(1, 1, 7)
    out = normalise(hu, "ct")
    np.testing.assert_allclose(out.ravel(), [0, 0, 24 / 2048, 0.5, 0.75, 1, 1], atol=1e-7)
    assert out.dtype == np.float32


def test_ct_mapping_identical_however_called():
    rng = np.random.default_rng(3)
    hu = rng.integers(-1100, 1600, size=(12, 12, 12)).astype(np.int16)
    hu[0, 0, 0], hu[0, 0, 1] = -1024, 1500
    vol = Volume(hu, source="ct.nii.gz")
    a = normalise(vol)  # auto-detected
    b = normalise(hu.astype(np.float32), "ct")
    c = normalise(Volume(hu.astype(np.float64)), modality="CT")
    crop = normalise(hu[4:8, 4:8, 4:8], "ct")  # a crop has a different range, same mapping
    assert detect_modality(vol) == "ct"
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(crop, a[4:8, 4:8, 4:8])
    assert a.min() >= 0 and a.max() <= 1


def test_mr_percentile_scaling():
    arr = np.arange(1000, dtype=np.float32).reshape(10, 10, 10)
    arr[0, 0, 0] = -400.0  # a cold outlier (MR-like: not below the CT air threshold)
    arr[9, 9, 9] = 1e6  # a hot outlier
    assert detect_modality(arr) == "mr"
    out = normalise(arr, "auto")
    lo, hi = np.percentile(arr, [0.5, 99.5])
    expected = np.clip((arr - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    assert out.min() == 0.0 and out.max() == 1.0
    # The outliers do not squash the rest of the range.
    assert 0.45 < out[5, 0, 0] < 0.55
    out2 = normalise(arr, "mr", percentiles=(0.0, 100.0))
    assert out2[9, 9, 9] == 1.0 and out2[0, 0, 0] == 0.0 and out2[5, 0, 0] < 0.01


def test_constant_volume_gives_zeros_and_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="gvsl_app.data.preprocess"):
        out = normalise(Volume(np.full((6, 6, 6), 300, np.int16), source="flat.nii.gz"))
    assert out.dtype == np.float32 and not np.isnan(out).any()
    assert np.all(out == 0.0)
    assert any("constant" in r.getMessage() for r in caplog.records)


def test_nan_voxels_are_treated_as_minimum():
    arr = np.linspace(0, 100, 6 * 6 * 6, dtype=np.float32).reshape(6, 6, 6)
    arr[1, 2, 3] = np.nan
    out = normalise(arr, "mr")
    assert np.isfinite(out).all()
    assert out[1, 2, 3] == out[0, 0, 0] == 0.0
    ct = np.full((4, 4, 4), 200.0, np.float32)
    ct[0, 0, 0] = np.nan
    ct[1, 1, 1] = -600.0
    np.testing.assert_allclose(normalise(ct, "ct")[0, 0, 0], (-600 + 1024) / 2048)


def test_detect_modality_uses_dicom_tag_first():
    mr_like = Volume(np.zeros((4, 4, 4)), meta={"dicom": {"modality": "CT"}})
    assert detect_modality(mr_like) == "ct"
    ct_like = np.array([-1000.0, 0.0, 400.0]).reshape(1, 1, 3)
    assert detect_modality(ct_like) == "ct"
    assert detect_modality(Volume(np.zeros((4, 4, 4)) + ct_like.min(), meta={"dicom": {"modality": "MR"}})) == "mr"
    with pytest.raises(ValueError):
        normalise(ct_like, "pet")
