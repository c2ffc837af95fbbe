"""Volume IO through real files: geometry round trips, pixel types, label maps and their grids,
gzip writing.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl_app.io.images import VolumeReadError, read_labels, read_volume, write_volume
from gvsl_app.io.volume import Volume

from helpers import ORIGIN, ROT, SPACING, make_volume, rotation

# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("ext", [".nii.gz", ".mha", ".nrrd"])
def test_round_trip_keeps_rotated_anisotropic_geometry(tmp_path, ext):
    vol = make_volume()
    path = write_volume(vol, tmp_path / f"scan{ext}")
    back = read_volume(path)
    assert back.shape == vol.shape
    np.testing.assert_array_equal(back.array, vol.array)
    np.testing.assert_allclose(back.spacing, SPACING, rtol=1e-5)
    np.testing.assert_allclose(back.origin, ORIGIN, atol=1e-4)
    np.testing.assert_allclose(back.direction, ROT, atol=1e-5)
    assert back.dtype == "int16"
    assert back.source == str(path)
    # No temporary file is left next to the result.
    assert [p.name for p in tmp_path.iterdir()] == [f"scan{ext}"]


def test_round_trip_physical_position_of_a_voxel(tmp_path):
    vol = make_volume()
    back = read_volume(write_volume(vol, tmp_path / "scan.nii.gz"))
    idx = np.array([3, 5, 7, 1.0])  # (z, y, x, 1)
    np.testing.assert_allclose(back.index_to_physical_matrix() @ idx, vol.index_to_physical_matrix() @ idx, atol=1e-4)


def test_labels_written_as_small_integers_and_rounded(tmp_path):
    lab = np.zeros((4, 5, 6), np.float32)
    lab[1:3, 1:4, 2:5] = 2.9999  # e.g. after a warp in float
    lab[0, 0, 0] = 7.0
    path = write_volume(Volume(lab, SPACING, ORIGIN, ROT), tmp_path / "lab.nii.gz", is_label=True)
    back = read_labels(path)
    assert back.array.dtype == np.uint8
    assert set(np.unique(back.array)) == {0, 3, 7}


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_negative_label_values_are_refused(tmp_path, dtype):
    lab = np.zeros((4, 5, 6), dtype)
    lab[1, 1, 1] = -1
    path = tmp_path / "neg.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(path))
    with pytest.raises(VolumeReadError, match="neg.nii.gz: the label map has negative values \\(minimum -1\\)"):
        read_labels(path)


def test_float64_image_stored_as_float32(tmp_path):
    vol = Volume(np.linspace(0, 1, 4 * 5 * 6).reshape(4, 5, 6), SPACING, ORIGIN, ROT)
    back = read_volume(write_volume(vol, tmp_path / "f.mha"))
    assert back.dtype == "float32"
    np.testing.assert_allclose(back.array, vol.array, rtol=1e-6)


def test_constant_volume_is_readable(tmp_path):
    vol = Volume(np.full((4, 5, 6), 42, np.int16))
    back = read_volume(write_volume(vol, tmp_path / "c.nii.gz"))
    assert np.all(back.array == 42)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii", ".nrrd"])
def test_partly_nan_volume_keeps_nan_positions(tmp_path, ext):
    # ITK's NIfTI reader turns NaN into 0; read_volume must give the NaN back.
    arr = np.ones((4, 5, 6), np.float32)
    arr[0, 0, :3] = np.nan
    arr[3, 4, 5] = np.inf
    back = read_volume(write_volume(Volume(arr), tmp_path / f"n{ext}"))
    assert back.meta["nan_voxels"] == 3
    np.testing.assert_array_equal(np.isnan(back.array), np.isnan(arr))
    assert back.array[3, 4, 5] == np.inf
    assert np.all(back.array[np.isfinite(arr)] == 1)


def test_4d_with_single_time_point_is_squeezed(tmp_path):
    vol = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6))
    vol.SetSpacing((0.5, 0.75, 2.0))
    img4 = sitk.JoinSeries([vol])
    assert img4.GetDimension() == 4
    sitk.WriteImage(img4, str(tmp_path / "t1.mha"))
    back = read_volume(tmp_path / "t1.mha")
    assert back.shape == (4, 5, 6)
    np.testing.assert_allclose(back.spacing, (0.5, 0.75, 2.0))
    np.testing.assert_array_equal(back.array, sitk.GetArrayFromImage(vol))


# ---------------------------------------------------------------------------- labels


def test_read_labels_converts_integral_floats(tmp_path):
    lab = np.zeros((4, 5, 6), np.float32)
    lab[1:3, 2:4, 1:5] = 5.0
    lab[0, 0, 0] = 300.0
    path = tmp_path / "lab_float.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(path))
    out = read_labels(path)
    assert out.array.dtype.kind in "iu"
    assert out.array.dtype == np.uint16
    assert set(np.unique(out.array)) == {0, 5, 300}
    assert out.dtype == "float32"  # the file's pixel type is still recorded


def test_read_labels_refuses_fractional_values(tmp_path):
    lab = np.zeros((4, 5, 6), np.float32)
    lab[1, 1, 1] = 0.5
    path = tmp_path / "soft_mask.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(lab), str(path))
    with pytest.raises(VolumeReadError, match="soft_mask.nii.gz.*non-integral"):
        read_labels(path)


def test_read_labels_accepts_matching_grid_within_tolerance(tmp_path):
    img = make_volume()
    img_path = write_volume(img, tmp_path / "img.nii.gz")
    ref = read_volume(img_path)
    lab = Volume((img.array > 0).astype(np.uint8), SPACING, tuple(o + 1e-5 for o in ORIGIN), ROT)
    out = read_labels(write_volume(lab, tmp_path / "lab.nii.gz", is_label=True), reference=ref)
    np.testing.assert_array_equal(out.array, lab.array)


@pytest.mark.parametrize("prop", ["shape", "spacing", "origin", "direction"])
def test_read_labels_mismatch_names_both_files_and_property(tmp_path, prop):
    img = make_volume()
    ref = read_volume(write_volume(img, tmp_path / "image_ct.nii.gz"))
    arr = (img.array > 0).astype(np.uint8)
    spacing, origin, direction = SPACING, ORIGIN, ROT
    if prop == "shape":
        arr = arr[:, :, :-1]
    elif prop == "spacing":
        spacing = (0.7, 1.3, 2.6)
    elif prop == "origin":
        origin = (ORIGIN[0] + 2.0, ORIGIN[1], ORIGIN[2])
    else:
        direction = rotation(20.0, -10.0, 35.0)
    lab_path = write_volume(Volume(arr, spacing, origin, direction), tmp_path / "seg_lab.nii.gz", is_label=True)
    with pytest.raises(VolumeReadError) as err:
        read_labels(lab_path, reference=ref)
    msg = str(err.value)
    assert "seg_lab.nii.gz" in msg and "image_ct.nii.gz" in msg
    assert prop in msg
    others = {"shape", "spacing", "origin", "direction"} - {prop}
    assert not any(f"{o} (" in msg for o in others)


@pytest.mark.parametrize("level", [-1, 0, 1, 9])
def test_write_image_gzips_nifti_at_the_given_level_and_leaves_no_temporaries(tmp_path, level):
    from gvsl_app.io.images import write_image

    rng = np.random.default_rng(0)
    field = rng.normal(size=(6, 7, 8, 3))
    img = sitk.GetImageFromArray(field, isVector=True)
    img.SetSpacing((1.5, 2.0, 0.5))
    img.SetOrigin((-3.0, 4.0, 5.0))
    path = write_image(img, tmp_path / "field.nii.gz", compression_level=level)
    assert path.read_bytes()[:2] == b"\x1f\x8b"  # a real gzip stream, whatever the level
    raw = tmp_path / "plain.nii"
    sitk.WriteImage(img, str(raw))
    assert gzip.decompress(path.read_bytes()) == raw.read_bytes()  # any gzip reader gets the plain NIfTI back
    raw.unlink()
    back = sitk.ReadImage(str(path))
    assert back.GetPixelID() == sitk.sitkVectorFloat64
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), field)
    np.testing.assert_allclose(back.GetSpacing(), (1.5, 2.0, 0.5))
    assert [p.name for p in tmp_path.iterdir()] == ["field.nii.gz"]
