"""Label explorer: any labels layer against an optional reference, structure by structure."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
from napari_plugin._geometry import data_to_world  # noqa: E402

pytestmark = pytest.mark.gui


def _explorer(viewer):
    from napari_plugin._explorer import LabelExplorerWidget

    w = LabelExplorerWidget(viewer)
    viewer.window.add_dock_widget(w, name="Label explorer")
    return w


def _edited_copy(viewer):
    """The fixed labels with the LV shifted by 2 voxels along x and the aorta (6) erased."""
    ref = viewer.layers["cardiac fixed labels"]
    data = np.array(ref.data)
    lv = data == 1
    data[lv] = 0
    data[np.roll(lv, 2, axis=2) & (data == 0)] = 1
    data[data == 6] = 0
    layer = viewer.add_labels(data, name="edited", scale=ref.scale, translate=ref.translate, affine=ref.affine)
    layer.features = ref.features.copy()  # the same structure names
    return layer, np.asarray(ref.data)


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_compare_fills_a_sortable_table_marks_disagreement_and_goes_to_a_structure(qtbot, cardiac_viewer):
    viewer = cardiac_viewer
    edited, ref = _edited_copy(viewer)
    w = _explorer(viewer)
    w.labels.set_layer("edited")
    assert w.reference.currentText() == "cardiac fixed labels"  # the labels layer on the same grid
    w.run()
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    rows = {w.table.item(r, 0).text(): r for r in range(w.table.rowCount())}
    assert len(rows) == 7
    lv_dice = float(w.table.item(rows["LV"], 3).text())
    assert lv_dice == pytest.approx(_dice(np.asarray(edited.data) == 1, ref == 1), abs=1e-3)
    ao = rows[next(n for n in rows if n.lower().startswith("ao"))]
    assert w.table.item(ao, 3).text() == "0.000" and "absent from the label map" in w.table.item(ao, 6).text()
    assert w.table.item(ao, 4).text() == ""  # no distance to a structure that is not there
    assert float(w.table.item(rows["LV"], 4).text()) > 0  # HD95 in mm of the shifted LV
    # sorting by Dice puts the missing aorta first
    w.table.sortItems(3)
    assert w.table.item(0, 3).text() == "0.000"
    # the disagreement layer: 1 only in the edited map, 2 only in the reference
    diff = np.asarray(viewer.layers["edited vs reference"].data)
    e = np.asarray(edited.data)
    assert np.array_equal(diff == 1, (e != 0) & (ref == 0)) and np.array_equal(diff == 2, (e == 0) & (ref != 0))
    assert (diff == 2).sum() >= (ref == 6).sum()  # the erased aorta is all "only in the reference"
    # a click on the LV row shows the LV alone and moves the view to its centre
    lv_row = next(r for r in range(w.table.rowCount()) if w.table.item(r, 0).text() == "LV")
    w.focus_row(lv_row)
    assert edited.selected_label == 1 and edited.show_selected_label
    centre = np.argwhere(e == 1).mean(axis=0)
    world = (data_to_world(edited) @ np.array([*centre, 1.0]))[:3]
    np.testing.assert_allclose(viewer.dims.point[-3:], world, atol=np.max(edited.scale))


def test_a_reference_on_another_grid_is_refused_with_the_reason(cardiac_viewer):
    viewer = cardiac_viewer
    w = _explorer(viewer)
    w.labels.set_layer("cardiac fixed labels")
    w.reference.set_layer("cardiac moving labels")
    assert w.run() is None
    assert "does not lie on the grid" in w.controls.status.text()


def test_volumes_only_without_a_reference(qtbot, cardiac_viewer):
    viewer = cardiac_viewer
    w = _explorer(viewer)
    w.labels.set_layer("cardiac moving labels")
    w.reference.set_layer("(none)")
    w.run()
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    layer = viewer.layers["cardiac moving labels"]
    voxel_ml = float(np.prod(layer.scale)) / 1000
    rows = {w.table.item(r, 0).text(): r for r in range(w.table.rowCount())}
    assert float(w.table.item(rows["LV"], 1).text()) == pytest.approx(
        (np.asarray(layer.data) == 1).sum() * voxel_ml, abs=0.01
    )
    assert w.table.item(rows["LV"], 3).text() == ""  # no Dice without a reference
    assert "cardiac moving labels vs reference" not in viewer.layers


def test_names_and_colours_chosen_from_a_slicer_colour_table(cardiac_viewer, tmp_path):
    from napari_plugin._layers import label_names_of, label_rgba

    viewer = cardiac_viewer
    w = _explorer(viewer)
    w.labels.set_layer("cardiac fixed labels")
    table = tmp_path / "heart.ctbl"
    table.write_text("# Color table file heart.ctbl\n0 background 0 0 0 0\n1 left_ventricle 200 10 30 255\n")
    assert w.apply_label_table(table)
    layer = viewer.layers["cardiac fixed labels"]
    names = label_names_of(layer)
    assert names[1] == "left_ventricle" and names[2] == "Label 2"  # the table names value 1 only
    np.testing.assert_allclose(label_rgba(layer, 1)[:3], np.array([200, 10, 30]) / 255, atol=1e-6)
    assert "not in it" in w.summary.text()
    bad = tmp_path / "bad.json"
    bad.write_text('{"1": {"name": "LV", "color": [300, 0, 0]}}')
    assert not w.apply_label_table(bad)
    assert "bad.json" in w.controls.status.text() and "0-255" in w.controls.status.text()


def test_layers_that_are_not_3d_are_never_a_default_and_adding_them_works(make_napari_viewer):
    viewer = make_napari_viewer()
    w = _explorer(viewer)
    viewer.add_labels(np.zeros((16, 16), np.int32), name="a")  # a user's ordinary 2D labels
    viewer.add_labels(np.zeros((16, 16), np.int32), name="b")
    viewer.add_labels(np.zeros((2, 4, 4, 4), np.int32), name="c")  # and a 4D one
    assert {"a", "b", "c"} <= {layer.name for layer in viewer.layers}
    assert w.labels.currentText() == "a" and w.reference.currentText() == "(none)"
    assert w.run() is None and "3D" in w.controls.status.text()  # explained when asked to compare


def _two_structures() -> np.ndarray:
    a = np.zeros((32, 40, 48), np.int32)
    a[2:6, 30:36, 3:9] = 1  # centre (z, y, x) = (3.5, 32.5, 5.5)
    a[20:30, 5:10, 35:45] = 2
    return a


def _compare_and_click(qtbot, w, name: str) -> None:
    w.distances.setChecked(False)
    w.run()
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    w.focus_row(next(r for r in range(w.table.rowCount()) if w.table.item(r, 0).text() == name))


def test_a_row_click_centres_the_structure_in_rolled_views_and_beside_4d_layers(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_labels(_two_structures(), name="seg", scale=(3.0, 1.0, 1.0))
    w = _explorer(viewer)
    viewer.dims.order = (1, 0, 2)  # the user rolled the axes: y is sliced, (z, x) displayed
    _compare_and_click(qtbot, w, "label 1")
    world = np.array([3.5 * 3.0, 32.5, 5.5])
    np.testing.assert_allclose(viewer.dims.point, world, atol=1.6)  # snapped to a slice
    np.testing.assert_allclose(viewer.camera.center[-2:], world[list(viewer.dims.displayed)], atol=1e-6)
    # a 4D layer (e.g. a time series) in the viewer: the labels live on the last three world axes
    viewer4 = make_napari_viewer()
    viewer4.add_image(np.zeros((3, 32, 40, 48), np.float32), name="time series")
    viewer4.add_labels(_two_structures(), name="seg")
    w4 = _explorer(viewer4)
    time_point = viewer4.dims.point[0]
    _compare_and_click(qtbot, w4, "label 1")
    np.testing.assert_allclose(viewer4.dims.point[-3:], (3.5, 32.5, 5.5), atol=0.51)  # snapped to a slice
    assert viewer4.dims.point[0] == time_point  # the time axis is left alone
    np.testing.assert_allclose(viewer4.camera.center[-2:], (32.5, 5.5), atol=1e-6)


def test_the_disagreement_of_two_coronal_label_maps_is_saved_on_their_files_grid(qtbot, make_napari_viewer, tmp_path):
    """The reader shows coronally stored label maps transposed; the disagreement map lands on their file grid."""
    import SimpleITK as sitk

    from napari_plugin._explorer import disagreement_name

    ref = np.zeros((10, 12, 14), np.uint8)
    ref[2:7, 3:9, 4:11] = 1
    pred = np.roll(ref, 2, axis=2)
    for name, arr in (("ref_seg", ref), ("pred_seg", pred)):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 2.0, 3.0))
        img.SetOrigin((5.0, -8.0, 12.0))
        img.SetDirection((1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # coronal slices
        sitk.WriteImage(img, str(tmp_path / f"{name}.nii.gz"))
    viewer = make_napari_viewer()
    for name in ("ref_seg", "pred_seg"):
        viewer.open(str(tmp_path / f"{name}.nii.gz"), plugin="gvsl-studio")
    w = _explorer(viewer)
    w.labels.set_layer("pred_seg")
    w.reference.set_layer("ref_seg")
    w.run()
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    viewer.layers[disagreement_name("pred_seg")].save(str(tmp_path / "diff.nii.gz"), plugin="gvsl-studio")
    diff = sitk.ReadImage(str(tmp_path / "diff.nii.gz"))
    assert diff.GetSize() == (14, 12, 10) and diff.GetDirection() == img.GetDirection()
    np.testing.assert_allclose(diff.GetOrigin(), img.GetOrigin(), atol=1e-5)
    values = sitk.GetArrayFromImage(diff)
    assert set(np.unique(values[(pred > 0) & (ref == 0)])) == {1}  # only in the label map, on the file's voxels
    assert set(np.unique(values[(ref > 0) & (pred == 0)])) == {2}  # only in the reference
