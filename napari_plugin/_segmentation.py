"""Segmentation widget: run a fine-tuned checkpoint on an image layer; Dice and volume table."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from napari.layers import Image, Labels
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QFormLayout, QLabel, QTableWidgetItem, QVBoxLayout, QWidget

from gvsl_app.jobs.state import JobState, shared_checkpoints

from . import _warmup
from ._common import LayerCombo, WeightsChooser, device_combo, results_table
from ._geometry import ORIENTATION_KEY, same_layer_grid, volume_from_layer
from ._jobs import JobControls, refuse, start_job
from ._layers import label_names_of, label_rgba, labels_layer_data, prebuild, upsert_layer, with_orientation
from ._layout import fit_dock

if TYPE_CHECKING:  # the engine is imported in the background after start (see _warmup)
    from gvsl_app.services.segment_report import SegmentReport, SegmentResult

COLUMNS = ("structure", "mL", "ref. mL", "Dice")  # short: the dock is 380 px and every column should show


def result_name(image_name: str) -> str:
    return f"{image_name} segmentation"


class SegmentationWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = JobState()
        self.result = None
        self._worker = None
        _warmup.start()
        v = napari_viewer
        self.image = LayerCombo(v, Image)
        # a labels layer on the chosen image's grid is taken as its ground truth by default
        self.reference = LayerCombo(v, Labels, optional=True, fits=self._on_image_grid)
        self.image.currentTextChanged.connect(self.reference.refresh)
        self.weights = WeightsChooser(shared_checkpoints(v), "seg")
        self.device = device_combo()
        form = QFormLayout()
        form.addRow("image", self.image)
        form.addRow("ground truth", self.reference)
        form.addRow("checkpoint", self.weights)
        form.addRow("device", self.device)
        self.controls = JobControls(self.state, "Segment")
        self.controls.run_button.clicked.connect(self.run)
        self.table = results_table(COLUMNS)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.controls)
        lay.addWidget(self.table, 1)
        lay.addWidget(self.summary)
        fit_dock(self)

    def _on_image_grid(self, labels) -> bool:
        image = self.image.layer()
        return image is not None and same_layer_grid(labels, image)

    def run(self):
        if self.state.running:
            return None
        il, rl = self.image.layer(), self.reference.layer()
        if il is None:
            refuse(self.state, "choose an image layer", "Segmentation")
            return None
        try:
            image = volume_from_layer(il)
            ref = volume_from_layer(rl, labels=True) if rl is not None else None
        except Exception as exc:
            refuse(self.state, exc, "Segmentation")
            return None
        weights, device, name = self.weights.value(), self.device.currentText(), result_name(il.name)
        ref_names = label_names_of(rl) if rl is not None else {}
        existing = frozenset(layer.name for layer in self.viewer.layers)
        orientation = il.metadata.get(ORIENTATION_KEY)  # the labels are on the image's grid
        ref_colors = {v: tuple(int(round(255 * c)) for c in label_rgba(rl, v)[:3]) for v in ref_names} if rl else {}

        def work(progress):
            _warmup.ready()  # the engine is imported in the background after start
            from gvsl_app.services.segment import segment

            progress("segmenting", 0.1)
            res = segment(image, weights, device=device, reference=ref)
            names = merge_names({int(k): v for k, v in res.record.label_names.items()}, ref_names)
            named = replace(res.record, label_names={str(k): v for k, v in names.items()})
            res = replace(res, record=named)  # its report dict is built again from the record
            progress("layers", 0.9)
            data = labels_layer_data(res.labels, name, names or None, ref_colors or None, opacity=0.6)
            data = with_orientation(data, orientation)
            return res, prebuild(data, existing)

        self._worker = start_job(work, self.state, lambda out: self._show(*out), "Segmentation")
        return self._worker

    def _show(self, res: SegmentResult, layer_data) -> list:
        self.result = res
        return [lambda: self._fill_table(upsert_layer(self.viewer, layer_data), res.record)]

    def _fill_table(self, layer, rep: SegmentReport) -> None:
        names, vols = rep.label_names, rep.volume_ml
        ref_vols, dice = rep.reference_volume_ml or {}, rep.dice or {}
        keys = sorted({*names, *vols, *dice}, key=int)
        self.table.setRowCount(len(keys))
        for row, key in enumerate(keys):
            cells = (
                names.get(key, f"label {key}"),
                _fmt(vols.get(key, 0.0), 2),
                _fmt(ref_vols.get(key), 2),
                _fmt(dice.get(key), 3),
            )
            for col, text in enumerate(cells):
                self.table.setItem(row, col, QTableWidgetItem(text))
            r, g, b = (float(c) for c in label_rgba(layer, int(key))[:3])
            self.table.item(row, 0).setBackground(QColor.fromRgbF(r, g, b, 0.6))
        self.table.resizeColumnsToContents()
        self.summary.setText(_summary_text(rep))


def _summary_text(rep: SegmentReport) -> str:
    """The line under the table: which segmenter (unless given), the brain mask and volume
    warnings, mean Dice or structures found, time.
    """
    from gvsl_app.services.segment_brain import brain_notes

    secs = rep.seconds["total_s"]
    which = "" if "(given)" in rep.segmenter else f"{rep.segmenter}. "
    which += "".join(f"{note[0].upper()}{note[1:]}. " for note in brain_notes(rep))
    if rep.dice is not None:
        scored = sum(1 for v in rep.dice.values() if v is not None and v == v)  # NaN: in neither map
        return f"{which}mean Dice {_fmt(rep.mean_dice, 3)} over {scored} structures; {secs:.1f} s on {rep.device}"
    found = sum(1 for v in rep.volume_ml.values() if v > 0)
    return f"{which}{found} structures found; {secs:.1f} s on {rep.device} (choose a ground-truth layer for Dice)"


def merge_names(model_names: dict[int, str], reference_names: dict[int, str]) -> dict[int, str]:
    """The checkpoint's structure names, completed by the ground truth's where the checkpoint
    has none or only numbers (a model fine-tuned on unnamed label files).
    """
    out = dict(reference_names)
    for k, v in model_names.items():
        generic = str(v).strip() in (str(k), f"label {k}", "")
        if not generic or k not in out:
            out[k] = v
    return out


def _fmt(value, digits: int) -> str:
    if value is None:
        return ""
    value = float(value)
    return "n/a" if value != value else f"{value:.{digits}f}"  # NaN: a structure in neither map
