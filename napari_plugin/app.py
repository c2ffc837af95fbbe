"""The desktop app (``gvsl app``): napari with the GVSL widgets docked.

The top layer: it imports the plugin and the engine, nothing imports it. ``gvsl app``
reaches it through the ``gvsl.commands`` entry point (:func:`add_command`).

napari and Qt are imported only when the app starts, so the engine and the CLI stay
usable on machines without a display. The widgets come through the installed napari
plugin (``gvsl-studio``, the same npe2 manifest a napari user gets); a bundle without the
plugin's package metadata falls back to adding them directly.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

PLUGIN = "gvsl-studio"
WIDGETS = ("Z-Matching", "Training", "Segmentation", "Label explorer", "Feature clusters")
DOCK_WIDTH = 380
"""Width of the GVSL dock column in the desktop app (pixels); its forms fit, tables scroll."""
LEFT_WIDTH = 250
"""Width the desktop app gives napari's layer controls and layer list on the left (pixels)."""
SCREEN_SHARE = 0.9
"""Share of the screen's width and height the window takes on a first start (later starts
restore the size napari saved)."""


def _engine_message(exc: BaseException) -> str:
    """The innermost message: napari wraps reader errors in its own 'tried to read' text."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


def _dock_widgets(viewer) -> list:
    docks = []
    for name in WIDGETS:
        try:
            dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)
        except (KeyError, ValueError, LookupError):  # plugin metadata missing (e.g. a frozen bundle)
            from napari_plugin import _clusters, _explorer, _matching, _segmentation, _training

            cls = {
                "Z-Matching": _matching.MatchingWidget,
                "Training": _training.TrainingWidget,
                "Segmentation": _segmentation.SegmentationWidget,
                "Label explorer": _explorer.LabelExplorerWidget,
                "Feature clusters": _clusters.ClustersWidget,
            }[name]
            dock = viewer.window.add_dock_widget(cls(viewer), name=name, area="right", tabify=True)
        docks.append(dock)
    for dock in docks:
        # The image comes first: the docks share a column at most DOCK_WIDTH wide (their
        # tables and plots scroll or wrap), the canvas takes the rest of the window.
        dock.setMaximumWidth(DOCK_WIDTH)
    if docks:
        from qtpy.QtCore import Qt, QTimer
        from qtpy.QtWidgets import QDockWidget, QMainWindow, QTabWidget

        main = docks[0].window()  # plain Qt: the main window the docks live in
        if isinstance(main, QMainWindow):
            # tabs down the side: five tab titles in a row would widen the column again
            main.setTabPosition(Qt.DockWidgetArea.RightDockWidgetArea, QTabWidget.TabPosition.East)
            _fit_window(viewer, main)
            # napari's own docks (layer controls, layer list) found through Qt, not napari's privates
            left = [
                d
                for d in main.findChildren(QDockWidget)
                if main.dockWidgetArea(d) == Qt.DockWidgetArea.LeftDockWidgetArea
            ]
            sizes = [LEFT_WIDTH] * len(left) + [DOCK_WIDTH]
            QTimer.singleShot(0, lambda: main.resizeDocks([*left, docks[0]], sizes, Qt.Orientation.Horizontal))
        QTimer.singleShot(0, docks[0].raise_)  # show the Z-Matching tab once the dock area is laid out
        QTimer.singleShot(0, viewer.reset_view)  # fit the image to the canvas it now has
    return docks


def _fit_window(viewer, main) -> None:
    """On a first start, most of the screen (napari's first size is its widgets' size hint,
    which left the image a quarter of the window); a size the user had is restored by napari.
    """
    from napari.settings import get_settings

    screen = main.screen() if hasattr(main, "screen") else None
    if get_settings().application.window_size is not None or screen is None:
        return
    area = screen.availableGeometry()
    width, height = int(area.width() * SCREEN_SHARE), int(area.height() * SCREEN_SHARE)
    viewer.window.set_geometry(
        area.x() + (area.width() - width) // 2, area.y() + (area.height() - height) // 2, width, height
    )


_PREFETCH: dict[str, threading.Thread] = {}


def _prefetch_sample(sample: str) -> None:
    """Generate the cardiac sample pair in a thread while napari starts (about a second of
    numpy work that would otherwise come after it); :func:`_open_sample` waits for it.
    """
    if sample != "cardiac":  # the brain pair imports nilearn on first use: not beside napari's imports
        return
    import gvsl_app.data.synthetic  # noqa: F401 (imported here: a thread must not race napari's imports)
    from gvsl_app.data.samples import sample_pair
    from napari_plugin._samples import SAMPLE_SHAPE

    thread = threading.Thread(target=sample_pair, args=(sample, SAMPLE_SHAPE), name="gvsl-sample", daemon=True)
    thread.start()
    _PREFETCH[sample] = thread


def _open_sample(viewer, sample: str) -> None:
    prefetch = _PREFETCH.pop(sample, None)
    if prefetch is not None:
        prefetch.join()  # the pair is then in sample_pair's cache
    try:
        viewer.open_sample(PLUGIN, sample)
    except (KeyError, ValueError, LookupError):
        from napari_plugin._samples import pair_layer_data

        for data, kw, kind in pair_layer_data(sample):
            getattr(viewer, f"add_{kind}")(data, **kw)


def build_viewer(files=(), sample: str | None = None, viewer=None):
    """A viewer with the GVSL widgets docked and ``files`` (or the ``sample`` pair) loaded.

    A file that cannot be read becomes an error notification (and a line on stderr) with
    the engine's message; the app still opens.
    """
    import napari
    from napari.utils.notifications import show_error

    from napari_plugin._jobs import calm_gc
    from napari_plugin._warmup import when_ready

    viewer = viewer if viewer is not None else napari.Viewer(title="GVSL Studio")
    _dock_widgets(viewer)
    calm_gc()  # our own process: its garbage collector may be tuned (a plugin in a host's may not)
    when_ready(calm_gc)  # and again once torch & co are imported in the background
    if sample:
        _open_sample(viewer, sample)
    for path in files or ():
        try:
            viewer.open(str(path), plugin=PLUGIN)
        except Exception as exc:  # never let one bad file stop the app
            msg = _engine_message(exc)
            print(f"gvsl app: cannot open {path}: {msg}", file=sys.stderr)
            show_error(f"cannot open {path}: {msg}")
    return viewer


def private_runtime_dir() -> str | None:
    """A private ``XDG_RUNTIME_DIR`` (``/tmp/gvsl-runtime-UID``, mode 0700) where none is set.

    Qt needs one on Linux; without it (containers, ``sudo``, ssh sessions) it warns and
    picks a default. Returns the folder, or None where it is not ours to set or cannot be made.
    """
    if not sys.platform.startswith("linux") or os.environ.get("XDG_RUNTIME_DIR"):
        return None
    import stat
    import tempfile

    path = Path(tempfile.gettempdir()) / f"gvsl-runtime-{os.getuid()}"
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = path.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) != 0o700:
        return None  # someone else's, or open to others: leave the choice to Qt
    os.environ["XDG_RUNTIME_DIR"] = str(path)
    return str(path)


def quiet_launch() -> None:
    """What the desktop app does before Qt starts so that its terminal shows only what
    matters: a private runtime folder where none is set, Qt 6 (PyQt6) where it is installed
    and no ``QT_API`` says otherwise (qtpy would take an older PyQt5 first, whose napari
    support is deprecated and announces so in a toast), and napari's note that it cannot
    detect the system theme with Qt 5 silenced (it falls back to its dark theme, which the
    app uses anyway). Only in the app's own process, never in a napari the plugin is a guest of.
    """
    import importlib.util
    import warnings

    if "QT_API" not in os.environ and "qtpy" not in sys.modules and importlib.util.find_spec("PyQt6") is not None:
        os.environ["QT_API"] = "pyqt6"
    private_runtime_dir()
    warnings.filterwarnings("ignore", message="System theme detection requires a Qt6 backend", category=UserWarning)


def frozen_napari_frames() -> bool:
    """In the frozen desktop app, let napari recognise its own code again; True where it did so.

    napari hands plugin widgets a viewer behind a ``PublicOnlyProxy`` that warns ("Private
    attribute access ('DirectLabelColormap._...') ... is deprecated", a toast in the app) when
    code outside napari reads a private attribute through it; napari's own code may, and is
    told apart by its frames' file names starting with napari's folder (``napari.utils.misc.
    ROOT_DIR``). PyInstaller writes the modules of a bundle with relative file names
    (``napari/layers/...``), so in the bundle every access of napari's own code looked foreign,
    and the bundle showed toasts that ``gvsl app`` never shows. Here napari's folder is given as
    PyInstaller names it (``napari/``: ``napari_plugin/`` and ``napari_builtins/`` stay outside).
    Nothing changes outside a bundle.
    """
    if not getattr(sys, "frozen", False):
        return False
    from napari.utils import misc

    misc.ROOT_DIR = "napari" + os.sep
    return True


def serial_blas() -> None:
    """Make OpenBLAS (numpy's and scipy's) run every call in the calling thread, in this process.

    A ``fork()`` anywhere in the process while another thread is inside a multi-threaded
    OpenBLAS call leaves that thread waiting forever: OpenBLAS's fork handler shuts its
    worker pool down under the call. Qt forks on its own: with no D-Bus session bus (Xvfb,
    containers, ssh) its D-Bus thread runs ``dbus-launch`` while the window starts, just
    when the sample thread computes the sample pair, and the app hung at start about one
    time in eight. Only in the app's own process (a host napari's settings are its own); the
    app's numpy work is small (the samples, t-SNE's set-up) and torch keeps its own threads.
    An ``OPENBLAS_NUM_THREADS`` the user set is left as it is.
    """
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return
    # Libraries loaded from now on (scipy's own OpenBLAS comes with the engine's background
    # import) read the variable; the ones already loaded (numpy's) are told directly.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")  # kept: not used as a context manager


VOLUME_PATTERNS = ("*.nii", "*.nii.gz", "*.mha", "*.mhd", "*.nrrd", "*.nhdr", "*.dcm")
"""The files File > Open gives to this plugin without asking, in the desktop app."""


def app_settings_file() -> Path:
    """The desktop app's own napari settings (a user's napari keeps its own)."""
    return Path.home() / ".config" / "gvsl-studio" / "napari_settings.yaml"


def prefer_gvsl_reader() -> None:
    """Make this plugin the reader of medical volumes in the current napari settings, so
    File > Open no longer asks "GVSL Studio or napari builtins?" for every .nii.gz.
    """
    from napari.settings import get_settings

    plugins = get_settings().plugins
    plugins.extension2reader = {**plugins.extension2reader, **{p: PLUGIN for p in VOLUME_PATTERNS}}


MATCH_TIMEOUT_S = 900.0
"""How long ``gvsl app --match`` waits for its Z-Matching run (a 96³ pair with the refinement
takes well under a minute on 2 CPU cores)."""


def match_in_app(viewer, timeout: float = MATCH_TIMEOUT_S) -> str:
    """Run the docked Z-Matching widget on the layers it chose (the loaded pair) with its
    defaults, as a click on *Run Z-Matching* does, and wait, the GUI alive, until it ends; its
    result layers (warped image and labels, the displacement field) and report (Dice) are then
    in the window. Returns the job's status (``done``, or ``error`` with the reason printed).
    """
    import time

    from qtpy.QtWidgets import QApplication

    from napari_plugin._matching import MatchingWidget

    widget = next((w for w in viewer.window.dock_widgets.values() if isinstance(w, MatchingWidget)), None)
    if widget is None:
        raise RuntimeError("the Z-Matching widget is not docked")
    widget.run()
    deadline = time.monotonic() + timeout
    while widget.state.status not in ("done", "error") and time.monotonic() < deadline:
        QApplication.processEvents()
        time.sleep(0.02)
    if widget.state.status != "done":
        print(f"gvsl app: Z-Matching did not finish: {widget.state.message or widget.state.status}", file=sys.stderr)
    return widget.state.status


def run_app(files: list[str], sample: str | None = None, screenshot: str | None = None, match: bool = False) -> int:
    """Open the desktop app and run its event loop until the window is closed.

    The app keeps its own napari settings file (:func:`app_settings_file`, unless
    ``NAPARI_CONFIG`` says otherwise), in which this plugin reads medical volumes without a
    reader dialog; a user's own napari settings are not touched. With ``screenshot``, save
    a picture of the whole window once it is shown and exit instead (used by ``make demo``
    on a headless machine, under Xvfb).
    """
    own_settings = "napari" not in sys.modules and "NAPARI_CONFIG" not in os.environ
    if own_settings:  # settings are read when napari is first imported
        os.environ["NAPARI_CONFIG"] = str(app_settings_file())
    quiet_launch()
    serial_blas()
    if sample:
        _prefetch_sample(sample)
    import napari

    frozen_napari_frames()
    if own_settings:  # never in a napari someone else configured (a host, a test session)
        prefer_gvsl_reader()

    viewer = build_viewer(files, sample)
    status = match_in_app(viewer) if match else "done"
    if screenshot:
        from qtpy.QtWidgets import QApplication

        for _ in range(20):  # let docked widgets and layers lay themselves out
            QApplication.processEvents()
        viewer.screenshot(str(screenshot), canvas_only=False)
        viewer.close()
        return 0 if status == "done" else 1
    if os.environ.get("GVSL_APP_EXIT_WHEN_SHOWN"):
        _exit_when_shown()
    napari.run()
    return 0


def _exit_when_shown() -> None:
    """Say when the image canvas has first been painted, then quit (for
    ``benchmarks/bench_gui.py``, which times ``gvsl app`` from process start to that line).
    """
    from qtpy.QtCore import QEvent, QObject, QTimer
    from qtpy.QtWidgets import QApplication, QOpenGLWidget

    class FirstPaint(QObject):
        def eventFilter(self, obj, event) -> bool:
            if event.type() == QEvent.Type.Paint and isinstance(obj, QOpenGLWidget) and obj.isVisible():
                app.removeEventFilter(self)  # type: ignore[union-attr]  # checked below, before install
                QTimer.singleShot(0, shown)  # once this paint is done
            return False

    def shown() -> None:
        print("gvsl app: window shown", flush=True)
        QApplication.quit()

    app = QApplication.instance()
    assert app is not None  # called from the running app
    watcher = FirstPaint(app)
    app.installEventFilter(watcher)


def command_names() -> frozenset[str]:
    """The subcommands of the ``gvsl`` command line, read off its own parser
    (:func:`gvsl_app.cli.build_parser`, the ``gvsl.commands`` entry points included), so a
    command added there is a command of the desktop bundle too.
    """
    import argparse

    from gvsl_app.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return frozenset(action.choices)
    return frozenset()


def bundle_args(args: list[str]) -> list[str]:
    """The ``gvsl`` arguments the frozen desktop app (``gvsl-studio``, see ``app.spec``) runs:
    no arguments open the app on the cardiac sample pair; a ``gvsl`` command or a top-level
    option (``-v``, ``--verbose``, ``-h``) is the command line as ``gvsl`` takes it; anything
    else is files to open in the app (dropped on it, or given as ``gvsl-studio FILE...``).
    """
    if not args:
        return ["app", "--sample", "cardiac"]
    if args[0].startswith("-") or args[0] in command_names():
        return list(args)
    return ["app", *args]


def bundle_main(argv: list[str]) -> int:
    """The frozen desktop app's ``main`` (``app.spec`` writes an entry script that calls it).

    ``-m MODULE ARGS`` runs a module as ``python -m`` would: the training widget starts its
    job as ``sys.executable -m gvsl_app.jobs.child``, and in a bundle ``sys.executable`` is
    the app itself. Everything else goes to :func:`gvsl_app.cli.main` through :func:`bundle_args`.
    """
    if len(argv) >= 2 and argv[0] == "-m":
        import runpy

        sys.argv = [sys.argv[0], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        return 0
    from gvsl_app.cli import main

    return main(bundle_args(argv))


def add_command(sub) -> None:
    """Register ``gvsl app`` with the engine's command line (the ``gvsl.commands`` entry point)."""
    p = sub.add_parser("app", help="the desktop app (napari with the GVSL widgets)")
    p.add_argument("files", nargs="*")
    p.add_argument("--sample", choices=["cardiac", "brain"])
    p.add_argument("--screenshot", help="save a PNG of the window once shown, then exit")
    p.add_argument(
        "--match",
        action="store_true",
        help="run Z-Matching on the loaded pair once shown (with --screenshot, the picture shows its result)",
    )
    p.set_defaults(
        func=lambda args: run_app(args.files, sample=args.sample, screenshot=args.screenshot, match=args.match),
        tune_allocator=False,
    )
