"""Z-Matching widget: match a moving volume onto a fixed one and show every output as layers."""

from __future__ import annotations

import html
import threading
from typing import cast

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from gvsl_app.io.orientation import grid_in_file_order, volume_in_file_frame
from gvsl_app.jobs.state import JobState, shared_checkpoints
from gvsl_app.options import MatchOptions

from . import _warmup
from ._common import (
    RANDOM,
    LayerCombo,
    WeightsChooser,
    device_combo,
    notify_error,
    notify_info,
    random_model,
    thick_slices,
)
from ._geometry import ORIENTATION_KEY, layer_geometry, volume_from_layer
from ._jobs import JobControls, refuse, start_job
from ._layers import (
    copy_label_style,
    image_layer_data,
    label_names_of,
    labels_layer_data,
    prebuild,
    upsert_layer,
    with_orientation,
)
from ._layout import fit_dock
from ._options_form import OptionRow

WARPED, WARPED_LABELS = "warped moving", "warped labels"
DISPLACEMENT, MAGNITUDE = "displacement", "displacement |u| (mm)"
JACOBIAN, FOLDING = "jacobian det", "folding (det J <= 0)"

FORM_OPTIONS = ("size", "init", "similarity", "refine", "refine_preset")
"""The :class:`gvsl_app.options.MatchOptions` fields the widget offers (``passes`` and
``fallback`` keep the engine's defaults; the device has its own chooser)."""

REFINE_MEASURED = "9-15 s"
"""What the refine checkbox promises until a run here has measured it: the refinement of a
96³ cardiac pair on the project's 2-core CPU (8.9 s alone in ``benchmarks/match_memory.py
--side 96``, 8-15 s per pair in ``benchmarks/bench_match.py`` beside another benchmark)."""


def refine_share_done(fraction: float) -> float:
    """The share of the refinement's work done at the matching job's progress ``fraction``
    (the engine moves the progress across ``REFINE_SPAN`` with the work done, weighted by
    each level's size, so the time-left estimate can extrapolate linearly).
    """
    from gvsl_app.services.match_refine import REFINE_SPAN

    lo, hi = REFINE_SPAN
    return min(1.0, max(0.0, (fraction - lo) / (hi - lo)))


def displacement_vectors(result, per_axis: int = 12) -> tuple[np.ndarray, np.ndarray, int]:
    """Vectors-layer data on a subsampled fixed grid, in the fixed volume's index units.

    The field holds physical (x, y, z) mm; a layer with the fixed volume's geometry shows
    index-space vectors mapped to mm, so each vector is ``M^-1 d`` with ``M`` the fixed
    grid's index-to-physical matrix. About ``per_axis`` arrows per axis (napari builds
    every arrow's mesh in the GUI thread, so their number is kept near 2000). Returns
    ``(data (N, 2, 3), magnitude_mm (N,), step)``.
    """
    field = result.displacement_mm
    step = max(1, int(np.ceil(max(field.shape[:3]) / per_axis)))
    grid = np.stack(np.meshgrid(*(np.arange(step // 2, n, step) for n in field.shape[:3]), indexing="ij"), -1)
    pos = grid.reshape(-1, 3)
    d_mm = field[pos[:, 0], pos[:, 1], pos[:, 2]].astype(np.float64)
    m = result.fixed.index_to_physical_matrix()[:3, :3]
    vec = np.linalg.solve(m, d_mm.T).T
    data = np.stack([pos.astype(np.float32), vec.astype(np.float32)], axis=1)
    return data, np.linalg.norm(d_mm, axis=1), step


class MatchingWidget(QWidget):
    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.state = JobState()
        self.result = None
        self.result_orientation: dict | None = None  # the fixed layer's reader record (export on its file's grid)
        self._worker = None
        self._stop = threading.Event()
        self._refining = False  # whether the running job refines: the only stage Stop can end
        _warmup.start()
        v = napari_viewer
        # two scans named neither "fixed" nor "moving" still start as two different layers
        self.fixed = LayerCombo(v, Image, prefer=("fixed",), shun=("moving",))
        self.moving = LayerCombo(v, Image, prefer=("moving",), avoid=self.fixed)
        self.moving_labels = LayerCombo(v, Labels, optional=True, prefer=("moving",))
        self.fixed_labels = LayerCombo(v, Labels, optional=True, prefer=("fixed",))
        self.weights = WeightsChooser(shared_checkpoints(v), "gvsl", allow_random=True)
        self.device = device_combo()
        self._option_rows()
        self.controls = JobControls(
            self.state,
            "Run Z-Matching",
            stop_text="Stop refining (keep the map so far)",
            timed_stage=("refine", refine_share_done),
            can_stop=lambda: self._refining,
        )
        self.controls.run_button.clicked.connect(self.run)
        assert self.controls.stop_button is not None  # asked for with stop_text
        self.controls.stop_button.clicked.connect(self._stop.set)
        self.report = QLabel("")
        self.report.setWordWrap(True)
        self.export_button = QPushButton("Export outputs…")
        self.export_button.setEnabled(False)
        self.export_button.clicked.connect(self._export_dialog)
        self.state.events.status.connect(self._sync_export)
        self._lay_out()
        fit_dock(self)

    def _option_rows(self) -> None:
        """The matching options' rows, made from the engine's MatchOptions (gvsl match's own)."""
        self.options = {name: OptionRow(MatchOptions, name) for name in FORM_OPTIONS}
        self.cube_size = cast(QSpinBox, self.options["size"].native)
        self.cube_size.setSingleStep(16)
        self.cube_size.setSuffix(" voxels")
        self.refine = cast(QCheckBox, self.options["refine"].native)  # the form row says "refine"
        self.refine.setText(f"on this pair (+{REFINE_MEASURED})")
        self.refine_preset = cast(QComboBox, self.options["refine_preset"].native)
        self.init_mode = cast(QComboBox, self.options["init"].native)
        self.similarity = cast(QComboBox, self.options["similarity"].native)
        self.refine.toggled.connect(self.refine_preset.setEnabled)

    def _lay_out(self) -> None:
        form = QFormLayout()
        for label, w in (
            ("fixed image", self.fixed),
            ("moving image", self.moving),
            ("moving labels", self.moving_labels),
            ("fixed labels", self.fixed_labels),
            ("weights", self.weights),
            ("device", self.device),
            ("working size", self.cube_size),
            ("initial alignment", self.init_mode),
            ("similarity", self.similarity),
            ("refine", self.refine),
            ("schedule", self.refine_preset),
        ):
            form.addRow(label, w)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.controls)
        lay.addWidget(self.report)
        lay.addWidget(self.export_button)
        lay.addStretch(1)

    def match_options(self) -> MatchOptions:
        """The options the form shows (its rows, the device), checked as ``gvsl match`` checks them."""
        values = {name: row.value for name, row in self.options.items()}
        return MatchOptions(**values, device=self.device.currentText())

    # -- running -------------------------------------------------------------------------
    def run(self):
        if self.state.running:
            return None
        fl, ml = self.fixed.layer(), self.moving.layer()
        if fl is None or ml is None:
            refuse(self.state, "choose a fixed and a moving image layer", "Z-Matching")
            return None
        if fl is ml:
            refuse(
                self.state, f"the fixed and the moving image are the same layer ({fl.name!r}): choose two", "Z-Matching"
            )
            return None
        mll, fll = self.moving_labels.layer(), self.fixed_labels.layer()
        try:
            fixed, moving = volume_from_layer(fl), volume_from_layer(ml)
            mlv = volume_from_layer(mll, labels=True) if mll is not None else None
            flv = volume_from_layer(fll, labels=True) if fll is not None else None
        except Exception as exc:
            refuse(self.state, exc, "Z-Matching")
            return None
        weights = self.weights.value()
        try:
            options = self.match_options()
        except ValueError as exc:
            refuse(self.state, exc, "Z-Matching")
            return None
        stop = self._stop
        stop.clear()
        style = copy_label_style(mll) if mll is not None else {}
        clim = tuple(ml.contrast_limits)
        names = label_names_of(mll) if mll is not None else {}
        existing = frozenset(layer.name for layer in self.viewer.layers)
        orientation = fl.metadata.get(ORIENTATION_KEY)  # the results are on the fixed grid

        def work(progress):
            _warmup.ready()  # the engine is imported in the background after start
            from gvsl_app.services.matching import match

            model = random_model() if weights == RANDOM else None
            r = match(
                fixed,
                moving,
                options,
                weights=None if weights == RANDOM else weights,
                model=model,
                moving_labels=mlv,
                fixed_labels=flv,
                progress=progress,
                should_stop=stop.is_set,
            )
            layers = [with_orientation(d, orientation) for d in result_layers(r, clim, style)]
            return r, [prebuild(d, existing) for d in layers]

        self._refining = options.refine
        self._worker = start_job(
            work,
            self.state,
            lambda out: self._show(out[0], out[1], fl.name, ml.name, names, orientation),
            "Z-Matching",
        )
        return self._worker

    # -- results -------------------------------------------------------------------------
    def _show(
        self, r, layer_data: list[tuple], fixed_name: str, moving_name: str, names: dict, orientation=None
    ) -> list:
        """Style the inputs and return one step per result layer (run across event-loop turns)."""
        r.release_field_image()  # kept for export only on demand: it can be gigabytes
        self.result, self.result_orientation = r, orientation
        layers = self.viewer.layers
        if fixed_name in layers:
            layers[fixed_name].colormap = "green"
            layers[fixed_name].blending = "additive"
        if moving_name in layers:
            layers[moving_name].visible = False
        self.report.setText(report_html(r.report, names))
        refined, refine_s = r.report.refined, r.report.seconds.get("refine_s")
        if refine_s is not None and refined is not None and not refined.stopped:
            # what it cost here, for these volumes and this working size, is the best promise
            self.refine.setText(f"on this pair (took {refine_s:.1f} s last run)")
        vec = layer_data[-1][1]

        def margins() -> None:
            # First: a new margin re-slices every layer, so better before the six new ones.
            half = 0.5 * vec["metadata"]["gvsl_grid_step"] * float(np.max(np.abs(vec["scale"])))
            thick_slices(self.viewer, half)

        return [margins] + [lambda d=d: upsert_layer(self.viewer, d) for d in layer_data]

    def _export_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export Z-Matching outputs")
        if folder:
            self.export_to(folder)

    def _sync_export(self, *_) -> None:
        try:  # a result to export, and no job (run or export) that could replace it meanwhile
            self.export_button.setEnabled(self.result is not None and not self.state.running)
        except RuntimeError:  # the widget was deleted
            pass

    def export_to(self, folder: str):
        """Write the last result's outputs to ``folder`` in a background job (seconds for a
        real CT: never on the GUI thread); returns the worker, or None when there is nothing
        to export or a job is running.
        """
        result, orientation = self.result, self.result_orientation
        if result is None or self.state.running:
            notify_error("run Z-Matching first" if result is None else "wait for the running job to end", "Export")
            return None

        def work(progress):
            progress("exporting", 0.1)
            return result_in_file_frame(result, orientation).save(folder)

        def done(out) -> None:
            self.state.message = f"outputs written to {out}"  # the status line keeps it after the toast
            notify_info(f"Z-Matching outputs written to {out}")

        self._refining = False
        self._worker = start_job(work, self.state, done, "Export")
        return self._worker


def result_in_file_frame(r, record: dict | None):
    """The match result ``r`` on the fixed file's own voxel grid when the reader showed the
    fixed scan reoriented (``record``: its ``metadata["gvsl_orientation"]``), so that the
    exported warped image, labels, Jacobian and displacement field overlay that file by
    header; else ``r`` itself. Physically the same either way.
    """
    from dataclasses import replace

    fixed = volume_in_file_frame(r.fixed, record)
    if record is None or fixed is r.fixed:
        return r
    return replace(
        r,
        fixed=fixed,
        warped=volume_in_file_frame(r.warped, record),
        jacobian=volume_in_file_frame(r.jacobian, record),
        warped_labels=None if r.warped_labels is None else volume_in_file_frame(r.warped_labels, record),
        # the grid reordered; the components are physical (x, y, z) millimetres and stay
        displacement_mm=grid_in_file_order(r.displacement_mm, record),
    )


def result_layers(r, moving_clim: tuple | None = None, label_style: dict | None = None) -> list[tuple]:
    """Layer data of every matching output (computed in the worker, added in the GUI thread)."""
    geo = layer_geometry(r.fixed)
    out = [
        image_layer_data(
            r.warped,
            WARPED,
            colormap="magenta",
            blending="additive",
            **({"contrast_limits": moving_clim} if moving_clim else {}),
        )
    ]
    if r.warped_labels is not None:
        out.append(labels_layer_data(r.warped_labels, WARPED_LABELS, **(label_style or {})))
    mag = np.linalg.norm(r.displacement_mm, axis=-1)
    out.append(
        image_layer_data(
            r.fixed.with_array(mag),
            MAGNITUDE,
            colormap="inferno",
            contrast_limits=(0.0, max(float(mag.max()), 1e-3)),
            visible=False,
        )
    )
    out.append(image_layer_data(r.jacobian, JACOBIAN, colormap="PiYG", contrast_limits=(0.0, 2.0), visible=False))
    folding = r.fixed.with_array((r.jacobian.array <= 0).astype(np.uint8))
    out.append(labels_layer_data(folding, FOLDING, {1: "folding"}, {1: (255, 40, 40)}, opacity=0.9))
    data, magnitude, step = displacement_vectors(r)
    out.append(
        (
            data,
            {
                "name": DISPLACEMENT,
                **geo,
                "features": {"magnitude_mm": magnitude},
                "edge_color": "magnitude_mm",
                "edge_colormap": "viridis",
                "edge_width": 0.4,
                "length": 1.0,
                "vector_style": "arrow",
                "projection_mode": "all",
                "metadata": {"gvsl_grid_step": step},
            },
            "vectors",
        )
    )
    return out


def report_html(rep, names: dict[int, str] | None = None) -> str:
    """The matching report (:class:`gvsl_app.services.match_result.MatchReport`) as a compact
    table: the verdict, the initial alignment, the similarity, NCC, Dice, folding, displacement, time.
    """
    from gvsl_app.services.metrics import dice_text  # torch with it: only once a result exists

    names = names or {}
    q = rep.quality
    rows = [("quality", q.status + (f": {'; '.join(q.reasons)}" if q.reasons else ""))]
    init = rep.init
    shift = sum(v * v for v in init["translation_mm"]) ** 0.5
    rows.append(("initial alignment", f"{init['chosen']} ({init['rotation_deg']:.0f}°, {shift:.0f} mm)"))
    rows.append(("similarity", f"{rep.similarity} ({rep.similarity_reason})"))
    if rep.overlap_masked:
        share = f"{100 * rep.moving_data_share:.0f} % of the fixed grid"
        rows.append(("compared", f"where the moving scan has data ({share})"))
    rows.append(("NCC", f"{rep.ncc_before:.4f} → {rep.ncc_after:.4f}"))
    if rep.has_dice:
        rows.append(("mean Dice", f"{dice_text(rep.mean_dice_before, 4)} → {dice_text(rep.mean_dice_after, 4)}"))
    rows.append(("folding", f"{rep.folding_percent:.3f} % (det J min {rep.jacobian_min:.3f})"))
    rows.append(("max |u|", f"{rep.max_displacement_mm:.2f} mm"))
    sec = rep.seconds
    preset = rep.refined.preset if rep.refined is not None else None
    if rep.refined is not None and preset:
        rows.append(("schedule", f"{preset} ({rep.refined.preset_reason})"))
    refined = f", refinement {sec['refine_s']:.2f} s" if "refine_s" in sec else ""
    refined += f" ({preset})" if refined and preset else ""
    rows.append(
        ("time", f"{sec.get('total_s', 0):.2f} s on {rep.device} (network {sec.get('network_s', 0):.2f} s{refined})")
    )
    for lv in rep.refined.levels if rep.refined is not None else []:
        side = "×".join(str(n) for n in lv["shape"])
        rows.append((f"refine {lv['stage']} {side}", f"{lv['steps']}/{lv['planned']} steps, {lv['seconds']:.2f} s"))
    for key, after in (rep.dice_after or {}).items():
        name = names.get(int(key), f"label {key}")
        rows.append((f"Dice {name}", f"{dice_text(rep.dice_before[key], 3)} → {dice_text(after, 3)}"))
    body = "".join(f"<tr><td><b>{html.escape(k)}</b>&nbsp;</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    colour = {"ok": "#50c050", "doubtful": "#e0a030", "failed": "#e04040"}[q.status]
    verdict = f"<p style='color:{colour}'><b>match {html.escape(q.status)}</b></p>"
    notes = "".join(f"<p style='color:#e0a030'>⚠ {html.escape(n)}</p>" for n in rep.warnings + rep.fallback)
    return f"{verdict}{notes}<table>{body}</table>"
