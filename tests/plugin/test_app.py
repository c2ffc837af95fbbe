"""The desktop app (``gvsl app``): widgets docked, files and samples loaded, bad files notified."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from gvsl_app.io.images import write_volume
from gvsl_app.io.volume import Volume

pytestmark = pytest.mark.gui


def test_app_docks_widgets_loads_files_and_reports_bad_ones(
    make_napari_viewer, small_samples, tmp_path, notifications, monkeypatch
):
    import napari

    from napari_plugin import app

    good = write_volume(
        Volume(np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8), spacing=(0.5, 0.6, 2.0)),
        tmp_path / "scan.nii.gz",
    )
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x00" * 10)
    monkeypatch.setattr(napari, "Viewer", make_napari_viewer)  # run_app's viewer, closed by the fixture
    monkeypatch.setattr(napari, "run", lambda *a, **k: None)
    assert app.run_app([str(good), str(bad)], sample="cardiac") == 0
    viewer = napari.current_viewer()
    docked = set(viewer.window.dock_widgets)
    # docked through the installed npe2 plugin, as a napari user gets them
    assert {f"{n} (gvsl-studio)" for n in app.WIDGETS} <= docked
    names = [layer.name for layer in viewer.layers]
    assert names == ["cardiac fixed", "cardiac moving", "cardiac fixed labels", "cardiac moving labels", "scan"]
    np.testing.assert_allclose(viewer.layers["scan"].scale, (2.0, 0.6, 0.5))
    assert any("bad.nii.gz" in m and "cannot open" in m for m in notifications)


def test_cli_app_command_opens_files_and_sample_and_saves_a_window_screenshot(
    make_napari_viewer, small_samples, tmp_path, monkeypatch
):
    """``gvsl app FILE --sample cardiac --screenshot PNG`` through the engine's command line
    (the ``gvsl.commands`` entry point): the app opens both, and the PNG is the window.
    """
    from importlib.metadata import entry_points

    import napari
    from matplotlib.image import imread

    from gvsl_app import cli

    commands = {ep.name: ep.value for ep in entry_points(group=cli.COMMANDS_GROUP)}
    assert commands.get("app") == "napari_plugin.app:add_command", (
        f"the installed metadata lacks the {cli.COMMANDS_GROUP} entry point: reinstall (pip install -e .)"
    )
    scan = write_volume(Volume(np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)), tmp_path / "scan.nii.gz")
    png = tmp_path / "shot.png"
    shots = []
    real_screenshot = napari.Viewer.screenshot

    def screenshot(self, *args, **kwargs):
        picture = real_screenshot(self, *args, **kwargs)
        qt_window = self.window._qt_window  # its size once laid out for the picture
        dpr = qt_window.devicePixelRatioF()
        size = (round(qt_window.height() * dpr), round(qt_window.width() * dpr))
        shots.append(([layer.name for layer in self.layers], size, picture))
        return picture

    monkeypatch.setattr(napari.Viewer, "screenshot", screenshot)
    monkeypatch.setattr(napari, "Viewer", make_napari_viewer)  # the app's viewer, closed by the fixture
    monkeypatch.setattr(napari, "run", lambda *a, **k: pytest.fail("--screenshot must not start the event loop"))
    tuned = []
    monkeypatch.setattr(cli, "tune_cpu_allocator", lambda: tuned.append(1))
    assert cli.main(["app", str(scan), "--sample", "cardiac", "--screenshot", str(png)]) == 0
    assert tuned == []  # an interactive front end leaves the allocator alone
    ((names, window_size, picture),) = shots  # one picture, taken with the files and sample open
    assert names == ["cardiac fixed", "cardiac moving", "cardiac fixed labels", "cardiac moving labels", "scan"]
    image = imread(png)  # decoded: the file is a real picture of the whole window, not the canvas alone
    assert image.shape[:2] == picture.shape[:2] == window_size
    np.testing.assert_allclose(image[..., :3] * 255, picture[..., :3], atol=0.5)
    colours = np.unique(picture[..., :3].reshape(-1, 3), axis=0)
    assert len(colours) > 50  # not blank: widgets, text and the images drawn


def test_the_desktop_app_reads_volumes_with_the_plugin_without_a_reader_dialog(tmp_path):
    """In the app's own napari settings the plugin is the preferred reader of .nii.gz & co."""
    settings = tmp_path / "napari_settings.yaml"
    code = (
        "from napari_plugin.app import prefer_gvsl_reader\n"
        "from napari.plugins.utils import get_preferred_reader\n"
        "assert get_preferred_reader('scan.nii.gz') is None\n"  # a fresh napari would ask
        "prefer_gvsl_reader()\n"
        "print(get_preferred_reader('scan.nii.gz'), get_preferred_reader('a.mha'), get_preferred_reader('a.png'))\n"
    )
    env = {**__import__("os").environ, "NAPARI_CONFIG": str(settings), "QT_QPA_PLATFORM": "offscreen"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["gvsl-studio", "gvsl-studio", "None"]
    assert "gvsl-studio" in settings.read_text()  # saved in the app's own file, not the user's


_FORK_WHILE_MULTIPLYING = """
import os, sys, threading, time
import numpy as np
if sys.argv[1] == "app":
    from napari_plugin.app import serial_blas
    serial_blas()
a, b = np.ones((48 * 48 * 5, 5), np.float32), np.ones((48, 5), np.float32)  # a sample field's product
done = [0]
def multiply():
    while True:
        np.tensordot(a, b, axes=(1, 1))
        done[0] += 1
threading.Thread(target=multiply, daemon=True).start()
for _ in range(200):  # as Qt's D-Bus thread forks dbus-launch while the window starts
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
before = done[0]
time.sleep(1.0)
print(done[0] - before)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is a POSIX call")
def test_the_apps_numpy_keeps_multiplying_through_a_fork_in_another_thread():
    """A fork while OpenBLAS's worker pool serves another thread left that thread waiting
    forever (the app hung at start, its sample thread in a product, when Qt forked
    dbus-launch); the app makes OpenBLAS serial, and the thread goes on after 200 forks.
    """
    # without the thread-count variables an earlier run_app left in this process's environment
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
    }
    out = subprocess.run(
        [sys.executable, "-c", _FORK_WHILE_MULTIPLYING, "app"], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 0, "the multiplying thread stalled after the forks"


def test_the_launcher_gives_qt_a_private_runtime_folder_and_leaves_a_set_one_alone(tmp_path, monkeypatch):
    import stat
    import tempfile

    from napari_plugin.app import private_runtime_dir

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    folder = private_runtime_dir()
    assert folder is not None and os.environ["XDG_RUNTIME_DIR"] == folder
    info = os.stat(folder)
    assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
    assert private_runtime_dir() is None  # set now: never overridden
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    os.chmod(folder, 0o755)  # opened to others by someone: not used
    assert private_runtime_dir() is None and "XDG_RUNTIME_DIR" not in os.environ


def test_the_launcher_silences_only_the_qt5_theme_note():
    import warnings

    from napari_plugin.app import quiet_launch

    with warnings.catch_warnings(record=True) as caught:  # restores the filters afterwards
        warnings.simplefilter("always")
        quiet_launch()
        warnings.warn("System theme detection requires a Qt6 backend. Please switch", UserWarning, stacklevel=1)
        warnings.warn("something else", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else"]


def test_the_app_starts_on_qt6_unless_told_otherwise():
    """Qtpy takes PyQt5 first where both are installed; the app asks for PyQt6 (napari's
    PyQt5 support is deprecated), but never against an explicit QT_API.
    """
    probe = "import os, sys; from napari_plugin.app import quiet_launch; quiet_launch(); print(os.environ['QT_API'])"
    env = {k: v for k, v in os.environ.items() if k != "QT_API"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "pyqt6"
    out = subprocess.run(
        [sys.executable, "-c", probe], env={**env, "QT_API": "pyside6"}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "pyside6"


def test_the_warm_up_fills_the_vispy_cache_a_first_labels_layer_would_fill_in_the_gui_thread():
    """The dash patterns of vispy's lines cost 55-80 ms the first time a Labels layer is
    added; the warm-up thread computes them (a fresh process, so nothing else has).
    """
    probe = (
        "from vispy.visuals.line import dash_atlas as d; from napari_plugin import _warmup; "
        "a = d._make_pattern.cache_info().currsize; _warmup._prime_caches(); "
        "print(a, d._make_pattern.cache_info().currsize)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before == 0 and after >= 10


def test_widgets_build_without_the_engine_and_complete_once_it_is_imported(make_napari_viewer, qtbot):
    """The widgets need no torch to appear; the device list, the training form and the
    t-SNE plot complete once the background import is done.
    """
    from napari_plugin import _warmup
    from napari_plugin._clusters import ClustersWidget
    from napari_plugin._training import TrainingWidget

    viewer = make_napari_viewer()
    clusters, training = ClustersWidget(viewer), TrainingWidget(viewer)
    viewer.window.add_dock_widget(clusters, name="clusters")
    viewer.window.add_dock_widget(training, name="training")
    assert clusters.device.itemText(0) == "auto" and clusters.device.findText("cpu") >= 0
    qtbot.waitUntil(_warmup.is_ready, timeout=120_000)
    assert {"torch", "monai.metrics", "openTSNE"} <= set(sys.modules)
    qtbot.waitUntil(lambda: training._form is not None and clusters._canvas is not None, timeout=10_000)
    assert training.fields["device"].value == "auto" and not training._placeholder.isVisible()


def test_the_image_canvas_is_the_widest_panel_of_the_app_window(make_napari_viewer, qtbot):
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget, QOpenGLWidget

    from napari_plugin import app

    viewer = make_napari_viewer(show=True)
    app.build_viewer(viewer=viewer)
    dock = viewer.window.dock_widgets["Z-Matching (gvsl-studio)"]
    main = dock.window()
    viewer.window.set_geometry(0, 0, 1280, 800)  # a laptop screen's window, whatever the test screen
    canvas = next(w for w in main.findChildren(QOpenGLWidget) if w.isVisible())
    docks = [d for d in main.findChildren(QDockWidget) if d.isVisible() and not d.isFloating()]

    qtbot.waitUntil(lambda: canvas.width() > max(d.width() for d in docks), timeout=5000)
    # every GVSL form fits the narrow column: no dock is wider than the app's column
    right = [d for d in docks if main.dockWidgetArea(d) == Qt.RightDockWidgetArea]
    assert all(d.minimumSizeHint().width() <= app.DOCK_WIDTH for d in right), [
        (d.windowTitle(), d.minimumSizeHint().width()) for d in right
    ]
    assert canvas.width() > 0.4 * main.width()


def test_gvsl_app_match_runs_z_matching_in_the_window_so_a_screenshot_shows_the_result(
    make_napari_viewer, small_samples, gvsl_ckpt, qtbot
):
    """``gvsl app --sample cardiac --match --screenshot PNG`` (the headless ``make demo``): the
    window shows the warped image, the displacement field and the Dice of the match, not the
    empty form before it.
    """
    from napari_plugin import app
    from napari_plugin._matching import DISPLACEMENT, WARPED, WARPED_LABELS, MatchingWidget

    viewer = app.build_viewer(sample="cardiac", viewer=make_napari_viewer())
    [widget] = [w for w in viewer.window.dock_widgets.values() if isinstance(w, MatchingWidget)]
    widget.refine.setChecked(False)  # small and quick: the flow is what is tested
    widget.weights.add_path(str(gvsl_ckpt))
    widget.device.setCurrentText("cpu")
    widget.cube_size.setValue(32)
    assert widget.report.text() == ""
    assert app.match_in_app(viewer, timeout=240) == "done", widget.state.message
    names = {layer.name for layer in viewer.layers}
    assert {WARPED, WARPED_LABELS, DISPLACEMENT} <= names
    assert "Dice" in widget.report.text()
    assert widget.controls.status.text()  # the progress line says it is done
