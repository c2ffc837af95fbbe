"""Label explorer widget: compare any labels layer with an optional reference, structure by structure.

Works on label maps from anywhere (opened from a file, made by our segmenter or another
tool): a sortable table of volumes (mL), Dice, HD95 and ASSD in mm (the engine's
:mod:`gvsl_app.services.label_metrics`, MONAI's metrics with the voxel spacing), a click on a
row centres the view on that structure and shows it alone, and a disagreement layer marks
where the two maps differ. The maths runs in a worker thread; the table and the layer are
shown one per event-loop turn.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QPushButton,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gvsl_app.jobs.state import JobState

from . import _warmup
from ._common import LayerCombo, results_table
from ._geometry import ORIENTATION_KEY, data_to_world, same_layer_grid, volume_from_layer
from ._jobs import JobControls, refuse, start_job
from ._layers import (
    label_colormap,
    label_features,
    label_names_of,
    label_rgba,
    labels_layer_data,
    prebuild,
    upsert_layer,
    with_orientation,
)
from ._layout import fit_dock

COLUMNS = ("structure", "volume (mL)", "reference (mL)", "Dice", "HD95 (mm)", "ASSD (mm)", "note")
DISAGREEMENT_COLORS = {1: (230, 80, 60), 2: (60, 140, 230), 3: (240, 200, 40)}


def disagreement_name(labels_name: str) -> str:
    return f"{labels_name} vs reference"


class _NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (empty cells last), shown with fixed decimals."""

    def __init__(self, value: float | None, digits: int):
        super().__init__("" if value is None else f"{value:.{digits}f}")
        self.value = value

    def __lt__(self, other) -> bool:
        if isinstance(other, _NumberItem):
            a = self.value if self.value is not None else float("inf")
            b = other.value if other.value is not None else float("inf")
            return a < b
        return super().__lt__(other)


class LabelExplorerWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = JobState()
        self.result: dict | None = None
        self._worker = None
        _warmup.start()
        v = napari_viewer
        self.labels = LayerCombo(v, Labels)
        self.reference = LayerCombo(v, Labels, optional=True, fits=self._reference_fits)
        self.labels.currentTextChanged.connect(self.reference.refresh)
        self.distances = QCheckBox("surface distances (HD95, ASSD)")
        self.distances.setChecked(True)
        self.distances.setToolTip("the slow part for large maps; volumes and Dice are quick")
        self.names_button = QPushButton("Names and colours from a file…")
        self.names_button.setToolTip("ITK-SNAP label descriptions, a 3D Slicer colour table, CSV or JSON")
        self.names_button.clicked.connect(self._pick_table)
        form = QFormLayout()
        form.addRow("label map", self.labels)
        form.addRow("", self.names_button)
        form.addRow("reference", self.reference)
        form.addRow("", self.distances)
        self.controls = JobControls(self.state, "Compare")
        self.controls.run_button.clicked.connect(self.run)
        self.table = results_table(COLUMNS)
        self.table.cellClicked.connect(self.focus_row)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.controls)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.summary)
        fit_dock(self)

    def _pick_table(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Label names and colours", "", "Label tables (*.txt *.ctbl *.csv *.tsv *.json);;All files (*)"
        )
        if path:
            self.apply_label_table(path)

    def apply_label_table(self, path) -> bool:
        """Name and colour the chosen labels layer from a label table file; False (and the
        reason on the status line) when the file is not one.
        """
        from gvsl_app.io.label_tables import read_label_table

        layer = self.labels.layer()
        if layer is None:
            refuse(self.state, "choose a labels layer first", "Label explorer")
            return False
        try:
            table = read_label_table(path)
        except (OSError, ValueError) as exc:
            refuse(self.state, exc, "Label explorer")
            return False
        present = {int(v) for v in np.unique(np.asarray(layer.data)) if v != 0}
        names = {v: table.name_of(v) for v in sorted(present | set(table.names)) if v != 0}
        layer.features = label_features(names)
        layer.colormap = label_colormap({v: table.color_of(v) for v in names})
        missing = sorted(present - set(table.names))
        self.summary.setText(
            f"names and colours from {path}"
            + (f"; values {', '.join(map(str, missing[:8]))} are not in it (named by value)" if missing else "")
        )
        return True

    def _reference_fits(self, layer) -> bool:
        """A default reference: another labels layer on the label map's grid."""
        chosen = self.labels.layer()
        return chosen is not None and layer is not chosen and same_layer_grid(layer, chosen)

    def run(self):
        if self.state.running:
            return None
        layer, ref_layer = self.labels.layer(), self.reference.layer()
        if layer is None:
            refuse(self.state, "choose a labels layer to explore", "Label explorer")
            return None
        try:
            pred = volume_from_layer(layer, labels=True)
            ref = volume_from_layer(ref_layer, labels=True) if ref_layer is not None else None
        except Exception as exc:
            refuse(self.state, exc, "Label explorer")
            return None
        if ref is not None and not same_layer_grid(ref_layer, layer):
            refuse(
                self.state,
                f"the reference {ref_layer.name!r} does not lie on the grid of {layer.name!r} (shape {ref.shape} vs "
                f"{pred.shape}, or another spacing/origin/direction): resample it onto the label map first, e.g. "
                "with `gvsl evaluate-labels --resample`",
                "Label explorer",
            )
            return None
        names = {**(label_names_of(ref_layer) if ref_layer is not None else {}), **label_names_of(layer)}
        with_distances = self.distances.isChecked()
        out_name = disagreement_name(layer.name)
        orientation = layer.metadata.get(ORIENTATION_KEY)  # the disagreement map is on the label map's grid
        existing = frozenset(lay.name for lay in self.viewer.layers)

        def work(progress):
            _warmup.ready()  # the engine is imported in the background after start
            from gvsl_app.services.label_metrics import (
                DISAGREEMENT_NAMES,
                compare_label_maps,
                disagreement_map,
                structure_centres,
            )

            progress("comparing", 0.1)
            rows = compare_label_maps(pred, ref, names, distances=with_distances)
            progress("centres", 0.8)
            centres = structure_centres(np.asarray(pred.array), [r.label for r in rows])
            diff = None
            if ref is not None:
                diff = prebuild(
                    with_orientation(
                        labels_layer_data(
                            pred.with_array(disagreement_map(np.asarray(pred.array), np.asarray(ref.array))),
                            out_name,
                            DISAGREEMENT_NAMES,
                            DISAGREEMENT_COLORS,
                            opacity=0.7,
                        ),
                        orientation,
                    ),
                    existing,
                )
            return {"rows": rows, "centres": centres, "layer": layer, "disagreement": diff}

        self._worker = start_job(work, self.state, self._show, "Label explorer")
        return self._worker

    def _show(self, result: dict) -> list:
        self.result = result
        steps = [lambda: self._fill_table(result)]
        diff = result["disagreement"]
        if diff is not None:  # a new layer (built in the worker), or a re-run's in-place update
            steps.append(lambda: upsert_layer(self.viewer, diff))
        return steps

    def _fill_table(self, result: dict) -> None:
        from gvsl_app.services.label_metrics import summarise_structures  # imported by the job

        rows, layer = result["rows"], result["layer"]
        self.table.setSortingEnabled(False)  # filling a sorted table reorders rows under the loop
        self.table.setRowCount(len(rows))
        for i, r in enumerate(rows):
            name = QTableWidgetItem(r.name)
            name.setData(Qt.ItemDataRole.UserRole, r.label)
            rgba = label_rgba(layer, r.label)
            red, green, blue = (float(c) for c in rgba[:3])
            name.setBackground(QColor.fromRgbF(red, green, blue, 0.6))
            cells = [
                name,
                _NumberItem(r.volume_ml, 2),
                _NumberItem(r.ref_volume_ml, 2),
                _NumberItem(r.dice, 3),
                _NumberItem(r.hd95_mm, 2),
                _NumberItem(r.assd_mm, 2),
                QTableWidgetItem(r.note),
            ]
            for col, item in enumerate(cells):
                self.table.setItem(i, col, item)
        self.table.setSortingEnabled(True)
        s = summarise_structures(rows)
        if s["dice"]["n"]:
            undefined = len(rows) - s["dice"]["n"]
            self.summary.setText(
                f"mean Dice {s['dice']['mean']:.3f} over {s['dice']['n']} structures"
                + (f" ({undefined} absent from both maps, left out)" if undefined else "")
                + (f"; mean HD95 {s['hd95_mm']['mean']:.2f} mm" if s["hd95_mm"]["n"] else "")
                + ". Click a row to go to that structure."
            )
        else:
            self.summary.setText(f"{len(rows)} structures. Click a row to go to that structure.")

    def focus_row(self, row: int, _column: int = 0) -> None:
        """Centre the view on the row's structure and show that structure alone."""
        if self.result is None:
            return
        item = self.table.item(row, 0)
        if item is None:
            return
        value = int(item.data(Qt.ItemDataRole.UserRole))
        layer = self.result["layer"]
        if layer not in self.viewer.layers:
            return
        layer.selected_label = value
        layer.show_selected_label = True
        centre = self.result["centres"].get(value)
        if centre is None:  # absent from the label map (only in the reference)
            return
        world = (data_to_world(layer) @ np.array([*centre, 1.0]))[:3]
        dims = self.viewer.dims
        # a 3D layer lies on the viewer's last three world axes (a 4D layer adds leading ones)
        axes = list(range(dims.ndim - 3, dims.ndim))
        dims.set_point(axes, tuple(float(w) for w in world))
        point = dict(enumerate(float(p) for p in dims.point)) | dict(zip(axes, map(float, world), strict=True))
        # napari 0.9 moved the camera to viewer.scene (viewer.camera still works, deprecated)
        scene = getattr(self.viewer, "scene", None)
        camera = scene.camera if scene is not None and hasattr(scene, "camera") else self.viewer.camera
        # the camera centre is in displayed axes, in display order (the user may have rolled them)
        camera.center = tuple(point[a] for a in dims.displayed)
