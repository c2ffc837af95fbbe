"""Z-Matching widget: the real flow in a worker thread, result layers, export, errors, responsiveness."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
from napari_plugin._geometry import data_to_world  # noqa: E402

from helpers import in_file_order, match_report, rotated  # noqa: E402
from helpers import matching_widget as _widget  # noqa: E402

pytestmark = pytest.mark.gui


def _run(qtbot, w, timeout=120_000):
    qtbot.mouseClick(w.controls.run_button, qtbot_button())
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=timeout)
    qtbot.waitUntil(lambda: w._worker is None or not w._worker.is_running, timeout=10_000)


def qtbot_button():
    from qtpy.QtCore import Qt

    return Qt.LeftButton


def test_matching_flow_layers_report_export(qtbot, cardiac_viewer, gvsl_ckpt, tmp_path):
    from napari_plugin import _matching as m

    viewer = cardiac_viewer
    w = _widget(viewer, gvsl_ckpt)
    assert w.fixed.currentText() == "cardiac fixed" and w.moving.currentText() == "cardiac moving"
    assert w.moving_labels.currentText() == "cardiac moving labels"
    assert w.fixed_labels.currentText() == "cardiac fixed labels"
    _run(qtbot, w)
    assert w.state.status == "done", w.state.message
    rep = w.result.report
    fixed = viewer.layers["cardiac fixed"]
    for name in (m.WARPED, m.WARPED_LABELS, m.DISPLACEMENT, m.MAGNITUDE, m.JACOBIAN, m.FOLDING):
        layer = viewer.layers[name]
        np.testing.assert_allclose(data_to_world(layer), data_to_world(fixed), atol=1e-9)
    warped = viewer.layers[m.WARPED]
    assert warped.data.shape == fixed.data.shape and warped.blending == "additive"
    assert fixed.colormap.name == "green" and warped.colormap.name == "magenta"
    assert not viewer.layers["cardiac moving"].visible
    np.testing.assert_array_equal(viewer.layers[m.WARPED_LABELS].data, w.result.warped_labels.array)
    assert "LV" in set(viewer.layers[m.WARPED_LABELS].features["name"])
    vec = viewer.layers[m.DISPLACEMENT]
    assert vec.data.ndim == 3 and vec.data.shape[1:] == (2, 3)
    assert 100 < len(vec.data) <= 12**3 and vec.projection_mode == "all"
    # thick slices: every axial slice shows the nearest plane of arrows (and so would any
    # other sliced axis: the margin is on all three, napari ignores it on the displayed ones)
    assert all(m > 0 for m in viewer.dims.margin_left)
    # ... while the scans keep thin slices (napari's images would average over the margin)
    assert all(layer.projection_mode == "none" for layer in viewer.layers if layer._type_string == "image")
    # (on the fixed grid's planes: long arrows of a large initial alignment reach past it, and
    # the viewer's range with them)
    for z in range(0, 48, 5):
        viewer.dims.set_point(0, fixed.translate[0] + z * fixed.scale[0])
        assert len(vec._view_data) > 0, z
    np.testing.assert_array_equal(viewer.layers[m.FOLDING].data, (w.result.jacobian.array <= 0).astype(np.uint8))
    text = w.report.text()
    assert f"{rep.ncc_before:.4f} → {rep.ncc_after:.4f}" in text
    assert f"{rep.mean_dice_before:.4f} → {rep.mean_dice_after:.4f}" in text
    assert f"{rep.folding_percent:.3f} %" in text and "Dice Myocardium" in text

    assert ("⚠" in text) == bool(rep.fallback or rep.warnings)

    # Running again updates the same layers instead of adding new ones; a user's own layer
    # that has a result's name is left alone.
    from napari_plugin._layers import RESULT_MARK

    n_layers, warped_id = len(viewer.layers), id(warped)
    warped.visible = False  # a user choice that an update keeps
    viewer.layers.remove(m.DISPLACEMENT)
    mine = viewer.add_image(np.ones((4, 4, 4), np.float32), name=m.DISPLACEMENT)
    _run(qtbot, w)
    assert w.state.status == "done"
    assert len(viewer.layers) == n_layers + 1  # the user's layer and the arrows again
    assert id(viewer.layers[m.WARPED]) == warped_id and not viewer.layers[m.WARPED].visible
    assert viewer.layers[m.DISPLACEMENT] is mine and np.all(mine.data == 1)
    arrows = [lay for lay in viewer.layers if lay.metadata.get(RESULT_MARK) == m.DISPLACEMENT]
    assert len(arrows) == 1 and arrows[0] is not mine and arrows[0].data.shape[1:] == (2, 3)
    _run(qtbot, w)  # and a third run updates those arrows, beside the user's layer, in place
    assert len(viewer.layers) == n_layers + 1
    assert [lay for lay in viewer.layers if lay.metadata.get(RESULT_MARK) == m.DISPLACEMENT] == arrows

    w.export_to(str(tmp_path / "export"))  # a background job, like the run
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    out = tmp_path / "export"
    for f in (
        "warped.nii.gz",
        "warped_labels.nii.gz",
        "displacement.nii.gz",
        "affine.tfm",
        "jacobian.nii.gz",
        "report.json",
    ):
        assert (out / f).is_file(), f


def test_refinement_runs_in_the_background_and_stop_keeps_the_map_so_far(qtbot, cardiac_viewer, gvsl_ckpt):
    w = _widget(cardiac_viewer, gvsl_ckpt)
    assert not w.controls.stop_button.isEnabled()
    w.refine.setChecked(True)
    qtbot.mouseClick(w.controls.run_button, qtbot_button())
    qtbot.waitUntil(lambda: w.state.stage == "refine", timeout=60_000)
    assert w.controls.stop_button.isEnabled()
    qtbot.mouseClick(w.controls.stop_button, qtbot_button())
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    refined = w.result.report.refined
    assert 0 < refined.steps_done < refined.steps and refined.stopped
    assert "refinement" in w.report.text()
    assert not w.controls.stop_button.isEnabled()
    assert "took" not in w.refine.text()  # a run stopped early measures nothing
    # the next run starts with a cleared stop request and refines to the end, with the schedule chosen
    from models import REFINE_PRESETS

    # the box lists the engine's presets, after "auto" (from the torch-free options module)
    assert [w.refine_preset.itemText(i) for i in range(w.refine_preset.count())] == ["auto", *REFINE_PRESETS]
    w.refine.setChecked(False)
    assert not w.refine_preset.isEnabled()  # no schedule to choose without a refinement
    w.refine.setChecked(True)
    assert w.refine_preset.isEnabled()
    w.refine_preset.setCurrentText("brain")
    _run(qtbot, w)
    assert not w.result.report.refined.stopped
    assert w.result.report.refined.preset == "brain" and "(brain)" in w.report.text()
    # the checkbox now promises what the refinement took here
    assert f"took {w.result.report.seconds['refine_s']:.1f} s" in w.refine.text()


def test_the_progress_bar_says_the_time_left_while_refining(qtbot):
    """During the refinement the bar shows an estimate of the time left, from the pace so far;
    other stages show none.
    """
    from gvsl_app.jobs.state import RUNNING, JobState
    from gvsl_app.services.match_refine import REFINE_SPAN
    from napari_plugin._jobs import JobControls
    from napari_plugin._matching import refine_share_done

    state = JobState()
    controls = JobControls(state, timed_stage=("refine", refine_share_done))
    qtbot.addWidget(controls)
    state.status, state.stage, state.fraction = RUNNING, "network", 0.25
    assert "left" not in controls.bar.format()
    state.stage, state.fraction = "refine", REFINE_SPAN[0]
    qtbot.wait(400)
    state.fraction = REFINE_SPAN[0] + 0.5 * (REFINE_SPAN[1] - REFINE_SPAN[0])
    assert controls.bar.format().startswith("refine") and "left" in controls.bar.format()
    assert controls.bar.value() == 45
    state.stage, state.fraction = "displacement", REFINE_SPAN[1]
    assert "left" not in controls.bar.format()


def test_refinement_progress_moves_with_the_work_done_not_the_step_count():
    """The refinement's late steps run at the finest level: the engine reports the share of
    work (steps weighted by voxels), so the time-left estimate can extrapolate linearly.
    """
    from gvsl_app.data.synthetic import make_cardiac_subject
    from gvsl_app.services.matching import match
    from models import DEMO_WIDTHS, GVSL, PAPER_HEADS, RefineSchedule
    from napari_plugin._matching import refine_share_done

    fixed, _ = make_cardiac_subject(1, (32, 32, 32))
    moving, _ = make_cardiac_subject(2, (32, 32, 32))
    schedule = RefineSchedule(affine_levels=((16, 20),), deformable_levels=((16, 8, 20), (32, 8, 20)))
    seen = []
    match(
        fixed,
        moving,
        model=GVSL(widths=DEMO_WIDTHS, **PAPER_HEADS),
        size=32,
        device="cpu",
        schedule=schedule,
        progress=lambda stage, frac: seen.append(refine_share_done(frac)) if stage == "refine" else None,
    )
    shares = seen[1:]  # one per step, after the stage's opening report
    assert len(shares) == 60 and shares[-1] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(shares, shares[1:]))
    # the 40 steps at 16^3 are 2/3 of the steps but 2 * 4096 / (2 * 4096 + 32768) = 1/5 of the work
    assert shares[39] == pytest.approx(0.2)


def test_displacement_vectors_are_physical_on_oblique_grids(make_napari_viewer):
    """A constant physical displacement must appear as that displacement in world mm."""
    from types import SimpleNamespace

    from gvsl_app.io.volume import Volume
    from napari_plugin._geometry import layer_geometry
    from napari_plugin._matching import displacement_vectors

    fixed = rotated(Volume(np.zeros((20, 24, 28), np.float32), spacing=(0.9, 1.4, 2.2)), 35.0)
    d_xyz = np.array([3.0, -2.0, 1.5])
    res = SimpleNamespace(fixed=fixed, displacement_mm=np.broadcast_to(d_xyz, (*fixed.shape, 3)).astype(np.float32))
    data, mag, _ = displacement_vectors(res)
    np.testing.assert_allclose(mag, np.linalg.norm(d_xyz), rtol=1e-5)
    viewer = make_napari_viewer()
    layer = viewer.add_vectors(data, **layer_geometry(fixed))
    start = np.asarray(layer.data_to_world(data[5, 0]))
    end = np.asarray(layer.data_to_world(data[5, 0] + data[5, 1]))
    np.testing.assert_allclose(end - start, d_xyz[::-1], atol=1e-4)


def test_matching_error_becomes_notification(qtbot, cardiac_viewer, seg_ckpt, notifications):
    w = _widget(cardiac_viewer, seg_ckpt)
    n_layers = len(cardiac_viewer.layers)
    _run(qtbot, w)
    assert w.state.status == "error"
    assert "segmentation checkpoint" in w.state.message
    assert any("segmentation checkpoint" in msg for msg in notifications)
    assert len(cardiac_viewer.layers) == n_layers and w.controls.run_button.isEnabled()


def test_matching_without_layers_is_a_notification(make_napari_viewer, gvsl_ckpt, notifications):
    w = _widget(make_napari_viewer(), gvsl_ckpt)
    assert w.run() is None
    assert any("choose a fixed and a moving image layer" in msg for msg in notifications)


def test_gui_stays_responsive_while_matching(qtbot, cardiac_viewer, gvsl_ckpt):
    """The GUI thread keeps handling events while the worker computes and while the result
    layers are added (one per event-loop turn); no timing limit: the cores are shared.
    """
    from qtpy.QtCore import QTimer

    from napari_plugin import _matching as m

    w = _widget(cardiac_viewer, gvsl_ckpt, size=48)
    beats: list[tuple[bool, str]] = []  # per heartbeat: (worker thread computing, job status)

    def beat():
        worker = w._worker
        beats.append((worker is not None and worker.is_running, w.state.status))

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(beat)
    timer.start()
    qtbot.wait(500)  # let the viewer finish its first paint
    n_before = len(beats)
    _run(qtbot, w)  # the job, and the result layers added afterwards in the GUI thread
    qtbot.wait(50)
    timer.stop()
    assert w.state.status == "done", w.state.message
    assert {m.WARPED, m.WARPED_LABELS, m.DISPLACEMENT, m.MAGNITUDE} <= {layer.name for layer in cardiac_viewer.layers}
    during = beats[n_before:]
    computing = sum(1 for running, _ in during if running)
    showing = sum(1 for running, status in during if not running and status == "running")
    print(f"heartbeat while matching: {computing} beats while computing, {showing} while adding layers")
    assert computing >= 5  # the GUI thread handled events while the worker computed
    assert showing >= 1  # ... and between the result layers, which are added one per turn
    assert during[-1] == (False, "done")  # and it still ticks once the job is done


def _arrow_slices(viewer, axis: int, n: int) -> list[int]:
    """The steps along ``axis`` where the displacement layer shows no arrow."""
    from napari_plugin._matching import DISPLACEMENT

    vec, fixed = viewer.layers[DISPLACEMENT], viewer.layers["cardiac fixed"]
    empty = []
    for i in range(n):  # the fixed grid's planes (arrows may reach past it, and the viewer's range with them)
        viewer.dims.set_point(axis, fixed.translate[axis] + i * fixed.scale[axis])
        if len(vec._view_data) == 0:
            empty.append(i)
    return empty


def test_arrows_show_on_every_slice_after_a_run_in_3d_view(qtbot, cardiac_viewer, gvsl_ckpt):
    viewer = cardiac_viewer
    w = _widget(viewer, gvsl_ckpt)
    viewer.dims.ndisplay = 3  # the user looks at the volume in 3D while it matches
    _run(qtbot, w)
    assert w.state.status == "done", w.state.message
    viewer.dims.ndisplay = 2
    n = viewer.layers["cardiac fixed"].data.shape
    assert _arrow_slices(viewer, 0, n[0]) == []
    viewer.dims.order = (1, 0, 2)  # rolled: now y is sliced
    assert _arrow_slices(viewer, 1, n[1]) == []
    assert all(m > 0 for m in viewer.dims.margin_left) and all(m > 0 for m in viewer.dims.margin_right)


def test_stop_refining_is_enabled_only_while_a_refinement_can_be_stopped(qtbot, cardiac_viewer, gvsl_ckpt):
    w = _widget(cardiac_viewer, gvsl_ckpt)  # refine off
    qtbot.mouseClick(w.controls.run_button, qtbot_button())
    assert w.state.running and not w.controls.stop_button.isEnabled()
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=120_000)
    assert w.state.status == "done", w.state.message
    assert not w.controls.stop_button.isEnabled()


def _small_result():
    from gvsl_app.io.volume import Volume
    from gvsl_app.services.match_result import MatchResult

    fixed = Volume(np.random.default_rng(0).random((12, 10, 8)).astype(np.float32), spacing=(1.0, 1.0, 2.0))
    return MatchResult(
        fixed=fixed,
        warped=fixed,
        displacement_mm=np.zeros((*fixed.shape, 3), np.float32),
        jacobian=fixed.with_array(np.ones(fixed.shape, np.float32)),
        affine_physical=np.eye(4),
        report=match_report(),
    )


def test_export_writes_in_the_background_and_reports_failures(
    qtbot, make_napari_viewer, gvsl_ckpt, tmp_path, monkeypatch, notifications
):
    import threading

    from gvsl_app.services.match_result import MatchResult

    w = _widget(make_napari_viewer(), gvsl_ckpt)
    w.result = _small_result()
    threads = []
    save = MatchResult.save

    def recording_save(self, out):
        threads.append(threading.current_thread())
        return save(self, out)

    monkeypatch.setattr(MatchResult, "save", recording_save)
    worker = w.export_to(str(tmp_path / "export"))
    assert worker is not None and w.state.running  # returned at once; the files come later
    assert not w.export_button.isEnabled() and not w.controls.stop_button.isEnabled()
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    assert threads and threads[0] is not threading.main_thread()  # never on the GUI thread
    assert all((tmp_path / "export" / f).is_file() for f in w.result.written_files())
    assert str(tmp_path / "export") in w.controls.status.text()
    assert any(str(tmp_path / "export") in msg for msg in notifications)
    assert w.export_button.isEnabled()
    # a folder that cannot be made (a file is in the way): a clear error, the viewer carries on
    (tmp_path / "a file").write_text("x")
    w.export_to(str(tmp_path / "a file" / "out"))
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "error" and "a file" in w.state.message
    assert any(msg.startswith("Export:") and "a file" in msg for msg in notifications)
    assert w.export_button.isEnabled() and w.controls.run_button.isEnabled()


def test_the_widget_offers_the_command_lines_options_with_the_same_defaults(make_napari_viewer):
    """The form rows come from MatchOptions, as `gvsl match`'s options do: same choices, same
    defaults, and the options the widget would run with equal the command line's.
    """
    from gvsl_app.cli import build_parser
    from gvsl_app.options import MatchOptions, from_args
    from napari_plugin._matching import FORM_OPTIONS, MatchingWidget

    w = MatchingWidget(make_napari_viewer())
    cli = build_parser().parse_args(["match", "f.nii.gz", "m.nii.gz", "--out", "o"])
    assert w.match_options() == from_args(MatchOptions, cli)
    match_parser = next(a for a in build_parser()._actions if a.dest == "command").choices["match"]
    for name in FORM_OPTIONS:
        action = next(a for a in match_parser._actions if a.dest == name)
        native = w.options[name].native
        if action.choices is not None:
            assert [native.itemText(i) for i in range(native.count())] == list(action.choices), name
        assert native.toolTip() == action.help, name
    w.init_mode.setCurrentText("moments")
    w.similarity.setCurrentText("mind")
    w.cube_size.setValue(48)
    assert w.match_options() == MatchOptions(size=48, init="moments", similarity="mind", device="auto")


def test_results_on_a_coronal_fixed_scan_are_saved_and_exported_on_its_files_grid(
    qtbot, make_napari_viewer, gvsl_ckpt, tmp_path
):
    """The reader shows coronally stored scans transposed; results land on the fixed file's voxel grid."""
    import SimpleITK as sitk

    from napari_plugin import _matching as m

    zz, yy, xx = np.mgrid[:24, :28, :32].astype(np.float32)
    paths = {}
    for name, shift in (("fixed", 0.0), ("moving", 2.0)):
        blob = np.exp(-((zz - 12) ** 2 + (yy - 14 - shift) ** 2 + (xx - 16) ** 2) / 40.0) * 1000
        img = sitk.GetImageFromArray(blob.astype(np.float32))
        img.SetSpacing((1.5, 2.0, 1.2))
        img.SetOrigin((-20.0, 35.0, 4.0))
        img.SetDirection((1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0))  # coronal slices
        paths[name] = tmp_path / f"{name}.nii.gz"
        sitk.WriteImage(img, str(paths[name]))
    viewer = make_napari_viewer()
    for path in paths.values():
        viewer.open(str(path), plugin="gvsl-studio")
    w = _widget(viewer, gvsl_ckpt)
    w.fixed.set_layer("fixed")
    w.moving.set_layer("moving")
    _run(qtbot, w)
    assert w.state.status == "done", w.state.message
    fixed_img = sitk.ReadImage(str(paths["fixed"]))

    def on_fixed_grid(path):
        img = sitk.ReadImage(str(path))
        assert img.GetSize() == fixed_img.GetSize() and img.GetDirection() == fixed_img.GetDirection()
        np.testing.assert_allclose(img.GetOrigin(), fixed_img.GetOrigin(), atol=1e-5)
        np.testing.assert_allclose(img.GetSpacing(), fixed_img.GetSpacing(), rtol=1e-6)
        return sitk.GetArrayFromImage(img)

    warped = viewer.layers[m.WARPED]
    warped.save(str(tmp_path / "warped_saved.nii.gz"), plugin="gvsl-studio")
    record = viewer.layers["fixed"].metadata["gvsl_orientation"]
    np.testing.assert_allclose(on_fixed_grid(tmp_path / "warped_saved.nii.gz"), in_file_order(warped.data, record))
    assert w.export_to(str(tmp_path / "export")) is not None
    qtbot.waitUntil(lambda: w.state.status in ("done", "error"), timeout=60_000)
    assert w.state.status == "done", w.state.message
    np.testing.assert_allclose(on_fixed_grid(tmp_path / "export" / "warped.nii.gz"), in_file_order(warped.data, record))
    on_fixed_grid(tmp_path / "export" / "jacobian.nii.gz")
    field = on_fixed_grid(tmp_path / "export" / "displacement.nii.gz")
    shown_field = w.result.displacement_mm  # (z, y, x, 3): physical components, only the grid is reordered
    np.testing.assert_allclose(field, in_file_order(shown_field, record), atol=1e-5)
