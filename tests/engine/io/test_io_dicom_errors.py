"""Volume IO through real files: DICOM series folders, and every bad input."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl_app.io.images import VolumeReadError, read_volume, write_volume
from gvsl_app.io.volume import Volume

from helpers import make_volume, write_dicom_series

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


def test_a_folder_of_siemens_ima_slices_is_a_dicom_series(tmp_path):
    from gvsl_app.io.dicom import holds_dicom_series

    arr = np.arange(4 * 6 * 5, dtype=np.int16).reshape(4, 6, 5)
    write_dicom_series(tmp_path / "ima", arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), "1.2.3.4.9")
    for f in (tmp_path / "ima").glob("*.dcm"):
        f.rename(f.with_suffix(".IMA"))
    assert holds_dicom_series(tmp_path / "ima")
    assert read_volume(tmp_path / "ima").shape == (4, 6, 5)


def test_a_dicom_series_or_a_file_too_large_for_memory_is_refused_before_its_voxels_are_read(tmp_path, monkeypatch):
    from gvsl_app.memory import MemoryEstimateError

    arr = np.zeros((6, 20, 30), np.int16)
    write_dicom_series(tmp_path / "ct", arr, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), "1.2.3.4.7")
    write_volume(make_volume(shape=(6, 20, 30)), tmp_path / "x.nii.gz")
    monkeypatch.setattr("gvsl_app.memory.available_bytes", lambda: 6 * 20 * 30 * 16 - 1)  # one byte short
    with pytest.raises(MemoryEstimateError, match=r"ct declares 30 x 20 x 6 voxels .*reading it needs about"):
        read_volume(tmp_path / "ct")
    with pytest.raises(MemoryEstimateError, match=r"x.nii.gz declares 30 x 20 x 6 voxels"):
        read_volume(tmp_path / "x.nii.gz")
    monkeypatch.setattr("gvsl_app.memory.available_bytes", lambda: 6 * 20 * 30 * 16)
    assert read_volume(tmp_path / "ct").shape == (6, 20, 30)
