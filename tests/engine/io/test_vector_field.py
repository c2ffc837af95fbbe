"""The displacement field written in slabs reads back in SimpleITK as its own writer's file does."""

import numpy as np
import pytest
import SimpleITK as sitk

from gvsl_app.io.images import write_vector_field
from gvsl_app.io.outputs import IncompleteWriteError
from gvsl_app.io.volume import Volume

_A, _B = np.radians(10.0), np.radians(37.0)
OBLIQUE = np.array([[np.cos(_A), -np.sin(_A), 0.0], [np.sin(_A), np.cos(_A), 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, np.cos(_B), -np.sin(_B)], [0.0, np.sin(_B), np.cos(_B)]]
)


@pytest.fixture()
def field_on_grid():
    rng = np.random.default_rng(0)
    field = rng.normal(0, 3, (19, 13, 11, 3)).astype(np.float32)
    flip = np.diag([1.0, 1.0, -1.0])  # a left-handed grid too (det < 0: NIfTI's qfac)
    grid = Volume(np.zeros(field.shape[:3], np.uint8), (0.7, 1.3, 2.1), (12.5, -40.0, 7.25), (OBLIQUE @ flip).ravel())
    return field, grid


@pytest.mark.parametrize("name", ["field.nii.gz", "field.nii", "field.mha"])
def test_the_field_reads_back_as_simpleitks_own_file_with_its_geometry(field_on_grid, tmp_path, name):
    field, grid = field_on_grid
    ours = write_vector_field(field, grid, tmp_path / name)
    theirs = sitk.Cast(sitk.GetImageFromArray(field, isVector=True), sitk.sitkVectorFloat64)
    theirs.SetSpacing(grid.spacing)
    theirs.SetOrigin(grid.origin)
    theirs.SetDirection(grid.direction)
    sitk.WriteImage(theirs, str(tmp_path / f"sitk_{name}"))
    a, b = sitk.ReadImage(str(ours)), sitk.ReadImage(str(tmp_path / f"sitk_{name}"))
    assert a.GetPixelID() == b.GetPixelID() == sitk.sitkVectorFloat64
    assert a.GetSize() == b.GetSize() == (11, 13, 19)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), grid.direction, atol=1e-5)
    transform = sitk.DisplacementFieldTransform(a)  # what a user does with it
    assert transform.GetDimension() == 3


def test_a_field_that_is_not_a_vector_field_is_refused_and_nothing_is_left(field_on_grid, tmp_path):
    field, grid = field_on_grid
    with pytest.raises(ValueError, match=r"\(z, y, x, 3\)"):
        write_vector_field(field[..., :2], grid, tmp_path / "bad.nii.gz")
    assert list(tmp_path.iterdir()) == []


def test_a_field_cut_short_on_disk_is_an_incomplete_write(field_on_grid, tmp_path, monkeypatch):
    from gvsl_app.io import nifti

    field, grid = field_on_grid
    real = nifti.write_vector_nifti
    monkeypatch.setattr("gvsl_app.io.images.write_vector_nifti", lambda f, m, path, level: real(f[:5], m, path, level))
    with pytest.raises(IncompleteWriteError, match="field.nii"):
        write_vector_field(field, grid, tmp_path / "field.nii")
    assert not (tmp_path / "field.nii").exists()
