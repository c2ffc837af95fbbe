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
    # every column shows its header and values, and the table fits the 380 px GVSL column
    head = w.table.horizontalHeader()
    widths = [w.table.columnWidth(c) for c in range(w.table.columnCount())]
    assert all(width >= head.sectionSizeHint(c) for c, width in enumerate(widths)), widths
    assert sum(widths) <= 360, widths


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
    w.cube_size.setValue(32)
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
    assert "(hypercolumn)" in w.canvas.panels[0]["title"] and "5-NN" in w.canvas.panels[1]["title"]
    assert w.label_list.count() == 7
    # every level's scores, A and B side by side, as in the two embeddings' reports
    table = [[w.level_table.item(r, c).text() for c in range(5)] for r in range(w.level_table.rowCount())]
    assert [row[0] for row in table] == ["decoder-1", "decoder-2", "decoder-3", "decoder-4", "hypercolumn"]
    for tag, res in enumerate(w.results):
        for row in table:
            scores = res.record.levels[row[0]]
            assert row[1 + 2 * tag : 3 + 2 * tag] == [f"{scores['silhouette']:.3f}", f"{scores['knn5']:.3f}"]

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


def _clusters(viewer, ckpt, compare: bool):
    from napari_plugin._clusters import ClustersWidget

    w = ClustersWidget(viewer)
    viewer.window.add_dock_widget(w, name="Feature clusters")
    w.weights_a.add_path(str(ckpt))
    if compare:
        w.weights_b.combo.setCurrentIndex(w.weights_b.combo.findData("random"))
    w.per_label.setValue(25)
    w.cube_size.setValue(32)
    w.device.setCurrentText("cpu")
    return w


def _count_calls(monkeypatch, obj, name: str) -> list:
    """Record each call of ``obj.name`` (still calling it) and return the record."""
    calls: list = []
    original = getattr(obj, name)

    def spy(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, spy)
    return calls


def _ringed(w) -> list[np.ndarray]:
    """The plot's highlight: the offsets of each panel's ring scatter."""
    return [np.asarray(h.get_offsets()) for h in w.canvas._highlights]


def test_clusters_selecting_in_the_viewer_highlights_the_plot(qtbot, monkeypatch, cardiac_viewer, gvsl_ckpt):
    from napari_plugin._clusters import POINTS

    viewer = cardiac_viewer
    w = _clusters(viewer, gvsl_ckpt, compare=True)
    _wait(qtbot, w)
    assert w.state.status == "done", w.state.message
    layer = viewer.layers[POINTS]
    feats = layer.features
    n = len(feats)
    tsne = {tag: feats[[f"tsne_x_{tag}", f"tsne_y_{tag}"]].to_numpy() for tag in "AB"}
    redraws = _count_calls(monkeypatch, w.canvas, "highlight")

    def selected() -> np.ndarray:
        return layer.features["selected"].to_numpy(bool)

    # Napari's select tool assigns layer.selected_data (a box release assigns an index array,
    # possibly several times per gesture): the plot follows once, with the picked points.
    picked = np.array([3, 40, 41, 100, n - 1])
    layer.selected_data = {3}
    layer.selected_data = {3, 40}
    layer.selected_data = np.array(picked)
    qtbot.waitUntil(lambda: selected().sum() == len(picked), timeout=5000)
    qtbot.wait(50)  # any further queued update would land here
    assert len(redraws) == 1
    expected = np.zeros(n, bool)
    expected[picked] = True
    np.testing.assert_array_equal(selected(), expected)
    for tag, ring in zip("AB", _ringed(w)):
        np.testing.assert_allclose(ring, tsne[tag][picked])
    assert layer.shown.all()  # a pick in the viewer hides nothing
    assert f"{len(picked)} of {n} voxels selected" in w.info.text()

    # Deselecting in the viewer clears the plot.
    layer.selected_data = set()
    qtbot.waitUntil(lambda: not selected().any(), timeout=5000)
    assert all(ring.shape == (0, 2) for ring in _ringed(w))

    # Plot -> viewer still works and selects the points in the layer, without bouncing back.
    xy = tsne["B"]
    x0, y0 = np.percentile(xy, 20, axis=0)
    x1, y1 = np.percentile(xy, 70, axis=0)
    box = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    assert 0 < box.sum() < n
    redraws.clear()
    w.canvas.select_box(1, (x0, y0), (x1, y1))
    qtbot.wait(50)
    assert len(redraws) == 1
    np.testing.assert_array_equal(selected(), box)
    np.testing.assert_array_equal(layer.shown, box)
    assert set(layer.selected_data) == set(np.flatnonzero(box).tolist())
    np.testing.assert_allclose(_ringed(w)[0], tsne["A"][box])

    # A shift-click in the viewer extends the plot's selection (napari toggles the clicked index
    # in selected_data, which now holds the plot's selection).
    extra = int(np.flatnonzero(~box)[0])
    layer.selected_data = set(layer.selected_data) ^ {extra}
    box[extra] = True
    qtbot.waitUntil(lambda: selected()[extra], timeout=5000)
    np.testing.assert_array_equal(selected(), box)
    np.testing.assert_allclose(_ringed(w)[1], tsne["B"][box])

    # Clicking on empty canvas ends the selection everywhere, as "Clear selection" does.
    layer.selected_data = set()
    qtbot.waitUntil(lambda: not selected().any(), timeout=5000)
    assert layer.shown.all()
    assert all(ring.shape == (0, 2) for ring in _ringed(w))

    # Once the widget is gone, napari's select tool must not call into it (its timer is deleted).
    from qtpy import sip

    slots = layer.selected_data.events.items_changed
    connected = len(slots)
    sip.delete(w)
    assert len(slots) == connected - 1
    layer.selected_data = {1, 2}
    qtbot.wait(50)


def test_clusters_viewer_link_follows_reruns_and_ends_with_the_layer(qtbot, cardiac_viewer, gvsl_ckpt):
    from napari_plugin._clusters import POINTS

    viewer = cardiac_viewer
    w = _clusters(viewer, gvsl_ckpt, compare=False)
    _wait(qtbot, w)
    assert w.state.status == "done", w.state.message
    layer = viewer.layers[POINTS]
    slots = layer.selected_data.events.items_changed
    connected = len(slots)
    layer.selected_data = {1, 2}
    qtbot.waitUntil(lambda: layer.features["selected"].sum() == 2, timeout=5000)

    # A re-run updates the layer in place: one connection still, and the old indices are dropped.
    _wait(qtbot, w)
    assert w.state.status == "done", w.state.message
    assert viewer.layers[POINTS] is layer and len(slots) == connected
    assert len(layer.selected_data) == 0 and not layer.features["selected"].any()
    assert _ringed(w)[0].shape == (0, 2)
    layer.selected_data = {5}
    qtbot.waitUntil(lambda: _ringed(w)[0].shape == (1, 2), timeout=5000)

    # A re-run after the user renamed the layer makes a new one: the link moves to it.
    layer.name = "my voxels"
    _wait(qtbot, w)
    assert w.state.status == "done", w.state.message
    new = viewer.layers[POINTS]
    assert new is not layer and len(slots) == connected - 1
    layer.selected_data = {7, 8, 9}
    qtbot.wait(50)
    assert _ringed(w)[0].shape == (0, 2)  # the old layer no longer drives the plot
    new.selected_data = {7, 8}
    qtbot.waitUntil(lambda: _ringed(w)[0].shape == (2, 2), timeout=5000)

    # Removing the layer disconnects; its selection and the plot's no longer reach each other.
    new_slots = new.selected_data.events.items_changed
    before = len(new_slots)
    viewer.layers.remove(new)
    assert len(new_slots) == before - 1
    assert _ringed(w)[0].shape == (0, 2) and "removed" in w.info.text()
    new.selected_data = {1, 2, 3}
    qtbot.wait(50)
    assert _ringed(w)[0].shape == (0, 2)
    w.canvas.select_box(0, (-1e9, -1e9), (1e9, 1e9))  # a plot selection with no layer is a no-op
    assert _ringed(w)[0].shape == (0, 2) and len(new.selected_data) == 3


def test_structure_names_fall_back_to_the_ground_truth():
    from napari_plugin._segmentation import merge_names

    assert merge_names({1: "1", 2: "label 2", 3: "Aorta"}, {1: "LV", 2: "RV", 3: "LA"}) == {
        1: "LV",
        2: "RV",
        3: "Aorta",
    }
    assert merge_names({1: "LV"}, {}) == {1: "LV"}


def test_adding_2d_layers_with_the_segmentation_docked(make_napari_viewer):
    """A 2D image and its 2D labels (someone's cell segmentation) never fit a 3D widget, and
    adding them must not fail inside the widget's chooser refresh.
    """
    viewer = make_napari_viewer()
    w = _segmentation(viewer)
    viewer.add_image(np.random.default_rng(0).random((16, 16)).astype(np.float32), name="cells")
    viewer.add_labels(np.zeros((16, 16), np.int32), name="cells labels")
    assert "cells labels" in viewer.layers
    assert w.image.currentText() == "cells" and w.reference.currentText() == "(none)"


def test_thick_slices_cover_every_spatial_axis_whatever_is_displayed(make_napari_viewer):
    """The embedded voxels (Feature clusters) and the displacement arrows stay visible around
    the slice on whichever axis is sliced later, even when the job ended in a 3D view.
    """
    from napari_plugin._common import thick_slices

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 4, 6, 8), np.float32), name="time series")  # axis 0 is time
    viewer.dims.ndisplay = 3
    viewer.dims.margin_left = (0.0, 0.0, 0.5, 0.0)  # a margin the user set is kept
    thick_slices(viewer, 2.0)
    assert viewer.dims.margin_left[0] == 0.0  # time is not thick-sliced
    assert viewer.dims.margin_left[2] == 0.5
    assert viewer.dims.margin_left[1] > 2.0 and viewer.dims.margin_left[3] > 2.0
    assert viewer.dims.margin_right[1] == viewer.dims.margin_right[3] == viewer.dims.margin_left[1]


def test_the_table_says_n_a_for_a_structure_in_neither_map(make_napari_viewer):
    from gvsl_app.services.segment_report import SegmentReport, SpacingReport
    from napari_plugin._segmentation import SegmentationWidget

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((4, 4, 4), np.uint8), name="seg")
    w = SegmentationWidget(viewer)
    rep = SegmentReport(
        image="",
        weights="seg.pt",
        segmenter="seg.pt (given)",
        device="cpu",
        window=48,
        spacing=SpacingReport([1.0, 1.0, 1.0], None, None, None),
        n_classes=3,
        label_names={"1": "LV", "2": "RV"},
        volume_ml={"1": 1.0, "2": 0.0},
        reference_volume_ml={"1": 1.0, "2": 0.0},
        dice={"1": 0.8, "2": float("nan")},  # RV in neither map: no Dice
        mean_dice=0.8,
        seconds={"total_s": 1.0},
    )
    w._fill_table(layer, rep)
    cells = {w.table.item(r, 0).text(): w.table.item(r, 3).text() for r in range(w.table.rowCount())}
    assert cells == {"LV": "0.800", "RV": "n/a"}
    assert "mean Dice 0.800 over 1 structures" in w.summary.text()


def test_the_feature_clusters_rows_are_gvsl_embeds_options(make_napari_viewer):
    """The clusters widget's sampling and working size come from EmbedOptions, as `gvsl embed`'s:
    same defaults and ranges (the widget sampled 300 voxels per label where the CLI took 500).
    """
    from gvsl_app.cli import build_parser
    from gvsl_app.options import EmbedOptions, from_args
    from napari_plugin._clusters import ClustersWidget

    w = ClustersWidget(make_napari_viewer())
    cli = from_args(EmbedOptions, build_parser().parse_args(["embed", "i.nii.gz", "l.nii.gz", "--out", "o"]))
    assert (w.per_label.value(), w.cube_size.value()) == (cli.per_label, cli.size)
    assert (w.per_label.maximum(), w.cube_size.minimum()) == (5000, 16)
    # the feature level: gvsl embed's choices; the widget opens on the sample pair's best level and says why
    from napari_plugin._clusters import OPEN_LEVEL

    assert [w.level.itemText(i) for i in range(w.level.count())] == list(
        EmbedOptions.__dataclass_fields__["level"].metadata["choices"].values()
    )
    assert w.level.currentText() == OPEN_LEVEL == "hypercolumn"
    assert "feature_levels.md" in w.level.toolTip() and "sample pair" in w.level.toolTip()


def test_a_segmentation_of_a_coronal_scan_is_saved_on_the_scans_grid(qtbot, make_napari_viewer, seg_ckpt, tmp_path):
    """The reader shows a coronally stored scan transposed; its segmentation is written on the file's grid."""
    import SimpleITK as sitk

    arr = np.random.default_rng(5).integers(0, 1000, size=(20, 24, 28)).astype(np.int16)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 2.5, 1.2))
    img.SetOrigin((-12.0, 40.0, 3.5))
    img.SetDirection((1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # coronal slices
    sitk.WriteImage(img, str(tmp_path / "head.nii.gz"))
    viewer = make_napari_viewer()
    (image,) = viewer.open(str(tmp_path / "head.nii.gz"), plugin="gvsl-studio")
    assert image.data.shape != arr.shape  # shown along the world axes
    w = _segmentation(viewer)
    w.weights.add_path(str(seg_ckpt))
    w.image.set_layer("head")
    _wait(qtbot, w)
    assert w.state.status == "done", w.state.message
    layer = viewer.layers["head segmentation"]
    np.testing.assert_allclose(data_to_world(layer), data_to_world(image), atol=1e-9)
    layer.save(str(tmp_path / "head_seg.nii.gz"), plugin="gvsl-studio")
    seg = sitk.ReadImage(str(tmp_path / "head_seg.nii.gz"))
    assert seg.GetSize() == img.GetSize() and seg.GetDirection() == img.GetDirection()
    np.testing.assert_allclose(seg.GetOrigin(), img.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(seg.GetSpacing(), img.GetSpacing(), rtol=1e-6)
    from helpers import in_file_order

    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(seg), in_file_order(layer.data, image.metadata["gvsl_orientation"])
    )
