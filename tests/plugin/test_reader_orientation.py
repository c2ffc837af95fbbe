"""The reader on scans whose voxel axes are not the world axes (coronal, sagittal, oblique).

napari slices along world axes: a layer whose voxel axes are permuted relative to them
crashed its 2D view (``LinAlgError: Singular matrix`` while drawing). The reader shows such
a scan transposed to the world axis order, physically identical, and the writer saves it on
the file's own grid again. Every check here is against SimpleITK's own index <-> physical
point maps of the file, in a real (shown) viewer that draws each slice.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

HEAD = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz")
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)
SAGITTAL = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)


def _rotation_x(degrees: float) -> tuple[float, ...]:
    a = np.deg2rad(degrees)
    return (1.0, 0.0, 0.0, 0.0, np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a))


def _write(path: Path, direction, shape=(9, 11, 13), spacing=(0.8, 1.5, 3.0)) -> Path:
    """A random int16 scan of ``shape`` (z, y, x) written by SimpleITK with ``direction``."""
    arr = np.random.default_rng(7).integers(-1000, 1000, size=shape).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((-20.5, 31.0, 7.25))
    img.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(img, str(path))
    return path


def _show_every_slicing(viewer, layer, steps: int = 3) -> None:
    """Draw 2D slices along each world axis (several positions), then the 3D view: what crashed."""
    for axis in range(3):
        viewer.dims.order = (axis, *(a for a in range(3) if a != axis))  # slice along world axis `axis`
        lo, hi = viewer.dims.range[axis].start, viewer.dims.range[axis].stop
        for point in np.linspace(lo, hi, steps):
            viewer.dims.set_point(axis, float(point))
            viewer.screenshot(canvas_only=True)  # a real draw: the slice transform is inverted here
    viewer.dims.ndisplay = 3
    viewer.screenshot(canvas_only=True)
    viewer.dims.ndisplay = 2
    viewer.dims.order = (0, 1, 2)


def _assert_physically_identical(layer, img: sitk.Image, n: int = 40) -> None:
    """Voxels of ``layer`` sit where SimpleITK puts the file's voxels of the same value."""
    arr = sitk.GetArrayViewFromImage(img)
    rng = np.random.default_rng(0)
    corners = [np.zeros(3, int), np.asarray(layer.data.shape) - 1]
    for j in corners + [np.array([rng.integers(s) for s in layer.data.shape]) for _ in range(n)]:
        world_zyx = np.asarray(layer.data_to_world(j.astype(float)), dtype=float)
        index_xyz = np.asarray(img.TransformPhysicalPointToContinuousIndex(tuple(world_zyx[::-1].tolist())))
        np.testing.assert_allclose(index_xyz, np.rint(index_xyz), atol=1e-3)  # on a voxel centre of the file
        i = tuple(int(v) for v in np.rint(index_xyz)[::-1])
        assert layer.data[tuple(j)] == arr[i], (j, i)


def _assert_as_dicom_orient_lps(layer, img: sitk.Image) -> None:
    """What the layer shows is what ITK's reorientation to the identity direction gives."""
    ref = sitk.DICOMOrient(img, "LPS")
    np.testing.assert_array_equal(layer.data, sitk.GetArrayViewFromImage(ref))
    np.testing.assert_allclose(layer.scale, ref.GetSpacing()[::-1], rtol=1e-9)
    np.testing.assert_allclose(layer.translate, ref.GetOrigin()[::-1], atol=1e-9)


def _assert_axis_aligned(layer) -> None:
    """The layer's full data-to-world map is diagonal (scale, flips and translate only)."""
    from napari_plugin._geometry import data_to_world

    lin = data_to_world(layer)[:3, :3]
    np.testing.assert_array_equal(lin - np.diag(np.diag(lin)), np.zeros((3, 3)))


@pytest.mark.skipif(not HEAD.exists(), reason="Debian's insighttoolkit5-examples is not installed")
def test_a_coronally_acquired_head_opens_and_slices(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(HEAD), plugin="gvsl-studio")
    img = sitk.ReadImage(str(HEAD))
    assert sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(img.GetDirection()) == "LSA"
    _show_every_slicing(viewer, layer)
    _assert_axis_aligned(layer)
    np.testing.assert_array_equal(layer.affine.affine_matrix, np.eye(4))
    _assert_physically_identical(layer, img)
    _assert_as_dicom_orient_lps(layer, img)
    record = layer.metadata["gvsl_orientation"]
    assert record["file_direction"] == img.GetDirection() and record["residual_deg"] == 0.0
    assert record["file_shape"] == img.GetSize()[::-1] and sorted(record["axes"]) == [0, 1, 2]


@pytest.mark.parametrize("direction", [CORONAL, SAGITTAL], ids=["coronal", "sagittal"])
def test_a_permuted_scan_is_shown_along_the_world_axes(make_napari_viewer, tmp_path, direction):
    path = _write(tmp_path / "scan.nii.gz", direction)
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="gvsl-studio")
    _show_every_slicing(viewer, layer)
    _assert_axis_aligned(layer)
    _assert_physically_identical(layer, sitk.ReadImage(str(path)))
    assert layer.metadata["gvsl_orientation"]["axes"] != (0, 1, 2)
    # flips applied to the voxels too: positive scale, identity affine (napari's thick slices drop flipped axes)
    np.testing.assert_array_equal(layer.affine.affine_matrix, np.eye(4))
    assert np.all(np.asarray(layer.scale) > 0)
    _assert_as_dicom_orient_lps(layer, sitk.ReadImage(str(path)))


def test_float_noise_in_a_direction_is_snapped_and_written_back_exactly(make_napari_viewer, tmp_path):
    noisy = np.asarray(CORONAL) + np.array([0, 3e-7, 0, -2e-7, 0, 0, 0, 0, 4e-7])
    path = _write(tmp_path / "noisy.mha", noisy)  # MetaImage keeps the header's doubles as written
    viewer = make_napari_viewer(show=True)
    (layer,) = viewer.open(str(path), plugin="gvsl-studio")
    _show_every_slicing(viewer, layer, steps=2)
    _assert_axis_aligned(layer)  # exactly: no 'non-orthogonal slicing' from 1e-7 cosines
    assert layer.metadata["gvsl_orientation"]["snapped"]
    layer.save(str(tmp_path / "again.mha"), plugin="gvsl-studio")
    np.testing.assert_array_equal(sitk.ReadImage(str(tmp_path / "again.mha")).GetDirection(), noisy)


@pytest.mark.parametrize("degrees", [25.0, 70.0, 89.0])
def test_an_oblique_scan_opens_slices_and_says_so(make_napari_viewer, tmp_path, notifications, degrees):
    path = _write(tmp_path / "oblique.nii.gz", _rotation_x(degrees))
    viewer = make_napari_viewer(show=True)
    with pytest.warns(UserWarning, match="Non-orthogonal slicing"):  # napari's own note, not an error
        (layer,) = viewer.open(str(path), plugin="gvsl-studio")
        _show_every_slicing(viewer, layer, steps=2)
    _assert_physically_identical(layer, sitk.ReadImage(str(path)))
    record = layer.metadata["gvsl_orientation"]
    assert record["residual_deg"] == pytest.approx(min(degrees, 90.0 - degrees), abs=1e-3)
    assert any("oblique" in n for n in notifications)
    layer.save(str(tmp_path / "again.nii.gz"), plugin="gvsl-studio")
    _assert_same_file_grid(tmp_path / "again.nii.gz", path)


def _assert_same_file_grid(written: Path, original: Path) -> None:
    a, b = sitk.ReadImage(str(written)), sitk.ReadImage(str(original))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), rtol=1e-6)
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


@pytest.mark.parametrize("direction", [CORONAL, SAGITTAL], ids=["coronal", "sagittal"])
def test_a_permuted_scan_is_written_back_on_its_own_grid(make_napari_viewer, tmp_path, direction):
    path = _write(tmp_path / "scan.nii.gz", direction)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="gvsl-studio")
    layer.save(str(tmp_path / "saved.nii.gz"), plugin="gvsl-studio")
    _assert_same_file_grid(tmp_path / "saved.nii.gz", path)
    # what napari shows is what the file holds, point by point
    _assert_physically_identical(layer, sitk.ReadImage(str(tmp_path / "saved.nii.gz")))


def test_a_result_on_a_reoriented_grid_is_written_on_the_files_grid(make_napari_viewer, tmp_path):
    """A label map made from the layer (as the segmentation widget does) lands on the scan's grid."""
    from napari_plugin._geometry import ORIENTATION_KEY, volume_from_layer
    from napari_plugin._layers import labels_layer_data, with_orientation

    path = _write(tmp_path / "scan.nii.gz", CORONAL)
    viewer = make_napari_viewer()
    (layer,) = viewer.open(str(path), plugin="gvsl-studio")
    image = volume_from_layer(layer)  # the engine's Volume, in the shown (axis-aligned) frame
    mask = image.with_array((image.array > 0).astype(np.uint8))
    data = with_orientation(labels_layer_data(mask, "scan_seg"), layer.metadata[ORIENTATION_KEY])
    labels = viewer.add_labels(data[0], **data[1])
    labels.save(str(tmp_path / "scan_seg.nii.gz"), plugin="gvsl-studio")
    seg, scan = sitk.ReadImage(str(tmp_path / "scan_seg.nii.gz")), sitk.ReadImage(str(path))
    assert seg.GetSize() == scan.GetSize() and seg.GetDirection() == scan.GetDirection()
    np.testing.assert_allclose(seg.GetOrigin(), scan.GetOrigin(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(scan) > 0)
    # a label map drawn by hand (no record) is written as shown: another grid, the same place
    plain = viewer.add_labels(np.asarray(labels.data), scale=labels.scale, translate=labels.translate)
    plain.affine = labels.affine
    plain.save(str(tmp_path / "drawn.nii.gz"), plugin="gvsl-studio")
    drawn = sitk.ReadImage(str(tmp_path / "drawn.nii.gz"))
    assert drawn.GetSize() == tuple(int(n) for n in labels.data.shape[::-1])
    _assert_physically_identical(plain, drawn)
