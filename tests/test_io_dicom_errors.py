"""Volume IO through real files: geometry round trips, DICOM series, and every bad input."""

from __future__ import annotations

import gzip
import logging
import math

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl_app.io.images import VolumeReadError, read_labels, read_volume, write_volume
from gvsl_app.io.volume import Volume


def rotation(ax: float, ay: float, az: float) -> tuple[float, ...]:
    """Row-major 3x3 proper rotation (degrees about x, then y, then z)."""
    ax, ay, az = (math.radians(a) for a in (ax, ay, az))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


ROT = rotation(20.0, -10.0, 30.0)
SPACING = (0.7, 1.3, 2.5)
ORIGIN = (-12.5, 30.25, 7.0)


def make_volume(shape=(6, 9, 11), dtype=np.int16, seed=0) -> Volume:
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1500, size=shape).astype(dtype)
    return Volume(arr, SPACING, ORIGIN, ROT)


def write_dicom_series(folder, array: np.ndarray, spacing, origin, series_uid: str, modality="CT", prefix="slice"):
    """A DICOM series with one file per slice, positioned like a scanner would write it."""
    folder.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    d = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        tags = {
            "0008|0060": modality,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0010|0020": "PHANTOM",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])),
            "0018|0050": f"{spacing[2]:.6f}",
        }
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(s)


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


# ---------------------------------------------------------------------------- DICOM


def test_dicom_series_folder(tmp_path):
    arr = (np.arange(5 * 8 * 10).reshape(5, 8, 10) - 200).astype(np.int16)
    write_dicom_series(tmp_path / "ct", arr, (0.8, 0.9, 2.0), (-50.0, 20.0, 100.0), "1.2.3.4.100")
    vol = read_volume(tmp_path / "ct")
    assert vol.shape == (5, 8, 10)
    np.testing.assert_allclose(vol.spacing, (0.8, 0.9, 2.0), rtol=1e-4)
    np.testing.assert_allclose(vol.origin, (-50.0, 20.0, 100.0), atol=1e-3)
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.meta["dicom"]["series_uid"] == "1.2.3.4.100"
    assert vol.meta["dicom"]["modality"] == "CT"
    assert vol.meta["dicom"]["other_series_uids"] == []
    assert vol.meta["dicom"]["nonuniform_slice_spacing"] is False


def test_dicom_folder_with_two_series_picks_the_larger(tmp_path, caplog):
    folder = tmp_path / "study"
    rng = np.random.default_rng(1)
    big = rng.integers(0, 500, size=(6, 8, 8)).astype(np.int16)
    small = rng.integers(0, 500, size=(3, 8, 8)).astype(np.int16)
    write_dicom_series(folder, small, (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), "1.2.3.4.1", prefix="a")
    write_dicom_series(folder, big, (1.0, 1.0, 1.5), (0.0, 0.0, 0.0), "1.2.3.4.2", prefix="b")
    with caplog.at_level(logging.WARNING, logger="gvsl_app.io.dicom"):
        vol = read_volume(folder)
    assert vol.shape == (6, 8, 8)
    np.testing.assert_array_equal(vol.array, big)
    assert vol.meta["dicom"]["series_uid"] == "1.2.3.4.2"
    assert vol.meta["dicom"]["other_series_uids"] == ["1.2.3.4.1"]
    assert any("1.2.3.4.1" in r.getMessage() for r in caplog.records)

    chosen = read_volume(folder, series_uid="1.2.3.4.1")
    assert chosen.shape == (3, 8, 8)
    np.testing.assert_allclose(chosen.spacing[2], 3.0, rtol=1e-4)
    with pytest.raises(VolumeReadError, match="1.2.3.4.9"):
        read_volume(folder, series_uid="1.2.3.4.9")


def test_dicom_series_with_missing_slice_is_flagged(tmp_path, caplog):
    arr = np.zeros((6, 8, 8), np.int16)
    write_dicom_series(tmp_path / "gap", arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), "1.2.3.4.7")
    (tmp_path / "gap" / "slice003.dcm").unlink()
    with caplog.at_level(logging.WARNING, logger="gvsl_app.io.dicom"):
        vol = read_volume(tmp_path / "gap")
    assert vol.shape == (5, 8, 8)
    assert vol.meta["dicom"]["nonuniform_slice_spacing"] is True
    assert any("not uniform" in r.getMessage() for r in caplog.records)


def test_single_dicom_slice_from_pydicom_is_refused():
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    with pytest.raises(VolumeReadError, match="CT_small.dcm") as err:
        read_volume(path)
    assert "single slice" in str(err.value)


# ---------------------------------------------------------------------------- bad inputs


def _write_image(path, img):
    sitk.WriteImage(img, str(path))
    return path


def _missing(tmp_path):
    return tmp_path / "missing_scan.nii.gz"


def _text(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("not an image")
    return p


def _garbage_nii(tmp_path):
    p = tmp_path / "garbage.nii"
    p.write_bytes(b"\x00\x01garbage" * 10)
    return p


def _garbage_gz(tmp_path):
    p = tmp_path / "fake.nii.gz"
    p.write_bytes(gzip.compress(b"hello, not a nifti header"))
    return p


def _truncated_niigz(tmp_path):
    full = write_volume(make_volume((12, 12, 12), np.float32), tmp_path / "full.nii.gz")
    data = full.read_bytes()
    p = tmp_path / "truncated.nii.gz"
    p.write_bytes(data[: len(data) // 2])
    return p


def _corrupt_niigz(tmp_path, start=None):
    full = write_volume(make_volume((24, 24, 24), np.float32), tmp_path / "full.nii.gz")
    data = bytearray(full.read_bytes())
    at = len(data) // 2 if start is None else start
    data[at : at + 28] = b"\xff" * 28  # damaged data, not a short file
    p = tmp_path / "corrupt.nii.gz"
    p.write_bytes(bytes(data))
    return p


def _corrupt_niigz_early(tmp_path):
    return _corrupt_niigz(tmp_path, start=12)  # right after the gzip header: an invalid deflate block


def _truncated_nii(tmp_path):
    full = write_volume(make_volume((12, 12, 12), np.float32), tmp_path / "full.nii")
    data = full.read_bytes()
    p = tmp_path / "cut.nii"
    p.write_bytes(data[: len(data) - 1000])
    return p


def _truncated_mha(tmp_path):
    full = write_volume(make_volume((12, 12, 12), np.float32), tmp_path / "full.mha")
    data = full.read_bytes()
    p = tmp_path / "cut.mha"
    p.write_bytes(data[: len(data) // 2])
    return p


def _image_2d(tmp_path):
    return _write_image(tmp_path / "slice2d.nii.gz", sitk.GetImageFromArray(np.zeros((8, 9), np.float32)))


def _single_slice(tmp_path):
    return write_volume(Volume(np.zeros((1, 8, 9), np.int16)), tmp_path / "oneslice.nii.gz")


def _image_4d(tmp_path):
    vols = [sitk.GetImageFromArray(np.zeros((4, 5, 6), np.float32)) for _ in range(3)]
    return _write_image(tmp_path / "timeseries.nii.gz", sitk.JoinSeries(vols))


def _vector(tmp_path):
    img = sitk.GetImageFromArray(np.zeros((4, 5, 6, 3), np.uint8), isVector=True)
    return _write_image(tmp_path / "rgb.nrrd", img)


def _zero_size(tmp_path):
    p = tmp_path / "empty.mha"
    p.write_text("ObjectType = Image\nNDims = 3\nDimSize = 6 5 0\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    return p


def _all_nan(tmp_path):
    return write_volume(Volume(np.full((4, 5, 6), np.nan, np.float32)), tmp_path / "allnan.nii.gz")


def _empty_folder(tmp_path):
    p = tmp_path / "no_dicom_here"
    p.mkdir()
    (p / "readme.txt").write_text("nothing")
    return p


BAD = {
    "missing": (_missing, "no such file"),
    "text": (_text, "not a readable image"),
    "garbage_nii": (_garbage_nii, ""),
    "garbage_gz": (_garbage_gz, ""),
    "truncated_niigz": (_truncated_niigz, "truncated"),
    "truncated_nii": (_truncated_nii, "truncated"),
    "corrupt_niigz": (_corrupt_niigz, "corrupt"),
    "corrupt_niigz_early": (_corrupt_niigz_early, "corrupt"),
    "truncated_mha": (_truncated_mha, "truncated"),
    "2d": (_image_2d, "2D"),
    "single_slice": (_single_slice, "single slice"),
    "4d": (_image_4d, "4D"),
    "vector": (_vector, "multi-component"),
    "zero_size": (_zero_size, "zero-size"),
    "all_nan": (_all_nan, "NaN"),
    "empty_folder": (_empty_folder, "no DICOM series"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gives_volume_read_error_naming_the_file(tmp_path, case):
    make, phrase = BAD[case]
    path = make(tmp_path)
    with pytest.raises(VolumeReadError) as err:
        read_volume(path)
    msg = str(err.value)
    assert path.name in msg
    assert phrase in msg
    assert "Traceback" not in msg and "itk::" not in msg
    assert isinstance(err.value, ValueError)


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
