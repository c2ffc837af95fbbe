"""Qt building blocks shared by the widgets: layer and weights choosers, devices, errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QPushButton, QWidget

from ._warmup import when_ready

DEMO, RANDOM, NONE = None, "random", "none"
_RESULT_WORDS = ("warped", "displacement", "jacobian", "folding", "segmentation", "embedded")


def describe_error(exc: BaseException) -> str:
    """The engine's message, with a hint for out-of-memory errors."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        return (
            f"out of memory ({text.splitlines()[0][:160]}); choose a smaller working size, "
            "fewer points or the CPU device"
        )
    return text


def notify_error(exc: BaseException | str, what: str = "GVSL") -> str:
    from napari.utils.notifications import show_error

    msg = exc if isinstance(exc, str) else describe_error(exc)
    show_error(f"{what}: {msg}")
    return msg


def notify_info(msg: str) -> None:
    from napari.utils.notifications import show_info

    show_info(msg)


def _narrow(combo: QComboBox, chars: int = 16) -> None:
    """A combo box whose longest entry (a layer name, a file path) does not set the dock's
    minimum width: it shows ``chars`` characters at least and elides the rest (full text on hover).
    """
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(chars)


class LayerCombo(QComboBox):
    """Layers of one type in ``viewer``, kept in sync with the layer list.

    The chooser remembers the layer object it shows, so a rename keeps the choice (the
    name alone would be lost); a layer a ``fits`` test cannot judge (a 2D or 4D layer
    for a 3D grid test) simply does not fit, because a refresh runs inside napari's layer
    events and an exception there would undo the user's ``add_labels``.
    """

    def __init__(
        self,
        viewer,
        layer_type,
        optional: bool = False,
        prefer: tuple[str, ...] = (),
        fits: Callable[[Any], bool] | None = None,
        parent=None,
        shun: tuple[str, ...] = (),
        avoid: LayerCombo | None = None,
    ):
        """``prefer``: name words chosen first; ``shun``: name words chosen last; ``fits``: a
        test a layer must pass to be the default of an optional combo (e.g. "on the chosen
        image's grid"); ``avoid``: another chooser whose layer this one defaults to only when
        there is no other (moving vs fixed image).
        """
        super().__init__(parent)
        _narrow(self)
        self._viewer, self._type, self._optional, self._prefer = viewer, layer_type, optional, prefer
        self._fits, self._shun, self._avoid = fits, shun, avoid
        self._chosen = False  # True once the user picked a layer: keep it; until then follow the defaults
        self._layer = None  # the layer shown (None for "(none)")
        self.activated.connect(self._on_user_choice)
        self.currentIndexChanged.connect(self._remember)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self.refresh)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_renamed)
        if avoid is not None:
            avoid.currentTextChanged.connect(self.refresh)
        self.refresh()

    def _on_inserted(self, event=None) -> None:
        if event is not None:
            event.value.events.name.connect(self._on_renamed)
        self.refresh()

    def _on_renamed(self, event=None) -> None:
        # the layer shown stays shown under its new name, picked by the user or not
        source = getattr(event, "source", None)
        self._update(keep=self._chosen or (source is not None and source is self._layer))

    def _remember(self, *_) -> None:
        self._layer = self.layer()

    def _fits_safely(self, layer) -> bool:
        try:
            return self._fits is None or bool(self._fits(layer))
        except Exception:  # e.g. a 2D layer against a 3D grid: it does not fit
            return False

    def _default(self, layers: list) -> str | None:
        plain = [lay for lay in layers if not any(w in lay.name.lower() for w in _RESULT_WORDS)]
        plain.sort(key=lambda lay: any(w in lay.name.lower() for w in self._shun))  # stable: shunned last
        other = self._avoid.layer() if self._avoid is not None else None
        candidates = [lay for lay in plain if lay is not other] or plain
        for word in self._prefer:
            for lay in candidates:
                if word in lay.name.lower():
                    return lay.name
        if self._optional:
            if self._fits is not None:
                return next((lay.name for lay in candidates if self._fits_safely(lay)), None)
            return None
        first = (candidates or layers or [None])[0]
        return None if first is None else first.name

    def refresh(self, event=None) -> None:
        """Re-list the layers; keep the user's choice, otherwise show the default."""
        self._update(keep=self._chosen)

    def _update(self, keep: bool) -> None:
        try:
            before = self.currentText()
            layers = [lay for lay in self._viewer.layers if isinstance(lay, self._type)]
            shown = next((lay for lay in layers if lay is self._layer), None)
            kept = shown.name if shown is not None else None
            if kept is None and self._optional and before == "(none)":
                kept = "(none)"
            target = kept if (keep and kept is not None) else self._default(layers)
            self.blockSignals(True)  # no half-filled states for the dependent choosers
            try:
                self.clear()
                if self._optional:
                    self.addItem("(none)")
                self.addItems([lay.name for lay in layers])
                if target is not None:
                    self.setCurrentText(target)
            finally:
                self.blockSignals(False)
            self._layer = self.layer()
            if self.currentText() != before:  # once, for the choosers that depend on this one
                self.currentTextChanged.emit(self.currentText())
        except RuntimeError:  # the widget was deleted before the viewer
            pass

    def layer(self):
        """The chosen layer, or None ("(none)" or no layer of the type)."""
        name = self.currentText()
        return self._viewer.layers[name] if name in self._viewer.layers else None

    def _on_user_choice(self, *_) -> None:
        self._chosen = True

    def set_layer(self, name: str) -> None:
        """Choose the layer called ``name`` as the user would (kept from then on)."""
        self._chosen = True
        self.setCurrentText(name)


class WeightsChooser(QWidget):
    """Demo weights, random initialisation, or a checkpoint file (browse or pushed by a run)."""

    def __init__(
        self, shared=None, kind: str = "gvsl", allow_random: bool = False, allow_none: bool = False, parent=None
    ):
        super().__init__(parent)
        self.kind = kind
        self.combo = QComboBox()
        _narrow(self.combo, 10)  # it shares its row with the browse button
        if allow_none:
            self.combo.addItem("(none)", NONE)
        # segmentation: the shipped segmenter that fits the image (cardiac CT or brain MR)
        label = "demo weights" if kind == "gvsl" else "shipped segmenter for the image's modality"
        demo_row = self.combo.count()
        self.combo.addItem(label, DEMO)
        # whether the shipped file is there is known once the engine (torch) is imported
        when_ready(lambda: self._mark_missing_demo(demo_row, label))
        if allow_random:
            self.combo.addItem("random init", RANDOM)
        if allow_none:
            self.combo.setCurrentIndex(0)
        browse = QPushButton("…")  # narrow: the dock column is kept narrow so the image gets the room
        browse.setToolTip("Browse for a checkpoint file (.pt)")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(browse)
        if shared is not None:
            getattr(shared.events, kind).connect(self._on_shared)

    def _mark_missing_demo(self, row: int, label: str) -> None:
        from gvsl_app.services.weights import DEMO_GVSL, DEMO_SEG

        demo = DEMO_GVSL if self.kind == "gvsl" else DEMO_SEG
        if not demo.is_file():
            self.combo.setItemText(row, label + " (not installed)")

    def _on_shared(self, path: str) -> None:
        try:
            if path:
                self.add_path(path)
        except RuntimeError:
            pass

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Checkpoint", "", "Checkpoints (*.pt *.pth *.ckpt *.tar);;All files (*)"
        )
        if path:
            self.add_path(path)

    def add_path(self, path: str, select: bool = True) -> None:
        path = str(path)
        idx = self.combo.findData(path)
        if idx < 0:
            p = Path(path)
            self.combo.addItem(f"{p.parent.parent.name}/{p.name}" if p.parent.name == "checkpoints" else p.name, path)
            idx = self.combo.count() - 1
            self.combo.setItemData(idx, path, Qt.ItemDataRole.ToolTipRole)
        if select:
            self.combo.setCurrentIndex(idx)

    def value(self):
        """``None`` (demo), ``"random"``, ``"none"`` or a checkpoint path."""
        return self.combo.currentData()


def results_table(columns: tuple[str, ...]):
    """A read-only, row-selecting table for per-structure results.

    Its columns can be widened by hand and the table scrolls: columns sized to their
    contents would set the whole dock's minimum width (562 px for four) and squeeze the image.
    """
    from qtpy.QtWidgets import QHeaderView, QTableWidget

    table = QTableWidget(0, len(columns))
    table.setHorizontalHeaderLabels(columns)
    head, rows = table.horizontalHeader(), table.verticalHeader()
    assert head is not None and rows is not None  # a QTableWidget is built with both
    head.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
    head.setStretchLastSection(True)
    rows.setVisible(False)
    table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
    table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
    return table


def device_combo() -> QComboBox:
    """``auto`` and ``cpu`` at once; each CUDA GPU and ``mps`` once torch is imported (in
    the background: asking torch now would add its import to the viewer's start).
    """
    combo = QComboBox()
    combo.addItems(["auto", "cpu"])

    def add_accelerators() -> None:
        from models.device import available_devices

        for name in available_devices():
            if combo.findText(name) < 0:
                combo.addItem(name)

    when_ready(add_accelerators)
    return combo


def thick_slices(viewer, half_width: float) -> None:
    """Give the three spatial (last) axes a margin of ``half_width`` world units (napari thick slicing).

    napari draws a vector or point only on its own slice; layers with
    ``projection_mode='all'`` (our displacement arrows and embedded voxels) then also show
    their neighbours within the margin. All three axes get it, displayed or not (napari
    ignores a margin on a displayed axis): a job that ends in a 3D view, or a user who
    rolls the axes later, would otherwise leave axes without one. Leading axes (time) are
    left thin, images and labels keep thin slices (their projection mode is ``none``), and
    a margin the user set is left alone.
    """
    dims = viewer.dims
    left, right = list(dims.margin_left), list(dims.margin_right)
    changed = False
    for axis in range(max(0, dims.ndim - 3), dims.ndim):
        if left[axis] == 0 and right[axis] == 0:
            left[axis] = right[axis] = half_width + 1e-3
            changed = True
    if changed:
        dims.margin_left, dims.margin_right = tuple(left), tuple(right)


def random_model(width: int = 8, seed: int = 0):
    """An untrained GVSL network (the "random init" baseline), seeded for repeatability."""
    import torch

    from models import GVSL, widths_from_base

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return GVSL(widths=widths_from_base(width))
