"""Segmentation and feature-clusters widgets: real flows, result layers, tables, selection."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
from napari_plugin._geometry import data_to_world  # noqa: E402

pytestmark = pytest.mark.gui


def _wait(qtbot, w, timeout=180_000):
    from qtpy.QtCore import Qt

    qtbot.mouseClick(w.controls.run_button, Qt.LeftButton)
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=timeout)


def _segmentation(viewer):
    from napari_plugin._segmentation import SegmentationWidget

    w = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segmentation")
    w.device.setCurrentText("cpu")
    return w


def test_a_job_that_cannot_start_says_why_on_the_status_line(make_napari_viewer, notifications):
    w = _segmentation(make_napari_viewer())
    assert w.run() is None
    assert "choose an image layer" in w.controls.status.text()
    assert any("choose an image layer" in n for n in notifications)  # and as a notification


def test_ground_truth_defaults_to_the_labels_on_the_chosen_images_grid(cardiac_viewer):
    viewer = cardiac_viewer
    w = _segmentation(viewer)
    w.image.set_layer("cardiac fixed")
    assert w.reference.currentText() == "cardiac fixed labels"
    moving, fixed_labels = viewer.layers["cardiac moving"], viewer.layers["cardiac fixed labels"]
    assert not np.allclose(data_to_world(moving), data_to_world(fixed_labels))  # the two subjects' grids differ
    w.image.set_layer("cardiac moving")
    assert w.reference.currentText() == "cardiac moving labels"
    w.reference.set_layer("(none)")  # the user's choice is kept from then on
    w.image.set_layer("cardiac fixed")
    assert w.reference.currentText() == "(none)"


def test_segmentation_flow_layer_and_table(qtbot, cardiac_viewer, seg_ckpt):
    from gvsl_app.jobs.state import shared_checkpoints

    viewer = cardiac_viewer
    w = _segmentation(viewer)
    shared_checkpoints(viewer).seg = str(seg_ckpt)  # as "use this checkpoint" in the training widget does
    assert w.weights.value() == str(seg_ckpt)
    w.image.set_layer("cardiac fixed")
    w.reference.set_layer("cardiac fixed labels")
    _wait(qtbot, w)
    assert w.state.status == "done", w.state.message
    layer = viewer.layers["cardiac fixed segmentation"]
    image = viewer.layers["cardiac fixed"]
    assert type(layer).__name__.lower() == "labels" and layer.data.shape == image.data.shape
    np.testing.assert_allclose(data_to_world(layer), data_to_world(image), atol=1e-9)
    np.testing.assert_array_equal(layer.data, w.result.labels.array)
    assert list(layer.features["name"][1:4]) == ["LV", "RV", "LA"]
    rep = w.result.report
    assert w.table.rowCount() == 7
    row = {w.table.item(r, 0).text(): r for r in range(w.table.rowCount())}
    assert set(row) == {"LV", "RV", "LA", "RA", "Myocardium", "Aorta", "Pulmonary artery"}
    assert w.table.item(row["Myocardium"], 3).text() == f"{rep['dice']['5']:.3f}"
    assert w.table.item(row["LV"], 2).text() == f"{rep['reference_volume_ml']['1']:.2f}"
    assert f"mean Dice {rep['mean_dice']:.3f}" in w.summary.text()


def test_segmentation_wrong_checkpoint_notifies(qtbot, cardiac_viewer, gvsl_ckpt, notifications):
    w = _segmentation(cardiac_viewer)
    w.weights.add_path(str(gvsl_ckpt))
    n_layers = len(cardiac_viewer.layers)
    _wait(qtbot, w)
    assert w.state.status == "error"
    assert any("Segmentation:" in m and "segmentation checkpoint" in m for m in notifications)
    assert len(cardiac_viewer.layers) == n_layers


def test_clusters_two_weights_selection_highlights_voxels(qtbot, cardiac_viewer, gvsl_ckpt):
    from napari_plugin._clusters import POINTS, ClustersWidget

    viewer = cardiac_viewer
    w = ClustersWidget(viewer)
    viewer.window.add_dock_widget(w, name="Feature clusters")
    assert (w.image.currentText(), w.labels.currentText()) == ("cardiac fixed", "cardiac fixed labels")
    w.weights_a.add_path(str(gvsl_ckpt))
    w.weights_b.combo.setCurrentIndex(w.weights_b.combo.findData("random"))
    w.per_label.setValue(25)
    w.size.setValue(32)
    w.device.setCurrentText("cpu")
    _wait(qtbot, w)
    assert w.state.status == "done", w.state.message
    layer = viewer.layers[POINTS]
    image = viewer.layers["cardiac fixed"]
    np.testing.assert_allclose(data_to_world(layer), data_to_world(image), atol=1e-9)
    feats = layer.features
    assert len(feats) == 7 * 25 and {"tsne_x_A", "tsne_y_B", "name", "selected"} <= set(feats.columns)
    # Each point lies on a voxel of its label.
    vox = layer.data.astype(int)
    labels = viewer.layers["cardiac fixed labels"].data
    np.testing.assert_array_equal(labels[tuple(vox.T)], feats["label"].to_numpy())
    assert len(w.canvas.panels) == 2 and "silhouette" in w.canvas.panels[0]["title"]
    assert w.label_list.count() == 7

    # Rectangle selection in the second panel -> those voxels are shown in the viewer.
    w.mode.setCurrentText("rectangle")
    xy = w.canvas.panels[1]["xy"]
    x0, y0 = np.percentile(xy, 20, axis=0)
    x1, y1 = np.percentile(xy, 70, axis=0)
    with qtbot.waitSignal(w.canvas.selected, timeout=5000):
        w.canvas.select_box(1, (x0, y0), (x1, y1))
    expected = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    assert 0 < expected.sum() < len(xy)
    np.testing.assert_array_equal(layer.features["selected"].to_numpy(), expected)
    np.testing.assert_array_equal(layer.shown, expected)
    assert f"{int(expected.sum())} of {len(xy)} voxels selected" in w.info.text()

    # Picking a label highlights that label's points.
    w.label_list.setCurrentRow(4)  # Myocardium
    np.testing.assert_array_equal(layer.shown, feats["label"].to_numpy() == 5)
    assert "Myocardium 25" in w.info.text()
    # Lasso through the real matplotlib callback.
    w.mode.setCurrentText("lasso")
    pts = w.canvas.panels[0]["xy"]
    c = pts.mean(0)
    r = pts.std(0)
    verts = [
        (c[0] - r[0], c[1] - r[1]),
        (c[0] + r[0], c[1] - r[1]),
        (c[0] + r[0], c[1] + r[1]),
        (c[0] - r[0], c[1] + r[1]),
    ]
    w.canvas._on_lasso(0, verts)
    assert 0 < layer.features["selected"].sum() < len(pts)


def test_structure_names_fall_back_to_the_ground_truth():
    from napari_plugin._segmentation import merge_names

    assert merge_names({1: "1", 2: "label 2", 3: "Aorta"}, {1: "LV", 2: "RV", 3: "LA"}) == {
        1: "LV",
        2: "RV",
        3: "Aorta",
    }
    assert merge_names({1: "LV"}, {}) == {1: "LV"}
