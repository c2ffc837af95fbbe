"""The Training panel's life: closing, hiding or floating it, a cancelled window close, Stop
from the launch on and only once, buttons that wait for the form. A stand-in child keeps
these quick; tests/plugin/test_training_widget.py trains for real.
"""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

pytestmark = pytest.mark.gui

from napari_plugin._training import TrainingWidget  # noqa: E402 (after the skips)


def _click(qtbot, button):
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button, Qt.LeftButton)


# A stand-in for a training child that only does what these tests look at: it logs one step,
# and on each SIGTERM appends a line to a file, then "saves" and exits after `delay` seconds.
FAKE_CHILD = """
import pathlib, signal, sys, time
marks, metrics, delay = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), float(sys.argv[3])
def on_term(*_):
    with marks.open("a") as f:
        f.write("term\\n")
    time.sleep(delay)
    marks.open("a").write("saved\\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
time.sleep(float(sys.argv[4]))
metrics.parent.mkdir(parents=True, exist_ok=True)
metrics.write_text('{"iteration": 1, "loss": 1.0, "sec_per_step": 30.0}\\n')
time.sleep(120)
"""


def _fake_job(w, tmp_path, delay=0.0, first_step_after=0.0):
    import sys

    from gvsl_app.jobs.training_job import TrainingJob

    run, marks = tmp_path / "run", tmp_path / "marks.txt"
    cmd = [sys.executable, "-c", FAKE_CHILD, str(marks), str(run / "metrics.jsonl"), str(delay), str(first_step_after)]
    return w._begin(TrainingJob(run, w.state, [cmd], total=10)), marks


def test_closing_the_training_panel_stops_its_run_which_saves(qtbot, make_napari_viewer, tmp_path):
    import gc

    viewer = make_napari_viewer(show=True)
    w = TrainingWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Training")
    qtbot.wait(50)
    job, marks = _fake_job(w, tmp_path)
    state = w.state
    qtbot.waitUntil(lambda: state.iteration == 1, timeout=20_000)  # the child is up, its handler set
    proc = job.proc
    dock.destroyOnClose()  # the panel's ✕: napari unparents the widget and deletes the dock
    del w, dock, job
    for _ in range(5):
        qtbot.wait(50)
        gc.collect()
    try:
        qtbot.waitUntil(lambda: proc.poll() is not None, timeout=20_000)
        assert marks.read_text().split() == ["term", "saved"]
    finally:
        proc.kill()


def test_hiding_a_floating_panel_or_a_cancelled_window_close_keeps_the_run(
    qtbot, make_napari_viewer, tmp_path, monkeypatch
):
    from qtpy.QtWidgets import QMainWindow

    viewer = make_napari_viewer(show=True)
    w = TrainingWidget(viewer)
    dock = viewer.window.add_dock_widget(w, name="Training")
    qtbot.wait(50)
    job, marks = _fake_job(w, tmp_path)
    qtbot.waitUntil(lambda: w.state.iteration == 1, timeout=20_000)  # the child is up, its handler set
    try:
        dock.setFloating(True)  # undocked to a second screen, then hidden with the panel's own button
        qtbot.wait(100)
        dock.close()
        qtbot.wait(200)
        assert job.alive and not marks.exists()

        # The window's ✕, answered "Cancel" in napari's "close the window?" dialog.
        window = w.parentWidget()
        while not isinstance(window, QMainWindow):
            window = window.parentWidget()
        monkeypatch.setattr(type(window), "closeEvent", lambda self, event: event.ignore())
        window.close()
        qtbot.wait(200)
        assert window.isVisible() and job.alive and not marks.exists()

        monkeypatch.undo()
        viewer.close()  # closed for good: the run stops and writes its checkpoint
        qtbot.waitUntil(lambda: not job.alive, timeout=20_000)
        assert marks.read_text().split() == ["term", "saved"]
    finally:
        job.proc.kill()


def test_stop_is_offered_from_launch_and_sent_once(qtbot, make_napari_viewer, tmp_path):
    """A second SIGTERM makes the CLI abort without saving: Stop must not send one."""
    viewer = make_napari_viewer()
    w = TrainingWidget(viewer)
    # the child's first step takes a while (torch import, data): Stop works before it
    job, marks = _fake_job(w, tmp_path, delay=1.0, first_step_after=1.5)
    assert w.state.status == "starting" and w.stop_button.isEnabled()
    qtbot.wait(600)  # its SIGTERM handler is set by now
    _click(qtbot, w.stop_button)
    assert w.state.status == "stopping" and not w.stop_button.isEnabled()
    w.stop()  # e.g. a script, or a click that raced the button's update
    qtbot.waitUntil(lambda: w.state.status == "stopped", timeout=20_000)
    assert marks.read_text().split() == ["term", "saved"]
    assert not w.stop_button.isEnabled()


def test_the_buttons_wait_for_the_training_form(qtbot, make_napari_viewer, tmp_path, monkeypatch):
    """Start before the form shows would launch settings the user never saw."""
    from napari_plugin import _warmup

    monkeypatch.setattr(_warmup, "when_ready", lambda fn: None)  # the engine's import not done yet
    viewer = make_napari_viewer()
    w = TrainingWidget(viewer)
    assert w._form is None
    assert not any(b.isEnabled() for b in (w.start_button, w.resume_button, w.attach_button, w.stop_button))
    _click(qtbot, w.start_button)
    assert w.job is None and w._form is None
    w._build_form()  # the import finished
    assert w.start_button.isEnabled() and w.resume_button.isEnabled() and w.attach_button.isEnabled()
